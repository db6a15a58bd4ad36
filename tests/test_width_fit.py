"""WidthFit: decompose once, truncate many. Every setting of a fit equals pca_prune from
scratch, bit for bit; the model is left alone; each decomposition is taken once per layer and
upstream widths; bad inputs fail as in pca_prune."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import pruning_utils.surgery.width as width
from pruning_utils.methods import get_method
from pruning_utils.surgery import WidthFit, pca_prune


def _mlp(seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(12, 24),
            act1=act(),
            fc2=nn.Linear(24, 20),
            act2=act(),
            fc3=nn.Linear(20, 16),
            act3=act(),
            fc4=nn.Linear(16, 4),
        )
    ).eval()


def _linear_mlp(seed=0):
    """No activation: PCA of the activations merges into the layers and narrows them."""
    return _mlp(seed, act=nn.Identity)


def _cnn(seed=0):
    """(Conv → BatchNorm → ReLU → max-pool) twice, then Flatten → Linear → ReLU → Linear."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    layers = OrderedDict()
    for i, (c_in, c_out) in enumerate(((1, 6), (6, 8)), start=1):
        layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=i == 1)
        layers[f"bn{i}"] = bn = nn.BatchNorm2d(c_out)
        bn.running_mean.copy_(torch.randn(c_out, generator=g))
        bn.running_var.copy_(torch.rand(c_out, generator=g) + 0.5)
        bn.weight.data.copy_(torch.randn(c_out, generator=g))
        bn.bias.data.copy_(torch.randn(c_out, generator=g))
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
    layers.update(flatten=nn.Flatten(), fc1=nn.Linear(8 * 3 * 3, 16), relu3=nn.ReLU(),
                  fc2=nn.Linear(16, 4))
    return nn.Sequential(layers).eval()


def _inputs(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


MLP_DATA = _inputs(48, 12)
CNN_DATA = _inputs(16, 1, 12, 12)

# not ascending, a per-layer list, dicts (one leaving the first layer alone), a repeat
MLP_SETTINGS = [0.99, 0.7, [0.9, 0.6, 0.95], {"fc2": 0.8}, 0.9, {"fc1": 0.5, "fc3": 0.9}, 0.7, 1.0]
# one direction (the mean) carries most of the uncentred energy of these maps: widths
# differ only close to 1
CNN_SETTINGS = [0.9999, 0.98, [0.999, 0.9995, 0.9999], {"conv2": 0.9995, "fc1": 0.999}, 0.98,
                1.0, 0.97]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_model(got, expected):
    """Same module types, every state_dict tensor equal bit for bit, the same report."""
    assert [type(m) for m in got.modules()] == [type(m) for m in expected.modules()]
    got_state, expected_state = got.state_dict(), expected.state_dict()
    assert list(got_state) == list(expected_state)
    for key, value in expected_state.items():
        assert got_state[key].dtype == value.dtype, key
        assert torch.equal(got_state[key], value), key
    assert got.pruning_report == expected.pruning_report
    assert [row.name for row in got.pruning_report.layers] == [
        row.name for row in expected.pruning_report.layers
    ]


CASES = [
    ("weights", _mlp, None, MLP_SETTINGS, {}),
    ("weights", _linear_mlp, None, MLP_SETTINGS, {}),
    ("activations", _mlp, MLP_DATA, MLP_SETTINGS, {}),
    ("activations", _linear_mlp, MLP_DATA, MLP_SETTINGS, {}),
    ("interpolative", _mlp, MLP_DATA, MLP_SETTINGS, {}),
    ("interpolative", _cnn, CNN_DATA, CNN_SETTINGS, {}),
    # few rows: both convolutions draw a row subset, the second after the first
    ("interpolative", _cnn, CNN_DATA, CNN_SETTINGS, {"max_rows": 100, "generator": 7}),
]
CASE_IDS = ["weights-mlp", "weights-linear", "activations-mlp", "activations-linear",
            "interpolative-mlp", "interpolative-cnn", "interpolative-cnn-rows"]


@pytest.mark.parametrize("method, build, data, settings, options", CASES, ids=CASE_IDS)
def test_every_setting_equals_pca_prune_from_scratch(method, build, data, settings, options):
    model = build()
    before, structure = _state(model), repr(model)
    fit = WidthFit(model, method, data=data, **options)
    for variance in settings:
        got = fit.prune(variance)
        expected = pca_prune(build(), variance, method=method, data=data, **options)
        assert_same_model(got, expected)
        assert got is not model
    assert repr(model) == structure and not hasattr(model, "pruning_report")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_convolution_left_alone_does_not_move_the_row_subset():
    # conv1 left alone draws nothing, so conv2 draws first: as pca_prune does
    options = {"max_rows": 100, "generator": 3}
    fit = WidthFit(_cnn(), "interpolative", data=CNN_DATA, **options)
    for variance in ({"conv2": 0.999}, 0.999, {"conv2": 0.999, "fc1": 0.9995}, [0.98, 0.999, 1.0]):
        expected = pca_prune(_cnn(), variance, method="interpolative", data=CNN_DATA, **options)
        assert_same_model(fit.prune(variance), expected)


def test_row_subsets_come_from_one_stream_in_layer_order(monkeypatch):
    """conv1 draws first and conv2 next from the same stream; conv2 draws first when conv1
    is left alone. Settings met later draw as the first one did, whatever the fit holds."""
    drawn = []
    subsample = width._subsample_rows

    def record(H, max_rows, generator):
        replay = torch.Generator().manual_seed(0)
        replay.set_state(generator.get_state())
        drawn.append(torch.randperm(H.shape[0], generator=replay)[:max_rows])
        return subsample(H, max_rows, generator)

    monkeypatch.setattr(width, "_subsample_rows", record)
    fit = WidthFit(_cnn(), "interpolative", data=CNN_DATA, max_rows=100, generator=7)
    for variance in (0.999, 0.98, {"conv2": 0.999}):  # conv1 keeps 4, then 3 channels
        fit.prune(variance)
    stream = torch.Generator().manual_seed(7)
    conv1 = torch.randperm(16 * 6 * 6, generator=stream)[:100]  # pooled 6×6 maps
    conv2 = torch.randperm(16 * 3 * 3, generator=stream)[:100]  # pooled 3×3 maps, next
    alone = torch.randperm(16 * 3 * 3, generator=torch.Generator().manual_seed(7))[:100]
    # 0.999: conv1, conv2; 0.98: conv1 is held, conv2 on a new width; then conv2 alone
    expected = [conv1, conv2, conv2, alone]
    assert len(drawn) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected, strict=True))


