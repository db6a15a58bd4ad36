"""Layers built from factors: exactness at full rank, Eckart–Young error below it,
unbiasedness and reproducibility of the randomized layers, and every bad input."""

import contextlib
import copy
import io
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning_utils import linalg
from pruning_utils.layers import (
    LowRankConv2d,
    LowRankLinear,
    RandomizedConv2d,
    RandomizedLinear,
    SpatialLowRankConv2d,
    spatial_weight_matrix,
)

F32 = dict(rtol=1e-4, atol=1e-5)


def _linear(n_in=12, n_out=9, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias)


def _conv(c_in=3, c_out=5, k=3, seed=0, **kw):
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, k, **kw)


def _np_tail(M: np.ndarray, r: int) -> float:
    s = np.linalg.svd(M.astype(np.float64), compute_uv=False)
    return float(np.sqrt((s[r:] ** 2).sum()))


def _np_truncate(M: np.ndarray, r: int) -> np.ndarray:
    U, s, Vt = np.linalg.svd(M.astype(np.float64), full_matrices=False)
    return (U[:, :r] * s[:r]) @ Vt[:r]


# ---------------------------------------------------------------------------
# LowRankLinear
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_low_rank_linear_full_rank_equals_dense(bias):
    dense = _linear(bias=bias)
    layer = LowRankLinear.from_linear(dense, rank=9)
    x = torch.randn(4, 7, 12)  # leading dims are kept
    torch.testing.assert_close(layer(x), dense(x), **F32)
    assert layer.rank == 9 and (layer.second.bias is not None) == bias
    assert layer.first.weight.shape == (9, 12) and layer.second.weight.shape == (9, 9)


def test_low_rank_linear_error_is_eckart_young_tail():
    dense = _linear(20, 15)
    W = dense.weight.detach().numpy()
    for r in (1, 4, 10):
        layer = LowRankLinear.from_linear(dense, rank=r)
        err = float(torch.linalg.matrix_norm(layer.weight_product() - dense.weight).detach())
        assert err == pytest.approx(_np_tail(W, r), rel=1e-4)
        np.testing.assert_allclose(
            layer.weight_product().detach().numpy(), _np_truncate(W, r), atol=1e-5
        )
        x = torch.randn(3, 20)
        expected = x.numpy() @ _np_truncate(W, r).T + dense.bias.detach().numpy()
        np.testing.assert_allclose(layer(x).detach().numpy(), expected, atol=1e-4)


def test_low_rank_linear_energy_picks_smallest_rank():
    dense = _linear(20, 15)
    s = np.linalg.svd(dense.weight.detach().numpy().astype(np.float64), compute_uv=False)
    kept = np.cumsum(s**2) / (s**2).sum()
    for energy in (0.3, 0.8, 0.95):
        expected = int(np.searchsorted(kept, energy) + 1)
        assert LowRankLinear.from_linear(dense, energy=energy).rank == expected
    assert LowRankLinear.from_linear(dense, energy=1.0).rank == 15


def test_low_rank_linear_data_aware_reaches_the_output_optimum():
    """min over rank-r W' of ‖(W − W')Xᵀ‖_F is the SVD tail of W Xᵀ (numpy oracle)."""
    torch.manual_seed(1)
    dense = nn.Linear(16, 12)
    # correlated inputs: most of the energy in a few directions
    X = torch.randn(200, 5) @ torch.randn(5, 16) + 0.1 * torch.randn(200, 16)
    WXt = dense.weight.detach().numpy().astype(np.float64) @ X.numpy().T.astype(np.float64)
    with torch.no_grad():
        y = dense(X)
        for r in (2, 4):
            plain = LowRankLinear.from_linear(dense, rank=r)
            aware = LowRankLinear.from_linear(dense, rank=r, data=X)
            e_plain = float((plain(X) - y).norm())
            e_aware = float((aware(X) - y).norm())
            assert e_aware == pytest.approx(_np_tail(WXt, r), rel=1e-3)
            assert e_aware < e_plain
        full = LowRankLinear.from_linear(dense, rank=12, data=X)
        torch.testing.assert_close(full(X), y, rtol=1e-4, atol=1e-4)


