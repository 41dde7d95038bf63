"""The ``ailora`` command line: one subcommand per module, each a thin layer over the library.

A subcommand module exposes ``add_parser(subparsers)``, which registers its parser and sets
``func`` (called with the parsed namespace, returning an exit status).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

import transformers

from ailora.errors import AiloraError
from ailora.version import __version__

# Module names under ailora.cli, in the order `ailora --help` lists them.
SUBCOMMANDS = ["ls", "init", "train", "convert", "merge", "extract", "analyze", "sweep", "report", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ailora",
        description="AILoRA and the SVD-initialised LoRA family: exact, PEFT-compatible fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"ailora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"ailora.cli.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Deprecation chatter from transformers internals that PEFT calls; nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    args = build_parser().parse_args(argv)
    # Weight-loading bars from transformers would drown our own output (and one-line errors).
    transformers.utils.logging.disable_progress_bar()
    # Loading a base model into a task class reports its new, randomly initialised head at warning
    # level on every run; ailora says what it trains itself.
    transformers.utils.logging.set_verbosity_error()
    try:
        return int(args.func(args) or 0)
    except AiloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
