"""Wall time of ``ailora.apply`` in 1 and 2 processes: the decompositions split across processes.

    .venv/bin/python benchmarks/init_processes.py [--model llama2048x8] [--processes 1,2] [--solvers exact,fast]

Each row starts ``torchrun --nproc_per_node P`` (CPU, gloo) on this script; every process builds the
same seeded model, waits at a barrier, runs ``ailora.apply`` (AILoRA, query and value, rank 8, the
output check on) and waits at a barrier again; the row's seconds are that span, i.e. until the last
process holds every factor. Each process gets cores // P threads, so 1 and 2 processes use the same
cores (``--threads`` sets another count; on a busy machine 1 keeps threads from waiting on each other). Each row is the best of ``--repeats`` applies (after a warm-up of the linear-algebra
libraries). ``--model llamaHxL`` is a random LLaMA of hidden size H and L layers (the issue's target model
is llama2048x8: at least 1.6x faster with 2 processes). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RANK = 8


def build(name: str):
    import torch
    import transformers

    m = re.fullmatch(r"llama(\d+)x(\d+)", name)
    if m is None:
        raise SystemExit(f"unknown model {name}; expected llamaHxL, e.g. llama2048x8")
    hidden, layers = int(m.group(1)), int(m.group(2))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 43 // 16, num_hidden_layers=layers,
                                   num_attention_heads=max(1, hidden // 128), num_key_value_heads=max(1, hidden // 512),
                                   vocab_size=1024)
    return transformers.LlamaForCausalLM(cfg).eval()


def warm_up() -> None:
    """First LAPACK/BLAS calls in a process pay one-off set-up costs; keep them out of the timings."""
    import torch

    w = torch.randn(256, 512)
    torch.linalg.svd(w, full_matrices=False)
    torch.linalg.qr(w.T)
    torch.linalg.eigh((w @ w.T).double())
    torch.linalg.cholesky((w @ w.T).double() + torch.eye(256, dtype=torch.float64))


def worker(model: str, solver: str, repeats: int, out: Path) -> None:
    """One process of a row: build, then per repeat barrier, apply, barrier; process 0 writes the best seconds."""
    import copy

    import torch
    import torch.distributed as dist

    import ailora

    dist.init_process_group("gloo")
    torch.set_grad_enabled(False)
    warm_up()
    base = build(model)
    best, state = float("inf"), None
    for _ in range(repeats):
        copied = copy.deepcopy(base)
        dist.barrier()
        t0 = time.perf_counter()
        adapted = ailora.apply(copied, method="ailora", rank=RANK, solver=solver, head=None, progress=False)
        dist.barrier()
        best, state = min(best, time.perf_counter() - t0), ailora.state_of(adapted)
        del adapted, copied
    if dist.get_rank() == 0:
        out.write_text(json.dumps({"seconds": best, "split": state.split, "threads": torch.get_num_threads(),
                                   "passed": state.check.get("passed")}))
    dist.destroy_process_group()


def run_row(model: str, solver: str, processes: int, repeats: int, port: int, threads: int | None) -> dict:
    threads = threads or max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(port), __file__, "--worker", "--model", model, "--solvers", solver,
               "--repeats", str(repeats), "--out", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{processes} processes failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama2048x8")
    p.add_argument("--processes", default="1,2")
    p.add_argument("--solvers", default="exact,fast")
    p.add_argument("--repeats", type=int, default=2, help="best of this many applies per row")
    p.add_argument("--threads", type=int, default=None, help="threads per process (default: cores // processes)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.model, args.solvers, args.repeats, Path(args.out))
        return 0
    counts = [int(n) for n in args.processes.split(",")]
    print(f"model {args.model}, AILoRA rank {RANK} on query and value, {os.cpu_count()} cores, CPU (gloo), "
          f"best of {args.repeats}")
    print("| solver | processes | threads each | blocks per process | seconds | speed-up vs 1 process |")
    print("|---|---:|---:|---|---:|---:|")
    for solver in args.solvers.split(","):
        first = None
        for i, n in enumerate(counts):
            row = run_row(args.model, solver, n, args.repeats, 29600 + i, args.threads)
            first = first or row["seconds"]
            blocks = "/".join(map(str, row["split"].get("blocks", []))) or "all"
            print(f"| {solver} | {n} | {row['threads']} | {blocks} | {row['seconds']:.3f} | "
                  f"{first / row['seconds']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
