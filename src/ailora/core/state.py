"""``AiloraState``: what ailora knows about an applied model, and the one place that reads it back.

``ailora.apply`` returns a ``peft.PeftModel`` with the state attached as ``model.ailora_state``
(the documented handle: ``model.ailora_state.report()``). Library code reads it only through
``state_of(model)``, and every public function that needs it also takes it as ``state=``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import peft
import torch
from torch import nn

from ailora.core.options import LoraOptions
from ailora.core.roles import Target
from ailora.version import __version__

STATE_ATTR = "ailora_state"


@dataclass
class LayerRecord:
    """What one adapted module got: a row in the init report."""

    name: str
    roles: list[str]
    inits: list[str]
    shape: list[int]  # (out, in)
    rank: int  # total rank of the PEFT layer (r per adapted block)
    singular_values: dict[str, list[float]]  # role -> the values moved into the adapter
    residual_dtype: str
    seconds: float


@dataclass
class AiloraState:
    """What ailora knows about an applied model, kept on the PeftModel as ``model.ailora_state``.

    ``initial`` holds each module's starting (A0, B0) on the CPU: saving needs them to express the
    trained adapter against the original weights (B' = [B, -B0], A' = [A; A0]).
    """

    method: str
    options: LoraOptions
    """The LoRA options as given (``alpha`` None where the method's default applies)."""
    policy: dict[str, str]  # role -> init, resolved from the method and the options
    alpha: float  # resolved
    seed: int
    dtype: str
    lr_ratios: dict[str, float]
    head: list[str]
    targets: dict[str, Target]
    initial: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    roles_source: str = "architecture"  # architecture, modules or fallback (``ailora.core.roles``)
    layers: list[LayerRecord] = field(default_factory=list)
    check: dict = field(default_factory=dict)
    total_seconds: float = 0.0
    version: str = __version__
    split: dict = field(default_factory=dict)
    """How the decompositions were shared across processes: {} in one process, else {"processes": P,
    "blocks": [blocks decomposed by each]} (``ailora.core.decompose``)."""

    def metadata(self) -> dict:
        """The adapter's provenance, as written to ``ailora.json``: ``options`` is the LoRA options as
        given (``asdict``); ``policy`` and ``alpha`` are what resolving them gave; ``rank``,
        ``use_rslora``, ``solver`` and ``use_dora`` stay at the top level too, where readers of
        ``ailora.json`` written before ``options`` (model cards, conversions) look for them."""
        o = self.options
        return {
            "ailora_version": self.version, "peft_version": peft.__version__, "method": self.method,
            "policy": self.policy, "rank": o.rank, "alpha": self.alpha, "use_rslora": o.use_rslora,
            "solver": o.solver, "seed": self.seed, "dtype": self.dtype, "lr_ratios": self.lr_ratios,
            "head": self.head, "use_dora": o.use_dora,
            "roles_source": self.roles_source,
            "targets": {n: [b.describe() for b in t.blocks] for n, t in self.targets.items()},
            "options": asdict(o),
        }

    def report(self) -> dict:
        """Per-layer records, total seconds and the output check (the JSON of ``ailora init``)."""
        return {**self.metadata(), "layers": [asdict(r) for r in self.layers],
                "total_seconds": self.total_seconds, "output_check": self.check,
                **({"split": self.split} if self.split else {})}


def state_of(model: nn.Module) -> AiloraState | None:
    """The AiloraState that ``ailora.apply`` attached to ``model``, or None for any other model."""
    return getattr(model, STATE_ATTR, None)


def attach_state(model: nn.Module, state: AiloraState) -> None:
    """Keep ``state`` on ``model`` as ``model.ailora_state`` (read back with ``state_of``)."""
    setattr(model, STATE_ATTR, state)
