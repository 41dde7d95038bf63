"""t-SNE of per-layer projection matrices (AILoRA paper, Figures 1 a, b and 8).

Each layer's matrix, flattened, is one point; the points of several checkpoints (the base and
one or more fine-tuned models) are embedded together so that their positions are comparable.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ailora.errors import AiloraError


def default_perplexity(n_points: int) -> float:
    """Perplexity for t-SNE of only a few points (one per layer and checkpoint).

    scikit-learn's default of 30 needs n > 30 points and then treats every point as a neighbour
    of every other; with n of 4 to 50 we use (n - 1) / 3, clipped to [2, 30] and kept below n,
    so that each point weighs roughly a third of the others.
    """
    if n_points < 3:
        raise AiloraError(f"t-SNE needs at least 3 matrices, got {n_points}")
    return float(min(30.0, max(2.0, (n_points - 1) / 3), n_points - 1.5))


def tsne_embedding(points: torch.Tensor, perplexity: float | None = None, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, exact method, PCA initialisation) of points (n, d). Returns (n, 2)."""
    from sklearn.manifold import TSNE  # here, not at the top: importing scikit-learn takes ~1.3 s

    x = points.detach().double().cpu().numpy()
    n = x.shape[0]
    p = default_perplexity(n) if perplexity is None else float(perplexity)
    if not 0 < p < n:
        raise AiloraError(f"t-SNE perplexity must be in (0, {n}) for {n} points, got {p}")
    tsne = TSNE(n_components=2, perplexity=p, init="pca", method="exact", random_state=seed)
    return tsne.fit_transform(x)


def tsne_of_weights(
    groups: Mapping[str, Mapping[str, torch.Tensor]], perplexity: float | None = None, seed: int = 0
) -> dict:
    """Embed every layer's matrix of every checkpoint in one 2-D t-SNE (AILoRA Figures 1 a, b, 8).

    groups: ``{checkpoint_label: {layer_name: W (out, in)}}``, all matrices of one shape.
    Returns ``{"perplexity": p, "points": {checkpoint_label: {layer_name: [x, y]}}}``.
    """
    labels, rows = [], []
    for group, weights in groups.items():
        for name, w in weights.items():
            labels.append((group, name))
            rows.append(w.detach().float().reshape(-1))
    if len({r.numel() for r in rows}) > 1:
        raise AiloraError("t-SNE needs matrices of one shape; pick one role (e.g. query) at a time")
    p = default_perplexity(len(rows)) if perplexity is None else float(perplexity)
    xy = tsne_embedding(torch.stack(rows), p, seed)
    points: dict[str, dict[str, list[float]]] = {g: {} for g in groups}
    for (group, name), (x, y) in zip(labels, xy.tolist()):
        points[group][name] = [x, y]
    return {"perplexity": p, "points": points}
