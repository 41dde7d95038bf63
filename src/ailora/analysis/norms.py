"""Frobenius norms of the full fine-tuning updates (AILoRA paper, Figure 1 c, d)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def update_norms(deltas: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """||dW||_F per layer, dW = W_ft - W_0 (AILoRA paper, Figure 1 c, d).

    deltas: ``{layer_name: dW (out, in)}`` (see `role_deltas`). Returns ``{layer_name: norm}``.
    """
    return {name: float(torch.linalg.matrix_norm(d.double(), ord="fro")) for name, d in deltas.items()}


def relative_update_norms(
    deltas: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """||dW||_F / ||W_0||_F per layer, to compare layers and models of different scale.

    deltas, base: ``{layer_name: (out, in)}`` with the same names. A zero W_0 gives inf.
    """
    out = {}
    for name, d in deltas.items():
        w0 = float(torch.linalg.matrix_norm(base[name].double(), ord="fro"))
        dn = float(torch.linalg.matrix_norm(d.double(), ord="fro"))
        out[name] = dn / w0 if w0 > 0 else float("inf")
    return out
