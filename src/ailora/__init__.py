"""ailora: AILoRA and the SVD-initialised LoRA family as exact, PEFT-compatible adapters.

    import ailora
    model = ailora.apply(model, method="ailora", rank=8)       # a peft.PeftModel, outputs unchanged
    optimizer = torch.optim.AdamW(ailora.param_groups(model, lr=2e-4))  # value lr = 2 x query lr
    ailora.save(model, "adapter/")   # plain PEFT LoRA that loads on the ORIGINAL base
    ailora.state_of(model).report()  # what was done, per layer (the same as model.ailora_state)
"""

from ailora.core.adapters import load, merge, merge_to_dir, save, unmerge, verify
from ailora.core.apply import apply
from ailora.core.optim import param_groups
from ailora.core.state import AiloraState, state_of
from ailora.errors import AiloraError, ExactnessError
from ailora.version import __version__

__all__ = [
    "__version__", "AiloraError", "AiloraState", "ExactnessError", "apply", "load", "merge", "merge_to_dir",
    "param_groups", "save", "state_of", "unmerge", "verify",
]
