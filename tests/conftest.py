"""Test tiers as markers, so that a contributor can run one (docs/development.md lists them and how
long each takes).

``slow`` (tier 3, a real model) is set where the test is written. The two tiers below are set here,
from one table, because their tests live in files that belong to other subjects; tests/test_docs.py
checks that every test named in the table exists, so a rename cannot drop a test from its tier."""

from __future__ import annotations

import faulthandler
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# marker -> test file -> the tests of that file in the tier (None: every test of the file)
TIERS: dict[str, dict[str, list[str] | None]] = {
    # several processes (torchrun / Accelerate on gloo) started as subprocesses
    "multiprocess": {"test_multiprocess.py": None},
    # a real local Ray cluster (2 CPUs) running sweeps as Ray tasks
    "ray": {"test_ray.py": None},
    # tier 2: numerical agreement with a reference implementation (PEFT) on identical weights
    "reference": {
        "test_reference.py": None,
        "test_analysis.py": ["test_lora_deltas_match_peft"],
        "test_baselines.py": ["test_vera_counts_match_peft_and_leave_out_the_shared_matrices"],
        "test_cli.py": ["test_convert_peft_residual_form_adapter"],
    },
}


def tier_markers(file_name: str, test_name: str) -> list[str]:
    """The markers from ``TIERS`` for one test (``test_name`` without its parameters)."""
    return [marker for marker, files in TIERS.items()
            if file_name in files and (files[file_name] is None or test_name in files[file_name])]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", item.name)
        for marker in tier_markers(item.path.name, name):
            item.add_marker(getattr(pytest.mark, marker))


# A test still running after HANG_DUMP_SECONDS has every thread's stack written to its worker's file, and
# the run's summary prints it. Under pytest-xdist a worker's stderr, where pytest-timeout writes its dump
# before it kills the worker, does not reach the terminal: a hang would otherwise show as nothing but
# "worker crashed". The dump does not stop the test; pytest-timeout (pyproject.toml) still does.
HANG_DUMP_SECONDS = float(os.environ.get("AILORA_TEST_HANG_DUMP_SECONDS", 300))
_HANG_DIR = "AILORA_TEST_HANG_DIR"
_HARNESS = ("_pytest", "pluggy", "xdist", "execnet")  # frames left out of a printed stack


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller: its workers start later and inherit the variable
        os.environ[_HANG_DIR] = tempfile.mkdtemp(prefix="ailora-test-hangs-")
        return
    _share_the_cores(int(config.workerinput["workercount"]))


def _share_the_cores(workers: int) -> None:
    """Give each pytest-xdist worker its share of the cores for torch's (OpenMP) threads, and the same
    to the processes it starts. Left at torch's default, two workers run twice as many threads as
    there are cores; with other work on the machine, single SVD and backward calls of the SmolLM2 tests
    then ran for over 5 minutes and one test past the timeout (its worker killed, reported as crashed)."""
    import torch

    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    torch.set_num_threads(threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    directory = os.environ.get(_HANG_DIR)
    if not directory or not os.path.isdir(directory):
        return (yield)
    with open(Path(directory) / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.log", "a") as log:
        log.write(f"=== {item.nodeid}\n")
        log.flush()
        faulthandler.dump_traceback_later(HANG_DUMP_SECONDS, file=log)
        try:
            return (yield)
        finally:
            faulthandler.cancel_dump_traceback_later()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    directory = os.environ.get(_HANG_DIR)
    if hasattr(config, "workerinput") or not directory:
        return
    for log in sorted(Path(directory).glob("*.log")):
        for section in log.read_text(errors="replace").split("=== "):
            if "Timeout (" in section:
                test, _, stacks = section.partition("\n")
                terminalreporter.write_sep("=", f"{test} still running after {HANG_DUMP_SECONDS:g} s ({log.stem})")
                frames = [line for line in stacks.splitlines() if not any(f"/{lib}/" in line for lib in _HARNESS)]
                terminalreporter.write_line("\n".join(frames))


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and os.environ.get(_HANG_DIR):  # also after an interrupted run
        shutil.rmtree(os.environ.pop(_HANG_DIR), ignore_errors=True)
