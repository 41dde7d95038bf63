"""Progtuning against the same run without it, for AILoRA and full fine-tuning (README table).

    .venv/bin/python benchmarks/progtuning.py [--dir runs/progtuning] [--task movie-sentiment]
        [--stages 3] [--epochs 3] [--train-samples 1000]

Runs four trainings of all-MiniLM-L6-v2 (finished ones are reused) and prints, per method, the
test metric with and without Progtuning, and what it saved: trainable parameters updated summed
over optimizer steps, time inside optimizer steps, and whole-run wall time
(``ailora.train.progressive.savings``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ailora.train import train
from ailora.train.config import RunConfig
from ailora.train.progressive import savings
from ailora.train.runrecord import RunRecord, from_train, read_complete

LRS = {"ailora": 1e-3, "full": 5e-5}


def run(out: Path, method: str, stages: int, args) -> RunRecord:
    run_dir = out / f"{method}-T{stages}"
    if (run_dir / "results.json").is_file():
        return read_complete(run_dir)
    cfg = RunConfig.from_dict({
        "model": {"name": "minilm", "max_length": 64},
        "method": {"name": method},
        "task": {"name": args.task, "max_train_samples": args.train_samples, "max_eval_samples": 500},
        "train": {"lr": LRS[method], "epochs": args.epochs, "batch_size": 16, "seed": 0, "progress": False,
                  "tensorboard": False},
        "progressive": {"stages": stages},
        "run_dir": str(run_dir), "overwrite": True,
    })
    return from_train(train(cfg))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="runs/progtuning")
    p.add_argument("--task", default="movie-sentiment")
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-samples", type=int, default=1000)
    args = p.parse_args()
    out = Path(args.dir)
    print(f"all-MiniLM-L6-v2 on {args.task}: {args.train_samples} training sentences, {args.epochs} epochs, "
          f"batch 16, seed 0; Progtuning with {args.stages} stages (epoch boundaries, defaults otherwise)")
    print("| method | lr | test (no Progtuning) | test (Progtuning) | updated-parameter saving "
          "| optimizer-step time saving | wall-time saving |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method in LRS:
        base = run(out, method, 0, args)
        prog = run(out, method, args.stages, args)
        s = savings(prog, base)
        print(f"| {method} | {LRS[method]:g} | {s['baseline_test']:.3f} | {s['run_test']:.3f} | "
              f"{s['updated_parameter_saving']:.1%} | {s['train_time_saving']:.1%} | {s['wall_time_saving']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
