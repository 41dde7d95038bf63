"""The report of a sweep: the paper's Table 1 in Markdown and HTML, and its Figure 3 as PNGs.

Table: one row per method label, one column per (task, metric) with the TEST mean ± standard
deviation over seeds at the learning rate selected on validation (``ailora.experiments.sweep``), the best
mean of each column in bold (the metric's ``higher_is_better`` decides), a Params column
(trainable parameters, adapters and task head, as in the paper's Table 4), an Avg. column over
tasks' main metrics when there are several, and the selected lr. Scores are printed x 100.
Figures: training loss and validation main metric per epoch, per task, one line per method
(mean over seeds, each seed faint), drawn by ``ailora.analysis`` (``read_run``, ``plot_curves``).
Runs with Progtuning (``progressive.stages`` > 1) are compared with the run of the
same config without it when the sweep has one (``ailora.train.progressive.savings``, seed by seed).

Paired comparisons (``compare_task``): each method against a reference method (default ``ailora``)
on every task, seed by seed at their selected lrs: the mean test difference with a t interval, the
paired t-test and Wilcoxon over seeds, and a paired bootstrap over the saved test predictions
(RUN_DIR/predictions/test-step<N>.jsonl; ``ailora.experiments.stats``), marked significant at
p < 0.05, with one sentence per task on what can and cannot be concluded (``verdict_line``).
Convergence in steps: validation main metric and training loss per logging interval against
optimizer steps (mean and min-max band over seeds; steps-<task>.png), and the steps each run took
to reach 95% of its best validation score (``ailora.analysis.curves.steps_to_fraction``).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from ailora.analysis.curves import StepCurves, band, mean_by_method, read_run, read_steps, steps_to_fraction
from ailora.analysis.plots import plot_curves, plot_step_curves, save_figure
from ailora.core.files import require_writable, write_text
from ailora.errors import AiloraError
from ailora.experiments.grids import at_edge, fmt_lr
from ailora.experiments.locks import STALE_AFTER, lock_path, read_holder
from ailora.experiments.progreport import PROG_TITLE, progressive_table
from ailora.experiments.stats import ALPHA, RESAMPLES, paired_bootstrap, paired_seeds, significant
from ailora.experiments.sweep import SweepSpec, mean_std, planned_runs, summarize, task_dir
from ailora.tasks.metrics import get_metric, is_better
from ailora.train.loop import PREDICTIONS
from ailora.train.runrecord import RunRecord, read_complete

REPORT_DIR = "report"
REFERENCE = "ailora"  # the method every other one is compared with (``--reference``)
CONVERGENCE = 0.95  # "steps to reach 95% of the run's best validation score"


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def _fmt(stats: dict | None, seeds: int) -> str:
    if not stats or stats["mean"] is None:
        return "-"
    text = f"{100 * stats['mean']:.2f}"
    if stats["n"] > 1:
        text += f" ± {100 * stats['std']:.2f}"
    return text + (f" (n={stats['n']})" if stats["n"] < seeds else "")


def _best(values: list[float | None], higher: bool) -> float | None:
    best = None
    for v in values:
        if is_better(v, best, higher):
            best = v
    return best


def build_table(summary: dict) -> dict:
    """``{"header": [...], "rows": [[text, ...]], "bold": [[bool, ...]]}``: the paper's Table 1 shape."""
    spec, tasks = summary["spec"], summary["tasks"]
    labels = [m["label"] for m in spec["methods"]]
    seeds = len(spec["seeds"])
    columns = [(t, m) for t in spec["tasks"] for m in tasks[t].get("metrics", [])]
    header = ["Method", "Params"] + [f"{t} {m}" for t, m in columns]
    means = {c: [_mean(tasks[c[0]]["methods"][lb]["test"].get(c[1])) for lb in labels] for c in columns}
    higher = {c: tasks[c[0]]["higher_is_better"] for c in columns}
    mains = [(t, tasks[t]["main_metric"]) for t in spec["tasks"] if "main_metric" in tasks[t]]
    average = len(mains) > 1 and len({higher[c] for c in mains}) == 1
    if average:
        header.append("Avg.")
        means["avg"] = [_avg([means[c][i] for c in mains]) for i in range(len(labels))]
        higher["avg"] = higher[mains[0]]
    header.append("lr" if len(spec["tasks"]) == 1 else "lr (" + " / ".join(spec["tasks"]) + ")")
    best = {c: _best(v, higher[c]) for c, v in means.items()}
    rows, bold = [], []
    for i, label in enumerate(labels):
        per_task = [tasks[t]["methods"].get(label, {}) for t in spec["tasks"]]
        params = list(dict.fromkeys(fmt_params(m["params"]["trainable"]) for m in per_task if m.get("params")))
        row = [label, " / ".join(params) or "-"]
        row += [_fmt(tasks[t]["methods"][label]["test"].get(m), seeds) for t, m in columns]
        flags = [False, False] + [means[c][i] is not None and means[c][i] == best[c] for c in columns]
        if average:
            row.append("-" if means["avg"][i] is None else f"{100 * means['avg'][i]:.2f}")
            flags.append(means["avg"][i] is not None and means["avg"][i] == best["avg"])
        row.append(" / ".join(fmt_lr(m.get("selected_lr")) for m in per_task))
        rows.append(row)
        bold.append(flags + [False])
    return {"header": header, "rows": rows, "bold": bold}


