"""Sweeps: lr selection on validation, test mean ± std, resumability, bad inputs, presets, one real tiny sweep."""

from __future__ import annotations

import json
import random
import shutil
import statistics
from pathlib import Path

import pytest

from ailora.cli import main
from ailora.errors import AiloraError
from ailora.experiments.grids import bracketed, next_lr
from ailora.experiments.presets import PRESETS, run_count
from ailora.experiments.report import lr_search, write_report
from ailora.experiments.sweep import (
    SweepSpec,
    compose,
    plan,
    prepare_sweep_dir,
    run_state,
    run_sweep,
    select_lr,
)
from ailora.tasks import TaskSpec, get_task, register_task
from ailora.tasks.metrics import get_metric
from ailora.train import record
from ailora.train.runrecord import Parameters, TaskInfo, write_epochs, write_record
from tests.records import make_record
from tests.tiny_models import save_tiny_bert

POS, NEG = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]


def _sentiment(spec, data_dir, n=96):
    rng = random.Random(0)
    rows = [{"text": f"the film was {rng.choice(POS if i % 2 else NEG)}", "label": i % 2} for i in range(n)]
    return {"all": rows}


register_task(TaskSpec("sweep-sentiment", "synthetic two-class sentiment", "classification", ("accuracy",),
                       _sentiment, label_names=("negative", "positive"), validation_size=16, test_size=16),
              replace=True)

# Known validation and test accuracies per (method, lr); seed s adds 0.01 s and 0.04 s. Test favours
# the lrs that validation rejects, so selecting on test would show.
VAL = {("lora", 1e-3): 0.80, ("lora", 2e-3): 0.70, ("ailora", 1e-4): 0.75, ("ailora", 5e-4): 0.85}
TEST = {("lora", 1e-3): 0.78, ("lora", 2e-3): 0.99, ("ailora", 1e-4): 0.99, ("ailora", 5e-4): 0.88}


def fake_predictions(cfg, task, test: float, n: int) -> dict:
    """Test predictions (labels i % 2) that score ``test`` on the main metric: the first ones right;
    written to predictions/test-step10.jsonl. Returns every metric recomputed from them."""
    refs = [i % 2 for i in range(n)]
    metric = get_metric(task.main_metric)
    right = round((test if metric.higher_is_better else 1 - test) * n)
    preds = [r if i < right else 1 - r for i, r in enumerate(refs)]
    record.write_jsonl(Path(cfg.run_dir) / "predictions" / "test-step10.jsonl",
                       [{"input": f"x{i}", "reference": r, "prediction": q} for i, (r, q) in enumerate(zip(refs, preds))])
    return {m: get_metric(m).compute(preds, refs) for m in task.metrics}


def fake_results(cfg, val: float, test: float, n_test: int = 0) -> dict:
    """What ``train`` writes and returns, with the given scores (results.json, config.json,
    metrics.jsonl); with ``n_test``, test predictions too (``fake_predictions``). Validations at steps 5 and 10."""
    d = Path(cfg.run_dir)
    if cfg.overwrite and d.exists():
        shutil.rmtree(d)
    task = get_task(cfg.task.name)
    tests = fake_predictions(cfg, task, test, n_test) if n_test else {m: test for m in task.metrics}
    info = TaskInfo(task.name, task.kind, tuple(task.metrics), task.main_metric, {"train": 64, "test": n_test},
                    task.label_names)
    rec = make_record(cfg.to_dict(), info, {m: val for m in task.metrics}, tests,
                      parameters=Parameters(1000 * cfg.method.options.rank, 10**6, 0.1 * cfg.method.options.rank))
    record.write_json(d / "config.json", rec.config)
    write_epochs(d, [e.to_json() for e in rec.epochs])
    return write_record(d, rec)


