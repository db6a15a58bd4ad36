"""Layers built from factors: exactness at full rank, Eckart–Young error below it,
unbiasedness and reproducibility of the randomized layers, and every bad input."""

import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

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
    dense = _linear(10, 4)
    layer = RandomizedLinear.from_linear(dense, samples=3, probabilities="weights", generator=0)
    norms = np.linalg.norm(dense.weight.detach().numpy(), axis=0)
    p = layer._probabilities(torch.randn(10, 5)).numpy()
    np.testing.assert_allclose(p, norms / norms.sum(), rtol=1e-5)
    batch = RandomizedLinear.from_linear(dense, samples=3, probabilities="batch", generator=0)
    x = torch.randn(5, 10)
    p = batch._probabilities(x.T).numpy()
    w = norms * np.linalg.norm(x.numpy(), axis=0)
    np.testing.assert_allclose(p, w / w.sum(), rtol=1e-5)


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
    with pytest.raises(TypeError, match="generator must be a torch.Generator, an int seed or None"):
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


def test_layer_estimator_matches_linalg_randomized_matmul():
    """The layers' unchecked hot path draws and weighs exactly like the public function."""
    from pruning_utils.linalg import _sampled_product, randomized_matmul, sampling_probabilities

    A, B = torch.randn(6, 20), torch.randn(20, 4)
    p = sampling_probabilities(A, B)
    for samples in (1, 7, 50):
        ours = _sampled_product(A, B, samples, p, torch.Generator().manual_seed(5))
        theirs = randomized_matmul(A, B, samples, p, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rule", ["weights", "batch"])
def test_layer_probabilities_match_the_optimal_rule(rule):
    """The layers' unchecked probabilities equal linalg.sampling_probabilities."""
    from pruning_utils.linalg import sampling_probabilities

    torch.manual_seed(0)
    dense = nn.Linear(12, 5)
    layer = RandomizedLinear.from_linear(dense, samples=4, probabilities=rule)
    X = torch.randn(7, 12)
    norms = dense.weight.detach().norm(dim=0).unsqueeze(1)  # 12 × 1
    if rule == "weights":
        expected = sampling_probabilities(torch.ones(1, 12), norms)
    else:
        expected = sampling_probabilities(norms.T, X.T)
    torch.testing.assert_close(layer._probabilities(X.T), expected)