def _mean(stats: dict | None) -> float | None:
    return None if not stats else stats["mean"]


def _avg(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(values) / len(values)


def to_markdown(table: dict) -> str:
    def line(cells):
        return "| " + " | ".join(cells) + " |"

    rows = [[f"**{c}**" if b else c for c, b in zip(row, flags)] for row, flags in zip(table["rows"], table["bold"])]
    return "\n".join([line(table["header"]), line(["---"] * len(table["header"]))] + [line(r) for r in rows]) + "\n"


def to_html_table(table: dict) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table["header"])
    body = "".join(
        "<tr>" + "".join(f"<td>{'<b>' if b else ''}{html.escape(c)}{'</b>' if b else ''}</td>"
                         for c, b in zip(row, flags)) + "</tr>\n"
        for row, flags in zip(table["rows"], table["bold"]))
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def lr_search(summary: dict) -> list[tuple[str, list[tuple[str, bool]]]]:
    """Per task and method: (title, [(lr: validation mean ± std, selected?) per lr of the grid]);
    a point added by bracketing is marked "(added)", a selection at the grid's edge is said."""
    out = []
    seeds = len(summary["spec"]["seeds"])
    for task, info in summary["tasks"].items():
        for label, m in info["methods"].items():
            entries = [(f"{fmt_lr(g['lr'])}{' (added)' if g.get('extended') else ''}: "
                        f"{_fmt(g['validation'], seeds)}", g["lr"] == m["selected_lr"]) for g in m["grid"]]
            edge = at_edge([g["lr"] for g in m["grid"]], m["selected_lr"])
            out.append((f"{task}, {label} (validation {info['main_metric']})"
                        + (" (selected at the edge of its grid: its best lr may lie beyond)" if edge else ""),
                        entries))
    return out


# Figures.


def curves_figure(sweep_dir, summary: dict, task: str):
    """Loss and validation main metric per epoch of each method's runs at its selected lr (Fig. 3)."""
    info = summary["tasks"][task]
    main = info["main_metric"]
    runs = []
    for label, m in info["methods"].items():
        for path in m["runs"]:
            run = read_run(Path(sweep_dir) / path)
            run.method = label  # the row's label, not the method name (ranks share a method)
            runs.append(run)
    if not runs:
        return None
    means = mean_by_method(runs, main)
    series = [{"method": r.method, "epochs": r.epochs, "train_loss": r.train_loss,
               "metric": r.metrics.get(main, [None] * len(r.epochs))} for r in runs]
    fig = plot_curves(means, series, f"validation {main}")
    fig.suptitle(f"{task}: {summary['spec']['model']}, lr selected per method")
    return fig


# Progtuning.


def _results(sweep_dir, path: str) -> RunRecord:
    return read_complete(Path(sweep_dir) / path)


# Paired comparisons and convergence in steps.


