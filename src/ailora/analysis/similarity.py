"""Subspace similarity between a trained LoRA update and full fine-tuning's dW.

phi(U1, U2) = ||U1^T U2||_F^2 / r, U1 and U2 the top-r left singular vectors (LoRA paper,
Hu et al. 2021, sec. 7; AILoRA paper, sec. 5.3, Figures 4a and 7).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import peft
import torch

from ailora.analysis.weights import align_names
from ailora.core.adapters import lora_scaling, module_rank_alpha
from ailora.errors import AiloraError

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def top_left_singular_vectors(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """U[:, :r] of M = U S V^T, M (out, in), in float64. Returns (out, r)."""
    if not 0 < rank <= min(matrix.shape):
        raise AiloraError(
            f"rank must be in 1..{min(matrix.shape)} for shape {tuple(matrix.shape)}, got {rank}"
        )
    u, _, _ = torch.linalg.svd(matrix.double(), full_matrices=False)
    return u[:, :rank]


def subspace_similarity(u1: torch.Tensor, u2: torch.Tensor) -> float:
    """phi(U1, U2) = ||U1^T U2||_F^2 / min(r1, r2) (LoRA paper, sec. 7, eq. 4).

    u1: (d, r1), u2: (d, r2), orthonormal columns. 1 for identical subspaces, 0 for orthogonal ones.
    """
    if u1.ndim != 2 or u2.ndim != 2 or u1.shape[0] != u2.shape[0]:
        raise AiloraError(
            f"subspace bases must be (d, r) with the same d, got {tuple(u1.shape)}, {tuple(u2.shape)}"
        )
    prod = u1.double().T @ u2.double()
    return float(prod.pow(2).sum()) / min(u1.shape[1], u2.shape[1])


def update_similarity(delta_a: torch.Tensor, delta_b: torch.Tensor, rank: int) -> float:
    """phi between the top-`rank` left singular subspaces of two updates, both (out, in)."""
    return subspace_similarity(
        top_left_singular_vectors(delta_a, rank), top_left_singular_vectors(delta_b, rank)
    )


def lora_deltas(state: Mapping[str, torch.Tensor], config: peft.LoraConfig) -> dict[str, torch.Tensor]:
    """The weight update s * B @ A of each module of a PEFT LoRA adapter (LoRA paper, eq. 3).

    state: adapter_model.safetensors, keys ``base_model.model.<module>.lora_A.weight`` (r, in) and
    ``...lora_B.weight`` (out, r). config: its LoraConfig; r, alpha and s per module as
    `ailora.core.adapters` reads them (rank_pattern / alpha_pattern, rsLoRA).
    Returns ``{module: delta (out, in) float32}``. For an SVD-initialised adapter saved unconverted,
    this is its modules' weight product (what the AILoRA paper compares), not the change from W_0.
    """
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = _LORA_KEY.match(key)
        if m:
            factors.setdefault(m["module"], {})[m["ab"]] = tensor
    if not factors:
        raise AiloraError("adapter has no lora_A / lora_B weights")
    deltas = {}
    for module, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise AiloraError(f"adapter module {module} has lora_{next(iter(ab))} but not its partner")
        r, alpha = module_rank_alpha(config, module)
        if r != ab["A"].shape[0]:
            raise AiloraError(f"adapter module {module}: lora_A has rank {ab['A'].shape[0]}, config says {r}")
        scaling = lora_scaling(r, alpha, config.use_rslora)
        deltas[module] = (scaling * ab["B"].double() @ ab["A"].double()).float()
    return deltas


def similarity_by_layer(
    learned: Mapping[str, torch.Tensor], full: Mapping[str, torch.Tensor], rank: int | None = None
) -> dict[str, dict]:
    """phi(top-r U of a learned update, top-r U of full fine-tuning's dW) per layer (AILoRA Figs. 4a, 7).

    learned: ``{module: (out, in)}``, e.g. from `lora_deltas`; full: ``{module: dW (out, in)}``; names
    are paired by `align_names`. rank: r, by default each learned update's numerical rank (float32
    tolerance), which is the adapter's r once trained (a LoRA update at init, B = 0, gets r = 1).
    Returns ``{full_module_name: {"phi": float, "rank": r}}``.
    """
    out = {}
    for full_name, learned_name in align_names(full, learned):
        a, b = learned[learned_name], full[full_name]
        if a.shape != b.shape:
            raise AiloraError(f"{full_name}: adapter update {tuple(a.shape)} against dW {tuple(b.shape)}")
        r = rank if rank is not None else max(1, int(torch.linalg.matrix_rank(a.float())))
        r = min(r, min(a.shape))
        out[full_name] = {"phi": update_similarity(a, b, r), "rank": r}
    if not out:
        raise AiloraError("no adapter module matches a target module of the full fine-tuning update")
    return out
