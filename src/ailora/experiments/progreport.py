"""Progtuning in a sweep's report: each label with Progtuning against its twin without it.

A twin is a label of the same task whose config differs only in the Progtuning section (and the lr
and seed: ``ailora.train.config.comparable``); the comparison is seed by seed, at the Progtuning
label's selected lr, with ``ailora.train.progressive.savings``.
"""

from __future__ import annotations

from pathlib import Path

from ailora.experiments.grids import fmt_lr
from ailora.train.config import comparable
from ailora.train.progressive import savings
from ailora.train.runrecord import progressive_stages, read_complete

__all__ = ["PROG_TITLE", "progressive_pairs", "progressive_table"]

PROG_TITLE = "Progtuning against the same config without it (means over seeds)"


def _progressive_on(config: dict) -> bool:
    return progressive_stages(config) > 1


def _comparable(config: dict) -> dict:
    return comparable(config, ignore=("train.lr", "train.seed"))


def progressive_pairs(sweep_dir, summary: dict) -> list[tuple[str, str, str]]:
    """(task, label with Progtuning, label of the same config without it) for each such pair."""
    pairs = []
    for task, info in summary["tasks"].items():
        configs = {label: read_complete(Path(sweep_dir) / m["runs"][0]).config
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
        twins = {r.seed: r for r in (read_complete(Path(sweep_dir) / p) for p in grid[b_lr])}
        found = [savings(r, twins[r.seed]) for r in (read_complete(Path(sweep_dir) / p) for p in mp["runs"]) if r.seed in twins]
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
