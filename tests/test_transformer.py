"""Transformer transforms: stream rotation and slicing, head and MLP-unit removal.

Oracles: the original model's outputs (rotation, full width, full keep), the original
model with its stream projected by hooks (slicing), the original model with heads zeroed by
a hook (head removal), numpy's eigh and least squares (the PCA and the corrections).
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pruning_utils.measure import count_flops
from pruning_utils.methods import get_method, methods_for
from pruning_utils.models import SelfAttention, VisionTransformer, build_model
from pruning_utils.surgery import (
    HeadFit,
    StreamFit,
    UnitFit,
    load_pruned,
    low_rank,
    prune_heads,
    prune_units,
    save_pruned,
    slice_stream,
)

TINY = dict(dim=16, depth=2, heads=4, hidden=24)


def tiny_vit(seed: int = 0) -> nn.Module:
    """A random tiny ViT whose norm scales, class token and biases are all non-trivial."""
    model = build_model("vit", seed=seed, **TINY)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(24, 1, 28, 28, generator=torch.Generator().manual_seed(7))


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(before, model):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


# ----------------------------------------------------------------------------- the model


def test_vit_shapes_and_parameters():
    model = build_model("vit", seed=0)
    assert isinstance(model, VisionTransformer)
    assert sum(p.numel() for p in model.parameters()) == 138_442  # the models table
    assert outputs(model, torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert model.embed.tokens == 17
    with pytest.raises(ValueError, match="heads must divide dim"):
        VisionTransformer(dim=10, heads=4)


def test_attention_matches_torch_sdpa():
    attn = SelfAttention(dim=8, heads=2, head_dim=3)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    q, k, v = (attn.split(layer(x)) for layer in (attn.q, attn.k, attn.v))
    z = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 6)
    torch.testing.assert_close(attn(x), attn.out(z), atol=1e-6, rtol=1e-5)


def test_flops_count_every_product():
    model = build_model("vit", seed=0)
    d, T, H, d_h, d_ff = 64, 17, 4, 16, 128
    block = 2 * T * (4 * d * d + 2 * d * d_ff) + 2 * 2 * H * T * T * d_h
    expected = 2 * 16 * 49 * d + 4 * block + 2 * d * 10
    assert count_flops(model, torch.zeros(1, 1, 28, 28)) == expected


# ----------------------------------------------------------------------------- the stream


def test_rotation_without_slicing_is_exact(images):
    model = tiny_vit()
    before = state(model)
    rotated = slice_stream(model, keep=1.0, data=images)
    assert_unchanged(before, model)
    torch.testing.assert_close(outputs(rotated, images), outputs(model, images),
                               atol=2e-5, rtol=1e-5)
    assert rotated.pruning_report.transform == "slice_stream"
    assert rotated.block1.norm1.weight is None  # the scale went into q, k, v


def test_rotated_stream_is_the_stream_times_q(images):
    model = tiny_vit()
    fit = StreamFit(model, images)
    rotated = fit.prune(keep=1.0)
    seen = {}
    for name, m in (("dense", model), ("rotated", rotated)):
        m.block2.norm1.register_forward_pre_hook(
            lambda _m, args, name=name: seen.__setitem__(name, args[0].detach()))
        outputs(m, images)
    Q = fit.rotation.to(torch.float32)
    torch.testing.assert_close(seen["rotated"], seen["dense"] @ Q, atol=5e-5, rtol=1e-4)


def test_stream_pca_matches_numpy_eigh(images):
    model = tiny_vit()
    fit = StreamFit(model, images)
    stream = []
    names = ["block1.norm1", "block1.norm2", "block2.norm1", "block2.norm2", "norm"]
    for name in names:
        model.get_submodule(name).register_forward_pre_hook(
            lambda _m, args: stream.append(args[0].reshape(-1, 16).double().numpy()))
    outputs(model, images)
    X = np.concatenate(stream)
    values, vectors = np.linalg.eigh(X.T @ X / len(X))
    np.testing.assert_allclose(fit.eigenvalues.numpy(), values[::-1], rtol=1e-8, atol=1e-10)
    Q = fit.rotation.numpy()
    np.testing.assert_allclose(Q.T @ Q, np.eye(16), atol=1e-10)
    # same axes up to sign
    np.testing.assert_allclose(np.abs(Q.T @ vectors[:, ::-1]), np.eye(16), atol=1e-6)


def test_full_width_equals_original(images):
    model = tiny_vit()
    for sliced in (slice_stream(model, keep=1.0, data=images),
                   slice_stream(model, variance=1.0, data=images)):
        assert sliced.pruning_report.settings["width"] == 16
        torch.testing.assert_close(outputs(sliced, images), outputs(model, images),
                                   atol=2e-5, rtol=1e-5)


def test_sliced_model_equals_original_with_projected_stream(images):
    model = tiny_vit()
    fit = StreamFit(model, images)
    sliced = fit.prune(keep=0.5)
    assert sliced.embed.proj.out_features == 8 and sliced.head.in_features == 8
    assert sliced.block1.norm1.mean_over == 16
    Q = fit.rotation[:, :8].to(torch.float32)
    P = Q @ Q.T  # projection onto the leading 8 axes
    oracle = tiny_vit()
    for name in ("embed", "block1.attn", "block1.mlp", "block2.attn", "block2.mlp"):
        oracle.get_submodule(name).register_forward_hook(lambda _m, _a, out: out @ P)
    torch.testing.assert_close(outputs(sliced, images), outputs(oracle, images),
                               atol=5e-5, rtol=1e-4)
    assert sliced.pruning_report.params_after < sliced.pruning_report.params_before


def test_variance_picks_the_smallest_width(images):
    fit = StreamFit(tiny_vit(), images)
    energy = (fit.eigenvalues.cumsum(0) / fit.eigenvalues.sum()).numpy()
    for v in (0.5, 0.9, 0.99):
        assert fit.width_for(variance=v) == int(np.searchsorted(energy, v - 1e-12) + 1)


# ----------------------------------------------------------------------------- heads


def test_removed_heads_equal_zeroed_heads(images):
    model = tiny_vit()
    before = state(model)
    pruned = prune_heads(model, 0.5, data=images, correct=False)
    assert_unchanged(before, model)
    kept = pruned.pruning_report.settings["kept"]
    assert all(len(heads) == 2 for heads in kept.values())
    oracle = tiny_vit()
    for block, heads in kept.items():
        mask = torch.zeros(16)
        for h in heads:
            mask[h * 4:(h + 1) * 4] = 1
        oracle.get_submodule(f"{block}.attn.out").register_forward_pre_hook(
            lambda _m, args, mask=mask: (args[0] * mask,))
    torch.testing.assert_close(outputs(pruned, images), outputs(oracle, images),
                               atol=2e-5, rtol=1e-5)
    assert pruned.block1.attn.heads == 2 and pruned.block1.attn.q.out_features == 8


@pytest.mark.parametrize("correct", [True, False])
def test_all_heads_kept_is_exact(images, correct):
    model = tiny_vit()
    pruned = prune_heads(model, 1.0, data=images, correct=correct)
    torch.testing.assert_close(outputs(pruned, images), outputs(model, images),
                               atol=2e-5, rtol=1e-5)


def test_first_head_has_the_largest_contribution(images):
    model = tiny_vit()
    fit = HeadFit(model, images)
    Z = fit.outputs["block1"]
    W = model.block1.attn.out.weight.detach().double()
    norms = [float((Z[:, h * 4:(h + 1) * 4] @ W[:, h * 4:(h + 1) * 4].T).norm())
             for h in range(4)]
    assert fit.heads_for(0.25)["block1"] == [int(np.argmax(norms))]


def test_head_correction_is_the_least_squares_refit(images):
    model = tiny_vit()
    fit = HeadFit(model, images)
    corrected, plain = fit.prune(0.5), fit.prune(0.5, correct=False)
    Z = fit.outputs["block1"].numpy()
    kept = corrected.pruning_report.settings["kept"]["block1"]
    cols = np.concatenate([np.arange(h * 4, (h + 1) * 4) for h in kept])
    W = model.block1.attn.out.weight.detach().double().numpy()
    T = np.linalg.lstsq(Z[:, cols], Z, rcond=None)[0]
    np.testing.assert_allclose(corrected.block1.attn.out.weight.detach().numpy(), W @ T.T,
                               atol=1e-5, rtol=1e-4)
    # the refit is at least as close to the dense block's output as dropping the heads
    error = {}
    for name, m in (("corrected", corrected), ("plain", plain)):
        out = m.block1.attn.out.weight.detach().double().numpy()
        error[name] = np.linalg.norm(Z @ W.T - Z[:, cols] @ out.T)
    assert error["corrected"] <= error["plain"] + 1e-9


# ----------------------------------------------------------------------------- MLP units


def test_all_units_kept_is_exact(images):
    model = tiny_vit()
    pruned = prune_units(model, 1.0, data=images)
    torch.testing.assert_close(outputs(pruned, images), outputs(model, images),
                               atol=2e-5, rtol=1e-5)


def test_units_fold_the_interpolation_into_down(images):
    model = tiny_vit()
    before = state(model)
    pruned = prune_units(model, 0.5, data=images)
    assert_unchanged(before, model)
    assert pruned.block1.mlp.up.out_features == 12 == pruned.block1.mlp.hidden
    A = []
    model.block1.mlp.down.register_forward_pre_hook(
        lambda _m, args: A.append(args[0].reshape(-1, 24).double().numpy()))
    outputs(model, images)
    A = A[0]
    # the kept units are rows of up; down is W_down Tᵀ with T the least squares A ≈ A_J T
    W_up = model.block1.mlp.up.weight.detach().numpy()
    new_up = pruned.block1.mlp.up.weight.detach().numpy()
    J = [int(np.flatnonzero((W_up == row).all(axis=1))[0]) for row in new_up]
    T = np.linalg.lstsq(A[:, J], A, rcond=None)[0]
    W_down = model.block1.mlp.down.weight.detach().double().numpy()
    np.testing.assert_allclose(pruned.block1.mlp.down.weight.detach().numpy(), W_down @ T.T,
                               atol=1e-4, rtol=1e-3)


def test_unit_fit_equals_prune_units(images):
    model = tiny_vit()
    fit = UnitFit(model, images)
    for keep in (0.25, 0.75):
        a, b = fit.prune(keep), prune_units(model, keep, data=images)
        torch.testing.assert_close(outputs(a, images), outputs(b, images))


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("keep, error", [(0.0, ValueError), (1.5, ValueError),
                                         (float("nan"), ValueError), ("half", TypeError)])
@pytest.mark.parametrize("transform", [prune_heads, prune_units, slice_stream])
def test_keep_out_of_range(images, transform, keep, error):
    with pytest.raises(error, match="keep"):
        transform(tiny_vit(), keep, data=images)


def test_slice_stream_wants_one_setting(images):
    with pytest.raises(ValueError, match="exactly one of keep and variance"):
        slice_stream(tiny_vit(), keep=0.5, variance=0.9, data=images)
    with pytest.raises(ValueError, match="variance"):
        slice_stream(tiny_vit(), variance=0.0, data=images)


@pytest.mark.parametrize("transform", [prune_heads, prune_units, slice_stream])
def test_model_without_the_structure(images, transform):
    with pytest.raises(ValueError, match="pre-norm transformer"):
        transform(build_model("simple-mlp"), 0.5, data=images)
    layer_norm = tiny_vit()
    layer_norm.norm = nn.LayerNorm(16)
    with pytest.raises(ValueError, match="RMSNorm"):
        transform(layer_norm, 0.5, data=images)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        transform("vit", 0.5, data=images)


def test_factorized_model_is_refused(images):
    factorized = low_rank(tiny_vit(), rank=2, skip_unprofitable=False)
    with pytest.raises(ValueError, match="not plain nn.Linear"):
        slice_stream(factorized, keep=0.5, data=images)


@pytest.mark.parametrize("transform", [prune_heads, prune_units, slice_stream])
def test_bad_data(transform):
    with pytest.raises(ValueError, match="data is required"):
        transform(tiny_vit(), 0.5, data=None)
    with pytest.raises(ValueError, match="data does not fit the model"):
        transform(tiny_vit(), 0.5, data=torch.zeros(4, 1, 27, 28))


# ----------------------------------------------------------------------------- save, registry


def test_save_load_round_trip(images, tmp_path):
    model = tiny_vit()
    pruned = prune_units(prune_heads(slice_stream(model, keep=0.5, data=images), 0.5,
                                     data=images), 0.5, data=images)
    pruned = low_rank(pruned, rank=2, data=images)
    path = tmp_path / "vit.pt"
    save_pruned(pruned, path)
    loaded = load_pruned(path, base_model=build_model("vit", **TINY))
    torch.testing.assert_close(outputs(loaded, images), outputs(pruned, images))
    assert loaded.pruning_report.transform == "low_rank"
    assert loaded.block2.attn.heads == 2 and loaded.block2.norm2.mean_over == 16


def test_whitened_low_rank_at_full_rank_is_exact(images):
    model = tiny_vit()
    full = low_rank(model, rank=16, data=images, skip_unprofitable=False)
    torch.testing.assert_close(outputs(full, images), outputs(model, images),
                               atol=5e-5, rtol=1e-4)


def test_registry_offers_the_transformer_methods(images):
    names = [m.name for m in methods_for("transformer")]
    for name in ("slice_stream", "prune_heads", "prune_units", "low_rank_energy",
                 "low_rank_data"):
        assert name in names
    assert "pca_weights" not in names
    model = tiny_vit()
    for name, value in (("slice_stream", 0.75), ("prune_heads", 0.5), ("prune_units", 0.5)):
        method = get_method(name)
        applied = method.prune(model, value, data=images)
        fitted = method.fitted(model, data=images)(value)
        torch.testing.assert_close(outputs(applied, images), outputs(fitted, images))