def test_low_rank_linear_from_factors_and_repr():
    A, B, b = torch.randn(5, 2), torch.randn(2, 7), torch.randn(5)
    layer = LowRankLinear.from_factors(A, B, b)
    x = torch.randn(3, 7)
    torch.testing.assert_close(layer(x), x @ (A @ B).T + b, **F32)
    assert "rank=2" in repr(layer) and "in_features=7" in repr(layer)
    with pytest.raises(ValueError, match="share r"):
        LowRankLinear.from_factors(torch.randn(5, 2), torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"bias must be a tensor of shape \(5,\)"):
        LowRankLinear.from_factors(A, B, torch.randn(4))


def test_low_rank_linear_leaves_input_untouched():
    dense = _linear()
    before = copy.deepcopy(dense.state_dict())
    LowRankLinear.from_linear(dense, rank=3)
    for k, v in dense.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(rank=0), ValueError, r"rank must be an int in \[1, 9\], got 0"),
        (dict(rank=10), ValueError, r"rank must be an int in \[1, 9\], got 10"),
        (dict(rank=2.0), TypeError, "rank must be an int"),
        (dict(energy=0.0), ValueError, r"energy must be a float in \(0, 1\]"),
        (dict(energy=1.5), ValueError, r"energy must be a float in \(0, 1\]"),
        (dict(rank=2, energy=0.5), ValueError, "exactly one of rank"),
        (dict(), ValueError, "exactly one of rank"),
    ],
)
def test_low_rank_linear_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LowRankLinear.from_linear(_linear(), **kwargs)


def test_low_rank_linear_bad_inputs():
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        LowRankLinear.from_linear(_conv(), rank=1)
    bad = _linear()
    with torch.no_grad():
        bad.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="linear.weight must contain only finite values"):
        LowRankLinear.from_linear(bad, rank=2)
    with pytest.raises(ValueError, match="in_features=12 .* got shape \\(5, 11\\)"):
        LowRankLinear.from_linear(_linear(), rank=2, data=torch.randn(5, 11))
    with pytest.raises(TypeError, match="data must be a torch.Tensor"):
        LowRankLinear.from_linear(_linear(), rank=2, data=np.zeros((5, 12)))
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 3\]"):
        LowRankLinear(3, 8, rank=4)
    with pytest.raises(ValueError, match="in_features must be an int >= 1"):
        LowRankLinear(0, 8, rank=1)


# ---------------------------------------------------------------------------
# LowRankConv2d and SpatialLowRankConv2d
# ---------------------------------------------------------------------------

CONV_GEOMETRIES = [
    dict(),
    dict(stride=2, padding=1),
    dict(stride=(2, 1), padding=(2, 1), dilation=(1, 2)),
    dict(padding="same"),
    dict(padding="same", dilation=2, k=(4, 3)),
    dict(padding=1, padding_mode="reflect"),
    dict(padding=(1, 2), padding_mode="circular", stride=(1, 2)),
    dict(padding=1, padding_mode="replicate", bias=False),
]


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_low_rank_conv_full_rank_equals_dense(geometry):
    geometry = dict(geometry)
    k = geometry.pop("k", 3)
    conv = _conv(3, 5, k, **geometry)
    x = torch.randn(2, 3, 11, 10)
    layer = LowRankConv2d.from_conv2d(conv, rank=5)  # min(5, 3·k_h·k_w) = 5
    torch.testing.assert_close(layer(x), conv(x), **F32)
    assert isinstance(layer.first, nn.Conv2d) and layer.first.kernel_size == conv.kernel_size
    assert layer.second.kernel_size == (1, 1)


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_spatial_conv_full_rank_equals_dense(geometry):
    geometry = dict(geometry)
    k = geometry.pop("k", 3)
    conv = _conv(3, 5, k, **geometry)
    kh, kw = conv.kernel_size
    full = min(3 * kh, 5 * kw)
    layer = SpatialLowRankConv2d.from_conv2d(conv, rank=full)
    x = torch.randn(2, 3, 11, 10)
    torch.testing.assert_close(layer(x), conv(x), **F32)
    assert layer.vertical.kernel_size == (kh, 1) and layer.horizontal.kernel_size == (1, kw)


