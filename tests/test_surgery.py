"""Model surgery: exactness where the theory says so, smaller models below it, the input
model left untouched, reports, save/load round trips, and every bad input."""

import copy
import io
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision  # noqa: E402 (a dependency of the library)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pruning_utils.layers import (
    LowRankConv2d,
    LowRankLinear,
    RandomizedConv2d,
    RandomizedLinear,
    SpatialLowRankConv2d,
)
from pruning_utils.surgery import (
    PruningReport,
    fold_batchnorm,
    load_pruned,
    low_rank,
    pca_prune,
    randomize,
    save_pruned,
)


def _mlp(widths=(20, 32, 24, 5), act=nn.ReLU, bias=True, seed=0):
    torch.manual_seed(seed)
    layers = OrderedDict(flatten=nn.Flatten())
    for i in range(1, len(widths)):
        layers[f"fc{i}"] = nn.Linear(widths[i - 1], widths[i], bias=bias)
        if act is not None and i < len(widths) - 1:
            layers[f"act{i}"] = act()
    return nn.Sequential(layers)


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 3, padding=1),
            bn1=nn.BatchNorm2d(6),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 8, 3, padding=1, bias=False),
            bn2=nn.BatchNorm2d(8),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(8 * 3 * 3, 16),
            relu3=nn.ReLU(),
            fc2=nn.Linear(16, 4),
        )
    )


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))
    return model


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, state):
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k


def _rel_err(a, b):
    return float(((a - b).norm() / b.norm()).detach())


# ---------------------------------------------------------------------------
# low_rank
# ---------------------------------------------------------------------------


def test_low_rank_full_rank_reproduces_mlp_and_leaves_input_alone():
    model = _mlp().eval()
    state = _state(model)
    x = torch.randn(7, 20)
    new = low_rank(model, rank=1000, skip_unprofitable=False)
    _assert_same_state(model, state)
    assert all(isinstance(m, nn.Linear) for m in (model.fc1, model.fc2, model.fc3))
    assert all(isinstance(m, LowRankLinear) for m in (new.fc1, new.fc2, new.fc3))
    torch.testing.assert_close(new(x), model(x), rtol=1e-4, atol=1e-5)
    report = new.pruning_report
    assert isinstance(report, PruningReport)
    frame = report.to_frame()
    assert list(frame["name"]) == ["fc1", "fc2", "fc3"]
    assert list(frame["rank"]) == [20, 24, 5]
    assert all("clipped" in note for note in frame["note"])
    assert report.params_before == sum(p.numel() for p in model.parameters())
    assert report.params_after == sum(p.numel() for p in new.parameters())
    assert report.ratio > 1  # full rank costs more
    assert "<table" in report._repr_html_() and "low_rank" in repr(report)


def test_low_rank_skips_unprofitable_layers():
    model = _mlp((20, 32, 24, 5))
    # r* = 20·32/52 = 12.3, 32·24/56 = 13.7, 24·5/29 = 4.1
    new = low_rank(model, rank=8)
    assert isinstance(new.fc1, LowRankLinear) and new.fc1.rank == 8
    assert isinstance(new.fc2, LowRankLinear) and new.fc2.rank == 8
    assert isinstance(new.fc3, nn.Linear)  # min(24, 5) = 5 >= 4.1: kept dense
    row = new.pruning_report.to_frame().set_index("name").loc["fc3"]
    assert bool(row["skipped"]) and row["break_even"] == pytest.approx(24 * 5 / 29)
    assert new.pruning_report.params_after < new.pruning_report.params_before
    kept = low_rank(model, rank=8, skip_unprofitable=False)
    assert isinstance(kept.fc3, LowRankLinear) and kept.fc3.rank == 5


def test_low_rank_energy_and_rank_dict():
    model = _mlp((40, 64, 48, 5))
    new = low_rank(model, energy=0.5)
    assert new.pruning_report.params_after < new.pruning_report.params_before
    s = np.linalg.svd(model.fc1.weight.detach().numpy().astype(np.float64), compute_uv=False)
    expected = int(np.searchsorted(np.cumsum(s**2) / (s**2).sum(), 0.5) + 1)
    assert new.fc1.rank == expected
    only = low_rank(model, rank={"fc2": 3})
    assert isinstance(only.fc2, LowRankLinear) and only.fc2.rank == 3
    assert isinstance(only.fc1, nn.Linear) and isinstance(only.fc3, nn.Linear)
    assert list(only.pruning_report.to_frame()["name"]) == ["fc2"]


