"""The CUDA checks of ``benchmarks/gpu_check.sh``: exactness and save/reload in bf16 on the GPU, apply
against PEFT's PiSSA, and a training step of ailora's against a hand-written PEFT loop.

    python benchmarks/gpu_check.py [--device cuda] [--dry-run]

1. Exactness in bfloat16 on the device: ``ailora.apply(..., device=DEVICE)`` on tiny LLaMA, GPT-2
   (fused, transposed c_attn) and BERT moved to the device in bf16, exact and fast solvers: the
   per-layer check passes, the residuals stay bf16 (the output criterion), one perturbed step later
   the adapter saved with ``ailora.save`` reloads on the original bf16 base on the device and gives
   the same logits (bf16 tolerance).
2. ``apply`` time (exact, fast) against PEFT ``pissa`` and ``pissa_niter_4``, same run, on a LLaMA
   with LLaMA-2-7B's layer shapes (hidden 4096, intermediate 11008, 2 layers) and on SmolLM2-135M
   when it is on disk; query and value, rank 16, bf16 on the device. Each timing is after one
   warm-up (kernels, cuSOLVER handles), synchronised.
3. Training step time: ailora (apply + ``ailora.param_groups`` + Accelerate + the loop's step calls)
   against a hand-written PEFT loop (get_peft_model + AdamW + forward/backward/clip/step), the same
   model, batches and rank, interleaved rounds, medians.

``--dry-run``: tiny shapes on the CPU, to check that the script runs (tests run it); its times mean
nothing. Prints markdown tables to paste into docs/performance.md with the card's name.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import peft
import torch
import transformers

import ailora
from ailora.core.models import load_model
from ailora.core.probe import make_probe, run_probe

SMOLLM2 = os.path.expanduser("~/.cache/ailora/smollm2-135m-instruct")
TARGETS = ["q_proj", "v_proj"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _llama(hidden: int, inter: int, layers: int, heads: int, vocab: int) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02 if p.dim() > 1 else torch.ones(p.shape))
    return model.eval()


def _tiny(arch: str) -> torch.nn.Module:
    configs = {
        "llama": transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=4, vocab_size=100),
        "gpt2": transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=64),
        "bert": transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=128, vocab_size=100),
    }
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(configs[arch]) if arch == "bert" else \
        transformers.AutoModelForCausalLM.from_config(configs[arch])
    return model.to(torch.bfloat16).eval()


def check_exactness(device: str, out_dir: str) -> list[tuple]:
    """Part 1: per architecture and solver, (arch, solver, check passed, residual dtypes, reload diff, tolerance)."""
    rows = []
    for arch in ("llama", "gpt2", "bert"):
        for solver in ("exact", "fast"):
            original = _tiny(arch).to(device)
            model = ailora.apply(copy.deepcopy(original), method="ailora", rank=4, solver=solver, device=device,
                                 targets=["query", "value"])
            with torch.no_grad():  # one stand-in training step
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        p.add_(0.05)
            path = os.path.join(out_dir, f"{arch}-{solver}")
            ailora.save(model, path, rank=8)
            reloaded = ailora.load(copy.deepcopy(original), path)
            probe = make_probe(model)
            a, b = run_probe(model, probe), run_probe(reloaded, probe)
            tol = 2e-2 * max(1.0, a.abs().max().item())
            dtypes = sorted({r.residual_dtype for r in model.ailora_state.layers})
            rows.append((arch, solver, model.ailora_state.check["passed"], dtypes, (a - b).abs().max().item(), tol))
    return rows


def _timed(fn, device: str) -> float:
    fn()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def time_apply(name: str, base: torch.nn.Module, device: str, rank: int) -> list[tuple]:
    """Part 2: (model, start, seconds) for ailora exact/fast and PEFT pissa/pissa_niter_4, on ``device``."""
    base = base.to(device)

    def ours(solver):
        return lambda: ailora.apply(copy.deepcopy(base), method="pissa", rank=rank, solver=solver, device=device,
                                    progress=False)

    def theirs(init):
        cfg = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=init)
        return lambda: peft.get_peft_model(copy.deepcopy(base), cfg)

    runs = [("ailora pissa, exact", ours("exact")), ("ailora pissa, fast", ours("fast")),
            ("PEFT pissa", theirs("pissa")), ("PEFT pissa_niter_4", theirs("pissa_niter_4"))]
    return [(name, label, _timed(fn, device)) for label, fn in runs]


def time_training(device: str, hidden: int, layers: int, steps: int, rounds: int) -> dict[str, float]:
    """Part 3: median step seconds of ailora's step calls and of a hand-written PEFT loop."""
    from accelerate import Accelerator

    base = _llama(hidden, hidden * 2, layers, max(1, hidden // 64), 1000).float().to(device)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 1000, (8, 64), generator=g).to(device) for _ in range(steps)]
    ours = ailora.apply(copy.deepcopy(base), method="ailora", rank=16, device=device, progress=False)
    acc = Accelerator(cpu=not device.startswith("cuda"))
    ours_opt = torch.optim.AdamW(ailora.param_groups(ours, 1e-4))
    ours, ours_opt = acc.prepare(ours, ours_opt)
    hand = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=16, lora_alpha=16, target_modules=TARGETS))
    hand_opt = torch.optim.AdamW([p for p in hand.parameters() if p.requires_grad], lr=1e-4)

    def ours_step(ids):
        loss = ours(input_ids=ids, labels=ids).loss
        acc.backward(loss)
        acc.clip_grad_norm_([p for p in ours.parameters() if p.requires_grad], 1.0)
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)

    def hand_step(ids):
        loss = hand(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in hand.parameters() if p.requires_grad], 1.0)
        hand_opt.step()
        hand_opt.zero_grad(set_to_none=True)

    times = {"ailora": [], "hand PEFT": []}
    for _ in range(rounds):
        for label, step in (("ailora", ours_step), ("hand PEFT", hand_step)):
            step(batches[0])  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            for ids in batches:
                step(ids)
            _sync(device)
            times[label].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script runs")
    p.add_argument("--out", default="gpu_check_out", help="where the saved adapters go")
    args = p.parse_args()
    device = "cpu" if args.dry_run else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU machine", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU (dry run: times mean nothing)"
    print(f"device: {card}; torch {torch.__version__}, peft {peft.__version__}, ailora {ailora.__version__}")

    rows = check_exactness(device, args.out)
    print("\n| model | solver | per-layer check | residuals | reloaded adapter: max logit diff | tolerance |")
    print("|---|---|---|---|---:|---:|")
    for arch, solver, passed, dtypes, diff, tol in rows:
        print(f"| tiny {arch} bf16 | {solver} | {'passed' if passed else 'FAILED'} | {', '.join(dtypes)} | "
              f"{diff:.3g} | {tol:.3g} |")
    failed = [r for r in rows if not r[2] or r[4] > r[5]]

    shapes = (256, 688, 1, 4, 1000) if args.dry_run else (4096, 11008, 2, 32, 32000)
    cases = [(f"LLaMA hidden {shapes[0]}, inter {shapes[1]}, {shapes[2]} layer(s)", _llama(*shapes))]
    if not args.dry_run and os.path.isdir(SMOLLM2):
        cases.append(("SmolLM2-135M", load_model(SMOLLM2, dtype="bfloat16")))
    print("\n| model (bf16, q+v, rank 16) | start | seconds | vs PEFT pissa_niter_4 |")
    print("|---|---|---:|---:|")
    for name, base in cases:
        timed = time_apply(name, base, device, 16)
        ref = timed[-1][2]
        for model, label, secs in timed:
            print(f"| {model} | {label} | {secs:.3f} | {secs / ref:.2f}x |")

    hidden, layers = (64, 2) if args.dry_run else (2048, 4)
    steps = time_training(device, hidden, layers, steps=3 if args.dry_run else 20, rounds=1 if args.dry_run else 3)
    print(f"\n| training step (LLaMA hidden {hidden}, {layers} layers, float32, batch 8 x 64, rank 16) | median s "
          "| vs hand PEFT |")
    print("|---|---:|---:|")
    for label, secs in steps.items():
        print(f"| {label} | {secs:.4f} | {secs / steps['hand PEFT']:.2f}x |")
    print("\nexactness on device: " + ("passed" if not failed else f"FAILED: {failed}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
