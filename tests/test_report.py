"""Reports: Table 1 shape (bold best per column in the metric's direction, Params, lr), md/html/png files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ailora.cli import main
from ailora.errors import AiloraError
from ailora.experiments.progreport import progressive_pairs
from ailora.experiments.report import (
    build_table,
    compare_task,
    fmt_lr,
    fmt_params,
    to_markdown,
    write_report,
)
from ailora.experiments.sweep import SweepSpec, run_sweep, summarize
from ailora.tasks import TaskSpec, register_task
from ailora.tasks.metrics import METRICS, Metric, register_metric
from ailora.train.runrecord import write_record
from tests.records import make_failed
from tests.test_sweep import FakeTrain, _sentiment

if "toy_error" not in METRICS:
    register_metric(Metric("toy_error", False, lambda p, r: sum(a != b for a, b in zip(p, r)) / len(r),
                           "fraction wrong (a lower-is-better metric for tests)"))
register_task(TaskSpec("report-error", "synthetic, scored by an error rate", "classification", ("toy_error",),
                       _sentiment, label_names=("negative", "positive")), replace=True)
register_task(TaskSpec("report-acc", "synthetic, scored by accuracy", "classification", ("accuracy",),
                       _sentiment, label_names=("negative", "positive")), replace=True)

# Test scores per (task, method); lora is best on accuracy, ailora on the lower-is-better error.
SCORES = {("report-acc", "lora"): 0.9, ("report-acc", "ailora"): 0.8,
          ("report-error", "lora"): 0.3, ("report-error", "ailora"): 0.1}


def _sweep(tmp_path, tasks=("report-acc", "report-error"), methods=None):
    spec = SweepSpec.from_dict({"model": "minilm", "tasks": list(tasks), "seeds": [0, 1], "lrs": [1e-3, 2e-3],
                                "methods": methods or ["lora", {"method": "ailora", "options": {"method.rank": 4}}]})
    fake = FakeTrain(lambda cfg: (0.5 + (cfg.train.lr == 2e-3) * 0.1,
                                  SCORES.get((cfg.task.name, cfg.method.name), 0.5) + 0.02 * cfg.train.seed))
    run_sweep(spec, tmp_path / "s", train_fn=fake)
    return tmp_path / "s"


def test_table_bolds_the_best_per_column_in_the_metrics_direction(tmp_path):
    table = build_table(summarize(_sweep(tmp_path)))
    assert table["header"] == ["Method", "Params", "report-acc accuracy", "report-error toy_error",
                               "lr (report-acc / report-error)"]  # no Avg. over opposite directions
    lora, ailora = table["rows"]
    assert lora == ["lora", "8.0K", "91.00 ± 1.41", "31.00 ± 1.41", "2e-3 / 1e-3"]  # error: lower validation wins
    assert ailora[:2] == ["ailora", "4.0K"]
    assert table["bold"][0][2] and not table["bold"][1][2]  # accuracy: higher wins
    assert table["bold"][1][3] and not table["bold"][0][3]  # toy_error: lower wins
    assert not any(table["bold"][0][:2])
    md = to_markdown(table)
    assert "| lora | 8.0K | **91.00 ± 1.41** | 31.00 ± 1.41 | 2e-3 / 1e-3 |" in md


def test_average_column_and_formats(tmp_path):
    register_task(TaskSpec("report-acc2", "synthetic", "classification", ("accuracy",), _sentiment,
                           label_names=("negative", "positive")), replace=True)
    table = build_table(summarize(_sweep(tmp_path, tasks=("report-acc", "report-acc2"))))
    assert table["header"][-2] == "Avg."
    assert table["rows"][0][-2] == "71.00" and table["bold"][0][-2]  # (91 + 51) / 2
    assert fmt_lr(5e-4) == "5e-4" and fmt_lr(2.5e-4) == "2.5e-4" and fmt_lr(None) == "-"
    assert fmt_params(1_234_567) == "1.23M" and fmt_params(999) == "999"


def test_report_writes_markdown_html_and_plots(tmp_path, capsys):
    where = _sweep(tmp_path)
    out = write_report(where)
    md, html = out["markdown"].read_text(), out["html"].read_text()
    assert "| Method | Params |" in md and "**91.00 ± 1.41**" in md and "![curves-report-acc](curves-report-acc.png)" in md
    assert "<b>91.00 ± 1.41</b>" in html and "<th>Params</th>" in html and 'src="curves-report-error.png"' in html
    assert "**2e-3: 60.00 ± 0.00**" in md  # the lr search, selected lr in bold
    for f in out["figures"]:
        assert f.read_bytes()[:4] == b"\x89PNG"
    assert [f.name for f in out["figures"]] == ["curves-report-acc.png", "steps-report-acc.png",
                                                "curves-report-error.png", "steps-report-error.png"]
    assert out["progressive"] is None and "Progtuning" not in md
    assert main(["report", str(where), "--out", str(tmp_path / "elsewhere")]) == 0
    assert "| lora |" in capsys.readouterr().out and (tmp_path / "elsewhere" / "report.html").is_file()


def test_progtuning_runs_are_compared_with_their_plain_twin(tmp_path):
    methods = ["lora", {"method": "lora", "label": "lora-prog", "options": {"progressive.stages": 2}},
               {"method": "ailora", "label": "ailora-prog", "options": {"progressive.stages": 2}}]
    where = _sweep(tmp_path, tasks=("report-acc",), methods=methods)
    assert progressive_pairs(where, summarize(where)) == [
        ("report-acc", "lora-prog", "lora")]  # ailora-prog has no twin
    out = write_report(where)
    assert out["progressive"].startswith("| Task | Progtuning | Baseline |")
    assert "| report-acc | lora-prog | lora | 2e-3 |" in out["progressive"]
    assert "Progtuning against" in out["markdown"].read_text()


# Paired comparisons and convergence in steps.


def _paired_sweep(tmp_path, methods=None):
    """report-acc and report-error, 2 seeds, 100 saved test predictions per run (FakeTrain's)."""
    spec = SweepSpec.from_dict({"model": "minilm", "tasks": ["report-acc", "report-error"], "seeds": [0, 1],
                                "lrs": [1e-3], "methods": methods or ["lora", "ailora"]})
    run_sweep(spec, tmp_path / "s", train_fn=FakeTrain(
        lambda cfg: (0.5, SCORES.get((cfg.task.name, cfg.method.name), 0.5) + 0.02 * cfg.train.seed), n_test=100))
    return tmp_path / "s"


def test_paired_comparisons_mark_a_large_gap_in_the_metrics_direction(tmp_path, capsys):
    where = _paired_sweep(tmp_path)
    summary = summarize(where)
    acc = compare_task(where, summary, "report-acc", "ailora")
    lora = acc["methods"]["lora"]
    assert lora["seeds"]["mean"] == pytest.approx(0.1) and lora["seeds"]["p_t"] == 0.0  # +10 points on both seeds
    assert lora["bootstrap"]["mean"] == pytest.approx(0.1) and lora["bootstrap"]["p"] < 0.01
    assert lora["bootstrap"]["n_examples"] == 100 and lora["verdict"] == "better"
    assert lora["basis"] == ["seeds", "examples"] and acc["methods"]["ailora"]["seeds"] is None
    err = compare_task(where, summary, "report-error", "ailora")["methods"]["lora"]
    assert err["seeds"]["mean"] == pytest.approx(0.2) and err["verdict"] == "worse"  # a higher error is worse
    assert lora["steps_to"] == {"mean": 10.0, "std": 0.0, "n": 2}  # validation 0.25 at step 5, 0.5 at step 10
    out = write_report(where)
    row = next(r for r in out["comparisons"].splitlines() if r.startswith("| report-acc accuracy | lora"))
    assert "| +10.00 [+10.00, +10.00] | <0.001 |" in row and "| **better (seeds, examples)** | 10 ± 0 |" in row
    assert out["verdicts"][0].startswith("report-acc (2 seeds, 100 test examples): lora is better than ailora "
                                         "by 10.00 points (significant over seeds and over test examples)")
    assert "report-error (2 seeds, 100 test examples): lora is worse than ailora by 20.00 points" in out["verdicts"][1]
    md = out["markdown"].read_text()
    assert "## Paired comparisons against ailora" in md and "![steps-report-acc](steps-report-acc.png)" in md
    assert "Paired comparisons against ailora" in out["html"].read_text()
    assert (where / "report" / "steps-report-acc.png").read_bytes()[:4] == b"\x89PNG"


def test_identical_methods_do_not_differ_and_reference_is_checked(tmp_path, capsys):
    twin = {"method": "lora", "label": "lora-twin"}  # the same scores and predictions as lora
    where = _paired_sweep(tmp_path, methods=["lora", twin, "ailora"])
    c = compare_task(where, summarize(where), "report-acc", "lora")["methods"]["lora-twin"]
    assert c["seeds"]["mean"] == 0.0 and c["seeds"]["p_t"] == 1.0
    assert c["bootstrap"]["mean"] == 0.0 and c["bootstrap"]["p"] == 1.0 and c["verdict"] == "none"
    assert main(["report", str(where), "--reference", "lora"]) == 0
    printed = capsys.readouterr().out
    assert "Paired comparisons against lora" in printed and "lora-twin cannot be told apart from lora" in printed
    with pytest.raises(AiloraError, match="--reference 'pissa' is not a method of this sweep"):
        write_report(where, tmp_path / "r", reference="pissa")
    assert not (tmp_path / "r").exists()
    assert main(["report", str(where), "--reference", "pissa"]) == 2


def test_without_the_default_reference_or_predictions(tmp_path):
    where = _paired_sweep(tmp_path, methods=["lora", "pissa"])
    out = write_report(where)
    assert out["comparisons"] is None and out["verdicts"] == [] and "Paired" not in out["markdown"].read_text()
    fake_only = _sweep(tmp_path / "b")  # FakeTrain without saved predictions: over seeds only
    out = write_report(fake_only)
    assert "no saved test predictions" in out["comparisons"]
    # Predictions that do not reproduce the recorded score are refused, not bootstrapped.
    run = Path(where) / "report-acc/lora/lr0.001/seed0/predictions/test-step10.jsonl"
    run.write_text(run.read_text().replace('"prediction": 0', '"prediction": 1'))
    out = write_report(where, reference="lora")
    assert "saved predictions do not reproduce the recorded test score" in out["comparisons"]


def test_a_method_whose_runs_all_failed_is_not_called_indistinguishable(tmp_path, capsys):
    """Every run of "broken" stopped on a non-finite loss: the report says it has no finished runs,
    never that it cannot be told apart from the reference."""
    from ailora.errors import TrainingFailedError

    fake = FakeTrain(lambda cfg: (0.5, SCORES.get((cfg.task.name, cfg.method.name), 0.5) + 0.02 * cfg.train.seed),
                     n_test=100)

    def train_fn(cfg):
        if "/broken/" in cfg.run_dir:
            Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
            write_record(cfg.run_dir, make_failed(cfg.to_dict(), 3))
            raise TrainingFailedError("loss is not finite at step 3", 3)
        return fake(cfg)

    spec = SweepSpec.from_dict({"model": "minilm", "tasks": ["report-acc"], "seeds": [0, 1], "lrs": [1e-3],
                                "methods": ["lora", "ailora", {"method": "lora", "label": "broken"}]})
    run_sweep(spec, tmp_path / "s", train_fn=train_fn)
    summary = summarize(tmp_path / "s")
    assert len(summary["runs"]["failed"]) == 2
    c = compare_task(tmp_path / "s", summary, "report-acc", "ailora")
    assert c["methods"]["broken"]["verdict"] == "no finished runs"
    out = write_report(tmp_path / "s")
    assert "broken cannot be told apart" not in out["verdicts"][0]
    assert "broken cannot be compared (no finished runs)" in out["verdicts"][0]
    row = next(r for r in out["comparisons"].splitlines() if r.startswith("| report-acc accuracy | broken"))
    assert "| no finished runs |" in row
