"""Optimizer parameter groups: one per role plus the task head, with each role's learning rate.

AILoRA gives the value adapters twice the query adapters' learning rate (inspired by LoRA+); the
method records that ratio and ``param_groups`` applies it, so a user writes no grouping code.
A fused module's adapter holds several roles in one tensor, so one learning rate must serve all
of them: its group is named by its roles joined with "+", and it gets the base learning rate.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ailora.errors import AiloraError

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight", "norm.weight")


def _module_of(param_name: str) -> str:
    """``base_model.model.x.y.lora_A.default.weight`` -> ``x.y``."""
    head = param_name.split(".lora_", 1)[0]
    return head.removeprefix("base_model.model.")


def param_groups(
    model: nn.Module,
    lr: float,
    value_lr_ratio: float | None = None,
    lr_ratios: Mapping[str, float] | None = None,
    weight_decay: float = 0.0,
    head_lr: float | None = None,
) -> list[dict]:
    """Groups for ``torch.optim.AdamW(param_groups(model, lr))``, each with a ``name``.

    Args:
        lr: the base (query) learning rate.
        value_lr_ratio: value-adapter lr / base lr (default: the method's, 2 for AILoRA, else 1).
        lr_ratios: role -> multiplier for any role, applied before ``value_lr_ratio``.
        weight_decay: applied to adapter and head weights, never to biases or norm weights.
        head_lr: learning rate of the task head and other trainable non-adapter weights (default lr).
    """
    if lr <= 0:
        raise AiloraError(f"learning rate must be positive, got {lr}")
    state = getattr(model, "ailora_state", None)
    ratios = dict(state.lr_ratios) if state is not None else {}
    ratios.update(lr_ratios or {})
    if value_lr_ratio is not None:
        if value_lr_ratio <= 0:
            raise AiloraError(f"value_lr_ratio must be positive, got {value_lr_ratio}")
        ratios["value"] = value_lr_ratio
    roles_of = {n: t.roles for n, t in state.targets.items()} if state is not None else {}
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not any(name.endswith(s) for s in NO_DECAY) and p.ndim > 1
        if ".lora_" in name:
            roles = roles_of.get(_module_of(name), ("adapter",))
            group = "+".join(roles)
            group_lr = lr * ratios.get(roles[0], 1.0) if len(roles) == 1 else lr
        else:
            group = "head" if state is not None and any(f".{h}." in f".{name}" for h in state.head) else "other"
            group_lr = head_lr if head_lr is not None else lr
        key = (group, decay)
        if key not in groups:
            groups[key] = {"name": group if decay else f"{group}.no_decay", "params": [], "lr": group_lr,
                           "weight_decay": weight_decay if decay else 0.0}
        groups[key]["params"].append(p)
    if not groups:
        raise AiloraError("the model has no trainable parameters")
    return list(groups.values())
