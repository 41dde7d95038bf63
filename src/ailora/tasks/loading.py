"""Loading a task into fixed train/validation/test splits (formats in ``ailora.tasks.spec``).

Splits the source does not provide are carved from it with ``random.Random(split_seed)``, the
same on every machine and Python version: test first (when the source has no test split), then
validation from what is left; the rest is train. Carved splits keep the source's order.
Tokenisation is not done here: the trainer does it.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ailora.errors import AiloraError
from ailora.tasks.custom import task_from_json
from ailora.tasks.spec import SPLITS, TASKS, Example, RawSplits, TaskData, TaskSpec, get_task


def load_task(
    task: str | os.PathLike[str] | TaskSpec,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split_seed: int | None = None,
    max_samples: Mapping[str, int | None] | None = None,
) -> TaskData:
    """Load a task's splits.

    ``task`` is a registered name, a :class:`TaskSpec`, or the path of a JSON task spec (see
    :func:`ailora.tasks.task_from_json`). ``data_dir`` holds local copies of GLUE/SQuAD files in
    the official formats (bundled and custom tasks ignore it); without one, those tasks are read
    from the Hugging Face hub. ``split_seed`` overrides the spec's carving seed (leave it alone to
    get the documented splits). ``max_samples`` caps splits by name, e.g. ``{"train": 2000}``: a
    seeded random subset that keeps the source order.
    """
    spec = _resolve(task)
    seed = spec.split_seed if split_seed is None else split_seed
    raw = spec.loader(spec, None if data_dir is None else Path(data_dir))
    splits = _assemble(spec, raw, seed)
    label_names = _label_set(spec, splits) if spec.kind == "classification" else None
    if label_names is not None and "f1" in spec.metrics and len(label_names) != 2:
        raise AiloraError(f"task {spec.name!r}: metric 'f1' is binary F1, but the task has {len(label_names)} classes "
                          f"{list(label_names)[:6]}; use macro_f1")
    for split, examples in splits.items():
        splits[split] = [_finalise(spec, label_names, ex) for ex in examples]
    for split, cap in (max_samples or {}).items():
        if split not in splits:
            raise AiloraError(
                f"max_samples: task {spec.name!r} has no split {split!r} (splits: {', '.join(splits)})"
            )
        splits[split] = subsample(splits[split], cap, seed)
    extra = {k: v for k, v in splits.items() if k not in SPLITS}
    return TaskData(spec, label_names, splits["train"], splits["validation"], splits["test"], extra)


def subsample(examples: list[Example], n: int | None, seed: int = 0) -> list[Example]:
    """``n`` examples drawn with ``random.Random(seed)``, in their original order (all if n is None)."""
    if n is None or n >= len(examples):
        return list(examples)
    if n < 1:
        raise AiloraError(f"max_samples must be at least 1, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def label_index(raw: Any, label_names: tuple[str, ...], by_index: bool = True) -> int | None:
    """Index of ``raw`` in ``label_names``: by name (``True`` reads as ``"True"``), else, with
    ``by_index``, as an index ("1" or 1 with two classes is class 1) unless some name is itself a
    number (with classes "1", "2", "3", a label 0 is no class, never class "1"); None otherwise."""
    key = str(raw).strip()
    if key in label_names:
        return label_names.index(key)
    numeric_names = any(name.strip().lstrip("-").isdigit() for name in label_names)
    if by_index and not numeric_names and key.isdigit() and int(key) < len(label_names):
        return int(key)
    return None


def _resolve(task: str | os.PathLike[str] | TaskSpec) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    text = os.fspath(task)
    if text.endswith(".json") and text not in TASKS:
        return task_from_json(text)
    return get_task(text)


def _assemble(spec: TaskSpec, raw: RawSplits, seed: int) -> RawSplits:
    bad = [k for k in raw if k not in ("all", *SPLITS) and not k.startswith("test_")]
    if bad or ("all" in raw and len(raw) > 1):
        raise AiloraError(
            f"task {spec.name!r}: loader returned splits {list(raw)}; expected 'all' alone or train/validation/test"
        )
    for split, examples in raw.items():
        if not examples:
            what = "the data" if split == "all" else f"split {split!r}"
            raise AiloraError(f"task {spec.name!r}: {what} is empty ({spec.source or 'no source given'})")
    splits = {name: _dedupe(examples) if spec.dedupe else list(examples) for name, examples in raw.items()}
    rng = random.Random(seed)
    total = len(splits.get("all", splits.get("train", [])))  # fractions are of the whole pool
    if "all" in splits:
        splits["test"], splits["train"] = _carve(spec, splits.pop("all"), spec.test_size, total, rng, "test")
    for split in ("train", "test"):
        if split not in splits:
            raise AiloraError(f"task {spec.name!r}: the source has no {split} split")
    if "validation" not in splits:
        splits["validation"], splits["train"] = _carve(
            spec, splits["train"], spec.validation_size, total, rng, "validation"
        )
    return {name: splits[name] for name in (*SPLITS, *sorted(k for k in splits if k not in SPLITS))}


def _carve(
    spec: TaskSpec, examples: list[Example], size: int | float, total: int, rng: random.Random, what: str
) -> tuple[list[Example], list[Example]]:
    """Split off ``size`` examples (a count, or a fraction of ``total``) at random, whole
    ``_group``s at a time."""
    n = size if isinstance(size, int) else max(1, round(size * total))
    if n >= len(examples):
        raise AiloraError(
            f"task {spec.name!r}: cannot carve {n} {what} examples from {len(examples)} (a {what} split would leave train empty)"
        )
    groups: dict[Any, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.get("_group", ("row", i)), []).append(i)
    order = list(groups)
    rng.shuffle(order)
    picked: set[int] = set()
    for key in order:
        if len(picked) >= n:
            break
        picked.update(groups[key])
    carved = [ex for i, ex in enumerate(examples) if i in picked]
    rest = [ex for i, ex in enumerate(examples) if i not in picked]
    if not rest:  # whole groups: one big group (a SQuAD file with one article) can take everything
        raise AiloraError(f"task {spec.name!r}: carving {what} takes every example (groups are kept whole); "
                          "the data needs more groups (articles)")
    return carved, rest


def _input_key(ex: Example) -> tuple[Any, ...]:
    if "prompt" in ex:
        return (ex["prompt"],)
    if "context" in ex:
        return (ex["question"], ex["context"])
    return (ex["text"], ex.get("text_pair"))


def _dedupe(examples: list[Example]) -> list[Example]:
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for ex in examples:
        key = _input_key(ex)
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return kept


def _label_set(spec: TaskSpec, splits: RawSplits) -> tuple[str, ...]:
    """The spec's label names, else the sorted labels of the TRAINING split: a class that appears only
    in validation or test could never be learnt, so ``_finalise`` refuses it there, naming the file."""
    if spec.label_names is not None:
        return spec.label_names
    names = sorted({str(ex["label"]).strip() for ex in splits["train"]} - {""})
    if len(names) < 2:
        raise AiloraError(
            f"task {spec.name!r}: found {len(names)} distinct label(s) {names} in the training split; "
            "classification needs two or more"
        )
    return tuple(names)


def _finalise(spec: TaskSpec, label_names: tuple[str, ...] | None, ex: Example) -> Example:
    """Check one example, turn its label into an int index (or float), drop bookkeeping keys."""
    where = ex.get("_src", f"task {spec.name!r}")
    out = {k: v for k, v in ex.items() if not k.startswith("_")}
    if spec.kind == "classification":
        assert label_names is not None
        if out["label"] is None or not str(out["label"]).strip():
            raise AiloraError(f"{where}: empty label")
        # Labels given as indices only against named classes (the spec's label_names); classes found
        # in the training split are its labels as written, so any other value is an error.
        index = label_index(out["label"], label_names, by_index=spec.label_names is not None)
        if index is None:
            raise AiloraError(f"{where}: label {out['label']!r} is not in the label set {list(label_names)} "
                              "(the training split's labels, or the spec's label_names)")
        out["label"] = index
    elif spec.kind == "regression":
        try:
            out["label"] = float(out["label"])
        except (TypeError, ValueError):
            raise AiloraError(f"{where}: label {out['label']!r} is not a number") from None
        if not math.isfinite(out["label"]):  # one nan target makes the loss or every correlation nan
            raise AiloraError(f"{where}: label {out['label']} is not a finite number")
    return out
