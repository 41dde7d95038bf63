"""The LoRA family as training methods: lora, pissa, milora, ailora, reailora (``ailora.core.policies``).

Each prepares through ``ailora.core.apply`` (PEFT LoRA layers with an SVD or random start, outputs
unchanged at step 0), or starts from a directory of the streaming init (``ailora.core.initialised``),
and saves through ``ailora.core.adapters.save`` (a plain PEFT LoRA on the
original base). ``lora_variant`` makes methods that are plain LoRA with some options forced
(DoRA, rsLoRA, LoRA+ in ``ailora.methods.baselines``).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ailora.core.adapters import save as save_adapter
from ailora.core.apply import ApplyOptions, apply_with
from ailora.core.initialised import start_from_initialised
from ailora.core.policies import METHODS as LORA_FAMILY
from ailora.core.policies import resolve_policy
from ailora.core.state import state_of
from ailora.methods.options import LORA_OPTIONS, QUANT_OPTIONS
from ailora.methods.registry import Prepared, TrainMethod, register_method


def _apply_options(cfg, seed: int) -> ApplyOptions:
    return ApplyOptions(method=cfg.name, rank=cfg.rank, alpha=cfg.alpha, targets=cfg.targets, policy=cfg.policy,
                        solver=cfg.solver, seed=seed, dropout=cfg.dropout, use_rslora=cfg.use_rslora,
                        use_dora=cfg.use_dora, **{k: getattr(cfg, k) for k in QUANT_OPTIONS})


def prepare_lora(model: nn.Module, cfg, seed: int) -> Prepared:
    """LoRA adapters started as ``cfg.name`` says (a MethodConfig); the task head trains in full."""
    return _prepared(apply_with(model, _apply_options(cfg, seed)), cfg)


def start_lora(model: nn.Module, cfg, seed: int, directory) -> Prepared:
    """``prepare_lora`` for a model loaded from a directory of ``ailora init --residual-out``: the stored
    starting factors on its residual weights, no decomposition (the options must give the init's start)."""
    return _prepared(start_from_initialised(model, directory, _apply_options(cfg, seed)), cfg)


def _prepared(model, cfg) -> Prepared:
    state = state_of(model)
    synced = {}
    for name, (a0, b0) in state.initial.items():
        synced[f"initial:{name}.A"], synced[f"initial:{name}.B"] = a0, b0
    return Prepared(model, state, loraplus_ratio=cfg.loraplus_ratio,
                    details={"loraplus_ratio": cfg.loraplus_ratio}, synced=synced)


def save_lora(prepared: Prepared, out_dir) -> dict:
    return save_adapter(prepared.model, out_dir, overwrite=True, state=prepared.state)


def check_lora(cfg) -> None:
    """Unknown roles or inits in ``cfg.targets`` / ``cfg.policy`` (what the config alone cannot check)."""
    resolve_policy(cfg.name, cfg.targets, cfg.policy)


def lora_variant(name: str, description: str, **forced) -> TrainMethod:
    """A method that prepares and saves as plain LoRA with some options forced (dora: use_dora=True...);
    a forced value may be a function of the MethodConfig."""

    def as_lora(cfg):
        values = {k: (v(cfg) if callable(v) else v) for k, v in forced.items()}
        return dataclasses.replace(cfg, name="lora", **values)

    return TrainMethod(name, lambda model, cfg, seed: prepare_lora(model, as_lora(cfg), seed), save_lora,
                       description, LORA_OPTIONS, lambda cfg: check_lora(as_lora(cfg)),
                       lambda model, cfg, seed, directory: start_lora(model, as_lora(cfg), seed, directory))


for _method in LORA_FAMILY.values():
    register_method(TrainMethod(_method.name, prepare_lora, save_lora, _method.description, LORA_OPTIONS, check_lora,
                                start_lora))
