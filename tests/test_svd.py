"""Tier 1: the fast solver's triplets against a full SVD, on every path it takes (square, wide, tall,
ill-conditioned, singular, stacked); small matrices with known spectra, seconds on CPU."""

from __future__ import annotations

import pytest
import torch

import ailora.core.svd as svd
from ailora.core.svd import singular_slice

R = 4


def with_spectrum(batch: int, m: int, n: int, cond: float, seed: int = 0) -> torch.Tensor:
    """(batch, m, n) float32 with random singular vectors and singular values geometric from 1 to 1/cond."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(batch, m, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(batch, n, k, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), k, dtype=torch.float64)
    return ((u * s) @ v.mT).float()


def assert_triplets(w: torch.Tensor, which: str, tol: float = 1e-5) -> None:
    u, s, vh = singular_slice(w, R, which, "fast")
    exact = torch.linalg.svdvals(w.double())
    want = exact[..., :R] if which == "principal" else exact[..., -R:]
    torch.testing.assert_close(s.double(), want, atol=tol * exact[..., :1].max().item(), rtol=0)
    eye = torch.eye(R, dtype=torch.float64)
    torch.testing.assert_close(u.double().mT @ u.double(), eye.expand_as(u.mT @ u), atol=1e-5, rtol=0)
    torch.testing.assert_close(vh.double() @ vh.double().mT, eye.expand_as(vh @ vh.mT), atol=1e-5, rtol=0)
    # u s vh is exactly the projection of W onto span(u): what the residual W - u s vh relies on
    torch.testing.assert_close((u * s.unsqueeze(-2)) @ vh, u @ (u.mT @ w), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(40, 40), (24, 64), (64, 24)], ids=["square-lu", "wide-gram", "tall"])
@pytest.mark.parametrize("cond", [10.0, 1e3])
def test_fast_minor_matches_a_full_svd(shape, cond):
    assert_triplets(with_spectrum(3, *shape, cond), "minor")


def test_fast_principal_matches_a_full_svd():
    assert_triplets(with_spectrum(3, 48, 40, 1e3), "principal", tol=1e-4)


def test_ill_conditioned_wide_blocks_redo_the_gram_matrix_in_float64(monkeypatch):
    calls = []
    real = svd._gram_solver
    monkeypatch.setattr(svd, "_gram_solver", lambda w, dtype: calls.append(dtype) or real(w, dtype))
    assert_triplets(with_spectrum(2, 24, 64, 10.0), "minor")
    assert calls == [torch.float32]  # cond(W W^T) = 100: float32 is enough
    calls.clear()
    assert_triplets(with_spectrum(2, 24, 64, 1e4), "minor")
    assert calls == [torch.float32, torch.float64]  # cond(W W^T) = 1e8: float32 would blur the bottom


@pytest.mark.parametrize("shape", [(32, 32), (20, 48)])
def test_singular_blocks_still_give_their_zero_singular_values(shape):
    g = torch.Generator().manual_seed(3)
    m, n = shape
    w = torch.randn(2, m, 10, generator=g) @ torch.randn(2, 10, n, generator=g)  # rank 10
    u, s, vh = singular_slice(w, R, "minor", "fast")
    assert s.abs().max() < 1e-4 * torch.linalg.matrix_norm(w, ord=2).max()
    torch.testing.assert_close((u * s.unsqueeze(-2)) @ vh, u @ (u.mT @ w), atol=1e-5, rtol=0)


def test_large_stacks_are_decomposed_one_at_a_time_with_the_same_result(monkeypatch):
    w = with_spectrum(3, 40, 40, 1e3)
    stacked = [singular_slice(w, R, which, "fast") for which in ("principal", "minor")]
    monkeypatch.setattr(svd, "UNBATCHED_ENTRIES", 100)  # every 40 x 40 matrix now counts as large
    looped = [singular_slice(w, R, which, "fast") for which in ("principal", "minor")]
    for a, b in zip(stacked, looped, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.shape == y.shape
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    assert_triplets(w, "minor")


def test_fast_solver_is_deterministic():
    w = with_spectrum(2, 24, 64, 100.0)
    for which in ("principal", "minor"):
        a, b = singular_slice(w, R, which, "fast"), singular_slice(w.clone(), R, which, "fast")
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
