"""The run record: one type per file a run writes about itself, one writer, one reader.

``RunRecord`` is RUN_DIR/results.json of a complete run, ``FailedRecord`` RUN_DIR/failed.json of a
run stopped by a failure, ``EpochEntry`` one line of RUN_DIR/metrics.jsonl (and one item of the
record's ``epochs``), ``Evaluation`` one validation (``evaluations``), ``StepEntry`` the mean
training loss of one logging interval (``train_log``); ``Interrupted`` is what ``train`` returns for
a run stopped early (``from_train`` reads either). ``to_json`` writes each (its keys are the
dataclass fields, in order); ``from_json`` reads it back against the fields and their annotations,
strictly: an unknown key, a missing one or a value of the wrong kind is a one-line ``AiloraError``
naming the file (and the place in it). ``write_record`` / ``read_run_record`` do the files.

Older records this project wrote lack keys added since, and read as follows (nothing else is
accepted, and no other name is guessed at):

- ``updated_parameters``, ``train_seconds`` and ``progressive`` (before Progtuning): None;
- ``before`` and ``task.label_names`` (before ``train.eval_before`` and label names): None;
- ``train_log`` (before step-level loss curves): None.

The ``config`` stays the plain nested dict of ``RunConfig.to_dict`` as recorded; what the readers
need from it goes through ``method_name``, ``config_seed`` and ``progressive_stages``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

from ailora.core.files import read_json
from ailora.errors import AiloraError
from ailora.train.record import CONFIG, FAILED, METRICS, RESULTS, write_json, write_jsonl


def _plain(obj):
    """A record as JSON data: dataclasses become objects with their fields in order, tuples lists."""
    if is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [_plain(v) for v in obj]
    return obj


def _keys(data, cls, where: str) -> dict:
    """``data``'s values by ``cls``'s field names; absent ``cls.OPTIONAL`` keys (those older records lack) are None."""
    if not isinstance(data, dict):
        raise AiloraError(f"{where}: expected a JSON object, got {type(data).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise AiloraError(f"{where}: unknown key {unknown[0]!r} (keys are: {', '.join(names)})")
    missing = [k for k in names if k not in data and k not in cls.OPTIONAL]
    if missing:
        raise AiloraError(f"{where}: no {missing[0]!r}")
    return {k: data.get(k) for k in names}


def _check(ok: bool, where: str, key: str, value, kind: str) -> None:
    if not ok:
        raise AiloraError(f"{where}: {key} must be {kind}, got {value!r:.80}")


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# What a field's annotation (a string: ``from __future__ import annotations``) accepts.
_SCALARS = {"int": ("an integer", lambda v: _number(v) and isinstance(v, int)), "float": ("a number", _number),
            "str": ("a string", lambda v: isinstance(v, str)), "bool": ("true or false", lambda v: isinstance(v, bool)),
            "dict": ("an object", lambda v: isinstance(v, dict))}
_PARTS: dict[str, type] = {}  # the record parts by class name, for annotations that name them


def _value(v, kind: str, where: str, key: str):
    """``v`` checked against the annotation ``kind``: a scalar, a record part, ``tuple[X, ...]``
    (a JSON list), each optionally ``| None``."""
    nullable, kind = kind.endswith(" | None"), kind.removesuffix(" | None")
    if v is None and nullable:
        return None
    if kind.startswith("tuple["):
        _check(isinstance(v, list), where, key, v, "a list")
        return tuple(_value(x, kind[len("tuple["):-len(", ...]")], where, f"{key}[{i}]") for i, x in enumerate(v))
    if kind in _PARTS:
        return _PARTS[kind].from_json(v, f"{where} {key}")
    text, ok = _SCALARS[kind]
    _check(ok(v), where, key, v, text + (" or null" if nullable else ""))
    return v


class _Json:
    """A part of a record: ``to_json`` writes its fields as a JSON object, in order; ``from_json`` reads
    one back, checking every key and value against the fields and their annotations."""

    OPTIONAL: tuple[str, ...] = ()  # keys older records lack: None when absent

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _PARTS[cls.__name__] = cls

    def to_json(self) -> dict:
        return _plain(self)

    @classmethod
    def from_json(cls, data, where: str):
        """From its JSON data; ``where`` (the file, and the place in it) names it in errors."""
        d = _keys(data, cls, where)
        return cls(**{f.name: _value(d[f.name], f.type, where, f.name) for f in fields(cls)})


# The run config, as recorded: what the readers take from it.


def _section(config: dict, name: str) -> dict:
    return config.get(name) if isinstance(config.get(name), dict) else {}


def check_config(config, where: str) -> dict:
    """``config`` (a recorded ``RunConfig.to_dict``) holding what readers take from it, else a one-line error."""
    _value(config, "dict", where, "config")
    _value(_section(config, "method").get("name"), "str", where, "config method.name")
    _value(_section(config, "train").get("seed"), "int", where, "config train.seed")
    return config


def method_name(config: dict) -> str:
    """The method (``method.name``) of a recorded config."""
    return config["method"]["name"]


def config_seed(config: dict) -> int:
    return config["train"]["seed"]


def progressive_stages(config: dict) -> int:
    """Progtuning's stage count (0 or 1: off). Records from before the ``progressive`` section kept it
    as ``train.progressive_stages``; records from before Progtuning have neither (0)."""
    if "progressive" in config:
        return config["progressive"].get("stages") or 0
    return _section(config, "train").get("progressive_stages") or 0


# Per-step and per-epoch entries.


@dataclass(frozen=True)
class StepEntry(_Json):
    """The mean training loss of the logging interval that ends at ``step`` (``train_log``)."""

    step: int
    train_loss: float


@dataclass(frozen=True)
class Evaluation(_Json):
    """One validation: after ``step`` optimizer steps in ``epoch`` (1-based; 0 and step 0: before training)."""

    step: int
    epoch: int
    validation: dict  # metric name -> value


@dataclass(frozen=True)
class EpochEntry(_Json):
    """The end of one epoch: mean training loss over it, validation scores, seconds it took (evaluation included)."""

    epoch: int
    step: int
    train_loss: float
    validation: dict  # metric name -> value
    seconds: float


@dataclass(frozen=True)
class Best(_Json):
    """The best validation of the run (``train.select=best`` tests these weights)."""

    step: int
    epoch: int
    metric: str
    value: float


@dataclass(frozen=True)
class TaskInfo(_Json):
    name: str
    kind: str
    metrics: tuple[str, ...]
    main_metric: str
    sizes: dict  # split -> examples
    label_names: tuple[str, ...] | None  # None: none, or a record from before label names

    OPTIONAL = ("label_names",)


@dataclass(frozen=True)
class Parameters(_Json):
    trainable: int
    total: int
    trainable_percent: float


# The records.


class _Status(_Json):
    """A whole record: its JSON object starts with ``"status": STATUS``."""

    STATUS = ""

    def to_json(self) -> dict:
        return {"status": self.STATUS, **super().to_json()}

    @classmethod
    def from_json(cls, data, where: str):
        if isinstance(data, dict):
            _check(data.get("status") == cls.STATUS, where, "status", data.get("status"), repr(cls.STATUS))
            data = {k: v for k, v in data.items() if k != "status"}
        rec = super().from_json(data, where)
        rec.check(where)
        return rec

    def check(self, where: str) -> None:
        """What the field annotations cannot say, checked after reading."""


@dataclass(frozen=True)
class RunRecord(_Status):
    """RUN_DIR/results.json: everything about a complete run."""

    config: dict  # the recorded RunConfig.to_dict (resume, overwrite, stop_after_steps left out)
    task: TaskInfo
    epochs: tuple[EpochEntry, ...]
    evaluations: tuple[Evaluation, ...]
    train_log: tuple[StepEntry, ...] | None  # None: a record from before step-level losses
    best: Best | None  # None: no validation ran
    selected: str  # the weights tested: "best" or "last"
    validation: dict  # the last epoch's validation scores
    before: dict | None  # train.eval_before: split -> scores of the untrained model
    test: dict  # metric -> value on the test split
    extra_test: dict  # other test splits: split -> metric -> value
    steps: int
    seed: int
    parameters: Parameters
    method: dict  # the method's provenance
    adapter: dict  # {"dir", ...what the method's save returned}
    wall_seconds: float
    updated_parameters: int | None  # trainable parameters summed over optimizer steps
    train_seconds: float | None  # time inside optimizer steps only
    progressive: dict | None  # Progtuning's schedule and per-stage counts; None when off
    resumed: bool
    peak_memory: dict
    distributed: dict
    versions: dict
    git: dict

    STATUS = "complete"
    LATER = ("train_log", "updated_parameters", "train_seconds")  # not in older records: not written when None
    OPTIONAL = (*LATER, "before", "progressive")

    def to_json(self) -> dict:
        return {k: v for k, v in super().to_json().items() if not (k in self.LATER and v is None)}

    def check(self, where: str) -> None:
        check_config(self.config, where)
        _check(self.selected in ("best", "last"), where, "selected", self.selected, "'best' or 'last'")

    @property
    def main_metric(self) -> str:
        return self.task.main_metric

    def validation_score(self, metric: str) -> float:
        """The validation value of the weights that were tested: the best checkpoint's under select=best,
        else the last epoch's (NaN when the metric was not recorded)."""
        if self.selected == "best" and self.best is not None:
            return float(self.best.value)
        value = self.validation.get(metric)
        return float("nan") if value is None else float(value)