def _step_runs(sweep_dir, info: dict) -> dict[str, list[StepCurves]]:
    """Per method label, the step-level curves of its runs at the selected lr (those with a results.json)."""
    return {label: [read_steps(Path(sweep_dir) / p, label) for p in m["runs"]] for label, m in info["methods"].items()}


def steps_figure(task: str, main: str, runs: dict[str, list[StepCurves]], model: str):
    """Training loss per logging interval and validation ``main`` against optimizer steps, mean and
    min-max band over seeds; None when no run recorded step-level curves."""
    loss = {lb: band([(r.loss_steps, r.train_loss) for r in rs]) for lb, rs in runs.items()}
    metric = {lb: band([(r.eval_steps, r.metrics.get(main, [])) for r in rs]) for lb, rs in runs.items()}
    if not any(b["steps"] for b in (*loss.values(), *metric.values())):
        return None
    fig = plot_step_curves(loss, metric, main)
    fig.suptitle(f"{task}: {model}, lr selected per method, by optimizer step (band: min-max over seeds)")
    return fig


def _test_predictions(sweep_dir, path: str, res: RunRecord) -> list[dict] | None:
    f = Path(sweep_dir) / path / PREDICTIONS / f"test-step{res.steps}.jsonl"
    if not f.is_file():
        return None
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def _bootstrap(sweep_dir, main: str, pairs: list[tuple], resamples: int) -> dict:
    """The paired bootstrap over test examples of one method against the reference, seed by seed;
    {"note": why not} when the saved predictions cannot support it."""
    rows = [(_test_predictions(sweep_dir, pa, ra), _test_predictions(sweep_dir, pb, rb), ra, rb)
            for (pa, ra), (pb, rb) in pairs]
    if not rows or any(a is None or b is None for a, b, _, _ in rows):
        return {"note": "no saved test predictions"}
    labels = [r["reference"] for r in rows[0][0]]
    if any([r["reference"] for r in x] != labels for a, b, _, _ in rows for x in (a, b)):
        return {"note": "the runs' test sets differ"}
    metric = get_metric(main).fn
    for preds, res in ((x, r) for a, b, ra, rb in rows for x, r in ((a, ra), (b, rb))):
        if not math.isclose(metric([r["prediction"] for r in preds], labels), res.test[main], abs_tol=1e-6):
            return {"note": "saved predictions do not reproduce the recorded test score"}
    return paired_bootstrap(metric, [[r["prediction"] for r in a] for a, _, _, _ in rows],
                            [[r["prediction"] for r in b] for _, b, _, _ in rows], labels, resamples)


def compare_task(sweep_dir, summary: dict, task: str, reference: str, fraction: float = CONVERGENCE,
                 resamples: int = RESAMPLES) -> dict | None:
    """Each method of ``task`` against ``reference`` at their selected lrs, paired by seed.

    Returns {"task", "metric", "higher_is_better", "reference", "seeds", "n_examples", "methods":
    {label: {"test", "seeds" (``paired_seeds``), "bootstrap" (``paired_bootstrap`` or {"note"}),
    "steps_to" (mean_std over runs of ``steps_to_fraction``), "verdict": better/worse/none (or why
    there is nothing to compare: "no finished runs", "no seed in common with the reference"),
    "basis": ["seeds", "examples"]}}}; None when the reference has no finished run on the task.
    """
    info = summary["tasks"][task]
    if not info.get("methods", {}).get(reference, {}).get("runs"):
        return None
    main, higher = info["main_metric"], info["higher_is_better"]
    runs = {lb: {(res := _results(sweep_dir, p)).seed: (p, res) for p in m["runs"]}
            for lb, m in info["methods"].items()}
    curves = _step_runs(sweep_dir, info)
    out = {"task": task, "metric": main, "higher_is_better": higher, "reference": reference, "methods": {},
           "seeds": len(runs[reference]), "n_examples": None}
    for label, by_seed in runs.items():
        steps = [steps_to_fraction(c.eval_steps, c.metrics.get(main, []), higher, fraction) for c in curves[label]]
        entry = {"test": info["methods"][label]["test"].get(main), "seeds": None, "bootstrap": None,
                 "steps_to": mean_std([s for s in steps if s is not None]), "verdict": "none", "basis": []}
        seeds = sorted(set(by_seed) & set(runs[reference]))
        if label != reference and seeds:
            entry["seeds"] = paired_seeds([by_seed[s][1].test[main] for s in seeds],
                                          [runs[reference][s][1].test[main] for s in seeds])
            entry["bootstrap"] = _bootstrap(sweep_dir, main, [(by_seed[s], runs[reference][s]) for s in seeds],
                                            resamples)
            out["n_examples"] = entry["bootstrap"].get("n_examples", out["n_examples"])
            entry.update(_verdict(entry["seeds"], entry["bootstrap"], higher))
        elif label != reference:  # nothing to compare: never "cannot be told apart"
            entry["verdict"] = "no finished runs" if not by_seed else "no seed in common with the reference"
        out["methods"][label] = entry
    return out


