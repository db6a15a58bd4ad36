"""Group pruning through residual and concatenated blocks: the groups found, exactness at full
width against the original network, oracles, save/load, and bad inputs."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from pruning_utils.linalg import PivotedQR
from pruning_utils.methods import METHODS
from pruning_utils.models import SmallCNN, SmallResNet
from pruning_utils.surgery import (
    GroupFit,
    channel_groups,
    group_prune,
    load_pruned,
    pca_prune,
    save_pruned,
)


def _with_statistics(model: nn.Module, shape, seed: int = 0) -> nn.Module:
    """``model`` in eval mode after a few train-mode passes: BatchNorm with non-trivial
    running statistics, so that folding them is tested."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(2 * torch.randn(*shape, generator=gen) + 0.5)
    return model.eval()


def _resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _with_statistics(SmallResNet(channels=(8, 16, 32)), (16, 1, 28, 28), seed)


def _images(n: int, seed: int = 1, size=(1, 28, 28)) -> torch.Tensor:
    return torch.randn(n, *size, generator=torch.Generator().manual_seed(seed))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_small_resnet_groups_match_its_blocks():
    groups = {g.name: g for g in channel_groups(_resnet(), _images(2))}
    # stage 1: the stem and the block's last convolution are added (identity shortcut)
    assert groups["stem.conv"].producers == ("stem.conv", "layer1.0.conv2")
    assert set(groups["stem.conv"].readers) == {
        "layer1.0.conv1", "layer2.0.conv1", "layer2.0.downsample.conv"}
    # stages 2, 3: the projection and the last convolution
    assert set(groups["layer2.0.downsample.conv"].producers) == {
        "layer2.0.downsample.conv", "layer2.0.conv2"}
    assert groups["layer3.0.downsample.conv"].readers == ("fc",)
    # every block's first convolution is a group of its own, read by the second
    for stage, width in ((1, 8), (2, 16), (3, 32)):
        inner = groups[f"layer{stage}.0.conv1"]
        assert inner.producers == (f"layer{stage}.0.conv1",) and inner.width == width
        assert inner.readers == (f"layer{stage}.0.conv2",)
    assert not groups["fc"].prunable and groups["fc"].reason == "the model's output"
    assert sum(g.prunable for g in groups.values()) == 6


def test_full_width_is_exact_and_the_model_is_unchanged():
    model = _resnet()
    state = copy.deepcopy(model.state_dict())
    X = _images(32)
    fit = GroupFit(model, data=X)
    whole = fit.prune(widths={})  # BatchNorm folded, nothing pruned
    one = fit.prune(1.0)  # every group at the rank of its activations
    with torch.no_grad():
        reference = model(X)
        assert _relative(whole(X), reference) < 1e-5
        assert _relative(one(X), reference) < 1e-5
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not model.training and not hasattr(model, "pruning_report")
    assert isinstance(whole.stem.bn, nn.Identity) and isinstance(model.stem.bn, nn.BatchNorm2d)


def test_dependent_channels_are_dropped_exactly_through_the_shortcut():
    """Channel 1 of the stage-1 group duplicates channel 0 in every producer (the stem and the
    block's last convolution, BatchNorm included): the group's activations have rank m − 1,
    the decomposition drops one of the two and folds it into every reader, exactly."""
    model = _resnet()
    with torch.no_grad():
        for conv, bn in ((model.stem.conv, model.stem.bn),
                         (model.layer1[0].conv2, model.layer1[0].bn2)):
            conv.weight[1] = conv.weight[0]
            for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                tensor[1] = tensor[0]
    X = _images(32)
    pruned = group_prune(model, {"stem.conv": 1.0}, data=X)
    assert pruned.stem.conv.out_channels == 7 and pruned.layer1[0].conv2.out_channels == 7
    assert pruned.layer1[0].conv1.in_channels == 7
    assert pruned.layer2[0].downsample.conv.in_channels == 7
    with torch.no_grad():
        assert _relative(pruned(X), model(X)) < 1e-5
        assert _relative(pruned(_images(8, seed=9)), model(_images(8, seed=9))) < 1e-5


