"""Test tiers as markers, so that a contributor can run one (docs/development.md lists them and how
long each takes).

``slow`` (tier 3, a real model) is set where the test is written. The two tiers below are set here,
from one table, because their tests live in files that belong to other subjects; tests/test_docs.py
checks that every test named in the table exists, so a rename cannot drop a test from its tier."""

from __future__ import annotations

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
