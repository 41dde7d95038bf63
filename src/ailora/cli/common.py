"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
import sys

from ailora.errors import AiloraError


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def parse_modules(items: list[str] | None) -> dict[str, list[str]] | None:
    """``["query=attn.wq", "value=attn.wv"]`` -> {"query": ["attn.wq"], "value": ["attn.wv"]}."""
    if not items:
        return None
    out: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise AiloraError(f"--modules entry {item!r} is not ROLE=PATTERN")
        role, pat = item.split("=", 1)
        out.setdefault(role.strip(), []).append(pat.strip())
    return out


def add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="ailora", help="lora, pissa, milora, ailora (default), reailora; see `ailora ls`")
    p.add_argument("--rank", type=positive_int, default=8, help="rank r of each adapted block (default 8)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default r for SVD starts, 2r for lora)")
    p.add_argument("--targets", default=None, help="roles to adapt, comma-separated (default: query,value)")
    p.add_argument("--policy", default=None,
                   help="per-role starts overriding the method, e.g. query=principal,value=minor,key=lora")
    p.add_argument("--modules", action="append", metavar="ROLE=PATTERN",
                   help="module-name regex for a role on an architecture ailora does not know (repeatable)")
    p.add_argument("--solver", default="exact", choices=["exact", "fast"],
                   help="exact: full SVD; fast: randomised SVD (principal) / Gram eigh (minor); outputs stay exact")
    p.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r) instead of alpha/r")
    p.add_argument("--seed", type=int, default=0, help="seed of random starts (lora) and the probe batch")


def emit(obj, path: str | None = None) -> None:
    text = json.dumps(obj, indent=2)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
