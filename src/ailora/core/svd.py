"""Singular-triplet solvers: which r singular directions of a weight, computed how.

Every solver takes a stack of weights W: (..., out, in), float32, and returns the requested
slice only: U: (..., out, r), S: (..., r) descending, Vh: (..., r, in). Callers stack same-shape
weights (every layer's W^Q, say) so that one batched call replaces many small ones.

Sign convention (so that the same weights give bit-identical adapters): each left singular
vector is flipped so that its entry of largest absolute value is positive; the matching right
vector is flipped with it. This is the convention of scikit-learn's ``svd_flip`` (u-based).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Oversampling and power iterations of the randomised range finder (Halko, Martinsson & Tropp 2011,
# Algorithm 4.4). 4 power iterations is PEFT's `pissa_niter_4` too.
FAST_OVERSAMPLE = 8
FAST_NITER = 4


def fix_signs(u: torch.Tensor, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each triplet so the largest-magnitude entry of its left vector is positive.

    u: (..., out, r), vh: (..., r, in). The product u diag(s) vh is unchanged.
    """
    idx = u.abs().argmax(dim=-2, keepdim=True)  # (..., 1, r)
    signs = torch.sign(u.gather(-2, idx))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return u * signs, vh * signs.mT


def _rotate_into_subspace(w: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact SVD of the projection Q Q^T W, for orthonormal Q: (..., out, k).

    Returns (U, S, Vh) with U = Q P, where Q^T W = P S Vh is a small (k, in) SVD. The projection
    is reproduced exactly, whatever Q is, which is what keeps residual + adapter == W.
    """
    p, s, vh = torch.linalg.svd(q.mT @ w, full_matrices=False)
    return q @ p, s, vh


def _take(u, s, vh, r: int, which: str):
    k = s.shape[-1]
    sl = slice(0, r) if which == "principal" else slice(k - r, k)
    return u[..., :, sl], s[..., sl], vh[..., sl, :]


def svd_exact(w: torch.Tensor, r: int, which: str, generator=None):
    """Full (thin) SVD, then the top-r ("principal") or bottom-r ("minor") triplets."""
    return _take(*torch.linalg.svd(w, full_matrices=False), r, which)


def _test_matrix(n: int, k: int, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """A seeded Gaussian (n, k) test matrix, the same for every call with the same shape."""
    g = torch.Generator(device=like.device).manual_seed(0)
    return torch.randn(n, k, generator=g, device=like.device, dtype=dtype or like.dtype)


def _principal_fast(w: torch.Tensor, r: int):
    """Randomised range finder with power iterations, then an exact small SVD (Halko et al. 4.4)."""
    out_f, in_f = w.shape[-2:]
    k = min(r + FAST_OVERSAMPLE, out_f, in_f)
    q, _ = torch.linalg.qr(w @ _test_matrix(in_f, k, w))
    for _ in range(FAST_NITER):
        q, _ = torch.linalg.qr(w.mT @ q)
        q, _ = torch.linalg.qr(w @ q)
    return _take(*_rotate_into_subspace(w, q), r, "principal")


def _minor_fast(w: torch.Tensor, r: int):
    """Bottom-r triplets of W (..., m, n), m <= n, by subspace iteration with the inverse Gram matrix.

    A randomised SVD cannot reach the bottom of the spectrum, but the bottom of W W^T is the top of
    its inverse. The Gram matrix (m x m) is formed in float64 (squaring loses half the digits) and
    factored once by Cholesky (a shift of 1e-13 tr(G) keeps a singular W factorable); each iteration
    is then two triangular solves, and the Ritz values come from an exact small SVD of Q^T W. Cost:
    O(m^2 n + m^3 / 3), against O(m n^2) and a large constant for a full SVD.
    """
    m = w.shape[-2]
    k = min(r + FAST_OVERSAMPLE, m)
    w64 = w.double()
    g = w64 @ w64.mT
    shift = 1e-13 * g.diagonal(dim1=-2, dim2=-1).sum(-1)
    eye = torch.eye(m, dtype=g.dtype, device=g.device)
    chol, info = torch.linalg.cholesky_ex(g + shift[..., None, None] * eye)
    if bool((info != 0).any()):  # not positive definite even with the shift: eigendecompose instead
        _, vecs = torch.linalg.eigh(g)
        q = vecs[..., :, :k]
    else:
        q, _ = torch.linalg.qr(_test_matrix(m, k, w64).expand(*w.shape[:-2], m, k))
        for _ in range(FAST_NITER):
            q, _ = torch.linalg.qr(torch.cholesky_solve(q, chol))
    u, s, vh = _rotate_into_subspace(w64, q)
    u, s, vh = _take(u, s, vh, r, "minor")
    return u.to(w.dtype), s.to(w.dtype), vh.to(w.dtype)


def svd_fast(w: torch.Tensor, r: int, which: str, generator=None):
    """Cheaper than a full SVD, exact where it matters.

    principal: randomised range finder with power iterations (``torch.svd_lowrank``'s method),
      O(out * in * (r + p) * niter).
    minor: subspace iteration with the inverse of the smaller Gram matrix (see ``_minor_fast``).
    Either way the caller computes the residual from the factors returned, so outputs stay exact.
    """
    if which == "principal":
        return _principal_fast(w, r)
    if w.shape[-2] <= w.shape[-1]:
        return _minor_fast(w, r)
    u, s, vh = _minor_fast(w.mT, r)  # W^T = u s vh  =>  W = vh^T s u^T
    return vh.mT, s, u.mT


@dataclass(frozen=True)
class Solver:
    name: str
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    description: str


SOLVERS: dict[str, Solver] = {
    "exact": Solver("exact", svd_exact, "full thin SVD (torch.linalg.svd), any slice"),
    "fast": Solver(
        "fast",
        svd_fast,
        "principal: randomised SVD (4 power iterations); minor: inverse-Gram subspace iteration",
    ),
}


def singular_slice(
    w: torch.Tensor, r: int, which: str, solver: str = "exact"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The r principal or minor singular triplets of w (..., out, in), signs fixed, in w's dtype."""
    if which not in ("principal", "minor"):
        raise ValueError(f"which must be 'principal' or 'minor', got {which!r}")
    u, s, vh = SOLVERS[solver].fn(w, r, which)
    u, vh = fix_signs(u, vh)
    return u.contiguous(), s.contiguous(), vh.contiguous()
