"""Sweeps: methods x tasks x seeds x a learning-rate grid per method, resumable, lr chosen on validation.

The paper's protocol (``methods.md``, "Evaluation protocol"): the learning rate is searched per
method, seeds are averaged. Here, per task and method, the lr with the best mean over seeds of the
task's main VALIDATION metric is selected (the metric's ``higher_is_better`` decides the
direction; NaN never wins; a tie keeps the earlier lr of the grid), and its TEST metrics are
reported as mean and sample standard deviation (n - 1; 0 for one seed) over seeds.

A spec (``sweep.json``; ``SweepSpec.from_dict`` is strict)::

    {"model": "minilm",
     "tasks": ["movie-sentiment"],
     "seeds": [0, 1, 2],
     "lrs": [2e-4, 5e-4],                      # grid of methods that give none (optional)
     "options": {"train.epochs": 3, "task.max_train_samples": 2000},   # any dotted RunConfig key
     "bracket": 2,                             # optional: extend a grid selected at an edge (see grids)
     "methods": ["pissa",                      # a name: label = name, the default grid
                 {"method": "lora", "lrs": [5e-4, 1e-3]},
                 {"method": "ailora", "label": "ailora-r16", "options": {"method.rank": 16}}]}

A method's options override the shared ones. The sweep sets ``model.name``, ``task.name``,
``method.name``, ``train.lr``, ``train.seed`` and ``run_dir`` itself, and, unless the options do,
``train.tracker_group`` (the sweep directory's name: the W&B group, the MLflow tag ailora.group of
every run) and ``train.tracker_run_name`` (the run's path in the sweep directory). Options that only say how to
run (``train.progress``, ``train.stop_after_steps``: ``RUN_CONTROL_KEYS``) do not make a spec different.

Layout of SWEEP_DIR::

    sweep.json                              the spec (resolved: every method with its grid)
    <task>/<label>/lr<lr>/seed<seed>/       one run directory each (see ailora.train.record)
    summary.json                            per task and method: selected lr, validation grid,
                                            test mean/std, parameters, wall time

Resuming: a run directory with ``results.json`` is done and is not redone; one with a checkpoint
is continued by the harness's exact resume; one with anything else (killed before its first
checkpoint) is started again. Each run is trained under its directory's lock (``RUN_DIR.lock``,
``ailora.experiments.locks``), so two drivers on one sweep directory share the runs.

Executors (``ailora.experiments.executors``): the runs one after another in this process, or Ray
tasks on a cluster (``ailora.experiments.rayexec``); the run directories and the summary are the same.
With ``bracket``, the grids are extended in rounds (``ailora.experiments.grids``): the runs of the
grid, then the runs of the points the selections call for, until no selection asks for more.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ailora.core.files import clear_dir, real_path, remove_stale_in, require_writable
from ailora.core.models import resolve_model_path
from ailora.errors import AiloraError
from ailora.experiments.executors import Executor, LocalExecutor, run_state
from ailora.experiments.grids import bracketed
from ailora.experiments.locks import wait_lock
from ailora.tasks.metrics import get_metric, is_better
from ailora.train import record
from ailora.train.checks import check_run
from ailora.train.config import RUN_CONTROL_KEYS, RunConfig, apply_overrides, field_type
from ailora.train.loop import train
from ailora.train.runrecord import FailedRecord, RunRecord, read_run_record
from ailora.train.values import flatten, set_dotted

SPEC = "sweep.json"
SUMMARY = "summary.json"
SWEEP_KEYS = ("run_dir", "resume", "overwrite", "model.name", "task.name", "method.name", "train.lr", "train.seed")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


@dataclass(frozen=True)
class MethodEntry:
    """One row of the sweep: a method, its label (row name, directory), its lr grid and options."""

    label: str
    method: str
    lrs: tuple[float, ...]
    options: dict = field(default_factory=dict)  # dotted RunConfig key -> JSON value


@dataclass(frozen=True)
class SweepSpec:
    model: str
    tasks: tuple[str, ...]
    methods: tuple[MethodEntry, ...]
    seeds: tuple[int, ...]
    options: dict = field(default_factory=dict)
    bracket: int = 0  # grid points a method may add on a task while its selected lr is at an edge

    @classmethod
    def from_dict(cls, data: dict) -> SweepSpec:
        """A spec from plain data (see the module docstring); every key and value is checked."""
        _keys("sweep spec", data, ("model", "tasks", "methods", "seeds", "lrs", "options", "bracket"),
              ("tasks", "methods"))
        tasks = _str_list("tasks", data["tasks"])
        seeds = data.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
            raise AiloraError(f"seeds must be a non-empty list of integers, got {seeds!r}")
        default_lrs = data.get("lrs")
        methods = data["methods"]
        if not isinstance(methods, list) or not methods:
            raise AiloraError("methods must be a non-empty list of method names or {method, label, lrs, options}")
        entries = tuple(_entry(m, default_lrs) for m in methods)
        for name, items in (("tasks", tasks), ("seeds", seeds), ("method labels", [e.label for e in entries])):
            dup = next((x for i, x in enumerate(items) if x in items[:i]), None)
            if dup is not None:
                hint = " (give methods distinct labels)" if name == "method labels" else ""
                raise AiloraError(f"{name} lists {dup!r} twice{hint}")
        dirs = [task_dir(t) for t in tasks]
        if len(set(dirs)) != len(dirs):
            raise AiloraError(f"two tasks share a directory name: {', '.join(tasks)}")
        model = data.get("model", "minilm")
        if not isinstance(model, str) or not model:
            raise AiloraError(f"model must be a model name or directory, got {model!r}")
        bracket = data.get("bracket", 0)
        if not _is_int(bracket) or bracket < 0:
            raise AiloraError(f"bracket must be how many lrs a grid may add at its edges (0 or more), got {bracket!r}")
        return cls(model, tuple(tasks), entries, tuple(seeds), _options("options", data.get("options", {})), bracket)

    def to_dict(self) -> dict:
        out = {"model": self.model, "tasks": list(self.tasks), "seeds": list(self.seeds), "options": self.options,
               "methods": [{"label": e.label, "method": e.method, "lrs": list(e.lrs), "options": e.options}
                           for e in self.methods]}
        return {**out, "bracket": self.bracket} if self.bracket else out  # specs without it read as before

    def identity(self) -> dict:
        """The spec without run-control options: what must match for a sweep directory to be continued."""
        data = self.to_dict()
        data["options"] = _strip_control(data["options"])
        for m in data["methods"]:
            m["options"] = _strip_control(m["options"])
        return data


@dataclass(frozen=True)
class PlannedRun:
    task: str
    label: str
    lr: float
    seed: int
    path: str  # relative to the sweep directory


def _keys(where: str, data, allowed, required=()) -> None:
    if not isinstance(data, dict):
        raise AiloraError(f"{where} must be a JSON object, got {type(data).__name__}")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise AiloraError(f"unknown key {unknown[0]!r} in {where}; keys are: {', '.join(allowed)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise AiloraError(f"{where} has no {missing[0]!r}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _str_list(key: str, value) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise AiloraError(f"{key} must be a non-empty list of names, got {value!r}")
    return value


def _lrs(where: str, value) -> tuple[float, ...]:
    if value is None or value == []:
        raise AiloraError(f"{where} has an empty learning-rate grid; give lrs, e.g. [2e-4, 5e-4]")
    ok = isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or not all(v > 0 and math.isfinite(v) for v in value):
        raise AiloraError(f"{where}: lrs must be a list of positive numbers, got {value!r}")
    lrs = tuple(float(v) for v in value)
    if len(set(lrs)) != len(lrs):
        raise AiloraError(f"{where}: lrs {list(lrs)} repeat a value")
    return lrs


def _options(where: str, value) -> dict:
    """Dotted-key options, checked against the RunConfig (unknown keys and sweep-set keys refused)."""
    if not isinstance(value, dict):
        raise AiloraError(f"{where} must be an object of dotted config keys, e.g. {{\"train.epochs\": 3}}")
    for key in value:
        if key in SWEEP_KEYS:
            raise AiloraError(f"{where} sets {key}, which the sweep sets itself (model, tasks, methods, lrs, "
                              "seeds and the run directory are spec fields)")
        try:
            field_type(key)  # the strict lookup of dotted overrides: unknown keys and sections refused
        except AiloraError as exc:
            raise AiloraError(f"{where}: {exc}") from None
    return dict(value)


def _entry(item, default_lrs) -> MethodEntry:
    if isinstance(item, str):
        item = {"method": item}
    _keys("a methods entry", item, ("method", "label", "lrs", "options"), ("method",))
    name = item["method"]
    label = item.get("label", name)
    if not isinstance(label, str) or not _LABEL.match(label):
        raise AiloraError(f"method label {label!r} must be a file-name-safe word (letters, digits, . _ + = -)")
    lrs = _lrs(f"method {label}", item.get("lrs", default_lrs))
    return MethodEntry(label, name, lrs, _options(f"method {label} options", item.get("options", {})))


def _strip_control(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in RUN_CONTROL_KEYS}


def task_dir(task: str) -> str:
    """A task's directory name: its registry name, or the stem of a JSON task spec's path."""
    return Path(task).stem if task.endswith(".json") else task


def lr_dir(lr: float) -> str:
    return f"lr{lr!r}"


def load_spec(path) -> SweepSpec:
    p = Path(path)
    if not p.is_file():
        raise AiloraError(f"sweep spec {p} does not exist")
    try:
        return SweepSpec.from_dict(json.loads(p.read_text()))
    except json.JSONDecodeError as exc:
        raise AiloraError(f"sweep spec {p} is not valid JSON: {exc}") from None


def compose(base: dict, *, model: str | None = None, tasks: list[str] | None = None,
            methods: list[str] | None = None, seeds: list[int] | None = None, lrs: list[float] | None = None,
            overrides: list[str] | tuple[str, ...] = (), bracket: int | None = None) -> SweepSpec:
    """``base`` (a spec's plain data, e.g. a preset) with command-line choices applied, checked.

    ``methods`` are the labels to run: the base's entry of that label, else a new entry for the
    method of that name. ``lrs`` replaces every method's grid. ``overrides`` (``KEY=VALUE``, typed
    like ``ailora train``'s) are added to the shared options; a method's own options still win.
    """
    data = json.loads(json.dumps(base))
    if model is not None:
        data["model"] = model
    if tasks is not None:
        data["tasks"] = tasks
    if seeds is not None:
        data["seeds"] = seeds
    if bracket is not None:
        data["bracket"] = bracket
    if methods is not None:
        held = {(m if isinstance(m, str) else m.get("label", m.get("method"))): m for m in data.get("methods", [])}
        data["methods"] = [held.get(name, name) for name in methods]
    if lrs is not None:
        data["lrs"] = lrs
        data["methods"] = [{k: v for k, v in m.items() if k != "lrs"} if isinstance(m, dict) else m
                           for m in data.get("methods", [])]
    data["options"] = {**data.get("options", {}), **flatten(apply_overrides({}, overrides))}
    return SweepSpec.from_dict(data)


# Planning: every run's config built (and so validated) before anything runs.


def run_path(task: str, label: str, lr: float, seed: int) -> str:
    return f"{task_dir(task)}/{label}/{lr_dir(lr)}/seed{seed}"


def planned_runs(spec: SweepSpec, sweep_dir=None) -> list[PlannedRun]:
    """Every run of the sweep, in the order they run: task, method, lr, seed. With ``spec.bracket``
    and ``sweep_dir``, the grids include the points the runs finished there call for (``method_lrs``)."""
    return [PlannedRun(t, e.label, lr, s, run_path(t, e.label, lr, s))
            for t in spec.tasks for e in spec.methods for lr in method_lrs(spec, e, t, sweep_dir) for s in spec.seeds]


def method_lrs(spec: SweepSpec, entry: MethodEntry, task: str, sweep_dir=None) -> tuple[float, ...]:
    """The lr grid of ``entry`` on ``task``: its own, then the extensions of ``bracket`` (see
    ``ailora.experiments.grids``) decided on the complete runs in ``sweep_dir``."""
    if not spec.bracket or sweep_dir is None:
        return entry.lrs
    d = Path(sweep_dir)

    def score(lr: float) -> float | None | bool:
        recs = [read_run_record(d / run_path(task, entry.label, lr, s)) for s in spec.seeds]
        if not all(isinstance(r, RunRecord) for r in recs):
            return False
        main = recs[0].main_metric
        mean = mean_std([r.validation_score(main) for r in recs])["mean"]
        return mean if get_metric(main).higher_is_better else -mean

    return bracketed(entry.lrs, spec.bracket, score)


def run_config(spec: SweepSpec, run: PlannedRun, sweep_dir) -> RunConfig:
    entry = next(e for e in spec.methods if e.label == run.label)
    data: dict = {}
    for options in (spec.options, entry.options):
        for key, value in options.items():
            set_dotted(data, key, value)
    # Absolute, so that a resume from another working directory finds the same config.
    where = real_path(sweep_dir, "sweep directory")
    data.update(run_dir=str(where / run.path))
    # The trackers group the sweep's runs (W&B group, MLflow tag), unless the spec names them itself.
    train = data.setdefault("train", {})
    train.setdefault("tracker_group", where.name)
    train.setdefault("tracker_run_name", run.path)
    fixed = {"model": {"name": spec.model}, "task": {"name": run.task}, "method": {"name": entry.method},
             "train": {"lr": run.lr, "seed": run.seed}}
    for section, values in fixed.items():
        data.setdefault(section, {}).update(values)
    return check_run(RunConfig.from_dict(data))


def plan(spec: SweepSpec, sweep_dir, extended: bool = False) -> list[tuple[PlannedRun, RunConfig]]:
    """Every run with its validated config; the first bad one is an AiloraError naming it.
    ``extended``: with the grid points that ``bracket`` adds on the results in ``sweep_dir``."""
    resolve_model_path(spec.model)
    out = []
    for run in planned_runs(spec, sweep_dir if extended else None):
        try:
            out.append((run, run_config(spec, run, sweep_dir)))
        except AiloraError as exc:
            raise AiloraError(f"sweep run {run.path}: {exc}") from None
    return out


def _transient(d: Path, name: str) -> bool:
    """A file another driver starting on ``d`` leaves there for a moment: its storage check (Ray), its
    writability probe, or sweep.json being written. Two drivers started at once on a new directory
    must not take each other's for a foreign sweep's files."""
    return name.startswith((".ailora-storage-check-", f".{SPEC}.", f".{d.name}.tmp-"))


def prepare_sweep_dir(spec: SweepSpec, sweep_dir, overwrite: bool = False) -> None:
    """Write sweep.json in a new or empty directory; accept the same spec; refuse a different one."""
    d = require_writable(sweep_dir, "sweep directory")
    if d.exists() and not d.is_dir():
        raise AiloraError(f"sweep directory {d} is a file; choose another path")
    if (d / SPEC).is_file():
        remove_stale_in(d)  # a sweep's directory: what a summary write killed mid-save left
    if (d / SPEC).is_file():
        try:
            held = SweepSpec.from_dict(json.loads((d / SPEC).read_text()))
        except (json.JSONDecodeError, AiloraError) as exc:
            raise AiloraError(f"{d / SPEC} is unreadable ({exc}); pass --overwrite to replace the sweep") from None
        if held.identity() == spec.identity():
            return
        if not overwrite:
            diff = [k for k in spec.identity() if spec.identity()[k] != held.identity()[k]]
            raise AiloraError(f"sweep directory {d} holds a different sweep (it differs in {', '.join(diff)}); "
                              "pass --overwrite to replace it or choose another directory")
        clear_dir(d)
    elif d.is_dir() and any(not _transient(d, p.name) for p in d.iterdir()):
        raise AiloraError(f"{d} is not empty and holds no {SPEC}; choose a new or empty sweep directory")
    record.write_json(d / SPEC, spec.to_dict())


def _default_train(cfg: RunConfig) -> dict:
    return train(cfg)


def run_sweep(spec: SweepSpec, sweep_dir, overwrite: bool = False,
              train_fn: Callable[[RunConfig], dict] | None = None,
              log: Callable[[str], None] = lambda _: None, executor: Executor | None = None,
              threads: int | None = None) -> dict:
    """Run what is left of the sweep, then write and return its summary (see ``summarize``).

    ``executor`` defaults to ``LocalExecutor(train_fn, threads)``, ``train_fn(cfg) -> results`` to
    ``ailora.train.train``; ``log`` gets one line per run. With ``bracket``, rounds follow until the
    grids ask for no more runs (or a round finishes none of its runs: failed or stopped early).
    """
    plan(spec, sweep_dir)  # all configs valid before anything is written or run
    executor = executor or LocalExecutor(train_fn or _default_train, threads)
    executor.start(sweep_dir)
    try:
        prepare_sweep_dir(spec, sweep_dir, overwrite)
        seconds = _rounds(spec, sweep_dir, executor, log)
    finally:
        executor.close()
    return write_summary(sweep_dir, seconds)


def _rounds(spec: SweepSpec, sweep_dir, executor: Executor, log: Callable[[str], None]) -> float:
    """Run the unfinished runs, in rounds while ``bracket`` adds grid points; the seconds it took."""
    t0, seen = time.perf_counter(), set()
    while True:
        runs = plan(spec, sweep_dir, extended=True)
        todo = []
        for i, (run, cfg) in enumerate(runs, 1):
            where, state = f"[{i}/{len(runs)}] {run.path}", run_state(cfg.run_dir)
            if state not in ("done", "failed"):
                todo.append((where, cfg))
            elif run.path not in seen:
                log(f"{where}: {state} before")
            seen.add(run.path)
        if not todo:
            break
        outcomes = executor.run(todo, log)
        if not any(o.status == "done" for o in outcomes.values()) or not spec.bracket:
            break
    return round(time.perf_counter() - t0, 3)


def write_summary(sweep_dir, seconds: float) -> dict:
    """SUMMARY, written whole and by one process at a time (two drivers may finish together)."""
    with wait_lock(Path(sweep_dir) / SUMMARY):
        summary = summarize(sweep_dir)
        summary["last_invocation_seconds"] = seconds
        record.write_json(Path(sweep_dir) / SUMMARY, summary)
    return summary


# Selection and aggregation.


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1; 0 for one value) of ``values``, and their count."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def select_lr(grid: list[dict], higher_is_better: bool) -> dict | None:
    """The grid entry with the best validation mean (NaN/None never wins; ties keep the first)."""
    best = None
    for entry in grid:
        if is_better(entry["validation"]["mean"], best and best["validation"]["mean"], higher_is_better):
            best = entry
    return best


def summarize(sweep_dir) -> dict:
    """Per task and method label: the validation grid, the selected lr, test mean/std over seeds.

    Reads ``sweep.json`` and whatever ``results.json`` files exist, so it also summarises a sweep
    still under way (``complete`` false, ``n`` below the number of seeds).
    """
    d = Path(sweep_dir)
    spec = load_spec(d / SPEC)
    runs = planned_runs(spec, d)
    read = {r.path: read_run_record(d / r.path) for r in runs}
    results = {path: rec if isinstance(rec, RunRecord) else None for path, rec in read.items()}
    failed = [r.path for r in runs if isinstance(read[r.path], FailedRecord)]
    summary = {"spec": spec.to_dict(), "runs": {"planned": len(runs), "complete": sum(v is not None for v in
                                                                                          results.values()),
                                                "failed": failed},
               "tasks": {}}
    for task in spec.tasks:
        done = [results[r.path] for r in runs if r.task == task and results[r.path]]
        if not done:
            summary["tasks"][task] = {"methods": {}}
            continue
        info = done[0].task
        main, higher = info.main_metric, get_metric(info.main_metric).higher_is_better
        methods = {}
        for entry in spec.methods:
            mine = [r for r in runs if r.task == task and r.label == entry.label]
            lrs = method_lrs(spec, entry, task, d)
            methods[entry.label] = _method_summary(entry, lrs, mine, results, info.metrics, main, higher)
        summary["tasks"][task] = {"main_metric": main, "higher_is_better": higher, "metrics": list(info.metrics),
                                  "methods": methods}
    return summary


def _method_summary(entry: MethodEntry, lrs: tuple[float, ...], runs: list[PlannedRun],
                    results: dict[str, RunRecord | None], metrics, main, higher) -> dict:
    grid = []
    for lr in lrs:
        done = [(r, results[r.path]) for r in runs if r.lr == lr and results[r.path]]
        grid.append({"lr": lr, "validation": mean_std([res.validation_score(main) for _, res in done]),
                     "runs": [r.path for r, _ in done], **({"extended": True} if lr not in entry.lrs else {})})
    out = {"method": entry.method, "complete": all(results[r.path] for r in runs), "grid": grid,
           "selected_lr": None, "validation": None, "test": {}, "params": None, "runs": [],
           "wall_seconds": {"per_run_at_selected_lr": None,
                            "all_runs": round(sum(results[r.path].wall_seconds for r in runs if results[r.path]),
                                              3)}}
    chosen = select_lr(grid, higher)
    if chosen is None:
        return out
    picked = [results[p] for p in chosen["runs"]]
    out.update(selected_lr=chosen["lr"], validation=chosen["validation"], runs=chosen["runs"],
               test={m: mean_std([float(res.test[m]) for res in picked if m in res.test]) for m in metrics},
               params=picked[0].parameters.to_json())
    out["wall_seconds"]["per_run_at_selected_lr"] = round(statistics.fmean(r.wall_seconds for r in picked), 3)
    return out