def test_low_rank_conv_error_is_eckart_young_tail_of_flattened_kernel():
    conv = _conv(4, 8, 3, padding=1)
    K = conv.weight.detach().numpy().reshape(8, -1)
    x = torch.randn(2, 4, 9, 9)
    for r in (1, 3, 6):
        layer = LowRankConv2d.from_conv2d(conv, rank=r)
        A = layer.second.weight.detach().reshape(8, r)
        B = layer.first.weight.detach().reshape(r, -1)
        err = float(torch.linalg.matrix_norm(A @ B - conv.weight.detach().reshape(8, -1)))
        assert err == pytest.approx(_np_tail(K, r), rel=1e-4)
        truncated = torch.from_numpy(_np_truncate(K, r).astype(np.float32)).reshape(8, 4, 3, 3)
        expected = F.conv2d(x, truncated, conv.bias, padding=1)
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)


def test_spatial_conv_error_is_tail_of_rearranged_kernel():
    conv = _conv(4, 6, (3, 2), padding=1)
    K = conv.weight.detach().numpy()
    M = np.transpose(K, (1, 2, 0, 3)).reshape(4 * 3, 6 * 2)  # [(c, y), (f, x)]
    np.testing.assert_array_equal(spatial_weight_matrix(conv.weight.detach()).numpy(), M)
    x = torch.randn(2, 4, 8, 7)
    for r in (1, 5):
        layer = SpatialLowRankConv2d.from_conv2d(conv, rank=r)
        trunc = _np_truncate(M, r).reshape(4, 3, 6, 2).transpose(2, 0, 1, 3)
        expected = F.conv2d(x, torch.from_numpy(trunc.astype(np.float32)), conv.bias, padding=1)
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)


def test_conv_energy_and_repr():
    conv = _conv(4, 8, 3)
    s = np.linalg.svd(
        conv.weight.detach().numpy().reshape(8, -1).astype(np.float64), compute_uv=False
    )
    expected = int(np.searchsorted(np.cumsum(s**2) / (s**2).sum(), 0.9) + 1)
    layer = LowRankConv2d.from_conv2d(conv, energy=0.9)
    assert layer.rank == expected
    assert f"rank={expected}" in repr(layer) and "kernel_size=(3, 3)" in repr(layer)
    assert "rank=" in repr(SpatialLowRankConv2d.from_conv2d(conv, rank=2))


@pytest.mark.parametrize("cls", [LowRankConv2d, SpatialLowRankConv2d])
def test_conv_bad_inputs(cls):
    with pytest.raises(ValueError, match="groups=1.*got groups=2"):
        cls.from_conv2d(nn.Conv2d(4, 4, 3, groups=2), rank=1)
    with pytest.raises(TypeError, match="conv must be an nn.Conv2d"):
        cls.from_conv2d(_linear(), rank=1)
    with pytest.raises(ValueError, match="rank must be an int in"):
        cls.from_conv2d(_conv(), rank=0)
    with pytest.raises(ValueError, match="rank must be an int in"):
        cls.from_conv2d(_conv(), rank=100)
    with pytest.raises(ValueError, match="energy must be a float in"):
        cls.from_conv2d(_conv(), energy=-0.1)
    with pytest.raises(ValueError, match="exactly one of rank"):
        cls.from_conv2d(_conv())
    bad = _conv()
    with torch.no_grad():
        bad.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="conv.weight must contain only finite values"):
        cls.from_conv2d(bad, rank=1)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        cls(3, 4, 3, rank=1, padding_mode="mirror")


