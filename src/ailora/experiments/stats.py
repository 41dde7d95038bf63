"""Paired comparisons of two methods: over seeds (t-test, Wilcoxon) and over test examples (bootstrap).

Two runs of a sweep with the same seed share the data order and the task head's initialisation,
so a method and the reference method are compared seed by seed (paired), not as two independent
samples. Two questions, two tests:

- Over seeds (``paired_seeds``): is the mean difference of the test scores non-zero, given how much
  it varies from seed to seed? A t interval and the paired t-test (``scipy.stats.ttest_rel``), and
  the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, exact for few seeds; it cannot reach
  p < 0.05 below 6 seeds, which is why the t-test is the one the report marks).
- Over test examples (``paired_bootstrap``, Efron & Tibshirani 1993, ch. 16; Koehn 2004 for the
  paired form): given these trained models, how much does the difference depend on which test
  examples were drawn? The same resampled indices score both methods, on every seed, and the mean
  difference over seeds is recorded per resample. Works with one seed, but says nothing about
  seed-to-seed variation.

Degenerate cases follow the definitions rather than scipy's NaNs: identical scores give a
difference of 0 and p = 1; a constant non-zero difference over seeds has zero spread, so
t = +-inf and p = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
RESAMPLES = 1000


def paired_seeds(scores: Sequence[float], reference: Sequence[float], confidence: float = 0.95) -> dict:
    """``scores[i] - reference[i]`` over seeds i: {"n", "mean", "ci": [lo, hi] | None, "p_t", "p_wilcoxon"}.

    n = 1 gives the difference with no interval and no p-values (None).
    """
    diffs = np.asarray(scores, dtype=float) - np.asarray(reference, dtype=float)
    n = len(diffs)
    if n == 0:
        return {"n": 0, "mean": None, "ci": None, "p_t": None, "p_wilcoxon": None}
    mean = float(diffs.mean())
    out = {"n": n, "mean": mean, "ci": None, "p_t": None, "p_wilcoxon": None}
    if n < 2:
        return out
    sd = float(diffs.std(ddof=1))
    if sd == 0.0 or np.allclose(diffs, diffs[0], rtol=0, atol=1e-12):
        # scipy returns NaN here (0 / 0 or catastrophic cancellation); the limits are exact.
        p = 1.0 if mean == 0.0 else 0.0
        return {**out, "ci": [mean, mean], "p_t": p, "p_wilcoxon": 1.0 if mean == 0.0 else _wilcoxon(diffs)}
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    p_t = float(sps.ttest_rel(np.asarray(scores, dtype=float), np.asarray(reference, dtype=float)).pvalue)
    return {**out, "ci": [mean - half, mean + half], "p_t": p_t, "p_wilcoxon": _wilcoxon(diffs)}


def _wilcoxon(diffs: np.ndarray) -> float:
    if not np.any(diffs):
        return 1.0
    return float(sps.wilcoxon(diffs, zero_method="zsplit").pvalue)


def paired_bootstrap(metric: Callable[[list, list], float], predictions: Sequence[Sequence],
                     reference: Sequence[Sequence], labels: Sequence, resamples: int = RESAMPLES,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """Bootstrap over test examples of ``metric(method) - metric(reference)``, averaged over seeds.

    predictions, reference: one list of per-example predictions per seed (paired by position),
    each aligned with ``labels`` (the test references, shared by every seed). Returns
    {"n_examples", "seeds", "mean" (the observed difference), "ci": [lo, hi] (percentile),
    "p" (two-sided: twice the smaller tail of the resampled differences around 0, with the
    +1 correction so a finite number of resamples never claims p = 0), "resamples"}.

    The metric is recomputed on each resample (not a mean of per-example scores) so that
    non-additive metrics (F1, MCC, correlations) are bootstrapped correctly.
    """
    if len(predictions) != len(reference) or not predictions:
        raise ValueError("predictions and reference need the same, non-zero number of seeds")
    n = len(labels)
    if any(len(p) != n for p in (*predictions, *reference)):
        raise ValueError("every seed's predictions must cover the same test examples")
    # Object arrays: any prediction type (a class, a text, a span) indexed by numpy in one go.
    labels = _objects(labels)
    pairs = [(_objects(a), _objects(b)) for a, b in zip(predictions, reference)]

    def diff(idx) -> float:
        refs = labels[idx].tolist()
        return float(np.mean([metric(a[idx].tolist(), refs) - metric(b[idx].tolist(), refs) for a, b in pairs]))

    observed = diff(np.arange(n))
    rng = np.random.default_rng(seed)
    samples = np.array([diff(rng.integers(0, n, n)) for _ in range(resamples)])
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(samples, [tail, 1 - tail])
    below, above = np.sum(samples <= 0), np.sum(samples >= 0)
    p = min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))
    return {"n_examples": n, "seeds": len(predictions), "mean": observed, "ci": [float(lo), float(hi)],
            "p": float(p), "resamples": resamples}


def _objects(values: Sequence) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):  # one by one: a list-valued item (QA answers) stays one object
        out[i] = v
    return out


def significant(p: float | None, alpha: float = ALPHA) -> bool:
    return p is not None and not math.isnan(p) and p < alpha
