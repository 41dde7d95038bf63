"""``ailora convert``: a residual-form adapter to plain LoRA on the original base, optionally compressed."""

from __future__ import annotations

import json
from pathlib import Path


def run(args) -> int:
    import ailora
    from ailora.core.convert import convert_dir

    report = convert_dir(args.adapter, args.out, rank=args.rank, initial=args.initial, base=args.base,
                         overwrite=args.overwrite)
    if not args.quiet:
        worst = report["max_relative_error"]
        print(f"wrote {args.out}/: {len(report['modules'])} modules, rank "
              f"{args.rank or 'unchanged'}, max relative error {worst:.3g}")
        if "check" in report:
            c = report["check"]
            print(f"output check against the trained model: max |diff| = {c['max_abs_diff']:.2e} "
                  f"(tolerance {c['tolerance']:.0e})")
    (Path(args.out) / "convert_report.json").write_text(json.dumps(report, indent=2) + "\n")
    del ailora
    return 0


def add_parser(sub) -> None:
    from ailora.cli.common import positive_int

    p = sub.add_parser(
        "convert", help="convert an adapter to plain LoRA on the original base, optionally at a lower rank",
        description="Convert an SVD-initialised adapter to a plain LoRA adapter that applies to the ORIGINAL base "
        "(B' = [B, -B0], A' = [A; A0], rank 2r), and/or compress it to --rank by an SVD of its delta, "
        "reporting the relative error per module. Input: an adapter written by ailora (already plain: only "
        "--rank applies), or a PEFT PiSSA/MiLoRA-style adapter trained on a residual base together with "
        "its initial adapter (--initial).",
    )
    p.add_argument("--adapter", required=True, help="adapter directory to convert")
    p.add_argument("--out", required=True, help="directory to write the converted adapter into")
    p.add_argument("--rank", type=positive_int, default=None, help="compress every module to at most this rank")
    p.add_argument("--initial", default=None,
                   help="the adapter as it was at initialisation (for adapters trained on a residual base)")
    p.add_argument("--base", default=None, help="original base model directory: check outputs after conversion")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