def test_low_rank_data_aware_beats_plain_on_calibration_data():
    torch.manual_seed(0)
    model = _mlp((16, 24, 24, 4), act=nn.Tanh).eval()
    X = torch.randn(256, 3) @ torch.randn(3, 16) + 0.05 * torch.randn(256, 16)
    plain = low_rank(model, rank=3)
    aware = low_rank(
        model, rank=3, data=DataLoader(TensorDataset(X, torch.zeros(256)), batch_size=64)
    )
    y = model(X)
    assert _rel_err(aware(X), y) < _rel_err(plain(X), y)
    assert "data-aware" in aware.pruning_report.to_frame()["note"].iloc[0]


def test_low_rank_cnn_channel_and_spatial_schemes_and_grouped_conv():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(8, 6, (3, 5), stride=(2, 1), padding=(1, 2)),
        nn.Flatten(),
        nn.Linear(6 * 4 * 8, 3),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    for scheme, cls in (("channel", LowRankConv2d), ("spatial", SpatialLowRankConv2d)):
        new = low_rank(model, rank=10**6, scheme=scheme, skip_unprofitable=False)
        assert isinstance(new[0], cls) and isinstance(new[4], cls)
        assert isinstance(new[2], nn.Conv2d)  # grouped: kept
        torch.testing.assert_close(new(x), model(x), rtol=1e-4, atol=1e-5)
        note = new.pruning_report.to_frame().set_index("name").loc["2", "note"]
        assert "grouped" in note
    spatial = low_rank(model, energy=0.6, scheme="spatial", layers=(nn.Conv2d,))
    assert isinstance(spatial[6], nn.Linear)


def _full_ranks(model, max_entries=300_000, always=()):
    """Full rank of every ungrouped layer whose matrix is small (keeps the SVDs fast)."""
    ranks = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and getattr(m, "groups", 1) == 1:
            W = m.weight.reshape(m.weight.shape[0], -1)
            if W.numel() <= max_entries or name in always:
                ranks[name] = min(W.shape)
    return ranks


@pytest.mark.parametrize(("arch", "always"), [("resnet18", ("fc",)), ("densenet121", ())])
def test_low_rank_torchvision_full_rank_reproduces_logits(arch, always):
    """Residual additions, concatenations, downsample branches and BatchNorm untouched."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    state = _state(model)
    x = torch.randn(1, 3, 64, 64)
    ranks = _full_ranks(model, always=always)
    assert len(ranks) > 10
    with torch.no_grad():
        y = model(x)
        full = low_rank(model, rank=ranks, skip_unprofitable=False)
        assert all(
            isinstance(full.get_submodule(name), (LowRankLinear, LowRankConv2d)) for name in ranks
        )
        torch.testing.assert_close(full(x), y, rtol=1e-4, atol=1e-4 * float(y.abs().max()))
        small = low_rank(model, rank=16)
        assert small(x).shape == y.shape
    assert small.pruning_report.params_after < 0.5 * small.pruning_report.params_before
    assert sum(p.numel() for p in small.parameters()) == small.pruning_report.params_after
    _assert_same_state(model, state)


def test_low_rank_alexnet_convolutions_full_rank():
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    new = low_rank(model, rank=10**6, layers=(nn.Conv2d,), skip_unprofitable=False)
    assert sum(isinstance(m, LowRankConv2d) for m in new.features) == 5
    assert isinstance(new.classifier[1], nn.Linear)
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(new(x), y, rtol=1e-4, atol=1e-4 * float(y.abs().max()))


@pytest.mark.parametrize("transform", ["low_rank", "randomize"])
def test_fused_transformer_layers_stay_dense_and_say_so(transform):
    """A TransformerEncoderLayer's eval fast path reads linear1.weight directly: its layers
    are left dense with a warning, so the model computes what the report says."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), nn.Linear(16, 16)
    )
    x = torch.randn(3, 5, 16)
    with pytest.warns(UserWarning, match="fused inference path"):
        if transform == "low_rank":
            new = low_rank(model, rank=2)
        else:
            new = randomize(model, 4, generator=0)
    names = [row.name for row in new.pruning_report.layers]
    assert names == ["1"]  # only the head; nothing inside the fused block
    assert isinstance(new[0].linear1, nn.Linear) and type(new[0].linear1) is nn.Linear
    for mode in ("train", "eval"):
        getattr(model, mode)(), getattr(new, mode)()
        with torch.no_grad():
            torch.testing.assert_close(new[0](x), model[0](x))


