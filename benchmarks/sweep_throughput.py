"""Sweep throughput on one machine: runs one after another with all threads each, against Ray tasks
side by side with fewer threads each.

The same N-run MiniLM sweep (LoRA rank 8 on movie-sentiment, one seed per run, tiny runs: 256
training sentences, 1 epoch, 64 tokens) is run twice in fresh directories:

* sequential: the local executor, ``--threads`` torch threads per run (default 2);
* parallel: the Ray executor on a local cluster of ``--parallel`` CPUs (default 2), 1 CPU and 1
  torch thread per run, so ``--parallel`` runs at a time.

Each is timed from the sweep's start to its summary (the Ray cluster is started before, and its
start-up is reported apart). It prints the runs per minute of each and a ready-to-paste line with
the ratio. Both sweeps' test scores are printed too: runs at other thread counts differ in their
float sums, so they are close but need not be equal.

    python benchmarks/sweep_throughput.py [--runs 16] [--threads 2] [--parallel 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ailora.experiments.executors import LocalExecutor
from ailora.experiments.rayexec import OBJECT_STORE_BYTES, RayExecutor, RayOptions
from ailora.experiments.sweep import SweepSpec, run_sweep
from ailora.train import train


def spec(runs: int) -> SweepSpec:
    return SweepSpec.from_dict({
        "model": "minilm", "tasks": ["movie-sentiment"], "seeds": list(range(runs)), "lrs": [1e-3],
        "methods": ["lora"],
        "options": {"model.max_length": 64, "train.batch_size": 32, "train.epochs": 1, "method.rank": 8,
                    "task.max_train_samples": 256, "task.max_eval_samples": 64, "train.progress": False,
                    "train.tensorboard": False}})


def timed(where: Path, executor, runs: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    summary = run_sweep(spec(runs), where, executor=executor)
    seconds = time.perf_counter() - t0
    if summary["runs"]["complete"] != runs:
        raise SystemExit(f"{where}: {summary['runs']['complete']} of {runs} runs complete")
    return seconds, summary


def test_mean(summary: dict) -> float:
    return summary["tasks"]["movie-sentiment"]["methods"]["lora"]["test"]["accuracy"]["mean"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch threads of each sequential run")
    p.add_argument("--parallel", type=int, default=2, help="CPUs of the local Ray cluster (runs at a time)")
    p.add_argument("--dir", default=None, help="where the two sweeps go (default: a temporary directory)")
    args = p.parse_args()
    import ray

    root = Path(args.dir or tempfile.mkdtemp(prefix="sweep-throughput-"))
    threads = torch.get_num_threads()
    seq, seq_summary = timed(root / "sequential", LocalExecutor(train, threads=args.threads), args.runs)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ray.init(num_cpus=args.parallel, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    start = time.perf_counter() - t0
    try:
        par, par_summary = timed(root / "parallel", RayExecutor(RayOptions(run_cpus=1, progress=False)), args.runs)
    finally:
        ray.shutdown()
    print(f"{args.runs} runs in {root}")
    print(f"sequential, {args.threads} threads per run: {seq:.1f} s ({60 * args.runs / seq:.2f} runs/min), "
          f"test accuracy {test_mean(seq_summary):.4f}")
    print(f"Ray, {args.parallel} runs at a time, 1 thread each: {par:.1f} s ({60 * args.runs / par:.2f} runs/min), "
          f"test accuracy {test_mean(par_summary):.4f} (cluster start-up {start:.1f} s, not counted)")
    print(f"| {args.runs}-run MiniLM sweep | sequential x{args.threads} threads: {seq:.0f} s | "
          f"Ray {args.parallel} x 1 thread: {par:.0f} s | throughput ratio {seq / par:.2f}x |")


if __name__ == "__main__":
    main()
