"""Where a run logs besides its run directory: ``train.report_to``'s trackers (TensorBoard, W&B,
MLflow), through Accelerate's tracker classes (``accelerate.tracking``), one registry entry each.

What every tracker gets: every ``LOG_EVERY`` optimizer steps ``train/loss`` and ``train/lr``; at each
validation ``validation/<metric>`` (step 0: ``train.eval_before``); at each epoch end
``train/epoch_loss``; at the end ``test/<metric>`` (``<split>/<metric>`` for other test splits) at
the last step. W&B and MLflow also get the run config as the run's parameters (dotted keys, the
run-control keys left out) and the adapter directory as an artifact (W&B: artifact
``adapter-<run id>`` of type model; MLflow: artifacts under ``adapter/``). TensorBoard's events go
to RUN_DIR/tb, as before; RUN_DIR/config.json beside them holds the config.

Starting: a tracker whose package is not installed is refused by ``check_installed`` (called by
``ailora.train.checks.check_run``, before anything is loaded or written); W&B and MLflow start before
the model loads, and one that cannot start (no login, an unreachable MLflow server) is a one-line
AiloraError then. TensorBoard starts once the checkpoint is restored (it drops events past the step
a resumed run continues from).

Failing mid-run: a tracker that raises while logging is dropped with a ``TrackerWarning``; the run,
its record and adapter, and the other trackers go on as if it had never been there.

Resuming: RUN_DIR/trackers.json keeps each tracker's run id; a resumed run logs to the same W&B run
(``resume="allow"``) and the same MLflow run (``run_id``). W&B keeps the first value it got for a
step: what the interrupted process logged past its last checkpoint stays, the replayed steps' values
are dropped by W&B (MLflow keeps both).

Several processes: only the main process starts trackers and logs; the others hold an empty set.
"""

from __future__ import annotations

import contextlib
import importlib.util
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ailora.core.files import read_json
from ailora.errors import AiloraError
from ailora.train.config import RUN_CONTROL_KEYS, RunConfig
from ailora.train.record import write_json
from ailora.train.results import recorded_config
from ailora.train.values import flatten

IDS = "trackers.json"  # RUN_DIR/trackers.json: tracker name -> its run id


class TrackerWarning(UserWarning):
    """A tracker failed during the run and was dropped; the run went on."""


@dataclass(frozen=True)
class TrackerKind:
    """One tracker: how to build Accelerate's tracker for a run, and what it takes besides metrics."""

    name: str
    module: str  # what must import; the pip package has the same name
    build: Callable  # (cfg, run_dir, stored run id or None, step) -> accelerate GeneralTracker
    end: Callable  # (tracker, failed: bool) -> None
    run_id: Callable | None = None  # tracker -> its run id, kept for resuming
    artifact: Callable | None = None  # (tracker, adapter dir) -> None
    params: bool = False  # whether the run config goes in as the run's parameters
    early: bool = True  # started before the model loads; False: once the checkpoint is restored


def _run_name(cfg: RunConfig) -> str:
    return cfg.train.tracker_run_name or Path(cfg.run_dir).name


def _tensorboard(cfg: RunConfig, run_dir: Path, run_id, step: int):
    from accelerate.tracking import TensorBoardTracker

    return TensorBoardTracker("tb", run_dir, purge_step=step or None)  # RUN_DIR/tb


def _wandb(cfg: RunConfig, run_dir: Path, run_id, step: int):
    from accelerate.tracking import WandBTracker

    t = cfg.train
    # A fresh id from os.urandom (no global RNG drawn: trackers never change what the run computes).
    return WandBTracker(t.tracker_project, id=run_id or uuid.uuid4().hex[:16], resume="allow",
                        group=t.tracker_group, name=_run_name(cfg))


def _wandb_artifact(tracker, adapter: Path) -> None:
    import wandb

    artifact = wandb.Artifact(f"adapter-{tracker.run.id}", type="model")
    artifact.add_dir(str(adapter))
    tracker.run.log_artifact(artifact)


def _mlflow(cfg: RunConfig, run_dir: Path, run_id, step: int):
    from accelerate.tracking import MLflowTracker

    t = cfg.train
    tags = {"ailora.group": t.tracker_group} if t.tracker_group else None
    return MLflowTracker(experiment_name=t.tracker_project, run_id=run_id, tags=tags, run_name=_run_name(cfg))


def _mlflow_end(tracker, failed: bool) -> None:
    import mlflow

    mlflow.end_run("FAILED" if failed else "FINISHED")


