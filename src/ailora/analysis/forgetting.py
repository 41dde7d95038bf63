"""Forgetting: the fine-tuned model's cross-entropy against the base model's predictions.

AILoRA paper, sec. 5.3 and Figure 4b (after Kalajdzievski 2024): on held-out text,
CE(p_base, p_ft) = H(p_base) + KL(p_base || p_ft), averaged over predicted tokens. Encoders
predict masked tokens (a seeded 15% of the non-special tokens, replaced by [MASK]); decoders
predict the next token at every non-padding position.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from ailora.errors import AiloraError


def forgetting_loss(
    base_logits: torch.Tensor, finetuned_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, float]:
    """CE of the fine-tuned predictions against the base distribution, with its entropy and KL parts.

    base_logits, finetuned_logits: (..., V), e.g. (batch, seq, vocab); mask: (...) bool, the
    positions to average over (all if None). With p = softmax(base), q = softmax(finetuned):
    cross_entropy = -sum p log q, base_entropy = -sum p log p, kl = sum p (log p - log q), each
    averaged over the masked positions (AILoRA paper, Figure 4b). Also returns ``tokens``.
    """
    if base_logits.shape != finetuned_logits.shape:
        raise AiloraError(
            f"logits shapes differ: {tuple(base_logits.shape)} vs {tuple(finetuned_logits.shape)}"
        )
    if mask is None:
        mask = torch.ones(base_logits.shape[:-1], dtype=torch.bool)
    if mask.shape != base_logits.shape[:-1]:
        raise AiloraError(f"mask shape {tuple(mask.shape)} does not match logits {tuple(base_logits.shape)}")
    mask = mask.bool()
    log_p = torch.log_softmax(base_logits[mask].double(), dim=-1)
    log_q = torch.log_softmax(finetuned_logits[mask].double(), dim=-1)
    p = log_p.exp()
    n = int(mask.sum())
    if n == 0:
        return {"cross_entropy": 0.0, "base_entropy": 0.0, "kl": 0.0, "tokens": 0}
    # xlogy-style: p log p is 0 where p underflows to 0.
    entropy = -(p * log_p).nan_to_num().sum(-1)
    cross = -(p * log_q).sum(-1)
    kl = (p * (log_p - log_q)).nan_to_num().sum(-1)
    return {
        "cross_entropy": float(cross.sum()) / n,
        "base_entropy": float(entropy.sum()) / n,
        "kl": float(kl.sum()) / n,
        "tokens": n,
    }


def combine_forgetting(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Token-weighted mean of several `forgetting_loss` results (one per batch)."""
    parts = list(parts)
    n = sum(int(p["tokens"]) for p in parts)
    keys = ("cross_entropy", "base_entropy", "kl")
    if n == 0:
        return {**dict.fromkeys(keys, 0.0), "tokens": 0}
    return {**{k: sum(p[k] * p["tokens"] for p in parts) / n for k in keys}, "tokens": n}


def mlm_positions(special: torch.Tensor, prob: float = 0.15, seed: int = 0) -> torch.Tensor:
    """Seeded choice of positions to mask, as in BERT pre-training (Devlin et al. 2019, sec. 3.1).

    special: (batch, seq) bool, True at padding and special tokens, never chosen. Each other
    position is chosen with probability `prob`; a row with none chosen gets one, so every text
    counts. Returns (batch, seq) bool.
    """
    if not 0 < prob <= 1:
        raise AiloraError(f"mask probability must be in (0, 1], got {prob}")
    g = torch.Generator().manual_seed(seed)
    chosen = (torch.rand(special.shape, generator=g) < prob) & ~special
    for row in range(special.shape[0]):
        candidates = (~special[row]).nonzero().flatten()
        if not chosen[row].any() and candidates.numel():
            pick = candidates[torch.randint(candidates.numel(), (1,), generator=g)]
            chosen[row, pick] = True
    return chosen
