"""Training curves across runs: loss and validation metric per epoch (AILoRA paper, Figure 3),
and per optimizer step (``read_steps``, ``band``, ``steps_to_fraction``).

A run directory is what ``ailora train`` writes, read through ``ailora.train.runrecord`` (strict:
a file that is not what the trainer writes is a one-line error naming it):

- ``config.json``: the run config; the method is ``method.name``, the seed ``train.seed``;
- ``metrics.jsonl``: one ``EpochEntry`` per line, per epoch, e.g.
  ``{"epoch": 1, "step": 20, "train_loss": 0.61, "validation": {"accuracy": 0.72}, "seconds": 3.1}``;
  it is there from the first epoch's end, so the curves of a run still under way can be drawn;
- ``results.json`` of a complete run, for the step-level curves (``read_steps``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ailora.core.files import require_dir
from ailora.errors import AiloraError
from ailora.train.record import CONFIG, METRICS, RESULTS
from ailora.train.runrecord import config_seed, method_name, read_complete, read_config, read_epochs


@dataclass
class RunCurves:
    """One run's curves; lists are aligned with `epochs`, None where a value was not logged."""

    path: str
    method: str
    seed: int | None
    epochs: list[int] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)
    metrics: dict[str, list[float | None]] = field(default_factory=dict)


def read_run(path: str | os.PathLike) -> RunCurves:
    """Read one run directory's per-epoch curves (see the module docstring for the files)."""
    p = require_dir(path, "run directory", (METRICS, CONFIG))
    config = read_config(p)
    entries = read_epochs(p)
    if not entries:
        raise AiloraError(f"{p / METRICS} has no per-epoch records")
    names = sorted({m for e in entries for m in e.validation})
    return RunCurves(str(p), method_name(config), config_seed(config), [e.epoch for e in entries],
                     [e.train_loss for e in entries], {m: [e.validation.get(m) for e in entries] for m in names})


def mean_by_method(runs: list[RunCurves], metric: str | None) -> dict[str, dict]:
    """Per method, the mean train loss and metric per epoch over its runs (seeds), and their count."""
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r.method for r in runs):
        group = [r for r in runs if r.method == method]
        epochs = sorted({e for r in group for e in r.epochs})

        def mean(series_of, epoch, group=group):
            vals = [series_of(r)[r.epochs.index(epoch)] for r in group if epoch in r.epochs]
            vals = [v for v in vals if v is not None]
            return sum(vals) / len(vals) if vals else None

        out[method] = {
            "runs": len(group),
            "epochs": epochs,
            "train_loss": [mean(lambda r: r.train_loss, e) for e in epochs],
            "metric": [mean(lambda r: r.metrics.get(metric, [None] * len(r.epochs)), e) for e in epochs]
            if metric
            else [],
        }
    return out


# Curves against optimizer steps (results.json of ``ailora.train``): every validation (per epoch
# and every ``train.eval_every_steps``) and the training loss per logging interval.


@dataclass
class StepCurves:
    """One run's step-level curves: validation values and interval training losses, by step."""

    path: str
    method: str
    seed: int | None
    eval_steps: list[int] = field(default_factory=list)
    metrics: dict[str, list[float | None]] = field(default_factory=dict)
    loss_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)


def read_steps(path: str | os.PathLike, method: str | None = None) -> StepCurves:
    """A complete run's step-level curves from its record: ``evaluations`` (a repeated step keeps its
    last validation) and ``train_log`` (the mean loss of each logging interval; none in a record from
    before step-level losses)."""
    p = require_dir(path, "run directory", (RESULTS,))
    rec = read_complete(p)
    by_step = {e.step: e.validation for e in rec.evaluations}
    names = sorted({m for v in by_step.values() for m in v})
    steps = sorted(by_step)
    log = sorted((e.step, float(e.train_loss)) for e in rec.train_log or ())
    return StepCurves(str(p), method or method_name(rec.config), rec.seed, steps,
                      {m: [by_step[s].get(m) for s in steps] for m in names},
                      [s for s, _ in log], [v for _, v in log])


def band(series: list[tuple[list[int], list[float | None]]]) -> dict:
    """Mean and min-max band over runs of (steps, values) series, on the union of their steps
    (a step counts the runs that have a value there): {"steps", "mean", "low", "high", "runs"}."""
    steps = sorted({s for xs, _ in series for s in xs})
    values = {s: [] for s in steps}
    for xs, ys in series:
        for s, y in zip(xs, ys):
            if y is not None:
                values[s].append(y)
    steps = [s for s in steps if values[s]]
    return {"steps": steps, "mean": [sum(values[s]) / len(values[s]) for s in steps],
            "low": [min(values[s]) for s in steps], "high": [max(values[s]) for s in steps],
            "runs": len(series)}


def steps_to_fraction(steps: list[int], values: list[float | None], higher_is_better: bool,
                      fraction: float = 0.95) -> int | None:
    """The first step whose validation value reaches ``fraction`` of the run's best value.

    Higher-is-better: value >= fraction * best; lower-is-better (an error): value <= best / fraction.
    None when nothing was recorded, or when "a fraction of the best" means nothing (best <= 0
    for a higher-is-better metric, best < 0 for a lower-is-better one).
    """
    pairs = [(s, v) for s, v in zip(steps, values) if v is not None and v == v]
    if not pairs:
        return None
    best = max(v for _, v in pairs) if higher_is_better else min(v for _, v in pairs)
    if (higher_is_better and best <= 0) or (not higher_is_better and best < 0):
        return None
    target = fraction * best if higher_is_better else best / fraction
    return next(s for s, v in pairs if (v >= target if higher_is_better else v <= target))
