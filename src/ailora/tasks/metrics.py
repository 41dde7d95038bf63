"""Evaluation metrics, registered by name.

Every metric is a :class:`Metric` with ``compute(predictions, references) -> float``. All scores are
fractions (accuracy 0.93, not 93), SQuAD and ROUGE included, so that tables and learning-rate
searches treat every metric alike; the official SQuAD script prints the same numbers times 100.

What each metric expects:

* ``accuracy``, ``f1``, ``macro_f1``, ``mcc``: class indices (ints). ``f1`` is binary with class 1
  as the positive class (GLUE's MRPC/QQP convention).
* ``pearson``, ``spearman``: real numbers.
* ``squad_em``, ``squad_f1``: predicted answer strings against the gold answers of each question,
  given as a list of strings or a SQuAD ``{"text": [...], "answer_start": [...]}`` dict. An empty
  gold list means "no answer" (SQuAD v2.0), which only the empty prediction matches.
* ``rouge1``, ``rouge2``, ``rougeL``: generated and reference texts; mean F-measure of the
  ``rouge_score`` package with Porter stemming.
* ``numeric_match``: generated text against a reference number (or text holding one); the last
  number in each is compared, so "She has 9 apples." matches "9 apples" and "1,200" matches 1200.
"""

from __future__ import annotations

import math
import re
import string
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ailora.errors import AiloraError
from ailora.registry import lookup, register

ScoreFn = Callable[[Sequence[Any], Sequence[Any]], float]


