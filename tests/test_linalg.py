"""Properties of pruning_utils.linalg against independent oracles (numpy, scipy,
scikit-learn, torch.nn.functional), and every bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from pruning_utils import linalg as la
from pruning_utils.linalg import (
    PCAResult,
    break_even_rank,
    conv2d_as_matmul,
    conv_break_even_rank,
    conv_weight_matrix,
    dkm_error_bound,
    dkm_expected_error,
    energy_kept,
    hmt_error_bound,
    interpolative_decomposition,
    low_rank_factors,
    pca,
    randomized_matmul,
    randomized_range_finder,
    randomized_svd,
    rank_for_energy,
    sampling_probabilities,
    spatial_break_even_rank,
    truncated_svd,
    whitened_low_rank_factors,
)

f64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def with_spectrum(m: int, n: int, s: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """m × n float64 matrix with singular values s (len(s) = min(m, n))."""
    g = gen(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, dtype=f64, generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, k, dtype=f64, generator=g))
    return (U * s) @ V.mT


def decaying(m: int, n: int, power: float = 1.0, seed: int = 0) -> torch.Tensor:
    j = torch.arange(1, min(m, n) + 1, dtype=f64)
    return with_spectrum(m, n, j**-power, seed)


def low_rank(m: int, n: int, r: int, seed: int = 0, dtype=f64) -> torch.Tensor:
    g = gen(seed)
    return (
        torch.randn(m, r, dtype=f64, generator=g) @ torch.randn(r, n, dtype=f64, generator=g)
    ).to(dtype)


def tail(W: torch.Tensor, r: int) -> float:
    """Eckart-Young optimum (Σ_{j>r} σ_j²)^{1/2}, from numpy."""
    s = np.linalg.svd(W.double().numpy(), compute_uv=False)
    return float(np.sqrt(np.sum(s[r:] ** 2)))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


BAD_MATRICES = [
    (np.ones((3, 3)), TypeError, "must be a torch.Tensor"),
    ([[1.0]], TypeError, "must be a torch.Tensor"),
    (torch.ones(3), ValueError, r"2-D tensor, got shape \(3,\)"),
    (torch.ones(2, 3, 4), ValueError, r"2-D tensor, got shape \(2, 3, 4\)"),
    (torch.ones(3, 3, dtype=torch.int64), TypeError, "floating-point"),
    (torch.ones(0, 3), ValueError, "must not be empty"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), ValueError, "1 NaN"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), ValueError, "1 Inf"),
]


# ---------------------------------------------------------------------------
# shared validators
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("X, error, match", BAD_MATRICES)
def test_bad_matrix_is_named(X, error, match):
    with pytest.raises(error, match=match):
        truncated_svd(X, 1)
    with pytest.raises(error, match=r"^W "):
        truncated_svd(X, 1)


def test_meta_matrix_is_refused():
    with pytest.raises(ValueError, match="W is on the meta device"):
        low_rank_factors(torch.ones(4, 6, device="meta"), 1)
    with pytest.raises(ValueError, match="A is on the meta device"):
        randomized_matmul(torch.ones(2, 3, device="meta"), torch.ones(3, 2), 2)


@pytest.mark.parametrize(
    "rank, error",
    [
        (0, ValueError),
        (-1, ValueError),
        (65, ValueError),
        (True, TypeError),
        (2.0, TypeError),
        ("3", TypeError),
        (None, TypeError),
    ],
)
def test_rank_is_checked(rank, error):
    with pytest.raises(error, match=r"rank must be an int in \[1, 64\]"):
        truncated_svd(torch.ones(64, 70), rank)


def test_rank_accepts_numpy_int():
    U, S, Vh = truncated_svd(torch.eye(64), np.int64(5))
    assert U.shape == (64, 5) and S.shape == (5,)


@pytest.mark.parametrize(
    "value, error",
    [
        (0, ValueError),
        (0.0, ValueError),
        (-0.1, ValueError),
        (1.5, ValueError),
        (float("nan"), ValueError),
        (True, TypeError),
        ("0.5", TypeError),
        (None, TypeError),
    ],
)
def test_energy_is_checked(value, error):
    with pytest.raises(error, match=r"energy must be a float in \(0, 1\]"):
        rank_for_energy(torch.ones(3), value)


def test_energy_accepts_ints_and_numpy_floats():
    assert rank_for_energy(torch.ones(4), 1) == 4
    assert rank_for_energy(torch.ones(4), np.float32(0.5)) == 2


# ---------------------------------------------------------------------------
# truncated SVD and Eckart-Young
# ---------------------------------------------------------------------------


def test_truncated_svd_matches_numpy_and_eckart_young():
    W = torch.randn(30, 20, dtype=f64, generator=gen(1))
    s_np = np.linalg.svd(W.numpy(), compute_uv=False)
    for r in (1, 5, 19):
        U, S, Vh = truncated_svd(W, r)
        assert U.shape == (30, r) and S.shape == (r,) and Vh.shape == (r, 20)
        np.testing.assert_allclose(S.numpy(), s_np[:r], rtol=1e-12)
        torch.testing.assert_close(U.mT @ U, torch.eye(r, dtype=f64))
        torch.testing.assert_close(Vh @ Vh.mT, torch.eye(r, dtype=f64))
        E = W - (U * S) @ Vh
        assert math.isclose(
            float(torch.linalg.norm(E)), np.sqrt(np.sum(s_np[r:] ** 2)), rel_tol=1e-10
        )
        assert math.isclose(float(torch.linalg.matrix_norm(E, ord=2)), s_np[r], rel_tol=1e-10)


def test_truncated_svd_float32_full_rank_and_dtypes():
    W = torch.randn(24, 40, generator=gen(2))
    U, S, Vh = truncated_svd(W, 24)
    assert U.dtype == S.dtype == Vh.dtype == torch.float32
    assert rel((U * S) @ Vh, W) < 1e-5
    U, S, Vh = truncated_svd(W, 24, compute_dtype=None)
    assert rel((U * S) @ Vh, W) < 1e-5


@pytest.mark.parametrize("W, error, match", BAD_MATRICES)
def test_truncated_svd_bad_matrix(W, error, match):
    with pytest.raises(error, match=match):
        truncated_svd(W, 1)


@pytest.mark.parametrize("rank", [0, 5, True, 2.0])
def test_truncated_svd_bad_rank(rank):
    with pytest.raises((ValueError, TypeError), match=r"rank must be an int in \[1, 4\]"):
        truncated_svd(torch.ones(4, 6), rank)


def test_truncated_svd_bad_compute_dtype():
    with pytest.raises(ValueError, match="compute_dtype"):
        truncated_svd(torch.ones(4, 6), 2, compute_dtype=torch.int32)
    with pytest.raises(TypeError, match="compute_dtype"):
        truncated_svd(torch.ones(4, 6), 2, compute_dtype="float64")
    with pytest.raises(ValueError, match="compute_dtype"):
        truncated_svd(torch.ones(4, 6), 2, compute_dtype=torch.float16)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(half):
    """compute_dtype=None: half inputs are factorised in float32 and returned in their dtype."""
    W = torch.randn(12, 8, generator=gen(11)).to(half)
    W32 = W.float()
    U, S, Vh = truncated_svd(W, 3, compute_dtype=None)
    assert U.dtype == S.dtype == Vh.dtype == half
    np.testing.assert_allclose(
        S.float().numpy(), np.linalg.svd(W32.double().numpy(), compute_uv=False)[:3], rtol=1e-2
    )
    A, B = low_rank_factors(W, 8, compute_dtype=None)
    assert A.dtype == half and rel(A.float() @ B.float(), W32) < 2e-2
    for A, B in [
        randomized_svd(W, 3, generator=0)[::2],
        whitened_low_rank_factors(
            W, torch.randn(20, 8, generator=gen(12)).to(half), rank=3, compute_dtype=None
        ),
    ]:
        assert A.dtype == B.dtype == half
    Q = randomized_range_finder(W, 4, generator=0)
    assert Q.dtype == half
    result = pca(torch.randn(10, 4, generator=gen(13)).to(half), n_components=2, compute_dtype=None)
    assert result.components.dtype == half
    x, k = torch.randn(1, 2, 5, 5, generator=gen(14)), torch.randn(3, 2, 3, 3, generator=gen(15))
    y = conv2d_as_matmul(x.to(half), k.to(half))
    assert y.dtype == half
    expected = F.conv2d(x.to(half).float(), k.to(half).float())  # float32 of the same inputs
    eps = torch.finfo(half).eps
    torch.testing.assert_close(y.float(), expected, rtol=2 * eps, atol=2 * eps)
    A, B = W32[:3].to(half), W32[:8, :4].to(half)  # 3×8 and 8×4
    est = randomized_matmul(A, B, 50, generator=0)
    assert est.dtype == half and est.shape == (3, 4)


# ---------------------------------------------------------------------------
# rank_for_energy and energy_kept
# ---------------------------------------------------------------------------


def correlated_data(N: int = 200, d: int = 30, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    scales = torch.logspace(0, -2, d, dtype=f64)
    Z = torch.randn(N, d, dtype=f64, generator=g) * scales
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=f64, generator=g))
    return Z @ Q.mT + torch.randn(d, dtype=f64, generator=g)


@pytest.mark.parametrize("energy", [0.3, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999])
def test_rank_for_energy_matches_sklearn(energy):
    X = correlated_data()
    S = torch.linalg.svdvals(X - X.mean(0))
    k_sklearn = PCA(n_components=energy, svd_solver="full").fit(X.numpy()).n_components_
    assert rank_for_energy(S, energy) == k_sklearn


def test_rank_for_energy_is_smallest_rank_reaching_energy():
    S = torch.sort(torch.rand(50, dtype=f64, generator=gen(3)), descending=True).values
    c = np.cumsum(S.numpy() ** 2)
    for energy in np.linspace(0.01, 1.0, 37):
        r = rank_for_energy(S, float(energy))
        assert c[r - 1] >= energy * c[-1] * (1 - 1e-12)
        if r > 1:
            assert c[r - 2] < energy * c[-1]


def test_rank_for_energy_full_energy_is_numerical_rank():
    for dtype in (f64, torch.float32):
        W = low_rank(40, 30, 5, dtype=dtype)
        S = torch.linalg.svdvals(W)
        assert len(S) == 30 and S[-1] > 0  # round-off makes the spectrum full
        assert rank_for_energy(S, 1.0) == 5 == int(torch.linalg.matrix_rank(W))
    S = torch.tensor([3.0, 2.0, 1.0])
    assert rank_for_energy(S, 1.0) == 3
    assert rank_for_energy(S, 1.0, rtol=0.5) == 2  # 1 <= 0.5 * 3 counts as zero


def test_rank_for_energy_edges():
    assert rank_for_energy(torch.zeros(5), 0.9) == 1
    assert rank_for_energy(torch.tensor([2.0]), 1.0) == 1
    S = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=f64)
    assert rank_for_energy(S, 0.5) == 2
    assert rank_for_energy(S, 0.51) == 3


@pytest.mark.parametrize(
    "S, energy, error, match",
    [
        (torch.tensor([1.0, 2.0]), 0.5, ValueError, "non-increasing"),
        (torch.tensor([1.0, -0.5]), 0.5, ValueError, "non-negative"),
        (torch.ones(2, 2), 0.5, ValueError, "1-D"),
        (torch.tensor([1.0, float("nan")]), 0.5, ValueError, "NaN"),
        ([1.0, 0.5], 0.5, TypeError, "torch.Tensor"),
        (torch.tensor([1.0]), 0.0, ValueError, r"energy must be a float in \(0, 1\]"),
        (torch.tensor([1.0]), 1.01, ValueError, r"energy must be a float in \(0, 1\]"),
        (torch.tensor([1.0]), None, TypeError, "energy"),
    ],
)
def test_rank_for_energy_bad(S, energy, error, match):
    with pytest.raises(error, match=match):
        rank_for_energy(S, energy)


def test_rank_for_energy_bad_rtol():
    with pytest.raises(ValueError, match="rtol"):
        rank_for_energy(torch.ones(3), 0.5, rtol=-1.0)


def test_energy_kept_is_eckart_young():
    W = decaying(20, 16, 0.7)
    S = torch.linalg.svdvals(W)
    for r in (1, 4, 16):
        kept = energy_kept(S, r)
        err = tail(W, r) / float(torch.linalg.norm(W))
        assert math.isclose(1.0 - kept, err**2, abs_tol=1e-12)
    assert energy_kept(torch.zeros(3), 2) == 1.0
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 16\]"):
        energy_kept(S, 17)
    with pytest.raises(TypeError, match="rank"):
        energy_kept(S, 1.0)
    with pytest.raises(ValueError, match="non-increasing"):
        energy_kept(S.flip(0), 1)


# ---------------------------------------------------------------------------
# low-rank factors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["balanced", "left", "right"])
def test_low_rank_factors_eckart_young(split):
    W = decaying(24, 36, 0.5)
    s = np.linalg.svd(W.numpy(), compute_uv=False)
    for r in (1, 6, 23):
        A, B = low_rank_factors(W, r, split=split, method="full")
        assert A.shape == (24, r) and B.shape == (r, 36)
        E = W - A @ B
        assert math.isclose(float(torch.linalg.norm(E)), tail(W, r), rel_tol=1e-10)
        assert math.isclose(float(torch.linalg.matrix_norm(E, ord=2)), s[r], rel_tol=1e-10)


def test_low_rank_factors_splits():
    W = decaying(12, 10, 1.0)
    A, B = low_rank_factors(W, 4, split="balanced")
    torch.testing.assert_close(torch.linalg.norm(A, dim=0), torch.linalg.norm(B, dim=1))
    s = torch.linalg.svdvals(W)[:4]
    torch.testing.assert_close(torch.linalg.norm(A, dim=0) ** 2, s)
    A, B = low_rank_factors(W, 4, split="left")
    torch.testing.assert_close(B @ B.mT, torch.eye(4, dtype=f64))
    A, B = low_rank_factors(W, 4, split="right")
    torch.testing.assert_close(A.mT @ A, torch.eye(4, dtype=f64))
    torch.testing.assert_close(torch.linalg.norm(B, dim=1), s)


def test_low_rank_factors_float32_full_rank_reproduces():
    W = torch.randn(48, 32, generator=gen(4))
    W0 = W.clone()
    for split in ("balanced", "left", "right"):
        A, B = low_rank_factors(W, 32, split=split)
        assert A.dtype == B.dtype == torch.float32
        assert rel(A @ B, W) < 1e-5
    A, B = low_rank_factors(W, 32, compute_dtype=None)
    assert rel(A @ B, W) < 1e-5
    assert torch.equal(W, W0)


def test_low_rank_factors_half_precision_input():
    W = torch.randn(16, 8, generator=gen(5)).half()
    A, B = low_rank_factors(W, 8)
    assert A.dtype == torch.float16
    assert rel(A @ B, W) < 2e-3


def test_low_rank_factors_energy():
    W = decaying(30, 20, 1.0)
    S = torch.linalg.svdvals(W)
    for energy in (0.5, 0.9, 0.99):
        A, B = low_rank_factors(W, energy=energy)
        r = A.shape[1]
        assert r == rank_for_energy(S, energy)
        assert energy_kept(S, r) >= energy
    W32 = low_rank(40, 50, 7, dtype=torch.float32)
    A, B = low_rank_factors(W32, energy=1.0)  # SVD in float64 of a float32 matrix
    assert A.shape[1] == 7 == int(torch.linalg.matrix_rank(W32))
    assert rel(A @ B, W32) < 1e-5


def test_low_rank_factors_follow_autograd_free():
    W = torch.randn(8, 6, requires_grad=True)
    A, B = low_rank_factors(W, 3)
    assert not A.requires_grad and not B.requires_grad


@pytest.mark.parametrize("power", [0.0, 0.25, 1.0])
def test_low_rank_factors_randomized_near_optimal(power):
    # power 0 is a flat spectrum: the hardest case for the randomized path
    W = decaying(160, 320, power) if power else torch.randn(160, 320, dtype=f64, generator=gen(6))
    for r in (8, 32):
        A, B = low_rank_factors(W, r, method="randomized", generator=gen(r))
        err = float(torch.linalg.norm(W - A @ B))
        assert err <= 1.01 * tail(W, r)


def test_low_rank_factors_randomized_reproducible_and_float32():
    W = decaying(60, 90, 0.5).float()
    A1, B1 = low_rank_factors(W, 5, method="randomized")
    A2, B2 = low_rank_factors(W, 5, method="randomized")
    assert torch.equal(A1, A2) and torch.equal(B1, B2)
    assert A1.dtype == torch.float32
    assert float(torch.linalg.norm(W - A1 @ B1)) <= 1.01 * tail(W, 5)


def test_auto_rule():
    assert not la._prefer_randomized(64, 64, 8)  # small layers: full SVD
    assert not la._prefer_randomized(128, 784, 8)
    assert la._prefer_randomized(512, 2048, 64)  # l = 90 <= 512 / 4
    assert not la._prefer_randomized(512, 2048, 100)  # l = 135 > 128
    W = torch.randn(256, 300, dtype=f64, generator=gen(7))
    A, B = low_rank_factors(W, 8)  # auto -> randomized with the default generator
    Ar, Br = low_rank_factors(W, 8, method="randomized")
    assert torch.equal(A, Ar) and torch.equal(B, Br)
    assert float(torch.linalg.norm(W - A @ B)) <= 1.01 * tail(W, 8)
    Af, Bf = low_rank_factors(W, 8, method="full")
    assert not torch.equal(A @ B, Af @ Bf)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(), ValueError, "exactly one of rank"),
        (dict(rank=2, energy=0.5), ValueError, "exactly one of rank"),
        (dict(rank=0), ValueError, r"rank must be an int in \[1, 4\]"),
        (dict(rank=5), ValueError, r"rank must be an int in \[1, 4\]"),
        (dict(rank=False), TypeError, "rank"),
        (dict(energy=0.0), ValueError, "energy"),
        (dict(energy=2), ValueError, "energy"),
        (dict(rank=2, split="middle"), ValueError, "split must be one of"),
        (dict(rank=2, method="fast"), ValueError, "method must be one of"),
        (dict(energy=0.9, method="randomized"), ValueError, "randomized"),
        (dict(rank=2, compute_dtype=torch.int64), ValueError, "compute_dtype"),
        (dict(rank=2, generator="0"), TypeError, "generator"),
    ],
)
def test_low_rank_factors_bad(kwargs, error, match):
    with pytest.raises(error, match=match):
        low_rank_factors(torch.ones(4, 6), **kwargs)


@pytest.mark.parametrize("W, error, match", BAD_MATRICES)
def test_low_rank_factors_bad_matrix(W, error, match):
    with pytest.raises(error, match=match):
        low_rank_factors(W, 1)


# ---------------------------------------------------------------------------
# randomized SVD and the HMT bounds
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(120, 80), (60, 150)])
@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_randomized_svd_near_optimal(shape, power):
    W = decaying(*shape, power)
    for r in (2, 10, 30):
        U, S, Vh = randomized_svd(W, r, generator=gen(r))
        assert U.shape == (shape[0], r) and S.shape == (r,) and Vh.shape == (r, shape[1])
        torch.testing.assert_close(U.mT @ U, torch.eye(r, dtype=f64))
        torch.testing.assert_close(Vh @ Vh.mT, torch.eye(r, dtype=f64))
        assert torch.all(S[1:] <= S[:-1])
        assert float(torch.linalg.norm(W - (U * S) @ Vh)) <= 1.05 * tail(W, r)


def test_randomized_svd_agrees_with_torch_svd_lowrank():
    W = decaying(200, 100, 0.5)
    r = 10
    U, S, Vh = randomized_svd(W, r, oversample=10, n_iter=2, generator=gen(0))
    with torch.random.fork_rng():  # svd_lowrank draws from the global generator
        torch.manual_seed(0)
        Ut, St, Vt = torch.svd_lowrank(W, q=r + 10, niter=2)
    Ut, St, Vt = Ut[:, :r], St[:r], Vt[:, :r]
    np.testing.assert_allclose(S.numpy(), St.numpy(), rtol=1e-2)
    np.testing.assert_allclose(S.numpy(), torch.linalg.svdvals(W)[:r].numpy(), rtol=5e-2)
    ours = float(torch.linalg.norm(W - (U * S) @ Vh))
    theirs = float(torch.linalg.norm(W - (Ut * St) @ Vt.mT))
    assert abs(ours - theirs) <= 0.02 * theirs


def test_randomized_svd_seeded():
    W = decaying(50, 40, 0.5)
    a = randomized_svd(W, 5, generator=gen(7))
    b = randomized_svd(W, 5, generator=gen(7))
    c = randomized_svd(W, 5, generator=gen(8))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])


def test_randomized_svd_exact_when_basis_covers_everything():
    W = torch.randn(20, 12, dtype=f64, generator=gen(9))
    U, S, Vh = randomized_svd(W, 6, oversample=10, n_iter=0, generator=gen(0))  # ℓ = 12
    np.testing.assert_allclose(S.numpy(), torch.linalg.svdvals(W)[:6].numpy(), rtol=1e-10)
    W5 = low_rank(30, 25, 5)
    U, S, Vh = randomized_svd(W5, 5, oversample=0, n_iter=0, generator=gen(1))
    assert rel((U * S) @ Vh, W5) < 1e-10


def test_randomized_svd_float32():
    W = decaying(100, 60, 1.0).float()
    U, S, Vh = randomized_svd(W, 8, generator=gen(0))
    assert S.dtype == torch.float32
    assert float(torch.linalg.norm(W - (U * S) @ Vh)) <= 1.05 * tail(W, 8)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rank=0), ValueError, r"rank must be an int in \[1, 6\]"),
        (dict(rank=7), ValueError, r"rank must be an int in \[1, 6\]"),
        (dict(rank=2.5), TypeError, "rank"),
        (dict(rank=2, oversample=-1), ValueError, "oversample must be an int >= 0"),
        (dict(rank=2, oversample=1.0), TypeError, "oversample"),
        (dict(rank=2, n_iter=-1), ValueError, "n_iter must be an int >= 0"),
        (dict(rank=2, n_iter=True), TypeError, "n_iter"),
        (dict(rank=2, generator=4.2), TypeError, "generator must be None .*an int seed"),
        (dict(rank=2, generator=-1), ValueError, r"generator must be an int in \[0, "),
    ],
)
def test_randomized_svd_bad(kwargs, error, match):
    with pytest.raises(error, match=match):
        randomized_svd(torch.ones(6, 8), **kwargs)


def test_randomized_range_finder():
    W = low_rank(40, 30, 4)
    Q = randomized_range_finder(W, 6, n_iter=1, generator=gen(0))
    assert Q.shape == (40, 6)
    torch.testing.assert_close(Q.mT @ Q, torch.eye(6, dtype=f64))
    assert rel(Q @ (Q.mT @ W), W) < 1e-10
    with pytest.raises(ValueError, match=r"size must be an int in \[1, 30\]"):
        randomized_range_finder(W, 31)
    with pytest.raises(ValueError, match="2-D"):
        randomized_range_finder(torch.ones(3), 1)


def test_hmt_error_bound_formulas():
    S = torch.tensor([4.0, 3.0, 2.0, 1.0, 1.0, 0.5], dtype=f64)
    k, p = 2, 3
    tail_f = math.sqrt(2.0**2 + 1 + 1 + 0.25)
    assert math.isclose(hmt_error_bound(S, k, p), math.sqrt(1 + k / (p - 1)) * tail_f)
    spectral = (1 + math.sqrt(k / (p - 1))) * 2.0 + math.e * math.sqrt(k + p) / p * tail_f
    assert math.isclose(hmt_error_bound(S, k, p, norm="spectral"), spectral)
    q = 2
    t = S.numpy() ** (2 * q + 1)
    power = (
        (1 + math.sqrt(k / (p - 1))) * t[k]
        + math.e * math.sqrt(k + p) / p * math.sqrt(np.sum(t[k:] ** 2))
    ) ** (1 / (2 * q + 1))
    assert math.isclose(hmt_error_bound(S, k, p, q, norm="spectral"), power)
    assert math.isclose(hmt_error_bound(S, k, p, q), math.sqrt(k) * power + tail_f)
    # power iterations shrink the spectral bound towards σ_{k+1}
    assert hmt_error_bound(S, k, p, 5, norm="spectral") < spectral


def range_errors(W, k, p, q, trials, seed=0):
    fro, spec = [], []
    for t in range(trials):
        Q = randomized_range_finder(W, k + p, n_iter=q, generator=gen(seed + t))
        E = W - Q @ (Q.mT @ W)
        fro.append(float(torch.linalg.norm(E)))
        spec.append(float(torch.linalg.matrix_norm(E, ord=2)))
    return np.mean(fro), np.mean(spec)


@pytest.mark.parametrize("q", [0, 1])
def test_hmt_bounds_hold_on_average(q):
    W = decaying(60, 40, 1.0)
    S = torch.linalg.svdvals(W)
    for k, p in [(5, 3), (10, 5)]:
        fro, spec = range_errors(W, k, p, q, trials=20)
        assert fro <= hmt_error_bound(S, k, p, q)
        assert spec <= hmt_error_bound(S, k, p, q, norm="spectral")
        assert fro >= tail(W, k + p)  # Eckart-Young: QQᵀW has rank k + p


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((1, 3), {}, ValueError, r"rank must be an int in \[2, len\(S\) - oversample\] = \[2, 7\]"),
        ((8, 3), {}, ValueError, "rank must be an int in"),
        ((2.0, 3), {}, TypeError, "rank"),
        ((2, 1), {}, ValueError, "oversample must be an int >= 2"),
        ((2, None), {}, TypeError, "oversample"),
        ((2, 3, -1), {}, ValueError, "n_iter"),
        ((2, 3), dict(norm="nuclear"), ValueError, "norm must be one of"),
    ],
)
def test_hmt_error_bound_bad(args, kwargs, error, match):
    S = torch.linspace(10, 1, 10)
    with pytest.raises(error, match=match):
        hmt_error_bound(S, *args, **kwargs)
    with pytest.raises(ValueError, match="non-increasing"):
        hmt_error_bound(S.flip(0), 2, 3)


# ---------------------------------------------------------------------------
# break-even ranks
# ---------------------------------------------------------------------------


def test_break_even_rank():
    assert break_even_rank(2048, 8192) == pytest.approx(1638.4)
    assert break_even_rank(64, 64) == 32
    m, n = 300, 70
    r_star = break_even_rank(m, n)
    for r in range(1, 70):
        assert (r * (m + n) < m * n) == (r < r_star)
    for bad, error in [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)]:
        with pytest.raises(error, match="m must be an int >= 1"):
            break_even_rank(bad, 5)
        with pytest.raises(error, match="n must be an int >= 1"):
            break_even_rank(5, bad)


def test_conv_break_even_rank():
    c, f = 16, 32
    for kernel in (3, (3, 3), (1, 5), (5, 1)):
        d_h, d_w = (kernel, kernel) if isinstance(kernel, int) else kernel
        r_star = conv_break_even_rank(c, f, kernel)
        assert r_star == pytest.approx(d_h * d_w * c * f / (d_h * d_w * c + f))
        assert r_star == pytest.approx(break_even_rank(f, c * d_h * d_w))
        dense = torch.nn.Conv2d(c, f, kernel, bias=False)
        for r in (1, int(r_star), int(r_star) + 1):
            first = torch.nn.Conv2d(c, r, kernel, bias=False)
            second = torch.nn.Conv2d(r, f, 1, bias=False)
            pair = first.weight.numel() + second.weight.numel()
            assert (pair < dense.weight.numel()) == (r < r_star)
    with pytest.raises(ValueError, match="in_channels must be an int >= 1"):
        conv_break_even_rank(0, 4, 3)
    with pytest.raises(TypeError, match="out_channels"):
        conv_break_even_rank(3, 4.0, 3)
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        conv_break_even_rank(3, 4, (3, 0))
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        conv_break_even_rank(3, 4, (3, 3, 3))


def test_spatial_break_even_rank():
    """r* against the weight counts of a k_h×1 conv c→r followed by a 1×k_w conv r→f."""
    c, f = 16, 32
    for kernel in (3, (3, 5), (5, 1)):
        d_h, d_w = (kernel, kernel) if isinstance(kernel, int) else kernel
        r_star = spatial_break_even_rank(c, f, kernel)
        dense = torch.nn.Conv2d(c, f, kernel, bias=False).weight.numel()
        for r in (1, int(r_star), int(r_star) + 1):
            vertical = torch.nn.Conv2d(c, r, (d_h, 1), bias=False).weight.numel()
            horizontal = torch.nn.Conv2d(r, f, (1, d_w), bias=False).weight.numel()
            assert (vertical + horizontal < dense) == (r < r_star)
    assert spatial_break_even_rank(16, 32, 3) == pytest.approx(9 * 16 * 32 / (3 * 16 + 3 * 32))
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        spatial_break_even_rank(3, 4, "3")


# ---------------------------------------------------------------------------
# PCA
# ---------------------------------------------------------------------------


def assert_components_close(ours: torch.Tensor, theirs: np.ndarray) -> None:
    """Rows equal up to sign."""
    signs = np.sign(np.sum(ours.numpy() * theirs, axis=1, keepdims=True))
    np.testing.assert_allclose(ours.numpy(), signs * theirs, atol=1e-8)


@pytest.mark.parametrize("shape", [(200, 30), (20, 30)])
def test_pca_matches_sklearn(shape):
    X = correlated_data(*shape)
    sk = PCA(svd_solver="full").fit(X.numpy())
    res = pca(X)
    assert isinstance(res, PCAResult)
    assert res.n_components == min(shape)
    np.testing.assert_allclose(res.mean.numpy(), sk.mean_, atol=1e-12)
    # trailing near-zero directions (N < d) are defined by round-off only
    k = min(shape) - (1 if shape[0] <= shape[1] else 0)
    assert_components_close(res.components[:k], sk.components_[:k])
    np.testing.assert_allclose(res.explained_variance.numpy(), sk.explained_variance_, atol=1e-12)
    np.testing.assert_allclose(
        res.explained_variance_ratio.numpy(), sk.explained_variance_ratio_, atol=1e-12
    )
    torch.testing.assert_close(res.components @ res.components.mT, torch.eye(min(shape), dtype=f64))


@pytest.mark.parametrize("variance", [0.5, 0.9, 0.99, 0.9999])
def test_pca_variance_matches_sklearn(variance):
    X = correlated_data()
    sk = PCA(n_components=variance, svd_solver="full").fit(X.numpy())
    res = pca(X, variance=variance)
    assert res.n_components == sk.n_components_
    assert_components_close(res.components, sk.components_)
    np.testing.assert_allclose(
        res.transform(X).abs().numpy(), np.abs(sk.transform(X.numpy())), atol=1e-9
    )
    assert float(res.explained_variance_ratio.sum()) >= variance


def test_pca_transform_roundtrip_and_dtype():
    X = correlated_data(50, 8)
    res = pca(X, n_components=8)
    torch.testing.assert_close(res.inverse_transform(res.transform(X)), X)
    X32 = X.float()
    res32 = pca(X32, n_components=3)
    assert res32.components.dtype == res32.mean.dtype == torch.float32
    sk = PCA(n_components=3, svd_solver="full").fit(X.numpy())
    Z = res32.transform(X32)
    np.testing.assert_allclose(Z.abs().numpy(), np.abs(sk.transform(X.numpy())), atol=1e-4)
    Xhat = res32.inverse_transform(Z)
    np.testing.assert_allclose(
        Xhat.numpy(), sk.inverse_transform(sk.transform(X.numpy())), atol=1e-4
    )


def test_pca_sign_rule():
    res = pca(correlated_data(40, 6))
    rows = torch.arange(6)
    assert torch.all(res.components[rows, res.components.abs().argmax(1)] > 0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(variance=0.9, n_components=2),
            ValueError,
            "at most one of variance and n_components",
        ),
        (dict(variance=0.0), ValueError, r"variance must be a float in \(0, 1\]"),
        (dict(variance=1.5), ValueError, r"variance must be a float in \(0, 1\]"),
        (dict(n_components=0), ValueError, r"n_components must be an int in \[1, 5\]"),
        (dict(n_components=6), ValueError, r"n_components must be an int in \[1, 5\]"),
        (dict(n_components=True), TypeError, "n_components"),
    ],
)
def test_pca_bad(kwargs, error, match):
    with pytest.raises(error, match=match):
        pca(torch.randn(10, 5), **kwargs)


def test_pca_bad_data():
    with pytest.raises(ValueError, match="at least 2 rows"):
        pca(torch.randn(1, 5))
    for X, error, match in BAD_MATRICES:
        with pytest.raises(error, match=match):
            pca(X)
    res = pca(torch.randn(10, 5))
    with pytest.raises(ValueError, match="X must have 5 columns"):
        res.transform(torch.randn(3, 4))
    with pytest.raises(ValueError, match="Z must have 5 columns"):
        res.inverse_transform(torch.randn(3, 4))


# ---------------------------------------------------------------------------
# randomized matrix multiplication
# ---------------------------------------------------------------------------


def uneven_pair(seed: int = 0, m: int = 6, n: int = 40, p: int = 5):
    """A (m×n), B (n×p) whose column/row norms vary over two decades."""
    g = gen(seed)
    scale = torch.logspace(0, -2, n, dtype=f64)
    A = torch.randn(m, n, dtype=f64, generator=g) * scale
    B = torch.randn(n, p, dtype=f64, generator=g) * scale[:, None].sqrt()
    return A, B


def test_sampling_probabilities():
    A, B = uneven_pair()
    p = sampling_probabilities(A, B)
    expected = np.linalg.norm(A.numpy(), axis=0) * np.linalg.norm(B.numpy(), axis=1)
    np.testing.assert_allclose(p.numpy(), expected / expected.sum(), rtol=1e-12)
    assert p.dtype == f64 and math.isclose(float(p.sum()), 1.0)
    A[:, 3] = 0
    assert sampling_probabilities(A, B)[3] == 0
    zero = sampling_probabilities(torch.zeros(3, 4), torch.ones(4, 2))
    torch.testing.assert_close(zero, torch.full((4,), 0.25))


def test_randomized_matmul_is_the_dkm_sum():
    A, B = uneven_pair(1)
    c = 25
    p = sampling_probabilities(A, B)
    idx = torch.multinomial(p, c, replacement=True, generator=gen(3))
    naive = sum(torch.outer(A[:, i], B[i]) / (c * p[i]) for i in idx.tolist())
    torch.testing.assert_close(randomized_matmul(A, B, c, generator=gen(3)), naive)
    q = torch.rand(40, dtype=f64, generator=gen(4)) + 0.1
    idx = torch.multinomial(q / q.sum(), c, replacement=True, generator=gen(5))
    naive = sum(torch.outer(A[:, i], B[i]) / (c * q[i] / q.sum()) for i in idx.tolist())
    torch.testing.assert_close(randomized_matmul(A, B, c, q, generator=gen(5)), naive)


def draws(A, B, c, probabilities=None, trials=3000, seed=0):
    g = gen(seed)
    return torch.stack(
        [randomized_matmul(A, B, c, probabilities, generator=g) for _ in range(trials)]
    )


def test_randomized_matmul_unbiased():
    A, B = uneven_pair(2)
    c, trials = 5, 3000
    p = sampling_probabilities(A, B)
    est = draws(A, B, c, trials=trials)
    # per-entry variance (1/c)(Σ_k A_ik² B_kj² / p_k − (AB)_ij²), exact
    AB = A @ B
    var = ((A**2 / p) @ (B**2) - AB**2) / c
    z = (est.mean(0) - AB) / torch.sqrt(var / trials)
    # 30 entries, |z| > 4.5 has probability 30 · 6.8e-6 ≈ 2e-4 under the CLT
    assert float(z.abs().max()) < 4.5
    # a biased estimator (probabilities not renormalised) is caught by the same check
    biased = est.mean(0) * 1.2
    assert float(((biased - AB) / torch.sqrt(var / trials)).abs().max()) > 4.5


@pytest.mark.parametrize("uniform", [False, True])
def test_randomized_matmul_mean_error_matches_formula(uniform):
    A, B = uneven_pair(3)
    c, trials = 8, 2000
    probs = torch.full((40,), 1 / 40, dtype=f64) if uniform else None
    sq = ((draws(A, B, c, probs, trials) - A @ B) ** 2).sum(dim=(1, 2))
    expected = dkm_expected_error(A, B, c, probs)
    assert abs(float(sq.mean()) - expected) < 4.5 * float(sq.std()) / math.sqrt(trials)


def test_dkm_optimal_beats_uniform_and_bound():
    A, B = uneven_pair(4)
    uniform = torch.ones(40, dtype=f64)
    for c in (1, 10, 100):
        opt = dkm_expected_error(A, B, c)
        assert opt < dkm_expected_error(A, B, c, uniform)
        assert opt <= dkm_error_bound(A, B, c)
        w = np.linalg.norm(A.numpy(), axis=0) * np.linalg.norm(B.numpy(), axis=1)
        closed = (w.sum() ** 2 - np.linalg.norm(A.numpy() @ B.numpy()) ** 2) / c
        assert math.isclose(opt, closed, rel_tol=1e-10)
        bound = np.linalg.norm(A.numpy()) ** 2 * np.linalg.norm(B.numpy()) ** 2 / c
        assert math.isclose(dkm_error_bound(A, B, c), bound, rel_tol=1e-12)
    # one nonzero column: the optimal estimator is exact
    A1 = torch.zeros(3, 4, dtype=f64)
    A1[:, 2] = 1.0
    assert dkm_expected_error(A1, torch.ones(4, 2, dtype=f64), 1) < 1e-12
    torch.testing.assert_close(
        randomized_matmul(A1, torch.ones(4, 2, dtype=f64), 1, generator=gen(0)),
        torch.ones(3, 2, dtype=f64),
    )


def test_randomized_matmul_all_zero_and_gradients():
    out = randomized_matmul(torch.zeros(3, 4), torch.zeros(4, 2), 3, generator=gen(0))
    assert torch.equal(out, torch.zeros(3, 2))
    A = torch.randn(3, 4, requires_grad=True)
    B = torch.randn(4, 2)
    randomized_matmul(A, B, 50, generator=gen(0)).sum().backward()
    assert A.grad is not None and A.grad.shape == (3, 4)


def test_randomized_matmul_seeded_and_converges():
    A, B = uneven_pair(5)
    torch.testing.assert_close(
        randomized_matmul(A, B, 7, generator=gen(1)), randomized_matmul(A, B, 7, generator=gen(1))
    )
    errors = [rel(randomized_matmul(A, B, c, generator=gen(2)), A @ B) for c in (10, 10_000)]
    assert errors[1] < errors[0] / 5


@pytest.mark.parametrize(
    "A, B, kwargs, error, match",
    [
        (torch.ones(3, 4), torch.ones(5, 2), {}, ValueError, "inner dimensions must match"),
        (torch.ones(3, 4), torch.ones(4, 2, dtype=f64), {}, TypeError, "same dtype"),
        (torch.ones(4), torch.ones(4, 2), {}, ValueError, "A must be a 2-D"),
        (torch.ones(3, 4), torch.ones(4, 2, 1), {}, ValueError, "B must be a 2-D"),
        (torch.ones(3, 4), torch.full((4, 2), float("nan")), {}, ValueError, "NaN"),
        (
            torch.ones(3, 4),
            torch.ones(4, 2),
            dict(samples=0),
            ValueError,
            "samples must be an int >= 1",
        ),
        (torch.ones(3, 4), torch.ones(4, 2), dict(samples=2.0), TypeError, "samples"),
        (torch.ones(3, 4), torch.ones(4, 2), dict(samples=True), TypeError, "samples"),
        (
            torch.ones(3, 4),
            torch.ones(4, 2),
            dict(probabilities=torch.ones(3)),
            ValueError,
            "one entry per column",
        ),
        (
            torch.ones(3, 4),
            torch.ones(4, 2),
            dict(probabilities=torch.tensor([1.0, -1, 1, 1])),
            ValueError,
            "non-negative",
        ),
        (
            torch.ones(3, 4),
            torch.ones(4, 2),
            dict(probabilities=torch.zeros(4)),
            ValueError,
            "positive sum",
        ),
        (
            torch.ones(3, 4),
            torch.ones(4, 2),
            dict(probabilities=torch.tensor([1.0, 0, 1, 1])),
            ValueError,
            "biased",
        ),
        (
            torch.ones(3, 4),
            torch.ones(4, 2),
            dict(probabilities=torch.tensor([1.0, float("inf"), 1, 1])),
            ValueError,
            "Inf",
        ),
    ],
)
def test_randomized_matmul_bad(A, B, kwargs, error, match):
    kwargs = {"samples": 3, **kwargs}
    with pytest.raises(error, match=match):
        randomized_matmul(A, B, **kwargs)
    if "samples" in match or "probabilities" not in kwargs:
        with pytest.raises(error, match=match):
            dkm_expected_error(A, B, kwargs["samples"])
    if set(kwargs) == {"samples"}:
        with pytest.raises(error, match=match):
            dkm_error_bound(A, B, kwargs["samples"])
        if "samples" not in match:
            with pytest.raises(error, match=match):
                sampling_probabilities(A, B)
    else:
        with pytest.raises(error, match=match):
            dkm_expected_error(A, B, **kwargs)


def test_randomized_matmul_bad_generator():
    with pytest.raises(TypeError, match="generator"):
        randomized_matmul(torch.ones(2, 2), torch.ones(2, 2), 1, generator="1")
    with pytest.raises(TypeError, match="generator"):
        randomized_matmul(torch.ones(2, 2), torch.ones(2, 2), 1, generator=1.0)


def test_generators_accept_int_seeds():
    """An int is a generator seeded with it: same result as the explicit generator."""
    A = torch.randn(5, 30, dtype=f64, generator=gen(1))
    B = torch.randn(30, 4, dtype=f64, generator=gen(2))
    torch.testing.assert_close(
        randomized_matmul(A, B, 7, generator=3), randomized_matmul(A, B, 7, generator=gen(3))
    )
    W = low_rank(40, 30, 4)
    torch.testing.assert_close(
        randomized_range_finder(W, 5, generator=9),
        randomized_range_finder(W, 5, generator=gen(9)),
        rtol=0,
        atol=0,
    )
    for x, y in zip(
        randomized_svd(W, 5, generator=9), randomized_svd(W, 5, generator=gen(9)), strict=True
    ):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_generator_none_means_the_global_generator():
    A = torch.randn(5, 30, dtype=f64, generator=gen(1))
    B = torch.randn(30, 4, dtype=f64, generator=gen(2))
    torch.manual_seed(123)
    first = randomized_matmul(A, B, 7)
    torch.manual_seed(123)
    torch.testing.assert_close(randomized_matmul(A, B, 7), first, rtol=0, atol=0)
    torch.manual_seed(123)
    torch.testing.assert_close(randomized_matmul(A, B, 7, generator=None), first, rtol=0, atol=0)
    W = decaying(300, 280, 1.0)
    torch.manual_seed(1)
    a = low_rank_factors(W, 8, method="randomized", generator=None)
    torch.manual_seed(2)
    b = low_rank_factors(W, 8, method="randomized", generator=None)
    assert not torch.equal(a[0], b[0])  # None draws from the global stream


def test_factorizations_default_to_seed_zero():
    """low_rank_factors and whitened_low_rank_factors are reproducible by default (seed 0)."""
    W = decaying(300, 280, 1.0)
    X = torch.randn(400, 280, dtype=f64, generator=gen(3))
    for f, args in ((low_rank_factors, (W,)), (whitened_low_rank_factors, (W, X))):
        torch.manual_seed(5)
        a = f(*args, rank=8, method="randomized")
        torch.manual_seed(6)  # the global generator plays no part
        b = f(*args, rank=8, method="randomized", generator=0)
        c = f(*args, rank=8, method="randomized", generator=gen(0))
        for x, y, z in zip(a, b, c, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
            torch.testing.assert_close(x, z, rtol=0, atol=0)


def test_generator_on_another_device_type_is_refused():
    """A CPU generator for a computation on another device type raises a clear error.

    linalg refuses meta tensors before it looks at the generator, so the rule itself is
    checked here; tests/test_cuda.py checks it through every function on a GPU.
    """
    from pruning_utils.validation import check_generator

    with pytest.raises(ValueError, match="generator lives on cpu but the computation runs on meta"):
        check_generator(torch.Generator(), torch.device("meta"))
    assert check_generator(3, torch.device("cpu")).device.type == "cpu"


# ---------------------------------------------------------------------------
# convolution as a matrix product
# ---------------------------------------------------------------------------


CONV_GRID = list(
    itertools.product(
        [(1, 1), (3, 3), (2, 4)],  # kernel
        [1, 2, (2, 1)],  # stride
        [0, 1, (2, 0)],  # padding
        [1, (2, 1)],  # dilation
    )
)


@pytest.mark.parametrize("kernel, stride, padding, dilation", CONV_GRID)
def test_conv2d_as_matmul_equals_conv2d(kernel, stride, padding, dilation):
    g = gen(sum(kernel))
    x = torch.randn(2, 3, 9, 8, dtype=f64, generator=g)
    weight = torch.randn(4, 3, *kernel, dtype=f64, generator=g)
    bias = torch.randn(4, dtype=f64, generator=g)
    for b in (None, bias):
        expected = F.conv2d(x, weight, b, stride=stride, padding=padding, dilation=dilation)
        got = conv2d_as_matmul(x, weight, b, stride=stride, padding=padding, dilation=dilation)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected)


def test_conv2d_as_matmul_unbatched_float32_and_grad():
    x = torch.randn(3, 7, 7, generator=gen(0))
    weight = torch.randn(5, 3, 3, 2, generator=gen(1), requires_grad=True)
    got = conv2d_as_matmul(x, weight, padding=(1, 0))
    torch.testing.assert_close(got, F.conv2d(x, weight, padding=(1, 0)))
    got.sum().backward()
    assert weight.grad is not None


def test_conv_weight_matrix():
    weight = torch.randn(4, 3, 2, 5, generator=gen(0))
    K = conv_weight_matrix(weight)
    assert K.shape == (4, 30)
    assert torch.equal(K.reshape(weight.shape), weight)
    assert torch.equal(K[1, 5 * 2 + 1 * 5 + 3], weight[1, 1, 1, 3])  # order (c, i, j)
    with pytest.raises(ValueError, match="weight must be a 4-D tensor"):
        conv_weight_matrix(torch.ones(4, 3, 3))


@pytest.mark.parametrize(
    "x, weight, kwargs, error, match",
    [
        (torch.ones(1, 6, 5, 5), torch.ones(4, 3, 3, 3), {}, ValueError, "not supported"),
        (
            torch.ones(1, 3, 5, 5),
            torch.ones(4, 3, 3, 3),
            dict(groups=3),
            ValueError,
            "groups must be 1",
        ),
        (torch.ones(1, 4, 5, 5), torch.ones(4, 3, 3, 3), {}, ValueError, "x has 4 channels"),
        (torch.ones(5, 5), torch.ones(4, 1, 3, 3), {}, ValueError, "x must be a 4-D tensor"),
        (np.ones((1, 1, 5, 5)), torch.ones(4, 1, 3, 3), {}, TypeError, "x must be a torch.Tensor"),
        (
            torch.ones(1, 1, 5, 5),
            torch.ones(4, 3, 3),
            {},
            ValueError,
            "weight must be a 4-D tensor",
        ),
        (
            torch.ones(1, 1, 5, 5),
            torch.ones(4, 1, 3, 3),
            dict(bias=torch.ones(3)),
            ValueError,
            "bias must have C_out = 4",
        ),
        (torch.ones(1, 1, 2, 5), torch.ones(4, 1, 3, 3), {}, ValueError, "smaller than the"),
        (torch.ones(1, 1, 5, 5), torch.ones(4, 1, 3, 3), dict(stride=0), ValueError, "stride"),
        (torch.ones(1, 1, 5, 5), torch.ones(4, 1, 3, 3), dict(padding=-1), ValueError, "padding"),
        (
            torch.ones(1, 1, 5, 5),
            torch.ones(4, 1, 3, 3),
            dict(padding="same"),
            TypeError,
            "padding",
        ),
        (
            torch.ones(1, 1, 5, 5),
            torch.ones(4, 1, 3, 3),
            dict(dilation=(1, 0)),
            ValueError,
            "dilation",
        ),
        (torch.ones(1, 1, 5, 5), torch.ones(4, 1, 3, 3, dtype=f64), {}, TypeError, "same dtype"),
        (torch.full((1, 1, 5, 5), float("nan")), torch.ones(4, 1, 3, 3), {}, ValueError, "NaN"),
    ],
)
def test_conv2d_as_matmul_bad(x, weight, kwargs, error, match):
    with pytest.raises(error, match=match):
        conv2d_as_matmul(x, weight, **kwargs)


# ---------------------------------------------------------------------------
# interpolative decomposition
# ---------------------------------------------------------------------------


def test_interpolative_decomposition_against_pivoted_qr():
    H = decaying(60, 20, 1.0)
    _, R, perm = scipy.linalg.qr(H.numpy(), mode="economic", pivoting=True)
    for k in (1, 5, 12):
        idx, T = interpolative_decomposition(H, k)
        assert idx.dtype == torch.int64 and T.shape == (k, 20)
        np.testing.assert_array_equal(idx.numpy(), perm[:k])
        torch.testing.assert_close(T[:, idx], torch.eye(k, dtype=f64))
        err = float(torch.linalg.norm(H - H[:, idx] @ T))
        assert math.isclose(err, np.linalg.norm(R[k:, k:]), rel_tol=1e-8)
        assert err >= tail(H, k) * (1 - 1e-12)  # no k columns beat the SVD


@pytest.mark.parametrize("k", [5, 7, 20])
def test_interpolative_decomposition_exact_beyond_rank(k):
    H = low_rank(50, 20, 5)
    idx, T = interpolative_decomposition(H, k)
    assert idx.unique().numel() == k
    assert rel(H[:, idx] @ T, H) < 1e-10
    assert float(T.abs().max()) < 1e6  # no division by round-off


def test_interpolative_decomposition_duplicate_units_and_float32():
    g = gen(3)
    base = torch.relu(torch.randn(100, 6, generator=g))
    H = torch.cat([base, base[:, :3], 2 * base[:, 4:]], dim=1)  # 9 units, 6 distinct directions
    idx, T = interpolative_decomposition(H, 6)
    assert T.dtype == torch.float32
    assert rel(H[:, idx] @ T, H) < 1e-5
    idx, T = interpolative_decomposition(torch.zeros(5, 3), 2)  # all zero: exact, T = [I 0]
    assert torch.equal(T.abs().sum(0) > 0, torch.isin(torch.arange(3), idx))


def test_interpolative_decomposition_wide():
    H = torch.randn(4, 10, dtype=f64, generator=gen(4))  # N < m: rank 4
    idx, T = interpolative_decomposition(H, 6)
    assert rel(H[:, idx] @ T, H) < 1e-10


@pytest.mark.parametrize(
    "H, k, error, match",
    [
        (torch.ones(5, 4), 0, ValueError, r"k must be an int in \[1, 4\]"),
        (torch.ones(5, 4), 5, ValueError, r"k must be an int in \[1, 4\]"),
        (torch.ones(5, 4), 2.0, TypeError, "k must be an int"),
        (torch.ones(5), 1, ValueError, "H must be a 2-D tensor"),
        (torch.full((5, 4), float("inf")), 1, ValueError, "Inf"),
    ],
)
def test_interpolative_decomposition_bad(H, k, error, match):
    with pytest.raises(error, match=match):
        interpolative_decomposition(H, k)


# ---------------------------------------------------------------------------
# whitened (data-aware) low rank
# ---------------------------------------------------------------------------


def output_error(W, Wp, X):
    return float(torch.linalg.norm(X @ (W - Wp).mT))


def test_whitened_beats_plain_svd_and_equals_whitened_tail():
    g = gen(11)
    W = torch.randn(20, 30, dtype=f64, generator=g)
    X = correlated_data(400, 30, seed=12)
    L = scipy.linalg.cholesky(X.numpy().T @ X.numpy(), lower=True)  # oracle S
    s_ws = np.linalg.svd(W.numpy() @ L, compute_uv=False)
    wins = 0
    for r in (1, 5, 10, 19):
        A, B = whitened_low_rank_factors(W, X, rank=r, eps=0.0)
        assert A.shape == (20, r) and B.shape == (r, 30)
        ours = output_error(W, A @ B, X)
        assert math.isclose(ours, np.sqrt(np.sum(s_ws[r:] ** 2)), rel_tol=1e-8)
        Ap, Bp = low_rank_factors(W, r)
        plain = output_error(W, Ap @ Bp, X)
        assert ours <= plain * (1 + 1e-12)
        wins += ours < 0.9 * plain
    assert wins >= 3


def test_whitened_covariance_path_and_scale_invariance():
    W = torch.randn(10, 12, dtype=f64, generator=gen(13))
    X = correlated_data(100, 12, seed=14)
    A1, B1 = whitened_low_rank_factors(W, X, rank=4)
    A2, B2 = whitened_low_rank_factors(W, rank=4, covariance=X.mT @ X)
    A3, B3 = whitened_low_rank_factors(W, rank=4, covariance=7.0 * (X.mT @ X))
    torch.testing.assert_close(A1 @ B1, A2 @ B2)
    torch.testing.assert_close(A1 @ B1, A3 @ B3)
    for split in ("left", "right"):
        A, B = whitened_low_rank_factors(W, X, rank=4, split=split)
        torch.testing.assert_close(A @ B, A1 @ B1)


def test_whitened_full_rank_energy_and_float32():
    W = torch.randn(8, 12, generator=gen(15))
    X = torch.randn(200, 12, generator=gen(16))
    A, B = whitened_low_rank_factors(W, X, rank=8)
    assert A.dtype == torch.float32 and rel(A @ B, W) < 1e-5
    A, B = whitened_low_rank_factors(W.double(), X.double(), energy=0.9, eps=0.0)
    L = np.linalg.cholesky(X.double().numpy().T @ X.double().numpy())
    s = torch.from_numpy(np.linalg.svd(W.double().numpy() @ L, compute_uv=False))
    assert A.shape[1] == rank_for_energy(s, 0.9)


def test_whitened_rank_deficient_data_needs_ridge():
    W = torch.randn(6, 20, dtype=f64, generator=gen(17))
    X = torch.randn(8, 20, dtype=f64, generator=gen(18))  # C = XᵀX has rank 8 < 20
    with pytest.raises(ValueError, match="eps > 0"):
        whitened_low_rank_factors(W, X, rank=3, eps=0.0)
    A, B = whitened_low_rank_factors(W, X, rank=3, eps=1e-6)
    assert torch.isfinite(A).all() and torch.isfinite(B).all()
    Ap, Bp = low_rank_factors(W, 3)
    assert output_error(W, A @ B, X) <= output_error(W, Ap @ Bp, X)


def test_whitened_randomized_path_near_optimal_and_reproducible():
    # min(m, n) = 256 and rank 16: "auto" takes the randomized path (p = 14, q = 4)
    W = torch.randn(256, 320, dtype=f64, generator=gen(19))
    X = correlated_data(600, 320, seed=20)
    full = output_error(W, _product(W, X, "full"), X)
    for method in ("auto", "randomized"):
        ours = output_error(W, _product(W, X, method, gen(21)), X)
        assert full * (1 - 1e-12) <= ours <= 1.01 * full
    first, again = (_product(W, X, "randomized", gen(3)) for _ in range(2))
    torch.testing.assert_close(first, again)


def _product(W, X, method, generator=None):
    A, B = whitened_low_rank_factors(W, X, rank=16, method=method, generator=generator)
    return A @ B


def test_low_rank_factors_wide_matrix_full_path_is_optimal():
    W = torch.randn(7, 13, dtype=f64, generator=gen(22))  # wide: the SVD runs on Wᵀ
    s = np.linalg.svd(W.numpy(), compute_uv=False)
    for r in (1, 3, 6):
        A, B = low_rank_factors(W, r, method="full")
        assert math.isclose(
            float(torch.linalg.norm(W - A @ B)), np.sqrt(np.sum(s[r:] ** 2)), rel_tol=1e-10
        )
        C, D = low_rank_factors(W.mT.contiguous(), r, method="full")
        torch.testing.assert_close(A @ B, (C @ D).mT)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rank=2, method="both"), ValueError, "method"),
        (dict(energy=0.5, method="randomized"), ValueError, "needs rank="),
        (dict(rank=2, generator="0"), TypeError, "generator must be None"),
    ],
)
def test_whitened_bad_method(kwargs, error, match):
    with pytest.raises(error, match=match):
        whitened_low_rank_factors(torch.ones(4, 6), torch.randn(10, 6, generator=gen(0)), **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(X=torch.ones(5, 6)), ValueError, "exactly one of rank"),
        (dict(X=torch.ones(5, 6), rank=2, energy=0.5), ValueError, "exactly one of rank"),
        (dict(rank=2), ValueError, "exactly one of X"),
        (dict(X=torch.ones(5, 6), rank=2, covariance=torch.eye(6)), ValueError, "exactly one of X"),
        (dict(X=torch.ones(5, 7), rank=2), ValueError, "X must have n = 6 columns"),
        (dict(rank=2, covariance=torch.eye(5)), ValueError, "covariance must be n × n = 6 × 6"),
        (dict(X=torch.zeros(5, 6), rank=2), ValueError, "covariance is zero"),
        (dict(X=torch.ones(5, 6), rank=5), ValueError, r"rank must be an int in \[1, 4\]"),
        (dict(X=torch.ones(5, 6), energy=0.0), ValueError, "energy"),
        (dict(X=torch.ones(5, 6), rank=2, eps=-1.0), ValueError, r"eps must be a number in \[0, "),
        (dict(X=torch.ones(5, 6), rank=2, split="both"), ValueError, "split"),
        (dict(X=torch.full((5, 6), float("nan")), rank=2), ValueError, "NaN"),
    ],
)
def test_whitened_bad(kwargs, error, match):
    with pytest.raises(error, match=match):
        whitened_low_rank_factors(torch.ones(4, 6), **kwargs)