# ---------------------------------------------------------------------------
# Randomized layers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["weights", "batch"])
def test_randomized_linear_is_unbiased(rule):
    dense = _linear(10, 4)
    layer = RandomizedLinear.from_linear(dense, samples=3, probabilities=rule, generator=0)
    x = torch.randn(5, 10)
    with torch.no_grad():
        draws = torch.stack([layer(x) for _ in range(1500)])
        exact = dense(x)
    mean, se = draws.mean(0), draws.std(0) / np.sqrt(draws.shape[0])
    assert bool(((mean - exact).abs() <= 5 * se + 1e-5).all())
    assert float(draws.std(0).max()) > 0  # it really samples


def test_randomized_linear_probabilities():
    """The probabilities the draw receives, against numpy's norms (the DKM rules)."""
    dense = _linear(10, 4)
    norms = np.linalg.norm(dense.weight.detach().numpy().astype(np.float64), axis=0)
    x = torch.randn(5, 10)
    for rule, weights in (
        ("weights", norms),
        ("batch", norms * np.linalg.norm(x.numpy().astype(np.float64), axis=0)),
    ):
        layer = RandomizedLinear.from_linear(dense, samples=3, probabilities=rule, generator=0)
        with _forced_draws([0, 1, 2]) as seen:
            layer(x)
        np.testing.assert_allclose(seen[0].numpy(), weights / weights.sum(), rtol=1e-5)
        assert seen[0].dtype == torch.float32 and seen[0].device == x.device


def test_randomized_linear_reproducible_with_seed():
    dense = _linear()
    x = torch.randn(6, 12)
    a = RandomizedLinear.from_linear(dense, samples=4, generator=7)
    b = RandomizedLinear.from_linear(dense, samples=4, generator=7)
    c = RandomizedLinear.from_linear(dense, samples=4, generator=8)
    ya, yb, yc = a(x), b(x), c(x)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    assert not torch.equal(ya, yc)
    assert not torch.equal(a(x), ya)  # fresh samples on every forward
    a.reseed(7)
    torch.testing.assert_close(a(x), ya, rtol=0, atol=0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    d = RandomizedLinear.from_linear(dense, samples=4, generator=g1)
    e = RandomizedLinear.from_linear(dense, samples=4, generator=g2)
    torch.testing.assert_close(d(x), e(x), rtol=0, atol=0)


def test_randomized_linear_copy_state_dict_and_pickle():
    dense = _linear()
    x = torch.randn(6, 12)
    layer = RandomizedLinear.from_linear(dense, samples=4, generator=11)
    layer(x)  # the generator exists now
    clone = copy.deepcopy(layer)
    fresh = RandomizedLinear(12, 9, samples=4, seed=0)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.seed == 11
    layer.reseed(11)
    y = layer(x)
    torch.testing.assert_close(clone(x), y, rtol=0, atol=0)
    torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    loaded.reseed(11)
    torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)


def test_randomized_linear_more_samples_than_inputs_and_eval_mode():
    dense = _linear(6, 3)
    layer = RandomizedLinear.from_linear(dense, samples=50, generator=0).eval()
    x = torch.randn(4, 6)
    with torch.no_grad():
        y1, y2, exact = layer(x), layer(x), dense(x)
    assert not torch.equal(y1, y2)  # still sampled with replacement, also in eval mode
    assert float((y1 - exact).norm()) < float(exact.norm())
    assert "samples=50" in repr(layer) and "probabilities='weights'" in repr(layer)


def test_randomized_linear_gradients_flow():
    layer = RandomizedLinear.from_linear(_linear(), samples=5, generator=0)
    layer(torch.randn(3, 12)).sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_randomized_conv_geometry_exact_for_a_single_tap(geometry):
    """With one non-zero kernel column every draw picks it: the estimate is exact."""
    geometry = dict(geometry)
    k = geometry.pop("k", 3)
    conv = _conv(3, 4, k, **geometry)
    with torch.no_grad():
        flat = conv.weight.view(4, -1)
        keep = flat[:, 5].clone()
        flat.zero_()
        flat[:, 5] = keep
    layer = RandomizedConv2d.from_conv2d(conv, samples=2, generator=0)
    x = torch.randn(2, 3, 11, 10)
    torch.testing.assert_close(layer(x), conv(x), **F32)
    torch.testing.assert_close(layer(x[0]), conv(x[0]), **F32)


