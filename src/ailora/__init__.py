"""ailora: AILoRA and the SVD-initialised LoRA family as exact, PEFT-compatible adapters.

    import ailora
    model = ailora.apply(model, method="ailora", rank=8)       # a peft.PeftModel, outputs unchanged
    optimizer = torch.optim.AdamW(ailora.param_groups(model, lr=2e-4))  # value lr = 2 x query lr
    ailora.save(model, "adapter/")   # plain PEFT LoRA that loads on the ORIGINAL base
    ailora.state_of(model).report()  # what was done, per layer (the same as model.ailora_state)

``ailora.hf`` (imported on first use) has the Hugging Face Trainer / TRL integration: ``AiloraCallback``
and ``optimizer_cls_and_kwargs``.
"""

from ailora.core.adapters import load, merge, merge_to_dir, save, unmerge, verify
from ailora.core.apply import apply
from ailora.core.optim import param_groups
from ailora.core.state import AiloraState, state_of
from ailora.errors import AiloraError, ExactnessError, TrainingFailedError
from ailora.version import __version__

__all__ = [
    "__version__", "AiloraError", "AiloraState", "ExactnessError", "apply", "load", "merge", "merge_to_dir",
    "param_groups", "save", "state_of", "unmerge", "verify", "TrainingFailedError",
]


def __getattr__(name: str):
    """``ailora.hf`` is imported on first use (it imports transformers' Trainer machinery)."""
    if name == "hf":
        import importlib

        return importlib.import_module("ailora.hf")
    raise AttributeError(f"module 'ailora' has no attribute {name!r}")
