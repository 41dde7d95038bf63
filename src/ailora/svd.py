"""Singular-triplet solvers: which r singular directions of a weight, computed how.

Every solver returns ``(U, S, Vh)`` for the requested slice only, in float32 (float64 where the
caller passes float64), with U: (out, r), S: (r,), Vh: (r, in), S descending inside the slice.

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

    u: (out, r), vh: (r, in). Returns new tensors; the product u @ diag(s) @ vh is unchanged.
    """
    idx = u.abs().argmax(dim=0)
    signs = torch.sign(u.gather(0, idx.unsqueeze(0))).squeeze(0)
    signs[signs == 0] = 1
    return u * signs, vh * signs.unsqueeze(1)


def _rotate_into_subspace(w: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact SVD of the projection Q Q^T W, for orthonormal Q: (out, k).

    Returns (U, S, Vh) with U = Q P, where Q^T W = P S Vh is a small (k, in) SVD. The projection
    is reproduced exactly, whatever Q is, which is what keeps residual + adapter == W.
    """
    small = q.T @ w
    p, s, vh = torch.linalg.svd(small, full_matrices=False)
    return q @ p, s, vh


def svd_exact(w: torch.Tensor, r: int, which: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full (thin) SVD, then the top-r ("principal") or bottom-r ("minor") triplets."""
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    sl = slice(0, r) if which == "principal" else slice(s.numel() - r, s.numel())
    return u[:, sl], s[sl], vh[sl]


def svd_fast(w: torch.Tensor, r: int, which: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cheaper than a full SVD, exact where it matters.

    principal: randomised range finder with power iterations (``torch.svd_lowrank``'s method):
      cost O(out * in * (r + p) * niter), approximate singular values.
    minor: a randomised method cannot find the bottom of the spectrum, so we take the eigenvectors
      of the smaller Gram matrix (W W^T or W^T W, size min(out, in)^2) in float64 (squaring the
      condition number costs precision that float32 cannot spare for small singular values), then
      an exact small SVD of the projection onto those r directions.
    Either way the caller computes the residual from the factors returned, so outputs stay exact.
    """
    out_f, in_f = w.shape
    if which == "principal":
        k = min(r + FAST_OVERSAMPLE, out_f, in_f)
        g = torch.Generator(device=w.device).manual_seed(0)
        omega = torch.randn(in_f, k, generator=g, device=w.device, dtype=w.dtype)
        q, _ = torch.linalg.qr(w @ omega)
        for _ in range(FAST_NITER):
            q, _ = torch.linalg.qr(w.T @ q)
            q, _ = torch.linalg.qr(w @ q)
        u, s, vh = _rotate_into_subspace(w, q)
        return u[:, :r], s[:r], vh[:r]
    gram_of_rows = out_f <= in_f
    q = _bottom_eigenvectors(w, gram_of_rows, r)
    if gram_of_rows:
        return _rotate_into_subspace(w, q)
    ut, s, vh = _rotate_into_subspace(w.T, q)  # W^T = ut s vh  =>  W = vh^T s ut^T
    return vh.T, s, ut.T


def _bottom_eigenvectors(w: torch.Tensor, gram_of_rows: bool, r: int) -> torch.Tensor:
    """Eigenvectors of the r smallest eigenvalues of W W^T (or W^T W), as w's dtype.

    The Gram matrix is formed in float64 (squaring loses half the digits). On the CPU,
    LAPACK's MRRR driver (scipy ``subset_by_index``) computes only the r wanted eigenpairs, several
    times faster than a full ``torch.linalg.eigh``; on a GPU the full eigh is fast already.
    """
    w64 = w.double()
    g = w64 @ w64.T if gram_of_rows else w64.T @ w64
    if g.device.type == "cpu":
        import scipy.linalg

        _, vecs = scipy.linalg.eigh(g.numpy(), subset_by_index=[0, r - 1], driver="evr")
        return torch.from_numpy(vecs).to(w.dtype)
    _, vecs = torch.linalg.eigh(g)  # ascending eigenvalues
    return vecs[:, :r].to(w.dtype)


@dataclass(frozen=True)
class Solver:
    name: str
    fn: Callable[[torch.Tensor, int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    description: str


SOLVERS: dict[str, Solver] = {
    "exact": Solver("exact", svd_exact, "full thin SVD (torch.linalg.svd), any slice"),
    "fast": Solver(
        "fast",
        svd_fast,
        "principal: randomised SVD (4 power iterations); minor: eigh of the smaller Gram matrix",
    ),
}


def singular_slice(
    w: torch.Tensor, r: int, which: str, solver: str = "exact"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The r principal or minor singular triplets of w (out, in), signs fixed, in w's dtype."""
    if which not in ("principal", "minor"):
        raise ValueError(f"which must be 'principal' or 'minor', got {which!r}")
    u, s, vh = SOLVERS[solver].fn(w, r, which)
    order = torch.argsort(s, descending=True)  # the small SVDs above already sort; be explicit
    u, s, vh = u[:, order], s[order], vh[order]
    u, vh = fix_signs(u, vh)
    return u.contiguous(), s.contiguous(), vh.contiguous()
