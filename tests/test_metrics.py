"""Metrics against hand-computed values, SQuAD's official examples and the error messages."""

from __future__ import annotations

import math

import pytest

from ailora.errors import AiloraError
from ailora.tasks.metrics import (
    METRICS,
    Metric,
    compute_metrics,
    extract_number,
    get_metric,
    normalize_answer,
    register_metric,
)

# preds vs refs: tp=2 (items 0, 3), fp=1 (item 2), tn=1 (item 1), fn=0.
PREDS, REFS = [1, 0, 1, 1], [1, 0, 0, 1]


def score(name, preds, refs):
    return get_metric(name).compute(preds, refs)


def test_registry_lists_every_metric_with_direction():
    expected = {"accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman", "squad_em", "squad_f1"}
    expected |= {"rouge1", "rouge2", "rougeL", "numeric_match"}
    assert expected <= set(METRICS)
    assert all(isinstance(m.higher_is_better, bool) and m.description for m in METRICS.values())


def test_classification_metrics_match_hand_computed_values():
    assert score("accuracy", PREDS, REFS) == pytest.approx(0.75)
    assert score("f1", PREDS, REFS) == pytest.approx(0.8)  # P = 2/3, R = 1
    # Class 0: P = 1, R = 1/2, F1 = 2/3; class 1: F1 = 0.8.
    assert score("macro_f1", PREDS, REFS) == pytest.approx((2 / 3 + 0.8) / 2)
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = 2 / sqrt(3*2*2*1)
    assert score("mcc", PREDS, REFS) == pytest.approx(2 / math.sqrt(12))


def test_f1_takes_class_1_as_positive():
    assert score("f1", [0, 0, 0], [0, 0, 1]) == 0.0
    assert score("f1", [1, 1], [1, 1]) == 1.0


def test_correlations():
    assert score("pearson", [1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert score("spearman", [1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert score("pearson", [1.0, 2.0, 3.0, 4.0], [8.0, 6.0, 4.0, 2.0]) == pytest.approx(-1.0)
    # Monotone but not linear: rank correlation 1, linear correlation below 1.
    assert score("spearman", [1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert score("pearson", [1, 2, 3, 4], [1, 4, 9, 100]) < 0.9
    assert math.isnan(score("pearson", [1, 1, 1], [1, 2, 3]))


def test_squad_normalisation_is_the_official_one():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear and the plum.") == "apple pear and plum"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_squad_em_and_f1_official_examples():
    golds = [["Denver Broncos", "Denver Broncos", "Denver Broncos"]]
    assert score("squad_em", ["the Denver Broncos"], golds) == 1.0
    assert score("squad_em", ["Broncos"], golds) == 0.0
    assert score("squad_f1", ["Broncos"], golds) == pytest.approx(2 / 3)  # P = 1, R = 1/2
    # F1 takes the best gold answer: "Santa Clara" is 1 of 2 tokens vs 3-token "Santa Clara, California".
    golds = [{"text": ["Santa Clara, California", "Levi's Stadium"], "answer_start": [403, 355]}]
    assert score("squad_f1", ["Santa Clara"], golds) == pytest.approx(0.8)
    assert score("squad_em", ["Levi's Stadium."], golds) == 1.0


def test_squad_v2_no_answer_matches_only_the_empty_prediction():
    no_answer = {"text": [], "answer_start": []}
    assert score("squad_em", ["", "Denver"], [no_answer, no_answer]) == 0.5
    assert score("squad_f1", [""], [no_answer]) == 1.0
    assert score("squad_f1", [""], [["Denver Broncos"]]) == 0.0
    means = compute_metrics(["squad_em", "squad_f1"], ["", "Broncos"], [no_answer, ["Denver Broncos"]])
    assert means == pytest.approx({"squad_em": 0.5, "squad_f1": (1 + 2 / 3) / 2})


def test_rouge_with_stemming():
    assert score("rouge1", ["the cat sat"], ["the cat ran"]) == pytest.approx(2 / 3)
    assert score("rouge2", ["the cat sat"], ["the cat ran"]) == pytest.approx(1 / 2)
    assert score("rougeL", ["the cat sat"], ["the cat ran"]) == pytest.approx(2 / 3)
    assert score("rouge1", ["Cats running"], ["cat runs"]) == pytest.approx(1.0)  # Porter stems
    assert score("rouge2", ["a b", "x y"], ["a b", "z w"]) == pytest.approx(0.5)  # mean over pairs


def test_numeric_match_reads_the_last_number_with_commas_and_units():
    preds = ["She has 9 apples.", "Total: 1,200", "It is 12 books", "3.5", "no idea", "5 - 3 = 2"]
    refs = ["9 apples", 1200, "13 books", "3.50 dollars", "4", "2"]
    hits = [get_metric("numeric_match").compute([p], [r]) for p, r in zip(preds, refs)]
    assert hits == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert extract_number("-7 degrees") == -7.0
    assert extract_number("from 2,500.75 to 3") == 3.0
    assert extract_number("1,234.5 dollars") == 1234.5


def test_numeric_match_reference_without_a_number_is_an_error():
    with pytest.raises(AiloraError, match="reference 0"):
        score("numeric_match", ["9"], ["Mrs. Hilt"])


def test_compute_metrics_keeps_order():
    out = compute_metrics(["f1", "accuracy"], PREDS, REFS)
    assert list(out) == ["f1", "accuracy"]
    assert out["accuracy"] == pytest.approx(0.75)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(AiloraError, match=r"unknown metric 'bleu' \(known: .*accuracy"):
        compute_metrics(["accuracy", "bleu"], [1], [1])
    with pytest.raises(AiloraError, match="'accuracy': 2 predictions but 3 references"):
        score("accuracy", [1, 0], [1, 0, 1])
    with pytest.raises(AiloraError, match="no predictions"):
        score("f1", [], [])
    with pytest.raises(AiloraError, match="already registered"):
        register_metric(Metric("accuracy", True, lambda p, r: 0.0))
