"""Typed values of config keys: JSON values checked against a field's type, command-line strings
parsed into one, dotted keys set and flattened, and the range checks the config sections run.

The generic half of ``ailora.train.config`` (which holds the sections and what depends on them):
nothing here knows a section; an error names the key it was given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing

from ailora.errors import AiloraError

__all__ = ["check_choice", "check_finite", "check_positive", "check_type", "flatten", "list_items", "parse_value",
           "set_dotted", "type_name"]


def check_type(key: str, tp, value):
    """``value`` if it has type ``tp`` (an int is accepted as a float), else an AiloraError."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alternative in inner[1:]:  # str | dict[str, str]: the first that fits (else the first's error)
            try:
                return check_type(key, alternative, value)
            except AiloraError:
                pass
        return check_type(key, inner[0], value)
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise AiloraError(f"{key} must be an object, got {value!r}")
        return {k: check_type(f"{key}.{k}", args[1], v) for k, v in value.items()}
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise AiloraError(f"{key} must be a list, got {value!r}")
        return [check_type(f"{key}[{i}]", args[0], v) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise AiloraError(f"{key} must be {type_name(tp)}, got {value!r}")
    return value


def type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def list_items(text: str) -> list:
    """A command-line list: JSON (``["a","b"]``), or names separated by commas, bracketed or not."""
    text = text.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            text = text.removeprefix("[").removesuffix("]")
    return [t for t in text.split(",") if t.strip()]


def parse_value(key: str, tp, text: str):
    """A command-line string as a value of type ``tp`` (none/null for optional fields)."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if text.strip().lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(key, inner[0], text)  # on the command line, the first type (str of str | dict)
    if typing.get_origin(tp) is list:
        items = list_items(text)
        return [parse_value(f"{key}[{i}]", args[0], str(t).strip()) for i, t in enumerate(items)]
    if tp is bool:
        low = text.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
    elif tp is int:
        try:
            return int(text)
        except ValueError:
            pass
    elif tp is float:
        try:
            return float(text)
        except ValueError:
            pass
    elif tp is str:
        return text
    raise AiloraError(f"{key} must be {type_name(tp)}, got {text!r}")


def set_dotted(data: dict, key: str, value) -> None:
    """Set ``data["a"]["b"] = value`` for ``key`` "a.b", creating sections as needed (in place)."""
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise AiloraError(f"config key {part} must be an object to set {key}")
    node[last] = value


def flatten(data: dict, prefix: str = "") -> dict:
    """Nested ``data`` as ``{"a.b": value}`` (the inverse of ``set_dotted`` over every key)."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_finite(config, prefix: str = "") -> None:
    """Every number of ``config`` (a config dataclass, its sections included) is finite: a NaN or an
    infinity (``--lr inf``, ``train.max_grad_norm=nan``) is an error naming the key."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise AiloraError(f"{prefix}{f.name} must be a finite number, got {value}")


def check_positive(key: str, value) -> None:
    if not value > 0:
        raise AiloraError(f"{key} must be positive, got {value}")


def check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise AiloraError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
