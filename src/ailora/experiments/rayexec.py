"""The Ray executor: a sweep's runs as Ray tasks on a cluster (``ailora sweep --executor ray``).

The driver (the ``ailora sweep`` process) resolves the runs exactly as the local executor does and
submits each unfinished one as a task with the resources it needs (``run_cpus`` CPUs, which are
also its torch threads, and ``run_gpus`` GPUs: Ray sets CUDA_VISIBLE_DEVICES so that a GPU run
sees only its GPUs). Each task runs ``executors.run_one``: the run's lock, its state, the exact
resume. So the run directories, the summary and the report are those of the local executor, and
on CPU the adapters are the same bit for bit at the same threads per run.

Before anything is written: Ray must import, the cluster must answer, some node must have the
resources of a run, and every node must see the sweep directory (a worker writes a file beside it
that the driver reads back): otherwise a one-line ``AiloraError``.

Faults: a task whose worker died (SIGKILL, out of memory, a lost node) is submitted again, and
resumes from the run's last checkpoint, at most ``retries`` times; then the run is recorded as
failed (RUN_DIR/failed.json) with the reason, and the sweep goes on. A driver stopped by Ctrl-C
or SIGTERM cancels its tasks (their runs keep their last checkpoint); one killed outright leaves
its runs' locks to be found stale. Either way the same command continues the sweep.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ailora.errors import AiloraError
from ailora.experiments.executors import (
    BUSY_POLL,
    Log,
    Outcome,
    TrainFn,
    describe,
    record_lost,
    run_one,
    run_state,
)
from ailora.train.config import RunConfig

OBJECT_STORE_BYTES = 200 * 2**20  # a local cluster's object store: runs pass only small results
PROBE_SECONDS = 120.0  # how long the shared-storage check waits for its workers


@dataclass(frozen=True)
class RayOptions:
    """``address``: None starts a local cluster for the sweep, "auto" finds a running one, or HOST:PORT."""

    address: str | None = None
    run_cpus: int = 1
    run_gpus: float = 0.0
    retries: int = 2
    progress: bool = True

    def __post_init__(self):
        if not isinstance(self.run_cpus, int) or self.run_cpus < 1:
            raise AiloraError(f"--run-cpus must be a positive integer, got {self.run_cpus!r}")
        if not self.run_gpus >= 0:
            raise AiloraError(f"--run-gpus must be 0 or more, got {self.run_gpus!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise AiloraError(f"--retries must be 0 or more, got {self.retries!r}")


def import_ray():
    try:
        import ray
    except ImportError:
        raise AiloraError("--executor ray needs Ray, which is not installed: pip install 'ailora[ray]'") from None
    return ray


def _reachable(address: str) -> None:
    """Fail at once on a HOST:PORT nothing listens on (``ray.init`` retries it for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise AiloraError(f"--ray-address must be auto or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise AiloraError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def connect(ray, address: str | None) -> bool:
    """Connect to the cluster (or start a local one); True when this call did, so ``close`` undoes it."""
    if address not in (None, "auto"):
        _reachable(address)
    if ray.is_initialized():  # a program that called ray.init itself: use its cluster
        return False
    quiet: dict[str, Any] = {"log_to_driver": False, "configure_logging": False, "include_dashboard": False}
    with _own_sigterm():
        _init(ray, address, quiet)
    return True


@contextmanager
def _own_sigterm() -> Iterator[None]:
    """Keep this process's SIGTERM handler: ``ray.init`` installs one that exits at once (status 15),
    where ailora's (``ailora.interrupts``) stops the sweep resumably with its own status and message."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and before is not None:
            signal.signal(signal.SIGTERM, before)


def _init(ray, address: str | None, quiet: dict) -> None:
    try:
        if address is None:
            ray.init(object_store_memory=OBJECT_STORE_BYTES, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "a local Ray cluster" if address is None else f"the Ray cluster at {address}"
        raise AiloraError(f"cannot connect to {where}: {str(exc).splitlines()[0]}") from None


def check_resources(ray, opts: RayOptions) -> list[str]:
    """The ids of the live nodes that can hold one run; an error naming what the nodes have if none can."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fit = [n["NodeID"] for n in nodes
           if n["Resources"].get("CPU", 0) >= opts.run_cpus and n["Resources"].get("GPU", 0) >= opts.run_gpus]
    if not fit:
        have = "; ".join(f"{n['Resources'].get('CPU', 0):g} CPU, {n['Resources'].get('GPU', 0):g} GPU" for n in nodes)
        raise AiloraError(f"no node of the Ray cluster has {opts.run_cpus} CPU and {opts.run_gpus:g} GPU for a run "
                          f"(--run-cpus, --run-gpus); its nodes have: {have or 'none alive'}")
    return fit


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _probe(folder: str, name: str, token: str) -> str:
    """On a worker: write ``token`` to FOLDER/NAME; the error in one line if it cannot."""
    try:
        Path(folder, name).write_text(token)
    except OSError as exc:
        return f"{socket.gethostname()}: {exc.strerror or exc}"
    return ""


def check_storage(ray, sweep_dir, nodes: list[str]) -> None:
    """A worker on every node writes a file beside the sweep directory and the driver reads it back."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = _existing(Path(sweep_dir).resolve())
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    for node in nodes:
        name, token = f".ailora-storage-check-{uuid.uuid4().hex}", uuid.uuid4().hex
        ref = probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            str(folder), name, token)
        try:
            problem = ray.get(ref, timeout=PROBE_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise AiloraError(f"the shared-storage check of {folder} got no answer from a Ray worker in "
                              f"{PROBE_SECONDS:.0f} s") from None
        seen = folder / name
        try:
            ok = not problem and seen.is_file() and seen.read_text() == token
        finally:
            seen.unlink(missing_ok=True)
        if not ok:
            raise AiloraError(f"sweep directory {sweep_dir} is not on storage every Ray worker sees: a worker "
                              f"could not write beside it where this driver reads ({problem or 'its file is missing here'}); "
                              "put it on a shared file system (docs/cluster.md)")


def _remote_run(cfg: RunConfig, train_fn: TrainFn | None, threads: int) -> dict:
    """The Ray task: one run (``executors.run_one``) in a worker process."""
    if train_fn is None:
        from ailora.train.loop import train as train_fn
    return asdict(run_one(cfg, train_fn, threads))


@dataclass
class RayExecutor:
    """Runs as Ray tasks (see the module docstring). ``train_fn`` None: ``ailora.train.train``."""

    opts: RayOptions = field(default_factory=RayOptions)
    train_fn: TrainFn | None = None
    _ray: Any = None
    _task: Any = None
    _started: bool = False

    def start(self, sweep_dir) -> None:
        """Connect and check resources and storage; nothing is written in the sweep directory."""
        self._ray = import_ray()
        self._started = connect(self._ray, self.opts.address)
        self._task = self._ray.remote(max_retries=0)(_remote_run)  # retries are ours: from the last checkpoint
        try:
            check_storage(self._ray, sweep_dir, check_resources(self._ray, self.opts))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._started:
            self._started = False
            with contextlib.suppress(KeyboardInterrupt):  # as in ``run``: the first interruption is the one reported
                self._ray.shutdown()

    def _submit(self, cfg: RunConfig):
        return self._task.options(num_cpus=self.opts.run_cpus, num_gpus=self.opts.run_gpus).remote(
            cfg, self.train_fn, self.opts.run_cpus)

    def run(self, work: list[tuple[str, RunConfig]], log: Log) -> dict[str, Outcome]:
        from tqdm.auto import tqdm

        ray, outcomes = self._ray, {}
        inflight = {}  # ref -> (where, cfg, attempts so far)
        later: list[tuple[float, str, RunConfig, int]] = []  # busy runs: when to try again
        for where, cfg in work:
            log(f"{where}: {'resuming' if run_state(cfg.run_dir) == 'resume' else 'training'} (Ray task)")
            inflight[self._submit(cfg)] = (where, cfg, 0)
        bar = tqdm(total=len(work), desc="sweep", unit="run", disable=not self.opts.progress)
        try:
            while inflight or later:
                now = time.monotonic()
                for item in [x for x in later if x[0] <= now]:
                    later.remove(item)
                    inflight[self._submit(item[2])] = item[1:]
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0) if inflight else ([], [])
                for ref in ready:
                    where, cfg, tries = inflight.pop(ref)
                    out = self._collect(ref, where, cfg, tries, log)
                    if out is None:  # resubmitted after a lost worker
                        inflight[self._submit(cfg)] = (where, cfg, tries + 1)
                    elif out.status == "busy":
                        later.append((time.monotonic() + BUSY_POLL, where, cfg, tries))
                    else:
                        outcomes[where] = out
                        bar.update(1)
                        log(describe(where, out))
                failed = sum(o.status == "failed" for o in outcomes.values())
                bar.set_postfix_str(f"done {len(outcomes) - failed}, in flight {len(inflight)}, failed {failed}")
                if not ready and later and not inflight:
                    time.sleep(min(BUSY_POLL, max(0.0, min(x[0] for x in later) - time.monotonic())))
        except BaseException:  # Ctrl-C or SIGTERM: the tasks stop, their runs keep the last checkpoint
            with contextlib.suppress(KeyboardInterrupt):  # a second signal must not replace the first's exception
                for ref in inflight:
                    ray.cancel(ref)
            raise
        finally:
            bar.close()
        return outcomes

    def _collect(self, ref, where: str, cfg: RunConfig, tries: int, log: Log) -> Outcome | None:
        """The outcome of a finished task; None when its worker died and it is to run again."""
        ray = self._ray
        try:
            return Outcome(**ray.get(ref))
        except ray.exceptions.RayTaskError as exc:  # the run itself raised: as the local executor would
            raise exc.cause if isinstance(exc.cause, BaseException) else exc from None
        except ray.exceptions.RayError as exc:  # the worker or its node died: not the run's fault
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            if tries < self.opts.retries:
                log(f"{where}: worker lost ({reason}); retry {tries + 1} of {self.opts.retries} from the last checkpoint")
                return None
            message = f"worker lost {tries + 1} times, last: {reason}"
            recorded = record_lost(cfg, message)
            return Outcome("failed", message=message + ("" if recorded else " (not recorded: the run is held or done)"))
