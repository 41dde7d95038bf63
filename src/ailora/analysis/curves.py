"""Training curves across runs: loss and validation metric per epoch (AILoRA paper, Figure 3),
and per optimizer step (``read_steps``, ``band``, ``steps_to_fraction``).

Expected run directory (what the trainer writes):

- ``config.json`` with the method: ``"method": "ailora"`` or ``"method": {"name": "ailora", ...}``
  (``kind`` / ``type`` also accepted); optional ``"seed"`` (top level or under ``train``).
- ``metrics.jsonl``: one JSON object per line, per epoch, e.g.
  ``{"epoch": 1, "train_loss": 0.61, "validation": {"accuracy": 0.72, "f1": 0.80}}``.

The reader is tolerant: blank, non-JSON (e.g. a half-written last line) and non-object lines are
skipped and counted; records without ``epoch`` (e.g. per-step logs) are skipped if any record
has one, else numbered 1, 2, ...; a repeated epoch keeps the last record (a resumed run);
``loss`` stands for ``train_loss``, ``eval`` / ``val`` for ``validation``, and flat numeric keys
``validation_<metric>`` / ``eval_<metric>`` are read as metrics too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ailora.core.files import require_dir
from ailora.errors import AiloraError

_VALIDATION_KEYS = ("validation", "eval", "val")


@dataclass
class RunCurves:
    """One run's curves; lists are aligned with `epochs`, None where a value was not logged."""

    path: str
    method: str
    seed: int | None
    epochs: list[int] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)
    metrics: dict[str, list[float | None]] = field(default_factory=dict)
    skipped_lines: int = 0


def method_name(config: dict, default: str) -> str:
    """The method of a run config: a string, or the name/kind/type of a nested method section."""
    method = config.get("method")
    if isinstance(method, dict):
        method = method.get("name") or method.get("kind") or method.get("type")
    return str(method) if method else default


def _epoch_record(obj: dict) -> tuple[float | None, dict[str, float]]:
    loss = obj.get("train_loss", obj.get("loss"))
    metrics: dict[str, float] = {}
    for key in _VALIDATION_KEYS:
        if isinstance(obj.get(key), dict):
            metrics.update({k: v for k, v in obj[key].items() if isinstance(v, int | float)})
    for key, value in obj.items():
        for prefix in _VALIDATION_KEYS:
            if (
                key.startswith(prefix + "_")
                and isinstance(value, int | float)
                and not isinstance(value, bool)
            ):
                metrics.setdefault(key[len(prefix) + 1 :], value)
    return (float(loss) if isinstance(loss, int | float) else None), metrics


def parse_metrics_lines(lines: list[str]) -> tuple[dict[int, tuple[float | None, dict]], int]:
    """metrics.jsonl lines -> ({epoch: (train_loss, {metric: value})}, number of skipped lines)."""
    records, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(obj, dict):
            skipped += 1
            continue
        records.append(obj)
    with_epoch = [r for r in records if isinstance(r.get("epoch"), int | float)]
    if with_epoch:
        skipped += len(records) - len(with_epoch)
        numbered = [(int(r["epoch"]), r) for r in with_epoch]
    else:
        numbered = list(enumerate(records, 1))
    return {epoch: _epoch_record(r) for epoch, r in numbered}, skipped


def read_run(path: str | os.PathLike) -> RunCurves:
    """Read one run directory (see the module docstring for the format)."""
    p = require_dir(path, "run directory", ("metrics.jsonl",))
    config = {}
    if (p / "config.json").is_file():
        try:
            config = json.loads((p / "config.json").read_text())
        except json.JSONDecodeError:
            raise AiloraError(f"{p / 'config.json'} is not valid JSON") from None
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    seed = config.get("seed", train.get("seed"))
    by_epoch, skipped = parse_metrics_lines((p / "metrics.jsonl").read_text().splitlines())
    if not by_epoch:
        raise AiloraError(f"{p / 'metrics.jsonl'} has no per-epoch records")
    run = RunCurves(
        str(p), method_name(config, p.name), seed if isinstance(seed, int) else None, skipped_lines=skipped
    )
    names = sorted({m for _, metrics in by_epoch.values() for m in metrics})
    run.metrics = {m: [] for m in names}
    for epoch in sorted(by_epoch):
        loss, metrics = by_epoch[epoch]
        run.epochs.append(epoch)
        run.train_loss.append(loss)
        for m in names:
            run.metrics[m].append(metrics.get(m))
    return run


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
    """A finished run's ``results.json``: ``evaluations`` (a repeated step keeps its last record)
    and ``train_log`` ([{"step", "train_loss"}], the mean loss of each logging interval)."""
    p = require_dir(path, "run directory", ("results.json",))
    try:
        res = json.loads((p / "results.json").read_text())
    except json.JSONDecodeError:
        raise AiloraError(f"{p / 'results.json'} is not valid JSON") from None
    by_step = {int(e["step"]): e.get("validation", {}) for e in res.get("evaluations") or []}
    names = sorted({m for v in by_step.values() for m in v})
    steps = sorted(by_step)
    log = sorted((int(r["step"]), float(r["train_loss"])) for r in res.get("train_log") or [])
    seed = res.get("seed")
    return StepCurves(str(p), method or method_name(res.get("config", {}), p.name),
                      seed if isinstance(seed, int) else None, steps,
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
