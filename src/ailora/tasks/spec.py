"""Task specs, the task registry, and loading a task into fixed train/validation/test splits.

A task is data: a :class:`TaskSpec` names its source, input fields, labels and metrics, and points
at a loader that reads the raw examples. :func:`load_task` turns the loader's output into a
:class:`TaskData` with three splits of plain dicts, one format per task kind:

* ``classification``: ``{"text": str, "text_pair": str | None, "label": int}`` (index into
  ``TaskData.label_names``);
* ``regression``: the same with ``"label": float``;
* ``generation``: ``{"prompt": str, "target": str}``;
* ``extractive_qa``: ``{"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}``
  (empty lists: no answer, SQuAD v2.0).

Splits the source does not provide are carved from it with ``random.Random(split_seed)``, the
same on every machine and Python version: test first (when the source has no test split), then
validation from what is left; the rest is train. Carved splits keep the source's order.
Tokenisation is not done here: the trainer does it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from ailora.errors import AiloraError
from ailora.tasks.metrics import get_metric

Kind = Literal["classification", "regression", "generation", "extractive_qa"]
KINDS: tuple[str, ...] = ("classification", "regression", "generation", "extractive_qa")
SPLITS: tuple[str, ...] = ("train", "validation", "test")

Example = dict[str, Any]
RawSplits = dict[str, list[Example]]
"""A loader's output: lists of examples under ``"all"`` (one pool to carve all three splits
from) or under some of ``"train"``, ``"validation"``, ``"test"`` and extra evaluation splits named
``"test_<something>"`` (MNLI's mismatched dev set). Classification labels may still be raw (a
label name, an index, a bool); an example may carry ``"_src"`` (where it came from, for error
messages) and ``"_group"`` (examples sharing it are carved into the same split)."""

Loader = Callable[["TaskSpec", Path | None], RawSplits]


@dataclass(frozen=True)
class TaskSpec:
    """A task: where its examples come from, what they look like, and how they are scored."""

    name: str
    """Registry key (``ailora train --task NAME``)."""
    description: str
    """One line for ``ailora ls``."""
    kind: Kind
    """classification, regression, generation or extractive_qa."""
    metrics: tuple[str, ...]
    """Registered metric names (see ``ailora.tasks.metrics``), all logged at evaluation."""
    loader: Loader = field(repr=False, compare=False)
    """``loader(spec, data_dir) -> RawSplits``; ``data_dir`` is None unless the user gave one."""
    text_fields: tuple[str, ...] = ("text",)
    """Names of the input fields in the source (one, or two for sentence pairs)."""
    label_names: tuple[str, ...] | None = None
    """Class names, index order (classification); None infers the sorted set of labels in the data."""
    main_metric: str = ""
    """The metric that selects learning rates and checkpoints; defaults to ``metrics[0]``."""
    source: str = ""
    """Where the data comes from, for people: a package file, a hub id, a local path."""
    validation_size: int | float = 0.1
    """Validation examples carved from train when the source has none: a count, or a fraction of
    the source's pool (one-pool sources) or of its train split."""
    test_size: int | float = 0.1
    """Test examples carved from the pool when the source has no test split: a count or a fraction."""
    split_seed: int = 0
    """Seed of the carving; fixed per task, so every run sees the same splits."""
    dedupe: bool = False
    """Drop repeated inputs (first occurrence kept) before splitting, so no text is in two splits."""
    sizes: Mapping[str, int] = field(default_factory=dict, compare=False)
    """Documented split sizes (for bundled data, checked by the tests; for GLUE/SQuAD, with the
    official files)."""
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """Loader settings (file names, columns, hub id): data, not code."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "metrics", tuple(self.metrics))
        set_(self, "text_fields", tuple(self.text_fields))
        if self.label_names is not None:
            set_(self, "label_names", tuple(str(n) for n in self.label_names))
        set_(self, "sizes", MappingProxyType(dict(self.sizes)))
        set_(self, "options", MappingProxyType(dict(self.options)))
        if not self.main_metric and self.metrics:
            set_(self, "main_metric", self.metrics[0])
        self._validate()

    def _validate(self) -> None:
        where = f"task {self.name!r}"
        if not self.name:
            raise AiloraError("a task needs a non-empty name")
        if self.kind not in KINDS:
            raise AiloraError(f"{where}: unknown kind {self.kind!r} (known: {', '.join(KINDS)})")
        if not self.metrics:
            raise AiloraError(f"{where}: no metrics given")
        for name in self.metrics:
            get_metric(name)
        if self.main_metric not in self.metrics:
            raise AiloraError(f"{where}: main metric {self.main_metric!r} is not one of {list(self.metrics)}")
        if not 1 <= len(self.text_fields) <= 2:
            raise AiloraError(f"{where}: needs one or two text fields, got {list(self.text_fields)}")
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise AiloraError(f"{where}: repeated label names in {list(self.label_names)}")
        for what, size in (("validation_size", self.validation_size), ("test_size", self.test_size)):
            if isinstance(size, bool) or not (isinstance(size, int) and size > 0 or 0 < size < 1):
                raise AiloraError(
                    f"{where}: {what} must be a positive count or a fraction in (0, 1), got {size!r}"
                )

    def describe(self) -> str:
        """One line for listings: name, kind, metrics, documented sizes and description."""
        sizes = " / ".join(f"{k} {v:,}" for k, v in self.sizes.items()) or "sizes depend on the data"
        return f"{self.name}: {self.description} [{self.kind}; {', '.join(self.metrics)}; {sizes}]"


@dataclass
class TaskData:
    """A loaded task: three splits of plain-dict examples (formats in the module docstring)."""

    spec: TaskSpec
    label_names: tuple[str, ...] | None
    """Class names in index order (classification), else None."""
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    extra_test: dict[str, list[Example]] = field(default_factory=dict)
    """Further evaluation sets scored like ``test``, e.g. ``{"test_mismatched": [...]}`` for MNLI."""

    @property
    def num_labels(self) -> int | None:
        """Number of classes (classification), else None."""
        return None if self.label_names is None else len(self.label_names)

    def splits(self) -> dict[str, list[Example]]:
        """All splits by name: train, validation, test, then any extra test sets."""
        return {"train": self.train, "validation": self.validation, "test": self.test, **self.extra_test}

    def sizes(self) -> dict[str, int]:
        """Number of examples in each split."""
        return {name: len(examples) for name, examples in self.splits().items()}


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add ``spec`` to :data:`TASKS` (``replace=True`` to overwrite a task of the same name)."""
    if spec.name in TASKS and not replace:
        raise AiloraError(f"task {spec.name!r} is already registered")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The registered task called ``name``."""
    try:
        return TASKS[name]
    except KeyError:
        raise AiloraError(f"unknown task {name!r} (known: {', '.join(TASKS)})") from None


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


def label_index(raw: Any, label_names: tuple[str, ...]) -> int | None:
    """Index of ``raw`` in ``label_names``: by name (``True`` reads as ``"True"``), else as an index
    ("1" or 1 with two classes is class 1); None when it is neither."""
    key = str(raw).strip()
    if key in label_names:
        return label_names.index(key)
    if key.isdigit() and int(key) < len(label_names):
        return int(key)
    return None


def _resolve(task: str | os.PathLike[str] | TaskSpec) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    text = os.fspath(task)
    if text.endswith(".json") and text not in TASKS:
        from ailora.tasks.custom import task_from_json

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
    return carved, [ex for i, ex in enumerate(examples) if i not in picked]


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
    if spec.label_names is not None:
        return spec.label_names
    names = sorted({str(ex["label"]).strip() for examples in splits.values() for ex in examples})
    if len(names) < 2:
        raise AiloraError(
            f"task {spec.name!r}: found {len(names)} distinct label(s) {names}; classification needs two or more"
        )
    return tuple(names)


def _finalise(spec: TaskSpec, label_names: tuple[str, ...] | None, ex: Example) -> Example:
    """Check one example, turn its label into an int index (or float), drop bookkeeping keys."""
    where = ex.get("_src", f"task {spec.name!r}")
    out = {k: v for k, v in ex.items() if not k.startswith("_")}
    if spec.kind == "classification":
        assert label_names is not None
        index = label_index(out["label"], label_names)
        if index is None:
            raise AiloraError(f"{where}: label {out['label']!r} is not in the label set {list(label_names)}")
        out["label"] = index
    elif spec.kind == "regression":
        try:
            out["label"] = float(out["label"])
        except (TypeError, ValueError):
            raise AiloraError(f"{where}: label {out['label']!r} is not a number") from None
    return out
