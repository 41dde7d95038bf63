"""``ailora init``: initialise adapters on a model, write them and a JSON report; or, with
--residual-out, the streaming init (the checkpoint read tensor by tensor, a residual model written)."""

from __future__ import annotations

from ailora.cli.common import (
    METHOD_ARGS,
    add_command,
    apply_options,
    arg,
    model_args,
    model_kwargs,
    say,
)
from ailora.errors import AiloraError

HELP = "initialise adapters on a model and write them with a JSON report"
DESCRIPTION = (
    "Initialise AILoRA (or another method's) adapters on a model, check that the model's outputs are unchanged, "
    "and write a PEFT adapter directory plus report.json (per layer: roles, shape, rank, singular values taken, "
    "seconds; total seconds; the output check). The adapter loads on the original base with "
    "peft.PeftModel.from_pretrained. With --residual-out instead of --out, the streaming init for checkpoints "
    "larger than memory: the safetensors checkpoint is read tensor by tensor (never whole) and written as the "
    "residual model (same shards), with the starting factors, report.json and a marker; `ailora train --model OUT` "
    "and ailora.load_initialised(OUT) start from it with no decomposition."
)
ARGUMENTS = [
    *model_args("--model", "model directory"),
    arg("--out", default=None, help="directory to write the adapter and report.json into"),
    arg("--residual-out", default=None,
        help="streaming init: directory to write the residual model, starting factors and report.json into"),
    arg("--overwrite", action="store_true", help="replace a non-empty output directory"),
    arg("--quiet", action="store_true", help="no progress bar or summary line"),
    *METHOD_ARGS,
    arg("--quantize", default=None, choices=["nf4", "fp4", "int8"],
        help="QAILoRA: store each residual (and the unadapted Linear layers) as a bitsandbytes layer; "
             "the report gives each layer's quantisation error against QLoRA's"),
    arg("--quant-iters", type=int, default=0, help="error-reducing iterations of the principal starts (with --quantize)"),
    arg("--quant-double", action="store_true", help="double quantisation of the 4-bit scales (with --quantize)"),
    arg("--quant-keep", action="store_true", help="keep the unadapted Linear layers in full precision (with --quantize)"),
]


def _options(args):
    """``apply_options`` with the --quant-* flags (``ailora.core.quantize``)."""
    import dataclasses

    return dataclasses.replace(apply_options(args), quantize=args.quantize, quant_iters=args.quant_iters,
                               quant_double=args.quant_double, quant_keep=args.quant_keep)


def run(args) -> int:
    if (args.out is None) == (args.residual_out is None):
        raise AiloraError("give one of --out DIR (an adapter for the model) or --residual-out DIR (the streaming init)")
    from ailora.core.workflows import init_dir, init_residual_dir  # imported on use: start-up speed

    write = init_dir if args.out is not None else init_residual_dir
    out = args.out if args.out is not None else args.residual_out
    report = write(args.model, out, _options(args), overwrite=args.overwrite, **model_kwargs(args))
    check = report["output_check"]
    triplets = sum(len(v) for rec in report["layers"] for v in rec["singular_values"].values())
    files = ("adapter_config.json, adapter_model.safetensors, ailora.json, report.json" if args.out is not None
             else "the residual model, initial_adapter/, report.json, ailora_initialised.json")
    scope = (" (end-to-end probe)" if "probe" in check else
             f" (worst of {check['layers']['count']} layers, {check['layers']['rows']} random rows each)")
    return say(args, f"{report['method']}: {len(report['layers'])} layers, {triplets} singular triplets moved, "
               f"{report['total_seconds']:.2f} s; output check{scope} max |diff| = {check['max_abs_diff']:.2e} "
               f"(tolerance {check['tolerance']:.0e}, {'passed' if check['passed'] else 'FAILED'})",
               f"wrote {out}/ ({files})")


def add_parser(sub) -> None:
    add_command(sub, "init", run, ARGUMENTS, HELP, DESCRIPTION)
