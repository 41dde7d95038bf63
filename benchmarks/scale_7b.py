"""A LLaMA-2-7B-shaped checkpoint initialised by the streaming init, against reading and copying it once.

    .venv/bin/python benchmarks/scale_7b.py [--tmp DIR] [--peft pissa_niter_4,pissa]      # the 7B shapes
    .venv/bin/python benchmarks/scale_7b.py --small                                       # a smoke run

Writes a synthetic checkpoint with LLaMA-2-7B's shapes (32 layers, hidden 4096, intermediate 11008,
32 heads, vocab 32000, bfloat16, about 13.5 GB in safetensors shards of at most 5 GB, as
transformers shards it) with SEEDED RANDOM weights (N(0, 0.02); fine for timing and memory, not a
trained model), then, in the same run, each in its own child process:

* read: every shard read once (the tensors' bytes through the page cache);
* copy: every shard copied once (``shutil.copyfile``), the copy deleted;
* ailora: ``ailora init --residual-out`` with AILoRA (fast solver, rank 16, query and value,
  ``--dtype bfloat16``): wall time and peak resident memory (``ru_maxrss`` of the child);
* decompose: the floor of the init's computation, the same solver calls (``singular_slice``, fast,
  rank 16) on every q_proj (principal) and v_proj (minor) weight read from the checkpoint, nothing
  written; and, timed again on their own, the LU factorisations of the v_proj weights (the minor
  solver's O(n^3) step, its core), with the rate they ran at;
* verify: the residual directory loaded with ``from_pretrained`` (``ailora.load_initialised``), one
  stand-in training step on the factors, ``ailora.save``; then, on a probe of PROBE_LAYERS layers
  (the first, a middle and the last layer's q_proj and v_proj; the whole model is not held twice),
  the saved plain adapter on the ORIGINAL weights, W x + s' B' (A' x), against the trained layer,
  W_res x + s B (A x), on seeded rows, in float32;
* PEFT: the original checkpoint loaded whole in bf16 (``from_pretrained``), then ``get_peft_model``
  with ``init_lora_weights`` = each of ``--peft``: wall time and peak memory, or the error it hits.

Targets (issue 22): ailora's wall time at most 1.5x the copy's, its peak at most 12% of the
checkpoint, the per-layer check passed, the probe within tolerance. The checkpoint and every output
are deleted at the end, also on failure (a temporary directory; needs about 3x the checkpoint free
under --tmp). Prints a table ready to paste. ``--small``: 2 layers, hidden 1024, a smoke run of the
script only: at 0.17 GB the processes' fixed costs (imports, about 450 MB) dwarf the checkpoint, so
its targets cannot hold there.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size ("5GB")
PROBE_LAYERS = 3
SEVEN_B = {"hidden": 4096, "inter": 11008, "layers": 32, "heads": 32, "vocab": 32000}
SMALL = {"hidden": 1024, "inter": 2752, "layers": 2, "heads": 8, "vocab": 32000}


def _config(shape: dict):
    import transformers

    return transformers.LlamaConfig(hidden_size=shape["hidden"], intermediate_size=shape["inter"],
                                    num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                                    num_key_value_heads=shape["heads"], vocab_size=shape["vocab"],
                                    tie_word_embeddings=False, torch_dtype="bfloat16")


def make_checkpoint(directory: Path, shape: dict) -> dict:
    """Child: the seeded bf16 checkpoint, one tensor at a time, in shards of at most SHARD_BYTES."""
    import torch

    from synthetic import llama_shapes, write_random_checkpoint

    config = _config(shape)
    shapes = llama_shapes(config)
    groups, size = [[]], 0
    for name, s in shapes.items():
        nbytes = math.prod(s) * 2
        if size + nbytes > SHARD_BYTES and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    total = write_random_checkpoint(directory, config, shapes, groups, torch.bfloat16)
    return {"bytes": total, "shards": len(groups)}


def read_once(directory: Path) -> dict:
    n = 0
    for f in sorted(directory.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while chunk := fh.read(64 * 2**20):
                n += len(chunk)
    return {"bytes": n}


def copy_once(directory: Path, dest: Path) -> dict:
    dest.mkdir()
    for f in sorted(directory.glob("*.safetensors")):
        shutil.copyfile(f, dest / f.name)
    shutil.rmtree(dest)
    return {}


def verify(ckpt: Path, out: Path, adapter: Path) -> dict:
    """Child: the residual directory through from_pretrained, a stand-in step, the saved adapter on the
    original weights against the trained layers, on a probe of a few layers."""
    import torch
    from safetensors.torch import load_file

    import ailora
    from ailora.core.checkpoint import Checkpoint
    from ailora.core.initialised import tensor_key

    model = ailora.load_initialised(out)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # stand-in for training: move every factor
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.1)
    ailora.save(model, adapter, rank=32)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    saved, original = load_file(adapter / "adapter_model.safetensors"), Checkpoint.open(ckpt)
    layers = model.config.num_hidden_layers
    adapted = {n: m for n, m in model.base_model.model.named_modules() if hasattr(m, "lora_A")}
    worst = moved = 0.0
    probes = 0
    for i in sorted({0, layers // 2, layers - 1})[:PROBE_LAYERS]:
        for proj in ("q_proj", "v_proj"):
            name = next(n for n in adapted if n.endswith(f"layers.{i}.self_attn.{proj}"))
            layer = adapted[name]
            x = torch.randn(4, layer.in_features, generator=g)
            with torch.no_grad():
                trained = layer(x.to(torch.bfloat16)).float()
                key = f"base_model.model.{name}"
                a, b = saved[f"{key}.lora_A.weight"].float(), saved[f"{key}.lora_B.weight"].float()
                w = original.tensor(tensor_key("model", name, original.where)).float()
                ours = x.to(torch.bfloat16).float() @ w.T + cfg["lora_alpha"] / cfg["r"] * ((x @ a.T) @ b.T)
            scale = trained.abs().max().clamp(min=1.0)
            worst = max(worst, ((trained - ours).abs().max() / scale).item())
            moved = max(moved, ((trained - x.to(torch.bfloat16).float() @ w.T).abs().max() / scale).item())
            probes += 1
    # ``moved``: how far the stand-in step took the layers from W x (what a wrong adapter would miss by)
    return {"probe_layers": probes, "relative_diff": worst, "moved": moved}


def decompose_only(ckpt: Path) -> dict:
    """Child: the init's decompositions alone, on weights read from the checkpoint (the compute floor)."""
    import torch

    from ailora.core.checkpoint import Checkpoint
    from ailora.core.svd import singular_slice

    original = Checkpoint.open(ckpt)
    layers = sorted({int(k.split(".")[2]) for k in original.where if k.startswith("model.layers.")})
    solve = lu = flops = 0.0
    for i in layers:
        for proj, which in (("q_proj", "principal"), ("v_proj", "minor")):
            w = original.tensor(f"model.layers.{i}.self_attn.{proj}.weight").float()
            t0 = time.perf_counter()
            singular_slice(w, 16, which, "fast")
            solve += time.perf_counter() - t0
            if which == "minor":
                t0 = time.perf_counter()
                torch.linalg.lu_factor_ex(w)
                lu += time.perf_counter() - t0
                flops += 2 / 3 * w.shape[0] ** 3
    return {"solve_seconds": solve, "lu_seconds": lu, "lu_gflops": flops / lu / 1e9, "layers": len(layers)}


