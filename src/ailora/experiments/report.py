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
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from ailora.analysis.curves import mean_by_method, read_run
from ailora.analysis.plots import plot_curves, save_figure
from ailora.core.files import require_writable, write_text
from ailora.experiments.sweep import summarize, task_dir
from ailora.tasks.metrics import is_better
from ailora.train import record
from ailora.train.config import comparable
from ailora.train.progressive import savings

REPORT_DIR = "report"
PROG_TITLE = "Progtuning against the same config without it (means over seeds)"


def fmt_lr(lr: float | None) -> str:
    if lr is None:
        return "-"
    mant, exp = f"{lr:.2e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


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
    """Per task and method: (title, [(lr: validation mean ± std, selected?) per lr of the grid])."""
    out = []
    seeds = len(summary["spec"]["seeds"])
    for task, info in summary["tasks"].items():
        for label, m in info["methods"].items():
            entries = [(f"{fmt_lr(g['lr'])}: {_fmt(g['validation'], seeds)}", g["lr"] == m["selected_lr"])
                       for g in m["grid"]]
            out.append((f"{task}, {label} (validation {info['main_metric']})", entries))
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


def _progressive_on(config: dict) -> bool:
    return (config.get("progressive", {}).get("stages") or 0) > 1


def _comparable(config: dict) -> dict:
    return comparable(config, ignore=("train.lr", "train.seed"))


def _results(sweep_dir, path: str) -> dict:
    return json.loads((Path(sweep_dir) / path / record.RESULTS).read_text())


def progressive_pairs(sweep_dir, summary: dict) -> list[tuple[str, str, str]]:
    """(task, label with Progtuning, label of the same config without it) for each such pair."""
    pairs = []
    for task, info in summary["tasks"].items():
        configs = {label: _results(sweep_dir, m["runs"][0])["config"]
                   for label, m in info["methods"].items() if m["runs"]}
        for p, pc in configs.items():
            base = next((b for b, bc in configs.items() if _progressive_on(pc) and not _progressive_on(bc)
                         and _comparable(bc) == _comparable(pc)), None)
            if base:
                pairs.append((task, p, base))
    return pairs


def progressive_table(sweep_dir, summary: dict) -> dict | None:
    """Each Progtuning label against its twin without it, seed by seed at the Progtuning label's
    selected lr (the twin's own selected lr when it has no runs there): mean savings over seeds
    (``ailora.train.progressive.savings``) and the test difference of the main metric (x 100)."""
    pairs = progressive_pairs(sweep_dir, summary)
    if not pairs:
        return None
    header = ["Task", "Progtuning", "Baseline", "lr", "Updated params saved", "Train time saved",
              "Wall time saved", "Test delta", "Also differs in"]
    rows = []
    for task, prog, base in pairs:
        mp, mb = summary["tasks"][task]["methods"][prog], summary["tasks"][task]["methods"][base]
        grid = {g["lr"]: g["runs"] for g in mb["grid"]}
        b_lr = mp["selected_lr"] if grid.get(mp["selected_lr"]) else mb["selected_lr"]
        twins = {r["seed"]: r for r in (_results(sweep_dir, p) for p in grid[b_lr])}
        found = [savings(r, twins[r["seed"]]) for r in (_results(sweep_dir, p) for p in mp["runs"])
                 if r["seed"] in twins]
        rows.append([task, prog, base, " / ".join(dict.fromkeys([fmt_lr(mp["selected_lr"]), fmt_lr(b_lr)]))]
                    + [_pct([f[k] for f in found]) for k in ("updated_parameter_saving", "train_time_saving",
                                                             "wall_time_saving")]
                    + [_pct([f["test_delta"] for f in found], sign=True).replace("%", ""),
                       ", ".join(sorted({k for f in found for k in f["differs_in"]})) or "-"])
    return {"header": header, "rows": rows, "bold": [[False] * len(header) for _ in rows]}


def _pct(values: list[float | None], sign: bool = False) -> str:
    ok = [v for v in values if v is not None]
    if not ok:
        return "-"
    return f"{100 * sum(ok) / len(ok):{'+' if sign else ''}.1f}%"


# Writing.


def write_report(sweep_dir, out=None) -> dict:
    """Write report.md, report.html and curves-<task>.png under ``out`` (default SWEEP_DIR/report).

    Returns ``{"markdown", "html", "figures", "table" (Markdown text), "notes"}``.
    """
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out else sweep_dir / REPORT_DIR
    summary = summarize(sweep_dir)
    require_writable(out, "report directory")
    table = build_table(summary)
    figures = []
    for task in summary["spec"]["tasks"]:
        fig = curves_figure(sweep_dir, summary, task) if summary["tasks"][task]["methods"] else None
        if fig is not None:
            figures.append(save_figure(fig, out / f"curves-{task_dir(task)}.png"))
    prog = progressive_table(sweep_dir, summary)
    md = _markdown(summary, table, figures, prog)
    html_text = _html(summary, table, figures, prog)
    write_text(out / "report.md", md)
    write_text(out / "report.html", html_text)
    return {"markdown": out / "report.md", "html": out / "report.html", "figures": figures,
            "table": to_markdown(table), "progressive": to_markdown(prog) if prog else None}


def _about(summary: dict) -> list[str]:
    spec, runs = summary["spec"], summary["runs"]
    options = "".join(f", {k}={v}" for k, v in spec["options"].items())
    own = "; ".join(f"{m['label']}: " + ", ".join(f"{k}={v}" for k, v in m["options"].items())
                    for m in spec["methods"] if m["options"])
    return [f"Model {spec['model']}, seeds {', '.join(map(str, spec['seeds']))}{options}."
            + (f" Per method: {own}." if own else ""),
            f"Runs complete: {runs['complete']} of {runs['planned']}.",
            "Test scores x 100, mean ± sample std over seeds at the lr selected on the validation main metric; "
            "best per column in bold. Params: trainable parameters (adapters and task head)."]


def _markdown(summary, table, figures, prog) -> str:
    search = [f"- {title}: " + ", ".join(f"**{t}**" if sel else t for t, sel in entries)
              for title, entries in lr_search(summary)]
    parts = ["# Sweep report", "", *[x for line in _about(summary) for x in (line, "")], to_markdown(table), "## Learning-rate search", "",
             *search, ""]
    if figures:
        parts += ["## Training curves", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]
    if prog:
        parts += [f"## {PROG_TITLE}", "", to_markdown(prog)]
    return "\n".join(parts).rstrip() + "\n"


def _html(summary, table, figures, prog) -> str:
    esc = html.escape
    items = "".join(f"<li>{esc(title)}: " + ", ".join(f"<b>{esc(t)}</b>" if sel else esc(t) for t, sel in entries)
                    + "</li>" for title, entries in lr_search(summary))
    imgs = "".join(f'<p><img src="{esc(f.name)}" alt="{esc(f.stem)}"></p>' for f in figures)
    prog_html = f"<h2>{esc(PROG_TITLE)}</h2>\n{to_html_table(prog)}\n" if prog else ""
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Sweep report</title>\n<style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
            "img{max-width:100%}</style></head><body>\n<h1>Sweep report</h1>\n"
            + "".join(f"<p>{esc(x)}</p>" for x in _about(summary)) + "\n" + to_html_table(table)
            + f"\n<h2>Learning-rate search</h2>\n<ul>{items}</ul>\n"
            + (f"<h2>Training curves</h2>\n{imgs}\n" if figures else "") + prog_html + "</body></html>\n")
