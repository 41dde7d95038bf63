"""``ailora demo``: LoRA, PiSSA, MiLoRA and AILoRA at rank 8 on all-MiniLM-L6-v2 / movie-sentiment.

The ``demo`` sweep preset (``ailora sweep --preset demo``: two lrs per method, chosen on
validation) followed by its report and one verdict line per task from the paired comparisons
against AILoRA: a few minutes on two CPU cores. Running it again reuses finished runs.
"""

from __future__ import annotations

import time

from ailora.cli.sweep import add_common, common_overrides


def run(args) -> int:
    from ailora.experiments.presets import get_preset
    from ailora.experiments.report import write_report
    from ailora.experiments.sweep import compose, run_sweep

    t0 = time.perf_counter()
    spec = compose(get_preset("demo").spec(), overrides=common_overrides(args))
    where = args.dir or "runs/demo"
    print(f"ailora demo: {', '.join(m.label for m in spec.methods)} on {spec.tasks[0]} with {spec.model}, "
          f"writing {where}/")
    run_sweep(spec, where, overwrite=args.overwrite, log=print)
    out = write_report(where)
    seeds = "one seed" if len(spec.seeds) == 1 else f"mean ± std over {len(spec.seeds)} seeds"
    print(f"\nTest {', '.join(spec.tasks)} (x 100) at each method's lr, {seeds}:\n")
    print(out["table"])
    for line in out["verdicts"]:
        print(f"paired verdict, {line}")
    print(f"report: {out['markdown']} and {out['html']}")
    print("plots: " + ", ".join(str(f) for f in out["figures"]))
    print(f"demo took {time.perf_counter() - t0:.0f} s")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="LoRA, PiSSA, MiLoRA, AILoRA on MiniLM / movie-sentiment in minutes, with a report",
                       description=__doc__)
    add_common(p)
    p.set_defaults(func=run)
