"""Known-answer tests of the paired statistics (``ailora.experiments.stats``) and of convergence in steps."""

from __future__ import annotations

import math

import pytest

from ailora.analysis.curves import band, steps_to_fraction
from ailora.experiments.stats import paired_bootstrap, paired_seeds, significant
from ailora.tasks.metrics import get_metric

ACC = get_metric("accuracy").fn


def test_identical_scores_give_zero_difference_and_p_one():
    out = paired_seeds([0.8, 0.7, 0.9], [0.8, 0.7, 0.9])
    assert out == {"n": 3, "mean": 0.0, "ci": [0.0, 0.0], "p_t": 1.0, "p_wilcoxon": 1.0}
    assert not significant(out["p_t"])


def test_paired_t_against_the_closed_form():
    # Differences 1, 2, 3: mean 2, sd 1, t = 2 sqrt(3) on 2 degrees of freedom, whose CDF is
    # 1/2 + t / (2 sqrt(t^2 + 2)); the 97.5% quantile of t(2) is 4.302652729911275.
    out = paired_seeds([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    t = 2 * math.sqrt(3)
    assert out["mean"] == pytest.approx(2.0)
    assert out["p_t"] == pytest.approx(1 - t / math.sqrt(t * t + 2))  # 0.0742: not significant
    half = 4.302652729911275 / math.sqrt(3)
    assert out["ci"] == pytest.approx([2 - half, 2 + half])
    assert out["p_wilcoxon"] == pytest.approx(0.25)  # exact: 2 of the 2^3 sign patterns are as extreme
    assert not significant(out["p_t"])


def test_a_constant_gap_over_seeds_is_significant_and_one_seed_has_no_test():
    out = paired_seeds([0.9, 0.92, 0.95], [0.8, 0.82, 0.85])
    assert out["mean"] == pytest.approx(0.1) and out["p_t"] == 0.0 and significant(out["p_t"])
    assert out["ci"] == pytest.approx([0.1, 0.1])
    one = paired_seeds([0.9], [0.8])
    assert one["mean"] == pytest.approx(0.1) and one["ci"] is None and one["p_t"] is None
    assert not significant(one["p_t"])


def test_bootstrap_identical_predictions():
    labels = [i % 2 for i in range(50)]
    preds = [[(i * 7) % 2 for i in range(50)]] * 2
    out = paired_bootstrap(ACC, preds, preds, labels, resamples=200)
    assert out["mean"] == 0.0 and out["ci"] == [0.0, 0.0] and out["p"] == 1.0
    assert out["n_examples"] == 50 and out["seeds"] == 2


def test_bootstrap_large_gap_is_significant():
    labels = [i % 2 for i in range(200)]
    good = list(labels)  # all right
    half = [r if i < 100 else 1 - r for i, r in enumerate(labels)]  # half right
    out = paired_bootstrap(ACC, [good], [half], labels, resamples=500)
    assert out["mean"] == pytest.approx(0.5)
    assert out["p"] == pytest.approx(2 / 501) and significant(out["p"])  # no resample reaches 0
    assert 0.4 < out["ci"][0] < 0.5 < out["ci"][1] < 0.6
    reverse = paired_bootstrap(ACC, [half], [good], labels, resamples=500)
    assert reverse["mean"] == pytest.approx(-0.5) and reverse["ci"][1] < 0


def test_bootstrap_balanced_disagreement_is_not_significant():
    # Each method right on 20 examples the other gets wrong: the observed difference is 0.
    labels = [0] * 100
    a = [1 if i < 20 else 0 for i in range(100)]
    b = [1 if 20 <= i < 40 else 0 for i in range(100)]
    out = paired_bootstrap(ACC, [a], [b], labels, resamples=500)
    assert out["mean"] == 0.0 and out["ci"][0] < 0 < out["ci"][1] and out["p"] > 0.5


def test_bootstrap_recomputes_non_additive_metrics_and_checks_shapes():
    f1 = get_metric("f1").fn
    labels = [1, 1, 0, 0, 1, 0]
    a, b = [1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 1, 1]
    out = paired_bootstrap(f1, [a], [b], labels, resamples=50)
    assert out["mean"] == pytest.approx(f1(a, labels) - f1(b, labels))  # 0.8 - 4/7, not a mean of per-example scores
    with pytest.raises(ValueError, match="same test examples"):
        paired_bootstrap(ACC, [a], [b[:5]], labels)
    with pytest.raises(ValueError, match="number of seeds"):
        paired_bootstrap(ACC, [a, a], [b], labels)


def test_steps_to_fraction_known_answers():
    steps = [0, 10, 20, 30]
    assert steps_to_fraction(steps, [0.5, 0.8, 0.9, 1.0], True) == 30  # 95% of 1.0 is 0.95
    assert steps_to_fraction(steps, [0.5, 0.8, 0.9, 1.0], True, 0.9) == 20
    assert steps_to_fraction(steps, [0.5, 0.96, None, 1.0], True) == 10
    assert steps_to_fraction(steps, [0.5, 0.2, 0.105, 0.1], False) == 20  # an error: <= 0.1 / 0.95
    assert steps_to_fraction(steps, [-0.2, -0.1, -0.3, -0.5], True) is None  # 95% of a negative best: no meaning
    assert steps_to_fraction([], [], True) is None


def test_band_over_seeds():
    b = band([([0, 10, 20], [0.5, 0.7, 0.9]), ([0, 10], [0.3, None]), ([30], [1.0])])
    assert b == {"steps": [0, 10, 20, 30], "mean": pytest.approx([0.4, 0.7, 0.9, 1.0]),
                 "low": [0.3, 0.7, 0.9, 1.0], "high": [0.5, 0.7, 0.9, 1.0], "runs": 3}