class FakeTrain:
    def __init__(self, scores=None, n_test: int = 0):
        self.calls, self.n_test = [], n_test
        self.scores = scores or (lambda cfg: (VAL[cfg.method.name, cfg.train.lr] + 0.01 * cfg.train.seed,
                                              TEST[cfg.method.name, cfg.train.lr] + 0.04 * cfg.train.seed))

    def __call__(self, cfg):
        self.calls.append(cfg)
        return fake_results(cfg, *self.scores(cfg), n_test=self.n_test)


def _spec(**kw) -> SweepSpec:
    data = {"model": "minilm", "tasks": ["sweep-sentiment"], "seeds": [0, 1], "options": {"train.epochs": 2},
            "methods": [{"method": "lora", "lrs": [1e-3, 2e-3]}, {"method": "ailora", "lrs": [1e-4, 5e-4]}]}
    return SweepSpec.from_dict({**data, **kw})


def test_selects_lr_on_validation_and_reports_test_mean_std(tmp_path):
    fake = FakeTrain()
    summary = run_sweep(_spec(), tmp_path / "s", train_fn=fake)
    assert len(fake.calls) == 8 and {c.train.seed for c in fake.calls} == {0, 1}
    assert fake.calls[0].run_dir == str(tmp_path / "s" / "sweep-sentiment" / "lora" / "lr0.001" / "seed0")
    assert all(c.train.epochs == 2 for c in fake.calls)
    methods = summary["tasks"]["sweep-sentiment"]["methods"]
    assert methods["lora"]["selected_lr"] == 1e-3 and methods["ailora"]["selected_lr"] == 5e-4
    lora = methods["lora"]
    assert lora["test"]["accuracy"]["mean"] == pytest.approx(0.80)
    assert lora["test"]["accuracy"]["std"] == pytest.approx(statistics.stdev([0.78, 0.82]))
    assert lora["test"]["accuracy"]["n"] == 2
    assert lora["validation"]["mean"] == pytest.approx(0.805)
    assert [g["validation"]["mean"] for g in lora["grid"]] == pytest.approx([0.805, 0.705])
    assert methods["ailora"]["test"]["accuracy"]["mean"] == pytest.approx(0.90)
    assert lora["params"]["trainable"] == 8000 and lora["complete"]
    assert lora["wall_seconds"] == {"per_run_at_selected_lr": 2.0, "all_runs": 8.0}
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["tasks"] == summary["tasks"]
    assert json.loads((tmp_path / "s" / "sweep.json").read_text()) == _spec().to_dict()


def test_selection_direction_nan_and_ties():
    grid = [{"lr": lr, "validation": {"mean": v}} for lr, v in [(1, 0.3), (2, float("nan")), (3, 0.1), (4, 0.1)]]
    assert select_lr(grid, higher_is_better=True)["lr"] == 1
    assert select_lr(grid, higher_is_better=False)["lr"] == 3  # the tie keeps the earlier lr
    assert select_lr([{"lr": 1, "validation": {"mean": None}}], True) is None


def test_resumable(tmp_path):
    where = tmp_path / "s"
    run_sweep(_spec(), where, train_fn=FakeTrain())
    again = FakeTrain()
    run_sweep(_spec(), where, train_fn=again)
    assert again.calls == []
    (where / "sweep-sentiment" / "ailora" / "lr0.0001" / "seed1" / "results.json").unlink()
    run_sweep(_spec(), where, train_fn=again)
    assert [c.run_dir for c in again.calls] == [str(where / "sweep-sentiment/ailora/lr0.0001/seed1")]
    assert not again.calls[0].resume and again.calls[0].overwrite  # partial, no checkpoint: start again
    # A run killed after a checkpoint is resumed by the harness.
    (where / "sweep-sentiment" / "lora" / "lr0.002" / "seed0" / "results.json").unlink()
    record.write_json(where / "sweep-sentiment" / "lora" / "lr0.002" / "seed0" / "checkpoints" / "last.pt", {})
    assert run_state(where / "sweep-sentiment" / "lora" / "lr0.002" / "seed0") == "resume"
    run_sweep(_spec(), where, train_fn=again)
    assert again.calls[-1].resume and not again.calls[-1].overwrite and len(again.calls) == 2
    # Run-control options (progress bars) do not make a different sweep.
    run_sweep(compose(_spec().to_dict(), overrides=["train.progress=false"]), where, train_fn=again)
    assert len(again.calls) == 2


