"""``ailora train``: fine-tune a model on a task and write a complete run directory.

Flags are shortcuts for dotted config keys; ``--config FILE.json`` gives a whole config, and
positional ``KEY=VALUE`` overrides come last (``train.lr=3e-4``; an unknown key is an error).
Several processes or GPUs: ``accelerate launch --multi_gpu --num_processes N $(which ailora) train ...``.
"""

from __future__ import annotations

import argparse

from ailora.cli.common import print_json

# flag -> dotted config key; their help is the key's field docstring.
SHORTCUTS = {
    "--model": "model.name", "--task": "task.name", "--method": "method.name", "--rank": "method.rank",
    "--alpha": "method.alpha", "--lr": "train.lr", "--epochs": "train.epochs", "--batch-size": "train.batch_size",
    "--grad-accum": "train.grad_accum", "--seed": "train.seed", "--mixed-precision": "train.mixed_precision",
    "--max-train-samples": "task.max_train_samples", "--max-eval-samples": "task.max_eval_samples",
    "--data-dir": "task.data_dir", "--run-dir": "run_dir", "--progressive-stages": "progressive.stages",
}
RESUME_HINT = "continue from the last checkpoint with the same command plus --resume"
SWITCHES = {"--resume": "resume", "--overwrite": "overwrite", "--no-progress": "train.progress"}


def overrides_from_args(args) -> list[str]:
    """The dotted overrides the flags and positionals stand for, in order (positionals last)."""
    out = []
    for flag, key in SHORTCUTS.items():
        value = getattr(args, _dest(flag))
        if value is not None:
            out.append(f"{key}={value}")
    for flag, key in SWITCHES.items():
        if getattr(args, _dest(flag)):
            out.append(f"{key}={'false' if flag.startswith('--no-') else 'true'}")
    return out + list(args.overrides)


def build_config(args):
    """The run config the arguments describe, checked against the method and task registries."""
    from ailora.train import RunConfig, check_run, load_config
    from ailora.train.checks import refuse_ignored_options

    overrides = overrides_from_args(args)
    cfg = check_run(load_config(args.config, overrides) if args.config else RunConfig.from_dict({}, overrides))
    return refuse_ignored_options(cfg)


def run(args) -> int:
    from ailora.train import train
    from ailora.train.runrecord import Interrupted, from_train

    cfg = build_config(args)
    if args.print_config:
        return print_json(cfg.to_dict())
    done = from_train(train(cfg))
    if isinstance(done, Interrupted):
        print(f"stopped after {done.step} steps; continue with --resume (run dir {done.run_dir})")
        return 0
    main = done.main_metric
    val, test = done.validation.get(main), done.test.get(main)
    print(f"{cfg.method.name} on {cfg.task.name}: validation {main} {val:.4f}, test {main} {test:.4f}, "
          f"{done.steps} steps, {done.wall_seconds:.1f} s; wrote {cfg.run_dir}/")
    return 0


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_parser(sub) -> None:
    from ailora.train import all_help

    keys = all_help()
    epilog = "config keys (set with KEY=VALUE or in --config):\n" + "\n".join(
        f"  {k}: {v}" for k, v in keys.items())
    p = sub.add_parser(
        "train", help="fine-tune a model on a task and write a run directory",
        description="Fine-tune with AILoRA or another method through a plain loop on Accelerate; writes "
        "config.json, metrics.jsonl (per epoch), results.json (test metrics, parameters, time, memory, "
        "versions, git revision), checkpoints/ (for --resume), tb/ and adapter/ (loads on the original base); "
        "train.report_to logs to TensorBoard, W&B and/or MLflow.",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="JSON file with a whole or partial config")
    for flag, key in SHORTCUTS.items():
        p.add_argument(flag, dest=_dest(flag), default=None, metavar=key.rsplit(".", 1)[-1].upper(),
                       help=f"{keys[key]} ({key})")
    for flag, key in SWITCHES.items():
        p.add_argument(flag, dest=_dest(flag), action="store_true", help=f"{keys[key]} ({key})"
                       if not flag.startswith("--no-") else "no progress bars (train.progress=false)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. train.lr=3e-4")
    p.set_defaults(func=run, resume_hint=RESUME_HINT)
