"""Adapter initialisations: one pure function each, registered in ``INITS``.

Every function has the signature ``(W, r, scaling, cfg) -> Init`` where W: (out, in) float32,
and returns A: (r, in), B: (out, r) and the singular values taken (or None), such that
``W_res = W - scaling * B @ A`` is the frozen residual that keeps the layer's output unchanged.
The residual is computed by the caller from the A and B actually returned (never from exact
singular values), so an approximate solver cannot break exactness.

SVD starts (methods.md, "The SVD-initialised family"): take the r singular triplets of an index
set I, divide the singular values by the scaling first, then

    B = U_I sqrt(S_I / s),    A = sqrt(S_I / s) V_I^T,    so that s B A = U_I S_I V_I^T.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ailora.core.svd import singular_slice


@dataclass(frozen=True)
class InitConfig:
    """What an init may need besides the weight: the SVD solver and a seeded generator."""

    solver: str = "exact"
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class Init:
    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    singular_values: torch.Tensor | None  # (r,) the values moved into the adapter, descending


def _svd_start(which: str) -> Callable[[torch.Tensor, int, float, InitConfig], Init]:
    def init(w: torch.Tensor, r: int, scaling: float, cfg: InitConfig) -> Init:
        u, s, vh = singular_slice(w, r, which, cfg.solver)
        root = torch.sqrt(s / scaling)
        return Init(A=root.unsqueeze(-1) * vh, B=u * root.unsqueeze(-2), singular_values=s)

    init.__name__ = f"{which}_init"
    init.__doc__ = f"The r {which} singular triplets of W move into the adapter (s*B*A = U_I S_I V_I^T)."
    return init


def lora_init(w: torch.Tensor, r: int, scaling: float, cfg: InitConfig) -> Init:
    """LoRA as PEFT and loralib start it: A kaiming-uniform (a = sqrt(5)), B = 0, W untouched."""
    a = torch.empty(r, w.shape[1], dtype=w.dtype, device=w.device)
    torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=cfg.generator)
    return Init(A=a, B=torch.zeros(w.shape[0], r, dtype=w.dtype, device=w.device), singular_values=None)


def gaussian_init(w: torch.Tensor, r: int, scaling: float, cfg: InitConfig) -> Init:
    """LoRA as the LoRA paper's text states it: A ~ N(0, 1/r^2) (PEFT's "gaussian"), B = 0."""
    a = torch.randn(r, w.shape[1], dtype=w.dtype, device=w.device, generator=cfg.generator) / r
    return Init(A=a, B=torch.zeros(w.shape[0], r, dtype=w.dtype, device=w.device), singular_values=None)


@dataclass(frozen=True)
class InitFn:
    name: str
    fn: Callable[[torch.Tensor, int, float, InitConfig], Init]
    uses_svd: bool  # SVD starts also accept a stack W: (batch, out, in) and return stacked A, B, S
    description: str


INITS: dict[str, InitFn] = {
    "principal": InitFn("principal", _svd_start("principal"), True, "top-r singular triplets (PiSSA)"),
    "minor": InitFn("minor", _svd_start("minor"), True, "bottom-r singular triplets (MiLoRA)"),
    "lora": InitFn("lora", lora_init, False, "A kaiming-uniform, B = 0 (PEFT's default)"),
    "gaussian": InitFn("gaussian", gaussian_init, False, "A ~ N(0, 1/r^2), B = 0"),
}
