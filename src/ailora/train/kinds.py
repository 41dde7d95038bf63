"""Which model a task trains, loaded for it, and the task's splits tokenised for that model.

The model kind follows from the task and the checkpoint: classification and regression train a
sequence-classification head (encoder-decoders included: BART and T5 have one), extractive QA a
span head (``AutoModelForQuestionAnswering``), generation a seq2seq LM when the checkpoint is an
encoder-decoder (``config.is_encoder_decoder`` or its architecture) and a causal LM otherwise. A
``model.kind`` that disagrees is an error, never a fallback.
"""

from __future__ import annotations

from pathlib import Path

from ailora.core.models import is_encoder_decoder, load_config, load_model
from ailora.errors import AiloraError
from ailora.train import qa
from ailora.train.data import Encoded, encode_classification
from ailora.train.generation import encode_generation

_KIND_OF_TASK = {"classification": "seq-cls", "regression": "seq-cls", "extractive_qa": "qa"}


def model_kind(cfg, task_kind: str, seq2seq: bool = False) -> str:
    """The model kind a ``task_kind`` task trains on a checkpoint that is (``seq2seq``) or is not an encoder-decoder."""
    if task_kind == "generation":
        auto = "seq2seq-lm" if seq2seq else "causal-lm"
    elif task_kind in _KIND_OF_TASK:
        auto = _KIND_OF_TASK[task_kind]
    else:
        raise AiloraError(f"task kind {task_kind} is not supported by the trainer")
    kind = auto if cfg.model.kind == "auto" else cfg.model.kind
    if kind != auto:
        what = "an encoder-decoder" if seq2seq else "a decoder or encoder"
        raise AiloraError(f"model.kind {kind} does not fit a {task_kind} task on {what} checkpoint (it needs {auto})")
    return kind


def checkpoint_is_seq2seq(path: Path) -> bool:
    return is_encoder_decoder(load_config(path))


def refuse_encoder_for_generation(path: Path, task_kind: str) -> None:
    """A generation task on an encoder-only checkpoint (BERT, MiniLM, RoBERTa...: a masked LM that
    was not trained as a decoder) is an error: transformers would build it as a causal LM with a
    fresh, untrained head, which generates nothing meaningful."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = load_config(path)
    archs = " ".join(getattr(config, "architectures", None) or [])
    if (task_kind == "generation" and not is_encoder_decoder(config) and not getattr(config, "is_decoder", False)
            and config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            and "CausalLM" not in archs and "LMHeadModel" not in archs):
        raise AiloraError(f"{path} is an encoder ({config.model_type}, {archs or 'no architecture'}); a generation "
                          "task needs a decoder (causal LM) or an encoder-decoder checkpoint")


def load_for_task(cfg, path: Path, data, tokenizer):
    """The model of ``cfg.model`` for task ``data`` (a TaskData), with its head sized to the labels."""
    spec = data.spec
    kind = model_kind(cfg, spec.kind, checkpoint_is_seq2seq(path))
    extra = {}
    if spec.kind == "classification":
        names = list(data.label_names)
        extra = {"num_labels": len(names), "id2label": dict(enumerate(names)),
                 "label2id": {n: i for i, n in enumerate(names)}}
    elif spec.kind == "regression":
        extra = {"num_labels": 1, "problem_type": "regression"}
    model = load_model(path, kind=kind, dtype=cfg.model.dtype, **extra)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoders' sequence heads need it
    return model


def encode_splits(cfg, data, tokenizer, seq2seq: bool) -> dict[str, list[Encoded]]:
    """Every split of ``data`` tokenised for the task's model (QA: one item per window)."""
    spec, m = data.spec, cfg.model
    out = {}
    for name, examples in data.splits().items():
        if spec.kind == "generation":
            out[name] = encode_generation(cfg, spec, tokenizer, examples, seq2seq, name == "train")
        elif spec.kind == "extractive_qa":
            stride = qa.doc_stride(cfg.qa.doc_stride, m.max_length)
            out[name] = qa.encode_qa(tokenizer, examples, m.max_length, stride, name == "train")
        else:
            out[name] = encode_classification(tokenizer, examples, m.max_length, spec.kind == "regression")
    return out
