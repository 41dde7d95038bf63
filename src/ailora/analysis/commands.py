"""Each analysis end to end, as ``ailora analyze <name>`` runs it: load, compute, draw, write.

Every ``analyze_*`` function writes ``<out>/<name>.png`` and ``<out>/<name>.json`` atomically and
returns their paths. Models are directories or short names (minilm, smollm2); the target
projections are found by ``ailora.core.roles`` (see `ailora.analysis.weights`).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from matplotlib.figure import Figure

from ailora.analysis.curves import mean_by_method, read_run
from ailora.analysis.lm import detect_objective, load_lm_pair, measure_forgetting, read_texts
from ailora.analysis.norms import relative_update_norms, update_norms
from ailora.analysis.plots import (
    plot_curves,
    plot_forgetting,
    plot_norms,
    plot_similarity,
    plot_spectrum,
    plot_tsne,
    save_figure,
)
from ailora.analysis.similarity import lora_deltas, similarity_by_layer
from ailora.analysis.spectrum import singular_spectrum
from ailora.analysis.tsne import tsne_of_weights
from ailora.analysis.weights import (
    load_checkpoint,
    matched_roles,
    parse_roles,
    role_deltas,
    role_weights,
    split_roles,
)
from ailora.core.adapters import read_adapter
from ailora.core.files import write_json
from ailora.core.models import load_tokenizer as model_tokenizer
from ailora.core.models import resolve_model_path
from ailora.core.roles import find_targets
from ailora.errors import AiloraError

DEFAULT_OUT = "analysis"
DEFAULT_TARGETS = "query,value"

Paths = list[str | os.PathLike]


def labels_for(paths: Paths, labels: list[str] | None) -> list[str]:
    """One label per path: the given ones, or the directory names."""
    if labels is None:
        return [Path(p).name or str(p) for p in paths]
    if len(labels) != len(paths):
        raise AiloraError(f"{len(labels)} labels for {len(paths)} paths")
    return list(labels)


def write_outputs(out: str | os.PathLike, name: str, fig: Figure, result: dict) -> tuple[Path, Path]:
    """``<out>/<name>.png`` and ``<out>/<name>.json``, each written atomically."""
    out = Path(out)
    return save_figure(fig, out / f"{name}.png"), write_json(out / f"{name}.json", result)


def _header(analysis: str, figure: str, base, finetuned) -> dict:
    """The first keys of every comparison's JSON: what it is and which checkpoints it compares."""
    ft = [str(p) for p in finetuned] if isinstance(finetuned, list | tuple) else str(finetuned)
    return {"analysis": analysis, "figure": figure, "base": str(base), "finetuned": ft}


def _against_base(base, finetuned: Paths, labels: list[str] | None):
    """The base model, and (label, fine-tuned model) pairs, each model loaded when its turn comes."""
    names = labels_for(finetuned, labels)
    return load_checkpoint(base), ((label, load_checkpoint(path)) for path, label in zip(finetuned, names))


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise AiloraError(f"{name} must be positive, got {value}")


def analyze_norms(
    base, finetuned: Paths, labels: list[str] | None = None, targets=DEFAULT_TARGETS, out=DEFAULT_OUT
) -> tuple[Path, Path]:
    """||dW||_F, absolute and relative to ||W_0||_F, per layer and role (AILoRA paper, Fig. 1 c, d)."""
    roles = parse_roles(targets)
    base_model, others = _against_base(base, finetuned, labels)
    base_roles = role_weights(base_model, roles)
    norms, relative = {}, {}
    for label, ft_model in others:
        deltas = role_deltas(base_model, ft_model, roles)
        norms[label] = {role: update_norms(d) for role, d in deltas.items()}
        relative[label] = {role: relative_update_norms(d, base_roles[role]) for role, d in deltas.items()}
    result = {**_header("norms", "AILoRA Fig. 1 c, d", base, finetuned), "frobenius_norm": norms}
    result["relative_norm"] = relative
    return write_outputs(out, "norms", plot_norms(norms), result)


def analyze_tsne(
    base,
    finetuned: Paths,
    labels: list[str] | None = None,
    perplexity: float | None = None,
    seed: int = 0,
    targets=DEFAULT_TARGETS,
    out=DEFAULT_OUT,
) -> tuple[Path, Path]:
    """One t-SNE per role of every layer's weight, base and fine-tuned together (Figs. 1 a, b and 8)."""
    roles = parse_roles(targets)
    base_model, others = _against_base(base, finetuned, labels)
    groups: dict[str, dict] = {}
    for label, ft_model in others:
        base_roles, ft_roles = matched_roles(base_model, ft_model, roles)
        for role in base_roles:
            groups.setdefault(role, {"base": base_roles[role]})[label] = ft_roles[role]
    by_role = {role: tsne_of_weights(g, perplexity, seed) for role, g in groups.items()}
    result = {**_header("tsne", "AILoRA Figs. 1 a, b and 8", base, finetuned), "seed": seed, "tsne": by_role}
    return write_outputs(out, "tsne", plot_tsne(by_role), result)


