"""Post-hoc LoRA adapters from a full fine-tuned checkpoint, by truncated SVD of each dW.

dW = W_ft - W_0 = U S V^T; the rank-k adapter is B = U_k S_k^{1/2}, A = S_k^{1/2} V_k^T, which is
the best rank-k approximation of dW in Frobenius norm (Eckart-Young), with lora_alpha = k so that
PEFT's scaling alpha / r is 1 (LoRA paper eq. 3; the factorisation of AILoRA paper eqs. 2-3
applied to dW instead of W_0). k is given (--rank) or the smallest rank keeping a fraction of
the energy sum(sigma^2) (--energy), per layer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from peft import LoraConfig

from ailora.core.svd import fix_signs
from ailora.errors import AiloraError


@dataclass
class LoraFactors:
    """One module's adapter: B (out, k), A (k, in), B @ A ~= dW; energy = kept sigma^2 / total."""

    B: torch.Tensor
    A: torch.Tensor
    energy: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]


def check_rank_or_energy(rank: int | None, energy: float | None) -> None:
    """Exactly one of rank (>= 1) or energy (in (0, 1]) must be given."""
    if (rank is None) == (energy is None):
        raise AiloraError("give exactly one of rank or energy")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise AiloraError(f"rank must be a positive integer, got {rank!r}")
    if energy is not None and not 0 < energy <= 1:
        raise AiloraError(f"energy must be in (0, 1], got {energy!r}")


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest k with sum_{i<k} sigma_i^2 >= energy * sum sigma^2 (at least 1). sigma: (n,) descending."""
    sq = singular_values.double().pow(2)
    total = float(sq.sum())
    if total == 0:
        return 1
    cum = torch.cumsum(sq, 0) / total
    return min(int((cum < energy - 1e-12).sum()) + 1, sq.numel())


def truncated_lora(delta: torch.Tensor, rank: int | None = None, energy: float | None = None) -> LoraFactors:
    """Rank-k LoRA factors of dW (out, in) by truncated SVD in float64 (see the module docstring).

    rank: k (capped at min(out, in)); energy: fraction of sum(sigma^2) to keep. Exactly one.
    """
    check_rank_or_energy(rank, energy)
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    u, vh = fix_signs(u, vh)  # the same weights always give the same adapter
    k = min(rank, s.numel()) if rank is not None else energy_rank(s, energy)
    root = s[:k].sqrt()
    total = float(s.pow(2).sum())
    kept = float(s[:k].pow(2).sum()) / total if total > 0 else 1.0
    return LoraFactors(
        B=(u[:, :k] * root).float().contiguous(), A=(root[:, None] * vh[:k]).float().contiguous(), energy=kept
    )


def extract_lora(
    deltas: Mapping[str, torch.Tensor], rank: int | None = None, energy: float | None = None
) -> dict[str, LoraFactors]:
    """`truncated_lora` of every module: ``{module: dW (out, in)}`` -> ``{module: LoraFactors}``."""
    check_rank_or_energy(rank, energy)
    if not deltas:
        raise AiloraError("no weight updates to extract adapters from")
    return {name: truncated_lora(d, rank, energy) for name, d in deltas.items()}


def peft_adapter(
    factors: Mapping[str, LoraFactors],
    base_model_name_or_path: str | None = None,
    fan_in_fan_out: bool = False,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """PEFT LoRA files for `factors`: (adapter_config.json dict, adapter_model.safetensors dict).

    The global r is the most common rank (the larger on a tie); modules of another rank get
    rank_pattern and alpha_pattern entries (their full module names), so that alpha = r and the
    scaling is 1 everywhere. Keys are
    ``base_model.model.<module>.lora_A.weight`` (k, in) and ``...lora_B.weight`` (out, k), in the
    (out, in) orientation even for GPT-2's transposed Conv1D weights (then `fan_in_fan_out`).
    """
    counts = Counter(f.rank for f in factors.values())
    r = max(counts, key=lambda k: (counts[k], k))
    pattern = {name: f.rank for name, f in factors.items() if f.rank != r}
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=sorted(factors),
        rank_pattern=dict(pattern),
        alpha_pattern=dict(pattern),
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=fan_in_fan_out,
        base_model_name_or_path=base_model_name_or_path,
    ).to_dict()
    config["target_modules"] = sorted(factors)  # LoraConfig stores a set; keep a stable list.
    config["peft_type"] = "LORA"
    state = {}
    for name, f in factors.items():
        state[f"base_model.model.{name}.lora_A.weight"] = f.A
        state[f"base_model.model.{name}.lora_B.weight"] = f.B
    return config, state
