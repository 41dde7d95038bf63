"""Singular value spectra of the target weights, with the slices an SVD initialisation takes.

PiSSA takes the principal (top-r) triplets, MiLoRA the minor (bottom-r) ones, and AILoRA the
principal ones of W^Q and the minor ones of W^V (AILoRA paper, sec. 3, eqs. 2-6).
"""

from __future__ import annotations

import torch

from ailora.errors import AiloraError


def singular_spectrum(weight: torch.Tensor, rank: int) -> dict:
    """Singular values of W (out, in), descending, and the index slices of rank-r initialisations.

    AILoRA paper eqs. 2-3 (principal: indices [0, r)) and eq. 5 (minor: [n - r, n)), n = min(out, in).
    Returns ``{"singular_values": [n floats], "principal": [0, r], "minor": [n - r, n],
    "principal_energy": sum of top-r sigma^2 / total, "minor_energy": same for the bottom r}``.
    """
    if weight.ndim != 2:
        raise AiloraError(f"singular_spectrum needs a 2-D weight, got shape {tuple(weight.shape)}")
    s = torch.linalg.svdvals(weight.double())
    n = s.numel()
    if not 0 < rank <= n:
        raise AiloraError(f"rank must be in 1..{n} for a weight of shape {tuple(weight.shape)}, got {rank}")
    energy = s.pow(2)
    total = float(energy.sum()) or 1.0
    return {
        "singular_values": s.tolist(),
        "principal": [0, rank],
        "minor": [n - rank, n],
        "principal_energy": float(energy[:rank].sum()) / total,
        "minor_energy": float(energy[n - rank :].sum()) / total,
    }
