"""Choosing which existing weights train: full fine-tuning and BitFit, and what they share.

Neither method adds a module, so neither has a PEFT counterpart (PEFT's tuners all add adapters;
its ``bias="all"`` option trains biases only next to a LoRA/IA3 adapter). Preparing returns a
``Prepared`` whose state is a ``BaselineState`` and whose ``groups`` pass its head and method to
``ailora.param_groups`` (the task head gets its own group); saving reads its method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ailora.core.apply import HEAD_NAMES
from ailora.errors import AiloraError
from ailora.methods.registry import Prepared


@dataclass
class BaselineState:
    """What a baseline preparation did (``Prepared.state`` of the full, bitfit, houlsby and vera methods)."""

    method: str
    head: list[str]  # top-level task-head modules, trained in full
    details: dict = field(default_factory=dict)  # method options, e.g. {"bottleneck": 64, "modules": [...]}

    def metadata(self) -> dict:
        return {"method": self.method, "head": self.head, **self.details}


def prepared_baseline(model: nn.Module, state: BaselineState) -> Prepared:
    """A baseline's ``Prepared``: its head and method name its optimizer groups (``Prepared.groups``)."""
    return Prepared(model, state, groups={"head": state.head, "own_group": state.method})


def head_modules(model: nn.Module) -> list[str]:
    """The task head's top-level modules (classifier, score, ...), as ``ailora.apply(head="auto")`` finds them."""
    return [n for n, _ in model.named_children() if n in HEAD_NAMES]


def is_norm(module: nn.Module) -> bool:
    """LayerNorm and its relatives (RMSNorm in LLaMA, T5LayerNorm), which carry no ``nn.LayerNorm`` type."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def train_only(model: nn.Module, names) -> int:
    """Freeze every parameter except those named (dotted names); returns the trainable count."""
    names = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    return sum(p.numel() for n, p in model.named_parameters() if n in names)


def head_parameters(model: nn.Module, head: list[str]) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.split(".", 1)[0] in head]


def prepare_full(model: nn.Module, cfg, seed: int) -> Prepared:
    """Full fine-tuning: every parameter trains."""
    model.requires_grad_(True)
    return prepared_baseline(model, BaselineState("full", head_modules(model)))


def bias_parameters(model: nn.Module) -> list[str]:
    """Every bias vector (BitFit, Ben Zaken et al. 2022: those of q, k, v, the dense layers and LayerNorms)."""
    return [n for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias" and p.ndim == 1]


def prepare_bitfit(model: nn.Module, cfg, seed: int) -> Prepared:
    """BitFit: only the bias vectors and the task head train."""
    biases = bias_parameters(model)
    if not biases:
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        raise AiloraError(f"model type {model_type!r} has no bias vectors, so BitFit has nothing to train "
                          "(LLaMA-style models use none); choose another method")
    head = head_modules(model)
    train_only(model, dict.fromkeys(biases + head_parameters(model, head)))
    return prepared_baseline(model, BaselineState("bitfit", head))
