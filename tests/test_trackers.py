"""train.report_to: TensorBoard, W&B (offline) and MLflow (a local file store) through Accelerate's
trackers, read back with each tool's own reader; the old train.tensorboard flag; a tracker that is
missing or cannot start (one line, before the model loads); one that dies mid-run (a warning, the
run unchanged); resume on the same tracker runs; sweeps' groups. Tier 1: a tiny BERT, 8 steps."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import wandb
from accelerate.tracking import MLflowTracker
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb.proto import wandb_internal_pb2

from ailora.cli import main
from ailora.errors import AiloraError
from ailora.experiments.sweep import SweepSpec, planned_runs, run_config
from ailora.train import RunConfig, loop, trackers, train
from ailora.train.results import recorded_config
from tests.test_bad_input import _task
from tests.tiny_models import save_tiny_bert

TIMINGS = {"wall_seconds", "train_seconds", "peak_memory", "git", "resumed", "epochs"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("trackers")
    (d / "tasks").mkdir()
    return {"tokbert": save_tiny_bert(d / "tokbert"), "task": _task(d / "tasks", "ok", ["neg", "pos"])}


@pytest.fixture
def stores(tmp_path, monkeypatch) -> Iterator[dict[str, Path]]:
    """W&B offline and MLflow on a local file store, both under tmp_path."""
    where = {"wandb": tmp_path / "wandb-dir", "mlflow": tmp_path / "mlruns"}
    where["wandb"].mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(where["wandb"]))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{where['mlflow']}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file stores otherwise
    yield where
    wandb.teardown()  # W&B reads WANDB_DIR once per process setup: the next test's run must read its own


def _base(tiny) -> dict:
    return {"model": {"name": str(tiny["tokbert"]), "max_length": 16}, "task": {"name": str(tiny["task"])},
            "method": {"name": "lora", "rank": 2},
            "train": {"lr": 1e-3, "epochs": 2, "batch_size": 8, "progress": False, "eval_every_steps": 2}}


def _cfg(tiny, run_dir, *overrides) -> RunConfig:
    return RunConfig.from_dict({**_base(tiny), "run_dir": str(run_dir)}, list(overrides))


@pytest.fixture(scope="module")
def plain(tiny, tmp_path_factory) -> tuple[dict, Path]:
    """The same run without any tracker: the record and adapter every tracked run must match."""
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    return train(_cfg(tiny, run_dir, "train.report_to=none")), run_dir


def _same_record(a: dict, b: dict) -> None:
    """Equal records, but for timings and where the run logged (the config's tracker keys, run_dir)."""
    def comparable(r):
        train_section = {k: v for k, v in r["config"]["train"].items()
                         if k not in ("tensorboard", "report_to") and not k.startswith("tracker_")}
        config = {**r["config"], "run_dir": "", "train": train_section}
        return {k: v for k, v in r.items() if k not in TIMINGS} | {"config": config}

    assert comparable(a) == comparable(b)
    assert [{**e, "seconds": 0} for e in a["epochs"]] == [{**e, "seconds": 0} for e in b["epochs"]]


def _same_adapter(a: Path, b: Path) -> None:
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and "adapter_model.safetensors" in files
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _wandb_records(path: Path) -> list:
    """The records of a W&B offline run file (LevelDB-style log blocks of wandb's protobuf Records;
    wandb 0.31 ships no reader of its own)."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending, out = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _finished(path: Path, seconds: float = 30.0) -> list:
    """The records of a finished offline run: ``run.finish()`` returns before wandb-core has written the
    file out, so wait (a bounded time) for its exit record."""
    deadline = time.monotonic() + seconds
    while True:
        records = _wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _wandb_run(wandb_dir: Path) -> dict:
    """What the offline run(s) under WANDB_DIR logged: run ids, group, name, config, history per
    step, artifacts (name -> files)."""
    out = {"ids": [], "group": set(), "name": set(), "config": {}, "history": {}, "artifacts": {}}
    for f in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for r in _finished(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out["ids"].append(r.run.run_id)
                out["group"].add(r.run.run_group)
                out["name"].add(r.run.display_name)
            elif kind == "config":
                out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                out["history"].setdefault(r.history.step.num, {}).update(
                    {k: v for k, v in items.items() if not k.startswith("_")})
            elif kind == "artifact":
                out["artifacts"][r.artifact.name] = sorted(e.path for e in r.artifact.manifest.contents)
    return out


def _mlflow_runs(experiment: str = "ailora") -> list:
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _history(run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in mlflow.MlflowClient().get_metric_history(run_id, key)}


def _expected(record: dict) -> dict[int, dict[str, float]]:
    """What the trackers get at each step, from the run's record: validations, epoch losses, test."""
    out: dict[int, dict[str, float]] = {}
    for e in record["evaluations"]:
        out.setdefault(e["step"], {}).update({f"validation/{k}": v for k, v in e["validation"].items()})
    for e in record["epochs"]:
        out.setdefault(e["step"], {})["train/epoch_loss"] = e["train_loss"]
    out[record["steps"]].update({f"test/{k}": v for k, v in record["test"].items()})
    return out


# The config: report_to, the old tensorboard flag, the record, resume identity.


@pytest.mark.parametrize("train_keys, trackers_", [
    ({}, ("tensorboard",)),
    ({"tensorboard": True}, ("tensorboard",)),
    ({"tensorboard": False}, ()),
    ({"report_to": ["none"]}, ()),
    ({"report_to": ["wandb", "mlflow"]}, ("wandb", "mlflow")),
    ({"report_to": ["mlflow", "tensorboard"], "tensorboard": True}, ("mlflow", "tensorboard")),
    ({"report_to": ["wandb"], "tensorboard": False}, ("wandb",)),
])
def test_report_to_and_the_tensorboard_flag_name_the_trackers(train_keys, trackers_):
    cfg = RunConfig.from_dict({"task": {"name": "t"}, "run_dir": "r", "train": train_keys})
    assert cfg.train.trackers == trackers_
    recorded = recorded_config(cfg)["train"]  # the record says where the run logged, however it was spelt
    assert recorded["report_to"] == (list(trackers_) or ["none"])
    assert recorded["tensorboard"] is ("tensorboard" in trackers_)
    again = RunConfig.from_dict({**recorded_config(cfg), "run_dir": "r"})
    assert again.train.trackers == trackers_ and again.identity() == cfg.identity()


@pytest.mark.parametrize("overrides, message", [
    (["train.report_to=wandb", "train.tensorboard=true"],
     "train.tensorboard=true contradicts train.report_to=wandb; drop train.tensorboard"),
    (["train.report_to=tensorboard", "train.tensorboard=false"],
     "train.tensorboard=false contradicts train.report_to=tensorboard"),
    (["train.report_to=wandb,wandb"], "train.report_to names a tracker twice: wandb,wandb"),
    (["train.report_to=none,mlflow"], "train.report_to: none means no tracker and stands alone"),
    (["train.report_to=comet"], "train.report_to[0] must be one of tensorboard, wandb, mlflow, none, got 'comet'"),
    (["train.tracker_project="], "train.tracker_project is empty"),
])
def test_bad_tracker_settings_are_one_line_errors(overrides, message, tmp_path, capsys):
    with pytest.raises(AiloraError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        RunConfig.from_dict({"task": {"name": "t"}, "run_dir": "r"}, overrides)
    assert main(["train", "--task", "movie-sentiment", "--run-dir", str(tmp_path / "r"), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_old_configs_resume_under_the_new_spelling_and_tracker_names_may_change():
    old = {"task": {"name": "t"}, "run_dir": "r", "train": {"tensorboard": True}}  # as config.json had it
    new = {"task": {"name": "t"}, "run_dir": "r", "train": {"report_to": ["tensorboard"], "tracker_group": "g",
                                                            "tracker_run_name": "n", "tracker_project": "p"}}
    assert RunConfig.from_dict(old).identity() == RunConfig.from_dict(new).identity()
    off = {"task": {"name": "t"}, "run_dir": "r", "train": {"tensorboard": False}}
    assert RunConfig.from_dict(off).identity() == RunConfig.from_dict(
        {**off, "train": {"report_to": ["none"]}}).identity()
    assert RunConfig.from_dict(off).identity() != RunConfig.from_dict(old).identity()


def test_a_sweep_groups_its_runs_under_its_directory_name(tiny, tmp_path):
    spec = SweepSpec.from_dict({"model": str(tiny["tokbert"]), "tasks": [str(tiny["task"])], "methods": ["lora"],
                                "seeds": [0, 1], "lrs": [1e-3]})
    cfgs = [run_config(spec, run, tmp_path / "my-sweep") for run in planned_runs(spec)]
    assert {c.train.tracker_group for c in cfgs} == {"my-sweep"}
    assert [c.train.tracker_run_name for c in cfgs] == [run.path for run in planned_runs(spec)]
    named = SweepSpec.from_dict({**spec.to_dict(), "options": {"train.tracker_group": "mine"}})
    assert run_config(named, planned_runs(named)[0], tmp_path / "s").train.tracker_group == "mine"


# Real runs.


def test_every_tracker_gets_the_config_metrics_test_and_adapter_and_the_run_is_unchanged(
        tiny, stores, plain, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(loop, "LOG_EVERY", 2)  # train/loss and train/lr at steps 2, 4, 6, 8
    results = train(_cfg(tiny, run_dir, "train.report_to=tensorboard,wandb,mlflow", "train.tracker_group=g1"))
    expected = _expected(results)
    assert sorted(expected) == [2, 4, 6, 8]

    (run,) = _mlflow_runs()
    assert run.info.status == "FINISHED" and run.info.run_name == "run" and run.data.tags["ailora.group"] == "g1"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["method.name"] == "lora"
    assert "train.progress" not in run.data.params  # run control: may change on resume
    for key in {k for step in expected.values() for k in step}:
        assert _history(run.info.run_id, key) == {s: v[key] for s, v in expected.items() if key in v}, key
    assert sorted(_history(run.info.run_id, "train/loss")) == [2, 4, 6, 8]
    artifacts = mlflow.MlflowClient().list_artifacts(run.info.run_id, "adapter")
    assert sorted(Path(a.path).name for a in artifacts) == sorted(p.name for p in (run_dir / "adapter").iterdir())

    w = _wandb_run(stores["wandb"])
    ids = json.loads((run_dir / trackers.IDS).read_text())
    assert w["ids"] == [ids["wandb"]] and ids["mlflow"] == run.info.run_id
    assert w["group"] == {"g1"} and w["name"] == {"run"}
    assert w["config"]["train.lr"] == 1e-3 and w["config"]["train.report_to"] == ["tensorboard", "wandb", "mlflow"]
    for step, values in expected.items():
        assert {k: v for k, v in w["history"][step].items() if k in values} == values
        assert {"train/loss", "train/lr"} <= set(w["history"][step])
    assert w["artifacts"] == {f"adapter-{ids['wandb']}": sorted(p.name for p in (run_dir / "adapter").iterdir())}

    tb = EventAccumulator(str(run_dir / "tb")).Reload()
    for key in ("validation/accuracy", "train/epoch_loss", "test/accuracy"):  # float32 in TensorBoard's events
        want = {s: v[key] for s, v in expected.items() if key in v}
        assert {e.step: e.value for e in tb.Scalars(key)} == pytest.approx(want, rel=1e-6), key
    assert [e.step for e in tb.Scalars("train/loss")] == [2, 4, 6, 8]

    # LOG_EVERY changes the record's loss intervals only; the rest and the weights are the tracker-free run's.
    _same_record({**results, "train_log": None}, {**plain[0], "train_log": None})
    _same_adapter(run_dir / "adapter", plain[1] / "adapter")


def test_a_tracker_that_dies_mid_run_is_dropped_with_a_warning_and_nothing_else_changes(
        tiny, stores, plain, tmp_path, monkeypatch):
    calls = []

    def dying_log(self, values, step=None, **kwargs):
        calls.append(step)
        if len(calls) > 1:
            raise ConnectionError("the tracking server went away\nsecond line")
        mlflow.log_metrics(values, step=step)

    monkeypatch.setattr(MLflowTracker, "log", dying_log)
    run_dir = tmp_path / "run"
    with pytest.warns(trackers.TrackerWarning) as caught:
        results = train(_cfg(tiny, run_dir, "train.report_to=mlflow,wandb"))
    messages = [str(w.message) for w in caught if issubclass(w.category, trackers.TrackerWarning)]
    assert messages == ["train.report_to: mlflow failed logging step 4 (ConnectionError: the tracking server went "
                        "away); it gets nothing more of this run, which goes on"]
    assert calls == [2, 4]  # never called again after it failed
    _same_record(results, plain[0])
    _same_adapter(run_dir / "adapter", plain[1] / "adapter")
    assert json.loads((run_dir / "results.json").read_text()) == results
    (run,) = _mlflow_runs()
    assert run.info.status == "FAILED" and sorted(_history(run.info.run_id, "validation/accuracy")) == [2]
    w = _wandb_run(stores["wandb"])  # the other tracker got everything, test scores included
    assert {k: v for k, v in w["history"][8].items() if k.startswith("test/")} == {
        f"test/{k}": v for k, v in results["test"].items()}


def test_a_tracker_not_installed_or_unable_to_start_stops_the_run_before_the_model_loads(
        tiny, stores, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the task and model were loaded")

    monkeypatch.setattr(loop, "load_task", no_model)
    missing = dataclasses.replace(trackers.KINDS["wandb"], module="ailora_no_such_tracker_package")
    monkeypatch.setitem(trackers.KINDS, "wandb", missing)
    with pytest.raises(AiloraError, match="^train.report_to names wandb, which is not installed: pip install "):
        train(_cfg(tiny, tmp_path / "a", "train.report_to=mlflow,wandb"))
    assert not (tmp_path / "a").exists()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    code = main(["train", "--config", _write(tmp_path / "c.json", _base(tiny)), "--run-dir", str(tmp_path / "b"),
                 "train.report_to=tensorboard,mlflow"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: train.report_to: mlflow cannot start (MlflowException: API request to "
                             "http://127.0.0.1:9/")
    assert not list((tmp_path / "b").rglob("*.json")) and not (tmp_path / "b" / "tb").exists()


def _write(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_a_resumed_run_logs_to_the_same_tracker_runs_and_ends_as_an_uninterrupted_one(
        tiny, stores, plain, tmp_path):
    run_dir = tmp_path / "run"
    keys = ("train.report_to=wandb,mlflow",)
    assert train(_cfg(tiny, run_dir, *keys, "train.stop_after_steps=3"))["status"] == "interrupted"
    ids = json.loads((run_dir / trackers.IDS).read_text())
    (run,) = _mlflow_runs()
    assert run.info.status == "FINISHED" and sorted(_history(run.info.run_id, "validation/accuracy")) == [2]
    results = train(_cfg(tiny, run_dir, *keys, "resume=true"))
    assert json.loads((run_dir / trackers.IDS).read_text()) == ids
    (run,) = _mlflow_runs()  # the same run, continued
    assert run.info.run_id == ids["mlflow"] and run.info.status == "FINISHED"
    assert _history(run.info.run_id, "validation/accuracy") == {
        e["step"]: e["validation"]["accuracy"] for e in results["evaluations"]}
    w = _wandb_run(stores["wandb"])
    assert w["ids"] == [ids["wandb"], ids["wandb"]]  # two offline parts of one W&B run
    assert sorted(w["history"]) == [2, 4, 6, 8]
    _same_record({**results, "resumed": False}, plain[0])
    _same_adapter(run_dir / "adapter", plain[1] / "adapter")


@pytest.mark.parametrize("text", ['["tensorboard","mlflow"]', "[tensorboard,mlflow]", "tensorboard,mlflow",
                                  "[tensorboard, mlflow]"])
def test_a_list_override_in_any_spelling(text):
    """`train.report_to=[a,b]` unquoted on a shell line was a JSONDecodeError traceback."""
    from ailora.train.config import TrainConfig, _hints, parse_value

    assert parse_value("train.report_to", _hints(TrainConfig)["report_to"], text) == ["tensorboard", "mlflow"]
