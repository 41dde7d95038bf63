"""The test harness itself (tests/conftest.py): each pytest-xdist worker's share of the cores, and the
stacks of a test still running after the dump delay, printed in the run's summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INNER = """import json, os, time, torch
def test_sleeps_past_the_dump_delay():
    time.sleep(3)
def test_records_the_threads():
    out = os.environ["HARNESS_OUT"] + "/" + os.environ["PYTEST_XDIST_WORKER"] + ".json"
    open(out, "w").write(json.dumps([torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")]))
"""


def test_workers_share_the_cores_and_a_long_test_has_its_stacks_printed(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(AILORA_TEST_HANG_DUMP_SECONDS="1", HARNESS_OUT=str(tmp_path), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider",
                           "-p", "tests.conftest", "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test_inner.py::test_sleeps_past_the_dump_delay still running after 1 s" in proc.stdout
    assert 'test_inner.py", line 3 in test_sleeps_past_the_dump_delay' in proc.stdout
    assert "test_records_the_threads still running" not in proc.stdout
    assert "/_pytest/" not in proc.stdout  # harness frames left out
    threads = max(1, (os.cpu_count() or 1) // 2)
    recorded = [json.loads(p.read_text()) for p in tmp_path.glob("gw*.json")]
    assert recorded == [[threads, str(threads)]]
