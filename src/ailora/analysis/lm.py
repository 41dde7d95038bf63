"""Running a base and a fine-tuned language model side by side on held-out text (for `forgetting`).

Encoder checkpoints such as all-MiniLM-L6-v2 ship without a masked-LM head: BERT's decoder
weight is tied to the word embeddings (so it comes with the checkpoint), but the transform
layer (dense + LayerNorm) and the output bias are missing and get randomly initialised. So
that the comparison is fair, every head parameter missing from the base checkpoint is
initialised from `seed` in the base model and copied unchanged into the fine-tuned model; the
loading report lists them under ``shared_random_head``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from ailora.analysis.forgetting import combine_forgetting, forgetting_loss, mlm_positions
from ailora.analysis.weights import load_checkpoint
from ailora.core.models import resolve_model_path
from ailora.errors import AiloraError

OBJECTIVES = ("auto", "mlm", "causal")


def detect_objective(path: str | os.PathLike) -> str:
    """``"causal"`` for decoder checkpoints (``*ForCausalLM``, ``*LMHeadModel``, is_decoder), else ``"mlm"``."""
    config = json.loads((resolve_model_path(str(path)) / "config.json").read_text())
    archs = " ".join(config.get("architectures") or [])
    if "CausalLM" in archs or "LMHeadModel" in archs or config.get("is_decoder"):
        return "causal"
    return "mlm" if config.get("model_type") in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "causal"


def load_lm_pair(base: str | os.PathLike, finetuned: str | os.PathLike, objective: str, seed: int = 0):
    """Load (base_model, finetuned_model, shared_random_head_keys) with a masked-LM or causal-LM head.

    base, finetuned: model directories or short names (minilm, smollm2).
    """
    if objective not in ("mlm", "causal"):
        raise AiloraError(f"objective must be mlm or causal, got {objective!r}")
    kind = "masked-lm" if objective == "mlm" else "causal-lm"
    models, missing = [], []
    for path in (base, finetuned):
        torch.manual_seed(seed)
        model, info = load_checkpoint(path, kind=kind, info=True)
        models.append(model)
        missing.append(set(info.get("missing_keys", ())))
    base_model, ft_model = models
    shared = sorted(missing[0])
    base_state = base_model.state_dict()
    ft_model.load_state_dict({k: base_state[k] for k in shared if k in base_state}, strict=False)
    return base_model, ft_model, shared


def read_texts(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """Held-out texts: a .txt file (one per line) or .jsonl (field "text" or "sentence"); blanks skipped."""
    p = Path(path)
    if not p.is_file():
        raise AiloraError(f"text file {p} does not exist")
    texts = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise AiloraError(f"{p}:{i} is not valid JSON") from None
            line = row.get("text") or row.get("sentence") or ""
        if line.strip():
            texts.append(line.strip())
    if not texts:
        raise AiloraError(f"text file {p} has no non-empty texts")
    return texts[:limit] if limit else texts


@torch.no_grad()
def measure_forgetting(
    base_model,
    ft_model,
    tokenizer,
    texts: list[str],
    objective: str,
    max_length: int = 128,
    batch_size: int = 16,
    mask_prob: float = 0.15,
    seed: int = 0,
) -> dict[str, float]:
    """`forgetting_loss` of ft_model against base_model over `texts`, token-weighted over batches.

    mlm: a seeded `mask_prob` of the non-special tokens of each batch is replaced by the mask
    token and the two models' distributions are compared at those positions; causal: the
    next-token distributions at every non-padding position.
    """
    if objective == "mlm" and tokenizer.mask_token_id is None:
        raise AiloraError("tokenizer has no mask token; a masked-LM comparison needs one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    parts = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        ids, attn = enc["input_ids"], enc["attention_mask"]
        if objective == "mlm":
            positions = mlm_positions(
                enc["special_tokens_mask"].bool() | (attn == 0), mask_prob, seed + start
            )
            ids = ids.masked_fill(positions, tokenizer.mask_token_id)
        else:
            positions = attn.bool()
        base_logits = base_model(input_ids=ids, attention_mask=attn).logits
        ft_logits = ft_model(input_ids=ids, attention_mask=attn).logits
        parts.append(forgetting_loss(base_logits, ft_logits, positions))
    return combine_forgetting(parts)