def _verdict(seeds: dict, boot: dict, higher: bool) -> dict:
    basis = [name for name, p in (("seeds", seeds["p_t"]), ("examples", boot.get("p"))) if significant(p)]
    diff = seeds["mean"] if "seeds" in basis or "mean" not in boot else boot["mean"]
    if not basis or diff == 0:
        return {"verdict": "none", "basis": []}
    return {"verdict": "better" if (diff > 0) == higher else "worse", "basis": basis}


def _diff(mean: float | None, ci: list | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:+.2f}" + (f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else "")


def _p(p: float | None) -> str:
    return "-" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def comparison_table(comparisons: list[dict], fraction: float = CONVERGENCE) -> dict:
    """One row per task and method: test score, paired differences (x 100) with their 95% intervals
    and p-values, the significance verdict, and steps to ``fraction`` of the best validation score."""
    header = ["Task", "Method", "Test", "Δ over seeds [95% CI]", "t-test p", "Wilcoxon p",
              "Δ bootstrap [95% CI]", "bootstrap p", "Significant", f"Steps to {100 * fraction:.0f}%"]
    rows = []
    for c in comparisons:
        for label, m in c["methods"].items():
            s, b = m["seeds"] or {}, m["bootstrap"] or {}
            sig = (f"{m['verdict']} ({', '.join(m['basis'])})" if m["basis"] else
                   "reference" if label == c["reference"] else "no" if m["verdict"] == "none" else m["verdict"])
            conv = m["steps_to"]
            rows.append([f"{c['task']} {c['metric']}", label, _fmt(m["test"], 0),
                         _diff(s.get("mean"), s.get("ci")), _p(s.get("p_t")), _p(s.get("p_wilcoxon")),
                         b.get("note") or _diff(b.get("mean"), b.get("ci")), _p(b.get("p")), sig,
                         "-" if conv["mean"] is None else f"{conv['mean']:.0f}"
                         + (f" ± {conv['std']:.0f}" if conv["n"] > 1 else "")])
    bold = [[i == 8 and r[8].startswith(("better", "worse")) for i in range(len(r))] for r in rows]
    return {"header": header, "rows": rows, "bold": bold}


_BASIS = {"seeds": "over seeds", "examples": "over test examples"}


def verdict_line(c: dict) -> str:
    """One sentence: what the paired comparisons on one task allow to conclude, and what not."""
    ref, others = c["reference"], {lb: m for lb, m in c["methods"].items() if lb != c["reference"]}
    ex = f", {c['n_examples']} test examples" if c["n_examples"] else ""
    head = f"{c['task']} ({c['seeds']} seed{'s' if c['seeds'] != 1 else ''}{ex}): "
    clauses = []
    for label, m in others.items():
        if m["verdict"] in ("better", "worse"):
            d = m["seeds"]["mean"] if "seeds" in m["basis"] else m["bootstrap"]["mean"]
            clauses.append(f"{label} is {m['verdict']} than {ref} by {abs(100 * d):.2f} points "
                           f"(significant {' and '.join(_BASIS[x] for x in m['basis'])})")
    same = [lb for lb, m in others.items() if m["verdict"] == "none"]
    if same:
        clauses.append(f"{', '.join(same)} cannot be told apart from {ref} at p < {ALPHA}")
    clauses += [f"{label} cannot be compared ({m['verdict']})" for label, m in others.items()
                if m["verdict"] not in ("better", "worse", "none")]
    if c["seeds"] == 1:
        clauses.append("with one seed the bootstrap covers test-set sampling only, not seed-to-seed variation, "
                       "so no difference is shown to hold for other seeds")
    elif c["seeds"] < 5:
        clauses.append(f"with {c['seeds']} seeds the t-test has little power, so a difference that is not "
                       "significant is not evidence that there is none")
    return head + "; ".join(clauses) + "."


