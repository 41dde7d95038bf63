"""Which dtype a residual is kept in, in a half-precision model: a criterion on the layer's output.

The residual W_res = W - s B0 A0 is computed in float32. A bfloat16/float16 model keeps it in its
own dtype unless rounding it would move the layer's output by more than the model's own rounding
does: with x the seeded N(0, 1) rows of ``rounding_rows`` (ROUNDING_ROWS of them), E = round(W_res)
- W_res the rounding, and u the dtype's unit roundoff (2^-8 for bfloat16, 2^-11 for float16),

    error = max |E x|        bound = u * max |W x|

and the residual stays in the model's dtype when error <= bound. ``bound`` is the rounding step
the model itself takes on this layer's largest output: a half-precision layer rounds every output
it computes to its dtype, so an added error within it is of the size of the model's own rounding
(docs/exactness.md compares this with PEFT's PiSSA, which always keeps the model's dtype). A layer
that fails (an overflow to inf in float16, or a residual much larger than W, where the rounding of
W_res is far larger than the model's rounding of W x) keeps its residual in float32.

Both sides are computed in float32 over row chunks of the weight, so the workspace is a few MB
whatever the layer's size (no W-sized float32 copy of the weight).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ROUNDING_ROWS", "Rounding", "keep_residual", "rounding_rows", "unit_roundoff"]

# Seeded input rows of the criterion: the same rows for every layer of one width, in apply as in the
# streaming init (which visits layers in another order), so both choose the same dtype.
ROUNDING_ROWS, ROUNDING_SEED = 8, 0
# Weight rows per chunk of the criterion's float32 workspace: at most 2**20 entries (4 MB a temporary).
CHUNK_ENTRIES = 2**20
HALF_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Rounding:
    """The dtype a residual is kept in, and the criterion's numbers (None where it was not measured:
    a float32 model, or ``residual_dtype="float32"``)."""

    dtype: torch.dtype
    error: float | None = None  # max |(round(W_res) - W_res) x| over the rows
    bound: float | None = None  # u * max |W x|


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the distance from 1 to the next value of ``dtype``: the largest relative rounding error."""
    return torch.finfo(dtype).eps / 2


def rounding_rows(in_features: int, device) -> torch.Tensor:
    """The criterion's seeded N(0, 1) input rows: (ROUNDING_ROWS, in_features) float32."""
    g = torch.Generator().manual_seed(ROUNDING_SEED)
    return torch.randn(ROUNDING_ROWS, in_features, generator=g).to(device)


def _output_errors(w: torch.Tensor, res: torch.Tensor, half: torch.dtype) -> tuple[float, float]:
    """(max |(round(res) - res) x|, max |W x|) on the criterion's rows, over row chunks of
    ``w`` (out, in), half precision, and ``res`` (out, in), float32 (either may be a transposed view)."""
    x = rounding_rows(w.shape[1], res.device)
    step = max(1, CHUNK_ENTRIES // max(1, w.shape[1]))
    error = largest = 0.0
    for i in range(0, w.shape[0], step):
        r = res[i:i + step]
        e = (x @ (r.to(half).float() - r).T).abs().max().item()
        error = max(error, e) if math.isfinite(e) else math.inf  # an overflow to inf (then NaN) fails
        largest = max(largest, (x @ w[i:i + step].float().T).abs().max().item())
    return error, largest


def keep_residual(w: torch.Tensor, res: torch.Tensor, residual_dtype: str) -> Rounding:
    """The dtype to keep the float32 residual ``res`` (out, in) of the weight ``w`` (out, in) in:
    ``"float32"`` forces float32; a model that is not half precision keeps its dtype; ``"model"``
    keeps the half dtype (the criterion still measured, for the report); ``"auto"`` keeps it where
    error <= bound (see the module docstring), else float32."""
    if residual_dtype == "float32":
        return Rounding(torch.float32)
    if w.dtype not in HALF_DTYPES:
        return Rounding(w.dtype)
    error, largest = _output_errors(w, res, w.dtype)
    bound = unit_roundoff(w.dtype) * largest
    passes = error <= bound  # False for an overflow (inf)
    keep = w.dtype if residual_dtype == "model" or passes else torch.float32
    return Rounding(keep, error, bound)
