"""`extract` end to end: base + fine-tuned checkpoints -> a PEFT LoRA adapter directory and report.

The adapter is written to a temporary directory, checked by loading it onto the base model with
``PeftModel.from_pretrained``, and only then renamed to its destination: on any error nothing
is left behind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from ailora.analysis._weights import align_names, parse_roles, role_deltas, split_roles
from ailora.analysis.extract import check_rank_or_energy, extract_lora, peft_adapter
from ailora.analysis.io import ADAPTER_WEIGHTS, load_model, load_state_dict, model_dir, staged_dir, write_json

REPORT = "extract_report.json"


def other_changes(
    base: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], targets: Iterable[str]
) -> dict:
    """Tensors other than the extracted weights that differ between base and fine-tuned checkpoints.

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


@torch.no_grad()
def probe_difference(base: Path, finetuned: Path, adapter: Path, seed: int = 0, shape=(2, 16)) -> dict:
    """max |f_{base + adapter}(x) - f_finetuned(x)| on a seeded batch of random token ids.

    Both models are built with the base's architecture, so their first outputs are comparable
    (last hidden state or logits). Returns ``{"max_abs_diff", "max_abs_output", "shape"}``.
    """
    from peft import PeftModel

    base_model = load_model(base)
    arch = type(base_model).__name__
    ft_model = load_model(finetuned, architecture=arch)
    peft_model = PeftModel.from_pretrained(base_model, str(adapter)).eval()
    vocab = int(getattr(base_model.config, "vocab_size", 100) or 100)
    ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    expected = ft_model(input_ids=ids, attention_mask=mask)[0]
    got = peft_model(input_ids=ids, attention_mask=mask)[0]
    return {
        "max_abs_diff": float((got - expected).abs().max()),
        "max_abs_output": float(expected.abs().max()),
        "shape": list(ids.shape),
    }


def extract_adapter_dir(
    base: str | os.PathLike,
    finetuned: str | os.PathLike,
    out: str | os.PathLike,
    rank: int | None = None,
    energy: float | None = None,
    targets: str | Iterable[str] = ("query", "value"),
    overwrite: bool = False,
    seed: int = 0,
) -> dict:
    """Extract, write and check a PEFT adapter for base -> finetuned; returns the report (also saved).

    Report: per module the role, rank, energy retained (kept sigma^2 / total) and relative
    Frobenius error sqrt(1 - energy); the output difference on a probe batch; other tensors
    that changed in fine-tuning (which no adapter on the targets can reproduce).
    """
    check_rank_or_energy(rank, energy)
    roles = parse_roles(targets)
    base_dir, ft_dir = model_dir(base), model_dir(finetuned)
    base_sd, ft_sd = load_state_dict(base_dir), load_state_dict(ft_dir)
    deltas = role_deltas(base_sd, ft_sd, roles)
    role_of = {name: role for role, ds in deltas.items() for name in ds}
    factors = extract_lora({n: d for ds in deltas.values() for n, d in ds.items()}, rank, energy)
    config, state = peft_adapter(factors, str(base_dir))
    layers = {
        name: {
            "role": role_of[name],
            "rank": f.rank,
            "energy_retained": f.energy,
            "relative_error": math.sqrt(max(0.0, 1.0 - f.energy)),
            "delta_norm": float(torch.linalg.matrix_norm(deltas[role_of[name]][name].double())),
        }
        for name, f in factors.items()
    }
    target_names = [n for ws in split_roles(base_sd, roles).values() for n in ws]
    report = {
        "base": str(base_dir),
        "finetuned": str(ft_dir),
        "targets": list(roles),
        "rank": rank,
        "energy": energy,
        "adapter_parameters": sum(f.A.numel() + f.B.numel() for f in factors.values()),
        "layers": layers,
        "other_changed_tensors": other_changes(base_sd, ft_sd, target_names),
    }
    with staged_dir(out, overwrite) as tmp:
        write_json(tmp / "adapter_config.json", config)
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        report["probe"] = probe_difference(base_dir, ft_dir, tmp, seed)
        report["out"] = str(Path(out))
        write_json(tmp / REPORT, report)
    return report
