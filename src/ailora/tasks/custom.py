"""A user's own task from CSV, TSV, JSON-lines or JSON files, described by a short spec.

Example (a dict, or the same as a JSON file)::

    {"name": "reviews", "kind": "classification", "path": "reviews.csv",
     "text_fields": ["text"], "label_field": "stars", "label_names": ["1", "2", "3", "4", "5"],
     "metrics": ["accuracy", "macro_f1"], "validation_size": 0.1, "test_size": 0.1, "seed": 0}

Keys: ``name`` and ``kind`` are required. Data is one file, ``path`` (split with the seed), or
``train`` and ``test`` (+ optional ``validation``; when absent it is carved from train). Relative
paths are resolved against the JSON file's folder (or ``base_dir``). ``text_fields`` (default
``["text"]``) are the input columns, two for sentence pairs; for generation they are joined by a
newline into the prompt. ``label_field`` (default ``"label"``) is the class, number or target
text. ``label_names`` fixes the classes and their order (default: the sorted labels of the training
split); with it, labels may also be given as class indices (0, 1, ...) unless a name is a number.
``metrics`` default by kind: accuracy; pearson + spearman; rouge1/2/L; squad_f1 + squad_em.
Optional: ``description``, ``main_metric``, ``validation_size`` and ``test_size`` (a count or a
fraction, default 0.1), ``seed`` (default 0), ``dedupe`` (default false). Extractive QA files
must be in the SQuAD JSON format. A value of the wrong type is an error, never read loosely. The
file format follows the extension: .csv, .tsv, .jsonl, .json.
Generation only: ``prompt_template`` (holds ``{input}`` once, e.g. ``"Question: {input}\nAnswer:"``),
``keep`` (``"start"`` or ``"end"``: the end of an over-long input kept) and ``decoding`` (any of
``max_new_tokens``, ``num_beams``, ``no_repeat_ngram_size``, ``length_penalty``), checked when the
spec is read (see ``ailora.tasks.prompts``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ailora.errors import AiloraError
from ailora.tasks.kinds import EXAMPLE_KINDS, example_kind
from ailora.tasks.prompts import KEEP, decoding_problem, template_problem
from ailora.tasks.readers import read_text, require_file
from ailora.tasks.spec import RawSplits, TaskSpec

_KEYS = {
    "name", "description", "kind", "path", "train", "validation", "test", "text_fields", "label_field",
    "label_names", "metrics", "main_metric", "validation_size", "test_size", "seed", "dedupe",
    "prompt_template", "keep", "decoding",
}  # fmt: skip
_GENERATION_KEYS = ("prompt_template", "keep", "decoding")
_FORMATS = (".csv", ".tsv", ".jsonl", ".json")


def task_from_dict(
    config: Mapping[str, Any],
    base_dir: str | os.PathLike[str] | None = None,
    spec_file: str | os.PathLike[str] | None = None,
) -> TaskSpec:
    """A :class:`TaskSpec` for the user's files described by ``config`` (keys in the module docstring);
    ``spec_file``, the JSON file it came from, is named in errors."""
    name = config.get("name") or "<unnamed>"
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise AiloraError(
            f"task spec {name!r}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})"
        )
    for key in ("name", "kind"):
        if not config.get(key):
            raise AiloraError(f"task spec {name!r}: missing {key!r}")
    kind = config["kind"]
    known = EXAMPLE_KINDS.get(kind)  # an unknown kind: TaskSpec names it and the known ones
    where = f"task spec {name!r}" + (f" ({spec_file})" if spec_file is not None else "")
    _check_types(config, where)
    generation = _generation_options(config, kind, known is not None and known.prompts, where)
    files = _files(name, config, Path(base_dir) if base_dir is not None else Path.cwd())
    text_fields = config.get("text_fields", ["text"])
    if isinstance(text_fields, str):
        text_fields = [text_fields]
    return TaskSpec(
        name=name,
        description=config.get("description")
        or f"user task from {', '.join(p.name for p in files.values())}",
        kind=kind,
        metrics=tuple(config.get("metrics") or (known.default_metrics if known else ("accuracy",))),
        main_metric=config.get("main_metric", ""),
        loader=load_custom,
        text_fields=known.text_fields(tuple(text_fields)) if known else tuple(text_fields),
        label_names=config.get("label_names"),
        source=", ".join(str(p) for p in files.values()),
        validation_size=config.get("validation_size", 0.1),
        test_size=config.get("test_size", 0.1),
        split_seed=config.get("seed", 0),
        dedupe=config.get("dedupe", False),
        options={"files": files, "label_field": config.get("label_field", "label"), **generation},
    )


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str | int) and not isinstance(v, bool) for v in value)


# (key, test, what it must be): a wrong type is an error here, never read loosely (bool("false") is True)
_TYPES = (
    ("dedupe", lambda v: isinstance(v, bool), "true or false"),
    ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32, "an integer in [0, 2^32)"),
    ("metrics", lambda v: isinstance(v, list | tuple) and all(isinstance(m, str) for m in v), "a list of metric names"),
    ("label_names", _is_str_list, "a list of class names"),
    ("text_fields", lambda v: isinstance(v, str) or _is_str_list(v), "a column name or a list of them"),
)  # validation_size and test_size: TaskSpec checks them


def _check_types(config: Mapping[str, Any], where: str) -> None:
    for key, test, what in _TYPES:
        if key in config and not test(config[key]):
            raise AiloraError(f"{where}: {key!r} must be {what}, got {config[key]!r}")


def task_from_json(path: str | os.PathLike[str]) -> TaskSpec:
    """A :class:`TaskSpec` from a JSON task spec file; its relative data paths are resolved
    against the file's folder."""
    path = require_file(Path(path), "task spec")
    try:
        config = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise AiloraError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise AiloraError(f"{path}: a task spec must be a JSON object")
    return task_from_dict(config, base_dir=path.parent, spec_file=path)


