"""ailora: AILoRA and the SVD-initialised LoRA family as exact, PEFT-compatible adapters.

    import ailora
    model = ailora.apply(model, method="ailora", rank=8)       # a peft.PeftModel, outputs unchanged
    optimizer = torch.optim.AdamW(ailora.param_groups(model, lr=2e-4))  # value lr = 2 x query lr
    ailora.save(model, "adapter/")   # plain PEFT LoRA that loads on the ORIGINAL base
"""

__version__ = "0.1.0"

from ailora.adapters import load, merge, merge_to_dir, save, unmerge, verify  # noqa: E402
from ailora.apply import AiloraState, apply  # noqa: E402
from ailora.errors import AiloraError, ExactnessError  # noqa: E402
from ailora.optim import param_groups  # noqa: E402

__all__ = [
    "AiloraError", "AiloraState", "ExactnessError", "apply", "load", "merge", "merge_to_dir",
    "param_groups", "save", "unmerge", "verify",
]
