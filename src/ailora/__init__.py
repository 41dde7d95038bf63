"""ailora: AILoRA and the SVD-initialised LoRA family as exact, PEFT-compatible adapters.

    import ailora
    model = ailora.apply(model, method="ailora", rank=8)       # a peft.PeftModel, outputs unchanged
    optimizer = torch.optim.AdamW(ailora.param_groups(model, lr=2e-4))  # value lr = 2 x query lr
    ailora.save(model, "adapter/")   # plain PEFT LoRA that loads on the ORIGINAL base
    ailora.state_of(model).report()  # what was done, per layer (the same as model.ailora_state)
    model = ailora.load_initialised("residual/")  # from `ailora init --residual-out residual/`: no SVDs
    ailora.export_gguf("adapter/", "adapter.gguf", base="base.gguf")  # a llama.cpp / Ollama LoRA adapter

``ailora.hf`` (imported on first use) has the Hugging Face Trainer / TRL integration: ``AiloraCallback``
and ``optimizer_cls_and_kwargs``.
"""

from typing import TYPE_CHECKING

from ailora import quiet
from ailora.errors import AiloraError, ExactnessError, TrainingFailedError
from ailora.version import __version__

quiet.install()

if TYPE_CHECKING:
    from ailora.core.adapters import load, merge, merge_to_dir, save, unmerge, verify
    from ailora.core.apply import apply
    from ailora.core.gguf_adapter import export_gguf
    from ailora.core.initialised import load_initialised
    from ailora.core.optim import param_groups
    from ailora.core.state import AiloraState, state_of

__all__ = [
    "__version__", "AiloraError", "AiloraState", "ExactnessError", "apply", "export_gguf", "load", "load_initialised",
    "merge", "merge_to_dir", "param_groups", "save", "state_of", "unmerge", "verify", "TrainingFailedError",
]

# name -> the module defining it. Imported on first use (lazy imports for start-up speed): `import ailora`,
# and so the `ailora` command's --help and ls, do not import torch, transformers or PEFT.
_LAZY = {
    **dict.fromkeys(["load", "merge", "merge_to_dir", "save", "unmerge", "verify"], "ailora.core.adapters"),
    "apply": "ailora.core.apply", "export_gguf": "ailora.core.gguf_adapter",
    "load_initialised": "ailora.core.initialised", "param_groups": "ailora.core.optim",
    "AiloraState": "ailora.core.state", "state_of": "ailora.core.state", "hf": None,
}


def __getattr__(name: str):
    """The public names above, and ``ailora.hf`` (the Trainer / TRL integration), imported on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'ailora' has no attribute {name!r}")
    import importlib

    if _LAZY[name] is None:
        return importlib.import_module(f"ailora.{name}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
