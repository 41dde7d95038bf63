"""The LoRA family as training methods: lora, pissa, milora, ailora, reailora (``ailora.core.policies.STARTS``).

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
from ailora.core.options import LoraTrainingOptions
from ailora.core.policies import STARTS
from ailora.core.state import state_of
from ailora.methods.registry import Prepared, TrainMethod, register_method


def _apply_options(cfg, seed: int) -> ApplyOptions:
    return ApplyOptions(method=cfg.name, lora=cfg.options.lora(), seed=seed)


def prepare_lora(model: nn.Module, cfg, seed: int) -> Prepared:
    """LoRA adapters started as ``cfg.name`` says with ``cfg.options`` (a ``LoraTrainingOptions``);
    the task head trains in full."""
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
    ratio = cfg.options.loraplus_ratio
    return Prepared(model, state, loraplus_ratio=ratio, value_lr_ratio=cfg.options.value_lr_ratio,
                    details={"loraplus_ratio": ratio}, synced=synced)


def save_lora(prepared: Prepared, out_dir) -> dict:
    return save_adapter(prepared.model, out_dir, overwrite=True, state=prepared.state)


def check_lora(cfg) -> None:
    """Unknown roles or inits in the targets and policy, an unknown solver (what the config alone
    cannot check)."""
    _apply_options(cfg, 0).resolved_policy()


def lora_variant(name: str, description: str, **forced) -> TrainMethod:
    """A method that prepares and saves as plain LoRA with some options forced (dora: use_dora=True...);
    a forced value may be a function of the method's options."""

    def as_lora(cfg):
        values = {k: (v(cfg.options) if callable(v) else v) for k, v in forced.items()}
        return dataclasses.replace(cfg, name="lora", options=dataclasses.replace(cfg.options, **values))

    return TrainMethod(name, lambda model, cfg, seed: prepare_lora(model, as_lora(cfg), seed), save_lora,
                       description, LoraTrainingOptions, lambda cfg: check_lora(as_lora(cfg)),
                       lambda model, cfg, seed, directory: start_lora(model, as_lora(cfg), seed, directory))


for _method in STARTS.values():
    register_method(TrainMethod(_method.name, prepare_lora, save_lora, _method.description, LoraTrainingOptions,
                                check_lora, start_lora))