@pytest.mark.parametrize("change, message", [
    ({"methods": [{"method": "lora", "lrs": []}]}, "empty learning-rate grid"),
    ({"methods": ["lora"]}, "empty learning-rate grid"),
    ({"methods": [{"method": "lora", "lrs": [-1e-3]}]}, "positive numbers"),
    ({"methods": [{"method": "nope", "lrs": [1e-3]}]}, "unknown method 'nope'"),
    ({"tasks": ["sweep-sentiment", "no-such-task"]}, "no-such-task"),
    ({"options": {"train.epoch": 2}}, "unknown config key train.epoch"),
    ({"options": {"train.lr": 2e-4}}, "sets train.lr"),
    ({"options": {"train.epochs": "two"}}, "train.epochs must be an integer"),
    ({"seeds": []}, "seeds must be"),
    ({"methods": ["lora", {"method": "lora", "lrs": [1e-3]}], "lrs": [1e-3]}, "twice"),
    ({"methods": [{"method": "ailora", "lrs": [1e-3], "options": {"method.policy": "query=middle"}}]}, "unknown init"),
    ({"colour": "blue"}, "unknown key 'colour'"),
])
def test_bad_specs_fail_before_anything_runs(tmp_path, change, message):
    fake = FakeTrain()
    with pytest.raises(AiloraError, match=message):
        run_sweep(_spec(**change), tmp_path / "s", train_fn=fake)
    assert fake.calls == [] and not (tmp_path / "s").exists()


def test_a_directory_holding_another_sweep_is_refused_unless_overwrite(tmp_path):
    where = tmp_path / "s"
    run_sweep(_spec(), where, train_fn=FakeTrain())
    other = _spec(seeds=[0])
    with pytest.raises(AiloraError, match="holds a different sweep .*seeds.*--overwrite"):
        run_sweep(other, where, train_fn=FakeTrain())
    fake = FakeTrain()
    run_sweep(other, where, overwrite=True, train_fn=fake)
    assert len(fake.calls) == 4 and not (where / "sweep-sentiment" / "lora" / "lr0.001" / "seed1").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(AiloraError, match="holds no sweep.json"):
        run_sweep(other, tmp_path / "busy", overwrite=True, train_fn=fake)


def test_compose_and_cli(tmp_path, monkeypatch, capsys):
    spec = compose(PRESETS["demo"].spec(), methods=["lora", "reailora"], lrs=[3e-4], seeds=[1, 2],
                   overrides=["train.epochs=1"])
    assert [(m.label, m.lrs) for m in spec.methods] == [("lora", (3e-4,)), ("reailora", (3e-4,))]
    assert spec.options["train.epochs"] == 1 and spec.seeds == (1, 2)
    with pytest.raises(AiloraError, match="unknown config key"):
        compose({}, tasks=["sweep-sentiment"], methods=["lora"], lrs=[1e-3], overrides=["train.nope=1"])

    fake = FakeTrain(lambda cfg: (0.5, 0.6))
    monkeypatch.setattr("ailora.experiments.sweep._default_train", fake)
    where = str(tmp_path / "cli")
    args = ["sweep", "--dir", where, "--tasks", "sweep-sentiment", "--methods", "lora,ailora", "--lrs", "1e-3",
            "--seeds", "0", "train.epochs=1"]
    assert main(args + ["--dry-run"]) == 0 and "2 runs" in capsys.readouterr().out and fake.calls == []
    assert main(args) == 0
    out = capsys.readouterr().out
    assert len(fake.calls) == 2 and "| lora | 8.0K | **60.00** | 1e-3 |" in out and "summary.json" in out
    assert main(["sweep", "--dir", where, "--methods", "nope", "--tasks", "sweep-sentiment", "--lrs", "1"]) == 2
    assert "error: " in capsys.readouterr().err


