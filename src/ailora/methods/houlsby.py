"""Houlsby adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", sec. 2.1).

Written here because PEFT has no bottleneck-adapter tuner (its tuners are low-rank or scaling
reparametrisations of existing weights). A bottleneck adapter sits after the attention output
projection and after the FFN's output projection, before each residual add:

    h = base_layer(x)                 (..., d)
    y = h + up(gelu(down(h)))         down: d -> m, up: m -> d, m the bottleneck (64 in the paper)

with 2md + d + m parameters per insertion (two weights and two biases). Both weights start from a
truncated normal with std 1e-3 (the paper's "near-identity" initialisation, as in its reference
code's ``adapter_init_scale``) and the biases at zero, so the model starts within ~1e-6 of the base.
LayerNorms and the task head train too.

Insertion points come from ``ailora.core.roles``: role ``output`` (BERT's ``attention.output.dense``,
LLaMA's ``o_proj``) and role ``down`` (BERT's ``layer.N.output.dense``, LLaMA's ``down_proj``).
Wrapping those modules puts the adapter on their output, which in BERT's ``BertSelfOutput`` and
``BertOutput`` (dense -> dropout -> LayerNorm(x + input)) is before the residual add, as in the
paper; the one difference from the reference code is that the adapter reads the projection's
output before dropout, not after it.
"""

from __future__ import annotations

import torch
from torch import nn

from ailora.core.roles import find_targets, weight_of
from ailora.errors import AiloraError
from ailora.methods.registry import Prepared
from ailora.methods.select import (
    BaselineState,
    head_modules,
    head_parameters,
    is_norm,
    prepared_baseline,
    train_only,
)

ROLES = ("output", "down")  # attention output projection, FFN output projection
INIT_STD = 1e-3  # the paper's near-identity init scale (truncated at two standard deviations)


class HoulsbyAdapter(nn.Module):
    """A base projection followed by a bottleneck adapter with an inner skip.

    Follows the adapter-variant protocol (build, forward, delta_weight); a Houlsby adapter is
    nonlinear, so it has no weight delta and cannot be merged into the base weight.
    """

    def __init__(self, base_layer: nn.Module, d: int, m: int):
        super().__init__()
        self.base_layer = base_layer
        self.houlsby_down = nn.Linear(d, m)
        self.houlsby_up = nn.Linear(m, d)
        self.act = nn.GELU()

    @classmethod
    def build(cls, base_layer: nn.Module, bottleneck: int, init_std: float = INIT_STD,
              generator: torch.Generator | None = None) -> HoulsbyAdapter:
        """Wrap ``base_layer`` (Linear or Conv1D, d output features) with an m = ``bottleneck`` adapter."""
        w = weight_of(base_layer)
        layer = cls(base_layer, w.shape[0], bottleneck)
        with torch.no_grad():
            for lin in (layer.houlsby_down, layer.houlsby_up):
                init = torch.randn(lin.weight.shape, generator=generator) * init_std
                lin.weight.copy_(init.clamp(-2 * init_std, 2 * init_std))
                lin.bias.zero_()
        return layer.to(device=w.device, dtype=w.dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(x, *args, **kwargs)
        return h + self.houlsby_up(self.act(self.houlsby_down(h)))

    def delta_weight(self) -> torch.Tensor:
        raise AiloraError("a Houlsby adapter is nonlinear: it has no weight delta and cannot be merged")

    # Model code sometimes reads the projection's weight (T5 checks ``wo.weight.dtype``).
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias


def insertion_points(model: nn.Module) -> list[str]:
    """Names of the modules a Houlsby adapter follows: roles output and down, in model order."""
    targets = find_targets(model, ROLES)
    fused = [t.name for t in targets if t.fused]
    if fused:
        raise AiloraError(f"module {fused[0]} holds several roles; a Houlsby adapter needs a separate "
                          "attention-output or FFN-output projection")
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted((t.name for t in targets), key=order.__getitem__)


def add_houlsby(model: nn.Module, bottleneck: int = 64, seed: int = 0, init_std: float = INIT_STD,
                modules: list[str] | None = None) -> list[str]:
    """Wrap each insertion point (or each of ``modules``) in a ``HoulsbyAdapter``, in place.

    Returns the wrapped module names. Adapters are drawn in model order from a generator seeded
    with ``seed``, so the start does not depend on the global RNG.
    """
    if not isinstance(bottleneck, int) or bottleneck <= 0:
        raise AiloraError(f"bottleneck must be a positive integer, got {bottleneck!r}")
    names = insertion_points(model) if modules is None else list(modules)
    gen = torch.Generator().manual_seed(seed)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        if isinstance(base, HoulsbyAdapter):
            raise AiloraError(f"module {name} already has a Houlsby adapter")
        setattr(parent, child, HoulsbyAdapter.build(base, bottleneck, init_std, gen))
    return names


def adapter_parameters(model: nn.Module) -> int:
    """Parameters in all Houlsby adapters of ``model`` (2md + d + m each)."""
    return sum(p.numel() for n, p in model.named_parameters() if ".houlsby_" in n)


def prepare_houlsby(model: nn.Module, cfg, seed: int) -> Prepared:
    """Houlsby adapters of size ``cfg.options.bottleneck`` (a ``HoulsbyOptions``); adapters, LayerNorms and
    the head train."""
    head = head_modules(model)
    norms = {f"{n}.{p}" if n else p for n, mod in model.named_modules() if is_norm(mod)
             for p, _ in mod.named_parameters(recurse=False)}
    names = add_houlsby(model, cfg.options.bottleneck, seed)
    trained = [n for n, _ in model.named_parameters() if ".houlsby_" in n or n in norms]
    train_only(model, trained + head_parameters(model, head))
    return prepared_baseline(model, BaselineState("houlsby", head, {"bottleneck": cfg.options.bottleneck,
                                                                    "init_std": INIT_STD, "modules": names}))