def test_low_rank_bad_inputs():
    model = _mlp()
    with pytest.raises(ValueError, match="exactly one of rank"):
        low_rank(model)
    with pytest.raises(ValueError, match="exactly one of rank"):
        low_rank(model, rank=2, energy=0.5)
    with pytest.raises(ValueError, match="rank must be an int >= 1, got 0"):
        low_rank(model, rank=0)
    with pytest.raises(TypeError, match="rank must be an int"):
        low_rank(model, rank=2.5)
    with pytest.raises(ValueError, match=r"energy must be a float in \(0, 1\], got 0.0"):
        low_rank(model, energy=0.0)
    with pytest.raises(ValueError, match=r"energy must be a float in \(0, 1\]"):
        low_rank(model, energy=1.01)
    with pytest.raises(ValueError, match=r"rank\['fc3'\] must be an int in \[1, 5\], got 6"):
        low_rank(model, rank={"fc3": 6})
    with pytest.raises(ValueError, match="not eligible"):
        low_rank(model, rank={"fc9": 2})
    with pytest.raises(ValueError, match=r"scheme must be one of \['channel', 'spatial'\]"):
        low_rank(model, rank=2, scheme="tucker")
    with pytest.raises(ValueError, match="layers must contain only nn.Linear and nn.Conv2d"):
        low_rank(model, rank=2, layers=(nn.ReLU,))
    with pytest.raises(ValueError, match="nothing to factorize"):
        low_rank(nn.Sequential(nn.ReLU()), rank=2)
    with pytest.raises(ValueError, match="nothing to factorize"):
        low_rank(model, rank=2, layers=(nn.Conv2d,))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        low_rank("model", rank=2)
    with pytest.raises(ValueError, match="data does not fit the model.*in_features=20"):
        low_rank(model, rank=2, data=torch.randn(4, 7))
    with pytest.raises(TypeError, match="data must be a tensor of inputs or an iterable"):
        low_rank(model, rank=2, data=3)
    bad = _mlp()
    with torch.no_grad():
        bad.fc2.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="fc2.weight must contain only finite values"):
        low_rank(bad, rank=2)
    with pytest.raises(ValueError, match="grouped convolution"):
        low_rank(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), rank={"0": 1})


# ---------------------------------------------------------------------------
# fold_batchnorm
# ---------------------------------------------------------------------------


def test_fold_batchnorm_keeps_eval_outputs():
    model = _cnn()
    model.add_module("bn_out", nn.BatchNorm1d(4))
    model = _randomize_bn(model).eval()
    mlp_bn = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    _randomize_bn(mlp_bn).eval()
    for m, x in ((model, torch.randn(3, 1, 12, 12)), (mlp_bn, torch.randn(4, 5))):
        state = _state(m)
        folded = fold_batchnorm(m)
        _assert_same_state(m, state)
        assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in folded.modules())
        torch.testing.assert_close(folded.eval()(x), m(x), rtol=1e-4, atol=1e-5)
    assert isinstance(fold_batchnorm(model).conv2.bias, nn.Parameter)  # created
    assert len(fold_batchnorm(model).pruning_report.layers) == 3


def test_fold_batchnorm_leaves_bn_without_running_stats():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3, track_running_stats=False))
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.BatchNorm2d) and folded.pruning_report.layers[0].skipped


# ---------------------------------------------------------------------------
# pca_prune
# ---------------------------------------------------------------------------


def test_pca_activations_reproduces_linear_chain_on_calibration_data():
    model = _mlp((20, 32, 24, 5), act=None).eval()
    X = torch.randn(10, 20)  # 10 samples: centred hidden outputs have rank <= 9
    state = _state(model)
    new = pca_prune(model, variance=1.0, method="activations", data=X)
    _assert_same_state(model, state)
    torch.testing.assert_close(new(X), model(X), rtol=1e-4, atol=1e-4)
    assert new.fc1.out_features == 9 and new.fc2.out_features == 9
    assert new.fc3.out_features == 5
    assert new.pruning_report.params_after < new.pruning_report.params_before
    low = pca_prune(model, variance=0.6, method="activations", data=X)
    assert low.fc1.out_features < 9