@pytest.mark.parametrize("rule", ["weights", "batch"])
def test_randomized_conv_is_unbiased(rule):
    conv = _conv(2, 3, 3, padding=1)
    layer = RandomizedConv2d.from_conv2d(conv, samples=6, probabilities=rule, generator=1)
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        draws = torch.stack([layer(x) for _ in range(500)])
        exact = conv(x)
    mean, se = draws.mean(0), draws.std(0) / np.sqrt(draws.shape[0])
    assert bool(((mean - exact).abs() <= 5 * se + 1e-5).all())
    assert "samples=6" in repr(layer)


def test_randomized_bad_inputs():
    with pytest.raises(ValueError, match="samples must be an int >= 1, got 0"):
        RandomizedLinear.from_linear(_linear(), samples=0)
    with pytest.raises(TypeError, match="samples must be an int"):
        RandomizedLinear.from_linear(_linear(), samples=2.5)
    with pytest.raises(ValueError, match=r"probabilities must be one of \['batch', 'weights'\]"):
        RandomizedLinear.from_linear(_linear(), samples=2, probabilities="optimal")
    with pytest.raises(TypeError, match="generator must be None .*, an int seed or a torch.Gen"):
        RandomizedLinear.from_linear(_linear(), samples=2, generator="seed")
    with pytest.raises(ValueError, match="groups=1"):
        RandomizedConv2d.from_conv2d(nn.Conv2d(4, 4, 3, groups=4), samples=2)
    with pytest.raises(TypeError, match="conv must be an nn.Conv2d"):
        RandomizedConv2d.from_conv2d(_linear(), samples=2)
    bad = _linear()
    with torch.no_grad():
        bad.bias.zero_()
        bad.weight[1, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        RandomizedLinear.from_linear(bad, samples=2)
    with pytest.raises(TypeError, match="seed must be an int"):
        RandomizedLinear.from_linear(_linear(), samples=2, generator=0).reseed("x")


# ---------------------------------------------------------------------------
# The estimator against exact oracles: every sequence of draws enumerated
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _forced_draws(indices):
    """Make every draw of the sampled product return ``indices``; yield the p it was given."""
    seen = []

    def fake(p, samples, generator, sync_free):
        assert samples == len(indices)
        seen.append(p.detach().clone())
        return torch.tensor(indices, dtype=torch.long, device=p.device)

    original = linalg._draw
    linalg._draw = fake
    try:
        yield seen
    finally:
        linalg._draw = original


def _expectation(layer_call, p_of_call, n, c):
    """``Σ_seq P(seq) · estimate(seq)`` over all ``n**c`` sequences of draws (float64)."""
    total = None
    for seq in itertools.product(range(n), repeat=c):
        with _forced_draws(list(seq)) as seen:
            estimate = layer_call().double()
        p = p_of_call(seen[0]).double()
        weight = float(torch.prod(p[list(seq)]))
        total = weight * estimate if total is None else total + weight * estimate
    return total


def test_scaling_by_hand():
    """(1/c) Σ_t A^(i_t) B_(i_t) / p_(i_t) on a 1×3 by 3×1 product, computed by hand."""
    A = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    B = torch.tensor([[1.0], [10.0], [100.0]], dtype=torch.float64)
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    cases = {
        (0, 2): 0.5 * (1 * 1 / 0.5 + 3 * 100 / 0.25),  # 601
        (2, 2): 0.5 * (2 * 3 * 100 / 0.25),  # drawn twice: gathered once, counted twice
        (1, 0): 0.5 * (2 * 10 / 0.25 + 1 * 1 / 0.5),  # 41
    }
    for sync_free in (False, True):
        for seq, expected in cases.items():
            with _forced_draws(list(seq)):
                got = linalg._sampled_product(A, B, 2, p, None, sync_free=sync_free)
            assert got.shape == (1, 1) and float(got) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("c", [1, 2, 4])
def test_sampled_product_is_exactly_unbiased(sync_free, c):
    """E[estimate] over all n^c draw sequences equals A @ B (numpy), to float64 rounding."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 4, dtype=torch.float64, generator=g)
    B = torch.randn(4, 2, dtype=torch.float64, generator=g)
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    mean = _expectation(
        lambda: linalg._sampled_product(A, B, c, p, None, sync_free=sync_free),
        lambda seen: seen,
        4,
        c,
    )
    np.testing.assert_allclose(mean.numpy(), A.numpy() @ B.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", ["weights", "batch"])
def test_randomized_linear_is_exactly_unbiased(rule):
    """The layer's expectation over every draw sequence is nn.Linear's output."""
    dense = _linear(3, 2)
    layer = RandomizedLinear.from_linear(dense, samples=2, probabilities=rule, generator=0)
    x = torch.randn(4, 3)
    with torch.no_grad():
        mean = _expectation(lambda: layer(x), lambda seen: seen, 3, 2)
        expected = x.double().numpy() @ dense.weight.double().numpy().T
        expected += dense.bias.double().numpy()
    np.testing.assert_allclose(mean.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["weights", "batch"])
def test_randomized_conv_is_exactly_unbiased(rule):
    """The same for the sampled convolution, against F.conv2d (3 kernel taps, c = 2)."""
    conv = _conv(3, 2, (1, 1), padding=0)
    layer = RandomizedConv2d.from_conv2d(conv, samples=2, probabilities=rule, generator=0)
    x = torch.randn(2, 3, 4, 5)
    with torch.no_grad():
        mean = _expectation(lambda: layer(x), lambda seen: seen, 3, 2)
        expected = F.conv2d(x.double(), conv.weight.double(), conv.bias.double())
    np.testing.assert_allclose(mean.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sync_free", [False, True])
def test_draws_follow_the_probabilities(sync_free):
    """Frequencies of 200,000 draws (fixed seed) within 5 standard errors of p."""
    p = torch.tensor([0.5, 0.0, 0.2, 0.25, 0.05])
    idx = linalg._draw(p, 200_000, torch.Generator().manual_seed(0), sync_free)
    freq = torch.bincount(idx, minlength=5).double() / idx.numel()
    se = (p.double() * (1 - p.double()) / idx.numel()).sqrt()
    assert bool(((freq - p.double()).abs() <= 5 * se + 1e-12).all())
    assert int((idx == 1).sum()) == 0  # a zero probability is never drawn


@pytest.mark.parametrize("samples", [3, 6, 40])
def test_both_ways_of_gathering_agree(samples):
    """Exact-size (CPU) and fixed-size (GPU) gathering: same estimate for the same draws."""
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(5, 6, generator=g), torch.randn(6, 4, generator=g)
    p = torch.rand(6, generator=g) + 0.1
    p = p / p.sum()
    draws = torch.multinomial(p, samples, replacement=True, generator=g).tolist()
    with _forced_draws(draws):
        exact = linalg._sampled_product(A, B, samples, p, None, sync_free=False)
        fixed = linalg._sampled_product(A, B, samples, p, None, sync_free=True)
    torch.testing.assert_close(fixed, exact, rtol=1e-6, atol=1e-6)


def test_sync_free_path_reads_nothing_back():
    """The GPU path of a forward runs no op whose result size or value the host must read."""
    from torch.utils._python_dispatch import TorchDispatchMode

    host_reads = {"nonzero", "_local_scalar_dense", "item", "is_nonzero", "bincount", "unique"}

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names, self.big_float64 = [], []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.names.append(func.overloadpacket.__name__)
            outs = out if isinstance(out, (tuple, list)) else [out]
            for t in outs:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.numel() >= 64:
                    self.big_float64.append(func.overloadpacket.__name__)
            return out

    layer = RandomizedLinear.from_linear(_linear(16, 5), samples=4, probabilities="batch")
    x = torch.randn(8, 16)  # 128 entries: a float64 copy of it would be noticed
    with torch.no_grad(), Ops() as ops:
        p, total = layer._probabilities(x, dim=0)
        linalg._sampled_product(x, layer.weight.T, 4, p, None, sync_free=True, poison=total)
    assert not host_reads & set(ops.names), sorted(host_reads & set(ops.names))
    assert not ops.big_float64, ops.big_float64
    assert "multinomial" not in ops.names


def test_randomized_linear_keeps_the_sampled_operand_contiguous():
    """Wᵀ is stored contiguously (sampled rows are contiguous reads), also after loading."""
    layer = RandomizedLinear.from_linear(_linear(12, 9), samples=4, generator=0)
    assert layer.weight.shape == (9, 12) and layer.weight.T.is_contiguous()
    torch.testing.assert_close(layer.weight, _linear(12, 9).weight, rtol=0, atol=0)
    fresh = RandomizedLinear(12, 9, samples=4, seed=0)
    fresh.load_state_dict(layer.state_dict(), assign=True)
    assert fresh.weight.T.is_contiguous()
    torch.testing.assert_close(fresh.weight, layer.weight, rtol=0, atol=0)
    assert fresh.seed == 0 and fresh.weight_probabilities.shape == (12,)
    x = torch.randn(3, 12)
    fresh.reseed(5)
    layer.reseed(5)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("rule", ["weights", "batch"])
def test_randomized_layers_accept_an_empty_batch(rule):
    layer = RandomizedLinear.from_linear(_linear(12, 9), samples=4, probabilities=rule)
    assert layer(torch.randn(0, 12)).shape == nn.Linear(12, 9)(torch.randn(0, 12)).shape
    assert layer(torch.randn(2, 0, 12)).shape == (2, 0, 9)
    conv = RandomizedConv2d.from_conv2d(_conv(3, 5, 3), samples=4, probabilities=rule)
    assert conv(torch.randn(0, 3, 7, 7)).shape == _conv(3, 5, 3)(torch.randn(0, 3, 7, 7)).shape


@pytest.mark.parametrize("rule", ["weights", "batch"])
def test_randomized_layer_input_errors_name_the_input(rule):
    layer = RandomizedLinear.from_linear(_linear(12, 9), samples=4, probabilities=rule)
    for bad in (torch.randn(4, 6), torch.randn(4, 24), torch.tensor(1.0)):
        with pytest.raises(ValueError, match=r"^input must have in_features=12") as info:
            layer(bad)
        assert " B " not in str(info.value) and "A " not in str(info.value)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        layer([1.0] * 12)
    conv = RandomizedConv2d.from_conv2d(_conv(3, 5, 3), samples=4, probabilities=rule)
    with pytest.raises(ValueError, match=r"input must be \(N, C, H, W\).*in_channels = 3"):
        conv(torch.randn(2, 4, 7, 7))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        conv(torch.randn(2, 3, 2, 2))


def test_randomized_layer_input_on_another_device():
    """Inputs must be on the layer's device (checked on the host, before any work)."""
    layer = RandomizedLinear(12, 9, samples=4, seed=0, device="meta")
    with pytest.raises(ValueError, match="input is on cpu but the layer's weights are on meta"):
        layer(torch.randn(3, 12))
    assert layer(torch.randn(3, 12, device="meta")).shape == (3, 9)  # shapes only


def test_randomized_batch_rule_propagates_non_finite_inputs():
    """A NaN in the batch gives a NaN output (as nn.Linear would), not an exception."""
    layer = RandomizedLinear.from_linear(_linear(12, 9), samples=4, probabilities="batch")
    x = torch.randn(3, 12)
    x[1, 3] = float("nan")
    with torch.no_grad():
        assert bool(torch.isnan(layer(x)).all())
        x[1, 3] = float("inf")
        assert not bool(torch.isfinite(layer(x)).any())
