"""Argument helpers shared by subcommands: argument groups, and turning parsed groups into the
library's arguments."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import typing
from collections.abc import Iterable

from ailora.errors import AiloraError


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above zero (``inf`` and ``nan`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def parse_modules(items: list[str] | None) -> dict[str, list[str]] | None:
    """``["query=attn.wq", "value=attn.wv"]`` -> {"query": ["attn.wq"], "value": ["attn.wv"]}."""
    if not items:
        return None
    from ailora.core.layouts import split_pattern  # imported on use: start-up speed

    out: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise AiloraError(f"--modules entry {item!r} is not ROLE=PATTERN")
        role, pat = item.split("=", 1)
        split_pattern(pat.strip())  # a bad regex or row description fails here, before any model loads
        out.setdefault(role.strip(), []).append(pat.strip())
    return out


Argument = tuple[tuple[str, ...], dict]  # (flags, keywords of ArgumentParser.add_argument)


def arg(*flags: str, **kwargs) -> Argument:
    """One row of a subcommand's table of arguments."""
    return flags, kwargs


def add_command(sub, name: str, run, arguments: Iterable[Argument], help: str,
                description: str) -> argparse.ArgumentParser:
    """Register subcommand ``name`` with its table of ``arguments``; ``run(args) -> int`` handles it."""
    p = sub.add_parser(name, help=help, description=description)
    for flags, kwargs in arguments:
        p.add_argument(*flags, **kwargs)
    p.set_defaults(func=run)
    return p


def say(args: argparse.Namespace, *lines: str) -> int:
    """Print ``lines`` unless --quiet; returns the exit status, 0."""
    if not args.quiet:
        print("\n".join(lines))
    return 0


def print_json(obj) -> int:
    """Write ``obj`` to stdout as indented JSON; returns the exit status, 0."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    return 0


def model_args(flag: str, help: str) -> list[Argument]:
    """``flag`` (a model directory or minilm / smollm2) and how to load it: --kind, --dtype, --trust-remote-code."""
    return [
        arg(flag, required=True, help=f"{help} (config.json + safetensors), or minilm / smollm2"),
        arg("--kind", default="auto",
            help="model class: auto (the checkpoint's architecture), base, seq-cls, causal-lm, seq2seq-lm"),
        arg("--dtype", default=None, help="float32 (default), bfloat16 or float16"),
        arg("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)"),
    ]


def model_kwargs(args: argparse.Namespace) -> dict:
    """The loading arguments of ``model_args`` as keywords of ``ailora.core.models.load_model``."""
    return {"kind": args.kind, "dtype": args.dtype, "trust_remote_code": args.trust_remote_code}


# Arguments that name what a subcommand writes, and what it reads (``refuse_aliased_outputs``).
OUTPUT_ARGS = ("out", "residual_out", "run_dir", "dir")
INPUT_ARGS = ("adapter", "initial", "base", "model", "finetuned", "config", "spec", "task", "tasks", "data_dir")


def refuse_aliased_outputs(args: argparse.Namespace) -> None:
    """For a subcommand that can replace its output (``--overwrite``): refuse an output that is, holds
    or lies inside one of its inputs, or is the working directory, before anything is read or written."""
    if not hasattr(args, "overwrite"):
        return
    from ailora.core.files import refuse_aliased_output  # imported on use: start-up speed

    inputs = []
    for name in INPUT_ARGS:
        value = getattr(args, name, None)
        inputs += [(f"--{name.replace('_', '-')}", item) for item in (value if isinstance(value, list) else [value])]
    for name in OUTPUT_ARGS:
        if getattr(args, name, None):
            refuse_aliased_output(getattr(args, name), inputs, f"--{name.replace('_', '-')}")


def output_args(help: str) -> list[Argument]:
    """--out (``help`` says what goes there), --overwrite and --quiet."""
    return [
        arg("--out", required=True, help=help),
        arg("--overwrite", action="store_true", help="replace a non-empty --out directory"),
        arg("--quiet", action="store_true", help="no progress bar or summary line"),
    ]


def _option_type(name: str, tp):
    """argparse's ``type`` for LoRA option ``name``: the text as ``tp`` (an int, a float, else as given),
    checked by ``LoraOptions`` itself, so a bad value is argparse's one-line usage error."""
    from ailora.core.options import LoraOptions, OptionError

    base = next(a for a in (typing.get_args(tp) or (tp,)) if a is not type(None))

    def parse(text: str):
        try:
            value = base(text) if base in (int, float) else text
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if base is int else 'a number'}") from None
        try:
            LoraOptions(**{name: value})
        except OptionError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None
        return value

    parse.__name__ = base.__name__  # argparse names it in "invalid <type> value" messages
    return parse


def lora_args() -> list[Argument]:
    """One flag per field of ``LoraOptions``: its name with dashes (``--rank``, ``--residual-dtype``; the
    field's ``flag`` metadata where it has another, ``--rslora``), its docstring as the help."""
    from ailora.core.options import LoraOptions, field_help

    docs, hints = field_help(LoraOptions), typing.get_type_hints(LoraOptions)
    out = []
    for f in dataclasses.fields(LoraOptions):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        if hints[f.name] is bool:
            out.append(arg(flag, dest=f.name, action="store_true", help=docs[f.name]))
            continue
        default = "" if f.default is None else f" (default {f.default})"
        out.append(arg(flag, dest=f.name, default=None, type=_option_type(f.name, hints[f.name]),
                       choices=f.metadata.get("choices"), help=docs[f.name].rstrip(".") + default + "."))
    return out


METHOD_ARGS = [
    arg("--method", default="ailora", help="lora, pissa, milora, ailora (default), reailora; see `ailora ls`"),
    *lora_args(),
    arg("--modules", action="append", metavar="ROLE=PATTERN",
        help="module-name regex for a role on an architecture ailora does not know (repeatable)"),
    arg("--seed", type=int, default=0, help="seed of random starts (lora) and the probe batch"),
    arg("--device", default=None, help="where the SVDs run, e.g. cuda (default: the weights' device)"),
    arg("--no-head", action="store_true", help="do not train/save a task head even if the model has one"),
]


def apply_options(args: argparse.Namespace):
    """The options of ``METHOD_ARGS`` (and --quiet) as ``ailora.core.apply.ApplyOptions``, validated."""
    from ailora.core.apply import ApplyOptions  # imported on use: start-up speed
    from ailora.core.options import LoraOptions

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(LoraOptions)
             if getattr(args, f.name) is not None}
    return ApplyOptions(method=args.method, lora=LoraOptions(**given), modules=parse_modules(args.modules),
                        seed=args.seed, device=args.device, head=None if args.no_head else "auto",
                        progress=not args.quiet)
