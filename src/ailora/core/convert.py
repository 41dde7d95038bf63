"""Converting adapter directories: residual-form to plain LoRA, and compression to a lower rank."""

from __future__ import annotations

import copy
from pathlib import Path

import peft
import torch

from ailora.core.adapters import (
    PREFIX,
    check_adapter_dir,
    lora_scaling,
    module_rank_alpha,
    peft_start,
    plain_adapter_meta,
    read_adapter,
    to_plain_lora,
    verify,
    write_adapter_dir,
)
from ailora.core.apply import HEAD_NAMES
from ailora.core.files import check_empty_or_overwrite
from ailora.core.models import load_config, load_model, resolve_model_path
from ailora.core.roles import weight_of
from ailora.errors import AiloraError, ExactnessError

# Written beside the converted adapter: the same report as its ailora.json.
CONVERT_REPORT_FILE = "convert_report.json"


def _initial_factors(sd: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for key in sd:
        if key.endswith(".lora_A.weight"):
            name = key[len(PREFIX):-len(".lora_A.weight")]
            out[name] = (sd[key], sd[f"{PREFIX}{name}.lora_B.weight"])
    return out


def _residual_reference(base: torch.nn.Module, sd: dict, cfg, init_factors: dict) -> peft.PeftModel:
    """The trained model as it was trained: base weights W0 - s B0 A0, with the trained adapter on top."""
    for name, (a0, b0) in init_factors.items():
        module = base.get_submodule(name)
        r, alpha = module_rank_alpha(cfg, name)
        w = weight_of(module)
        with torch.no_grad():
            w.sub_((lora_scaling(r, alpha, cfg.use_rslora) * (b0.float() @ a0.float())).to(w.dtype))
    model = peft.get_peft_model(base, _plain_copy(cfg))
    peft.set_peft_model_state_dict(model, sd)
    return model


def _plain_copy(cfg: peft.LoraConfig) -> peft.LoraConfig:
    cfg = peft.LoraConfig(**{k: v for k, v in cfg.to_dict().items() if k in peft.LoraConfig.__dataclass_fields__})
    cfg.init_lora_weights = True
    return cfg


def convert_dir(adapter, out, rank: int | None = None, initial=None, base=None, overwrite: bool = False) -> dict:
    """Write ``adapter`` as plain LoRA on the original base into ``out``; returns the report, also
    written there as ``ailora.json`` and ``convert_report.json``.

    Args:
        initial: the adapter at initialisation, for an adapter trained on a residual base (PEFT's
            PiSSA/MiLoRA workflow saves both). Without it the adapter must already be plain LoRA.
        rank: compress each module above this rank by SVD of its delta (relative error reported).
        base: the original base model's directory: load it and check the converted adapter's outputs
            against the model as trained (and, when compressing, report the difference).
    """
    sd, cfg, meta = read_adapter(adapter)
    _check_request(adapter, cfg, rank, initial)
    check_empty_or_overwrite(Path(out), overwrite)  # before a base model is loaded and checked
    init_factors = _initial_factors_of(initial, sd, cfg) if initial is not None else {}
    new_sd, new_cfg, modules = to_plain_lora(sd, cfg, init_factors, rank)
    provenance = {k: v for k, v in meta.items() if k not in ("modules", "compressed_rank", "max_relative_error")}
    if base is not None:
        exact = to_plain_lora(sd, cfg, init_factors)[:2] if rank is not None else (new_sd, new_cfg)
        provenance["check"] = _check_against_base(base, adapter, sd, cfg, init_factors, (new_sd, new_cfg), exact)
    report = plain_adapter_meta(provenance, modules, rank, new_cfg)
    write_adapter_dir(out, new_sd, new_cfg, report, overwrite, {CONVERT_REPORT_FILE: report})
    return report


def _check_request(adapter, cfg: peft.LoraConfig, rank: int | None, initial) -> None:
    """Refuse a conversion whose result would be wrong or empty, from the adapter's PEFT start: a
    residual start (pissa, olora, corda, ...) needs the initial adapter, a quantised one (loftq) has
    no exact plain form, a plain one needs --rank (there is nothing else to convert)."""
    start, kind = cfg.init_lora_weights, peft_start(cfg)
    if kind in ("quantised", "unknown"):
        what = "a quantised base, which no plain LoRA on the original weights reproduces" if kind == "quantised" \
            else "a start ailora does not know, so it cannot tell which base the factors apply to"
        raise AiloraError(f"adapter {adapter} was trained on {what} (init_lora_weights={start!r})")
    if kind == "residual" and initial is None:
        raise AiloraError(f"adapter {adapter} was trained on the residual base of PEFT's init_lora_weights={start!r} "
                          "(its factors do not apply to the original model): give the adapter as initialised with "
                          "--initial (model.save_pretrained right after get_peft_model)")
    if kind == "plain" and initial is None and rank is None:
        raise AiloraError(f"adapter {adapter} is plain LoRA on the original base already (init_lora_weights="
                          f"{start!r}): nothing to convert; give --rank to compress it")


def _initial_factors_of(initial, sd: dict, cfg: peft.LoraConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (A0, B0) of the ``initial`` adapter directory, checked against the trained one."""
    init_sd, init_cfg, _ = read_adapter(initial)
    if init_cfg.r != cfg.r or init_cfg.rank_pattern != cfg.rank_pattern:
        raise AiloraError(f"initial adapter {initial} has ranks {init_cfg.r}/{init_cfg.rank_pattern}, "
                          f"trained has {cfg.r}/{cfg.rank_pattern}")
    init_factors = _initial_factors(init_sd)
    missing = sorted(set(_initial_factors(sd)) - set(init_factors))
    if missing:
        raise AiloraError(f"initial adapter {initial} lacks layer {missing[0]}")
    return init_factors


def _check_against_base(base_path, adapter, sd, cfg, init_factors, written, exact) -> dict:
    """The written adapter's outputs against the model as trained, on ``base_path``. ``exact`` (state
    dict, config) is the conversion before any compression: it must match within tolerance, or an
    ExactnessError says so before anything is written; ``written`` (compressed) reports its difference."""
    fresh = load_base_for_adapter(resolve_model_path(base_path), adapter)
    base = copy.deepcopy(fresh)  # the reference gets its own copy: the converted adapters go on copies of ``fresh``
    if init_factors:
        reference = _residual_reference(base, sd, cfg, init_factors)
    else:
        check_adapter_dir(fresh, adapter)
        reference = peft.PeftModel.from_pretrained(base, str(adapter))
    pairs = [exact] if written[0] is exact[0] else [exact, written]
    checks = [verify(reference, _with_adapter(fresh if i == len(pairs) - 1 else copy.deepcopy(fresh), *pair))
              for i, pair in enumerate(pairs)]
    if not checks[0]["passed"]:
        raise ExactnessError(f"the converted adapter's outputs differ from the trained model's by "
                             f"{checks[0]['max_abs_diff']:.3g} on {base_path} (tolerance {checks[0]['tolerance']:.1g}); "
                             "is it the base the adapter was trained on?")
    return checks[-1]


def _with_adapter(model: torch.nn.Module, sd: dict, cfg: peft.LoraConfig) -> peft.PeftModel:
    converted = peft.get_peft_model(model, _plain_copy(cfg))
    peft.set_peft_model_state_dict(converted, sd)
    return converted


# PEFT task types -> the kinds of ``ailora.core.models.load_model``.
TASK_KINDS = {"SEQ_CLS": "seq-cls", "CAUSAL_LM": "causal-lm", "SEQ_2_SEQ_LM": "seq2seq-lm", "QUESTION_ANS": "qa"}
# Head modules whose output size is the number of labels, and the tensor that holds it.
LABEL_TENSORS = ("classifier.weight", "classifier.out_proj.weight", "score.weight", "classification_head.out_proj.weight")


def _kind_of_class(name: str) -> str | None:
    """The ``load_model`` kind whose Auto class builds transformers class ``name`` (None: no such kind)."""
    from transformers.models.auto import modeling_auto as auto

    tables = {"seq-cls": auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
              "causal-lm": auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "qa": auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
              "seq2seq-lm": auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, "masked-lm": auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
              "base": auto.MODEL_MAPPING_NAMES}
    return next((kind for kind, table in tables.items() if name in set(table.values())), None)


def adapter_head(adapter) -> dict:
    """The model class, label count and head modules an adapter was trained with, from its ``ailora.json``
    (``model``, written by ``ailora.save``) or, for other adapters, its config's ``task_type`` /
    ``auto_mapping`` and the shape of its head tensors. Keys: class, kind, num_labels, head (module names)."""
    sd, cfg, meta = read_adapter(adapter)
    record = dict(meta.get("model") or {})
    heads = sorted({k[len(PREFIX):].split(".")[0] for k in sd if ".lora_" not in k and k.startswith(PREFIX)})
    if "num_labels" not in record:
        shapes = [sd[PREFIX + t].shape[0] for t in LABEL_TENSORS if PREFIX + t in sd]
        if shapes:
            record["num_labels"] = shapes[0]
    cls = record.get("class") or (getattr(cfg, "auto_mapping", None) or {}).get("base_model_class")
    kind = _kind_of_class(cls) if cls else TASK_KINDS.get(str(cfg.task_type).rsplit(".", 1)[-1])
    if kind is None and record.get("num_labels"):
        kind = "seq-cls"
    return {**record, "class": cls, "kind": kind, "head": meta.get("head") or heads, "tensors": heads}


def load_base_for_adapter(path, adapter, kind: str = "auto", dtype: str | None = None,
                          trust_remote_code: bool = False):
    """The original base at ``path`` built with the adapter's task head (class and number of labels),
    whatever head the checkpoint itself has (none, as MiniLM; or another label count).

    The head's weights come from the adapter (PEFT's ``modules_to_save``): a head the checkpoint lacks,
    or whose size differs, that the adapter does not hold in full is refused, never left random."""
    info = adapter_head(adapter)
    kind = (info["kind"] or "auto") if kind == "auto" else kind
    config = load_config(path, trust_remote_code)
    extra = {}
    if info.get("num_labels") is not None and kind == "seq-cls":
        extra = {"num_labels": info["num_labels"]}
        if info.get("problem_type"):
            extra["problem_type"] = info["problem_type"]
        if info.get("id2label"):
            extra["id2label"] = {int(k): v for k, v in info["id2label"].items()}
    own = (getattr(config, "architectures", None) or [None])[0]
    same_head = info["class"] in (None, own) and extra.get("num_labels", config.num_labels) == config.num_labels
    if extra and not same_head:
        extra["ignore_mismatched_sizes"] = True  # the checkpoint's head (if any) is replaced by the adapter's
    model = load_model(path, kind=kind, dtype=dtype, trust_remote_code=trust_remote_code, **extra)
    if not same_head:
        _require_head_tensors(model, info, adapter)
    return model


def _require_head_tensors(model, info: dict, adapter) -> None:
    sd, _, _ = read_adapter(adapter)
    children = {n for n, _ in model.named_children()}
    for head in [h for h in info["head"] if h in children] or [h for h in children if h in HEAD_NAMES]:
        missing = [n for n, _ in model.get_submodule(head).named_parameters() if f"{PREFIX}{head}.{n}" not in sd]
        if missing:
            raise AiloraError(f"adapter {adapter} has no weights for the task head {head}.{missing[0]}, which the base "
                              f"checkpoint does not have either; give the fine-tuned checkpoint with its head as the base")
