"""Optimizer parameter groups: one per role plus the task head, with each role's learning rate.

AILoRA gives the value adapters twice the query adapters' learning rate (inspired by LoRA+); the
method records that ratio and ``param_groups`` applies it, so a user writes no grouping code.
A fused module's adapter holds several roles in one tensor, so one learning rate must serve all
of them: its group is named by its roles joined with "+", and it gets the base learning rate.

LoRA+ (Hayou et al. 2024) gives lora_B ``loraplus_ratio`` times the learning rate of its role's
lora_A. PEFT's ``create_loraplus_optimizer`` is not used: it sends every 1-D trainable tensor to
the lora_B group, so the classifier's bias (and DoRA's magnitudes) would get ratio x lr while the
classifier's weight gets lr. Here only ``lora_B`` tensors are raised; the head, biases and DoRA
magnitudes keep their role's (or the head's) rate.

Baselines without LoRA factors (full, BitFit, Houlsby, VeRA) name their head and their own group
(``head=``, ``own_group=``): their own trained weights go in one group of that name at ``lr``
and the task head in ``head``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from ailora.core.state import AiloraState, state_of
from ailora.errors import AiloraError

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight", "norm.weight")


def _module_of(param_name: str) -> str:
    """``base_model.model.x.y.lora_A.default.weight`` -> ``x.y``."""
    head = param_name.split(".lora_", 1)[0]
    return head.removeprefix("base_model.model.")


def _role_ratios(state: AiloraState | None, lr_ratios: Mapping[str, float] | None,
                 value_lr_ratio: float | None) -> dict[str, float]:
    """role -> lr multiplier: the method's, updated by ``lr_ratios``, then ``value_lr_ratio``."""
    ratios = dict(state.lr_ratios) if state is not None else {}
    ratios.update(lr_ratios or {})
    if value_lr_ratio is not None:
        if value_lr_ratio <= 0:
            raise AiloraError(f"value_lr_ratio must be positive, got {value_lr_ratio}")
        ratios["value"] = value_lr_ratio
    return ratios


class _Grouper:
    """Names the group of each trainable parameter and gives its learning rate."""

    def __init__(self, state: AiloraState | None, lr: float, ratios: dict[str, float], head_lr: float | None,
                 loraplus_ratio: float | None, head: Sequence[str] | None, own_group: str | None):
        self.roles_of = {n: t.roles for n, t in state.targets.items()} if state is not None else {}
        self.head = list(head) if head is not None else (state.head if state is not None else [])
        self.own_group = own_group
        self.lr, self.ratios, self.loraplus_ratio = lr, ratios, loraplus_ratio
        self.head_lr = head_lr if head_lr is not None else lr

    def __call__(self, name: str) -> tuple[str, float]:
        if ".lora_" in name:
            return self._adapter(name)
        if any(f".{h}." in f".{name}" for h in self.head):
            return "head", self.head_lr
        if self.own_group is not None:  # a baseline's own weights: biases, adapters, vectors, or all (full)
            return self.own_group, self.lr
        return "other", self.head_lr

    def _adapter(self, name: str) -> tuple[str, float]:
        """A fused module's roles share one group at the base lr; LoRA+ raises lora_B alone."""
        roles = self.roles_of.get(_module_of(name), ("adapter",))
        group = "+".join(roles)
        group_lr = self.lr * self.ratios.get(roles[0], 1.0) if len(roles) == 1 else self.lr
        if self.loraplus_ratio is not None and ".lora_B." in name:
            return f"{group}.lora_B", group_lr * self.loraplus_ratio
        return group, group_lr


def param_groups(
    model: nn.Module,
    lr: float,
    value_lr_ratio: float | None = None,
    lr_ratios: Mapping[str, float] | None = None,
    weight_decay: float = 0.0,
    head_lr: float | None = None,
    loraplus_ratio: float | None = None,
    state: AiloraState | None = None,
    head: Sequence[str] | None = None,
    own_group: str | None = None,
) -> list[dict]:
    """Groups for ``torch.optim.AdamW(param_groups(model, lr))``, each with a ``name``.

    Args:
        lr: the base (query) learning rate.
        value_lr_ratio: value-adapter lr / base lr (default: the method's, 2 for AILoRA, else 1).
        lr_ratios: role -> multiplier for any role, applied before ``value_lr_ratio``.
        weight_decay: applied to adapter and head weights, never to biases or norm weights.
        head_lr: learning rate of the task head and other trainable non-adapter weights (default lr).
        loraplus_ratio: LoRA+: each lora_B gets this times its role's lr (default: none).
        state: the model's AiloraState (default: ``state_of(model)``): roles, lr ratios and head.
        head: the task-head modules (default: the state's), trained at ``head_lr`` in group ``head``.
        own_group: for a method without LoRA factors (a baseline), the name of the group, at ``lr``,
            of its trained weights outside the head (default: they go to ``other`` at ``head_lr``).
    """
    if lr <= 0:
        raise AiloraError(f"learning rate must be positive, got {lr}")
    state = state if state is not None else state_of(model)
    ratios = _role_ratios(state, lr_ratios, value_lr_ratio)
    if loraplus_ratio is not None and loraplus_ratio <= 0:
        raise AiloraError(f"loraplus_ratio must be positive, got {loraplus_ratio}")
    group_of = _Grouper(state, lr, ratios, head_lr, loraplus_ratio, head, own_group)
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not any(name.endswith(s) for s in NO_DECAY) and p.ndim > 1
        group, group_lr = group_of(name)
        key = (group, decay)
        if key not in groups:
            groups[key] = {"name": group if decay else f"{group}.no_decay", "params": [], "lr": group_lr,
                           "weight_decay": weight_decay if decay else 0.0}
        groups[key]["params"].append(p)
    if not groups:
        raise AiloraError("the model has no trainable parameters")
    return list(groups.values())
