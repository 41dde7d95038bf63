"""Termination signals as exceptions: SIGTERM ends a command the way Ctrl-C does.

Slurm and Kubernetes send SIGTERM before they preempt a job (then SIGKILL after a grace period).
Python's default is to die on it at once, with no message and no ``finally`` blocks run; raised as
``Terminated`` (a ``KeyboardInterrupt``) instead, it unwinds through the same code as Ctrl-C: every
atomic writer removes its staging file, the last checkpoint stays, and ``ailora.cli.main`` says how
to continue and exits with ``EXIT_TERMINATED``. Whatever runs commands (a CLI, a sweep executor)
wraps them in ``terminate_as_interrupt()``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM, what schedulers expect of a job that stopped on their signal


class Terminated(KeyboardInterrupt):
    """A termination signal (``signum``, SIGTERM) raised where the program was."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# The termination signals raised as ``Terminated`` within the current ``terminate_as_interrupt`` block.
# Kept because a library may catch the exception and raise a plain KeyboardInterrupt in its place: Ray's
# C core does, for any exception a signal handler raises while ``ray.wait``/``ray.get`` wait.
_received: list[int] = []


def _raise(signum: int, frame) -> None:
    _received.append(signum)
    raise Terminated(signum)


def was_terminated(exc: KeyboardInterrupt) -> bool:
    """Whether the interruption ``exc`` comes from a termination signal: a ``Terminated``, or the plain
    KeyboardInterrupt a library raised in its place after one was received."""
    return isinstance(exc, Terminated) or bool(_received)


@contextmanager
def terminate_as_interrupt(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Within the block, ``signals`` raise ``Terminated`` in the main thread; the previous handlers
    come back after it. Outside the main thread (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {s: signal.signal(s, _raise) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _raises(handler) -> bool:
    """Whether a signal handler turns the signal into an exception (Python's Ctrl-C handler, ours)."""
    return handler is signal.default_int_handler or handler is _raise


@contextmanager
def held_until_done(enabled: bool = True) -> Iterator[list[int]]:
    """Within the block, SIGINT and SIGTERM are held instead of raised where they would raise (their
    handler is Python's Ctrl-C one or ``terminate_as_interrupt``'s; a signal whose handler kills the
    process keeps doing so), so that the block (one optimizer step: never half applied) completes.
    Yields the list of signals held; a second signal raises at once (a stuck block can still be
    stopped). The caller checks the list after the block and ends with ``raise_held``."""
    held: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield held
        return

    def hold(signum: int, frame) -> None:
        if held:
            raise_held(signum)
        held.append(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, handler in previous.items():
        if _raises(handler):
            signal.signal(s, hold)
    try:
        yield held
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def raise_held(signum: int) -> None:
    """Raise what the signal ``signum`` raises when not held: ``Terminated`` or KeyboardInterrupt."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    _raise(signum, None)


def exit_status(exc: KeyboardInterrupt) -> int:
    """The documented exit status of an interruption: 143 for SIGTERM, 130 for Ctrl-C."""
    return EXIT_TERMINATED if was_terminated(exc) else EXIT_INTERRUPTED
