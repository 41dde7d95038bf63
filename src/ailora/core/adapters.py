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
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import peft
import torch
from peft.utils import get_peft_model_state_dict
from peft.utils.other import get_pattern_key
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ailora.core.files import atomic_dir, write_json
from ailora.core.probe import compare_outputs, make_probe, run_probe
from ailora.core.roles import weight_of
from ailora.core.state import AiloraState, state_of
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


def module_rank_alpha(cfg: peft.LoraConfig, name: str) -> tuple[int, float]:
    """The rank and alpha that ``cfg`` gives module ``name`` (its rank/alpha pattern, else r and lora_alpha)."""
    r = cfg.rank_pattern.get(get_pattern_key(cfg.rank_pattern.keys(), name), cfg.r)
    alpha = cfg.alpha_pattern.get(get_pattern_key(cfg.alpha_pattern.keys(), name), cfg.lora_alpha)
    return r, alpha


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
        r, alpha = module_rank_alpha(cfg, name)
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


def converted_state(model: peft.PeftModel, rank: int | None = None, state: AiloraState | None = None):
    """The plain-LoRA tensors and config of an ailora-applied PeftModel, and a per-module report.

    ``state``: the model's AiloraState (default: ``state_of(model)``); without one the adapter is
    taken to be plain LoRA already.
    """
    state = state if state is not None else state_of(model)
    sd = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
    return to_plain_lora(sd, model.peft_config["default"], state.initial if state is not None else {}, rank)


def save(model: peft.PeftModel, out_dir, rank: int | None = None, overwrite: bool = False,
         state: AiloraState | None = None, extra_json: Mapping[str, object] | None = None) -> dict:
    """Write a standard PEFT LoRA adapter that reproduces ``model`` on the original base weights.

    Args:
        rank: compress every module to at most this rank (SVD of the delta; errors reported).
        overwrite: replace a non-empty ``out_dir`` (refused otherwise).
        state: the model's AiloraState (default: ``state_of(model)``).
        extra_json: file name -> object, further JSON files written into the same directory.
    Returns the report also written as ``ailora.json``: provenance and, per module, its rank and
    the relative error of the compression (0 when uncompressed).
    """
    if not isinstance(model, peft.PeftModel):
        raise AiloraError("save expects the PeftModel returned by ailora.core.apply")
    if rank is not None and (not isinstance(rank, int) or rank <= 0):
        raise AiloraError(f"rank must be a positive integer, got {rank!r}")
    state = state if state is not None else state_of(model)
    sd, cfg, modules = converted_state(model, rank, state)
    meta = plain_adapter_meta(state.metadata() if state is not None else {}, modules, rank)
    write_adapter_dir(out_dir, sd, cfg, meta, overwrite, extra_json)
    return meta


def plain_adapter_meta(meta: dict, modules: dict, rank: int | None) -> dict:
    """``ailora.json`` of a plain-LoRA adapter: provenance ``meta`` plus the conversion report."""
    return {**meta, "format": "plain-lora-on-original-base", "compressed_rank": rank, "modules": modules,
            "max_relative_error": max((m["relative_error"] for m in modules.values()), default=0.0)}


def write_adapter_dir(out_dir, sd: dict, cfg: peft.LoraConfig, meta: dict, overwrite: bool,
                      extra_json: Mapping[str, object] | None = None) -> None:
    """Write an adapter directory atomically: PEFT's two files, ``ailora.json`` = ``meta``, and
    ``extra_json`` (file name -> object). A non-empty ``out_dir`` is refused unless ``overwrite``."""
    with atomic_dir(out_dir, overwrite) as tmp:
        cfg.save_pretrained(tmp)
        save_file(sd, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        for name, obj in {META_FILE: meta, **(extra_json or {})}.items():
            write_json(tmp / name, obj)


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


def read_adapter(adapter_dir) -> tuple[dict[str, torch.Tensor], peft.LoraConfig, dict]:
    """(tensors, LoraConfig, ailora.json or {}) of an adapter directory; a one-line error if any is broken.

    The one reader of adapter directories: load checks, conversion and the analyses use it."""
    d, cfg = read_adapter_config(adapter_dir)
    try:
        sd = load_file(d / WEIGHTS_FILE)
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise AiloraError(f"cannot read adapter weights {d / WEIGHTS_FILE}: {str(exc).splitlines()[0]}") from None
    meta = {}
    if (d / META_FILE).is_file():
        try:
            meta = json.loads((d / META_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AiloraError(f"{d / META_FILE} is not valid JSON: {exc}") from None
    return sd, cfg, meta


def check_adapter_dir(base: torch.nn.Module, adapter_dir) -> peft.LoraConfig:
    """Validate an adapter directory against a base model; a one-line error names what is wrong."""
    d, cfg = read_adapter_config(adapter_dir)
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
            r, _ = module_rank_alpha(cfg, name)
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
    return compare_outputs(loaded, probe, run_probe(reference, probe), next(reference.parameters()).dtype)


def _merge_checked(model: peft.PeftModel, merge_fn) -> tuple[torch.nn.Module, dict]:
    """Run ``merge_fn(model) -> merged`` and compare the merged model's outputs with the adapted one's."""
    probe = make_probe(model)
    before = run_probe(model, probe)
    merged = merge_fn(model)
    check = compare_outputs(merged, probe, before, next(merged.parameters()).dtype)
    if check["max_abs_diff"] > check["tolerance"]:
        raise ExactnessError(f"merging changed outputs by {check['max_abs_diff']:.3g} "
                             f"(tolerance {check['tolerance']:.1g})")
    return merged, check


def _merge_in_place(model: peft.PeftModel) -> peft.PeftModel:
    model.merge_adapter()
    return model


def merge(model: peft.PeftModel, check: bool = True) -> dict:
    """Merge the adapters into the base weights in place (PEFT's merge_adapter), output-checked."""
    if not check:
        model.merge_adapter()
        return {}
    return _merge_checked(model, _merge_in_place)[1]


def unmerge(model: peft.PeftModel) -> None:
    """Undo ``merge``: subtract the adapters' delta from the base weights again."""
    model.unmerge_adapter()


def _is_tokenizer_file(f: Path) -> bool:
    return f.is_file() and ("tokenizer" in f.name or f.name in ("vocab.txt", "merges.txt", "special_tokens_map.json"))


def merge_to_dir(model: peft.PeftModel, out_dir, overwrite: bool = False, tokenizer_from=None) -> dict:
    """Merge and write a full transformers model (safetensors), checked against the adapted model.

    ``tokenizer_from``: a model directory whose tokenizer files are copied along."""
    merged, check = _merge_checked(model, lambda m: m.merge_and_unload())
    with atomic_dir(out_dir, overwrite) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        if tokenizer_from is not None:
            for f in filter(_is_tokenizer_file, Path(tokenizer_from).iterdir()):
                shutil.copy2(f, tmp / f.name)
    return check
