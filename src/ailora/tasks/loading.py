"""Loading a task into fixed train/validation/test splits (formats in ``ailora.tasks.spec``).

Splits the source does not provide are carved from it with ``random.Random(split_seed)``, the
same on every machine and Python version: test first (when the source has no test split), then
validation from what is left; the rest is train. Carved splits keep the source's order.
Tokenisation is not done here: the trainer does it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ailora.errors import AiloraError
from ailora.tasks.custom import task_from_json
from ailora.tasks.kinds import example_kind
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
    kind = example_kind(spec.kind)
    label_names = kind.label_names(spec, splits)
    if label_names is not None and "f1" in spec.metrics and len(label_names) != 2:
        raise AiloraError(f"task {spec.name!r}: metric 'f1' is binary F1, but the task has {len(label_names)} classes "
                          f"{list(label_names)[:6]}; use macro_f1")
    for split, examples in splits.items():
        splits[split] = [_finalise(spec, kind, label_names, ex) for ex in examples]
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


def _finalise(spec: TaskSpec, kind, label_names: tuple[str, ...] | None, ex: Example) -> Example:
    """Check one example, convert its label as its kind says (a class index, a number), drop bookkeeping keys."""
    where = ex.get("_src", f"task {spec.name!r}")
    out = {k: v for k, v in ex.items() if not k.startswith("_")}
    kind.finalise_label(out, label_names, spec.label_names is not None, where)
    return out
