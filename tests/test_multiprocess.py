"""Two CPU processes (torchrun, Accelerate, gloo): identical starting factors, same result as one process."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

import ailora
from ailora.cli import main as cli_main
from ailora.train import load_config, train
from tests.tiny_models import build, save_tiny_bert

ROOT = Path(__file__).resolve().parents[1]

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


def _two_processes(tmp_path, config, *overrides: str, env: dict | None = None) -> dict:
    """Results of a 2-process run of ``config`` with ``overrides`` (and ``env`` added to the environment)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true",
           **(env or {})}
    # torchrun sets the environment Accelerate reads (`accelerate launch --cpu` would start one process
    # unless MPI is installed); Accelerate then runs DDP over gloo.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "runner.py"), str(config), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / overrides[0].removeprefix("run_dir=") / "results.json").read_text())


def test_two_processes_match_one(tmp_path):
    config = _setup(tmp_path)
    two = _two_processes(tmp_path, config, f"run_dir={tmp_path / 'two'}")
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


def test_two_processes_start_from_a_residual_directory(tmp_path, monkeypatch):
    """The multi-process path for models too large to initialise in memory: `ailora init --residual-out`,
    then every process starts from its directory (DDP here: Accelerate 1.15 sets FSDP up for GPUs only;
    on CPU it wraps the model in DDP even when asked for FSDP)."""
    config = _setup(tmp_path)
    assert cli_main(["init", "--model", str(tmp_path / "bert"), "--residual-out", str(tmp_path / "residual"),
                     "--rank", "4", "--quiet"]) == 0
    mlruns = tmp_path / "mlruns"
    two = _two_processes(tmp_path, config, f"run_dir={tmp_path / 'two'}", f"model.name={tmp_path / 'residual'}",
                         "train.epochs=1", "train.tensorboard=none", "train.report_to=tensorboard,mlflow",
                         env={"MLFLOW_TRACKING_URI": f"file:{mlruns}", "MLFLOW_ALLOW_FILE_STORE": "true"})
    one = train(load_config(config, [f"run_dir={tmp_path / 'one'}", "train.batch_size=16", "train.epochs=1"]))
    hashes = two["distributed"]["init_hashes"]
    # both processes hold the model that one process gets by decomposing the original in memory
    assert len(hashes) == 2 and hashes[0] == hashes[1] == one["distributed"]["init_hashes"][0]
    assert two["epochs"][0]["train_loss"] == pytest.approx(one["epochs"][0]["train_loss"], abs=1e-3)
    # Only the main process logs: one MLflow run, one TensorBoard event file.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=f"file:{mlruns}")
    (run,) = client.search_runs([client.get_experiment_by_name("ailora").experiment_id])
    assert json.loads((tmp_path / "two" / "trackers.json").read_text()) == {"mlflow": run.info.run_id}
    assert run.data.metrics["test/accuracy"] == two["test"]["accuracy"]
    assert len(list((tmp_path / "two" / "tb").glob("events.out.tfevents.*"))) == 1


# Each process applies AILoRA (query principal, value minor, key a seeded LoRA start) to the same tiny
# models; apply splits the decompositions between the two processes and broadcasts the factors.
APPLY_RUNNER = """
import sys, dataclasses, torch, torch.distributed as dist
dist.init_process_group("gloo")
import ailora
from tests.test_multiprocess import APPLY_CASES, applied
for name, solver in APPLY_CASES:
    torch.save(applied(name, solver), f"{sys.argv[1]}/{name}-{solver}-{dist.get_rank()}.pt")
torch.save(applied("llama", "exact", distribute=False), f"{sys.argv[1]}/alone-{dist.get_rank()}.pt")
dist.destroy_process_group()
"""
APPLY_CASES = [("llama", "exact"), ("llama", "fast"), ("gpt2", "exact"), ("gpt2", "fast")]


def applied(name: str, solver: str, distribute: bool = True) -> dict:
    """What one apply of the case leaves: every tensor of the model, the starting factors, the layer records."""
    layers = {"llama": {"num_hidden_layers": 4}, "gpt2": {"n_layer": 4}}[name]
    model = ailora.apply(build(name, dropout=False, **layers).eval(), method="ailora", rank=2, solver=solver,
                         targets=["query", "key", "value"], policy="key=lora", progress=False, distribute=distribute)
    state = ailora.state_of(model)
    records = [{k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in state.layers]
    return {"tensors": dict(model.state_dict()), "initial": state.initial, "layers": records, "split": state.split}


def _same(a: dict, b: dict) -> None:
    assert a["layers"] == b["layers"]
    for part in ("tensors", "initial"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            for x, y in zip(*(v if isinstance(v, tuple) else (v,) for v in (a[part][k], b[part][k])), strict=True):
                assert torch.equal(x, y), (part, k)


def test_apply_splits_decompositions_across_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    (tmp_path / "runner.py").write_text(APPLY_RUNNER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "runner.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, solver in APPLY_CASES:
        two = [torch.load(tmp_path / f"{name}-{solver}-{r}.pt") for r in (0, 1)]
        # the blocks were shared out (every process did some) and every process holds the same factors,
        # bit for bit the factors and residuals that one process computes
        assert two[0]["split"] == two[1]["split"] and two[0]["split"]["processes"] == 2
        assert all(n > 0 for n in two[0]["split"]["blocks"])
        one = applied(name, solver)
        assert one["split"] == {}
        _same(two[0], two[1])
        _same(two[0], one)
    for r in (0, 1):  # distribute=False: each process computed everything itself
        alone = torch.load(tmp_path / f"alone-{r}.pt")
        assert alone["split"] == {}
        _same(alone, applied("llama", "exact"))
