"""Seconds to initialise every query and value adapter: ailora (exact, fast) against PEFT's PiSSA.

Run in one process, so all rows share the machine's state:

    .venv/bin/python benchmarks/init_speed.py [--models minilm,llama2048x8,smollm2] [--repeats 2] [--device cpu]
        [--clock wall|process]

Each timing is the best of --repeats, the methods interleaved within a repeat. Ours includes the
output check that every ``ailora.core.apply`` call runs by default: each adapted layer, as PEFT runs
it, against its original weight on 4 random rows, and everything else in the model against a
snapshot (same modules, same unmodified parameters and buffers); no forward pass of the model. The
row "check=full" adds the end-to-end probe (one 8-token sequence through the whole model, before and
after), and "check=False" times our exact solver with no check, as PEFT is timed. For every row the
output difference is measured after the clock stops, on the same 2 x 16-token probe. Ratios are PEFT
full-SVD pissa seconds divided by each row's seconds (higher is faster); "time / PEFT pissa_niter_4"
is each row's seconds over that row's (lower is faster). ``--clock process`` times CPU seconds of
this process instead of wall seconds: for a machine shared with other work, with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time

import peft
import torch
import transformers

import ailora
from ailora.core.models import load_model, minilm_dir, smollm2_dir
from ailora.core.probe import make_probe, max_abs_diff, run_probe

RANK = 8
CLOCK = time.perf_counter  # --clock process: time.process_time


def build(name: str) -> torch.nn.Module:
    if name == "minilm":
        return load_model(minilm_dir())
    if name == "smollm2":
        return load_model(smollm2_dir())
    if name == "llama2048x8":
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(hidden_size=2048, intermediate_size=5504, num_hidden_layers=8,
                                       num_attention_heads=16, num_key_value_heads=4, vocab_size=1024)
        return transformers.LlamaForCausalLM(cfg)
    raise SystemExit(f"unknown model {name}")


def query_value_modules(model) -> list[str]:
    from ailora.core.roles import find_targets

    return [t.name for t in find_targets(model, ["query", "value"])]


def run_ours(model, solver, device, probe, reference, check=True):
    t0 = CLOCK()
    out = ailora.apply(model, method="ailora", rank=RANK, solver=solver, head=None, device=device, progress=False,
                       check=check)
    seconds = CLOCK() - t0
    return seconds, max_abs_diff(run_probe(out, probe), reference)


def run_peft(model, init, names, probe, reference):
    cfg = peft.LoraConfig(r=RANK, lora_alpha=RANK, target_modules=names, init_lora_weights=init)
    t0 = CLOCK()
    out = peft.get_peft_model(model, cfg)
    seconds = CLOCK() - t0
    return seconds, max_abs_diff(run_probe(out, probe), reference)


def warm_up() -> None:
    """First LAPACK/BLAS calls in a process pay one-off set-up costs; keep them out of every row."""
    import scipy.linalg

    w = torch.randn(256, 512)
    torch.linalg.svd(w, full_matrices=False)
    torch.linalg.qr(w.T)
    torch.linalg.eigh((w @ w.T).double())
    scipy.linalg.eigh((w @ w.T).double().numpy(), subset_by_index=[0, 3], driver="evr")


def bench(name: str, repeats: int, device) -> list[tuple]:
    base = build(name).eval()
    names = query_value_modules(base)
    probe = make_probe(base)
    reference = run_probe(base, probe)
    runs = {
        "ailora exact": lambda m: run_ours(m, "exact", device, probe, reference),
        "ailora fast": lambda m: run_ours(m, "fast", device, probe, reference),
        "ailora fast, check=full": lambda m: run_ours(m, "fast", device, probe, reference, "full"),
        "ailora exact, check=False": lambda m: run_ours(m, "exact", device, probe, reference, False),
        "peft pissa (full SVD)": lambda m: run_peft(m, "pissa", names, probe, reference),
        "peft pissa_niter_4": lambda m: run_peft(m, "pissa_niter_4", names, probe, reference),
    }
    best = {k: (float("inf"), None) for k in runs}
    for _ in range(repeats):
        for label, fn in runs.items():
            seconds, diff = fn(copy.deepcopy(base))
            if seconds < best[label][0]:
                best[label] = (seconds, diff)
    ref, quick = best["peft pissa (full SVD)"][0], best["peft pissa_niter_4"][0]
    return [(name, len(names), label, s, ref / s, s / quick, d) for label, (s, d) in best.items()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="minilm,llama2048x8,smollm2")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default=None, help="where our SVDs run (e.g. cuda); PEFT's run where the weights are")
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="wall seconds, or CPU seconds of this process (a shared machine, one thread)")
    args = p.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    torch.set_grad_enabled(False)
    transformers.utils.logging.disable_progress_bar()
    warm_up()
    rows = []
    for name in args.models.split(","):
        rows += bench(name, args.repeats, args.device)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), peft {peft.__version__}, rank {RANK}, "
          f"best of {args.repeats}, {args.clock} seconds")
    print("| model | q+v layers | method | seconds | speed vs PEFT full-SVD pissa | time / PEFT pissa_niter_4 "
          "| output max abs diff |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, n, label, s, ratio, per_quick, diff in rows:
        print(f"| {name} | {n} | {label} | {s:.3f} | {ratio:.2f}x | {per_quick:.2f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