def test_presets_plan_valid_runs(tmp_path):
    for preset in PRESETS.values():
        spec = compose(preset.spec())
        runs = plan(spec, tmp_path / preset.name)  # builds and validates every run's config
        assert len(runs) == run_count(preset.spec())
    ranks = PRESETS["ranks"].spec()
    assert [m["label"] for m in ranks["methods"]][:6] == [f"lora-r{r}" for r in (1, 2, 4, 8, 16, 32)]
    modules = {m["label"]: m["options"] for m in PRESETS["modules"].spec()["methods"]}
    assert modules["qv-r8"] == {"method.rank": 8, "method.targets": ["query", "value"]}
    assert modules["qkvo-r4"]["method.policy"] == "key=lora,output=lora"
    assert PRESETS["demo"].spec("mymodel", "trec")["tasks"] == ["trec"]
    assert len(PRESETS["demo"].spec()["methods"]) == 4


# One real sweep on a tiny BERT, interrupted and continued.


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), 2)


def test_real_tiny_sweep_is_interrupted_and_continued(bert_dir, tmp_path):
    data = {"model": str(bert_dir), "tasks": ["sweep-sentiment"], "seeds": [0, 1], "lrs": [3e-2],
            "methods": ["lora", "ailora"],
            "options": {"model.max_length": 16, "method.rank": 2, "train.epochs": 2, "train.batch_size": 16,
                        "train.progress": False, "train.tensorboard": False, "train.eval_every_steps": 2}}
    where = tmp_path / "real"
    stopped = compose(data, overrides=["train.stop_after_steps=2"])
    summary = run_sweep(stopped, where)
    assert summary["runs"]["complete"] == 0
    assert all(run_state(p) == "resume" for p in where.glob("sweep-sentiment/*/*/seed*"))
    lines = []
    summary = run_sweep(SweepSpec.from_dict(data), where, log=lines.append)
    assert summary["runs"] == {"planned": 4, "complete": 4, "failed": []} and sum("resuming" in x for x in lines) == 4
    for label in ("lora", "ailora"):
        m = summary["tasks"]["sweep-sentiment"]["methods"][label]
        assert m["selected_lr"] == 3e-2 and m["test"]["accuracy"]["n"] == 2 and m["params"]["trainable"] > 0
        res = json.loads((where / m["runs"][0] / "results.json").read_text())
        assert res["resumed"] and res["config"]["train"]["epochs"] == 2
        # 4 steps an epoch: validations every 2 steps, the epoch ends reuse theirs (no second one).
        assert [e["step"] for e in res["evaluations"]] == [2, 4, 6, 8]
        assert [r["step"] for r in res["train_log"]] == [4, 8]  # LOG_EVERY > 4: intervals cut at epoch ends
    # The report on real runs: the saved test predictions reproduce the recorded scores (else a note).
    out = write_report(where)
    boot = out["comparisons"].splitlines()[2].split(" | ")
    assert boot[1] == "lora" and "[" in boot[6] and "predictions" not in out["comparisons"]
    assert [f.name for f in out["figures"]] == ["curves-sweep-sentiment.png", "steps-sweep-sentiment.png"]
    assert out["verdicts"][0].startswith("sweep-sentiment (2 seeds, 16 test examples): ")


def test_demo_selects_among_two_lrs_and_prints_the_paired_verdict(tmp_path, monkeypatch, capsys):
    demo = PRESETS["demo"].spec()
    assert demo["lrs"] == [1e-3, 2e-3] and demo["options"]["train.eval_every_steps"] > 0 and demo["seeds"] == [0]
    test = {"lora": 0.9, "pissa": 0.8, "milora": 0.8, "ailora": 0.8}
    fake = FakeTrain(lambda cfg: (0.5 + 0.1 * (cfg.train.lr == 2e-3), test[cfg.method.name]), n_test=100)
    monkeypatch.setattr("ailora.experiments.sweep._default_train", fake)
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert len(fake.calls) == 8 and "| lora | 8.0K | **90.00** | 2e-3 |" in out
    assert ("paired verdict, movie-sentiment (1 seed, 100 test examples): lora is better than ailora by 10.00 "
            "points (significant over test examples); pissa, milora cannot be told apart from ailora") in out


