"""How a sweep's runs are executed: one after another in this process (``local``), or as Ray tasks
(``ray``, ``ailora.experiments.rayexec``). Both run each run through ``run_one``, so a run directory
is written the same way whichever executor ran it.

``run_one`` takes the run directory's lock (``ailora.experiments.locks``) for the whole run, looks
at what the directory holds (``run_state``: done, failed, resume, restart, new), fixes the number of
torch threads, and trains. A run whose lock a live process holds is ``busy``: the executor retries
it later, so that two drivers on one sweep directory share the work and both end with every run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ailora.errors import AiloraError, TrainingFailedError
from ailora.experiments.locks import Holder, try_lock
from ailora.train import record
from ailora.train.config import RunConfig
from ailora.train.runrecord import FailedRecord, Interrupted, from_train

TrainFn = Callable[[RunConfig], dict]
Log = Callable[[str], None]
BUSY_POLL = 2.0  # seconds between looks at runs another process holds
LOST_WAIT = 30.0  # seconds a lost worker's lock may take to become stale (its process still exiting)


def run_state(run_dir) -> str:
    """done (results.json), failed (failed.json: not redone; delete the directory to retry), resume
    (a checkpoint), restart (partial, no checkpoint) or new."""
    d = Path(run_dir)
    if (d / record.RESULTS).is_file():
        return "done"
    if (d / record.FAILED).is_file():
        return "failed"
    if (d / record.CHECKPOINTS / "last.pt").is_file():
        return "resume"
    return "restart" if d.is_dir() and any(d.iterdir()) else "new"


@dataclass(frozen=True)
class Outcome:
    """What became of one run: ``status`` done, failed, interrupted, busy (another process holds it)
    or skipped (done or failed before); ``result`` the training result of a done run; ``message``."""

    status: str
    result: dict | None = None
    message: str = ""
    resumed: bool = False


def set_threads(threads: int | None) -> None:
    """Fix torch's intra-op threads for the runs of this process: float sums (matmuls, SVDs) are
    split across threads, and only the same count gives the same adapters bit for bit."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def run_one(cfg: RunConfig, train_fn: TrainFn, threads: int | None = None) -> Outcome:
    """Train one run of a sweep under its directory's lock (see the module docstring)."""
    got = try_lock(cfg.run_dir)
    if isinstance(got, Holder):
        return Outcome("busy", message=f"held by {got.describe()}")
    with got:
        state = run_state(cfg.run_dir)
        if state in ("done", "failed"):
            return Outcome("skipped", message=f"{state} before")
        set_threads(threads)
        cfg = dataclasses.replace(cfg, resume=state == "resume", overwrite=state == "restart")
        try:
            done = from_train(train_fn(cfg))
        except TrainingFailedError as exc:  # recorded in the run's failed.json; the sweep goes on
            return Outcome("failed", message=str(exc), resumed=cfg.resume)
    if isinstance(done, Interrupted):
        return Outcome("interrupted", message=f"stopped at step {done.step}", resumed=cfg.resume)
    return Outcome("done", result=done.to_json(), resumed=cfg.resume)


def record_lost(cfg: RunConfig, reason: str, wait: float = LOST_WAIT) -> bool:
    """Write RUN_DIR/failed.json for a run whose worker kept dying (``reason``), under its lock.
    False (nothing written) when another live process holds the run or it finished meanwhile.
    The dead worker may still be exiting when Ray reports it lost: its lock is waited for ``wait`` s."""
    deadline = time.monotonic() + wait
    while isinstance(got := try_lock(cfg.run_dir), Holder) and time.monotonic() < deadline:
        time.sleep(0.1)
    if isinstance(got, Holder):
        return False
    with got:
        if run_state(cfg.run_dir) in ("done", "failed"):
            return False
        from ailora.train.results import recorded_config
        from ailora.train.runrecord import write_record

        last = Path(cfg.run_dir) / record.CHECKPOINTS / "last.pt"
        write_record(cfg.run_dir, FailedRecord(
            error=reason, step=0, config=recorded_config(cfg),
            last_checkpoint=str(last.relative_to(cfg.run_dir)) if last.is_file() else None,
            wall_seconds=0.0, versions=record.package_versions(), git=record.git_revision()))
    return True


def describe(where: str, out: Outcome) -> str:
    """The per-run line of the sweep's log."""
    if out.status == "done":
        from ailora.train.runrecord import RunRecord

        done = RunRecord.from_json(out.result, where)
        main = done.main_metric
        return (f"{where}: validation {main} {done.validation_score(main):.4f}, "
                f"test {main} {done.test.get(main, float('nan')):.4f}, {done.wall_seconds:.0f} s")
    if out.status == "interrupted":
        return f"{where}: {out.message}; run the sweep again to continue"
    if out.status == "busy":
        return f"{where}: {out.message}; waiting for it"
    return f"{where}: {out.message}" if out.status == "skipped" else f"{where}: failed: {out.message}"


class Executor(Protocol):
    """Runs a list of (label, config) and logs one line per finished run; returns the outcomes.
    ``start`` checks what the executor needs before the sweep writes anything; ``close`` ends it."""

    def start(self, sweep_dir) -> None: ...

    def run(self, work: list[tuple[str, RunConfig]], log: Log) -> dict[str, Outcome]: ...

    def close(self) -> None: ...


@dataclass
class LocalExecutor:
    """One run after another in this process (the default): ``train_fn`` (``ailora.train.train``)
    with ``threads`` torch threads (None: torch's default)."""

    train_fn: TrainFn
    threads: int | None = None

    def start(self, sweep_dir) -> None:
        return None

    def close(self) -> None:
        return None

    def run(self, work: list[tuple[str, RunConfig]], log: Log) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        pending, told = list(work), set()
        while pending:
            waiting = []
            for where, cfg in pending:
                if where not in told:
                    log(f"{where}: {'resuming' if run_state(cfg.run_dir) == 'resume' else 'training'}")
                out = run_one(cfg, self.train_fn, self.threads)
                if out.status == "busy":
                    waiting.append((where, cfg))
                    if where not in told:
                        log(describe(where, out))
                    told.add(where)
                    continue
                outcomes[where] = out
                log(describe(where, out))
            if waiting:
                time.sleep(BUSY_POLL)
            pending = waiting
        return outcomes


def check_threads(threads: int | None, where: str) -> None:
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise AiloraError(f"{where} must be a positive number of CPU threads per run, got {threads!r}")
