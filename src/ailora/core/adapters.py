"""Saving SVD-initialised adapters so that they load on the ORIGINAL base, and merging.

A trained layer computes W_res + s B A with W_res = W0 - s B0 A0, i.e. W0 + s (B A - B0 A0).
As a plain LoRA on W0 that is B' = [B, -B0], A' = [A; A0] at rank 2r, with the same s (alpha
doubles, or grows by sqrt(2) under rsLoRA). The file is a standard PEFT adapter: plain
``peft.PeftModel.from_pretrained(original_base, dir)`` reproduces the trained model, and no copy
of the residual model is ever needed. Optionally the delta is compressed to a chosen rank by an
SVD computed from the factors (never the full matrix), with the relative error reported.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import peft
import torch
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from ailora.core.probe import make_probe, max_abs_diff, run_probe, tolerance_for
from ailora.errors import AiloraError, ExactnessError

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "ailora.json"


def lora_scaling(rank: int, alpha: float, rslora: bool) -> float:
    """LoRA's s: alpha / r, or alpha / sqrt(r) under rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def _alpha_for(scaling: float, rank: int, rslora: bool) -> float:
    return scaling * math.sqrt(rank) if rslora else scaling * rank


def compress(b: torch.Tensor, a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-k factors of B A (B: (out, r), A: (r, in)), and the relative Frobenius error.

    Computed through QR of B and A^T and an (r, r) SVD, so the (out, in) delta is never formed.
    Returns (B_k: (out, k), A_k: (k, in), ||BA - B_k A_k||_F / ||BA||_F).
    """
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    p, s, qt = torch.linalg.svd(rb @ ra.T)
    total = s.pow(2).sum()
    err = math.sqrt((s[k:].pow(2).sum() / total).item()) if total > 0 else 0.0
    root = s[:k].sqrt()
    b_k = (qb @ p[:, :k]) * root
    a_k = root.unsqueeze(1) * (qa @ qt[:k].T).T
    return b_k.to(b.dtype), a_k.to(a.dtype), err


def _module_rank_alpha(cfg: peft.LoraConfig, name: str) -> tuple[int, float]:
    from peft.utils.other import get_pattern_key

    r = cfg.rank_pattern.get(get_pattern_key(cfg.rank_pattern.keys(), name), cfg.r)
    alpha = cfg.alpha_pattern.get(get_pattern_key(cfg.alpha_pattern.keys(), name), cfg.lora_alpha)
    return r, alpha


def _atomic_dir(out_dir: Path, overwrite: bool, write) -> None:
    """Write a directory through a temporary sibling and a rename: no partial directory survives."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise AiloraError(f"output directory {out_dir} is not empty; choose another or allow overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        write(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def to_plain_lora(sd: dict, cfg: peft.LoraConfig, initial: dict, rank: int | None = None):
    """Rewrite adapter tensors as plain LoRA on the original base, optionally compressed.

    Args:
        sd: PEFT adapter state dict (keys ``base_model.model.<module>.lora_A.weight`` ...).
        cfg: its LoraConfig. initial: module -> (A0, B0), the start of modules trained on a residual.
        rank: compress every module above this rank.
    Returns (new state dict, new config, per-module report).
    """
    sd, cfg, modules = dict(sd), copy.deepcopy(cfg), {}
    for key in [k for k in sd if k.endswith(".lora_A.weight")]:
        name = key[len(PREFIX):-len(".lora_A.weight")]
        a, b = sd[key].float(), sd[f"{PREFIX}{name}.lora_B.weight"].float()
        r, alpha = _module_rank_alpha(cfg, name)
        s = lora_scaling(r, alpha, cfg.use_rslora)
        a0, b0 = initial.get(name, (None, None))
        if b0 is not None and b0.abs().max() > 0:  # trained on W0 - s B0 A0: express against W0
            if a0.shape != a.shape or b0.shape != b.shape:
                raise AiloraError(f"initial adapter of layer {name} has shapes {tuple(a0.shape)}/{tuple(b0.shape)}, "
                                  f"trained has {tuple(a.shape)}/{tuple(b.shape)}")
            a, b = torch.cat([a, a0.float()]), torch.cat([b, -b0.float()], dim=1)
        info = {"trained_rank": r, "rank": a.shape[0], "converted": a.shape[0] != r, "relative_error": 0.0}
        if rank is not None and a.shape[0] > rank:
            b, a, info["relative_error"] = compress(b, a, rank)
            info["rank"] = rank
        modules[name] = info
        dtype = sd[key].dtype
        sd[key], sd[f"{PREFIX}{name}.lora_B.weight"] = a.to(dtype).contiguous(), b.to(dtype).contiguous()
        if info["rank"] != r:
            cfg.rank_pattern[re.escape(name)] = info["rank"]
            cfg.alpha_pattern[re.escape(name)] = _alpha_for(s, info["rank"], cfg.use_rslora)
    cfg.init_lora_weights = True
    cfg.inference_mode = True
    return sd, cfg, modules


def converted_state(model: peft.PeftModel, rank: int | None = None):
    """The plain-LoRA tensors and config of an ailora-applied PeftModel, and a per-module report."""
    state = getattr(model, "ailora_state", None)
    sd = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
    return to_plain_lora(sd, model.peft_config["default"], state.initial if state is not None else {}, rank)


def save(model: peft.PeftModel, out_dir, rank: int | None = None, overwrite: bool = False) -> dict:
    """Write a standard PEFT LoRA adapter that reproduces ``model`` on the original base weights.

    Args:
        rank: compress every module to at most this rank (SVD of the delta; errors reported).
    Returns the report also written as ``ailora.json``: provenance and, per module, its rank and
    the relative error of the compression (0 when uncompressed).
    """
    if not isinstance(model, peft.PeftModel):
        raise AiloraError("save expects the PeftModel returned by ailora.core.apply")
    if rank is not None and (not isinstance(rank, int) or rank <= 0):
        raise AiloraError(f"rank must be a positive integer, got {rank!r}")
    sd, cfg, modules = converted_state(model, rank)
    state = getattr(model, "ailora_state", None)
    meta = state.metadata() if state is not None else {}
    return write_plain_adapter(out_dir, sd, cfg, meta, modules, rank, overwrite)


def write_plain_adapter(out_dir, sd: dict, cfg: peft.LoraConfig, meta: dict, modules: dict,
                        rank: int | None, overwrite: bool) -> dict:
    """Write a plain-LoRA adapter directory atomically; ``ailora.json`` = ``meta`` + the conversion report."""
    meta = {**meta, "format": "plain-lora-on-original-base", "compressed_rank": rank, "modules": modules,
            "max_relative_error": max((m["relative_error"] for m in modules.values()), default=0.0)}

    def write(tmp: Path) -> None:
        cfg.save_pretrained(tmp)
        save_file(sd, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))

    _atomic_dir(Path(out_dir), overwrite, write)
    return meta


def read_adapter_config(adapter_dir) -> tuple[Path, peft.LoraConfig]:
    """The directory and LoraConfig of an adapter directory that has both of PEFT's files."""
    d = Path(adapter_dir)
    if not d.is_dir():
        raise AiloraError(f"adapter directory {d} does not exist")
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if not (d / f).is_file():
            raise AiloraError(f"adapter directory {d} is missing {f}")
    try:
        return d, peft.LoraConfig.from_pretrained(d)
    except Exception as exc:  # a broken JSON file or a non-LoRA config
        raise AiloraError(f"{d / CONFIG_FILE} is not a LoRA adapter config: {exc}".splitlines()[0]) from None


def check_adapter_dir(base: torch.nn.Module, adapter_dir) -> peft.LoraConfig:
    """Validate an adapter directory against a base model; a one-line error names what is wrong."""
    d, cfg = read_adapter_config(adapter_dir)
    from ailora.core.roles import weight_of

    with safe_open(d / WEIGHTS_FILE, framework="pt") as f:
        for key in f.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            name = key[len(PREFIX):].rsplit(".lora_", 1)[0]
            try:
                module = base.get_submodule(name)
            except AttributeError:
                raise AiloraError(f"adapter layer {name} is not in the base model") from None
            out_f, in_f = weight_of(module).shape
            shape = tuple(f.get_slice(key).get_shape())
            r, _ = _module_rank_alpha(cfg, name)
            want = (r, in_f) if ".lora_A." in key else (out_f, r)
            if shape != want:
                raise AiloraError(f"adapter tensor {key} has shape {shape}, expected {want} for layer {name}")
    return cfg


def load(base: torch.nn.Module, adapter_dir, trainable: bool = False) -> peft.PeftModel:
    """Load a (converted or any PEFT LoRA) adapter onto a base model, after validating it."""
    check_adapter_dir(base, adapter_dir)
    return peft.PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)


