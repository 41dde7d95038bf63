"""``ailora report DIR``: the paper's Table 1 (Markdown, HTML), Figure 3 (PNG), step-level curves and
paired comparisons against a reference method (``--reference``) of a sweep."""

from __future__ import annotations


def run(args) -> int:
    from ailora.experiments.report import write_report

    out = write_report(args.dir, args.out, reference=args.reference)
    print(out["table"], end="")
    if out["comparisons"]:
        print(f"\nPaired comparisons against {out['reference']} (x 100; method minus {out['reference']}):\n"
              + out["comparisons"], end="")
        print("".join(f"{v}\n" for v in out["verdicts"]), end="")
    if out["progressive"]:
        print("\nProgtuning against the same config without it:\n" + out["progressive"], end="")
    print(f"wrote {out['markdown']}, {out['html']}" + "".join(f", {f}" for f in out["figures"]))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="tables (md, html) and training curves (png) of a sweep",
                       description="Rows are methods, columns the tasks' test metrics (mean ± std over seeds at "
                       "the lr selected on validation; best in bold), with trainable parameters and the lr; "
                       "plus training loss and validation metric per epoch per method.")
    p.add_argument("dir", help="sweep directory (holds sweep.json)")
    p.add_argument("--out", default=None, help="output directory (default DIR/report)")
    p.add_argument("--reference", default=None, metavar="NAME",
                   help="method label the others are compared with, seed by seed (default: ailora, when the "
                   "sweep has it): mean difference with a 95%% interval, paired t-test, Wilcoxon, bootstrap "
                   "over test examples, and steps to 95%% of the best validation score")
    p.set_defaults(func=run)