def peft_init(ckpt: Path, init: str) -> dict:
    """Child: PEFT's start on the whole model loaded in bf16."""
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16)
    peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=init))
    return {}


def child(cmd: list[str], timeout: float | None = None) -> dict:
    """Run ``cmd``: {"seconds", "peak_mib", "ok", "error", **the JSON it printed last}."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"seconds": time.perf_counter() - t0, "peak_mib": float("nan"), "ok": False,
                "error": f"stopped after {timeout:.0f} s"}
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["?"])[-1]
        return {"seconds": seconds, "peak_mib": float("nan"), "ok": False, "error": last[:200]}
    result = json.loads(out.strip().splitlines()[-1])
    return {"seconds": seconds, "peak_mib": result.pop("rss_mib"), "ok": True, "error": "", **result}


def _me(args, *child: str) -> list[str]:
    """This script as a child process (the parent imports neither torch nor ailora, so a child's
    ``ru_maxrss``, which it prints in its JSON, is its own)."""
    flags = (["--small"] if args.small else []) + (["--vocab", str(args.vocab)] if args.vocab else [])
    return [sys.executable, __file__, *flags, "--child", *child]


def _child_main(args) -> int:
    import resource

    mode, paths = args.child[0], [Path(p) for p in args.child[1:]]
    shape = SMALL if args.small else SEVEN_B
    shape = {**shape, **({"vocab": args.vocab} if args.vocab else {})}
    t0 = time.perf_counter()
    if mode == "make":
        result = make_checkpoint(paths[0], shape)
    elif mode == "read":
        result = read_once(paths[0])
    elif mode == "copy":
        result = copy_once(paths[0], paths[1])
    elif mode == "verify":
        result = verify(*paths)
    elif mode == "decompose":
        result = decompose_only(paths[0])
    elif mode == "ailora":
        from ailora.cli import main as cli
        from ailora.core import streaming  # noqa: F401  (timed: the command's imports)

        imported = time.perf_counter() - t0

        code = cli(["init", "--model", str(paths[0]), "--residual-out", str(paths[1]), "--method", "ailora",
                    "--solver", "fast", "--rank", "16", "--dtype", "bfloat16", "--quiet"])
        if code != 0:
            raise SystemExit(code)
        report = json.loads((paths[1] / "report.json").read_text())
        result = {"layers": len(report["layers"]), "check": report["output_check"]["passed"],
                  "bf16": sum(r["residual_dtype"] == "bfloat16" for r in report["layers"]), "imports": imported}
    else:
        result = peft_init(paths[0], mode.removeprefix("peft:"))
    result["inner_seconds"] = time.perf_counter() - t0
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))
    return 0


def _table(made: dict, runs: dict, shape: dict) -> str:
    gib, mib = made["bytes"] / 2**30, made["bytes"] / 2**20
    a, copy = runs["ailora"], runs["copy"]
    lines = [f"checkpoint: LLaMA (hidden {shape['hidden']}, intermediate {shape['inter']}, {shape['layers']} layers, "
             f"vocab {shape['vocab']}), bfloat16, seeded random weights, {made['shards']} shards, {gib:.2f} GiB",
             "", "| run | wall (s) | vs copy | peak RSS (MiB) | % of checkpoint | result |", "|---|---:|---:|---:|---:|---|"]
    for label, r in runs.items():
        if r["ok"] and label == "ailora":
            note = (f"{r['layers']} layers, per-layer check {'passed' if r['check'] else 'FAILED'}, {r['bf16']} bf16 "
                    f"residuals; of its time, imports {r['imports']:.1f} s")
        elif r["ok"] and label == "decompose":
            note = (f"the {2 * r['layers']} decompositions alone {r['solve_seconds']:.1f} s; their core, the "
                    f"{r['layers']} v_proj LU factorisations, timed again on their own: {r['lu_seconds']:.1f} s "
                    f"({r['lu_gflops']:.0f} GFLOP/s)")
        elif r["ok"] and label == "verify":
            note = f"from_pretrained ok; adapter on the original, {r['probe_layers']} probe layers: rel. diff {r['relative_diff']:.2e} (the step moved them {r['moved']:.2e})"
        else:
            note = "ok" if r["ok"] else f"error: {r['error']}"
        lines.append(f"| {label} | {r['seconds']:.1f} | {r['seconds'] / copy['seconds']:.2f}x | {r['peak_mib']:.0f} | "
                     f"{100 * r['peak_mib'] / mib:.1f}% | {note} |")
    ok = a["ok"] and a["check"] and runs["verify"]["ok"] and runs["verify"]["relative_diff"] < 2e-2
    lines += ["", f"targets: wall <= 1.5x copy: {a['seconds'] <= 1.5 * copy['seconds']}; "
              f"peak <= 12% of the checkpoint: {a['peak_mib'] <= 0.12 * mib}; checks: {ok}"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="2 layers, hidden 1024: a smoke run")
    p.add_argument("--vocab", type=int, default=None, help=argparse.SUPPRESS)  # smaller smoke runs (tests)
    p.add_argument("--tmp", default=None, help="where the temporary directory goes (about 3x the checkpoint free)")
    p.add_argument("--peft", default="pissa_niter_4", help="PEFT starts to run beside, comma-separated ('' for none)")
    p.add_argument("--peft-timeout", type=float, default=3600.0)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child_main(args)
    shape = {**(SMALL if args.small else SEVEN_B), **({"vocab": args.vocab} if args.vocab else {})}
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="ailora-scale-") as tmp:  # removed also on failure
        ckpt, out, tmp = Path(tmp) / "ckpt", Path(tmp) / "out", Path(tmp)
        ckpt.mkdir()
        made = child(_me(args, "make", str(ckpt)))
        if not made["ok"]:
            raise SystemExit(f"writing the checkpoint failed: {made['error']}")
        runs = {"read": child(_me(args, "read", str(ckpt))), "copy": child(_me(args, "copy", str(ckpt), str(tmp / "copy"))),
                "decompose": child(_me(args, "decompose", str(ckpt))), "ailora": child(_me(args, "ailora", str(ckpt), str(out)))}
        runs["verify"] = child(_me(args, "verify", str(ckpt), str(out), str(tmp / "adapter"))) if runs["ailora"]["ok"] \
            else {**runs["ailora"], "ok": False, "error": "no residual directory"}
        shutil.rmtree(out, ignore_errors=True)  # disk: PEFT's runs need only the checkpoint
        for init in filter(None, args.peft.split(",")):
            runs[f"PEFT {init}"] = child(_me(args, f"peft:{init}", str(ckpt)), timeout=args.peft_timeout)
        print(_table(made, runs, shape))
    return 0


if __name__ == "__main__":
    sys.exit(main())
