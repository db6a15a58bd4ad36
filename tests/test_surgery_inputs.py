"""Unusual but legitimate inputs to the transforms: shared layers, fused blocks, frozen
layers, train mode, dtypes, the meta device, corrupt files. Each either works faithfully or
is refused with an error that names what is wrong."""

import copy

import pytest
import torch
from torch import nn

from pruning_utils.files import CorruptFileError
from pruning_utils.layers import LowRankLinear
from pruning_utils.surgery import (
    fold_batchnorm,
    l1_structured_prune,
    load_pruned,
    low_rank,
    magnitude_prune,
    pca_prune,
    randomize,
    save_pruned,
)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                         nn.Linear(12, 3))


def _calibration(n=64, seed=1, dtype=torch.float32):
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


TRANSFORMS = {
    "low_rank": lambda m: low_rank(m, rank=2, skip_unprofitable=False),
    "low_rank_data": lambda m: low_rank(m, energy=0.9, data=_calibration()),
    "randomize": lambda m: randomize(m, 0.5, generator=0),
    "pca_weights": lambda m: pca_prune(m, 0.9, method="weights"),
    "pca_activations": lambda m: pca_prune(m, 0.9, method="activations", data=_calibration()),
    "pca_interpolative": lambda m: pca_prune(m, 0.9, method="interpolative",
                                             data=_calibration()),
    "l1_structured": lambda m: l1_structured_prune(m, 0.5),
    "magnitude": lambda m: magnitude_prune(m, 0.5),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_a_layer_used_twice_is_refused_by_name(name):
    shared = nn.Linear(16, 16)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(),
                          nn.Linear(16, 3))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"used at several places.*'2' and '4'"):
        TRANSFORMS[name](model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tied_parameters_in_two_layers_are_refused():
    model = _mlp()
    extra = nn.Linear(16, 16)
    extra.weight = nn.Parameter(torch.randn(16, 16))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), extra, nn.ReLU(), nn.Linear(16, 16),
                          nn.ReLU(), nn.Linear(16, 3))
    model[4].weight = model[2].weight
    with pytest.raises(ValueError, match="share a parameter"):
        low_rank(model, rank=2)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_frozen_layers_stay_frozen_and_modes_are_kept(name):
    model = _mlp()
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    model.train()
    new = TRANSFORMS[name](model)
    first = new[0]
    assert all(not p.requires_grad for p in first.parameters()), name
    assert all(p.requires_grad for p in new[4].parameters()), name
    assert all(m.training for m in new.modules()), name  # train mode kept everywhere
    model.eval()
    assert not any(m.training for m in TRANSFORMS[name](model).modules()), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_calibration_data_of_another_float_dtype_is_converted(dtype):
    model = _mlp().eval()
    reference = pca_prune(model, 0.95, method="interpolative", data=_calibration())
    converted = pca_prune(model, 0.95, method="interpolative",
                          data=_calibration().to(dtype).to(torch.float32).to(dtype))
    x = _calibration(5, seed=3)
    if dtype == torch.float64:  # float64 → float32 is exact for float32-representable data
        torch.testing.assert_close(converted(x), reference(x), rtol=0, atol=0)
    else:
        assert converted(x).dtype == torch.float32


def test_integer_calibration_data_is_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="data does not fit"):
        pca_prune(_mlp(), 0.9, method="activations", data=torch.ones(4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="data does not fit the model"):
        low_rank(_mlp(), energy=0.9, data=torch.ones(4, 8, dtype=torch.long))


def test_a_dead_layer_is_named_in_the_error():
    model = _mlp()
    with torch.no_grad():  # every unit of the first layer is dead on positive inputs
        model[0].weight.copy_(-model[0].weight.abs())
        model[0].bias.fill_(-1.0)
    data = _calibration().abs()
    with pytest.raises(ValueError, match=r"data: the activations after layer '0' are all zero"):
        pca_prune(model, 0.9, method="interpolative", data=data)
    with pytest.raises(ValueError, match=r"data: layer '2'.*all zero"):
        low_rank(model, energy=0.9, data=data)


@pytest.mark.parametrize("name", ["low_rank", "randomize", "pca_weights", "l1_structured"])
def test_a_model_on_the_meta_device_is_refused(name):
    with torch.device("meta"):
        model = _mlp()
    with pytest.raises(ValueError, match="meta device"):
        TRANSFORMS[name](model)


def test_half_precision_weights_are_factorized_and_keep_their_dtype():
    model = _mlp().to(torch.bfloat16)
    new = low_rank(model, rank=2, skip_unprofitable=False)
    assert isinstance(new[0], LowRankLinear)
    assert {p.dtype for p in new.parameters()} == {torch.bfloat16}


def test_fold_batchnorm_keeps_frozen_flags_and_mode():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).train()
    model[0].weight.requires_grad_(False)
    new = fold_batchnorm(model)
    assert not new[0].weight.requires_grad and new.training


# ----------------------------------------------------------------------------- files


def test_save_load_keeps_mixed_dtypes(tmp_path):
    model = _mlp()
    model[4] = model[4].double()
    model = nn.Sequential(*model[:4], nn.Identity(), model[4])
    path = tmp_path / "mixed.pt"
    save_pruned(model, path)
    loaded = load_pruned(path)
    assert [p.dtype for p in loaded.parameters()] == [p.dtype for p in model.parameters()]


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "no_recipe", "dtype"])
def test_a_damaged_pruned_model_file_names_the_file(tmp_path, damage):
    path = tmp_path / "model.pt"
    save_pruned(low_rank(_mlp(), rank=2), path)
    raw = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a model at all" * 10)
    else:
        blob = torch.load(path, weights_only=True)
        if damage == "no_recipe":
            del blob["recipe"]
        else:
            blob["recipe"]["dtype"] = "__class__"
        torch.save(blob, path)
    with pytest.raises(CorruptFileError, match=str(path)):
        load_pruned(path)


def test_saving_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_pruned(_mlp(), path)
    good = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(_mlp(seed=1), path)
    assert path.read_bytes() == good  # the earlier file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
