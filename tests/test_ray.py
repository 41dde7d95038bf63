"""Sweeps on a real local Ray cluster (2 CPUs, started once for the module), tiny runs: the same
summary and adapters as the local executor, a worker killed with SIGKILL mid-run, a driver killed
and rerun, two drivers on one directory, SIGTERM to a driver, and the one-line refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from ailora.cli import main
from ailora.errors import AiloraError
from ailora.experiments import rayexec
from ailora.experiments.executors import LocalExecutor
from ailora.experiments.locks import lock_path
from ailora.experiments.rayexec import RayExecutor, RayOptions
from ailora.experiments.sweep import SweepSpec, run_sweep
from ailora.train import train
from tests.test_bad_input import _task
from tests.tiny_models import save_tiny_bert

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = "adapter/adapter_model.safetensors"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs; its workers import ailora from this checkout."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, object_store_memory=rayexec.OBJECT_STORE_BYTES, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ray")
    (d / "tasks").mkdir()
    return {"bert": save_tiny_bert(d / "bert"), "task": _task(d / "tasks", "ok", ["neg", "pos"]), "root": d}


def _spec(tiny, methods=("lora", "ailora"), epochs=2, **kw) -> dict:
    return {"model": str(tiny["bert"]), "tasks": [str(tiny["task"])], "seeds": [0], "lrs": [1e-3],
            "methods": list(methods), **kw,
            "options": {"model.max_length": 16, "method.rank": 2, "train.epochs": epochs, "train.batch_size": 8,
                        "train.progress": False, "train.tensorboard": False, "train.save_every_steps": 1}}


def _local(spec: dict, where: Path) -> dict:
    """The sweep on the local executor with one torch thread per run (as a 1-CPU Ray task has)."""
    threads = torch.get_num_threads()
    try:
        return run_sweep(SweepSpec.from_dict(spec), where, executor=LocalExecutor(train, threads=1))
    finally:
        torch.set_num_threads(threads)


def _adapters(where: Path) -> dict[str, bytes]:
    return {str(p.relative_to(where)): p.read_bytes() for p in sorted(where.glob(f"ok/*/*/seed*/{ADAPTER}"))}


def _comparable(summary: dict) -> dict:
    """The summary without timings."""
    out = json.loads(json.dumps(summary["tasks"]))
    for methods in out.values():
        for m in methods["methods"].values():
            m.pop("wall_seconds")
    return out


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory) -> tuple[Path, dict]:
    """The bracketed two-method sweep on the local executor: lr 1e-3, then 2e-3 added above it."""
    where = tmp_path_factory.mktemp("local") / "s"
    return where, _local(_spec(tiny, bracket=1), where)


def test_same_summary_and_adapters_as_the_local_executor(cluster, tiny, reference, tmp_path):
    local_dir, local = reference
    lines = []
    summary = run_sweep(SweepSpec.from_dict(_spec(tiny, bracket=1)), tmp_path / "s", log=lines.append,
                        executor=RayExecutor(RayOptions(run_cpus=1, progress=False)))
    grid = summary["tasks"][str(tiny["task"])]["methods"]["lora"]["grid"]
    assert [(g["lr"], g.get("extended", False)) for g in grid] == [(1e-3, False), (2e-3, True)]
    assert summary["runs"]["complete"] == 4 and _comparable(summary) == _comparable(local)
    ours = _adapters(tmp_path / "s")
    assert len(ours) == 4 and ours == _adapters(local_dir)
    record = json.loads(next((tmp_path / "s").glob("ok/lora/*/seed0/results.json")).read_text())
    assert record["distributed"]["threads"] == 1 and sum("(Ray task)" in x for x in lines) == 4
    assert not list((tmp_path / "s").rglob("*.lock"))


def _kill_when_checkpointed(run_dir: Path, killed: list) -> None:
    """SIGKILL the process that holds ``run_dir``'s lock once the run has a checkpoint."""
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            held = json.loads(lock_path(run_dir).read_text())
        except (OSError, ValueError):
            held = None
        if held and (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "results.json").exists():
            os.kill(held["pid"], signal.SIGKILL)
            killed.append(held["pid"])
            return
        time.sleep(0.01)


def test_a_worker_killed_mid_run_is_retried_from_its_checkpoint(cluster, tiny, reference, tmp_path):
    where, killed, lines = tmp_path / "s", [], []
    run_dir = where / "ok" / "lora" / "lr0.001" / "seed0"
    killer = threading.Thread(target=_kill_when_checkpointed, args=(run_dir, killed))
    killer.start()
    summary = run_sweep(SweepSpec.from_dict(_spec(tiny, methods=("lora",))), where, log=lines.append,
                        executor=RayExecutor(RayOptions(run_cpus=1, progress=False)))
    killer.join()
    assert killed and killed[0] != os.getpid(), "no worker was killed"
    assert any("worker lost" in x and "retry 1 of 2" in x for x in lines), lines
    assert summary["runs"]["complete"] == 1 and summary["runs"]["failed"] == []
    assert json.loads((run_dir / "results.json").read_text())["resumed"]
    assert (run_dir / ADAPTER).read_bytes() == (reference[0] / "ok" / "lora" / "lr0.001" / "seed0" / ADAPTER).read_bytes()


