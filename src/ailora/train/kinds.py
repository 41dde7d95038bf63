"""Task kinds: what the trainer does differently for classification, regression, generation and
extractive QA, one small class per kind behind the :class:`TaskKind` protocol, registered by the
name a task spec gives as its ``kind``. The loop and evaluation call the protocol and never test
the kind's name.

The model kind follows from the task and the checkpoint: classification and regression train a
sequence-classification head (encoder-decoders included: BART and T5 have one), extractive QA a
span head (``AutoModelForQuestionAnswering``), generation a seq2seq LM when the checkpoint is an
encoder-decoder (``config.is_encoder_decoder`` or its architecture) and a causal LM otherwise. A
``model.kind`` that disagrees is an error, never a fallback.

A new kind is a class here (``register_kind``), its data side (``ailora.tasks.kinds.register_example_kind``)
and metrics that name it (``Metric.kinds``); the loop, evaluation and task loading stay as they are.

The checkpoint is resolved once per run (:func:`resolve_model`): its path, config, model kind and
tokenizer in one :class:`ailora.core.models.ResolvedModel` that set-up passes down.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from ailora.core.models import (
    ResolvedModel,
    is_encoder_decoder,
    load_config,
    load_resolved,
    load_tokenizer,
    resolve_model_path,
)
from ailora.errors import AiloraError
from ailora.registry import lookup, register
from ailora.train.data import Encoded, collate, encode_classification, eval_batch
from ailora.train.evaluate import Evaluation, score_targets
from ailora.train.generation import Generation
from ailora.train.qa import ExtractiveQA


class TaskKind(Protocol):
    """One task kind, bound to a run (its config and loaded task): built by ``for_run(cfg, data)``."""

    spec: Any  # the TaskSpec
    calibrates: ClassVar[bool]
    """Whether scoring a test split uses a value chosen on validation (extractive QA's null
    threshold): the loop then validates the selected weights once more before testing them."""

    def model_kind(self, seq2seq: bool) -> str:
        """The ``load_model`` kind this task trains on a checkpoint that is (or is not) an encoder-decoder."""

    def check_checkpoint(self, path: Path, config) -> None:
        """Raise AiloraError for a checkpoint this kind cannot train, before any weight loads."""

    def head(self) -> dict[str, Any]:
        """Config overrides for the task head (``load_model`` keyword arguments): label count and names."""

    def encode(self, split: str, examples: list[dict], model: ResolvedModel) -> list[Encoded]:
        """One split's examples tokenised for ``model`` (extractive QA: one item per window)."""

    def batch(self, items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        """A training batch (right-padded, with its labels); an unusable batch is an AiloraError."""

    def predict(self, acc, net, items: list[Encoded], model: ResolvedModel) -> list:
        """One output per item of one evaluation batch: a class, a value, a text or a window's span logits."""

    def score(self, predictions: list, items: list[Encoded], examples: list[dict], calibration) -> Evaluation:
        """The task's metrics over one split; ``calibration`` is what validation chose (None on validation)."""

    def rows(self, examples: list[dict], items: list[Encoded], predictions: list, model: ResolvedModel) -> list[dict]:
        """One {"input", "reference", "prediction"} per example, for RUN_DIR/predictions/."""


KindFactory = Callable[[Any, Any], TaskKind]
TASK_KINDS: dict[str, KindFactory] = {}


def register_kind(name: str, factory: KindFactory) -> KindFactory:
    """Register ``factory(cfg, data) -> TaskKind`` as the trainer of tasks whose spec says ``kind: name``."""
    return register(TASK_KINDS, name, factory, "task kind")


def task_kind(cfg, data) -> TaskKind:
    """The kind of task ``data`` (a TaskData) bound to run config ``cfg``."""
    return lookup(TASK_KINDS, data.spec.kind, "task kind")(cfg, data)


class SequenceHead:
    """Classification and regression: a sequence-classification head on any checkpoint (encoder,
    decoder or encoder-decoder), one input text or a pair per example, metrics over the targets."""

    calibrates: ClassVar[bool] = False
    regression: ClassVar[bool] = False

    def __init__(self, spec, max_length: int) -> None:
        self.spec, self.max_length = spec, max_length

    def model_kind(self, seq2seq: bool) -> str:
        return "seq-cls"

    def check_checkpoint(self, path: Path, config) -> None:
        return None

    def encode(self, split: str, examples: list[dict], model: ResolvedModel) -> list[Encoded]:
        return encode_classification(model.tokenizer, examples, self.max_length, self.regression)

    def batch(self, items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(items, pad_id)

    def logits(self, acc, net, items: list[Encoded], model: ResolvedModel) -> torch.Tensor:
        """(batch, num_labels) float32 logits."""
        return net(**eval_batch(items, model.tokenizer.pad_token_id, acc.device)).logits.float()

    def score(self, predictions: list, items: list[Encoded], examples: list[dict], calibration) -> Evaluation:
        return score_targets(self.spec, predictions, items)

    def rows(self, examples: list[dict], items: list[Encoded], predictions: list, model: ResolvedModel) -> list[dict]:
        return [{"input": ex["text"] if ex.get("text_pair") is None else [ex["text"], ex["text_pair"]],
                 "reference": e.target, "prediction": p} for ex, e, p in zip(examples, items, predictions)]


class Classification(SequenceHead):
    """One output per class (named from the label set); predicts the arg-max class."""

    def __init__(self, spec, max_length: int, label_names: tuple[str, ...]) -> None:
        super().__init__(spec, max_length)
        self.label_names = tuple(label_names)

    @classmethod
    def for_run(cls, cfg, data) -> Classification:
        return cls(data.spec, cfg.model.max_length, data.label_names)

    def head(self) -> dict[str, Any]:
        names = list(self.label_names)
        return {"num_labels": len(names), "id2label": dict(enumerate(names)),
                "label2id": {n: i for i, n in enumerate(names)}}

    def predict(self, acc, net, items: list[Encoded], model: ResolvedModel) -> list[int]:
        return self.logits(acc, net, items, model).argmax(-1).tolist()


class Regression(SequenceHead):
    """One output (``problem_type`` regression: an MSE loss); predicts its value."""

    regression: ClassVar[bool] = True

    @classmethod
    def for_run(cls, cfg, data) -> Regression:
        return cls(data.spec, cfg.model.max_length)

    def head(self) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

    def predict(self, acc, net, items: list[Encoded], model: ResolvedModel) -> list[float]:
        return self.logits(acc, net, items, model)[:, 0].tolist()


# The model, resolved once and loaded for the task.


def resolve_model(cfg, kind: TaskKind) -> ResolvedModel:
    """``cfg.model`` resolved once for a task of ``kind``: path, tokenizer, config, and the model
    kind the task trains, checked against ``model.kind`` and the checkpoint before any weight loads."""
    path = resolve_model_path(cfg.model.name)
    tokenizer = _tokenizer(path)
    config = load_config(path)
    seq2seq = is_encoder_decoder(config)
    auto = kind.model_kind(seq2seq)
    chosen = auto if cfg.model.kind == "auto" else cfg.model.kind
    if chosen != auto:
        what = "an encoder-decoder" if seq2seq else "a decoder or encoder"
        raise AiloraError(f"model.kind {chosen} does not fit a {kind.spec.kind} task on {what} checkpoint "
                          f"(it needs {auto})")
    kind.check_checkpoint(path, config)
    return ResolvedModel(path, config, chosen, tokenizer, seq2seq)


def _tokenizer(model_path: Path):
    tok = load_tokenizer(model_path)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise AiloraError(f"the tokenizer of {model_path} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def load_for_task(cfg, model: ResolvedModel, kind: TaskKind):
    """The model of ``cfg.model`` for a task of ``kind``, with its head sized to the labels."""
    net = load_resolved(model, dtype=cfg.model.dtype, **kind.head())
    if net.config.pad_token_id is None:
        net.config.pad_token_id = model.tokenizer.pad_token_id  # decoders' sequence heads need it
    return net


def encode_splits(kind: TaskKind, data, model: ResolvedModel) -> dict[str, list[Encoded]]:
    """Every split of ``data`` tokenised for the task's model."""
    return {name: kind.encode(name, examples, model) for name, examples in data.splits().items()}


for _name, _factory in (("classification", Classification.for_run), ("regression", Regression.for_run),
                       ("generation", Generation.for_run), ("extractive_qa", ExtractiveQA.for_run)):
    register_kind(_name, _factory)
