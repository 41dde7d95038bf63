"""One writer per run directory: a lock file beside it that survives its holder's death.

A sweep's runs may be driven by two ``ailora sweep`` commands at once, or by a driver and a Ray
task retried after its worker was lost. Both would write the same run directory; the lock makes
the second one wait or skip instead. It is a file, not a daemon: ``RUN_DIR.lock`` (beside the run
directory, so that ``--overwrite`` clearing the directory never deletes it) created with
``O_CREAT | O_EXCL`` (atomic on local file systems and NFSv3+), holding who took it::

    {"pid": 4242, "host": "node-3", "boot_id": "…", "start_ticks": 123456, "taken": 1765000000.0}

A holder that died (SIGKILL, a lost node) never removes its lock, so a lock is *stale*, and taken
over, when its holder is certainly gone:

* on this host (same host name and boot id): no process with that pid, a zombie (killed, not yet
  reaped), or one started at another time (the pid was reused);
* on another host: the file's modification time, which a live holder's heartbeat thread renews
  every ``HEARTBEAT`` seconds, is older than ``STALE_AFTER`` seconds (clocks of the nodes are
  assumed within a few seconds of each other).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT = 10.0  # seconds between renewals of a held lock's modification time
STALE_AFTER = 120.0  # a lock from another host not renewed for this long has lost its holder
SUFFIX = ".lock"


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of ``target`` (a run directory or a file): ``TARGET.lock`` beside it."""
    target = Path(target)
    return target.with_name(target.name + SUFFIX)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: the host name alone identifies the machine
        return ""


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces); None if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, field 22); None if unknown."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def _gone(pid: int, start_ticks: int | None) -> bool:
    """Whether process ``pid`` (started at ``start_ticks``) has ended: no such process, a zombie
    (killed, not yet reaped by its parent: it holds nothing), or the pid reused by a later process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it exists
        pass
    fields = _stat(pid)
    if fields is None:
        return False
    return fields[0] in ("Z", "X") or (start_ticks is not None and int(fields[19]) != start_ticks)


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as written in its file."""

    pid: int
    host: str
    boot_id: str
    start_ticks: int | None
    taken: float

    @classmethod
    def me(cls) -> Holder:
        return cls(os.getpid(), socket.gethostname(), _boot_id(), _start_ticks(os.getpid()), time.time())

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"

    def alive(self, heartbeat_age: float, stale_after: float) -> bool:
        """Whether the holder may still be running (see the module docstring for the rules)."""
        if self.host == socket.gethostname() and self.boot_id == _boot_id():
            return not _gone(self.pid, self.start_ticks)
        return heartbeat_age < stale_after


def read_holder(path: Path) -> tuple[Holder, float] | None:
    """The holder of the lock file ``path`` and the seconds since its last heartbeat; None when there
    is no lock. An unreadable lock (its writer died between creating and filling it) counts as a
    holder that is gone on another host, so only its age decides."""
    try:
        age = time.time() - path.stat().st_mtime
        data = json.loads(path.read_text())
        return Holder(**data), age
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return Holder(-1, "?", "?", None, 0.0), age


class RunLock:
    """A held lock; ``release()`` (or leaving a ``with`` block) removes it and stops the heartbeat."""

    def __init__(self, path: Path, holder: Holder, heartbeat: float):
        self.path, self.holder = path, holder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat,), daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:  # removed under us (a mistaken takeover): nothing left to renew
                return

    def release(self) -> None:
        self._stop.set()
        held = read_holder(self.path)
        if held is not None and held[0] == self.holder:  # never remove a lock another process took
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_lock(target: str | os.PathLike, stale_after: float = STALE_AFTER,
             heartbeat: float = HEARTBEAT) -> RunLock | Holder:
    """Take the lock of ``target``: a ``RunLock``, or the live ``Holder`` that has it.

    A stale lock is taken over (see the module docstring); when two processes race for it, one wins.
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = Holder.me()
    for _ in range(3):  # a takeover lost to another process: look again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = read_holder(path)
            if held is None:
                continue
            holder, age = held
            if holder.alive(age, stale_after):
                return holder
            _take_over(path, holder)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me.__dict__, f)
            f.flush()
            os.fsync(f.fileno())
        return RunLock(path, me, heartbeat)
    held = read_holder(path)
    return held[0] if held else Holder(-1, "?", "?", None, 0.0)


def _take_over(path: Path, stale: Holder) -> None:
    """Remove the stale lock of ``stale``, unless another process replaced it meanwhile: it is moved
    aside first (atomic, so two takers cannot both remove it) and put back if it is not the stale one."""
    aside = path.with_name(f"{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = read_holder(aside)
    if moved is not None and moved[0] != stale:
        try:
            os.link(aside, path)  # fails if a third process already locked it: then that one holds it
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


def wait_lock(target: str | os.PathLike, poll: float = 0.2, stale_after: float = STALE_AFTER) -> RunLock:
    """Take the lock of ``target``, waiting while a live holder has it (for short sections, e.g. a
    summary write; a dead holder's lock is taken over, so this never waits for a killed process)."""
    while True:
        got = try_lock(target, stale_after)
        if isinstance(got, RunLock):
            return got
        time.sleep(poll)