def verify(reference: torch.nn.Module, loaded: torch.nn.Module, probe=None) -> dict:
    """Largest output difference between two models on a probe batch, and whether it is in tolerance."""
    probe = probe or make_probe(reference)
    ref = run_probe(reference, probe)
    diff = max_abs_diff(run_probe(loaded, probe), ref)
    tol = tolerance_for(next(reference.parameters()).dtype, ref)
    return {"max_abs_diff": diff, "tolerance": tol, "passed": diff <= tol}


def merge(model: peft.PeftModel, check: bool = True) -> dict:
    """Merge the adapters into the base weights in place (PEFT's merge_adapter), output-checked."""
    probe = make_probe(model) if check else None
    before = run_probe(model, probe) if check else None
    model.merge_adapter()
    if not check:
        return {}
    after = run_probe(model, probe)
    diff = max_abs_diff(after, before)
    tol = tolerance_for(next(model.parameters()).dtype, before)
    if diff > tol:
        raise ExactnessError(f"merging changed outputs by {diff:.3g} (tolerance {tol:.1g})")
    return {"max_abs_diff": diff, "tolerance": tol, "passed": True}


def unmerge(model: peft.PeftModel) -> None:
    """Undo ``merge``: subtract the adapters' delta from the base weights again."""
    model.unmerge_adapter()


def merge_to_dir(model: peft.PeftModel, out_dir, overwrite: bool = False, tokenizer_from=None) -> dict:
    """Merge and write a full transformers model (safetensors), checked against the adapted model."""
    probe = make_probe(model)
    before = run_probe(model, probe)
    merged = model.merge_and_unload()
    after = run_probe(merged, probe)
    diff = max_abs_diff(after, before)
    tol = tolerance_for(next(merged.parameters()).dtype, before)
    if diff > tol:
        raise ExactnessError(f"merging changed outputs by {diff:.3g} (tolerance {tol:.1g})")

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        if tokenizer_from is not None:
            for f in Path(tokenizer_from).iterdir():
                if f.is_file() and ("tokenizer" in f.name or f.name in ("vocab.txt", "merges.txt",
                                                                        "special_tokens_map.json")):
                    shutil.copy2(f, tmp / f.name)

    _atomic_dir(Path(out_dir), overwrite, write)
    return {"max_abs_diff": diff, "tolerance": tol, "passed": True}
