"""The output checks: a fixed probe batch, run before and after a change to the model, and a few
seeded random input rows per changed layer, run through the layer before and after."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

# fp32 tolerance on the largest absolute output difference (logits or hidden states).
FP32_TOLERANCE = 1e-4
# Half-precision models compute in bf16/fp16, whose own rounding is ~1e-2 relative: the check is relative there.
HALF_RELATIVE_TOLERANCE = 2e-2
# Random input rows per layer in the per-layer check: x: (rows, in) ~ N(0, 1). A wrong weight block D
# (any D != 0) moves D @ x off zero with probability one, so a few rows catch it.
LAYER_PROBE_ROWS = 4


def tolerance_for(dtype: torch.dtype, reference: torch.Tensor) -> float:
    if dtype in (torch.float32, torch.float64):
        return FP32_TOLERANCE
    return HALF_RELATIVE_TOLERANCE * max(1.0, reference.abs().max().item())


def layer_tolerance(dtype: torch.dtype, reference: torch.Tensor) -> float:
    """Tolerance of the per-layer check: relative to the layer's largest output on N(0, 1) rows (which
    scales with its weights' row norms) once that exceeds 1, in float32 as in half precision."""
    scale = max(1.0, reference.abs().max().item())
    return (FP32_TOLERANCE if dtype in (torch.float32, torch.float64) else HALF_RELATIVE_TOLERANCE) * scale


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def make_probe(model: nn.Module, batch: int = 2, length: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded batch of token ids valid for the model (and decoder ids for encoder-decoders).

    Encoder-decoders get decoder ids as long as the encoder's, and every row ends with the eos
    token, which appears nowhere else: their sequence-classification heads (BART, T5) read the
    decoder's state at the input's eos positions and need the same count of them in every row.
    """
    cfg = model.config
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    probe = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(cfg, "is_encoder_decoder", False):
        eos = getattr(cfg, "eos_token_id", None)
        if isinstance(eos, int) and 0 <= eos < vocab:
            ids[ids == eos] = (eos + 1) % vocab
            ids[:, -1] = eos
        probe["decoder_input_ids"] = torch.randint(0, vocab, (batch, length), generator=g)
    device = model_device(model)
    return {k: v.to(device) for k, v in probe.items()}


@contextmanager
def eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def first_output(out) -> torch.Tensor:
    """logits / last_hidden_state / start_logits: the first tensor a transformers model returns."""
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return out[0] if isinstance(out, tuple | list) else out


def run_probe(model: nn.Module, probe: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's first output on the probe, in float32, with dropout off."""
    with eval_mode(model):
        return first_output(model(**probe)).detach().float().clone()


def layer_probe(in_features: int, dtype: torch.dtype, device, generator: torch.Generator,
                rows: int = LAYER_PROBE_ROWS) -> torch.Tensor:
    """Seeded N(0, 1) input rows for one layer: (rows, in_features), drawn on the CPU by ``generator``."""
    return torch.randn(rows, in_features, generator=generator).to(device=device, dtype=dtype)


def run_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s output on ``x`` (its hooks, dropout off), in float32: (rows, out)."""
    with eval_mode(layer):
        return layer(x).detach().float()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def compare_outputs(model: nn.Module, probe: dict[str, torch.Tensor], reference: torch.Tensor,
                    dtype: torch.dtype) -> dict:
    """``model``'s output on ``probe`` against ``reference`` (its output before a change):
    {"max_abs_diff", "tolerance" (for a model of ``dtype``), "passed"}."""
    diff = max_abs_diff(run_probe(model, probe), reference)
    tol = tolerance_for(dtype, reference)
    return {"max_abs_diff": diff, "tolerance": tol, "passed": diff <= tol}
