"""Saving and loading what each baseline trained; every directory holds ``ailora.json`` with a ``format``.

========================  ==================================================================================
format                    files
========================  ==================================================================================
full                      ``config.json`` + ``model*.safetensors``: a whole transformers checkpoint
                          (``save_pretrained``), loadable without ailora
bitfit                    ``trained.safetensors``: the bias vectors and the task head, keyed by the base
                          model's parameter names (``bert.encoder.layer.0.attention.self.query.bias``)
houlsby                   ``trained.safetensors``: adapters (``<module>.houlsby_down.weight`` ...),
                          LayerNorms and the head, keyed by the adapted model's parameter names;
                          ``ailora.json`` names the wrapped modules and the bottleneck
peft-vera                 PEFT's ``adapter_config.json`` + ``adapter_model.safetensors`` (``save_pretrained``,
                          the shared projections included), loadable with ``peft.PeftModel.from_pretrained``
plain-lora-on-original-   the LoRA family, DoRA, rsLoRA, LoRA+: ``ailora.save`` (a standard PEFT LoRA on the
base                      original base; a DoRA magnitude is saved as trained)
========================  ==================================================================================

``load(base, dir)`` puts any of these on a freshly loaded original base model.
"""

from __future__ import annotations

from pathlib import Path

import peft
import torch
from safetensors.torch import save_file
from torch import nn

from ailora.core.adapters import META_FILE
from ailora.core.adapters import load as load_adapter
from ailora.core.files import atomic_dir, read_json, read_tensors, write_json
from ailora.errors import AiloraError
from ailora.methods.houlsby import add_houlsby
from ailora.methods.registry import Prepared
from ailora.methods.select import train_only
from ailora.version import __version__

TENSORS_FILE = "trained.safetensors"


def _meta(prepared: Prepared, fmt: str, **extra) -> dict:
    trainable = sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)
    state = prepared.state.metadata() if prepared.state is not None else {}
    return {"ailora_version": __version__, "format": fmt, **state, "trainable_parameters": trainable, **extra}


def _write(out_dir, overwrite: bool, meta: dict, write) -> dict:
    """``write(tmp)`` fills a temporary directory, ``ailora.json`` joins it, and it becomes ``out_dir``."""
    with atomic_dir(out_dir, overwrite) as tmp:
        write(tmp)
        write_json(tmp / META_FILE, meta)
    return meta


def save_full(prepared: Prepared, out_dir, overwrite: bool = True) -> dict:
    """The whole fine-tuned model as a transformers checkpoint (safetensors)."""
    return _write(out_dir, overwrite, _meta(prepared, "full"),
                  lambda tmp: prepared.model.save_pretrained(tmp, safe_serialization=True))


def save_trained(prepared: Prepared, out_dir, overwrite: bool = True) -> dict:
    """The trained tensors only (BitFit: biases + head; Houlsby: adapters + LayerNorms + head)."""
    state = prepared.state
    if state is None or getattr(state, "method", None) not in ("bitfit", "houlsby"):
        raise AiloraError("save_trained expects a model prepared by the bitfit or houlsby method")
    tensors = {n: p.detach().cpu().contiguous() for n, p in prepared.model.named_parameters() if p.requires_grad}
    return _write(out_dir, overwrite, _meta(prepared, state.method, tensors=len(tensors)),
                  lambda tmp: save_file(tensors, tmp / TENSORS_FILE, metadata={"format": "pt"}))


def save_vera(prepared: Prepared, out_dir, overwrite: bool = True) -> dict:
    """PEFT's own VeRA adapter directory plus ``ailora.json``."""
    return _write(out_dir, overwrite, _meta(prepared, "peft-vera"), prepared.model.save_pretrained)


def read_meta(path) -> dict:
    f = Path(path) / META_FILE
    if not f.is_file():
        raise AiloraError(f"{path} has no {META_FILE}; it is not a directory written by ailora")
    return read_json(f)


def _copy_into(model: nn.Module, tensors: dict[str, torch.Tensor], where) -> None:
    params = dict(model.named_parameters())
    for name, t in tensors.items():
        if name not in params:
            raise AiloraError(f"{where} holds {name}, which the base model does not have")
        if params[name].shape != t.shape:
            raise AiloraError(f"{where}: {name} has shape {tuple(t.shape)}, the model's is "
                              f"{tuple(params[name].shape)}")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)


def _load_full(base: nn.Module, d: Path) -> nn.Module:
    files = sorted(d.glob("model*.safetensors"))
    if not files:
        raise AiloraError(f"{d} holds no model*.safetensors")
    sd = {k: v for f in files for k, v in read_tensors(f).items()}
    missing, unexpected = base.load_state_dict(sd, strict=False)
    if unexpected:
        raise AiloraError(f"{d} holds {unexpected[0]}, which the base model does not have")
    # save_pretrained writes one copy of tied weights: a missing key is fine when it shares storage.
    state = base.state_dict()
    loaded = {state[k].data_ptr() for k in sd if k in state}
    untied = [k for k in missing if state[k].data_ptr() not in loaded]
    if untied:
        raise AiloraError(f"{d} lacks {untied[0]}")
    return base


def load(base: nn.Module, path, trainable: bool = False) -> nn.Module:
    """Put a saved method (any format in this module's table) on ``base``, the original model.

    Returns ``base`` itself (full, bitfit, houlsby; changed in place) or a PeftModel (LoRA family, VeRA).
    """
    d = Path(path)
    meta = read_meta(d)
    fmt = meta.get("format")
    if fmt == "plain-lora-on-original-base":
        return load_adapter(base, d, trainable=trainable)
    if fmt == "peft-vera":
        return peft.PeftModel.from_pretrained(base, str(d), is_trainable=trainable)
    if fmt == "full":
        return _load_full(base, d)
    if fmt in ("bitfit", "houlsby"):
        if not (d / TENSORS_FILE).is_file():
            raise AiloraError(f"{d} is missing {TENSORS_FILE}")
        if fmt == "houlsby":
            add_houlsby(base, meta["bottleneck"], modules=meta["modules"])
        tensors = read_tensors(d / TENSORS_FILE, "trained tensors")
        _copy_into(base, tensors, d / TENSORS_FILE)
        train_only(base, tensors if trainable else ())
        return base
    raise AiloraError(f"{d / META_FILE} has format {fmt!r}; known formats: full, bitfit, houlsby, peft-vera, "
                      "plain-lora-on-original-base")
