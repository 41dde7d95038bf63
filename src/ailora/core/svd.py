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
# Inverse iterations of the minor solver: each costs two triangular solves, next to nothing beside
# the factorisation, and more of them reach further into a flat bottom spectrum.
FAST_MINOR_NITER = 6
# The fast minor solver keeps a wide block's float32 Gram matrix only below this condition number
# (of the Gram matrix: the block's squared), where its rounding stays far below the bottom
# eigenvalues; above it, it forms the Gram matrix again in float64.
FLOAT32_GRAM_MAX_COND = 1e4
# Matrices of more entries than this are decomposed one at a time even when stacked: on CPU, batched
# products of large, thin matrices measured slower than a loop (while small ones gain from batching).
UNBATCHED_ENTRIES = 2**18


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

    Returns (U, S, Vh) with U = Q P, where Q^T W = P S Vh is a small (k, in) SVD, taken through the
    QR factorisation (Q^T W)^T = Q2 R2 and the (k, k) SVD R2^T = P S Z^T, so Vh = Z^T Q2^T (LAPACK's
    SVD of a wide (k, in) matrix costs several times more). The projection is reproduced exactly,
    whatever Q is, which is what keeps residual + adapter == W.
    """
    q2, r2 = torch.linalg.qr((q.mT @ w).mT)
    p, s, zh = torch.linalg.svd(r2.mT)
    return q @ p, s, zh @ q2.mT


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
        q, _ = torch.linalg.qr((q.mT @ w).mT)  # W^T Q, computed as (Q^T W)^T: the faster product on CPU
        q, _ = torch.linalg.qr(w @ q)
    return _take(*_rotate_into_subspace(w, q), r, "principal")


def _lu_solver(w: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """q -> (W W^T)^{-1} q = W^{-T} (W^{-1} q) for a stack of square W, from an LU factorisation of W
    in float32 (2/3 n^3 flops, and no squaring: LU is backward stable, so the bottom singular values
    keep W's own accuracy); None if some W is singular."""
    lu, piv, info = torch.linalg.lu_factor_ex(w)
    if bool((info != 0).any()):
        return None
    return lambda q: torch.linalg.lu_solve(lu, piv, torch.linalg.lu_solve(lu, piv, q), adjoint=True)


def _gram_solver(w: torch.Tensor, dtype: torch.dtype):
    """(q -> (W W^T)^{-1} q, G) for a stack W: (..., m, n), m <= n, from the Cholesky factor of the Gram
    matrix G = W W^T formed in ``dtype`` (m^2 n flops), shifted by 1e-13 tr(G) in float64; (None, G)
    if some G is not positive definite."""
    wd = w.to(dtype)
    g = wd @ wd.mT
    if dtype == torch.float64:
        shift = 1e-13 * g.diagonal(dim1=-2, dim2=-1).sum(-1)
        g = g + shift[..., None, None] * torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    chol, info = torch.linalg.cholesky_ex(g)
    if bool((info != 0).any()):
        return None, g
    return (lambda q: torch.cholesky_solve(q.to(dtype), chol).to(w.dtype)), g


def _top_eigenvalue(g: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """An estimate (from below) of the largest eigenvalue of a stack of Gram matrices G (..., m, m):
    (...,), by power iteration: a few (m, m) products, nothing beside forming G."""
    v = torch.ones(*g.shape[:-1], 1, dtype=g.dtype, device=g.device)
    for _ in range(steps):
        v = g @ v
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    return (g @ v).norm(dim=-2).squeeze(-1)


def _subspace(w: torch.Tensor, k: int, solve: Callable[[torch.Tensor], torch.Tensor]):
    """k bottom Ritz triplets of W (..., m, n): FAST_MINOR_NITER inverse iterations from a seeded start."""
    m = w.shape[-2]
    q, _ = torch.linalg.qr(_test_matrix(m, k, w).expand(*w.shape[:-2], m, k))
    for _ in range(FAST_MINOR_NITER):
        q, _ = torch.linalg.qr(solve(q))
    return _rotate_into_subspace(w, q)


def _minor_fast(w: torch.Tensor, r: int):
    """Bottom-r triplets of W (..., m, n), m <= n, by subspace iteration with the inverse Gram matrix.

    A randomised SVD cannot reach the bottom of the spectrum, but the bottom of W W^T is the top of
    its inverse, applied from one factorisation: LU of a square W (``_lu_solver``), else Cholesky of
    the Gram matrix (``_gram_solver``), formed in float32 first and kept only if the Ritz values
    show cond(W W^T) <= FLOAT32_GRAM_MAX_COND, else in float64 (squaring loses half the digits).
    Each of the ``FAST_MINOR_NITER`` iterations is two triangular solves, and the Ritz values come
    from an exact small SVD of Q^T W. Cost: O(m^2 n), against O(m n^2) and a large constant for a
    full SVD. A singular W (no factorisation at all) is eigendecomposed instead.
    """
    m, n = w.shape[-2:]
    k = min(r + FAST_OVERSAMPLE, m)
    solve, g = (_lu_solver(w), None) if m == n else _gram_solver(w, torch.float32)
    if solve is not None:
        u, s, vh = _subspace(w, k, solve)
        if g is None or bool((FLOAT32_GRAM_MAX_COND * s[..., -1].square() >= _top_eigenvalue(g)).all()):
            return _take(u, s, vh, r, "minor")
    solve, _ = _gram_solver(w, torch.float64)
    if solve is not None:
        return _take(*_subspace(w, k, solve), r, "minor")
    w64 = w.double()  # singular: the exact bottom eigenvectors of the float64 Gram matrix
    q = torch.linalg.eigh(w64 @ w64.mT)[1][..., :, :k].to(w.dtype)
    return _take(*_rotate_into_subspace(w, q), r, "minor")


def _minor_any(w: torch.Tensor, r: int):
    if w.shape[-2] <= w.shape[-1]:
        return _minor_fast(w, r)
    u, s, vh = _minor_fast(w.mT, r)  # W^T = u s vh  =>  W = vh^T s u^T
    return vh.mT, s, u.mT


def svd_fast(w: torch.Tensor, r: int, which: str, generator=None):
    """Cheaper than a full SVD, exact where it matters.

    principal: randomised range finder with power iterations (``torch.svd_lowrank``'s method),
      O(out * in * (r + p) * niter).
    minor: subspace iteration with the inverse of the smaller Gram matrix, applied through an LU
      factorisation of a square block or a Cholesky factorisation of a wide or tall one's Gram matrix
      (see ``_minor_fast``), O(min(out, in)^2 * max(out, in)).
    Either way the caller computes the residual from the factors returned, so outputs stay exact.
    A stack of matrices over UNBATCHED_ENTRIES each is decomposed one matrix at a time.
    """
    fn = _principal_fast if which == "principal" else _minor_any
    if w.dim() == 2 or w.shape[-2] * w.shape[-1] <= UNBATCHED_ENTRIES:
        return fn(w, r)
    parts = [fn(m, r) for m in w.reshape(-1, *w.shape[-2:])]
    return tuple(torch.stack(x).reshape(*w.shape[:-2], *x[0].shape) for x in zip(*parts))


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
