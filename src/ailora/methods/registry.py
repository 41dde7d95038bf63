"""Method dispatch for training: a method is one registry entry (prepare the model, save the result).

The LoRA family (``ailora.core.policies.METHODS``) goes through ``ailora.core.apply`` and ``ailora.save``.
A new method (full fine-tuning, BitFit, DoRA...) is ``register_method(TrainMethod(...))``: a
function that freezes/wraps the base model and returns it with only its trainable weights
requiring gradients, and one that writes what it trained to a directory. The paper's Table 4
baselines (full, bitfit, houlsby, dora, rslora, vera, loraplus) are registered from ``ailora.methods``;
each method declares the MethodConfig options it reads, and any other option set is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import ailora
from ailora.core.policies import METHODS as LORA_FAMILY
from ailora.errors import AiloraError
from ailora.methods.options import LORA_OPTIONS, refuse_unused


@dataclass(frozen=True)
class TrainMethod:
    name: str
    prepare: Callable[[nn.Module, object, int], nn.Module]
    """``prepare(model, method_cfg, seed) -> model`` with only the trained weights requiring grad."""
    save: Callable[[nn.Module, str], dict]
    """``save(model, out_dir) -> report`` writes what was trained (an adapter, or the full model)."""
    description: str = ""
    options: frozenset[str] | None = None
    """MethodConfig options the method reads; setting any other is an error (None: not checked)."""


def _apply_lora_family(model: nn.Module, cfg, seed: int) -> nn.Module:
    model = ailora.apply(
        model, method=cfg.name, rank=cfg.rank, alpha=cfg.alpha, targets=cfg.targets, policy=cfg.policy,
        solver=cfg.solver, seed=seed, dropout=cfg.dropout, use_rslora=cfg.use_rslora, use_dora=cfg.use_dora,
    )
    model.ailora_state.loraplus_ratio = cfg.loraplus_ratio  # param_groups applies it
    return model


def _save_adapter(model: nn.Module, out_dir) -> dict:
    return ailora.save(model, out_dir, overwrite=True)


METHODS: dict[str, TrainMethod] = {
    name: TrainMethod(name, _apply_lora_family, _save_adapter, m.description, LORA_OPTIONS)
    for name, m in LORA_FAMILY.items()
}


def register_method(method: TrainMethod, replace: bool = False) -> TrainMethod:
    if method.name in METHODS and not replace:
        raise AiloraError(f"training method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> TrainMethod:
    if name not in METHODS:
        raise AiloraError(f"unknown method {name!r}; methods are: {', '.join(METHODS)}")
    return METHODS[name]


def check_options(cfg) -> None:
    """Refuse a MethodConfig that sets an option its method does not read (one-line reason)."""
    refuse_unused(cfg, cfg.name, get_method(cfg.name).options)


def prepare_model(model: nn.Module, cfg, seed: int) -> nn.Module:
    """The model ready to train under ``cfg.name`` (a MethodConfig)."""
    return get_method(cfg.name).prepare(model, cfg, seed)


def synced_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What must be identical on every process after preparation: all parameters and buffers
    (adapter factors, SVD residuals, the random head) and the recorded starting factors."""
    out = dict(model.named_parameters())
    out.update({f"buffer:{k}": b for k, b in model.named_buffers()})
    state = getattr(model, "ailora_state", None)
    for name, (a0, b0) in (state.initial.items() if state is not None else []):
        out[f"initial:{name}.A"], out[f"initial:{name}.B"] = a0, b0
    return out


def _register_baselines() -> None:
    # Imported here: ailora.methods.baselines builds its entries with TrainMethod from this module.
    from ailora.methods.baselines import baseline_methods

    for method in baseline_methods():
        register_method(method)


_register_baselines()
