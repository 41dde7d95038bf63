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
import warnings
from collections.abc import Mapping
from pathlib import Path

import peft
import torch
from peft.utils import get_peft_model_state_dict
from peft.utils.other import get_pattern_key
from safetensors import safe_open
from safetensors.torch import save_file

from ailora.core.files import atomic_dir, atomic_file, read_json, read_tensors, write_json, write_text
from ailora.core.hub import CARD_FILE, model_card, push
from ailora.core.probe import changed_by, compare_outputs, make_probe, run_probe
from ailora.core.roles import weight_of
from ailora.core.state import AiloraState, state_of
from ailora.errors import AiloraError, ExactnessError

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "ailora.json"
# Model classes whose head has labels: their count is recorded so the head can be rebuilt on load.
HEAD_CLASSES = ("ForSequenceClassification", "ForTokenClassification", "ForMultipleChoice")
# The ``init_lora_weights`` an ailora model carries while its adapters train on a residual base
# W - s B0 A0 (``mark_residual_form``). PEFT writes it into every raw save (``model.save_pretrained``,
# a Trainer checkpoint without AiloraCallback), whose factors are right only on that residual base.
# PEFT refuses an unknown init ("Unknown initialization init_lora_weights='ailora-residual-form: ...'"),
# so such a save fails loudly on the original base instead of loading wrong. PEFT's own PiSSA saves
# carry "pissa" and reload by re-running PiSSA on load; ailora's starts (per role: minor singular
# vectors for V; per block of a fused layer; its sign convention; float32 residuals in a bf16 model)
# are nothing PEFT can re-run, so ailora writes plain LoRA on the original weights instead.
RESIDUAL_FORM = ("ailora-residual-form: these factors were trained on the residual base W - s*B0*A0 and are "
                 "wrong on the original model; write a loadable adapter with ailora.save(model, dir), or train "
                 "with callbacks=[ailora.hf.AiloraCallback()]")
# PEFT starts (``init_lora_weights``) that leave the base weights as they are, so that the saved factors
# apply to the original model. Every other start changes the base when it runs, and PEFT re-runs it on
# load: pissa/pissa_niter_N, olora, corda and lora_ga subtract their first factors (a residual base),
# loftq replaces the weights by quantised ones (``peft_start``).
PLAIN_STARTS = (True, False, "gaussian", "eva", "orthogonal", "mica")
RESIDUAL_STARTS = ("pissa", "olora", "corda", "lora_ga")  # prefixes: pissa_niter_16, corda_...
# Residual starts that PEFT re-runs on load to the same residual base (exact decompositions of the
# base weight); a randomised SVD (pissa_niter_N), corda's activation cache or lora_ga's gradients
# are not there on load, and PEFT would rebuild another base (or none) without a word.
RERUN_ON_LOAD = ("pissa", "olora")
# The LoRA ranks vLLM accepts (its ``max_lora_rank`` choices); SGLang sizes its buffers the same way.
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


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
    """Rewrite adapter tensors as plain LoRA on the original base, in serving form, optionally at one rank.

    Args:
        sd: PEFT adapter state dict (keys ``base_model.model.<module>.lora_A.weight`` ...).
        cfg: its LoraConfig. initial: module -> (A0, B0), the start of modules trained on a residual.
        rank: every module at exactly this rank: compressed when above (error reported), zero-padded
            when below (exact).
    Returns (new state dict, new config, per-module report). The config's ``r`` and ``lora_alpha``
    describe the tensors (see ``serving_form``).
    """
    sd, cfg, modules, factors = dict(sd), copy.deepcopy(cfg), {}, {}
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
        elif rank is not None and a.shape[0] < rank:  # zero rows of A / columns of B add nothing to B A
            a, b = torch.cat([a, a.new_zeros(rank - a.shape[0], a.shape[1])]), torch.cat(
                [b, b.new_zeros(b.shape[0], rank - b.shape[1])], dim=1)
        info["rank"] = a.shape[0]
        modules[name] = info
        factors[name] = (a, b, s, sd[key].dtype)
    for name, (a, b, dtype) in serving_form(cfg, factors).items():
        sd[f"{PREFIX}{name}.lora_A.weight"] = a.to(dtype).contiguous()
        sd[f"{PREFIX}{name}.lora_B.weight"] = b.to(dtype).contiguous()
    cfg.init_lora_weights = True
    cfg.inference_mode = True
    return sd, cfg, modules


