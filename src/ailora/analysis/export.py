"""`extract` end to end: base + fine-tuned checkpoints -> a PEFT LoRA adapter directory and report.

The adapter is written to a temporary directory, checked by loading it onto the base model
(``ailora.core.adapters.load``), and only then renamed to its destination
(``ailora.core.files.atomic_dir``): on any error nothing is left behind.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ailora.analysis.extract import check_rank_or_energy, extract_lora, peft_adapter
from ailora.analysis.weights import DEFAULT_ROLES, align_names, load_checkpoint, matched_modules, parse_roles
from ailora.core.adapters import CONFIG_FILE, WEIGHTS_FILE, load
from ailora.core.files import atomic_dir, check_empty_or_overwrite, write_bytes, write_json
from ailora.core.models import resolve_model_path
from ailora.core.probe import make_probe, run_probe
from ailora.core.roles import Target

REPORT = "extract_report.json"


def other_changes(
    base: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], targets: Iterable[str]
) -> dict:
    """Tensors other than the extracted weights that differ between base and fine-tuned state dicts.

    An adapter on the targets cannot reproduce them, so they bound how close base + adapter gets.
    Returns ``{"count": n, "max_abs_diff": float, "names": [up to 20 names]}``.
    """
    skip = {f"{t}.weight" for t in targets}
    changed, worst = [], 0.0
    for a, b in align_names(base, finetuned):
        if a in skip or base[a].shape != finetuned[b].shape or not base[a].is_floating_point():
            continue
        diff = float((finetuned[b].double() - base[a].double()).abs().max()) if base[a].numel() else 0.0
        if diff > 0:
            changed.append(a)
            worst = max(worst, diff)
    return {"count": len(changed), "max_abs_diff": worst, "names": changed[:20]}


def target_rows(delta: torch.Tensor, target: Target) -> torch.Tensor:
    """dW (out, in) with the rows outside the target's role blocks zeroed (a fused module's other roles)."""
    keep = torch.zeros(delta.shape[0], dtype=torch.bool)
    for b in target.blocks:
        keep[b.rows] = True
    return delta * keep[:, None]


def with_weights_of(model: nn.Module, other: nn.Module) -> nn.Module:
    """A copy of `model` carrying `other`'s tensors where names pair (`align_names`) and shapes agree.

    So a fine-tuned checkpoint of another class (a classifier over the base encoder) computes the
    base's outputs, comparable with base + adapter.
    """
    out = copy.deepcopy(model)
    mine, theirs = out.state_dict(), other.state_dict()
    pairs = align_names(mine, theirs)
    out.load_state_dict({a: theirs[b] for a, b in pairs if theirs[b].shape == mine[a].shape}, strict=False)
    return out


@torch.no_grad()
def probe_difference(base: nn.Module, finetuned: nn.Module, adapter: Path, seed: int = 0) -> dict:
    """max |f_{base + adapter}(x) - f_finetuned(x)| on a seeded probe batch of token ids.

    finetuned: the fine-tuned weights in the base's architecture (`with_weights_of`), so that the
    first outputs are comparable (last hidden state or logits). `base` gets the adapter injected.
    Returns ``{"max_abs_diff", "max_abs_output", "shape"}``.
    """
    probe = make_probe(base, seed=seed)
    expected = run_probe(finetuned, probe)
    got = run_probe(load(base, adapter), probe)
    return {
        "max_abs_diff": float((got - expected).abs().max()),
        "max_abs_output": float(expected.abs().max()),
        "shape": list(probe["input_ids"].shape),
    }


def _layer_report(targets: list[Target], deltas: Mapping[str, torch.Tensor], factors) -> dict:
    roles = {t.name: ",".join(t.roles) for t in targets}
    return {
        name: {
            "role": roles[name],
            "rank": f.rank,
            "energy_retained": f.energy,
            "relative_error": math.sqrt(max(0.0, 1.0 - f.energy)),
            "delta_norm": float(torch.linalg.matrix_norm(deltas[name].double())),
        }
        for name, f in factors.items()
    }


def extract_adapter_dir(
    base: str | os.PathLike,
    finetuned: str | os.PathLike,
    out: str | os.PathLike,
    rank: int | None = None,
    energy: float | None = None,
    targets: str | Iterable[str] = DEFAULT_ROLES,
    overwrite: bool = False,
    seed: int = 0,
) -> dict:
    """Extract, write and check a PEFT adapter for base -> finetuned; returns the report (also saved).

    base, finetuned: model directories or short names (minilm, smollm2). Report: per module the
    role(s), rank, energy retained (kept sigma^2 / total) and relative Frobenius error
    sqrt(1 - energy); the output difference on a probe batch; other tensors that changed in
    fine-tuning (which no adapter on the targets can reproduce).
    """
    check_rank_or_energy(rank, energy)
    roles = parse_roles(targets)
    base_dir, ft_dir = resolve_model_path(str(base)), resolve_model_path(str(finetuned))
    check_empty_or_overwrite(Path(out), overwrite)  # before the models are loaded and decomposed
    base_model, ft_model = load_checkpoint(base_dir), load_checkpoint(ft_dir)
    found, base_w, ft_w = matched_modules(base_model, ft_model, roles)
    deltas = {t.name: target_rows(ft_w[t.name] - base_w[t.name], t) for t in found}
    factors = extract_lora(deltas, rank, energy)
    config, state = peft_adapter(factors, str(base_dir), fan_in_fan_out=any(t.fan_in_fan_out for t in found))
    report = {
        "base": str(base_dir),
        "finetuned": str(ft_dir),
        "targets": list(roles),
        "rank": rank,
        "energy": energy,
        "adapter_parameters": sum(f.A.numel() + f.B.numel() for f in factors.values()),
        "layers": _layer_report(found, deltas, factors),
        "other_changed_tensors": other_changes(base_model.state_dict(), ft_model.state_dict(), base_w),
    }
    finetuned_as_base = with_weights_of(base_model, ft_model)
    with atomic_dir(out, overwrite) as tmp:
        write_json(tmp / CONFIG_FILE, config)
        write_bytes(tmp / WEIGHTS_FILE, safetensors_bytes(state, metadata={"format": "pt"}))
        report["probe"] = probe_difference(base_model, finetuned_as_base, tmp, seed)
        report["out"] = str(Path(out))
        write_json(tmp / REPORT, report)
    return report