def comparisons(sweep_dir, summary: dict, reference: str, fraction: float = CONVERGENCE) -> list[dict]:
    return [c for t in summary["spec"]["tasks"] if summary["tasks"][t].get("methods")
            and (c := compare_task(sweep_dir, summary, t, reference, fraction)) is not None]


# Writing.


def write_report(sweep_dir, out=None, reference: str | None = None) -> dict:
    """Write report.md, report.html, curves-<task>.png and steps-<task>.png under ``out`` (default
    SWEEP_DIR/report). ``reference``: the method label the paired comparisons are against (default
    ``ailora``, and no comparisons when the sweep has no such label; a named one must exist).

    Returns ``{"markdown", "html", "figures", "table" (Markdown text), "progressive", "comparisons"
    (Markdown text or None), "verdicts" (one sentence per task), "reference"}``.
    """
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out else sweep_dir / REPORT_DIR
    summary = summarize(sweep_dir)
    labels = [m["label"] for m in summary["spec"]["methods"]]
    if reference is not None and reference not in labels:
        raise AiloraError(f"--reference {reference!r} is not a method of this sweep; its methods are: "
                          f"{', '.join(labels)}")
    require_writable(out, "report directory")
    ref = reference or REFERENCE
    table = build_table(summary)
    figures = []
    for task in summary["spec"]["tasks"]:
        figures += _task_figures(sweep_dir, summary, task, out)
    prog = progressive_table(sweep_dir, summary)
    comps = comparisons(sweep_dir, summary, ref) if ref in labels else []
    paired = {"reference": ref, "table": comparison_table(comps) if comps else None,
              "verdicts": [verdict_line(c) for c in comps]}
    md = _markdown(summary, table, figures, prog, paired, sweep_dir)
    html_text = _html(summary, table, figures, prog, paired, sweep_dir)
    write_text(out / "report.md", md)
    write_text(out / "report.html", html_text)
    return {"markdown": out / "report.md", "html": out / "report.html", "figures": figures,
            "table": to_markdown(table), "progressive": to_markdown(prog) if prog else None,
            "comparisons": to_markdown(paired["table"]) if paired["table"] else None,
            "verdicts": paired["verdicts"], "reference": ref}


def _task_figures(sweep_dir, summary: dict, task: str, out: Path) -> list[Path]:
    info = summary["tasks"][task]
    if not info["methods"]:
        return []
    figures = []
    fig = curves_figure(sweep_dir, summary, task)
    if fig is not None:
        figures.append(save_figure(fig, out / f"curves-{task_dir(task)}.png"))
    fig = steps_figure(task, info["main_metric"], _step_runs(sweep_dir, info), summary["spec"]["model"])
    if fig is not None:
        figures.append(save_figure(fig, out / f"steps-{task_dir(task)}.png"))
    return figures


def unfinished(sweep_dir, summary: dict) -> str | None:
    """A sentence on a sweep still under way (runs neither complete nor failed), else None."""
    spec = summary["spec"]
    left = [r.path for r in planned_runs(SweepSpec.from_dict(spec), sweep_dir)
            if not (Path(sweep_dir, r.path, "results.json").is_file() or Path(sweep_dir, r.path, "failed.json").is_file())]
    if not left:
        return None
    running = [p for p in left if (h := read_holder(lock_path(Path(sweep_dir, p)))) is not None
               and h[0].alive(h[1], STALE_AFTER)]
    return (f"Not finished: {len(left)} run(s) not complete ({len(running)} running now"
            + (f": {', '.join(running[:5])}{', ...' if len(running) > 5 else ''}" if running else "")
            + "); the tables hold the finished runs only, and a grid's selection may change when they finish.")


