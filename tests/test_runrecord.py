"""The run record: one writer (same keys as every record this project wrote), one strict reader,
older records still read (and reported), nothing guessed at."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ailora.analysis.curves import read_run, read_steps
from ailora.errors import AiloraError
from ailora.experiments.report import write_report
from ailora.experiments.sweep import SweepSpec, run_sweep, summarize
from ailora.train import train
from ailora.train.progressive import savings
from ailora.train.runrecord import (
    FailedRecord,
    Interrupted,
    RunRecord,
    TaskInfo,
    from_train,
    progressive_stages,
    read_complete,
    read_epochs,
    read_run_record,
    write_record,
)
from tests.records import make_failed, make_record
from tests.test_sweep import FakeTrain
from tests.test_train import _cfg, bert_dir  # noqa: F401  (bert_dir: the session fixture)

# results.json's keys, in order, as train/loop.py's dict literal wrote them before RunRecord (commit c83e712).
RESULTS_KEYS = ["status", "config", "task", "epochs", "evaluations", "train_log", "best", "selected", "validation",
                "before", "test", "extra_test", "steps", "seed", "parameters", "method", "adapter", "wall_seconds",
                "updated_parameters", "train_seconds", "progressive", "resumed", "peak_memory", "distributed",
                "versions", "git"]
FAILED_KEYS = ["status", "error", "step", "config", "last_checkpoint", "wall_seconds", "versions", "git"]
# Keys the first records (commit 184a6a8) lacked: added with Progtuning, train.eval_before, label names
# and step-level losses.
LATER_KEYS = ("updated_parameters", "train_seconds", "progressive", "before", "train_log")
CONFIG = {"method": {"name": "ailora"}, "train": {"seed": 0, "lr": 1e-3}, "progressive": {"stages": 0}}
TASK = TaskInfo("t", "classification", ("accuracy",), "accuracy", {"train": 8}, ("neg", "pos"))


def _record(**changes) -> RunRecord:
    return make_record(CONFIG, TASK, {"accuracy": 0.75}, {"accuracy": 0.7}, **changes)


def _oldest(data: dict) -> dict:
    """``data`` as the first format wrote it (no keys added since)."""
    old = {k: v for k, v in data.items() if k not in LATER_KEYS}
    old["task"] = {k: v for k, v in old["task"].items() if k != "label_names"}
    return old


def test_to_json_writes_the_keys_of_before_and_from_json_reads_them_back():
    rec = _record()
    data = rec.to_json()
    assert list(data) == RESULTS_KEYS and data["status"] == "complete"
    assert list(data["task"]) == ["name", "kind", "metrics", "main_metric", "sizes", "label_names"]
    assert list(data["epochs"][0]) == ["epoch", "step", "train_loss", "validation", "seconds"]
    assert list(data["evaluations"][0]) == ["step", "epoch", "validation"]
    assert list(data["train_log"][0]) == ["step", "train_loss"]
    assert list(data["parameters"]) == ["trainable", "total", "trainable_percent"]
    assert RunRecord.from_json(json.loads(json.dumps(data)), "r") == rec
    failed = make_failed(CONFIG, 4)
    assert list(failed.to_json()) == FAILED_KEYS
    assert FailedRecord.from_json(json.loads(json.dumps(failed.to_json())), "f") == failed


def test_a_trained_run_writes_and_returns_one_record(bert_dir, tmp_path):  # noqa: F811
    res = train(_cfg(bert_dir, tmp_path / "run", "train.epochs=2", "train.select=best", "train.eval_before=true"))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(saved) == RESULTS_KEYS and saved == json.loads(json.dumps(res))
    rec = read_complete(tmp_path / "run")
    assert from_train(res) == rec and rec.to_json() == saved
    assert rec.best is not None and rec.selected == "best" and rec.before is not None
    assert rec.validation_score("accuracy") == rec.best.value
    assert read_epochs(tmp_path / "run") == rec.epochs and [e.epoch for e in rec.epochs] == [1, 2]
    again = train(_cfg(bert_dir, tmp_path / "run", "train.epochs=2", "train.select=best", "train.eval_before=true",
                       "resume=true"))  # already complete: the record as written
    assert again == saved


def test_older_records_still_read():
    old = _oldest(_record().to_json())
    rec = RunRecord.from_json(old, "old")
    assert rec.train_log is None and rec.updated_parameters is None and rec.progressive is None
    assert rec.before is None and rec.task.label_names is None and rec.train_seconds is None
    assert list(rec.to_json()) == [k for k in RESULTS_KEYS if k not in ("train_log", "updated_parameters",
                                                                         "train_seconds")]
    assert RunRecord.from_json(rec.to_json(), "again") == rec
    # Before the progressive section (e25e67b..f71e863) Progtuning's stages were train.progressive_stages.
    assert progressive_stages({"train": {"progressive_stages": 3}}) == 3
    assert progressive_stages({"train": {}}) == 0 and progressive_stages({"progressive": {"stages": 2}}) == 2


def test_the_reader_is_strict_and_names_the_file(tmp_path):
    good = _record().to_json()
    cases = {
        "unknown key 'loss'": {**good, "loss": 1.0},
        "no 'test'": {k: v for k, v in good.items() if k != "test"},
        "status must be 'complete', got 'failed'": {**good, "status": "failed"},
        "steps must be an integer, got '10'": {**good, "steps": "10"},
        "epochs\\[1\\]: unknown key 'eval'": {**good, "epochs": [good["epochs"][0],
                                                                  {**good["epochs"][1], "eval": {}}]},
        "train_log\\[0\\]: no 'train_loss'": {**good, "train_log": [{"step": 5}]},
        "config method.name must be a string": {**good, "config": {"method": "ailora", "train": {"seed": 0}}},
        "selected must be 'best' or 'last'": {**good, "selected": "first"},
    }
    run = tmp_path / "run"
    for message, data in cases.items():
        (run / "results.json").parent.mkdir(exist_ok=True)
        (run / "results.json").write_text(json.dumps(data))
        with pytest.raises(AiloraError, match=message) as err:
            read_run_record(run)
        assert str(run / "results.json") in str(err.value) and "\n" not in str(err.value)
    (run / "results.json").write_text('{"status": "comp')
    with pytest.raises(AiloraError, match="results.json is not valid JSON"):
        read_complete(run)


def test_read_run_record_tells_complete_failed_and_neither(tmp_path):
    assert read_run_record(tmp_path) is None
    with pytest.raises(AiloraError, match="has no results.json"):
        read_complete(tmp_path)
    write_record(tmp_path, make_failed(CONFIG, 3))
    assert read_run_record(tmp_path) == make_failed(CONFIG, 3)
    (tmp_path / "failed.json").write_text(json.dumps({"status": "failed", "step": 3}))
    with pytest.raises(AiloraError, match="failed.json: no 'error'"):
        read_run_record(tmp_path)
    write_record(tmp_path, _record())
    assert read_run_record(tmp_path) == _record()  # results.json wins over an earlier attempt's failed.json


def test_from_train_reads_an_interrupted_run():
    assert from_train({"status": "interrupted", "step": 4, "run_dir": "r"}) == Interrupted(4, "r")
    assert from_train(_record().to_json()) == _record()
    with pytest.raises(AiloraError, match="unknown key 'steps'"):
        from_train({"status": "interrupted", "steps": 4, "run_dir": "r"})


def test_savings_and_step_curves_of_a_record_from_before_progtuning(tmp_path):
    base = RunRecord.from_json(_oldest(_record(steps=20).to_json()), "old")
    run = dataclasses.replace(_record(updated_parameters=10_000, steps=20),
                              config={**CONFIG, "progressive": {"stages": 2}})
    out = savings(run, base)
    assert out["baseline_updated_parameters"] == base.parameters.trainable * 20 == 20_000
    assert out["updated_parameter_saving"] == pytest.approx(0.5) and out["train_time_saving"] is None
    write_record(tmp_path, base)
    curves = read_steps(tmp_path)
    assert curves.loss_steps == [] and curves.eval_steps == [5, 10] and curves.method == "ailora"


def test_a_sweep_of_older_records_still_reports(tmp_path):
    """Records without the keys added since the first format: summary and report as before."""
    spec = SweepSpec.from_dict({"model": "minilm", "tasks": ["sweep-sentiment"], "seeds": [0, 1], "lrs": [1e-3],
                                "methods": ["lora", "ailora"]})
    run_sweep(spec, tmp_path / "s", train_fn=FakeTrain(lambda cfg: (0.8, 0.7 + 0.1 * (cfg.method.name == "lora"))))
    new, report = summarize(tmp_path / "s"), write_report(tmp_path / "s", tmp_path / "new", reference="ailora")
    for f in (tmp_path / "s").rglob("results.json"):
        f.write_text(json.dumps(_oldest(json.loads(f.read_text()))))
    assert summarize(tmp_path / "s") == new
    out = write_report(tmp_path / "s", tmp_path / "old", reference="ailora")
    assert "| lora | 8.0K | **80.00 ± 0.00** | 1e-3 |" in out["table"] and out["table"] == report["table"]
    assert out["comparisons"] == report["comparisons"] and out["verdicts"] == report["verdicts"]
    assert Path(out["markdown"]).is_file()


# Run directories written by earlier versions of the trainer (tiny BERT, tiny-sentiment, 2 epochs):
# the first record format (184a6a8) and the one where Progtuning lived in train.progressive_* (e25e67b).
OLD = Path(__file__).parent / "data" / "records"


@pytest.mark.parametrize("name", ["184a6a8", "e25e67b-plain", "e25e67b-prog"])
def test_run_directories_of_earlier_versions_still_read(name):
    run = OLD / name
    rec = read_complete(run)
    assert rec.train_log is None and rec.before is None and rec.task.label_names is None
    assert rec.epochs == read_epochs(run) and [e.epoch for e in rec.epochs] == [1, 2] and rec.steps == 32
    assert RunRecord.from_json(rec.to_json(), "again") == rec
    curves = read_steps(run)
    assert curves.eval_steps == [16, 32] and curves.loss_steps == [] and curves.method == "ailora"
    assert read_run(run).metrics == {"accuracy": [e.validation["accuracy"] for e in rec.epochs]}
    assert progressive_stages(rec.config) == (2 if name.endswith("prog") else 0)
    assert (rec.updated_parameters is None) == (name == "184a6a8")


def test_savings_between_records_of_an_earlier_version():
    prog, base = read_complete(OLD / "e25e67b-prog"), read_complete(OLD / "e25e67b-plain")
    out = savings(prog, base)
    assert out["updated_parameter_saving"] == pytest.approx(1 - 26688 / 34880, abs=1e-6)
    assert out["baseline_updated_parameters"] == 34880 and out["train_time_saving"] is not None