def test_pca_activations_relu_net_bottleneck_exact_at_full_variance():
    model = _mlp((20, 64, 48, 5)).eval()
    X = torch.randn(12, 20)
    new = pca_prune(model, variance=1.0, method="activations", data=X)
    torch.testing.assert_close(new(X), model(X), rtol=1e-4, atol=1e-4)
    assert isinstance(new.fc2, LowRankLinear) and new.fc2.rank <= 11
    assert new.pruning_report.params_after < new.pruning_report.params_before
    assert new.pruning_report.to_frame().set_index("name").loc["fc2", "change"] == "bottleneck"


def _rank_deficient_relu_mlp():
    """Hidden units 3 and 4 of fc1 are positive multiples of units 0 and 1 (rank-deficient)."""
    model = _mlp((6, 10, 8, 3)).eval()
    with torch.no_grad():
        model.fc1.weight[3:5] = 2.0 * model.fc1.weight[0:2]
        model.fc1.bias[3:5] = 2.0 * model.fc1.bias[0:2]
    return model


def test_pca_interpolative_reproduces_relu_mlp_at_activation_rank():
    model = _mlp((20, 32, 24, 5)).eval()
    X = torch.randn(6, 20)  # N = 6 < widths: each activation matrix has rank <= 6
    new = pca_prune(model, variance=1.0, method="interpolative", data=X)
    torch.testing.assert_close(new(X), model(X), rtol=1e-4, atol=1e-4)
    H1 = torch.relu(model.fc1(X))
    assert new.fc1.out_features == int(torch.linalg.matrix_rank(H1))
    assert isinstance(new.act1, nn.ReLU)  # still Linear -> ReLU, narrower
    # structural redundancy: exact on fresh inputs too
    red = _rank_deficient_relu_mlp()
    Z = torch.randn(200, 6)
    pruned = pca_prune(red, variance=1.0, method="interpolative", data=Z)
    assert pruned.fc1.out_features == 8
    fresh = torch.randn(50, 6)
    torch.testing.assert_close(pruned(fresh), red(fresh), rtol=1e-4, atol=1e-4)
    smaller = pca_prune(model, variance=0.7, method="interpolative", data=X)
    assert smaller.fc1.out_features < new.fc1.out_features
    assert smaller.pruning_report.params_after < new.pruning_report.params_after


def _algorithm2_numpy(weights, biases, variance):
    """Hand implementation of the original Algorithm 2 (numpy, float64)."""
    out_w, out_b, P_prev = [], [], None
    for i, (W, b) in enumerate(zip(weights, biases, strict=True)):
        W, b = W.astype(np.float64), b.astype(np.float64)
        W_in = W if P_prev is None else W @ P_prev
        if i == len(weights) - 1:
            out_w.append(W_in)
            out_b.append(b)
            break
        Wc = W - W.mean(axis=0, keepdims=True)
        U, s, _ = np.linalg.svd(Wc, full_matrices=False)
        ratio = np.cumsum(s**2) / (s**2).sum()
        j = int(np.searchsorted(ratio, variance) + 1)
        P = U[:, :j]
        out_w.append(P.T @ W_in)
        out_b.append(P.T @ b)
        P_prev = P
    return out_w, out_b


def test_pca_weights_matches_numpy_algorithm_2():
    model = _mlp((12, 10, 8, 3), act=None)
    Ws = [model[i].weight.detach().numpy() for i in (1, 2, 3)]
    bs = [model[i].bias.detach().numpy() for i in (1, 2, 3)]
    for variance in (0.5, 0.9):
        new = pca_prune(model, variance=variance, method="weights")
        exp_w, exp_b = _algorithm2_numpy(Ws, bs, variance)
        # singular vectors are defined up to sign: compare shapes, then the composed map
        for layer, w in zip((new.fc1, new.fc2, new.fc3), exp_w, strict=True):
            assert layer.weight.shape == w.shape
        got = [new.fc1, new.fc2, new.fc3]
        x = np.random.default_rng(0).standard_normal((5, 12))
        h_exp, h_got = x, torch.from_numpy(x).float()
        for w, b, layer in zip(exp_w, exp_b, got, strict=True):
            h_exp = h_exp @ w.T + b
            h_got = layer(h_got)
        np.testing.assert_allclose(h_got.detach().numpy(), h_exp, rtol=1e-4, atol=1e-4)


