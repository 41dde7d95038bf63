"""Evaluation on one split: predictions from every process, gathered, scored by the task's metrics.

Classification predicts the arg-max class, regression the single logit, a generative model its
decoding of the prompt (greedy or beam search, ``ailora.train.generation.generate_kwargs``; a
causal LM's prompts left-padded, an encoder-decoder's right-padded), and a span head its logits
per window, turned into answers by ``ailora.train.qa``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.utils import gather_object

from ailora.tasks.metrics import compute_metrics
from ailora.train import qa
from ailora.train.data import Encoded, collate, eval_batches, length_of
from ailora.train.generation import generate_kwargs


@dataclass
class Evaluation:
    """A split's scores, one prediction per example, and the null threshold used (extractive QA with
    unanswerable questions; chosen on this split when none was given)."""

    metrics: dict[str, float]
    predictions: list
    threshold: float | None = None


@torch.no_grad()
def predict(accelerator, model, items: list[Encoded], kind: str, tokenizer, batch_size: int,
            settings: dict | None = None) -> list:
    """One output per item, in order, whatever the number of processes: a class, a value, a text,
    or (start logits, end logits) of an extractive-QA window. ``settings``: decoding (generation)."""
    was_training = model.training
    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    seq2seq = bool(getattr(unwrapped.config, "is_encoder_decoder", False))
    batches = eval_batches([length_of(item) for item in items], batch_size, accelerator.process_index, accelerator.num_processes)
    mine = []
    for idx in batches:
        batch = collate([items[i] for i in idx], tokenizer.pad_token_id, left=kind == "generation" and not seq2seq)
        for key in ("labels", "start_positions", "end_positions"):
            batch.pop(key, None)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        if kind == "generation":
            values = _generate(unwrapped, batch, tokenizer, settings or {}, seq2seq)
        elif kind == "extractive_qa":
            out = model(**batch)
            values = [(s[:len(items[i].input_ids)].tolist(), e[:len(items[i].input_ids)].tolist())
                      for i, s, e in zip(idx, out.start_logits.float(), out.end_logits.float())]
        else:
            logits = model(**batch).logits.float()
            values = logits[:, 0].tolist() if kind == "regression" else logits.argmax(-1).tolist()
        mine.extend(zip(idx, values))
    model.train(was_training)
    gathered = gather_object(mine) if accelerator.num_processes > 1 else mine
    by_index = dict(gathered)
    return [by_index[i] for i in range(len(items))]


def _generate(model, batch: dict, tokenizer, settings: dict, seq2seq: bool) -> list[str]:
    out = model.generate(**batch, **generate_kwargs(settings, tokenizer))
    new = out if seq2seq else out[:, batch["input_ids"].shape[1]:]  # a causal LM returns the prompt too
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def evaluate(accelerator, model, items: list[Encoded], spec, tokenizer, batch_size: int,
             settings: dict | None = None, examples: list[dict] | None = None, qa_options: dict | None = None,
             threshold: float | None = None) -> Evaluation:
    """Every metric of the task on ``items``. Extractive QA needs the split's ``examples`` and
    ``qa_options`` ({"n_best", "max_answer_length", "null_answers"}); with null answers and no
    ``threshold`` given, the best threshold on this split is chosen (validation)."""
    preds = predict(accelerator, model, items, spec.kind, tokenizer, batch_size, settings)
    if spec.kind != "extractive_qa":
        return Evaluation(compute_metrics(spec.metrics, preds, [e.target for e in items]), preds)
    opts = qa_options or {}
    spans = qa.best_spans(examples, items, preds, opts.get("n_best", 20), opts.get("max_answer_length", 30))
    refs = [ex["answers"] for ex in examples]
    if opts.get("null_answers") and threshold is None:
        threshold = qa.best_threshold(spans, refs)
    answers = qa.answers(spans, threshold if opts.get("null_answers") else None)
    return Evaluation(compute_metrics(spec.metrics, answers, refs), answers, threshold)


def prediction_rows(spec, examples: list[dict], items: list[Encoded], predictions: list, tokenizer) -> list[dict]:
    """One {"input", "reference", "prediction"} per example, for RUN_DIR/predictions/: a generation
    task's input as the model saw it (template, chat template, truncation), a QA question's id too."""
    if spec.kind == "generation":
        return [{"input": tokenizer.decode(e.input_ids), "reference": e.target, "prediction": p}
                for e, p in zip(items, predictions)]
    if spec.kind == "extractive_qa":
        return [{"id": ex.get("id"), "input": ex["question"], "reference": ex["answers"]["text"], "prediction": p}
                for ex, p in zip(examples, predictions)]
    return [{"input": ex["text"] if ex.get("text_pair") is None else [ex["text"], ex["text_pair"]],
             "reference": e.target, "prediction": p} for ex, e, p in zip(examples, items, predictions)]
