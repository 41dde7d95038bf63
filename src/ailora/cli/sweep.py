"""``ailora sweep``: methods x tasks x seeds x a learning-rate grid, resumable; the lr is selected on
validation per method and task, test scores are reported as mean ± std over seeds.

A sweep comes from a preset (``--preset``, see ``ailora ls presets``), a JSON spec (``--spec``;
format in ``ailora.experiments.sweep``) or flags alone; flags and ``KEY=VALUE`` overrides apply on top.
Runs execute one after another here (``--executor local``) or as Ray tasks on a cluster
(``--executor ray``; docs/cluster.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ailora.cli.common import print_json
from ailora.errors import AiloraError

DEFAULT_DIR = "runs/{preset}"


def _list(kind):
    def parse(text: str):
        try:
            return [kind(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}s") from None
    return parse


def build_spec(args):
    """The sweep the arguments describe: preset or spec file, then flags, then overrides."""
    from ailora.experiments.presets import get_preset
    from ailora.experiments.sweep import compose

    if args.preset and args.spec:
        raise AiloraError("give --preset or --spec, not both")
    if args.preset:
        base = get_preset(args.preset).spec(args.model, args.tasks[0] if args.tasks else None)
    elif args.spec:
        try:
            base = json.loads(Path(args.spec).read_text(encoding="utf-8"))
        except OSError as exc:
            raise AiloraError(f"cannot read sweep spec {args.spec}: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AiloraError(f"sweep spec {args.spec} is not valid JSON: {exc}") from None
    else:
        base = {}
    return compose(base, model=args.model, tasks=args.tasks, methods=args.methods, seeds=args.seeds, lrs=args.lrs,
                   overrides=common_overrides(args), bracket=args.bracket)


def common_overrides(args) -> list[str]:
    """The ``KEY=VALUE`` overrides of ``add_common``'s arguments, --no-progress included."""
    return list(args.overrides) + (["train.progress=false"] if args.no_progress else [])


def sweep_dir(args) -> str:
    if args.dir:
        return args.dir
    if args.preset:
        return DEFAULT_DIR.format(preset=args.preset)
    raise AiloraError("give the sweep directory (--dir DIR)")


def print_table(summary: dict) -> None:
    from ailora.experiments.report import build_table, to_markdown

    print(to_markdown(build_table(summary)), end="")


def dry_run(spec, where: str) -> int:
    from collections import Counter

    from ailora.experiments.sweep import plan, run_state

    runs = plan(spec, where, extended=True)  # with the grid points bracketing has added so far
    states = Counter(run_state(cfg.run_dir) for _, cfg in runs)
    print_json(spec.to_dict())
    print(f"{len(runs)} runs in {where}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    return 0


def executor(args, spec):
    """The Ray executor the flags ask for, or None for the local one (``run_sweep``'s default);
    Ray's flags with the local executor are an error."""
    from ailora.experiments.executors import check_threads

    if args.executor == "local":
        given = [f for f, v in (("--ray-address", args.ray_address), ("--run-gpus", args.run_gpus),
                                ("--retries", args.retries)) if v is not None]
        if given:
            raise AiloraError(f"{given[0]} is an option of --executor ray")
        check_threads(args.run_cpus, "--run-cpus")
        return None
    from ailora.experiments.rayexec import RayExecutor, RayOptions

    progress = spec.options.get("train.progress", True) is not False
    opts = RayOptions(address=args.ray_address, run_cpus=1 if args.run_cpus is None else args.run_cpus,
                      run_gpus=args.run_gpus or 0.0, retries=2 if args.retries is None else args.retries,
                      progress=progress)
    return RayExecutor(opts)


def run(args) -> int:
    from ailora.experiments.sweep import SUMMARY, run_sweep

    spec = build_spec(args)
    if args.print_spec:
        return print_json(spec.to_dict())
    where = sweep_dir(args)
    if args.dry_run:
        return dry_run(spec, where)
    summary = run_sweep(spec, where, overwrite=args.overwrite, log=print, executor=executor(args, spec),
                        threads=args.run_cpus)
    print_table(summary)
    print(f"wrote {where}/{SUMMARY}; tables and plots: ailora report {where}")
    return 0


def add_common(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``ailora sweep`` and ``ailora demo``."""
    p.add_argument("--dir", default=None, help="sweep directory (default for a preset: runs/PRESET)")
    p.add_argument("--overwrite", action="store_true", help="replace a sweep directory that holds a different spec")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (train.progress=false)")
    p.set_defaults(resume_hint="run the same command again to continue where it stopped (finished runs are kept)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config keys for every run, e.g. train.epochs=2 (see `ailora train --help`)")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep", help="methods x tasks x seeds x lr grid; lr selected on validation, test mean ± std",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Finished runs are not redone and a killed sweep continues where it stopped: run the same "
        "command again. Layout: DIR/sweep.json, DIR/<task>/<method>/lr<lr>/seed<s>/, DIR/summary.json.")
    p.add_argument("--preset", default=None, help="a preset sweep (see `ailora ls presets`)")
    p.add_argument("--spec", default=None, help="JSON sweep spec (model, tasks, methods, seeds, lrs, options)")
    p.add_argument("--model", default=None, help="model name or directory (default minilm)")
    p.add_argument("--tasks", type=_list(str), default=None, help="comma-separated tasks")
    p.add_argument("--methods", type=_list(str), default=None,
                   help="comma-separated method labels: a preset's/spec's entries, or method names")
    p.add_argument("--seeds", type=_list(int), default=None, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--lrs", type=_list(float), default=None, help="lr grid for every method, e.g. 2e-4,5e-4")
    p.add_argument("--bracket", type=int, default=None, metavar="N",
                   help="extend a method's lr grid by up to N points while its selected lr is at an edge")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: runs one after another in this process (default); ray: Ray tasks (docs/cluster.md)")
    p.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="the Ray cluster to use (default: start a local one for the sweep)")
    p.add_argument("--run-cpus", type=int, default=None,
                   help="CPUs (and torch threads) per run (Ray default 1; local default: torch's own)")
    p.add_argument("--run-gpus", type=float, default=None, help="GPUs per Ray run (default 0)")
    p.add_argument("--retries", type=int, default=None,
                   help="times a Ray run whose worker died is retried from its last checkpoint (default 2)")
    p.add_argument("--dry-run", action="store_true", help="print the spec and how many runs are done/left")
    p.add_argument("--print-spec", action="store_true", help="print the resolved spec and exit")
    add_common(p)
    p.set_defaults(func=run)
