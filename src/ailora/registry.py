"""Registering and looking up entries by name: the one implementation behind the metric, task and
training-method registries. It imports nothing of ailora's but the error class, so any registry
module can use it without an import cycle."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TypeVar

from ailora.errors import AiloraError

Entry = TypeVar("Entry")


def register(table: MutableMapping[str, Entry], name: str, entry: Entry, kind: str,
             replace: bool = False) -> Entry:
    """``table[name] = entry``; a name already there is an error unless ``replace``."""
    if name in table and not replace:
        raise AiloraError(f"{kind} {name!r} is already registered")
    table[name] = entry
    return entry


def lookup(table: MutableMapping[str, Entry], name: str, kind: str) -> Entry:
    """``table[name]``, or an error naming what is registered (in registration order)."""
    try:
        return table[name]
    except KeyError:
        raise AiloraError(f"unknown {kind} {name!r} (known: {', '.join(table)})") from None