def test_a_chain_matches_pca_prune_on_its_first_layer():
    """On an nn.Sequential the first group is the first layer, read by the next one: the same
    H, the same selection and interpolation matrix as pca_prune's interpolative method."""
    torch.manual_seed(0)
    cnn = _with_statistics(SmallCNN(channels=(8, 16, 32), hidden=24), (16, 1, 28, 28))
    X = _images(24)
    ours = group_prune(cnn, {"conv1_1": 0.9}, data=X)
    theirs = pca_prune(cnn, {"conv1_1": 0.9}, method="interpolative", data=X)
    assert ours.conv1_1.out_channels == theirs.conv1_1.out_channels < 8
    # the same filters (ours in the original order, pca_prune's in pivot order)
    mine, other = ours.conv1_1.weight.flatten(1), theirs.conv1_1.weight.flatten(1)
    order = torch.cdist(mine, other).argmin(dim=1)
    assert sorted(order.tolist()) == list(range(mine.shape[0]))
    torch.testing.assert_close(mine, other[order])
    torch.testing.assert_close(ours.conv2_1.weight, theirs.conv2_1.weight[:, order],
                               rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(ours(X), theirs(X), rtol=1e-4, atol=1e-5)


def test_l1_keeps_the_channels_of_largest_group_norm():
    model = _resnet()
    pruned = group_prune(model, keep=0.5, criterion="l1", data=_images(4))
    # the group's score: L1 norms of each channel's rows in all producers, BatchNorm folded
    folded = []
    for conv, bn in ((model.stem.conv, model.stem.bn),
                     (model.layer1[0].conv2, model.layer1[0].bn2)):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded.append((conv.weight * scale[:, None, None, None]).abs().sum(dim=(1, 2, 3)))
    kept = torch.topk(sum(folded), 4).indices.sort().values
    scale = model.stem.bn.weight / torch.sqrt(model.stem.bn.running_var + model.stem.bn.eps)
    expected = (model.stem.conv.weight * scale[:, None, None, None])[kept]
    torch.testing.assert_close(pruned.stem.conv.weight, expected)
    # readers keep the matching input channels, without a correction
    torch.testing.assert_close(
        pruned.layer2[0].conv1.weight,
        (model.layer2[0].conv1.weight * (model.layer2[0].bn1.weight / torch.sqrt(
            model.layer2[0].bn1.running_var + model.layer2[0].bn1.eps))[:, None, None, None]
         )[torch.topk(_stage2_scores(model), 8).indices.sort().values][:, kept],
    )
    assert pruned.pruning_report.params_after < pruned.pruning_report.params_before


def _stage2_scores(model):
    block = model.layer2[0]
    scores = 0
    for conv, bn in ((block.conv1, block.bn1),):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        scores = scores + (conv.weight * scale[:, None, None, None]).abs().sum(dim=(1, 2, 3))
    return scores


def test_residuals_are_the_interpolative_error():
    H = torch.randn(50, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    H[:, 4] = H[:, 0] - 2 * H[:, 3]  # rank 8
    qr = PivotedQR(H)
    tail = qr.residuals()
    assert tail.shape == (10,) and tail[0] == pytest.approx(1.0) and tail[-1] == 0
    assert bool((tail[:-1] >= tail[1:] - 1e-15).all())
    for k in (1, 3, 6, 8):
        indices, T = qr.interpolative(k)
        error = torch.linalg.norm(H - H[:, indices] @ T) ** 2 / torch.linalg.norm(H) ** 2
        assert float(tail[k]) == pytest.approx(float(error), rel=1e-8, abs=1e-20)
    assert float(tail[8]) < 1e-25


def test_fit_residuals_and_widths():
    model = _resnet()
    fit = GroupFit(model, data=_images(16))
    assert fit.prunable == [g.name for g in fit.groups if g.prunable]
    tail = fit.residuals("layer3.0.conv1")
    assert tail.shape == (33,) and float(tail[0]) == pytest.approx(1.0)
    widths = fit.widths_for(keep=0.25)
    assert widths["stem.conv"] == 2 and widths["layer3.0.conv1"] == 8
    pruned = fit.prune(widths={"layer3.0.conv1": 5})
    assert pruned.layer3[0].conv1.out_channels == 5 and pruned.layer3[0].conv2.in_channels == 5
    assert pruned.layer2[0].conv1.out_channels == 16
    assert pruned.pruning_report.settings["widths"] == {"layer3.0.conv1": 5}


def test_save_and_load_with_the_base_model(tmp_path):
    model = _resnet()
    X = _images(8)
    pruned = group_prune(model, keep=0.5, data=X)
    save_pruned(pruned, tmp_path / "resnet.pt")
    loaded = load_pruned(tmp_path / "resnet.pt", base_model=SmallResNet(channels=(8, 16, 32)))
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), pruned(X))
    assert loaded.pruning_report.to_dict() == pruned.pruning_report.to_dict()
    with pytest.raises(ValueError, match="base_model"):
        load_pruned(tmp_path / "resnet.pt")


def test_registry_methods_and_fit_agree():
    model = _resnet()
    X = _images(8)
    for name, value in (("group_interpolative", 0.95), ("group_l1", 0.5)):
        method = METHODS[name]
        once = method.fitted(model, data=X)(value)
        scratch = method.prune(model, value, data=X)
        for a, b in zip(once.state_dict().values(), scratch.state_dict().values(), strict=True):
            assert torch.equal(a, b)


