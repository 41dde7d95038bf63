"""``ailora merge``: base + adapter -> one full model directory (safetensors), output-checked."""

from __future__ import annotations

from ailora.cli.common import add_command, arg, model_args, model_kwargs, output_args, say

HELP = "merge an adapter into its base model and write the full model"
DESCRIPTION = (
    "Load the base model and a PEFT LoRA adapter (such as one written by ailora), merge the adapter into the "
    "weights, check the merged model's outputs against base+adapter, and write the full model as safetensors "
    "(tokenizer files copied along). The base is built with the adapter's task head (its model class and number of "
    "labels, from ailora.json or the head's tensors), whatever head the base checkpoint has; --kind overrides the class."
)
ARGUMENTS = [
    *model_args("--base", "base model directory"),
    arg("--adapter", required=True, help="adapter directory"),
    *output_args("directory for the merged model"),
]


def run(args) -> int:
    from ailora.core.workflows import merge_dir  # imported on use: start-up speed

    check = merge_dir(args.base, args.adapter, args.out, overwrite=args.overwrite, **model_kwargs(args))
    return say(args, f"wrote {args.out}/ (merged safetensors); max |diff| against base+adapter = "
               f"{check['max_abs_diff']:.2e} (tolerance {check['tolerance']:.0e})")


def add_parser(sub) -> None:
    add_command(sub, "merge", run, ARGUMENTS, HELP, DESCRIPTION)
