"""The method registry: one entry per method, read by sweeps, the benchmark and the plots;
and decompose-once fits that give the same models as pruning from scratch."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pruning_utils import linalg
from pruning_utils.methods import (
    METHODS,
    Method,
    get_method,
    methods_for,
    most_compressed_within,
    register_method,
)
from pruning_utils.plots import PALETTE, method_color
from pruning_utils.surgery import LowRankFit, l1_structured_prune, low_rank
from pruning_utils.sweeps import sweep


def _mlp(seed=0, widths=(12, 40, 30, 3)):
    torch.manual_seed(seed)
    layers = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def _data(n=64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    return x, y


@pytest.fixture
def registry():
    """Leave METHODS as it was after a test that registers a method."""
    saved = dict(METHODS)
    yield METHODS
    METHODS.clear()
    METHODS.update(saved)


def test_adding_a_method_is_one_registry_entry(registry):
    """An outside method (here: keep the first units of each hidden layer, a stand-in for
    another library's criterion) registered once runs in sweeps, gets a colour, and is
    found by name and label."""

    def first_units(model, keep, *, data=None, generator=None):
        # reuse a structured pruner with a different criterion: keep the first units
        pruned = l1_structured_prune(model, keep)
        pruned.pruning_report.transform = "first_units"
        return pruned

    register_method(Method("first_units", "first units (outside)", "keep", first_units,
                           grid=(0.25, 0.5), color="#123456"))
    model, data = _mlp(), _data()
    frame = sweep(model, "first_units", [0.25, 0.5], test_data=data, batch_sizes=(),
                  progress=False)
    assert list(frame["method"]) == ["dense", "first_units", "first_units"]
    assert (frame["parameter"].iloc[1:] == "keep").all()
    assert frame["params"].iloc[1] < frame["params"].iloc[2] < frame["params"].iloc[0]
    assert method_color("first_units") == "#123456" == PALETTE["first units (outside)"]
    assert get_method("first units (outside)").name == "first_units"
    assert "first_units" in [m.name for m in methods_for("mlp")]


def test_register_refuses_a_duplicate_and_bad_entries(registry):
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method("low_rank_energy", "x", "energy", lambda m, v, **k: m))
    with pytest.raises(TypeError, match="Method.apply must be callable"):
        Method("bad", "bad", "keep", apply=3)
    with pytest.raises(ValueError, match="networks"):
        Method("bad", "bad", "keep", lambda m, v, **k: m, networks=("rnn",))
    with pytest.raises(TypeError, match="must be a Method"):
        register_method("low_rank")
    with pytest.raises(ValueError, match="method must be one of"):
        get_method("no such method")


def test_labels_and_old_labels_resolve_to_one_method():
    assert get_method("L1 units (baseline)") is get_method("L1 filters (baseline)")
    assert get_method("low rank (channel)") is METHODS["low_rank_energy"]
    for method in METHODS.values():
        assert get_method(method.label) is method
        assert method.grid == tuple(sorted(method.grid))  # most compressed first
        assert method.larger_keeps_more


def test_needs_data_is_enforced():
    with pytest.raises(ValueError, match="needs calibration data"):
        METHODS["pca_interpolative"].prune(_mlp(), 0.9)
    with pytest.raises(ValueError, match="not transform options"):
        METHODS["low_rank_energy"].prune(_mlp(), 0.9, inplace=True)


@pytest.mark.parametrize(
    ("name", "settings", "options"),
    [
        ("low_rank_energy", (0.3, 0.6, 0.9, 0.99), {}),
        ("low_rank_data", (0.3, 0.6, 0.9, 0.99), {}),
        ("low_rank_rank", (2, 40, 150), {"skip_unprofitable": False}),  # 2: randomized SVD
        ("low_rank_rank_data", (2, 40, 150), {}),
        ("low_rank_spatial", (0.5, 0.9), {}),
    ],
)
def test_fitted_sweep_equals_pruning_from_scratch(name, settings, options):
    """Decompose once, truncate many: every setting equals the transform run afresh."""
    if name == "low_rank_spatial":
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.Flatten())
        calibration, x = torch.randn(8, 3, 9, 9), torch.randn(2, 3, 9, 9)
    else:
        model = _mlp(widths=(12, 300, 280, 3))
        calibration, x = _data(256)[0], _data(16, seed=5)[0]
    method = METHODS[name]
    fitted = method.fitted(model, data=calibration, **options)
    for value in settings:
        once = fitted(value)
        scratch = method.prune(model, value, data=calibration, **options)
        assert once.pruning_report.to_dict() == scratch.pruning_report.to_dict()
        for a, b in zip(once.state_dict().values(), scratch.state_dict().values(), strict=True):
            assert torch.equal(a, b)
        torch.testing.assert_close(once(x), scratch(x), rtol=0, atol=0)


def test_low_rank_fit_matches_the_linalg_oracle_and_eckart_young():
    """The fit's factors equal low_rank_factors from scratch, and the error of each factorized
    layer is the Eckart–Young tail of numpy's singular values."""
    model = _mlp(widths=(12, 64, 48, 3))
    fit = LowRankFit(model)
    for rank in (2, 5, 11):
        pruned = fit.prune(rank=rank, skip_unprofitable=False)
        for name in ("1", "3"):
            W = model.get_submodule(name).weight.detach()
            A, B = linalg.low_rank_factors(W, rank=rank, method="full")
            layer = pruned.get_submodule(name)
            assert torch.equal(layer.second.weight, A) and torch.equal(layer.first.weight, B)
            s = np.linalg.svd(W.double().numpy(), compute_uv=False)
            error = np.linalg.norm(W.double().numpy() - (A @ B).double().numpy())
            assert error == pytest.approx(np.sqrt((s[rank:] ** 2).sum()), rel=1e-5)


def test_spectrum_whitened_error_is_the_discarded_tail():
    """Whitening: the output error ‖X (W − AB)ᵀ‖_F² equals Σ_{j>r} σ_j(W S)² (S Sᵀ = XᵀX)."""
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(20, 30, generator=gen, dtype=torch.float64)
    X = torch.randn(200, 30, generator=gen, dtype=torch.float64) @ torch.diag(
        torch.linspace(0.1, 3, 30, dtype=torch.float64))
    spectrum = linalg.Spectrum(W, covariance=X.T @ X, eps=0.0)
    for r in (3, 10):
        A, B = spectrum.factors(rank=r)
        loss = float(((X @ (W - A @ B).T) ** 2).sum())
        S = np.linalg.cholesky((X.T @ X).numpy())
        tail = np.linalg.svd(W.numpy() @ S, compute_uv=False)[r:]
        assert loss == pytest.approx(float((tail**2).sum()), rel=1e-8)


def test_most_compressed_within_picks_fewest_params_inside_tolerance():
    frame = pd.DataFrame({
        "method": ["a", "a", "a", "b", "b"],
        "fine_tuned": [False] * 5,
        "accuracy": [0.80, 0.895, 0.90, 0.70, 0.85],
        "params": [10, 20, 30, 5, 8],
    })
    chosen = most_compressed_within(frame, dense_accuracy=0.90, tolerance=0.01)
    assert chosen[["method", "params"]].values.tolist() == [["a", 20]]  # b never passes
    assert most_compressed_within(frame, 0.90, tolerance=0.2)["params"].tolist() == [10, 5]
    fastest = most_compressed_within(frame.assign(speed=[5, 3, 1, 9, 9]), 0.90, 0.2,
                                     rank_by="speed", largest=True)
    assert fastest[["method", "speed"]].values.tolist() == [["a", 5], ["b", 9]]
    with pytest.raises(ValueError, match="lacks the columns"):
        most_compressed_within(frame.drop(columns="params"), 0.9)
    with pytest.raises(ValueError, match="tolerance"):
        most_compressed_within(frame, 0.9, tolerance=-1)


def test_low_rank_keyword_only_and_generator_convention():
    model = _mlp(widths=(12, 300, 280, 3))
    with pytest.raises(TypeError):
        low_rank(model, None, 0.5, torch.randn(3, 12))  # data is keyword-only
    # an int seed and the same seed as a generator give the same randomized factors
    a = low_rank(model, rank=4, generator=7)
    b = low_rank(model, rank=4, generator=torch.Generator().manual_seed(7))
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