def test_pca_weights_exactness_and_its_loss():
    # bias-free chain whose hidden layers have zero column means: exact at variance 1
    model = _mlp((12, 10, 8, 3), act=None, bias=False)
    with torch.no_grad():
        for layer in (model.fc1, model.fc2):
            layer.weight -= layer.weight.mean(dim=0, keepdim=True)
    x = torch.randn(6, 12)
    new = pca_prune(model, variance=1.0, method="weights")
    torch.testing.assert_close(new(x), model(x), rtol=1e-4, atol=1e-5)
    assert new.fc1.out_features == 9  # the all-ones direction is dropped: rank 10 - 1
    # a general chain loses the mean over units even at variance 1
    general = _mlp((12, 10, 8, 3), act=None, seed=3)
    lossy = pca_prune(general, variance=1.0, method="weights")
    assert _rel_err(lossy(x), general(x)) > 1e-3


def test_pca_prune_on_book_models_and_loader():
    from pruning_utils.models import MLP

    model = MLP((784, 64, 32, 10)).eval()
    X = torch.randn(40, 1, 28, 28)
    loader = DataLoader(TensorDataset(X, torch.zeros(40)), batch_size=16)
    new = pca_prune(model, variance=1.0, method="interpolative", data=loader)
    torch.testing.assert_close(new(X), model(X), rtol=1e-4, atol=1e-4)
    assert new.fc1.out_features < 64
    by_layer = pca_prune(model, variance={"fc2": 0.5}, method="activations", data=X)
    assert by_layer.fc1.out_features == 64 and by_layer.pruning_report.to_frame().shape[0] == 3
    listed = pca_prune(model, variance=[1.0, 0.5], method="interpolative", data=X)
    assert listed.fc2.out_features < new.fc2.out_features


def _duplicated_channel_cnn():
    """conv1 channels 3..5 = 2 × channels 0..2; conv2 channels 4..7 = 3 × channels 0..3."""
    model = _randomize_bn(_cnn()).eval()
    with torch.no_grad():
        for conv, bn, half in ((model.conv1, model.bn1, 3), (model.conv2, model.bn2, 4)):
            conv.weight[half:] = conv.weight[:half]
            if conv.bias is not None:
                conv.bias[half:] = conv.bias[:half]
            for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias):
                t[half:] = t[:half]
            bn.weight[half:] *= 3.0
            bn.bias[half:] *= 3.0
    return model


def test_pca_interpolative_prunes_cnn_channels_exactly_when_redundant():
    model = _duplicated_channel_cnn()
    state = _state(model)
    X = torch.randn(8, 1, 12, 12)
    new = pca_prune(model, variance=1.0, method="interpolative", data=X)
    _assert_same_state(model, state)
    assert new.conv1.out_channels == 3 and new.conv2.out_channels == 4
    assert new.conv2.in_channels == 3 and new.fc1.in_features == 4 * 3 * 3
    assert isinstance(new.bn1, nn.Identity)  # folded first
    fresh = torch.randn(5, 1, 12, 12)
    torch.testing.assert_close(new(fresh), model(fresh), rtol=1e-4, atol=1e-4)
    smaller = pca_prune(model, variance=0.8, method="interpolative", data=X, max_rows=200)
    assert smaller.pruning_report.params_after < new.pruning_report.params_after