# Learning-rate grids that bracket the optimum (spec "bracket"); locks per run directory.


def _peaked(cfg):
    """Validation accuracy peaking at lr 8e-3 (a grid of 1e-3, 2e-3 selects its top edge); test = val."""
    import math

    score = 0.9 - 0.05 * math.log2(cfg.train.lr / 8e-3) ** 2
    return score, score


def test_bracketing_extends_a_grid_selected_at_its_top_edge_until_interior(tmp_path):
    fake = FakeTrain(_peaked)
    spec = _spec(methods=[{"method": "lora", "lrs": [1e-3, 2e-3]}], seeds=[0], bracket=5)
    summary = run_sweep(spec, tmp_path / "s", train_fn=fake)
    lora = summary["tasks"]["sweep-sentiment"]["methods"]["lora"]
    assert [(g["lr"], g.get("extended", False)) for g in lora["grid"]] == [
        (1e-3, False), (2e-3, False), (4e-3, True), (8e-3, True), (1.6e-2, True)]
    assert lora["selected_lr"] == 8e-3 and lora["complete"] and len(fake.calls) == 5
    again = FakeTrain(_peaked)
    run_sweep(spec, tmp_path / "s", train_fn=again)  # resumed: the extensions are found, nothing redone
    assert again.calls == []
    search = dict(lr_search(summary))
    assert "edge" not in next(iter(search)) and "1.6e-2 (added)" in next(iter(search.values()))[-1][0]


def test_bracketing_stops_at_its_bound_and_the_report_says_the_selection_is_at_the_edge(tmp_path):
    spec = _spec(methods=[{"method": "lora", "lrs": [1e-3, 2e-3]}], seeds=[0], bracket=1)
    summary = run_sweep(spec, tmp_path / "s", train_fn=FakeTrain(_peaked))
    lora = summary["tasks"]["sweep-sentiment"]["methods"]["lora"]
    assert [g["lr"] for g in lora["grid"]] == [1e-3, 2e-3, 4e-3] and lora["selected_lr"] == 4e-3
    (title, entries), = lr_search(summary)
    assert title.endswith("(selected at the edge of its grid: its best lr may lie beyond)")
    assert [sel for _, sel in entries] == [False, False, True] and entries[2][0].startswith("4e-3 (added)")


@pytest.mark.parametrize("lrs, scores, expected", [
    ([1e-3, 2e-3, 4e-3], [0.1, 0.2, 0.3], 8e-3),          # top edge: the grid's own ratio
    ([2e-4, 5e-4], [0.3, 0.1], 8e-5),                      # bottom edge: / 2.5
    ([1e-3, 2e-3, 4e-3], [0.1, 0.3, 0.2], None),          # interior
    ([1e-3], [0.5], 2e-3),                                 # one point: x 2
    ([1e-3, 2e-3], [float("nan"), None], None),            # nothing selected
])
def test_next_lr(lrs, scores, expected):
    assert next_lr(lrs, scores, higher=True) == expected


def test_a_lower_is_better_metric_extends_the_other_way():
    assert bracketed((1e-3, 2e-3), 1, lambda lr: -{1e-3: 0.1, 2e-3: 0.5}[lr]) == (1e-3, 2e-3, 5e-4)
    assert bracketed((1e-3, 2e-3), 3, lambda lr: False) == (1e-3, 2e-3)  # runs unfinished: nothing decided


def test_a_bad_bracket_is_one_line_before_anything_runs(tmp_path):
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(AiloraError, match="^bracket must be how many lrs"):
            run_sweep(_spec(bracket=bad), tmp_path / "s", train_fn=FakeTrain())
    assert not (tmp_path / "s").exists()