def test_a_generator_is_read_not_advanced():
    generator = torch.Generator().manual_seed(11)
    state = generator.get_state()
    fit = WidthFit(_cnn(), "interpolative", data=CNN_DATA, generator=generator, max_rows=100)
    first, again = fit.prune(0.999), fit.prune(0.999)
    assert torch.equal(generator.get_state(), state)
    assert_same_model(again, first)
    expected = pca_prune(_cnn(), 0.999, method="interpolative", data=CNN_DATA, max_rows=100,
                         generator=torch.Generator().manual_seed(11))
    assert_same_model(first, expected)


class _Counter:
    """Wraps a function or class of the width module and counts its calls, keeping the
    number of columns of each call's first argument (a layer's units)."""

    def __init__(self, monkeypatch, name):
        self.columns = []
        self.wrapped = getattr(width, name)
        monkeypatch.setattr(width, name, self)

    @property
    def calls(self):
        return len(self.columns)

    def __call__(self, *args, **kwargs):
        first = args[0] if args else None
        self.columns.append(first.shape[-1] if isinstance(first, torch.Tensor) else None)
        return self.wrapped(*args, **kwargs)


def test_weights_take_one_svd_per_hidden_layer_for_all_settings(monkeypatch):
    svd = _Counter(monkeypatch, "truncated_svd")
    fit = WidthFit(_mlp(), "weights")
    for variance in MLP_SETTINGS:
        fit.prune(variance)
    assert svd.columns == [12, 24, 20]  # fc1, fc2, fc3 once, whatever the widths before them


@pytest.mark.parametrize(
    "method, decomposition", [("activations", "PrincipalComponents"),
                              ("interpolative", "PivotedQR")]
)
def test_each_decomposition_is_taken_once_per_upstream_widths(monkeypatch, method, decomposition):
    capture = _Counter(monkeypatch, "_calibration_inputs")
    decompose = _Counter(monkeypatch, decomposition)
    fit = WidthFit(_mlp(), method, data=MLP_DATA)
    assert capture.calls == 1 and decompose.calls == 0  # nothing decomposed before a setting
    variances = (0.99, 0.6, 0.8, 0.9)
    for v in variances:
        fit.prune(v)
    # the first layer's decomposition serves every setting: 1 + 2 deeper ones per setting
    assert len(fit._first.children) == len(variances)  # each keeps another width of fc1
    assert decompose.calls == 1 + 2 * len(variances)
    assert sorted(decompose.columns) == [16] * 4 + [20] * 4 + [24]  # fc3, fc2 × 4; fc1 once
    for v in variances:  # a repeated setting decomposes nothing
        fit.prune(v)
    assert decompose.calls == 1 + 2 * len(variances)
    # a setting that agrees on fc1 and fc2 decomposes fc3 only if its widths are new
    fit.prune([0.99, 0.99, 0.5])
    assert decompose.calls == 1 + 2 * len(variances)
    fit.prune({"fc2": 0.9, "fc3": 0.9})  # fc1 left alone: fc2 and fc3 on new upstream widths
    assert decompose.calls == 1 + 2 * len(variances) + 2
    assert capture.calls == 1


