"""``ailora analyze <name>``: the paper's analyses, each writing <out>/<name>.png and <name>.json.

Each subcommand is a table of arguments whose destinations are the keyword arguments of its
``ailora.analysis.ANALYSES`` function; the work is the library's.
"""

from __future__ import annotations

import argparse
import inspect

# The library's defaults, repeated here so that the parser imports no torch or matplotlib (start-up
# speed); tests/test_startup.py checks they equal ailora.analysis.commands' and ailora.analysis.lm's.
DEFAULT_OUT = "analysis"
DEFAULT_TARGETS = "query,value"
OBJECTIVES = ("auto", "mlm", "causal")
MODEL = "model directory, or minilm / smollm2"
LABELS = "one label per {} (default: directory names)"

BASE = ("--base", dict(required=True, help=f"base {MODEL}"))
FINETUNED = (
    "--finetuned",
    dict(required=True, nargs="+", help="fine-tuned (or adapter-merged) model directories"),
)
LABELS_FT = ("--labels", dict(nargs="+", help=LABELS.format("--finetuned")))
SEED = "--seed"
TARGETS = (
    "--targets",
    dict(
        default=DEFAULT_TARGETS, help=f"roles to analyse, e.g. query,key,value (default: {DEFAULT_TARGETS})"
    ),
)
OUT = (
    "--out",
    dict(
        default=DEFAULT_OUT, help=f"output directory for <name>.png and <name>.json (default: {DEFAULT_OUT})"
    ),
)

# name -> (help, [(flag, argparse keywords)]); every dest is a parameter of ANALYSES[name].
SUBCOMMANDS = {
    "norms": (
        "Frobenius norms of dW^Q, dW^V per layer, box plots (Fig. 1 c, d)",
        [
            BASE,
            ("--finetuned", dict(required=True, nargs="+", help="fully fine-tuned model directories")),
            LABELS_FT,
            TARGETS,
            OUT,
        ],
    ),
    "tsne": (
        "t-SNE of per-layer W^Q, W^V before/after fine-tuning (Figs. 1 a, b, 8)",
        [
            BASE,
            FINETUNED,
            LABELS_FT,
            (
                "--perplexity",
                dict(type=float, help="t-SNE perplexity (default: (n-1)/3 clipped to [2, 30], n points)"),
            ),
            (SEED, dict(type=int, default=0, help="t-SNE random state (default: 0)")),
            TARGETS,
            OUT,
        ],
    ),
    "spectrum": (
        "singular values of each target weight, principal/minor slices marked",
        [
            ("--model", dict(required=True, help=MODEL)),
            ("--rank", dict(type=int, required=True, help="r: the slices an initialisation of rank r takes")),
            TARGETS,
            OUT,
        ],
    ),
    "similarity": (
        "subspace similarity of LoRA updates with full FT dW (Figs. 4a, 7)",
        [
            BASE,
            ("--finetuned", dict(required=True, help="fully fine-tuned model directory (gives dW)")),
            (
                "--adapter",
                dict(
                    dest="adapters",
                    metavar="ADAPTER",
                    required=True,
                    nargs="+",
                    help="PEFT LoRA adapter directories",
                ),
            ),
            ("--labels", dict(nargs="+", help=LABELS.format("--adapter"))),
            ("--rank", dict(type=int, help="r of phi (default: each adapter module's rank)")),
            TARGETS,
            OUT,
        ],
    ),
    "forgetting": (
        "CE / KL of fine-tuned against base predictions (Fig. 4b)",
        [
            BASE,
            FINETUNED,
            LABELS_FT,
            (
                "--text",
                dict(
                    required=True, help="held-out text: .txt (one per line) or .jsonl (field text/sentence)"
                ),
            ),
            ("--tokenizer", dict(help="tokenizer directory (default: --base)")),
            (
                "--objective",
                dict(
                    choices=OBJECTIVES,
                    default="auto",
                    help="masked-LM (encoders) or next-token (decoders); auto reads config.json",
                ),
            ),
            ("--max-texts", dict(type=int, default=512, help="use at most this many texts (default: 512)")),
            (
                "--max-length",
                dict(type=int, default=128, help="truncate texts to this many tokens (default: 128)"),
            ),
            ("--batch-size", dict(type=int, default=16, help="texts per forward pass (default: 16)")),
            (
                "--mask-prob",
                dict(type=float, default=0.15, help="fraction of tokens masked for mlm (default: 0.15)"),
            ),
            (SEED, dict(type=int, default=0, help="seed of the masked positions and of a missing LM head")),
            OUT,
        ],
    ),
    "curves": (
        "train loss and validation metric per epoch across runs (Fig. 3)",
        [
            ("--runs", dict(required=True, nargs="+", help="run directories (config.json + metrics.jsonl)")),
            ("--metric", dict(help="validation metric to plot (default: the first one logged)")),
            OUT,
        ],
    ),
}


def _run(args) -> int:
    from ailora.analysis import ANALYSES  # imported on use: start-up speed
    from ailora.core.files import require_writable

    analysis = ANALYSES[args.analysis]
    require_writable(args.out, "--out")  # before any model is loaded
    png, js = analysis(**{name: getattr(args, name) for name in inspect.signature(analysis).parameters})
    print(f"wrote {png} and {js}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "analyze",
        help="analyses of the AILoRA paper: PNG + JSON",
        description="Run one of the AILoRA paper's analyses; writes <out>/<name>.png and <out>/<name>.json.",
    )
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    for name, (help_text, arguments) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        for flag, keywords in arguments:
            p.add_argument(flag, **keywords)
        p.set_defaults(func=_run)
    return parser
