"""Two CPU processes (torchrun, Accelerate, gloo): identical starting factors, same result as one process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from ailora.train import load_config, train
from tests.tiny_models import save_tiny_bert

RUNNER = "import sys\nfrom ailora.train import load_config, train\ntrain(load_config(sys.argv[1], sys.argv[2:]))\n"


def _setup(tmp_path):
    """A dropout-free tiny BERT, a JSON-lines sentiment task, and a config that uses them."""
    model_dir = save_tiny_bert(tmp_path / "bert", dropout=False)
    rng = random.Random(0)
    words = (["bad", "awful", "poor", "sad"], ["good", "great", "fine", "nice"])
    rows = [{"text": f"it was {rng.choice(words[i % 2])} {rng.choice(['today', 'indeed'])}", "label": i % 2}
            for i in range(96)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "task.json").write_text(json.dumps({"name": "mp-sentiment", "kind": "classification",
                                                    "path": "data.jsonl", "label_names": ["0", "1"]}))
    cfg = {"model": {"name": str(model_dir), "max_length": 16}, "task": {"name": str(tmp_path / "task.json")},
           "method": {"name": "ailora", "rank": 4}, "run_dir": "",
           "train": {"lr": 2e-2, "epochs": 2, "batch_size": 8, "tensorboard": False, "progress": False}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "runner.py").write_text(RUNNER)
    return tmp_path / "config.json"


def test_two_processes_match_one(tmp_path):
    config = _setup(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    # torchrun sets the environment Accelerate reads (`accelerate launch --cpu` would start one process
    # unless MPI is installed); Accelerate then runs DDP over gloo.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(tmp_path / "runner.py"), str(config), f"run_dir={tmp_path / 'two'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    # One process with the same global batch (2 x 8) sees the same batches in the same order.
    one = train(load_config(config, [f"run_dir={tmp_path / 'one'}", "train.batch_size=16"]))

    hashes = json.loads((tmp_path / "two" / "init_hashes.json").read_text())
    assert len(hashes) == 2 and hashes[0] == hashes[1] and two["distributed"]["init_identical"]
    assert hashes[0] == one["distributed"]["init_hashes"][0]  # CPU SVDs: the same factors as one process
    assert two["distributed"]["num_processes"] == 2 and two["steps"] == one["steps"]
    for e1, e2 in zip(one["epochs"], two["epochs"]):
        assert e1["train_loss"] == pytest.approx(e2["train_loss"], abs=1e-3)
        assert e1["validation"]["accuracy"] == pytest.approx(e2["validation"]["accuracy"], abs=0.1)
    assert one["test"]["accuracy"] == pytest.approx(two["test"]["accuracy"], abs=0.1)
