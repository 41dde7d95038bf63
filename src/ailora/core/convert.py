"""Converting adapter directories: residual-form to plain LoRA, and compression to a lower rank."""

from __future__ import annotations

from pathlib import Path

import peft
import torch
from safetensors.torch import load_file

from ailora.core.adapters import (
    PREFIX,
    WEIGHTS_FILE,
    check_adapter_dir,
    lora_scaling,
    module_rank_alpha,
    plain_adapter_meta,
    read_adapter,
    to_plain_lora,
    verify,
    write_adapter_dir,
)
from ailora.core.models import load_model, resolve_model_path
from ailora.core.roles import weight_of
from ailora.errors import AiloraError

# Written beside the converted adapter: the same report as its ailora.json.
REPORT_FILE = "convert_report.json"


def _initial_factors(sd: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for key in sd:
        if key.endswith(".lora_A.weight"):
            name = key[len(PREFIX):-len(".lora_A.weight")]
            out[name] = (sd[key], sd[f"{PREFIX}{name}.lora_B.weight"])
    return out


def _residual_reference(base: torch.nn.Module, sd: dict, cfg, initial_sd: dict) -> peft.PeftModel:
    """The trained model as it was trained: base weights W0 - s B0 A0, with the trained adapter on top."""
    for name, (a0, b0) in _initial_factors(initial_sd).items():
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
    if initial is None and rank is None:
        raise AiloraError(f"adapter {adapter} is already plain LoRA: give --rank to compress it, or --initial "
                          "for an adapter trained on a residual base")
    init_factors = _initial_factors_of(initial, sd, cfg) if initial is not None else {}
    new_sd, new_cfg, modules = to_plain_lora(sd, cfg, init_factors, rank)
    provenance = {k: v for k, v in meta.items() if k not in ("modules", "compressed_rank", "max_relative_error")}
    if base is not None:
        provenance["check"] = _check_against_base(base, adapter, sd, cfg, init_factors, new_sd, new_cfg, initial)
    report = plain_adapter_meta(provenance, modules, rank)
    write_adapter_dir(out, new_sd, new_cfg, report, overwrite, {REPORT_FILE: report})
    return report


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


def _check_against_base(base_path, adapter, sd, cfg, init_factors, new_sd, new_cfg, initial) -> dict:
    path = resolve_model_path(base_path)
    fresh = load_model(path)
    if not init_factors:
        check_adapter_dir(fresh, adapter)
    if init_factors:
        reference = _residual_reference(load_model(path), sd, cfg, load_file(Path(initial) / WEIGHTS_FILE))
    else:
        reference = peft.PeftModel.from_pretrained(load_model(path), str(adapter))
    converted = peft.get_peft_model(fresh, _plain_copy(new_cfg))
    peft.set_peft_model_state_dict(converted, new_sd)
    return verify(reference, converted)
