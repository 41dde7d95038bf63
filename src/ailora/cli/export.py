"""``ailora export gguf``: an adapter as a llama.cpp LoRA adapter file (for llama.cpp and Ollama)."""

from __future__ import annotations

from ailora.cli.common import add_command, arg, say

HELP = "write an adapter in another serving format (gguf: a llama.cpp / Ollama LoRA adapter)"
GGUF_HELP = "write an adapter as a llama.cpp LoRA adapter (.gguf), for llama.cpp and Ollama"
GGUF_DESCRIPTION = (
    "Write a LoRA adapter (from ailora.save, a Trainer checkpoint saved with AiloraCallback, or a plain PEFT LoRA) "
    "as a llama.cpp LoRA adapter file: llama.cpp's tensor names for the base architecture, one alpha with each "
    "module's own scale folded into its B, and the rows of LLaMA q/k projections and of fused projections in "
    "llama.cpp's order. Modules llama.cpp cannot take (task heads, embeddings, lm_head, DoRA, LoRA biases) are "
    "refused before anything is written. Ollama: a Modelfile with FROM <base.gguf> and ADAPTER <out.gguf>."
)
GGUF_ARGUMENTS = [
    arg("--adapter", required=True, help="adapter directory"),
    arg("--base", required=True, help="the base model: its directory (config.json), smollm2, or its GGUF file"),
    arg("--base-gguf", default=None, help="the base GGUF llama.cpp will run, checked against the adapter "
        "(architecture, heads, tensor names and shapes); default: --base when it is a GGUF, the package's for smollm2"),
    arg("--out", required=True, help="the adapter file to write (.gguf)"),
    arg("--overwrite", action="store_true", help="replace an existing --out"),
    arg("--quiet", action="store_true", help="no summary line"),
]


def run_gguf(args) -> int:
    from ailora.core.gguf_adapter import export_gguf  # imported on use: start-up speed

    report = export_gguf(args.adapter, args.out, args.base, base_gguf=args.base_gguf, overwrite=args.overwrite)
    folded = sum(m["folded"] != 1.0 for m in report["modules"].values())
    reordered = sum(m["rows"] != "as is" for m in report["modules"].values())
    checked = f"checked against {report['base_gguf']}" if report["base_gguf"] else "not checked against a base GGUF"
    return say(args, f"wrote {report['out']}: {report['architecture']} LoRA adapter, {len(report['modules'])} modules, "
               f"alpha {report['alpha']:g} ({folded} with their scale folded into B, {reordered} with rows reordered); "
               f"{checked}")


def add_parser(sub) -> None:
    parser = sub.add_parser("export", help=HELP, description=HELP)
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    add_command(formats, "gguf", run_gguf, GGUF_ARGUMENTS, GGUF_HELP, GGUF_DESCRIPTION)