@dataclass(frozen=True)
class Metric:
    """A named evaluation metric."""

    name: str
    """Registry key, as written in task specs and results files."""
    higher_is_better: bool
    """Direction for model selection (learning-rate search, early stopping)."""
    fn: ScoreFn
    """``fn(predictions, references) -> float`` over equal-length, non-empty sequences."""
    description: str = ""
    """One line for ``ailora ls``."""
    kinds: tuple[str, ...] = ()
    """The task kinds it can score (``TaskSpec`` refuses it for another); empty: any kind."""

    def compute(self, predictions: Iterable[Any], references: Iterable[Any]) -> float:
        """Score ``predictions`` against ``references`` (same length, at least one item)."""
        preds, refs = list(predictions), list(references)
        if len(preds) != len(refs):
            raise AiloraError(f"metric {self.name!r}: {len(preds)} predictions but {len(refs)} references")
        if not preds:
            raise AiloraError(f"metric {self.name!r}: no predictions to score")
        return float(self.fn(preds, refs))


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS`; a name may be registered once."""
    return register(METRICS, metric.name, metric, "metric")


def get_metric(name: str) -> Metric:
    """The registered metric called ``name``."""
    return lookup(METRICS, name, "metric")


def metrics_for(kind: str) -> list[str]:
    """The registered metrics that can score a task of ``kind``."""
    return [name for name, m in METRICS.items() if not m.kinds or kind in m.kinds]


def is_better(value: float | None, best: float | None, higher_is_better: bool) -> bool:
    """Whether ``value`` beats ``best`` in the direction of ``higher_is_better``; None and NaN never
    beat anything, anything else beats a missing ``best``, and a tie is not better."""
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if higher_is_better else value < best


def compute_metrics(
    names: Iterable[str], predictions: Sequence[Any], references: Sequence[Any]
) -> dict[str, float]:
    """Score one set of predictions with several metrics: ``{name: score}`` in the order given."""
    metrics = [get_metric(name) for name in names]
    return {m.name: m.compute(predictions, references) for m in metrics}


# Classification and regression: scikit-learn and SciPy.


def _accuracy(preds: Sequence[Any], refs: Sequence[Any]) -> float:
    return sum(int(p) == int(r) for p, r in zip(preds, refs)) / len(refs)


def _f1_binary(preds: Sequence[Any], refs: Sequence[Any]) -> float:
    from sklearn.metrics import f1_score

    return f1_score([int(r) for r in refs], [int(p) for p in preds], pos_label=1, zero_division=0)


def _f1_macro(preds: Sequence[Any], refs: Sequence[Any]) -> float:
    from sklearn.metrics import f1_score

    return f1_score([int(r) for r in refs], [int(p) for p in preds], average="macro", zero_division=0)


def _mcc(preds: Sequence[Any], refs: Sequence[Any]) -> float:
    from sklearn.metrics import matthews_corrcoef

    return matthews_corrcoef([int(r) for r in refs], [int(p) for p in preds])


def _correlation(kind: str) -> ScoreFn:
    def fn(preds: Sequence[Any], refs: Sequence[Any]) -> float:
        from scipy import stats

        x, y = [float(p) for p in preds], [float(r) for r in refs]
        if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
            return math.nan  # undefined for constant input; say so rather than guess 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = stats.pearsonr(x, y) if kind == "pearson" else stats.spearmanr(x, y)
        return float(result[0])

    return fn


# SQuAD: the official evaluation scripts' normalisation and token F1 (v2.0 semantics, which equal
# v1.1 whenever a question has a non-empty gold answer).


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, drop punctuation, articles and extra whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text, flags=re.UNICODE)
    return " ".join(text.split())


def _gold_answers(ref: Any) -> list[str]:
    texts = ref.get("text", []) if isinstance(ref, Mapping) else [ref] if isinstance(ref, str) else list(ref)
    golds = [t for t in texts if normalize_answer(t)]
    return golds or [""]  # no (non-empty) gold answer: only the empty prediction is right


def _squad_exact(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def _squad_token_f1(pred: str, gold: str) -> float:
    pred_toks, gold_toks = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not pred_toks or not gold_toks:
        return float(pred_toks == gold_toks)
    same = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _squad(score: Callable[[str, str], float]) -> ScoreFn:
    def fn(preds: Sequence[Any], refs: Sequence[Any]) -> float:
        total = sum(max(score(str(p or ""), g) for g in _gold_answers(r)) for p, r in zip(preds, refs))
        return total / len(refs)

    return fn


# ROUGE: the rouge_score package (Google's reimplementation of the Perl script).


def _rouge(kind: str) -> ScoreFn:
    def fn(preds: Sequence[Any], refs: Sequence[Any]) -> float:
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            raise AiloraError("ROUGE metrics need the rouge_score package: pip install rouge-score") from None
        scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
        return sum(scorer.score(str(r), str(p))[kind].fmeasure for p, r in zip(preds, refs)) / len(refs)

    return fn


# Numeric answers (math word problems).

# A number, with optional thousands separators and decimals; a minus only where it is not a hyphen
# between two numbers ("5-3" reads as 5 and 3).
_NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def extract_number(text: Any) -> float | None:
    """The last number in ``text`` ("1,200 apples" -> 1200.0), or ``text`` itself if it is a number."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    found = _NUMBER.findall(str(text))
    return float(found[-1].replace(",", "")) if found else None


def _numeric_match(preds: Sequence[Any], refs: Sequence[Any]) -> float:
    hits = 0
    for i, (pred, ref) in enumerate(zip(preds, refs)):
        want = extract_number(ref)
        if want is None:
            raise AiloraError(f"metric 'numeric_match': reference {i} ({str(ref)[:40]!r}) holds no number")
        got = extract_number(pred)
        hits += got is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6)
    return hits / len(refs)


for _metric in (
    Metric("accuracy", True, _accuracy, "fraction of predictions equal to the label", ("classification",)),
    Metric("f1", True, _f1_binary, "binary F1 with class 1 positive (MRPC, QQP)", ("classification",)),
    Metric("macro_f1", True, _f1_macro, "unweighted mean of per-class F1", ("classification",)),
    Metric("mcc", True, _mcc, "Matthews correlation coefficient (CoLA)", ("classification",)),
    Metric("pearson", True, _correlation("pearson"), "Pearson correlation (STS-B)", ("regression",)),
    Metric("spearman", True, _correlation("spearman"), "Spearman rank correlation (STS-B)", ("regression",)),
    Metric("squad_em", True, _squad(_squad_exact), "SQuAD exact match after official normalisation", ("extractive_qa",)),
    Metric("squad_f1", True, _squad(_squad_token_f1), "SQuAD token F1, max over gold answers", ("extractive_qa",)),
    Metric("rouge1", True, _rouge("rouge1"), "ROUGE-1 F-measure, stemmed", ("generation",)),
    Metric("rouge2", True, _rouge("rouge2"), "ROUGE-2 F-measure, stemmed", ("generation",)),
    Metric("rougeL", True, _rouge("rougeL"), "ROUGE-L F-measure, stemmed", ("generation",)),
    Metric("numeric_match", True, _numeric_match, "last number of the output equals the reference number",
           ("generation",)),
):
    register_metric(_metric)