def load_custom(spec: TaskSpec, data_dir: Path | None) -> RawSplits:
    """Read each split file of a user task into examples of the task's kind (``data_dir`` unused)."""
    kind = example_kind(spec.kind)
    return {split: kind.read_file(path, spec.text_fields, spec.options["label_field"])
            for split, path in spec.options["files"].items()}


def _generation_options(config: Mapping[str, Any], kind: str, prompts: bool, where: str) -> dict[str, Any]:
    """The ``prompt`` and ``decoding`` options (``ailora.tasks.prompts``) of a generation task's
    spec (``prompts``: the kind takes them), checked: an error names the key and ``where``."""
    given = [key for key in _GENERATION_KEYS if key in config]
    if given and not prompts:
        raise AiloraError(f"{where}: {given[0]!r} is for generation tasks only (kind is {kind!r})")
    prompt: dict[str, Any] = {}
    if "prompt_template" in config:
        problem = template_problem(config["prompt_template"])
        if problem:
            raise AiloraError(f"{where}: 'prompt_template' {problem}")
        prompt["template"] = config["prompt_template"]
    if "keep" in config:
        if config["keep"] not in KEEP:
            raise AiloraError(f"{where}: 'keep' must be one of {', '.join(KEEP)}, got {config['keep']!r}")
        prompt["keep"] = config["keep"]
    decoding = config.get("decoding", {})
    if not isinstance(decoding, Mapping):
        raise AiloraError(f"{where}: 'decoding' must be an object, got {decoding!r}")
    for key, value in decoding.items():
        problem = decoding_problem(key, value)
        if problem:
            raise AiloraError(f"{where}: 'decoding.{key}' {problem}")
    options: dict[str, Any] = {"prompt": prompt} if prompt else {}
    return options | ({"decoding": dict(decoding)} if decoding else {})


def _files(name: str, config: Mapping[str, Any], base: Path) -> dict[str, Path]:
    if config.get("path") and any(config.get(k) for k in ("train", "validation", "test")):
        raise AiloraError(
            f"task spec {name!r}: give either 'path' or 'train'/'validation'/'test' files, not both"
        )
    if config.get("path"):
        files = {"all": config["path"]}
    else:
        files = {k: config[k] for k in ("train", "validation", "test") if config.get(k)}
        for key in ("train", "test"):
            if key not in files:
                raise AiloraError(f"task spec {name!r}: missing {key!r} file (or give one 'path' to split)")
    resolved = {split: base / Path(p).expanduser() for split, p in files.items()}
    for split, path in resolved.items():
        if path.suffix.lower() not in _FORMATS:
            raise AiloraError(f"task spec {name!r}: {split} file {path.name} is not {', '.join(_FORMATS)}")
    return resolved
