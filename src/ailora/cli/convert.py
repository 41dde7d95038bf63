"""``ailora convert``: a residual-form adapter to plain LoRA on the original base, optionally compressed."""

from __future__ import annotations

from ailora.cli.common import add_command, arg, output_args, positive_int, say

HELP = "convert an adapter to plain LoRA on the original base, optionally at a lower rank"
DESCRIPTION = (
    "Convert an SVD-initialised adapter to a plain LoRA adapter that applies to the ORIGINAL base "
    "(B' = [B, -B0], A' = [A; A0], rank 2r), and/or compress it to --rank by an SVD of its delta, reporting the "
    "relative error per module (in ailora.json and convert_report.json). Input: an adapter written by ailora "
    "(already plain: only --rank applies), or a PEFT PiSSA/MiLoRA-style adapter trained on a residual base "
    "together with its initial adapter (--initial)."
)
ARGUMENTS = [
    arg("--adapter", required=True, help="adapter directory to convert"),
    *output_args("directory to write the converted adapter into"),
    arg("--rank", type=positive_int, default=None, help="compress every module to at most this rank"),
    arg("--initial", default=None,
        help="the adapter as it was at initialisation (for adapters trained on a residual base)"),
    arg("--base", default=None, help="original base model directory (or minilm / smollm2): check outputs after "
        "conversion; built with the adapter's task head (class and number of labels)"),
]


def run(args) -> int:
    from ailora.core.convert import convert_dir  # imported on use: start-up speed

    report = convert_dir(args.adapter, args.out, rank=args.rank, initial=args.initial, base=args.base,
                         overwrite=args.overwrite)
    lines = [f"wrote {args.out}/: {len(report['modules'])} modules, rank {args.rank or 'unchanged'}, "
             f"max relative error {report['max_relative_error']:.3g}"]
    if "check" in report:
        lines.append(f"output check against the trained model: max |diff| = {report['check']['max_abs_diff']:.2e} "
                     f"(tolerance {report['check']['tolerance']:.0e})")
    return say(args, *lines)


def add_parser(sub) -> None:
    add_command(sub, "convert", run, ARGUMENTS, HELP, DESCRIPTION)