def serving_form(cfg: peft.LoraConfig, factors: dict) -> dict:
    """Set ``cfg`` so that ONE scale, ``lora_alpha / r`` (``/ sqrt(r)`` under rsLoRA), is right for every module.

    vLLM and SGLang read only ``r``, ``lora_alpha``, ``use_rslora`` and ``target_modules``: they size
    their buffers from ``r`` and apply one scale to all modules. So ``r`` is the largest module rank,
    ``lora_alpha`` gives the scale most modules have, a module with another scale has the ratio folded
    into its B (B A is what matters), and ``rank_pattern`` / ``alpha_pattern`` (for PEFT, which sizes
    each layer from them) name only the modules whose rank differs from ``r``; a uniform adapter has none.

    Args: factors: module -> (A: (k, in), B: (out, k), scale s, dtype), A and B in float32.
    Returns module -> (A, B, dtype), B rescaled where needed. ``cfg`` is changed in place.
    """
    if not factors:
        return {}
    ranks = {name: f[0].shape[0] for name, f in factors.items()}
    scales = [f[2] for f in factors.values()]
    scale = max(scales, key=scales.count)
    top = max(ranks.values())
    cfg.r, cfg.lora_alpha = top, _alpha_for(scale, top, cfg.use_rslora)
    cfg.rank_pattern = {re.escape(n): k for n, k in ranks.items() if k != top}
    cfg.alpha_pattern = {p: _alpha_for(scale, k, cfg.use_rslora) for p, k in cfg.rank_pattern.items()}
    out = {}
    for name, (a, b, s, dtype) in factors.items():
        out[name] = (a, b if math.isclose(s, scale, rel_tol=1e-12) else b * (s / scale), dtype)
    return out


def rank_warning(r: int) -> str | None:
    """Why an adapter of rank ``r`` may not serve on vLLM / SGLang, or None if ``r`` is one they accept."""
    if r in VLLM_RANKS:
        return None
    above = [k for k in VLLM_RANKS if k > r]
    fix = (f"save(..., rank={above[0]}) pads it to that rank with zeros (exact)" if above
           else f"save(..., rank={VLLM_RANKS[-1]}) compresses it (relative error reported)")
    return f"adapter rank r={r} is not one vLLM accepts ({', '.join(map(str, VLLM_RANKS))}); {fix}"


def converted_state(model: peft.PeftModel, rank: int | None = None, state: AiloraState | None = None):
    """The plain-LoRA tensors and config of an ailora-applied PeftModel, and a per-module report.

    ``state``: the model's AiloraState (default: ``state_of(model)``); without one the adapter is
    taken to be plain LoRA already.
    """
    state = state if state is not None else state_of(model)
    sd = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
    return to_plain_lora(sd, model.peft_config["default"], state.initial if state is not None else {}, rank)


def model_record(model: torch.nn.Module) -> dict:
    """What loading the base again needs, as written to ``ailora.json``: the transformers class of the
    adapted model (its task head), its label count and problem type, and where it was loaded from."""
    base = model.get_base_model() if isinstance(model, peft.PeftModel) else model
    config = getattr(base, "config", None)
    record = {"class": type(base).__name__, "name_or_path": getattr(config, "_name_or_path", "") or None}
    if config is not None and any(type(base).__name__.endswith(k) for k in HEAD_CLASSES):
        record.update(num_labels=config.num_labels, problem_type=config.problem_type,
                      id2label={str(k): v for k, v in config.id2label.items()})
    return record


def _provenance(state: AiloraState | None) -> dict:
    return {**state.metadata(), "output_check": state.check} if state is not None else {}


