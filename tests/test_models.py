"""Models: architectures, parameter counts against hand formulas, seeding, slicing, bad inputs."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from pruning_utils.models import (
    MLP,
    MODEL_NAMES,
    BasicBlock,
    LargeMLP,
    LeNet5,
    SimpleMLP,
    SmallCNN,
    SmallResNet,
    build_model,
)


def linear_params(widths):
    return sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def test_simple_mlp_layout_and_count():
    model = SimpleMLP()
    kinds = [type(m) for m in model.children()]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    shapes = [tuple(m.weight.shape) for m in model if isinstance(m, nn.Linear)]
    assert shapes == [(120, 784), (84, 120), (10, 84)]
    assert sum(p.numel() for p in model.parameters()) == linear_params((784, 120, 84, 10))


def test_large_mlp_widths_and_count():
    widths = (784, 128, 512, 2048, 8192, 2048, 512, 128, 10)
    model = LargeMLP(activation=None)  # no ReLU: just the Linear layers
    shapes = [tuple(m.weight.shape) for m in model if isinstance(m, nn.Linear)]
    assert shapes == [(b, a) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    assert sum(p.numel() for p in model.parameters()) == linear_params(widths) == 35_897_866


def test_linear_stack_is_affine():
    torch.manual_seed(0)
    model = SimpleMLP(activation=None).double()
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    zero = model(torch.zeros_like(x))
    # f(2x) - f(0) = 2 (f(x) - f(0)) for an affine map, not for a ReLU network
    assert torch.allclose(model(2 * x) - zero, 2 * (model(x) - zero), atol=1e-10)
    relu = SimpleMLP().double()
    zero = relu(torch.zeros_like(x))
    assert not torch.allclose(relu(-2 * x) - zero, -2 * (relu(x) - zero), atol=1e-6)


def test_activation_class_is_used():
    model = MLP((10, 5, 5, 2), activation=nn.Tanh)
    assert [type(m) for m in model.children()].count(nn.Tanh) == 2
    assert list(dict(model.named_children())) == ["flatten", "fc1", "act1", "fc2", "act2", "fc3"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_maps_images_to_ten_logits(name):
    model = build_model(name, seed=0)
    assert isinstance(model, nn.Sequential)
    with torch.no_grad():
        out = model.eval()(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)


def test_small_cnn_is_flat_with_batchnorm_after_each_conv():
    model = SmallCNN(channels=(8, 16, 32), convs_per_block=2)
    children = list(model.children())
    assert not any(isinstance(c, nn.Sequential) for c in children)
    for i, child in enumerate(children):
        if isinstance(child, nn.Conv2d):
            assert child.kernel_size == (3, 3) and child.bias is None
            assert isinstance(children[i + 1], nn.BatchNorm2d)
            assert children[i + 1].num_features == child.out_channels
    convs = [c for c in children if isinstance(c, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32]
    assert model.fc1.in_features == 32 * 3 * 3  # 28 -> 14 -> 7 -> 3


def test_lenet5_count_matches_hand_formula():
    expected = (1 * 25 + 1) * 6 + (6 * 25 + 1) * 16 + 401 * 120 + 121 * 84 + 85 * 10
    assert sum(p.numel() for p in LeNet5().parameters()) == expected == 61_706


def test_build_model_seed_is_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build_model("simple-mlp", seed=3)
    b = build_model("simple-mlp", seed=3)
    c = build_model("simple-mlp", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.fc1.weight, c.fc1.weight)


def test_build_model_passes_options():
    model = build_model("LARGE-MLP", activation=None)
    assert isinstance(model, LargeMLP)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: build_model("resnet"), ValueError, "name must be one of"),
        (lambda: build_model(3), TypeError, "name must be one of"),
        (lambda: build_model("lenet5", seed=-1), ValueError, "seed"),
        (lambda: build_model("lenet5", seed=1.0), TypeError, "seed"),
        (lambda: SimpleMLP(activation="gelu"), ValueError, "activation"),
        (lambda: SimpleMLP(activation=nn.ReLU()), TypeError, "activation"),
        (lambda: MLP((784,)), ValueError, "at least 2"),
        (lambda: MLP((784, 0, 10)), ValueError, r"widths\[1\] must be an int >= 1"),
        (lambda: MLP((784, 10.0)), TypeError, r"widths\[1\] must be an int"),
        (lambda: MLP("784"), TypeError, "widths"),
        (lambda: SmallCNN(channels=(8, 8, 8, 8, 8)), ValueError, "between 1 and 4"),
        (lambda: SmallCNN(convs_per_block=0), ValueError, "convs_per_block"),
        (lambda: SmallCNN(channels=8), TypeError, "channels"),
        (lambda: SmallCNN(channels=(8, -1)), ValueError, r"channels\[1\] must be an int >= 1"),
        (lambda: SmallCNN(channels=()), ValueError, "at least 1"),
        (lambda: SmallCNN(hidden=1.5), TypeError, "hidden"),
        (lambda: LeNet5(num_classes=0), ValueError, "num_classes"),
        (lambda: LeNet5(num_classes="10"), TypeError, "num_classes"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------------------- nn.Sequential

SLICES = [slice(None, -1), slice(1, 3), slice(None, None, 2), slice(-3, None), slice(5, 2),
          slice(None), slice(None, None, -1)]


def plain(model):
    """An ``nn.Sequential`` of the same modules under the same names: the reference."""
    return nn.Sequential(OrderedDict(model.named_children()))


@pytest.mark.parametrize("name", ["simple-mlp", "small-cnn", "lenet5"])
def test_book_models_slice_index_and_iterate_like_sequential(name):
    model = build_model(name, seed=0)
    reference = plain(model)
    assert len(model) == len(reference)
    assert [id(m) for m in model] == [id(m) for m in reference]
    for i in range(-len(model), len(model)):
        assert model[i] is reference[i]
    for i in (len(model), -len(model) - 1):
        with pytest.raises(IndexError):
            reference[i]
        with pytest.raises(IndexError):
            model[i]
    for s in SLICES:
        piece, expected = model[s], reference[s]
        assert type(piece) is nn.Sequential
        assert [(n, id(m)) for n, m in piece.named_children()] == [
            (n, id(m)) for n, m in expected.named_children()
        ]


def test_slice_shares_modules_and_computes_the_prefix():
    model = build_model("small-cnn", seed=0).eval()
    features = model[:-1]  # the usual way to cut off a feature extractor
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = x
        for layer in list(model.children())[:-1]:
            h = layer(h)
        assert torch.equal(features(x), h)
        assert features(x).shape == (2, model.fc1.out_features)
        assert torch.equal(model.fc2(features(x)), model(x))
        features.fc1.weight.mul_(2.0)  # shared, as in nn.Sequential: the model sees it
    assert torch.equal(model.fc1.weight, features.fc1.weight)
    assert build_model("large-mlp", activation=None)[1:3][0].out_features == 128


def test_sequential_operations_still_work():
    model = build_model("simple-mlp", seed=0)
    extended = model + nn.Sequential(nn.Softmax(dim=1))
    assert type(extended) is nn.Sequential and len(extended) == len(model) + 1
    twice = LeNet5()[-1:] * 2
    assert len(twice) == 2 and twice[0] is twice[1]
    popped = model.pop(-1)
    assert isinstance(popped, nn.Linear) and len(model) == 5
    head = model.pop(slice(0, 2))
    assert type(head) is nn.Sequential and len(head) == 2 and len(model) == 3


def test_seeded_build_leaves_cuda_generators_alone(monkeypatch):
    def reseeds_cuda(*args, **kwargs):
        raise AssertionError("building on the CPU must not reseed CUDA generators")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeds_cuda)
    monkeypatch.setattr(torch.cuda, "manual_seed", reseeds_cuda)
    cuda_state = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    a = build_model("lenet5", seed=5)
    b = build_model("lenet5", seed=5)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    if cuda_state is not None:
        assert torch.equal(torch.cuda.get_rng_state(), cuda_state)


def test_small_resnet_blocks_shortcuts_and_count():
    model = build_model("small-resnet", seed=0)
    assert isinstance(model, SmallResNet) and model.channels == (32, 64, 128)
    first, second, third = model.layer1[0], model.layer2[0], model.layer3[0]
    assert first.downsample is None  # identity shortcut: same shape
    for block, (c_in, c_out) in ((second, (32, 64)), (third, (64, 128))):
        conv = block.downsample.conv  # projection shortcut: 1×1 conv with the stride
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2)
        assert (conv.in_channels, conv.out_channels) == (c_in, c_out)
        assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    expected = sum(c.in_channels * c.out_channels * c.kernel_size[0] * c.kernel_size[1]
                   for c in convs) + 2 * sum(b.num_features for b in bns) + 128 * 10 + 10
    assert all(c.bias is None for c in convs)
    assert sum(p.numel() for p in model.parameters()) == expected == 308_074


def test_small_resnet_adds_its_shortcut():
    """A block computes ReLU(bn2(conv2(ReLU(bn1(conv1 x)))) + shortcut(x)), checked by hand."""
    torch.manual_seed(0)
    block = BasicBlock(4, 8, stride=2).eval()
    x = torch.randn(2, 4, 9, 9)
    main = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    shortcut = block.downsample.bn(block.downsample.conv(x))
    torch.testing.assert_close(block(x), torch.relu(main + shortcut))
    same = BasicBlock(4, 4).eval()
    main = same.bn2(same.conv2(torch.relu(same.bn1(same.conv1(x)))))
    torch.testing.assert_close(same(x), torch.relu(main + x))


def test_small_resnet_bad_arguments():
    with pytest.raises(ValueError, match="3 entries"):
        SmallResNet(channels=(8, 16, 32, 64))
    with pytest.raises(ValueError, match="stride"):
        BasicBlock(4, 4, stride=3)
    with pytest.raises(TypeError):
        SmallResNet(channels=(8, 16.5, 32))


def test_small_resnet_inner_widths():
    """``inner`` sets conv1's outputs (and conv2's inputs) of each stage's blocks; the
    stage widths, shortcuts and the output are unchanged; the default is the stage width."""
    torch.manual_seed(0)
    model = SmallResNet(channels=(8, 16, 32), blocks=(2, 1, 1), inner=(3, 5, 7)).eval()
    for stage, (width, inner) in enumerate(((8, 3), (16, 5), (32, 7)), start=1):
        for block in getattr(model, f"layer{stage}"):
            assert block.conv1.out_channels == inner and block.bn1.num_features == inner
            assert block.conv2.in_channels == inner and block.conv2.out_channels == width
    assert model.inner == (3, 5, 7)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert SmallResNet(channels=(8, 16, 32)).inner == (8, 16, 32)
    assert BasicBlock(4, 6).conv1.out_channels == 6
    with pytest.raises(ValueError, match="inner must have 3 entries"):
        SmallResNet(channels=(8, 16, 32), inner=(3, 5, 7, 9))
    with pytest.raises(ValueError, match="inner"):
        SmallResNet(channels=(8, 16, 32), inner=(3, 0, 7))
    with pytest.raises(ValueError, match="inner"):
        BasicBlock(4, 4, inner=0)
