"""Task specs and the task registry.

A task is data: a :class:`TaskSpec` names its source, input fields, labels and metrics, and points
at a loader that reads the raw examples. ``ailora.tasks.loading.load_task`` turns the loader's
output into a :class:`TaskData` with three splits of plain dicts, one format per task kind:

* ``classification``: ``{"text": str, "text_pair": str | None, "label": int}`` (index into
  ``TaskData.label_names``);
* ``regression``: the same with ``"label": float``;
* ``generation``: ``{"prompt": str, "target": str}``;
* ``extractive_qa``: ``{"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}``
  (empty lists: no answer, SQuAD v2.0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from ailora.errors import AiloraError
from ailora.registry import lookup, register
from ailora.tasks.kinds import EXAMPLE_KINDS
from ailora.tasks.metrics import get_metric, metrics_for

Kind = Literal["classification", "regression", "generation", "extractive_qa"]
KINDS: tuple[str, ...] = tuple(EXAMPLE_KINDS)  # the built-in kinds (ailora.tasks.kinds, ailora.train.kinds)
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
        if self.kind not in EXAMPLE_KINDS:
            raise AiloraError(f"{where}: unknown kind {self.kind!r} (known: {', '.join(EXAMPLE_KINDS)})")
        if not self.metrics:
            raise AiloraError(f"{where}: no metrics given")
        for name in self.metrics:
            kinds = get_metric(name).kinds
            if kinds and self.kind not in kinds:
                raise AiloraError(f"{where}: metric {name!r} scores {' or '.join(kinds)} tasks, not {self.kind} "
                                  f"(metrics for {self.kind}: {', '.join(metrics_for(self.kind))})")
        if self.main_metric not in self.metrics:
            raise AiloraError(f"{where}: main metric {self.main_metric!r} is not one of {list(self.metrics)}")
        if not 1 <= len(self.text_fields) <= 2:
            raise AiloraError(f"{where}: needs one or two text fields, got {list(self.text_fields)}")
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise AiloraError(f"{where}: repeated label names in {list(self.label_names)}")
        for what, size in (("validation_size", self.validation_size), ("test_size", self.test_size)):
            if (isinstance(size, bool) or not isinstance(size, int | float)
                    or not (isinstance(size, int) and size > 0 or 0 < size < 1)):
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
    return register(TASKS, spec.name, spec, "task", replace)


def get_task(name: str) -> TaskSpec:
    """The registered task called ``name``."""
    return lookup(TASKS, name, "task")
