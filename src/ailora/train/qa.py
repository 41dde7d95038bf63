"""Extractive QA with a span head (``AutoModelForQuestionAnswering``): windows, labels, post-processing.

Tokenisation: question and context as a pair, the context cut into windows of ``model.max_length``
tokens that overlap by ``qa.doc_stride`` tokens, each with the offset mapping back to the
context's characters. A training window's labels are the token positions of the first gold
answer's first and last characters, or the [CLS] position when the answer is not wholly inside
the window or the question has none (SQuAD v2.0).

Post-processing (as the reference SQuAD scripts of BERT and transformers do): per window, the
``qa.n_best`` highest start and end logits give candidate spans inside the context with
end >= start and at most ``qa.max_answer_length`` tokens; the best span over all windows of a
question, scored by start + end logit, is its answer, taken from the context's characters. The
null score of a question is the lowest [CLS] start + end logit over its windows. When the task
has unanswerable questions, a question gets the empty answer when null score - best span score
exceeds a threshold; the threshold is the one that maximises F1 on the validation split (the
official v2.0 script's ``best_f1_thresh``) and is then applied unchanged to test.
:class:`ExtractiveQA` is the task kind (``ailora.train.kinds``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

import torch

from ailora.errors import AiloraError
from ailora.tasks.metrics import compute_metrics, get_metric
from ailora.train.data import Encoded, collate, eval_batch
from ailora.train.evaluate import Evaluation


def doc_stride(given: int | None, max_length: int) -> int:
    """``qa.doc_stride``, or by default a quarter of the window (HF's run_qa: 128 of 384, a third)."""
    return given if given is not None else max(1, max_length // 4)


def _windows(tokenizer, examples: list[dict], max_length: int, stride: int):
    if not getattr(tokenizer, "is_fast", False):
        raise AiloraError("extractive QA needs a fast tokenizer (it maps tokens back to characters)")
    if stride >= max_length // 2:
        raise AiloraError(f"qa.doc_stride ({stride}) must be less than half of model.max_length ({max_length})")
    try:
        return tokenizer([ex["question"].lstrip() for ex in examples], [ex["context"] for ex in examples],
                         truncation="only_second", max_length=max_length, stride=stride,
                         return_overflowing_tokens=True, return_offsets_mapping=True)
    except Exception as exc:  # the tokenizers library's message, e.g. a question longer than a window
        raise AiloraError(f"extractive QA tokenisation failed: {str(exc).splitlines()[0]}") from None


def _context_span(seq_ids: list) -> tuple[int, int]:
    first = seq_ids.index(1)
    return first, len(seq_ids) - 1 - seq_ids[::-1].index(1)


def _label(example: dict, offsets, seq_ids, cls: int) -> tuple[int, int]:
    """(start, end) token positions of the first gold answer in this window, or (cls, cls)."""
    answers = example["answers"]
    if not answers["text"]:
        return cls, cls
    s_char = answers["answer_start"][0]
    e_char = s_char + len(answers["text"][0])
    lo, hi = _context_span(seq_ids)
    if offsets[lo][0] > s_char or offsets[hi][1] < e_char:
        return cls, cls
    start = lo
    while start <= hi and offsets[start][0] <= s_char:
        start += 1
    end = hi
    while end >= lo and offsets[end][1] >= e_char:
        end -= 1
    return start - 1, end + 1


def encode_qa(tokenizer, examples: list[dict], max_length: int, stride: int, for_training: bool) -> list[Encoded]:
    """One Encoded per window: target (start, end) for training; ``meta`` {example, offsets (None
    outside the context), cls} for evaluation."""
    enc = _windows(tokenizer, examples, max_length, stride)
    out = []
    for i, ids in enumerate(enc["input_ids"]):
        index = enc["overflow_to_sample_mapping"][i]
        seq_ids, offsets = enc.sequence_ids(i), enc["offset_mapping"][i]
        cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        types = enc["token_type_ids"][i] if "token_type_ids" in enc else None
        if for_training:
            out.append(Encoded(ids, _label(examples[index], offsets, seq_ids, cls), token_type_ids=types))
            continue
        meta = {"example": index, "cls": cls,
                "offsets": [tuple(o) if s == 1 else None for o, s in zip(offsets, seq_ids)]}
        out.append(Encoded(ids, None, token_type_ids=types, meta=meta))
    return out


def _top(values: list[float], k: int) -> list[int]:
    return sorted(range(len(values)), key=lambda j: values[j], reverse=True)[:k]


def best_spans(examples: list[dict], windows: list[Encoded], logits: list[tuple[list[float], list[float]]],
               n_best: int = 20, max_answer_length: int = 30) -> list[tuple[str, float, float]]:
    """Per example: (best span's text, its score, null score); ("", -inf, null) when no span is valid.

    ``logits[i]`` are window i's start and end logits, one per token of its ``input_ids``."""
    by_example = defaultdict(list)
    for w, (starts, ends) in zip(windows, logits):
        by_example[w.meta["example"]].append((w.meta, starts, ends))
    out = []
    for i, ex in enumerate(examples):
        text, best, null = "", -math.inf, math.inf
        for meta, starts, ends in by_example[i]:
            offs, cls = meta["offsets"], meta["cls"]
            null = min(null, starts[cls] + ends[cls])
            for a in _top(starts, n_best):
                for b in _top(ends, n_best):
                    if offs[a] is None or offs[b] is None or b < a or b - a + 1 > max_answer_length:
                        continue
                    if starts[a] + ends[b] > best:
                        best, text = starts[a] + ends[b], ex["context"][offs[a][0]:offs[b][1]]
        out.append((text, best, null))
    return out


def best_threshold(spans: list[tuple[str, float, float]], references: list) -> float:
    """The null threshold with the highest SQuAD F1 on ``references``: a question is unanswered when
    null score - span score > threshold. Ties go to the lowest threshold that reaches the best."""
    f1 = get_metric("squad_f1")
    rows = sorted((null - score, f1.compute([text], [ref]), f1.compute([""], [ref]))
                  for (text, score, null), ref in zip(spans, references))
    total = sum(r[2] for r in rows)  # every question unanswered
    best, threshold = total, (rows[0][0] - 1.0 if rows else 0.0)
    for diff, span_f1, null_f1 in rows:  # answer every question with diff <= this one's
        total += span_f1 - null_f1
        if total > best and math.isfinite(diff):
            best, threshold = total, diff
    return threshold


def answers(spans: list[tuple[str, float, float]], threshold: float | None) -> list[str]:
    """The predicted answers: the best span, or "" where the null score wins (threshold None: never)."""
    if threshold is None:
        return [text for text, _, _ in spans]
    return [text if null - score <= threshold else "" for text, score, null in spans]


def has_null_answers(examples: list[dict]) -> bool:
    """Whether some question has no answer (SQuAD v2.0 style)."""
    return any(not ex["answers"]["text"] for ex in examples)


class ExtractiveQA:
    """The extractive-QA task kind: a span head over windows of the context; a question's prediction
    is its best span over its windows, or "" where the null threshold chosen on validation says so."""

    calibrates: ClassVar[bool] = True  # test uses the null threshold chosen on validation

    def __init__(self, spec, max_length: int, stride: int, n_best: int, max_answer_length: int,
                 null_answers: bool) -> None:
        self.spec, self.max_length, self.stride = spec, max_length, stride
        self.n_best, self.max_answer_length, self.null_answers = n_best, max_answer_length, null_answers

    @classmethod
    def for_run(cls, cfg, data) -> ExtractiveQA:
        m = cfg.model
        return cls(data.spec, m.max_length, doc_stride(cfg.qa.doc_stride, m.max_length), cfg.qa.n_best,
                   cfg.qa.max_answer_length, has_null_answers(data.train + data.validation))

    def model_kind(self, seq2seq: bool) -> str:
        return "qa"

    def check_checkpoint(self, path: Path, config) -> None:
        return None

    def head(self) -> dict[str, Any]:
        return {}

    def encode(self, split: str, examples: list[dict], model) -> list[Encoded]:
        return encode_qa(model.tokenizer, examples, self.max_length, self.stride, split == "train")

    def batch(self, items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(items, pad_id)

    def predict(self, acc, net, items: list[Encoded], model) -> list[tuple[list[float], list[float]]]:
        """Each window's (start logits, end logits), one per token of its ``input_ids``."""
        out = net(**eval_batch(items, model.tokenizer.pad_token_id, acc.device))
        return [(s[:len(item.input_ids)].tolist(), e[:len(item.input_ids)].tolist())
                for item, s, e in zip(items, out.start_logits.float(), out.end_logits.float())]

    def score(self, predictions: list, items: list[Encoded], examples: list[dict], calibration) -> Evaluation:
        """Answers per question; with unanswerable questions and no ``calibration`` (validation) the
        best null threshold on this split is chosen, reported as the ``null_threshold`` score."""
        spans = best_spans(examples, items, predictions, self.n_best, self.max_answer_length)
        refs = [ex["answers"] for ex in examples]
        threshold = calibration
        if self.null_answers and threshold is None:
            threshold = best_threshold(spans, refs)
        predicted = answers(spans, threshold if self.null_answers else None)
        extra = {} if threshold is None else {"null_threshold": threshold}
        return Evaluation({**compute_metrics(self.spec.metrics, predicted, refs), **extra}, predicted, threshold)

    def rows(self, examples: list[dict], items: list[Encoded], predictions: list, model) -> list[dict]:
        return [{"id": ex.get("id"), "input": ex["question"], "reference": ex["answers"]["text"], "prediction": p}
                for ex, p in zip(examples, predictions)]