def test_retries_exhausted_record_the_run_as_failed_and_the_sweep_goes_on(cluster, tiny, tmp_path):
    where, killed, lines = tmp_path / "s", [], []
    run_dir = where / "ok" / "lora" / "lr0.001" / "seed0"
    killer = threading.Thread(target=_kill_when_checkpointed, args=(run_dir, killed))
    killer.start()
    summary = run_sweep(SweepSpec.from_dict(_spec(tiny, methods=("lora", "pissa"))), where, log=lines.append,
                        executor=RayExecutor(RayOptions(run_cpus=1, retries=0, progress=False)))
    killer.join()
    assert killed and any("worker lost 1 times" in x for x in lines), lines
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["status"] == "failed" and "worker lost 1 times" in failed["error"] and failed["last_checkpoint"]
    assert summary["runs"]["failed"] == ["ok/lora/lr0.001/seed0"] and summary["runs"]["complete"] == 1


def _driver(spec_file: Path, where: Path, address: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.Popen([sys.executable, "-m", "ailora.cli", "sweep", "--spec", str(spec_file), "--dir", str(where),
                             "--executor", "ray", "--ray-address", address, "--no-progress", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(where: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 180
    while not list(where.glob("ok/*/*/seed0/checkpoints/last.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_a_stopped_driver_is_rerun_to_the_same_adapters(stop, cluster, tiny, reference, tmp_path):
    """The driver killed outright (its tasks die with it, their locks go stale) or sent SIGTERM (it
    cancels its tasks, says how to continue, exits 143): the same command finishes the sweep."""
    spec_file, where = tmp_path / "spec.json", tmp_path / "s"
    spec_file.write_text(json.dumps(_spec(tiny, bracket=1)))
    proc = _driver(spec_file, where, cluster)
    _wait_for_checkpoint(where, proc)
    proc.send_signal(getattr(signal, stop))
    _, err = proc.communicate(timeout=120)
    if stop == "SIGTERM":
        assert proc.returncode == 143 and err.strip().splitlines()[-1].startswith("terminated (SIGTERM); "), err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (where / "summary.json").exists()
    again = _driver(spec_file, where, cluster)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    summary = json.loads((where / "summary.json").read_text())
    assert summary["runs"]["complete"] == 4 and _adapters(where) == _adapters(reference[0])


def test_two_drivers_on_one_directory_share_the_runs(cluster, tiny, reference, tmp_path):
    spec_file, where = tmp_path / "spec.json", tmp_path / "s"
    spec_file.write_text(json.dumps(_spec(tiny, bracket=1)))
    procs = [_driver(spec_file, where, cluster) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    summary = json.loads((where / "summary.json").read_text())
    assert summary["runs"]["complete"] == 4 and _adapters(where) == _adapters(reference[0])
    trained = [json.loads(p.read_text()) for p in where.glob("ok/*/*/seed0/results.json")]
    assert not any(r["resumed"] for r in trained)  # each run trained once, by one driver
    assert not list(where.rglob("*.lock"))


# Refusals: one line, before any run starts, nothing written.


def _refused(capsys, argv: list[str], message: str, where: Path) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not where.exists()


def _argv(tiny, where: Path, *extra: str) -> list[str]:
    return ["sweep", "--model", str(tiny["bert"]), "--tasks", str(tiny["task"]), "--methods", "lora", "--lrs", "1e-3",
            "--dir", str(where), "--no-progress", "--executor", "ray", *extra, "model.max_length=16", "method.rank=2"]


def test_resources_no_node_has_are_refused(cluster, tiny, tmp_path, capsys):
    _refused(capsys, _argv(tiny, tmp_path / "s", "--run-gpus", "1"), "no node of the Ray cluster has 1 CPU and 1 GPU",
             tmp_path / "s")
    _refused(capsys, _argv(tiny, tmp_path / "s", "--run-cpus", "3"), "its nodes have: 2 CPU, 0 GPU", tmp_path / "s")


def test_an_unreachable_address_and_a_missing_ray_are_refused(tiny, tmp_path, capsys, monkeypatch):
    _refused(capsys, _argv(tiny, tmp_path / "s", "--ray-address", "127.0.0.1:9"),
             "cannot reach the Ray cluster at 127.0.0.1:9", tmp_path / "s")
    _refused(capsys, ["sweep", "--tasks", "x", "--methods", "lora", "--lrs", "1e-3", "--dir", str(tmp_path / "s"),
                      "--run-gpus", "1"], "--run-gpus is an option of --executor ray", tmp_path / "s")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    _refused(capsys, _argv(tiny, tmp_path / "s"), "needs Ray, which is not installed", tmp_path / "s")


class _OtherDisk:
    """A stand-in for ``ray`` whose workers write to their own disk (``disk``), not the driver's."""

    exceptions = ray.exceptions

    def __init__(self, disk: Path):
        self.disk = disk

    def remote(self, **_):
        def wrap(fn):
            me = self

            class Task:
                def options(self, **_):
                    return self

                def remote(self, folder, name, token):
                    return fn(str(me.disk), name, token)
            return Task()
        return wrap

    def get(self, value, timeout=None):
        return value


NODE = "ab" * 28  # a node id


def test_a_sweep_directory_the_workers_do_not_see_is_refused(tmp_path):
    (tmp_path / "node-disk").mkdir()
    with pytest.raises(AiloraError, match=r"^sweep directory .*/s is not on storage every Ray worker sees: .*"
                                          r"its file is missing here"):
        rayexec.check_storage(_OtherDisk(tmp_path / "node-disk"), tmp_path / "s", [NODE])
    assert not (tmp_path / "s").exists() and list((tmp_path / "node-disk").iterdir())  # the worker wrote on its disk
    rayexec.check_storage(_OtherDisk(tmp_path), tmp_path / "s", [NODE])  # a shared disk passes, leaves nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-disk"]