def test_layers_not_narrowed_give_the_next_layer_one_shared_input():
    fit = WidthFit(_mlp(), "activations", data=MLP_DATA)
    fit.prune(0.9)
    fit.prune(0.6)
    first = fit._first
    assert torch.equal(first.inputs, MLP_DATA)
    assert first.decomposition.components.shape == (24, 24)  # min(N, m) × m
    # after a ReLU the bottleneck sits in the next layer and fc1 keeps its 24 units, so
    # every width chosen for fc1 gives fc2 the same inputs: held once
    children = list(first.children.values())
    assert len(children) == 2 and children[0].inputs is children[1].inputs
    assert children[0].decomposition is not children[1].decomposition


def test_inplace_prunes_the_model_and_spends_the_fit():
    model = _mlp()
    fit = WidthFit(model, "interpolative", data=MLP_DATA)
    same = fit.prune(0.8, inplace=True)
    assert same is model and model.fc1.out_features < 24
    with pytest.raises(RuntimeError, match="pruned its model in place"):
        fit.prune(0.9)


BAD = [
    (dict(method="svd"), r"method must be one of \['weights', 'activations', 'interpolative'\]"),
    (dict(method="activations"), "data is required for method='activations'"),
    (dict(method="interpolative"), "data is required for method='interpolative'"),
    (dict(method="activations", data="images"), "data must be a tensor of inputs"),
    (dict(method="activations", data=torch.randn(8, 7)), "expects 12 input features, got 7"),
    (dict(method="activations", data=MLP_DATA[:1]), "at least 2 inputs"),
    (dict(method="activations", data=torch.ones(4, 12, dtype=torch.long)), "data does not fit"),
    (dict(max_rows=0), "max_rows must be an int >= 1, got 0"),
    (dict(method="interpolative", data=MLP_DATA, generator="seed"), "generator must be None"),
]


@pytest.mark.parametrize("kwargs, match", BAD)
def test_bad_inputs_fail_as_in_pca_prune(kwargs, match):
    kwargs = dict(kwargs)
    method = kwargs.pop("method", "weights")
    with pytest.raises((TypeError, ValueError), match=match) as from_fit:
        WidthFit(_mlp(), method, **kwargs)
    with pytest.raises((TypeError, ValueError), match=match) as from_prune:
        pca_prune(_mlp(), 0.9, method=method, **kwargs)
    assert from_fit.type is from_prune.type
    assert str(from_fit.value) == str(from_prune.value)


@pytest.mark.parametrize(
    "model, match",
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "no hidden layer to prune"),
        (nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1), nn.Linear(4, 2)),
         "is not an elementwise activation"),
        (nn.ModuleList([nn.Linear(4, 4)]), "model must be an nn.Sequential"),
        ("a model", "model must be a torch.nn.Module"),
    ],
)
def test_bad_models_fail_as_in_pca_prune(model, match):
    with pytest.raises((TypeError, ValueError), match=match) as from_fit:
        WidthFit(model)
    with pytest.raises((TypeError, ValueError), match=match) as from_prune:
        pca_prune(model, 0.9)
    assert str(from_fit.value) == str(from_prune.value)


def test_bad_settings_fail_as_in_pca_prune():
    fit = WidthFit(_mlp(), "activations", data=MLP_DATA)
    for variance, match in ((1.5, r"variance must be a float in \(0, 1\]"),
                            ([0.9], "one value per hidden layer"),
                            ({"fc4": 0.9}, "not prunable hidden layers")):
        with pytest.raises(ValueError, match=match):
            fit.prune(variance)
        with pytest.raises(ValueError, match=match):
            pca_prune(_mlp(), variance, method="activations", data=MLP_DATA)
    with pytest.raises(TypeError, match="inplace must be True or False"):
        fit.prune(0.9, inplace="yes")


@pytest.mark.parametrize("name", ["pca_weights", "pca_activations", "pca_interpolative"])
def test_method_fitted_equals_method_prune(name):
    method = get_method(name)
    assert method.fit is not None
    model = _mlp()
    data = MLP_DATA if method.needs_data else None
    prune = method.fitted(model, data=data)
    for variance in (0.95, 0.7, 0.95):
        for generator in (None, 0, 5):
            assert_same_model(
                prune(variance, generator),
                method.prune(model, variance, data=data, generator=generator),
            )


def test_method_fitted_follows_the_seed_of_the_row_subset():
    method = get_method("pca_interpolative")
    prune = method.fitted(_cnn(), data=CNN_DATA, max_rows=100)
    for generator in (None, 4, 0, torch.Generator().manual_seed(4), 4):
        assert_same_model(
            prune(0.999, generator),
            method.prune(_cnn(), 0.999, data=CNN_DATA, generator=generator, max_rows=100),
        )