def save(model: peft.PeftModel, out_dir, rank: int | None = None, overwrite: bool = False,
         state: AiloraState | None = None, extra_json: Mapping[str, object] | None = None,
         base_model: str | None = None, push_to_hub: str | None = None) -> dict:
    """Write a standard PEFT LoRA adapter that reproduces ``model`` on the original base weights.

    The directory is ready to serve: ``r`` and ``lora_alpha`` describe the tensors (one scale for
    every module, see ``serving_form``; a warning when vLLM would refuse ``r``), and ``README.md`` is
    a Hub model card. Every save of an ailora model should go through here (or ``ailora.hf.AiloraCallback``):
    the model's own ``save_pretrained`` writes residual-form factors, which PEFT refuses to load.

    Args:
        rank: every module at exactly this rank (compressed by an SVD of its delta, error reported, or
            zero-padded, exact), e.g. a rank vLLM accepts (8, 16, 32, ...).
        overwrite: replace a non-empty ``out_dir`` (refused otherwise).
        state: the model's AiloraState (default: ``state_of(model)``).
        extra_json: file name -> object, further JSON files written into the same directory.
        base_model: the base model's Hub id for the model card (default: where the model was loaded from).
        push_to_hub: a Hub repo id: upload the written directory there (needs network and a token).
    Returns the report also written as ``ailora.json``: provenance, the model class and label count,
    the serving config, and per module its rank and the relative error of the compression.
    """
    if not isinstance(model, peft.PeftModel):
        raise AiloraError("save expects the PeftModel returned by ailora.core.apply")
    if rank is not None and (not isinstance(rank, int) or rank <= 0):
        raise AiloraError(f"rank must be a positive integer, got {rank!r}")
    state = state if state is not None else state_of(model)
    sd, cfg, modules = converted_state(model, rank, state)
    record = model_record(model)
    provenance = {**_provenance(state), "model": record, "base_model": base_model or record["name_or_path"]}
    meta = plain_adapter_meta(provenance, modules, rank, cfg)
    write_adapter_dir(out_dir, sd, cfg, meta, overwrite, extra_json)
    if push_to_hub:
        meta["pushed"] = push(out_dir, push_to_hub)
    return meta


def plain_adapter_meta(meta: dict, modules: dict, rank: int | None, cfg: peft.LoraConfig) -> dict:
    """``ailora.json`` of a plain-LoRA adapter: provenance ``meta``, the conversion report and what
    serving engines read (warned about when vLLM would refuse the rank)."""
    serving = {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "use_rslora": cfg.use_rslora,
               "rank_pattern": dict(cfg.rank_pattern), "warning": rank_warning(cfg.r)}
    if serving["warning"]:
        warnings.warn(serving["warning"], stacklevel=3)
    return {**meta, "format": "plain-lora-on-original-base", "compressed_rank": rank, "modules": modules,
            "max_relative_error": max((m["relative_error"] for m in modules.values()), default=0.0),
            "serving": serving}


def _config_text(cfg: peft.LoraConfig, meta: dict) -> str:
    """adapter_config.json as PEFT writes it, with PEFT's ``auto_mapping`` naming the model class."""
    out = {k: list(v) if isinstance(v, set) else v for k, v in cfg.to_dict().items()}
    model_class = (meta.get("model") or {}).get("class")
    if cfg.task_type is None and model_class:
        out["auto_mapping"] = {"base_model_class": model_class, "parent_library": "transformers"}
    return json.dumps(out, indent=2, sort_keys=True)


def write_adapter_files(directory, sd: dict, cfg: peft.LoraConfig, meta: dict) -> None:
    """Write (or replace) an adapter's files in ``directory``, each atomically: the weights, the config,
    ``ailora.json`` = ``meta`` and the model card. Other files there are left alone."""
    d = Path(directory)
    with atomic_file(d / WEIGHTS_FILE) as tmp:
        save_file(sd, tmp, metadata={"format": "pt"})
    write_text(d / CONFIG_FILE, _config_text(cfg, meta))
    write_json(d / META_FILE, meta)
    write_text(d / CARD_FILE, model_card(meta, {"r": cfg.r, "lora_alpha": cfg.lora_alpha}, meta.get("base_model")))


def write_adapter_dir(out_dir, sd: dict, cfg: peft.LoraConfig, meta: dict, overwrite: bool,
                      extra_json: Mapping[str, object] | None = None) -> None:
    """Write an adapter directory atomically: PEFT's two files, ``ailora.json`` = ``meta``, the model
    card and ``extra_json`` (file name -> object). A non-empty ``out_dir`` is refused unless ``overwrite``."""
    with atomic_dir(out_dir, overwrite) as tmp:
        write_adapter_files(tmp, sd, cfg, meta)
        for name, obj in (extra_json or {}).items():
            write_json(tmp / name, obj)


