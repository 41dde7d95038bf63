"""The ``ailora`` command line: one subcommand per module, each a thin layer over the library.

A subcommand module exposes ``add_parser(subparsers)``, which registers its parser and sets
``func`` (called with the parsed namespace, returning an exit status), and may set
``resume_hint`` (what to do after Ctrl-C) and ``loads_models=False`` (it never imports transformers,
so ``main`` does not configure transformers' logging for it). Its module imports the library inside
``func``, so that building the parser stays light (start-up speed).

Exit statuses: 0 success; 2 a user's mistake or a failed check (one line, ``error: ...``; argparse
uses 2 for bad flags as well; a full disk is one too: "no space left on ..."); 1 an internal error
(one line naming it; ``--debug`` or ``AILORA_DEBUG=1`` shows the traceback); 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM, as Slurm and Kubernetes send before preemption): one line
saying how to continue (``ailora.interrupts``).

Stderr carries ailora's own lines only: warnings a dependency raises or logs (deprecations, a
missing optional kernel) are dropped while a command runs, and ailora's own warnings are one
line each (``warning: ...``), so that an error stays the one line it promises to be.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

from ailora.cli.common import refuse_aliased_outputs
from ailora.errors import AiloraError
from ailora.interrupts import exit_status, terminate_as_interrupt, was_terminated
from ailora.version import __version__

# Module names under ailora.cli, in the order `ailora --help` lists them.
DEBUG_ENV = "AILORA_DEBUG"  # set to 1: internal errors raise with their traceback (as --debug)
SUBCOMMANDS = ["ls", "init", "train", "convert", "merge", "export", "extract", "analyze", "sweep", "report", "demo"]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``error: ailora train: ... (see --help)``."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ailora",
        description="AILoRA and the SVD-initialised LoRA family: exact, PEFT-compatible fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"ailora {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an internal error (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Each module's top level is its table of arguments; the library it runs is imported by its handler,
    # so that building this parser imports neither torch, transformers nor PEFT (start-up speed).
    for name in SUBCOMMANDS:
        importlib.import_module(f"ailora.cli.{name.replace('-', '_')}").add_parser(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parse_args``, except that ``KEY=VALUE`` overrides may stand anywhere among the options
    (argparse takes only the first run of them as the positionals; the rest join them, in order)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not (hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _parse(build_parser(), argv)
    try:
        with _quiet_dependencies(), terminate_as_interrupt():
            if getattr(args, "loads_models", True):  # `ailora ls` sets it False: it never imports transformers
                _quiet_transformers()
            refuse_aliased_outputs(args)
            return int(args.func(args) or 0)
    except AiloraError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ailora ls | head`: the reader left; nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM raised as ``Terminated``
        hint = getattr(args, "resume_hint", None)
        said = "terminated (SIGTERM)" if was_terminated(exc) else "interrupted"
        print(f"{said}; {hint}" if hint else said, file=sys.stderr)
        return exit_status(exc)
    except Exception as exc:  # the last line of defence: one line, the traceback on request
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug or {DEBUG_ENV}=1 "
              "for the traceback)", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _quiet_dependencies() -> Iterator[None]:
    """While a command runs: warnings from outside ailora dropped, ailora's own on one line, and
    log records of libraries that configured no handler (bitsandbytes' "Failed to load CPU
    gemm_4bit_forward ..." at import) kept from Python's last-resort stderr handler."""
    root = logging.getLogger()
    sink = logging.NullHandler()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.filterwarnings("default", category=UserWarning, module=r"ailora(\.|$)")
        warnings.showwarning = _one_line_warning
        root.addHandler(sink)
        try:
            yield
        finally:
            root.removeHandler(sink)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {_one_line(message)}", file=file or sys.stderr)


def _quiet_transformers() -> None:
    import transformers  # here, not at the top: --help and ls start without torch (start-up speed)

    # Weight-loading bars from transformers would drown our own output (and one-line errors).
    transformers.utils.logging.disable_progress_bar()
    # Loading a base model into a task class reports its new, randomly initialised head at warning
    # level on every run; ailora says what it trains itself.
    transformers.utils.logging.set_verbosity_error()


def _one_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
