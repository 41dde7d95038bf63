"""The SVD-initialised LoRA family as data: each method is a per-role policy and its defaults.

A policy maps a role to an initialisation name from ``ailora.core.inits.INITS``. A user policy such as
``"query=principal,value=minor,key=lora"`` gives any role any start; its roles become the targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ailora.core.inits import INITS
from ailora.core.roles import ROLES
from ailora.errors import AiloraError
from ailora.registry import lookup


@dataclass(frozen=True)
class StartPolicy:
    """A LoRA-family method as a start: its per-role inits, default targets, alpha and lr ratios.
    (The training methods, of which these are five, are ``ailora.methods.registry.METHODS``.)"""

    name: str
    description: str
    default_init: str  # the start of a target role the policy does not name
    policy: Mapping[str, str] = field(default_factory=dict)  # role -> init, overriding default_init
    targets: tuple[str, ...] = ("query", "value")  # roles adapted by default
    alpha_per_rank: float = 1.0  # default alpha = alpha_per_rank * r (s = 1 for the SVD starts)
    lr_ratios: Mapping[str, float] = field(default_factory=dict)  # role -> learning-rate multiplier


STARTS: dict[str, StartPolicy] = {
    m.name: m
    for m in [
        StartPolicy("lora", "LoRA: A random, B = 0 (Hu et al. 2021)", "lora", alpha_per_rank=2.0),
        StartPolicy("pissa", "PiSSA: principal components on every target (Meng et al. 2024)", "principal"),
        StartPolicy("milora", "MiLoRA: minor components on every target (Wang et al. 2024)", "minor"),
        StartPolicy("ailora", "AILoRA: principal on query, minor on value, value lr x2 (arXiv 2510.08034)",
               "principal", {"query": "principal", "value": "minor"}, lr_ratios={"value": 2.0}),
        StartPolicy("reailora", "reAILoRA: minor on query, principal on value (the AILoRA paper's control)",
               "principal", {"query": "minor", "value": "principal"}, lr_ratios={"value": 2.0}),
    ]
}


def parse_policy(text: str | Mapping[str, str]) -> dict[str, str]:
    """``"query=principal,value=minor"`` (or a mapping) -> {role: init}, validated."""
    if isinstance(text, Mapping):
        items = list(text.items())
    else:
        items = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in part:
                raise AiloraError(f"policy entry {part!r} is not ROLE=INIT (e.g. query=principal)")
            role, init = (s.strip() for s in part.split("=", 1))
            items.append((role, init))
    policy = {}
    for role, init in items:
        if role not in ROLES:
            raise AiloraError(f"unknown role {role!r} in policy; roles are: {', '.join(ROLES)}")
        if init not in INITS:
            raise AiloraError(f"unknown init {init!r} for role {role!r}; inits are: {', '.join(INITS)}")
        policy[role] = init
    if not policy:
        raise AiloraError("policy is empty; give ROLE=INIT pairs such as query=principal,value=minor")
    return policy


def get_start(name: str) -> StartPolicy:
    """The LoRA-family method (a per-role policy) called ``name``."""
    return lookup(STARTS, name, "method")


def resolve_policy(
    method: str, targets: list[str] | tuple[str, ...] | str | None = None,
    policy: str | Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The {role: init} that a call adapts: the method's policy on its targets, then user overrides.

    ``targets`` replaces the method's target roles (the method's policy or default start applies
    to each); ``policy`` then sets the start of named roles, adding them to the targets.
    """
    m = get_start(method)
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    roles = list(targets) if targets is not None else list(m.targets)
    if not roles and policy is None:
        raise AiloraError("targets is empty; name at least one role, e.g. query,value")
    for role in roles:
        if role not in ROLES:
            raise AiloraError(f"unknown role {role!r} in targets; roles are: {', '.join(ROLES)}")
    resolved = {role: m.policy.get(role, m.default_init) for role in roles}
    if policy is not None:
        resolved.update(parse_policy(policy))
    return resolved
