"""The target weights of a model by role, and pairing module names across checkpoints.

Which module, or which row block of a fused module, is W^Q, W^K or W^V is decided by
``ailora.core.roles.find_targets``, the table `ailora.apply` adapts: so the analyses see BERT's
``query``, LLaMA's ``q_proj``, T5's ``q`` and the query rows of GPT-2's fused ``c_attn`` alike.
Models are loaded by ``ailora.core.models`` (directories, or the short names minilm, smollm2).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ailora.core.models import load_model, resolve_model_path
from ailora.core.roles import ROLES, Target, find_targets, weight_of
from ailora.errors import AiloraError

DEFAULT_ROLES = ("query", "value")


def layer_index(name: str) -> int | None:
    """The first all-digit component of a module name (``encoder.layer.3.attention...`` -> 3)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def parse_roles(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"query,value"`` -> ``("query", "value")``; a role `ailora.core.roles` lacks is an AiloraError."""
    roles = [r.strip() for r in (text.split(",") if isinstance(text, str) else text) if r.strip()]
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise AiloraError(f"unknown target role(s) {bad or roles!r}; choose from {', '.join(ROLES)}")
    return tuple(dict.fromkeys(roles))


def load_checkpoint(name_or_path: str | os.PathLike, kind: str = "auto", info: bool = False):
    """A float32 model in eval mode from a directory or a short name (minilm, smollm2).

    kind: as `ailora.core.models.load_model` (``"auto"``: the checkpoint's own architecture).
    With ``info=True`` returns ``(model, loading_info)``, loading_info listing missing keys.
    """
    path = resolve_model_path(str(name_or_path))
    loaded = load_model(path, kind=kind, output_loading_info=info)  # broken files: one-line errors there
    model, loading = loaded if info else (loaded, None)
    model.eval()
    return (model, loading) if info else model


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


def target_modules(model: nn.Module, roles: str | Iterable[str] = DEFAULT_ROLES):
    """The targets of `roles` in `model` and their whole weights.

    Returns ``(targets, {module_name: W (out, in) float32})``: a fused module (GPT-2's c_attn)
    appears once, its roles being row blocks of W (see `split_roles`).
    """
    targets = find_targets(model, parse_roles(roles))
    weights = {t.name: weight_of(model.get_submodule(t.name)).detach().float() for t in targets}
    return targets, weights


def split_roles(
    weights: Mapping[str, torch.Tensor], targets: Iterable[Target]
) -> dict[str, dict[str, torch.Tensor]]:
    """Cut module weights into the row blocks of each role.

    weights: ``{module_name: W (out, in)}``, names paired with the targets' by `align_names` (so a
    PEFT adapter's names, or a wrapped model's, work). Returns ``{role: {target_name: the role's rows of W
    (rows, in)}}``, roles in the targets' order; a target without a weight is left out.
    """
    targets = list(targets)
    pairs = dict(align_names([t.name for t in targets], weights))
    out: dict[str, dict[str, torch.Tensor]] = {}
    for t in targets:
        for b in t.blocks:
            role = out.setdefault(b.role, {})
            if t.name in pairs:
                role[t.name] = b.take(weights[pairs[t.name]])
    return out


def role_weights(
    model: nn.Module, roles: str | Iterable[str] = DEFAULT_ROLES
) -> dict[str, dict[str, torch.Tensor]]:
    """``{role: {module_name: W block (rows, in) float32}}`` of a model, fused blocks split out."""
    targets, weights = target_modules(model, roles)
    return split_roles(weights, targets)


def matched_modules(base: nn.Module, other: nn.Module, roles: str | Iterable[str] = DEFAULT_ROLES):
    """The target modules of two checkpoints of one architecture, both keyed by the base's names.

    base, other: models whose module names may differ by a wrapper prefix (see `align_names`).
    Returns ``(targets, base_weights, other_weights)``, weights ``{base_module_name: W (out, in)}``.
    A base target missing from `other`, or of another shape there, is an AiloraError.
    """
    targets, base_w = target_modules(base, roles)
    _, found = target_modules(other, roles)
    pairs = dict(align_names(base_w, found))
    other_w = {}
    for name, w0 in base_w.items():
        if name not in pairs:
            raise AiloraError(f"the other checkpoint has no weight for base module {name!r}")
        w1 = found[pairs[name]]
        if w1.shape != w0.shape:
            raise AiloraError(
                f"{name}: shape {tuple(w1.shape)} in the other checkpoint, {tuple(w0.shape)} in base"
            )
        other_w[name] = w1
    return targets, base_w, other_w


def matched_roles(base: nn.Module, other: nn.Module, roles: str | Iterable[str] = DEFAULT_ROLES):
    """`role_weights` of two checkpoints, both keyed by the base's module names (see `matched_modules`).

    Returns ``(base_roles, other_roles)``, each ``{role: {base_module_name: W block (rows, in)}}``.
    """
    targets, base_w, other_w = matched_modules(base, other, roles)
    return split_roles(base_w, targets), split_roles(other_w, targets)


def role_deltas(
    base: nn.Module, finetuned: nn.Module, roles: str | Iterable[str] = DEFAULT_ROLES
) -> dict[str, dict[str, torch.Tensor]]:
    """The full fine-tuning updates dW = W_ft - W_0 of the target projections (AILoRA paper, Fig. 1 c, d).

    base, finetuned: models (names paired as in `matched_modules`).
    Returns ``{role: {base_module_name: dW block (rows, in) float32}}``.
    """
    targets, base_w, ft_w = matched_modules(base, finetuned, roles)
    return split_roles({name: ft_w[name] - w0 for name, w0 in base_w.items()}, targets)
