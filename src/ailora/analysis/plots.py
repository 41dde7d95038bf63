"""Figures of the analyses, drawn on matplotlib's Agg canvas (no pyplot, no global state).

Each function takes the JSON-ready result of an analysis and returns a Figure; `save_figure`
writes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ailora.analysis.weights import layer_index
from ailora.core.files import atomic_file


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save a Figure as PNG, atomically (``ailora.core.files.atomic_file``)."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(path)


def _figure(ncols: int, width: float = 5.0, height: float = 4.0):
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _nan(values) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def _layer_positions(names) -> list[int]:
    return [layer_index(n) if layer_index(n) is not None else i for i, n in enumerate(names)]


def plot_norms(norms: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Figure:
    """Box plots of ||dW||_F over layers, one panel per fine-tuned model, one box per role (Fig. 1 c, d).

    norms: ``{model_label: {role: {layer: norm}}}``.
    """
    fig, axes = _figure(len(norms), width=4.0)
    for ax, (label, by_role) in zip(axes, norms.items()):
        roles = list(by_role)
        data = [list(by_role[r].values()) for r in roles]
        ax.boxplot(data, tick_labels=[f"dW^{r[0].upper()} ({r})" for r in roles])
        for i, values in enumerate(data, 1):
            ax.scatter(
                [i] * len(values),
                values,
                s=12,
                alpha=0.6,
                color="C1",
                zorder=3,
                label="layers" if i == 1 else None,
            )
        ax.set_title(f"{label}: Frobenius norm of updates")
        ax.set_ylabel("||dW||_F")
        ax.set_xlabel("projection")
        ax.legend(loc="best")
    return fig


def plot_tsne(by_role: Mapping[str, Mapping]) -> Figure:
    """t-SNE scatter, one panel per role, one colour per checkpoint, points labelled by layer (Figs. 1 a, b, 8).

    by_role: ``{role: {"perplexity": p, "points": {checkpoint: {layer: [x, y]}}}}``.
    """
    fig, axes = _figure(len(by_role))
    for ax, (role, result) in zip(axes, by_role.items()):
        for group, points in result["points"].items():
            xy = list(points.values())
            ax.scatter([p[0] for p in xy], [p[1] for p in xy], label=group, s=30)
            for name, (x, y) in points.items():
                idx = layer_index(name)
                ax.annotate(str(idx if idx is not None else name), (x, y), fontsize=7, alpha=0.7)
        ax.set_title(f"t-SNE of W^{role[0].upper()} ({role}), perplexity {result['perplexity']:.1f}")
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.legend(loc="best", fontsize=8)
    return fig


def plot_spectrum(by_role: Mapping[str, Mapping[str, Mapping]], rank: int) -> Figure:
    """Singular values per layer (log scale), principal top-r and minor bottom-r slices shaded.

    by_role: ``{role: {layer: singular_spectrum(...)}}``.
    """
    fig, axes = _figure(len(by_role))
    for ax, (role, layers) in zip(axes, by_role.items()):
        n = 0
        for name, spec in layers.items():
            s = spec["singular_values"]
            n = max(n, len(s))
            idx = layer_index(name)
            ax.plot(range(len(s)), s, lw=1, label=f"layer {idx if idx is not None else name}")
        ax.axvspan(
            0, rank - 1, color="tab:green", alpha=0.15, label=f"principal (top {rank}: PiSSA, AILoRA W^Q)"
        )
        ax.axvspan(
            n - rank, n - 1, color="tab:red", alpha=0.15, label=f"minor (bottom {rank}: MiLoRA, AILoRA W^V)"
        )
        ax.set_yscale("log")
        ax.set_title(f"Singular values of W^{role[0].upper()} ({role})")
        ax.set_xlabel("index i (descending)")
        ax.set_ylabel("sigma_i")
        ax.legend(loc="best", fontsize=7)
    return fig


def plot_similarity(sims: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Figure:
    """phi per layer, one panel per role, one line per adapter (Figs. 4a, 7).

    sims: ``{adapter_label: {role: {layer: phi}}}``.
    """
    roles = list(dict.fromkeys(r for by_role in sims.values() for r in by_role))
    fig, axes = _figure(len(roles))
    for ax, role in zip(axes, roles):
        for label, by_role in sims.items():
            layers = by_role.get(role, {})
            ax.plot(_layer_positions(layers), list(layers.values()), marker="o", label=label)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"Subspace similarity with full FT dW^{role[0].upper()} ({role})")
        ax.set_xlabel("layer")
        ax.set_ylabel("phi(U_adapter, U_dW)")
        ax.legend(loc="best", fontsize=8)
    return fig


def plot_forgetting(results: Mapping[str, Mapping[str, float]]) -> Figure:
    """Cross-entropy = base entropy + KL(base || fine-tuned) stacked, and the KL alone, per model (Fig. 4b).

    results: ``{model_label: {"cross_entropy", "base_entropy", "kl"}}``. The KL gets its own panel
    because it is often far smaller than the entropy.
    """
    fig, (ax, ax_kl) = _figure(2, width=max(4.0, 1.2 * len(results) + 2))
    labels = list(results)
    h = [results[k]["base_entropy"] for k in labels]
    kl = [results[k]["kl"] for k in labels]
    ax.bar(labels, h, label="base entropy H(p_base)", color="tab:gray")
    ax.bar(labels, kl, bottom=h, label="KL(p_base || p_ft)", color="tab:orange")
    for i, k in enumerate(labels):
        ax.annotate(
            f"{results[k]['cross_entropy']:.3f}", (i, results[k]["cross_entropy"]), ha="center", va="bottom"
        )
    ax.set_title("Forgetting: CE of fine-tuned vs base predictions")
    ax.set_ylabel("cross-entropy (nats per predicted token)")
    ax_kl.bar(labels, kl, color="tab:orange", label="KL(p_base || p_ft)")
    ax_kl.set_title("KL part of the forgetting loss")
    ax_kl.set_ylabel("KL (nats per predicted token)")
    for a in (ax, ax_kl):
        a.set_xlabel("fine-tuned model")
        a.legend(loc="lower right")
    return fig


def plot_curves(means: Mapping[str, Mapping], runs: list[Mapping], metric: str | None) -> Figure:
    """Train loss and validation metric per epoch: mean per method, each run faint (Fig. 3).

    means: `curves.mean_by_method` output; runs: ``[{"method", "epochs", "train_loss", "metric"}]``.
    """
    fig, axes = _figure(2 if metric else 1)
    colours = {m: f"C{i % 10}" for i, m in enumerate(means)}
    panels = [("train_loss", "training loss")] + ([("metric", metric)] if metric else [])
    for ax, (key, title) in zip(axes, panels):
        for run in runs:
            ax.plot(run["epochs"], _nan(run[key]), color=colours[run["method"]], alpha=0.25, lw=1)
        for method, m in means.items():
            ax.plot(
                m["epochs"],
                _nan(m[key]),
                color=colours[method],
                marker="o",
                label=f"{method} (n={m['runs']})",
            )
        ax.set_title(f"{title} per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.legend(loc="best", fontsize=8)
    return fig


def plot_step_curves(loss: Mapping[str, Mapping], metric: Mapping[str, Mapping], metric_name: str) -> Figure:
    """Training loss per logging interval and validation metric against optimizer steps: per
    method the mean over seeds, the min-max band over seeds shaded (convergence in steps).

    loss, metric: ``{method: curves.band(...)}``; a method may be missing from either.
    """
    fig, axes = _figure(2)
    colours = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys([*loss, *metric]))}
    panels = [(loss, "training loss (per logging interval)"), (metric, f"validation {metric_name}")]
    for ax, (bands, title) in zip(axes, panels):
        for method, b in bands.items():
            if not b["steps"]:
                continue
            ax.plot(b["steps"], b["mean"], color=colours[method], marker="." if len(b["steps"]) < 40 else None,
                    label=f"{method} (n={b['runs']})")
            if b["runs"] > 1:
                ax.fill_between(b["steps"], b["low"], b["high"], color=colours[method], alpha=0.2, lw=0)
        ax.set_title(f"{title} by step")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(title)
        if bands:
            ax.legend(loc="best", fontsize=8)
    return fig
