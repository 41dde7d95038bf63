"""``ailora report DIR``: the paper's Table 1 (Markdown, HTML) and Figure 3 (PNG) of a sweep."""

from __future__ import annotations


def run(args) -> int:
    from ailora.experiments.report import write_report

    out = write_report(args.dir, args.out)
    print(out["table"], end="")
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
    p.set_defaults(func=run)
