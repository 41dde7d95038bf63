"""ailora: AILoRA and the SVD-initialised LoRA family as exact, PEFT-compatible adapters."""

__version__ = "0.1.0"