def test_inplace_changes_the_model():
    model = _resnet()
    out = group_prune(model, keep=0.5, data=_images(4), inplace=True)
    assert out is model and model.stem.conv.out_channels == 4


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return self.conv(x)
        return x


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.head(self.conv(self.conv(x)))


def test_bad_inputs():
    model, X = _resnet(), _images(4)
    with pytest.raises(ValueError, match="torch.fx"):
        group_prune(_Branchy(), keep=0.5, data=X)
    with pytest.raises(ValueError, match="twice"):
        group_prune(_Twice(), keep=0.5, data=torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="criterion must be one of"):
        group_prune(model, 0.9, criterion="taylor", data=X)
    with pytest.raises(ValueError, match="exactly one of variance and keep"):
        group_prune(model, 0.9, keep=0.5, data=X)
    with pytest.raises(ValueError, match="give keep="):
        group_prune(model, 0.9, criterion="l1", data=X)
    with pytest.raises(ValueError, match=r"variance must be a float in \(0, 1\]"):
        group_prune(model, 1.5, data=X)
    with pytest.raises(ValueError, match="not prunable hidden layers"):
        group_prune(model, {"fc": 0.5}, data=X)
    with pytest.raises(TypeError, match="data must be a tensor"):
        group_prune(model, 0.9, data=None)
    with pytest.raises(ValueError, match="floating-point"):
        group_prune(model, 0.9, data=torch.zeros(2, 1, 28, 28, dtype=torch.long))
    with pytest.raises(ValueError, match="data does not fit"):
        group_prune(model, 0.9, data=torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="no channel group to prune"):
        group_prune(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 0.9, data=torch.randn(3, 4))
    fit = GroupFit(model, data=X)
    with pytest.raises(ValueError, match="not a prunable group"):
        fit.prune(widths={"nope": 2})
    with pytest.raises(ValueError, match=r"widths\['stem.conv'\]"):
        fit.prune(widths={"stem.conv": 9})
    with pytest.raises(ValueError, match="prunable groups"):
        fit.residuals("fc")


@pytest.mark.slow
def test_torchvision_resnet18_groups_and_full_width():
    torch.manual_seed(0)
    model = _with_statistics(torchvision.models.resnet18(weights=None), (4, 3, 64, 64))
    X = _images(2, size=(3, 64, 64))
    fit = GroupFit(model, data=X)
    groups = {g.name: g for g in fit.groups}
    assert groups["conv1"].producers == ("conv1", "layer1.0.conv2", "layer1.1.conv2")
    for stage, width in ((2, 128), (3, 256), (4, 512)):
        g = next(g for g in fit.groups if f"layer{stage}.0.downsample.0" in g.producers)
        assert set(g.producers) == {f"layer{stage}.0.conv2", f"layer{stage}.0.downsample.0",
                                    f"layer{stage}.1.conv2"} and g.width == width
    assert len(fit.prunable) == 4 + 8  # four stages and every block's inner channels
    with torch.no_grad():
        reference = model(X)
        assert _relative(fit.prune(widths={})(X), reference) < 1e-5
        # two images: every H has low rank, so variance 1.0 drops most channels, exactly
        exact = fit.prune(1.0)
        assert exact.pruning_report.params_after < 0.5 * exact.pruning_report.params_before
        assert _relative(exact(X), reference) < 1e-4


@pytest.mark.slow
def test_torchvision_densenet121_groups_and_full_width():
    torch.manual_seed(0)
    model = _with_statistics(torchvision.models.densenet121(weights=None), (4, 3, 64, 64))
    X = _images(2, size=(3, 64, 64))
    fit = GroupFit(model, data=X)
    groups = {g.name: g for g in fit.groups}
    stem = groups["features.conv0"]  # the block's input, read by its 6 layers and transition
    assert stem.width == 64 and len(stem.readers) == 7
    assert "features.denseblock1.denselayer1.norm1" in stem.sliced  # BN after a concatenation
    first = groups["features.denseblock1.denselayer1.conv2"]
    assert first.width == 32 and len(first.readers) == 6  # layers 2-6 and the transition
    assert len(fit.prunable) == 2 * 58 + 4  # per dense layer: bottleneck and new maps
    with torch.no_grad():
        reference = model(X)
        assert _relative(fit.prune(widths={})(X), reference) < 1e-5
        exact = fit.prune(1.0)
        assert exact.pruning_report.params_after < exact.pruning_report.params_before
        assert _relative(exact(X), reference) < 1e-4