@dataclass(frozen=True)
class FailedRecord(_Status):
    """RUN_DIR/failed.json: a run stopped by a failure (a non-finite loss), never complete."""

    error: str
    step: int  # the optimizer step the failure was found at
    config: dict
    last_checkpoint: str | None  # relative to the run directory; None when none was saved
    wall_seconds: float
    versions: dict
    git: dict

    STATUS = "failed"

    def check(self, where: str) -> None:
        check_config(self.config, where)


@dataclass(frozen=True)
class Interrupted(_Status):
    """What ``ailora.train.train`` returns for a run stopped early (``train.stop_after_steps``)."""

    step: int
    run_dir: str

    STATUS = "interrupted"


def from_train(result: dict) -> RunRecord | Interrupted:
    """What ``ailora.train.train`` returned, as a record (complete) or an ``Interrupted``."""
    if isinstance(result, dict) and result.get("status") == Interrupted.STATUS:
        return Interrupted.from_json(result, "the training result")
    return RunRecord.from_json(result, "the training result")


# Reading and writing run directories.


def write_record(run_dir: str | os.PathLike, rec: RunRecord | FailedRecord) -> dict:
    """Write ``rec`` as RUN_DIR/results.json (complete) or RUN_DIR/failed.json; returns the JSON data written."""
    data = rec.to_json()
    write_json(Path(run_dir) / (RESULTS if isinstance(rec, RunRecord) else FAILED), data)
    return data