KINDS = {k.name: k for k in (
    TrackerKind("tensorboard", "tensorboard", _tensorboard, end=lambda t, failed: t.finish(), early=False),
    TrackerKind("wandb", "wandb", _wandb, end=lambda t, failed: t.run.finish(exit_code=int(failed)),
                run_id=lambda t: t.run.id, artifact=_wandb_artifact, params=True),
    TrackerKind("mlflow", "mlflow", _mlflow, end=_mlflow_end, run_id=lambda t: t.active_run.info.run_id,
                artifact=lambda t, adapter: t.log_artifacts(str(adapter), artifact_path="adapter"), params=True),
)}


def check_installed(cfg: RunConfig) -> None:
    """A one-line AiloraError when a tracker of ``train.report_to`` is not installed."""
    for name in cfg.train.trackers:
        if importlib.util.find_spec(KINDS[name].module) is None:
            raise AiloraError(f"train.report_to names {name}, which is not installed: pip install {KINDS[name].module} "
                              "(or ailora[trackers])")


def run_params(cfg: RunConfig) -> dict:
    """The run config as a tracker's run parameters: dotted keys, as the record holds them, without the
    keys that only say how this process runs (they may change on resume, and MLflow refuses a changed
    parameter)."""
    return {k: v for k, v in flatten(recorded_config(cfg)).items() if k not in RUN_CONTROL_KEYS}


def _stored_ids(path: Path) -> dict:
    """RUN_DIR/trackers.json (tracker name -> run id); {} when the run kept none."""
    if not path.is_file():
        return {}
    ids = read_json(path)
    if not (isinstance(ids, dict) and all(isinstance(v, str) for v in ids.values())):
        raise AiloraError(f"{path} must map tracker names to run ids; delete it to log to new tracker runs")
    return ids


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


class Trackers:
    """The run's started trackers (the main process's; none on the others)."""

    def __init__(self) -> None:
        self.live: dict = {}  # name -> accelerate tracker, in start order

    def start(self, cfg: RunConfig, run_dir: Path, resuming: bool, early: bool, step: int = 0) -> None:
        """Start the trackers of ``cfg`` that start ``early`` (before the model loads) or not (once the
        checkpoint is restored, at ``step``); when resuming, each on its stored run. One that cannot
        start is an AiloraError, and the ones started before it are ended."""
        ids = _stored_ids(run_dir / IDS) if resuming else {}
        for name in (n for n in cfg.train.trackers if KINDS[n].early == early):
            kind = KINDS[name]
            try:
                tracker = kind.build(cfg, run_dir, ids.get(name), step)
                tracker.start()
                self.live[name] = tracker
                if kind.params:
                    tracker.store_init_configuration(run_params(cfg))
                if kind.run_id is not None:
                    ids[name] = kind.run_id(tracker)
            except Exception as exc:
                self.finish(failed=True)
                raise AiloraError(f"train.report_to: {name} cannot start ({_first_line(exc)})") from None
        if ids:
            write_json(run_dir / IDS, ids)

    def log(self, values: dict, step: int) -> None:
        """Log ``values`` (name -> number) at optimizer step ``step`` to every tracker still running."""
        values = {k: float(v) for k, v in values.items() if v is not None}
        for name, tracker in list(self.live.items()):
            self._call(name, f"logging step {step}", lambda t=tracker: t.log(values, step=step))

    def log_adapter(self, adapter: Path) -> None:
        """The adapter directory as an artifact, where the tracker has artifacts."""
        for name, tracker in list(self.live.items()):
            if KINDS[name].artifact is not None:
                self._call(name, "logging the adapter", lambda t=tracker, n=name: KINDS[n].artifact(t, adapter))

    def finish(self, failed: bool = False) -> None:
        """End every tracker's run (``failed``: marked failed where the tracker marks runs)."""
        for name, tracker in list(self.live.items()):
            self._call(name, "ending its run", lambda t=tracker, n=name: KINDS[n].end(t, failed), end=False)
        self.live.clear()

    def _call(self, name: str, doing: str, fn, end: bool = True) -> None:
        """``fn()``; when it raises, drop tracker ``name`` with a warning (and end its run, quietly)."""
        try:
            fn()
        except Exception as exc:
            tracker = self.live.pop(name)
            warnings.warn(f"train.report_to: {name} failed {doing} ({_first_line(exc)}); it gets nothing more "
                          "of this run, which goes on", TrackerWarning, stacklevel=3)
            if end:
                with contextlib.suppress(Exception):
                    KINDS[name].end(tracker, True)
