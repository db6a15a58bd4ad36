"""Magnitude and L1-structured pruning against independent oracles."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from pruning_utils.models import LeNet5, SimpleMLP, SmallCNN
from pruning_utils.surgery import l1_structured_prune, magnitude_prune


def state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, state):
    current = model.state_dict()
    return set(current) == set(state) and all(torch.equal(current[k], v) for k, v in state.items())


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)
    ).eval()


# ----------------------------------------------------------------------------- magnitude


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.75])
def test_magnitude_sparsity_equals_amount_and_is_global(amount):
    model = small_mlp()
    state = state_copy(model)
    pruned = magnitude_prune(model, 1.0 - amount)  # keep = 1 - the fraction zeroed
    assert unchanged(model, state)
    weights = [m.weight.detach() for m in model if isinstance(m, nn.Linear)]
    new = [m.weight.detach() for m in pruned if isinstance(m, nn.Linear)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in new)
    assert zeros == round(amount * total)
    assert pruned.pruning_report.settings["sparsity"] == pytest.approx(zeros / total)
    # global threshold (numpy oracle): every kept |w| >= every removed |w|
    original = np.concatenate([w.abs().numpy().ravel() for w in weights])
    kept_mask = np.concatenate([(w != 0).numpy().ravel() for w in new])
    if 0 < zeros < total:
        assert original[kept_mask].min() >= original[~kept_mask].max()
    # kept weights are the original values; biases are untouched
    for w, v in zip(weights, new, strict=True):
        assert torch.equal(v[v != 0], w[v != 0])
    for a, b in zip(model, pruned, strict=True):
        if isinstance(a, nn.Linear):
            assert torch.equal(a.bias, b.bias)


def test_magnitude_is_permanent_and_zero_amount_is_identity():
    model = small_mlp()
    pruned = magnitude_prune(model, 0.5)
    for module in pruned.modules():
        assert not hasattr(module, "weight_orig") and not hasattr(module, "weight_mask")
        assert not module._forward_pre_hooks
    assert isinstance(pruned[1].weight, nn.Parameter)
    x = torch.randn(5, 12)
    assert torch.equal(magnitude_prune(model, 1.0)(x), model(x))
    same = magnitude_prune(model, 0.8, inplace=True)
    assert same is model


def test_magnitude_layer_types_and_report():
    model = LeNet5()
    pruned = magnitude_prune(model, 0.5, layers=(nn.Conv2d,))
    assert torch.equal(pruned.fc1.weight, model.fc1.weight)
    frame = pruned.pruning_report.to_frame()
    assert list(frame["name"]) == ["conv1", "conv2"]
    assert (frame["params_before"] == frame["params_after"]).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"keep": 1.5}, ValueError, r"keep must be a number in \[0, 1\]"),
        ({"keep": -0.1}, ValueError, "keep"),
        ({"keep": True}, TypeError, "keep"),
        ({}, TypeError, "keep"),
        ({"keep": 0.5, "amount": 0.5}, TypeError, "not both"),
        ({"keep": 0.5, "fraction": 0.5}, TypeError, "unexpected keyword"),
        ({"keep": 0.5, "layers": [nn.Linear]}, TypeError, "layers"),
        ({"keep": 0.5, "layers": (nn.Conv2d,)}, ValueError, "no layer"),
        ({"keep": 0.5, "inplace": "yes"}, TypeError, "inplace"),
    ],
)
def test_magnitude_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        magnitude_prune(small_mlp(), **kwargs)


# ----------------------------------------------------------------------------- L1 structured


def test_l1_removes_units_with_smallest_l1_norms():
    model = SimpleMLP()
    state = state_copy(model)
    pruned = l1_structured_prune(model, 0.5)
    assert unchanged(model, state)
    assert [tuple(m.weight.shape) for m in pruned if isinstance(m, nn.Linear)] == [
        (60, 784), (42, 60), (10, 42),
    ]  # fmt: skip
    expected = 785 * 60 + 61 * 42 + 43 * 10
    assert sum(p.numel() for p in pruned.parameters()) == expected
    assert pruned.pruning_report.params_after == expected
    # oracle: the kept rows are the 60 largest L1 norms of the original fc1
    norms = model.fc1.weight.detach().abs().sum(dim=1).numpy()
    kept = np.sort(np.argsort(-norms, kind="stable")[:60])
    assert torch.equal(pruned.fc1.weight, model.fc1.weight[kept])
    assert torch.equal(pruned.fc2.weight[:, :], pruned.fc2.weight)  # a real, smaller tensor


def removal_oracle(model, amount):
    """The original model with the next layer's inputs from the removed units zeroed.

    The removed units are chosen independently here (numpy: the ``round(amount · n)``
    smallest L1 norms of each hidden layer's rows); zeroing their outgoing weights must give
    the same function as deleting them.
    """
    oracle = copy.deepcopy(model)
    layers = [m for m in oracle.modules() if type(m) in (nn.Linear, nn.Conv2d)]
    originals = [m for m in model.modules() if type(m) in (nn.Linear, nn.Conv2d)]
    for original, layer, nxt in zip(originals[:-1], layers[:-1], layers[1:], strict=True):
        norms = original.weight.detach().abs().reshape(layer.weight.shape[0], -1).sum(1).numpy()
        n_removed = round(amount * len(norms))
        removed = np.argsort(norms, kind="stable")[:n_removed]
        with torch.no_grad():
            if isinstance(nxt, nn.Linear) and isinstance(layer, nn.Conv2d):
                block = nxt.in_features // layer.out_channels
                for r in removed:
                    nxt.weight[:, r * block : (r + 1) * block] = 0
            else:
                nxt.weight[:, removed] = 0
    return oracle


@pytest.mark.parametrize("factory", [lambda: SmallCNN(channels=(4, 6, 8)), LeNet5, SimpleMLP])
def test_l1_pruned_model_equals_zeroing_the_removed_inputs(factory):
    torch.manual_seed(0)
    model = factory().eval()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        for m in model.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-1, 1)
    pruned = l1_structured_prune(model, 0.5)
    oracle = removal_oracle(model, 0.5)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(pruned(x), oracle(x), atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_l1_small_cnn_slices_batchnorm_and_flatten():
    model = SmallCNN(channels=(4, 6, 8)).eval()
    pruned = l1_structured_prune(model, 0.5)
    assert [
        pruned.conv1_1.out_channels,
        pruned.conv2_1.out_channels,
        pruned.conv3_1.out_channels,
    ] == [2, 3, 4]
    assert [pruned.bn1_1.num_features, pruned.bn2_1.num_features, pruned.bn3_1.num_features] == [
        2,
        3,
        4,
    ]
    assert pruned.fc1.in_features == 4 * 3 * 3 and pruned.fc1.out_features == 64
    assert pruned.fc2.out_features == 10  # the output layer keeps its outputs
    changes = pruned.pruning_report.to_frame().set_index("name")
    assert changes.loc["bn2_1", "change"] == "bn_sliced"
    assert changes.loc["fc2", "change"] == "input_sliced"


def test_l1_keep_all_is_identity_and_dict_keep():
    model = SmallCNN(channels=(4, 6, 8)).eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(l1_structured_prune(model, 1.0)(x), model(x))
    partial = l1_structured_prune(model, {"conv2_1": 0.5})
    assert partial.conv1_1.out_channels == 4 and partial.conv2_1.out_channels == 3
    assert partial.conv3_1.in_channels == 3 and partial.fc1.out_features == 128
    tiny = l1_structured_prune(small_mlp(), 0.01)  # at least one unit is kept
    assert tiny[1].out_features == 1 and tiny[3].out_features == 1


def test_l1_inplace():
    model = small_mlp()
    assert l1_structured_prune(model, 0.5, inplace=True) is model
    assert model[1].out_features == 5


@pytest.mark.parametrize(
    ("model", "keep", "error", "match"),
    [
        (small_mlp(), 0.0, ValueError, r"keep must be a float in \(0, 1\]"),
        (small_mlp(), -0.5, ValueError, "keep"),
        (small_mlp(), "half", TypeError, "keep"),
        (small_mlp(), {"5": 0.5}, ValueError, "not prunable hidden layers"),
        (small_mlp(), {"1": 2.0}, ValueError, "keep"),
        (nn.Linear(3, 3), 0.5, TypeError, "nn.Sequential"),
        (nn.Sequential(nn.Linear(3, 3)), 0.5, ValueError, "at least two"),
        (
            nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2)),
            0.5,
            ValueError,
            "LayerNorm",
        ),
        (
            nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 1, 1)),
            0.5,
            ValueError,
            "grouped",
        ),
        (
            nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(5), nn.Linear(4, 2)),
            0.5,
            ValueError,
            "BatchNorm",
        ),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 2)), 0.5, ValueError, "Flatten"),
    ],
)
def test_l1_bad_arguments(model, keep, error, match):
    with pytest.raises(error, match=match):
        l1_structured_prune(model, keep)


def test_deprecated_amount_still_works_and_warns():
    model = small_mlp()
    x = torch.randn(4, 12)
    with pytest.warns(DeprecationWarning, match="amount= is deprecated"):
        old = l1_structured_prune(model, amount=0.5)
    torch.testing.assert_close(old(x), l1_structured_prune(model, 0.5)(x), rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="keep="):
        old = magnitude_prune(model, amount=0.3)
    torch.testing.assert_close(old(x), magnitude_prune(model, 0.7)(x), rtol=0, atol=0)
    with pytest.warns(DeprecationWarning):
        partial = l1_structured_prune(model, amount={"1": 0.6})
    assert partial[1].out_features == 4  # 10 units, 6 removed