def test_a_run_held_by_a_live_process_is_waited_for_and_a_dead_holder_is_taken_over(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from ailora.experiments import executors
    from ailora.experiments.locks import Holder, RunLock, lock_path, try_lock

    monkeypatch.setattr(executors, "BUSY_POLL", 0.05)
    spec = _spec(methods=[{"method": "lora", "lrs": [1e-3]}], seeds=[0])
    run = tmp_path / "s" / "sweep-sentiment" / "lora" / "lr0.001" / "seed0"
    prepare_sweep_dir(spec, tmp_path / "s")  # as another driver of the same sweep would have
    held = try_lock(run)
    assert isinstance(held, RunLock)
    assert isinstance(try_lock(run), Holder)  # a second taker sees the live holder
    lines, fake = [], FakeTrain()
    timer = __import__("threading").Timer(0.3, held.release)
    timer.start()
    run_sweep(spec, tmp_path / "s", train_fn=fake, log=lines.append)
    assert len(fake.calls) == 1 and any(f"held by process {os.getpid()}" in x for x in lines)
    assert not lock_path(run).exists()
    # A holder that died without removing its lock (SIGKILL): its lock is stale, taken over at once.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path(run).write_text(json.dumps({**Holder.me().__dict__, "pid": int(dead.stdout)}))
    taken = try_lock(run)
    assert not isinstance(taken, Holder) and json.loads(lock_path(run).read_text())["pid"] == os.getpid()
    taken.release()
    # Another host's lock counts as held until its heartbeat is older than the stale limit.
    lock_path(run).write_text(json.dumps({**Holder.me().__dict__, "host": "elsewhere"}))
    assert isinstance(try_lock(run, stale_after=60), Holder)
    os.utime(lock_path(run), (1, 1))
    assert not isinstance(got := try_lock(run, stale_after=60), Holder)
    got.release()


def test_the_report_of_a_running_sweep_says_what_is_not_finished(tmp_path):
    from ailora.experiments.locks import try_lock
    from ailora.experiments.report import unfinished
    from ailora.experiments.sweep import summarize

    where = tmp_path / "s"
    run_sweep(_spec(), where, train_fn=FakeTrain())
    assert unfinished(where, summarize(where)) is None
    for seed in (0, 1):
        (where / f"sweep-sentiment/lora/lr0.001/seed{seed}/results.json").unlink()
    held = try_lock(where / "sweep-sentiment/lora/lr0.001/seed1")
    summary = summarize(where)
    assert summary["runs"]["complete"] == 6 and not summary["tasks"]["sweep-sentiment"]["methods"]["lora"]["complete"]
    assert unfinished(where, summary) == (
        "Not finished: 2 run(s) not complete (1 running now: sweep-sentiment/lora/lr0.001/seed1); the tables hold "
        "the finished runs only, and a grid's selection may change when they finish.")
    held.release()


def test_a_second_driver_takes_a_first_drivers_transient_files_for_no_foreign_sweep(tmp_path):
    """Two drivers started at once on a new directory: the files one leaves there for a moment (its
    storage check, its writability probe, sweep.json being written) do not make the other refuse the
    directory as a foreign one; any other file still does."""
    from ailora.experiments.sweep import SweepSpec, prepare_sweep_dir

    d = tmp_path / "s"
    d.mkdir()
    for name in (".ailora-storage-check-0a1b", ".sweep.json.tmp-xyz", ".s.tmp-abc"):
        (d / name).write_text("x")
    spec = SweepSpec.from_dict({"model": "minilm", "tasks": ["movie-sentiment"], "methods": ["lora"],
                                        "seeds": [0], "lrs": [1e-3]})
    prepare_sweep_dir(spec, d)
    assert (d / "sweep.json").is_file()
    other = tmp_path / "t"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(AiloraError, match="is not empty and holds no sweep.json"):
        prepare_sweep_dir(spec, other)