def test_pca_prune_bad_inputs():
    model = _mlp()
    X = torch.randn(8, 20)
    with pytest.raises(
        ValueError, match=r"method must be one of \['weights', 'activations', 'interpolative'\]"
    ):
        pca_prune(model, 0.9, method="svd")
    with pytest.raises(ValueError, match=r"variance must be a float in \(0, 1\], got 0.0"):
        pca_prune(model, 0.0)
    with pytest.raises(ValueError, match=r"variance must be a float in \(0, 1\], got 1.5"):
        pca_prune(model, 1.5)
    with pytest.raises(TypeError, match="variance must be a float"):
        pca_prune(model, "high")
    with pytest.raises(ValueError, match="one value per hidden layer"):
        pca_prune(model, [0.9])
    with pytest.raises(ValueError, match="data is required for method='activations'"):
        pca_prune(model, 0.9, method="activations")
    with pytest.raises(ValueError, match="data is required for method='interpolative'"):
        pca_prune(model, 0.9, method="interpolative")
    with pytest.raises(ValueError, match="expects 20 input features, got 7"):
        pca_prune(model, 0.9, method="activations", data=torch.randn(8, 7))
    with pytest.raises(ValueError, match="no hidden layer to prune"):
        pca_prune(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 0.9)
    with pytest.raises(ValueError, match="no hidden layer to prune"):
        pca_prune(
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3)),
            0.9,
            method="activations",
            data=torch.randn(4, 1, 12, 12),
        )
    with pytest.raises(TypeError, match="model must be an nn.Sequential"):
        pca_prune(torchvision.models.alexnet(weights=None), 0.9)
    with pytest.raises(ValueError, match="is not an elementwise activation"):
        pca_prune(nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1), nn.Linear(4, 2)), 0.9)
    with pytest.raises(ValueError, match="grouped convolution"):
        pca_prune(
            nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Conv2d(4, 2, 1)),
            0.9,
            method="interpolative",
            data=torch.randn(2, 2, 5, 5),
        )
    bad = _mlp()
    with torch.no_grad():
        bad.fc1.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="fc1.weight must contain only finite values"):
        pca_prune(bad, 0.9)
    with pytest.raises(ValueError, match="at least 2 inputs"):
        pca_prune(model, 0.9, method="activations", data=X[:1])


def test_pca_prune_cnn_hidden_layers_only_between_linears_for_mlp_methods():
    model = _randomize_bn(_cnn()).eval()
    X = torch.randn(30, 1, 12, 12)
    new = pca_prune(model, variance=1.0, method="activations", data=X)
    assert new.conv1.out_channels == 6  # convolutions are the untouched prefix
    torch.testing.assert_close(new(X), model(X), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# randomize
# ---------------------------------------------------------------------------


def test_randomize_swaps_layers_reproducibly():
    model = _cnn().eval()
    state = _state(model)
    new = randomize(model, samples=0.5, layers=(nn.Linear, nn.Conv2d), generator=3)
    _assert_same_state(model, state)
    assert isinstance(new.fc1, RandomizedLinear) and isinstance(new.conv2, RandomizedConv2d)
    assert new.fc1.samples == 36 and new.conv1.samples == 5  # ceil(0.5 · 72), ceil(0.5 · 9)
    frame = new.pruning_report.to_frame()
    assert list(frame["samples"]) == [5, 27, 36, 8]
    again = randomize(model, samples=0.5, layers=(nn.Linear, nn.Conv2d), generator=3)
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(new(x), again(x), rtol=0, atol=0)
    ints = randomize(_mlp(), samples=4, probabilities="batch")
    assert ints.fc1.samples == 4 and ints.fc1.probabilities == "batch"


def test_randomize_bad_inputs():
    with pytest.raises(ValueError, match="samples must be an int >= 1, got 0"):
        randomize(_mlp(), samples=0)
    with pytest.raises(ValueError, match=r"samples must be a float in \(0, 1\]"):
        randomize(_mlp(), samples=1.5)
    with pytest.raises(TypeError, match="samples must be an int"):
        randomize(_mlp(), samples="all")
    with pytest.raises(ValueError, match=r"probabilities must be one of \['batch', 'weights'\]"):
        randomize(_mlp(), samples=2, probabilities="uniform")
    with pytest.raises(ValueError, match="nothing to randomize"):
        randomize(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), samples=2)
    with pytest.raises(TypeError, match="generator must be None .*, an int seed or a torch.Gen"):
        randomize(_mlp(), samples=2, generator="seed")


@pytest.mark.parametrize(
    "transform",
    [
        lambda m, x: low_rank(m, rank=2),
        lambda m, x: low_rank(m, energy=0.7, scheme="spatial", data=x),
        lambda m, x: fold_batchnorm(m),
        lambda m, x: pca_prune(m, 0.8, method="weights"),
        lambda m, x: pca_prune(m, 0.8, method="activations", data=x),
        lambda m, x: pca_prune(m, 0.8, method="interpolative", data=x),
        lambda m, x: randomize(m, 0.5, layers=(nn.Linear, nn.Conv2d), generator=0),
    ],
)
def test_every_transform_leaves_its_input_alone_unless_inplace(transform):
    model = _randomize_bn(_cnn())
    state, structure = _state(model), repr(model)
    x = torch.randn(6, 1, 12, 12)
    new = transform(model, x)
    _assert_same_state(model, state)
    assert repr(model) == structure and model.training
    assert new is not model and not hasattr(model, "pruning_report")
    assert isinstance(new.pruning_report, PruningReport)


