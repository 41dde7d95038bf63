"""Finding the attention projections of a state dict, and pairing names across checkpoints.

`split_roles` is the one place that decides which weight is W^Q, W^K or W^V (by the last
component of the module name), so that it can later be replaced by ``ailora.core.roles``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from ailora.errors import AiloraError

# Last module-name component of each attention projection, per architecture family:
# BERT/RoBERTa (query), LLaMA/OPT/BART (q_proj), DeBERTa-v2 (query_proj), DistilBERT (q_lin).
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "query": ("query", "q_proj", "query_proj", "q_lin"),
    "key": ("key", "k_proj", "key_proj", "k_lin"),
    "value": ("value", "v_proj", "value_proj", "v_lin"),
}


def natural_key(name: str) -> list:
    """Sort key putting ``layer.2`` before ``layer.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def layer_index(name: str) -> int | None:
    """The first all-digit component of a module name (``encoder.layer.3.attention...`` -> 3)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def parse_roles(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"query,value"`` -> ``("query", "value")``; an unknown role is an AiloraError."""
    roles = [r.strip() for r in (text.split(",") if isinstance(text, str) else text) if r.strip()]
    bad = [r for r in roles if r not in ROLE_NAMES]
    if bad or not roles:
        raise AiloraError(f"unknown target role(s) {bad or roles!r}; choose from {', '.join(ROLE_NAMES)}")
    return tuple(dict.fromkeys(roles))


def split_roles(
    state_dict: Mapping[str, torch.Tensor], roles: Iterable[str] = ("query", "value")
) -> dict[str, dict[str, torch.Tensor]]:
    """Query/key/value projection weights of a BERT-, LLaMA-, DeBERTa- or DistilBERT-style state dict.

    state_dict: ``{"<module>.weight": tensor (out, in), ...}``.
    Returns ``{role: {module_name: weight (out, in)}}``, module names in natural layer order.
    """
    roles = parse_roles(roles)
    found: dict[str, dict[str, torch.Tensor]] = {role: {} for role in roles}
    for key in sorted(state_dict, key=natural_key):
        tensor = state_dict[key]
        if not key.endswith(".weight") or tensor.ndim != 2:
            continue
        module = key[: -len(".weight")]
        leaf = module.rsplit(".", 1)[-1]
        for role in roles:
            if leaf in ROLE_NAMES[role]:
                found[role][module] = tensor
    return found


def align_names(names_a: Iterable[str], names_b: Iterable[str]) -> list[tuple[str, str]]:
    """Pair module names of two checkpoints that differ only by a wrapper prefix.

    ``encoder.layer.0.attention.self.query`` pairs with ``bert.encoder.layer.0.attention.self.query``
    (a BertModel against a BertForSequenceClassification). Names of `names_a` without a partner are
    left out; one with several partners is an AiloraError.
    """
    names_b = list(names_b)
    pairs = []
    for a in names_a:
        exact = [b for b in names_b if b == a]
        matches = exact or [b for b in names_b if b.endswith("." + a) or a.endswith("." + b)]
        if len(matches) > 1:
            raise AiloraError(f"module {a!r} matches several modules of the other checkpoint: {matches[:3]}")
        if matches:
            pairs.append((a, matches[0]))
    return pairs


def matched_roles(
    base: Mapping[str, torch.Tensor],
    other: Mapping[str, torch.Tensor],
    roles: Iterable[str] = ("query", "value"),
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, torch.Tensor]]]:
    """The target projections of two checkpoints, both keyed by the base's module names.

    base, other: state dicts whose names may differ by a wrapper prefix (see `align_names`).
    Returns ``(base_roles, other_roles)``, each ``{role: {base_module_name: W (out, in)}}``. A base
    projection missing from `other`, or of another shape there, is an AiloraError.
    """
    base_roles = split_roles(base, roles)
    other_found = split_roles(other, roles)
    other_roles: dict[str, dict[str, torch.Tensor]] = {}
    for role, weights in base_roles.items():
        if not weights:
            raise AiloraError(f"no {role} projections found in the base state dict")
        pairs = dict(align_names(weights, other_found[role]))
        other_roles[role] = {}
        for name, w0 in weights.items():
            if name not in pairs:
                raise AiloraError(f"the other checkpoint has no weight for base module {name!r}")
            w1 = other_found[role][pairs[name]]
            if w1.shape != w0.shape:
                raise AiloraError(
                    f"{name}: shape {tuple(w1.shape)} in the other checkpoint, {tuple(w0.shape)} in base"
                )
            other_roles[role][name] = w1
    return base_roles, other_roles


def role_deltas(
    base: Mapping[str, torch.Tensor],
    finetuned: Mapping[str, torch.Tensor],
    roles: Iterable[str] = ("query", "value"),
) -> dict[str, dict[str, torch.Tensor]]:
    """The full fine-tuning updates dW = W_ft - W_0 of the target projections (AILoRA paper, Fig. 1 c, d).

    base, finetuned: state dicts (names paired as in `matched_roles`).
    Returns ``{role: {base_module_name: dW (out, in) float32}}``.
    """
    base_roles, ft_roles = matched_roles(base, finetuned, roles)
    return {
        role: {name: ft_roles[role][name].float() - w0.float() for name, w0 in weights.items()}
        for role, weights in base_roles.items()
    }