def _about(summary: dict, sweep_dir) -> list[str]:
    spec, runs = summary["spec"], summary["runs"]
    options = "".join(f", {k}={v}" for k, v in spec["options"].items())
    own = "; ".join(f"{m['label']}: " + ", ".join(f"{k}={v}" for k, v in m["options"].items())
                    for m in spec["methods"] if m["options"])
    return [f"Model {spec['model']}, seeds {', '.join(map(str, spec['seeds']))}{options}."
            + (f" Per method: {own}." if own else ""),
            f"Runs complete: {runs['complete']} of {runs['planned']}."
            + (f" {note}" if (note := unfinished(sweep_dir, summary)) else ""),
            "Test scores x 100, mean ± sample std over seeds at the lr selected on the validation main metric; "
            "best per column in bold. Params: trainable parameters (adapters and task head)."]


def _paired_intro(ref: str) -> str:
    return (f"Each method against {ref} at their selected lrs, test main metric x 100, method minus {ref} "
            "(positive: higher). Over seeds: mean difference of the seed-paired runs (same data order and head "
            "init) with a t interval, paired t-test and Wilcoxon signed-rank p. Bootstrap: the same test "
            f"examples resampled {RESAMPLES} times for both methods, mean over seeds. Significant: p < {ALPHA} "
            f"(t-test over seeds, or bootstrap over test examples); better/worse follows the metric's direction. "
            f"Steps to {100 * CONVERGENCE:.0f}%: optimizer steps until the validation main metric first reached "
            f"{100 * CONVERGENCE:.0f}% of the run's best, mean ± std over seeds (validations every "
            "train.eval_every_steps steps and at each epoch's end).")


def _markdown(summary, table, figures, prog, paired, sweep_dir) -> str:
    search = [f"- {title}: " + ", ".join(f"**{t}**" if sel else t for t, sel in entries)
              for title, entries in lr_search(summary)]
    parts = ["# Sweep report", "", *[x for line in _about(summary, sweep_dir) for x in (line, "")], to_markdown(table), "## Learning-rate search", "",
             *search, ""]
    if paired["table"]:
        parts += [f"## Paired comparisons against {paired['reference']}", "", _paired_intro(paired["reference"]),
                  "", to_markdown(paired["table"]), *[f"- {v}" for v in paired["verdicts"]], ""]
    if figures:
        parts += ["## Training curves", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]
    if prog:
        parts += [f"## {PROG_TITLE}", "", to_markdown(prog)]
    return "\n".join(parts).rstrip() + "\n"


def _html(summary, table, figures, prog, paired, sweep_dir) -> str:
    esc = html.escape
    items = "".join(f"<li>{esc(title)}: " + ", ".join(f"<b>{esc(t)}</b>" if sel else esc(t) for t, sel in entries)
                    + "</li>" for title, entries in lr_search(summary))
    imgs = "".join(f'<p><img src="{esc(f.name)}" alt="{esc(f.stem)}"></p>' for f in figures)
    prog_html = f"<h2>{esc(PROG_TITLE)}</h2>\n{to_html_table(prog)}\n" if prog else ""
    paired_html = "" if not paired["table"] else (
        f"<h2>Paired comparisons against {esc(paired['reference'])}</h2>\n<p>{esc(_paired_intro(paired['reference']))}"
        f"</p>\n{to_html_table(paired['table'])}\n<ul>" + "".join(f"<li>{esc(v)}</li>" for v in paired["verdicts"])
        + "</ul>\n")
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Sweep report</title>\n<style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
            "img{max-width:100%}</style></head><body>\n<h1>Sweep report</h1>\n"
            + "".join(f"<p>{esc(x)}</p>" for x in _about(summary, sweep_dir)) + "\n" + to_html_table(table)
            + f"\n<h2>Learning-rate search</h2>\n<ul>{items}</ul>\n" + paired_html
            + (f"<h2>Training curves</h2>\n{imgs}\n" if figures else "") + prog_html + "</body></html>\n")
