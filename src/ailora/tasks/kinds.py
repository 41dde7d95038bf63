"""Task kinds on the data side: what the examples of each kind look like, one small class per kind,
registered by the name a task spec gives as its ``kind`` (formats in ``ailora.tasks.spec``; the
trainer's side of each kind is ``ailora.train.kinds``).

A kind gives its default metrics (a custom spec without ``metrics``), the run-config section only
it reads, whether a custom spec may give prompt options, how a user's file becomes examples, its
class set, and how a loaded example's label is checked and converted. Which metrics can score a
kind stays the metrics' own data (``Metric.kinds``), so that a new metric names the kinds it scores
without editing them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ailora.errors import AiloraError
from ailora.registry import lookup, register
from ailora.tasks.readers import Row, read_json_records, read_jsonl, read_squad, read_table

Example = dict[str, Any]


class ExampleKind(Protocol):
    """The data side of one task kind."""

    name: ClassVar[str]
    default_metrics: ClassVar[tuple[str, ...]]
    """A custom spec's metrics when it names none."""
    section: ClassVar[str | None]
    """The run-config section only this kind reads (``generation``, ``qa``), else None."""
    prompts: ClassVar[bool]
    """Whether a custom spec may give ``prompt_template``, ``keep`` and ``decoding``."""

    def text_fields(self, given: tuple[str, ...]) -> tuple[str, ...]:
        """The input fields of a custom spec that names ``given``."""

    def read_file(self, path: Path, text_fields: tuple[str, ...], label_field: str) -> list[Example]:
        """A user's file read into raw examples of this kind, each with its ``_src``."""

    def label_names(self, spec, splits: dict[str, list[Example]]) -> tuple[str, ...] | None:
        """The class names in index order (classification), else None."""

    def finalise_label(self, example: Example, label_names, by_index: bool, where: str) -> None:
        """Check ``example["label"]`` and convert it in place (a class index, a number); ``where`` names it."""


class _Rows:
    """Kinds read from table rows (CSV, TSV, JSON lines, JSON records) whose labels stay as written."""

    section: ClassVar[str | None] = None
    prompts: ClassVar[bool] = False

    def text_fields(self, given: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(given)

    def read_file(self, path: Path, text_fields: tuple[str, ...], label_field: str) -> list[Example]:
        return [self.example([str(row[f]) for f in text_fields], row[label_field], where)
                for where, row in read_rows(path, (*text_fields, label_field))
                if _scalars(where, row, (*text_fields, label_field))]

    def example(self, texts: list[str], label: Any, where: str) -> Example:
        return {"text": texts[0], "text_pair": texts[1] if len(texts) > 1 else None, "label": label, "_src": where}

    def label_names(self, spec, splits: dict[str, list[Example]]) -> tuple[str, ...] | None:
        return None

    def finalise_label(self, example: Example, label_names, by_index: bool, where: str) -> None:
        return None


def _scalars(where: str, row: dict, fields: tuple[str, ...]) -> bool:
    """True, or an error naming a field that is a JSON list or object: str() of it would train on its
    Python repr without a word."""
    for field in fields:
        if isinstance(row[field], dict | list):
            raise AiloraError(f"{where}: field {field!r} is a JSON {type(row[field]).__name__}, not a text or label")
    return True


class ClassificationData(_Rows):
    name: ClassVar[str] = "classification"
    default_metrics: ClassVar[tuple[str, ...]] = ("accuracy",)

    def label_names(self, spec, splits: dict[str, list[Example]]) -> tuple[str, ...]:
        """The spec's label names, else the sorted labels of the TRAINING split: a class that appears
        only in validation or test could never be learnt, so ``finalise_label`` refuses it there."""
        if spec.label_names is not None:
            return spec.label_names
        names = sorted({str(ex["label"]).strip() for ex in splits["train"]} - {""})
        if len(names) < 2:
            raise AiloraError(
                f"task {spec.name!r}: found {len(names)} distinct label(s) {names} in the training split; "
                "classification needs two or more"
            )
        return tuple(names)

    def finalise_label(self, example: Example, label_names, by_index: bool, where: str) -> None:
        if example["label"] is None or not str(example["label"]).strip():
            raise AiloraError(f"{where}: empty label")
        # Labels given as indices only against named classes (the spec's label_names); classes found
        # in the training split are its labels as written, so any other value is an error.
        index = label_index(example["label"], label_names, by_index=by_index)
        if index is None:
            raise AiloraError(f"{where}: label {example['label']!r} is not in the label set {list(label_names)} "
                              "(the training split's labels, or the spec's label_names)")
        example["label"] = index


class RegressionData(_Rows):
    name: ClassVar[str] = "regression"
    default_metrics: ClassVar[tuple[str, ...]] = ("pearson", "spearman")

    def finalise_label(self, example: Example, label_names, by_index: bool, where: str) -> None:
        try:
            example["label"] = float(example["label"])
        except (TypeError, ValueError):
            raise AiloraError(f"{where}: label {example['label']!r} is not a number") from None
        if not math.isfinite(example["label"]):  # one nan target makes the loss or every correlation nan
            raise AiloraError(f"{where}: label {example['label']} is not a finite number")


class GenerationData(_Rows):
    """A prompt (the text fields joined by newlines) and its target text."""

    name: ClassVar[str] = "generation"
    default_metrics: ClassVar[tuple[str, ...]] = ("rouge1", "rouge2", "rougeL")
    section: ClassVar[str | None] = "generation"
    prompts: ClassVar[bool] = True

    def example(self, texts: list[str], label: Any, where: str) -> Example:
        return {"prompt": "\n".join(texts), "target": str(label), "_src": where}


class ExtractiveQAData(_Rows):
    """SQuAD-format questions over contexts (``answers`` lists; empty: no answer)."""

    name: ClassVar[str] = "extractive_qa"
    default_metrics: ClassVar[tuple[str, ...]] = ("squad_f1", "squad_em")
    section: ClassVar[str | None] = "qa"

    def text_fields(self, given: tuple[str, ...]) -> tuple[str, ...]:
        return ("question", "context")

    def read_file(self, path: Path, text_fields: tuple[str, ...], label_field: str) -> list[Example]:
        if path.suffix.lower() != ".json":
            raise AiloraError(f"{path}: extractive_qa tasks read SQuAD-format .json files")
        return [{**example, "_src": where} for where, example in read_squad(path)]


EXAMPLE_KINDS: dict[str, ExampleKind] = {}


def register_example_kind(kind: ExampleKind) -> ExampleKind:
    """Register the data side of a task kind under ``kind.name`` (its trainer: ``ailora.train.kinds.register_kind``)."""
    return register(EXAMPLE_KINDS, kind.name, kind, "task kind")


def example_kind(name: str) -> ExampleKind:
    """The registered kind called ``name``."""
    return lookup(EXAMPLE_KINDS, name, "task kind")


def read_rows(path: Path, columns: tuple[str, ...]) -> list[Row]:
    """(where, row) pairs of a table file, its format by extension: .jsonl, .json records, .csv, .tsv."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path, columns)
    if suffix == ".json":
        return read_json_records(path, columns)
    return read_table(path, columns, delimiter="," if suffix == ".csv" else "\t")


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


for _kind in (ClassificationData(), RegressionData(), GenerationData(), ExtractiveQAData()):
    register_example_kind(_kind)