def write_epochs(run_dir: str | os.PathLike, entries: list[dict]) -> None:
    """RUN_DIR/metrics.jsonl: one ``EpochEntry`` per line (``entries``: the loop's per-epoch dicts, checked)."""
    where = str(Path(run_dir) / METRICS)
    write_jsonl(Path(run_dir) / METRICS, [EpochEntry.from_json(e, where).to_json() for e in entries])


def _read(path: Path):
    try:
        return read_json(path)  # a one-line error for text that is not JSON
    except OSError as exc:
        raise AiloraError(f"{path} cannot be read: {exc.strerror}") from None


def read_run_record(run_dir: str | os.PathLike) -> RunRecord | FailedRecord | None:
    """The record of ``run_dir``: complete (results.json), failed (failed.json), or None (neither yet)."""
    d = Path(run_dir)
    if (d / RESULTS).is_file():
        return RunRecord.from_json(_read(d / RESULTS), str(d / RESULTS))
    if (d / FAILED).is_file():
        return FailedRecord.from_json(_read(d / FAILED), str(d / FAILED))
    return None


def read_complete(run_dir: str | os.PathLike) -> RunRecord:
    """The record of a complete run; a one-line error when ``run_dir`` holds none."""
    f = Path(run_dir) / RESULTS
    if not f.is_file():
        raise AiloraError(f"run directory {run_dir} has no {RESULTS} (not a complete run)")
    return RunRecord.from_json(_read(f), str(f))


def read_config(run_dir: str | os.PathLike) -> dict:
    """RUN_DIR/config.json, checked for what readers take from it."""
    f = Path(run_dir) / CONFIG
    return check_config(_read(f), str(f))


def read_epochs(run_dir: str | os.PathLike) -> tuple[EpochEntry, ...]:
    """RUN_DIR/metrics.jsonl, one ``EpochEntry`` per line (written whole, atomically: any bad line is an error)."""
    f = Path(run_dir) / METRICS
    try:
        lines = f.read_text().splitlines()
    except OSError as exc:
        raise AiloraError(f"{f} cannot be read: {exc.strerror}") from None
    out = []
    for i, line in enumerate(lines, 1):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            raise AiloraError(f"{f} line {i} is not valid JSON") from None
        out.append(EpochEntry.from_json(data, f"{f} line {i}"))
    if [e.epoch for e in out] != list(range(1, len(out) + 1)):  # the loop rewrites the whole history each epoch
        raise AiloraError(f"{f}: epochs must run 1, 2, ... in order, got {[e.epoch for e in out]}")
    return tuple(out)
