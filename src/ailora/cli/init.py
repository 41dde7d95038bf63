"""``ailora init``: initialise adapters on a model, write them and a JSON report."""

from __future__ import annotations

from ailora.cli.common import (
    METHOD_ARGS,
    add_command,
    apply_options,
    model_args,
    model_kwargs,
    output_args,
    say,
)

HELP = "initialise adapters on a model and write them with a JSON report"
DESCRIPTION = (
    "Initialise AILoRA (or another method's) adapters on a model, check that the model's outputs are unchanged, "
    "and write a PEFT adapter directory plus report.json (per layer: roles, shape, rank, singular values taken, "
    "seconds; total seconds; the output check). The adapter loads on the original base with "
    "peft.PeftModel.from_pretrained."
)
ARGUMENTS = [
    *model_args("--model", "model directory"),
    *output_args("directory to write the adapter and report.json into"),
    *METHOD_ARGS,
]


def run(args) -> int:
    from ailora.core.workflows import init_dir  # imported on use: start-up speed

    report = init_dir(args.model, args.out, apply_options(args), overwrite=args.overwrite, **model_kwargs(args))
    check = report["output_check"]
    triplets = sum(len(v) for rec in report["layers"] for v in rec["singular_values"].values())
    return say(args, f"{report['method']}: {len(report['layers'])} layers, {triplets} singular triplets moved, "
               f"{report['total_seconds']:.2f} s; output check max |diff| = {check['max_abs_diff']:.2e} "
               f"(tolerance {check['tolerance']:.0e}, {'passed' if check['passed'] else 'FAILED'})",
               f"wrote {args.out}/ (adapter_config.json, adapter_model.safetensors, ailora.json, report.json)")


def add_parser(sub) -> None:
    add_command(sub, "init", run, ARGUMENTS, HELP, DESCRIPTION)