def test_inplace_modifies_the_model_itself():
    model = _mlp()
    same = low_rank(model, rank=3, inplace=True)
    assert same is model and isinstance(model.fc1, LowRankLinear)
    same = pca_prune(_mlp(), 0.8, inplace=True)
    assert same.fc1.out_features < 32


# ---------------------------------------------------------------------------
# reports, copies and save / load
# ---------------------------------------------------------------------------


def test_report_survives_state_dict_deepcopy_and_torch_save():
    new = low_rank(_mlp(), rank=4)
    keys = set(new.state_dict())
    assert not any("report" in k for k in keys)
    clone = copy.deepcopy(new)
    assert clone.pruning_report.to_frame().equals(new.pruning_report.to_frame())
    buf = io.BytesIO()
    torch.save(new, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded.pruning_report.summary() == new.pruning_report.summary()
    back = PruningReport.from_dict(new.pruning_report.to_dict())
    assert back.to_frame().equals(new.pruning_report.to_frame())


def _roundtrip(model, tmp_path, base=None, x=None):
    path = tmp_path / "model.pt"
    save_pruned(model, path)
    blob = torch.load(path, weights_only=True)
    assert {"recipe", "state_dict", "report"} <= set(blob)
    loaded = load_pruned(path, base_model=base)
    if x is not None:
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    return loaded


def test_save_load_sequential_models_without_base(tmp_path):
    x = torch.randn(4, 20)
    mlp = _mlp().eval()
    X = torch.randn(12, 20)
    for model in (
        low_rank(mlp, rank=4),
        pca_prune(mlp, 0.9, method="interpolative", data=X),
        pca_prune(mlp, 1.0, method="activations", data=X),
    ):
        loaded = _roundtrip(model, tmp_path, x=x)
        assert loaded.pruning_report.summary() == model.pruning_report.summary()
    cnn = _randomize_bn(_cnn()).eval()
    xc = torch.randn(2, 1, 12, 12)
    for model in (
        low_rank(cnn, energy=0.8, scheme="spatial"),
        low_rank(cnn, rank=2, skip_unprofitable=False),
        pca_prune(cnn, 0.9, method="interpolative", data=torch.randn(6, 1, 12, 12)),
    ):
        _roundtrip(model, tmp_path, x=xc)
    # randomized: the seed travels, so a fresh load draws the same samples as a fresh copy
    rnd = randomize(mlp, samples=5, generator=1)
    reference = copy.deepcopy(rnd)
    loaded = _roundtrip(rnd, tmp_path)
    torch.testing.assert_close(loaded(x), reference(x), rtol=0, atol=0)


def test_settings_given_as_numpy_scalars_are_saved_as_python_numbers(tmp_path):
    # a setting read from a DataFrame is a numpy scalar; the saved file must still load with
    # torch.load(weights_only=True), which refuses numpy objects
    X = torch.randn(12, 20)
    mlp = _mlp().eval()
    model = pca_prune(mlp, np.float64(0.9), method="interpolative", data=X)
    settings = model.pruning_report.to_dict()["settings"]
    assert all(type(v) in (bool, int, float, str, type(None)) for v in settings.values())
    loaded = _roundtrip(model, tmp_path, x=torch.randn(4, 20))
    assert loaded.pruning_report.summary() == model.pruning_report.summary()
    assert _roundtrip(low_rank(mlp, rank=np.int64(4)), tmp_path) is not None


def test_save_load_torchvision_needs_base_model(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    small = low_rank(model, rank=16)
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / "resnet.pt"
    save_pruned(small, path)
    with pytest.raises(ValueError, match="pass base_model="):
        load_pruned(path)
    loaded = load_pruned(path, base_model=torchvision.models.resnet18(weights=None))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), rtol=0, atol=0)
    assert not loaded.training


def test_save_load_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="path must be a str or a pathlib.Path"):
        save_pruned(_mlp(), 3)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not written by save_pruned"):
        load_pruned(other)
    path = tmp_path / "m.pt"
    save_pruned(low_rank(_mlp(), rank=4), path)
    with pytest.raises(ValueError, match="base_model has no module"):
        load_pruned(path, base_model=nn.Sequential(nn.Linear(2, 2)))
