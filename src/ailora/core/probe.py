"""The output checks: a few seeded random input rows per changed layer, run through the layer before
and after; a snapshot of everything else in the model, compared after (``snapshot``, ``untouched``);
and a fixed probe batch, run through the whole model before and after."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

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


def excess(check: dict) -> float:
    """How far a check's difference is past its tolerance (diff / tolerance); inf for a NaN difference,
    which compares as neither above nor below anything."""
    ratio = check["max_abs_diff"] / check["tolerance"]
    return math.inf if math.isnan(ratio) else ratio


def changed_by(diff: float, tol: float) -> str:
    """'by 0.012 (tolerance 1e-04)', or what a non-finite difference means, for an ExactnessError."""
    if math.isfinite(diff):
        return f"by {diff:.3g} (tolerance {tol:.1g})"
    return f"to non-finite values (NaN or Inf on the probe; tolerance {tol:.1g})"


def compare_outputs(model: nn.Module, probe: dict[str, torch.Tensor], reference: torch.Tensor,
                    dtype: torch.dtype) -> dict:
    """``model``'s output on ``probe`` against ``reference`` (its output before a change):
    {"max_abs_diff", "tolerance" (for a model of ``dtype``), "passed"}."""
    diff = max_abs_diff(run_probe(model, probe), reference)
    tol = tolerance_for(dtype, reference)
    return {"max_abs_diff": diff, "tolerance": tol, "passed": diff <= tol}


# Entries of each tensor the snapshot keeps (at spread, fixed positions): a write through ``.data``
# leaves the version counter as it was, and any write to a whole tensor moves these.
SAMPLED_ENTRIES = 8


@lru_cache(maxsize=1024)
def _positions(n: int) -> list[int]:
    """SAMPLED_ENTRIES positions in range(n), spread by Knuth's multiplicative hash."""
    return sorted({(i * 2654435761 + 40503) % n for i in range(SAMPLED_ENTRIES)})


def _sample(t: torch.Tensor) -> bytes:
    """The bytes of a few entries of ``t``."""
    n = t.numel()
    if n == 0 or not t.is_contiguous() or t.device.type == "meta":
        return b""
    try:
        raw = t.detach().reshape(-1).view(torch.uint8)  # any dtype, bf16 included, as bytes (no copy)
        if raw.device.type != "cpu":
            return raw.reshape(n, -1)[_positions(n)].cpu().numpy().tobytes()
        return raw.numpy().reshape(n, -1)[_positions(n)].tobytes()  # numpy indexing: far cheaper than torch's
    except (RuntimeError, TypeError):  # a tensor subclass with no byte view: its other fingerprints remain
        return b""


def _fingerprint(t: torch.Tensor) -> tuple:
    """What an in-place write (the version counter, a few entries), a cast, a move or a new ``.data`` changes."""
    return t.data_ptr(), t._version, t.dtype, tuple(t.shape), t.device, _sample(t)


@dataclass(frozen=True)
class Snapshot:
    """A model's modules by name, and each module's own parameters and buffers with their fingerprints."""

    modules: dict[str, nn.Module]
    tensors: list[tuple[str, str, str, torch.Tensor, tuple]]  # (module, "_parameters"|"_buffers", attr, t, print)


def snapshot(model: nn.Module, replaced: Iterable[str] = ()) -> Snapshot:
    """Record ``model`` before a change; the ``weight`` and ``bias`` of the modules named in ``replaced``
    are left out (those layers are checked on their outputs, bias included, instead; a float32
    residual lifts a half-precision bias to float32). Costs a walk over the modules and a few entries
    of each tensor: nothing next to reading the weights."""
    replaced = set(replaced)
    modules = dict(model.named_modules())
    tensors = [(name, kind, attr, t, _fingerprint(t)) for name, m in modules.items()
               for kind in ("_parameters", "_buffers") for attr, t in getattr(m, kind).items()
               if t is not None and not (kind == "_parameters" and attr in ("weight", "bias") and name in replaced)]
    return Snapshot(modules, tensors)


def _module_kept(name: str, before: nn.Module, now: nn.Module | None, adapted: set[str], heads: set[str]) -> bool:
    """An adapted layer now wraps the very module it replaced; a head is a copy beside the original
    (PEFT's modules_to_save) with equal tensors; every other module is the same object."""
    if name in adapted:
        return hasattr(now, "lora_A") and now.get_base_layer() is before
    if name in heads:
        copies = getattr(now, "modules_to_save", {})
        copy = copies["default"] if "default" in copies else None
        return getattr(now, "original_module", None) is before and copy is not None and all(
            torch.equal(a, b) for a, b in zip(before.state_dict().values(), copy.state_dict().values(), strict=True))
    return now is before


def untouched(model: nn.Module, snap: Snapshot, adapted: Iterable[str], heads: Iterable[str] = (),
              swapped: Mapping[str, nn.Module] | None = None) -> dict:
    """Compare ``model`` (the module PEFT wrapped, as it is after the change) with its ``snapshot``: adapters
    on exactly the ``adapted`` modules, each wrapping its original module; the ``heads`` copied as they were;
    every other module the same object; every recorded parameter and buffer the same tensor, unchanged.
    ``swapped``: modules replaced on purpose (quantised layers), name -> the module now expected there.

    With each adapted layer checked on its outputs, this makes the model's outputs unchanged without
    running it (an end-to-end forward reads every weight of the model, more than all the decompositions).
    Returns {"modules", "tensors" (how many were compared), "changed" (names, at most 5), "passed"}."""
    adapted, heads = set(adapted), set(heads)
    now = dict(model.named_modules())
    inside = tuple(f"{root}." for root in adapted | heads)  # their submodules now sit under other names
    swapped = swapped or {}
    changed = [n for n, m in snap.modules.items() if not n.startswith(inside)
               and not _module_kept(n, swapped.get(n, m), now.get(n), adapted, heads)]
    changed += sorted(n for n, m in now.items() if hasattr(m, "lora_A") and n not in adapted)
    for name, kind, attr, t, print_ in snap.tensors:
        if getattr(snap.modules[name], kind).get(attr) is not t or _fingerprint(t) != print_:
            changed.append(f"{name}.{attr}" if name else attr)
    return {"modules": len(snap.modules), "tensors": len(snap.tensors), "changed": changed[:5],
            "passed": not changed}