def has_residual(initial: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """Whether any start (module -> (A0, B0)) moved weight into its adapter (B0 != 0), leaving a residual base."""
    return any(b0.abs().max() > 0 for _, b0 in initial.values())


def mark_residual_form(model: peft.PeftModel, state: AiloraState) -> None:
    """Label the config of an ailora model whose adapters train on a residual base with
    ``RESIDUAL_FORM``, so that a raw save of it fails to load on the original base (see there).
    Models whose every start has B0 = 0 (plain LoRA) keep W and save correctly as they are."""
    if has_residual(state.initial):
        model.peft_config["default"].init_lora_weights = RESIDUAL_FORM


def convert_raw_save(directory, model: peft.PeftModel, state: AiloraState | None = None) -> dict | None:
    """Rewrite in place the raw PEFT save of ``model`` in ``directory`` (``model.save_pretrained``, as a
    Trainer checkpoint holds) as the plain-LoRA adapter ``save`` writes; other files stay.

    Works from the files written, not the live parameters, so it is the same under FSDP or DeepSpeed.
    Returns the new ``ailora.json``, or None when the directory already holds a converted adapter."""
    state = state if state is not None else state_of(model)
    if state is None:
        raise AiloraError("convert_raw_save expects a model returned by ailora.apply")
    if (Path(directory) / META_FILE).is_file():
        return None
    sd, cfg, _ = read_adapter(directory, residual_form_ok=True)
    sd, cfg, modules = to_plain_lora(sd, cfg, state.initial)
    record = model_record(model)
    meta = plain_adapter_meta({**_provenance(state), "model": record, "base_model": record["name_or_path"]},
                              modules, None, cfg)
    write_adapter_files(directory, sd, cfg, meta)
    return meta


def read_adapter_config(adapter_dir, residual_form_ok: bool = False) -> tuple[Path, peft.LoraConfig]:
    """The directory and LoraConfig of an adapter directory that has both of PEFT's files.

    A raw save of an ailora model (``RESIDUAL_FORM``) is refused unless ``residual_form_ok``."""
    d = Path(adapter_dir)
    if not d.is_dir():
        raise AiloraError(f"adapter directory {d} does not exist")
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if not (d / f).is_file():
            raise AiloraError(f"adapter directory {d} is missing {f}")
    try:
        cfg = peft.LoraConfig.from_pretrained(d)
    except Exception as exc:  # a broken JSON file or a non-LoRA config
        raise AiloraError(f"{d / CONFIG_FILE} is not a LoRA adapter config: {exc}".splitlines()[0]) from None
    if cfg.init_lora_weights == RESIDUAL_FORM and not residual_form_ok:
        raise AiloraError(f"{d} is a raw save of an ailora model (model.save_pretrained, or a Trainer checkpoint "
                          "without ailora.hf.AiloraCallback): its factors were trained on the residual base and do not "
                          "apply to the original model; save with ailora.save(model, dir)")
    return d, cfg


def peft_start(cfg: peft.LoraConfig) -> str:
    """What ``cfg.init_lora_weights`` did to the base: 'plain' (nothing), 'residual' (subtracted the first
    factors: the adapter applies to W - s B0 A0), 'quantised' (loftq) or 'unknown' (a start ailora does not know)."""
    start = cfg.init_lora_weights
    if isinstance(start, bool) or str(start).lower() in PLAIN_STARTS:
        return "plain"
    if isinstance(start, str) and start.lower().startswith(RESIDUAL_STARTS):
        return "residual"
    return "quantised" if start == "loftq" else "unknown"


def check_foreign_start(adapter_dir, cfg: peft.LoraConfig) -> None:
    """Refuse an adapter whose PEFT start PEFT cannot re-run on load to the base it was trained on."""
    start, kind = cfg.init_lora_weights, peft_start(cfg)
    if kind == "plain" or (kind == "residual" and str(start).lower() in RERUN_ON_LOAD):
        return
    what = {"quantised": "a quantised base", "unknown": "a start ailora does not know"}.get(kind, "a residual base")
    raise AiloraError(f"adapter {adapter_dir} was trained on {what} (init_lora_weights={start!r}), which PEFT cannot "
                      "rebuild exactly on load; convert it first (ailora convert --initial INIT_DIR)")


def check_saved_modules(sd: dict, cfg: peft.LoraConfig, path) -> None:
    """Every module of the config's ``modules_to_save`` (a task head) has tensors in the file: PEFT
    would keep the base's (or a random) head for a missing one without a word."""
    names = [k.removeprefix(PREFIX) for k in sd if ".lora_" not in k]
    for module in sorted(cfg.modules_to_save or []):
        if not any(f".{module}." in f".{n}" for n in names):
            raise AiloraError(f"{path} has no tensors for {module}, which its config saves in full "
                              "(modules_to_save); the adapter was saved without its task head")


def read_adapter(adapter_dir, residual_form_ok: bool = False) -> tuple[dict[str, torch.Tensor], peft.LoraConfig, dict]:
    """(tensors, LoraConfig, ailora.json or {}) of an adapter directory; a one-line error if any is broken.

    The one reader of adapter directories: load checks, conversion and the analyses use it. A raw
    save of an ailora model is refused unless ``residual_form_ok``."""
    d, cfg = read_adapter_config(adapter_dir, residual_form_ok)
    sd = read_tensors(d / WEIGHTS_FILE, "adapter weights")
    check_lora_pairs(sd, d / WEIGHTS_FILE)
    check_saved_modules(sd, cfg, d / WEIGHTS_FILE)
    meta = read_json(d / META_FILE) if (d / META_FILE).is_file() else {}
    return sd, cfg, meta


def check_lora_pairs(keys, path) -> None:
    """Every layer's lora_A has its lora_B and the reverse (PEFT would silently start a missing one
    afresh); a one-line error names the file and the layer."""
    halves = {half: {k.replace(f".{half}.", ".lora_?.") for k in keys if f".{half}." in k}
              for half in ("lora_A", "lora_B")}
    odd = sorted(halves["lora_A"] ^ halves["lora_B"])
    if odd:
        lacking = "lora_B" if odd[0] in halves["lora_A"] else "lora_A"
        layer = odd[0].removeprefix(PREFIX).split(".lora_?.")[0]
        raise AiloraError(f"{path} lacks the {lacking} tensor of layer {layer}")


def check_adapter_dir(base: torch.nn.Module, adapter_dir) -> peft.LoraConfig:
    """Validate an adapter directory against a base model; a one-line error names what is wrong."""
    d, cfg = read_adapter_config(adapter_dir)
    try:
        f = safe_open(d / WEIGHTS_FILE, framework="pt")
    except Exception as exc:  # a truncated or foreign file
        raise AiloraError(f"cannot read adapter weights {d / WEIGHTS_FILE}: {str(exc).splitlines()[0]}") from None
    check_foreign_start(d, cfg)
    with f:
        check_lora_pairs(f.keys(), d / WEIGHTS_FILE)
        check_saved_modules(dict.fromkeys(f.keys()), cfg, d / WEIGHTS_FILE)
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
    if not check["passed"]:  # past tolerance, or NaN
        raise ExactnessError(f"merging changed outputs {changed_by(check['max_abs_diff'], check['tolerance'])}")
    return merged, check


def _merge_in_place(model: peft.PeftModel) -> peft.PeftModel:
    model.merge_adapter()
    return model


def _refuse_quantised_merge(model: peft.PeftModel) -> None:
    from ailora.core.quantize import refuse_quantised_merge  # imported on use: bitsandbytes is optional

    refuse_quantised_merge(model)


def merge(model: peft.PeftModel, check: bool = True) -> dict:
    """Merge the adapters into the base weights in place (PEFT's merge_adapter), output-checked."""
    _refuse_quantised_merge(model)
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
    _refuse_quantised_merge(model)
    merged, check = _merge_checked(model, lambda m: m.merge_and_unload())
    with atomic_dir(out_dir, overwrite) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        if tokenizer_from is not None:
            for f in filter(_is_tokenizer_file, Path(tokenizer_from).iterdir()):
                shutil.copy2(f, tmp / f.name)
    return check