def analyze_spectrum(model, rank: int, targets=DEFAULT_TARGETS, out=DEFAULT_OUT) -> tuple[Path, Path]:
    """Singular values of every target weight block, with the slices a rank-r initialisation takes."""
    _positive("rank", rank)
    weights = role_weights(load_checkpoint(model), targets)
    spectra = {role: {n: singular_spectrum(w, rank) for n, w in ws.items()} for role, ws in weights.items()}
    result = {"analysis": "spectrum", "model": str(model), "rank": rank, "spectra": spectra}
    return write_outputs(out, "spectrum", plot_spectrum(spectra, rank), result)


def analyze_similarity(
    base,
    finetuned,
    adapters: Paths,
    labels: list[str] | None = None,
    rank: int | None = None,
    targets=DEFAULT_TARGETS,
    out=DEFAULT_OUT,
) -> tuple[Path, Path]:
    """phi between each adapter's update and full fine-tuning's dW, per layer and role (Figs. 4a, 7)."""
    _positive("rank", rank)
    roles = parse_roles(targets)
    names = labels_for(adapters, labels)
    base_model = load_checkpoint(base)
    full = role_deltas(base_model, load_checkpoint(finetuned), roles)
    found = find_targets(base_model, roles)
    sims, ranks = {}, {}
    for path, label in zip(adapters, names):
        state, config, _ = read_adapter(path)
        learned = split_roles(lora_deltas(state, config), found)  # a fused module's update cut by role
        per_role = {role: similarity_by_layer(learned.get(role, {}), d, rank) for role, d in full.items()}
        sims[label] = {role: {n: v["phi"] for n, v in layers.items()} for role, layers in per_role.items()}
        ranks[label] = {role: {n: v["rank"] for n, v in layers.items()} for role, layers in per_role.items()}
    result = {
        **_header("similarity", "AILoRA Figs. 4a, 7", base, finetuned),
        "adapters": [str(p) for p in adapters],
    }
    result.update(phi=sims, rank=ranks)
    return write_outputs(out, "similarity", plot_similarity(sims), result)


def load_tokenizer(path):
    """A tokenizer from a directory or short name; a missing or broken one is an AiloraError."""
    return model_tokenizer(path)


def analyze_forgetting(
    base,
    finetuned: Paths,
    text,
    labels: list[str] | None = None,
    tokenizer=None,
    objective: str = "auto",
    max_texts: int | None = 512,
    max_length: int = 128,
    batch_size: int = 16,
    mask_prob: float = 0.15,
    seed: int = 0,
    out=DEFAULT_OUT,
) -> tuple[Path, Path]:
    """CE = H(p_base) + KL(p_base || p_ft) of each fine-tuned model on held-out text (Fig. 4b)."""
    _positive("max_length", max_length)
    _positive("batch_size", batch_size)
    names = labels_for(finetuned, labels)
    texts = read_texts(text, max_texts)
    objective = detect_objective(base) if objective == "auto" else objective
    tok = load_tokenizer(tokenizer or resolve_model_path(str(base)))
    results, shared = {}, []
    for path, label in zip(finetuned, names):
        base_model, ft_model, shared = load_lm_pair(base, path, objective, seed)
        results[label] = measure_forgetting(
            base_model, ft_model, tok, texts, objective, max_length, batch_size, mask_prob, seed
        )
    result = {
        **_header("forgetting", "AILoRA Fig. 4b", base, finetuned),
        "text": str(text),
        "texts": len(texts),
        "objective": objective,
        "mask_prob": mask_prob,
        "seed": seed,
        "shared_random_head": shared,
        "results": results,
    }
    return write_outputs(out, "forgetting", plot_forgetting(results), result)


def analyze_curves(runs: Paths, metric: str | None = None, out=DEFAULT_OUT) -> tuple[Path, Path]:
    """Train loss and a validation metric per epoch, mean per method over its runs (Fig. 3)."""
    read = [read_run(p) for p in runs]
    logged = list(dict.fromkeys(m for r in read for m in r.metrics))
    if metric and metric not in logged:
        raise AiloraError(f"metric {metric!r} not logged by any run; logged: {', '.join(logged) or 'none'}")
    metric = metric or (logged[0] if logged else None)
    means = mean_by_method(read, metric)
    series = [
        {
            "method": r.method,
            "epochs": r.epochs,
            "train_loss": r.train_loss,
            "metric": r.metrics.get(metric, [None] * len(r.epochs)),
        }
        for r in read
    ]
    result = {
        "analysis": "curves",
        "figure": "AILoRA Fig. 3",
        "metric": metric,
        "runs": [asdict(r) for r in read],
        "mean_by_method": means,
    }
    return write_outputs(out, "curves", plot_curves(means, series, metric), result)


ANALYSES = {
    "norms": analyze_norms,
    "tsne": analyze_tsne,
    "spectrum": analyze_spectrum,
    "similarity": analyze_similarity,
    "forgetting": analyze_forgetting,
    "curves": analyze_curves,
}
