"""Sweeps: tidy frames, dense reference, seeds for randomized methods, summaries."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pruning_utils.sweeps import summarize, sweep
from pruning_utils.train import evaluate, train

FAST = 0.005


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained on 3 separable blobs, and its test set."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    x = torch.eye(3, 16)[labels] * 4.0 + torch.randn(300, 16, generator=g)
    data = TensorDataset(x.reshape(300, 1, 4, 4), labels)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    )
    train(model, data, 3, lr=1e-2, batch_size=32, progress=False)
    return model, data


def zero_rows(model, fraction):
    """Stand-in transform: zero the first ``fraction`` of the first layer's rows (a copy)."""
    import copy

    new = copy.deepcopy(model)
    k = int(fraction * new[1].out_features)
    with torch.no_grad():
        new[1].weight[:k] = 0
        new[1].bias[:k] = 0
    return new


def noisy(model, scale):
    """Stand-in randomized transform: add Gaussian noise from torch's global generator."""
    import copy

    new = copy.deepcopy(model)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(scale * torch.randn_like(p))
    return new


def test_sweep_callable_accuracy_only(trained):
    model, data = trained
    state = {k: v.clone() for k, v in model.state_dict().items()}
    df = sweep(
        model,
        zero_rows,
        [0.0, 0.5, 1.0],
        test_data=data,
        batch_sizes=(),
        progress=False,
        parameter="fraction",
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert list(df["method"]) == ["dense", "zero_rows", "zero_rows", "zero_rows"]
    assert list(df.columns[:10]) == [
        "method", "parameter", "value", "seed", "fine_tuned", "accuracy", "params",
        "nonzero_params", "flops", "prune_seconds",
    ]  # fmt: skip
    assert not any(c.startswith("latency") for c in df.columns)
    dense_acc = evaluate(model, data)
    assert df.loc[0, "accuracy"] == pytest.approx(dense_acc)
    assert df.loc[1, "accuracy"] == pytest.approx(dense_acc)  # fraction 0 changes nothing
    assert df.loc[3, "accuracy"] < dense_acc  # every first-layer unit zeroed
    assert (df["parameter"] == "fraction").all() and df["seed"].isna().all()
    assert df.loc[3, "nonzero_params"] < df.loc[0, "nonzero_params"] == df.loc[0, "params"]
    assert df.loc[0, "flops"] == 2 * (16 * 32 + 32 * 32 + 32 * 3)


def test_sweep_with_timing(trained):
    model, data = trained
    df = sweep(
        model,
        "l1_structured",
        [0.5],
        test_data=data,
        batch_sizes=(1, 8),
        rounds=1,
        min_run_time=FAST,
        progress=False,
    )
    for b in (1, 8):
        for kind in ("latency_median", "latency_iqr", "speedup"):
            assert f"{kind}_b{b}" in df.columns
        assert df.loc[0, f"speedup_b{b}"] == 1.0
        assert (df[f"latency_median_b{b}"] > 0).all()
        assert df.loc[1, f"speedup_b{b}"] > 0
    assert df.loc[1, "params"] < df.loc[0, "params"]
    assert df.loc[1, "parameter"] == "keep"


def test_sweep_example_inputs_override(trained):
    model, data = trained
    df = sweep(
        model,
        zero_rows,
        [0.5],
        test_data=data,
        example_inputs={3: torch.zeros(3, 16)},
        rounds=1,
        min_run_time=FAST,
        progress=False,
    )
    assert "latency_median_b3" in df.columns and "latency_median_b1" not in df.columns


def test_randomized_callable_over_seeds_and_summary(trained):
    model, data = trained
    state = torch.get_rng_state()
    kw = dict(
        test_data=data,
        batch_sizes=(2,),
        seeds=(0, 1, 2),
        randomized=True,
        rounds=1,
        min_run_time=FAST,
        progress=False,
    )
    df = sweep(model, noisy, [0.05, 0.5], **kw)
    again = sweep(model, noisy, [0.05, 0.5], **kw)
    assert torch.equal(torch.get_rng_state(), state)
    pd.testing.assert_series_equal(df["accuracy"], again["accuracy"])  # seeded
    runs = df[df["method"] == "noisy"]
    assert len(runs) == 6 and sorted(runs["seed"].unique()) == [0, 1, 2]
    # latency only for the first seed of each value
    assert runs.groupby("value")["latency_median_b2"].count().tolist() == [1, 1]
    summary = summarize(df)
    row = summary[(summary["method"] == "noisy") & (summary["value"] == 0.5)].iloc[0]
    expected = runs[runs["value"] == 0.5]["accuracy"]
    assert row["accuracy_mean"] == pytest.approx(expected.mean())
    assert row["accuracy_std"] == pytest.approx(np.std(expected, ddof=1))
    assert row["runs"] == 3
    dense = summary[summary["method"] == "dense"].iloc[0]
    assert dense["runs"] == 1 and math.isnan(dense["accuracy_std"])


def test_named_surgery_methods(trained):
    model, data = trained
    calib = data.tensors[0][:64]
    low = sweep(model, "low_rank_rank", [2, 4], test_data=data, batch_sizes=(), progress=False)
    assert (low["params"].iloc[1:] < low["params"].iloc[0]).all()
    pca = sweep(
        model,
        "pca_activations",
        [0.999],
        test_data=data,
        calibration_data=calib,
        batch_sizes=(),
        progress=False,
    )
    assert pca.loc[1, "accuracy"] >= pca.loc[0, "accuracy"] - 0.05
    rnd = sweep(
        model, "randomized", [8], test_data=data, seeds=(0, 1), batch_sizes=(), progress=False
    )
    assert list(rnd["seed"].iloc[1:]) == [0, 1]


def test_fine_tune_rows(trained):
    model, data = trained
    df = sweep(
        model,
        zero_rows,
        [0.5],
        test_data=data,
        batch_sizes=(),
        fine_tune_data=data,
        fine_tune_epochs=1,
        progress=False,
    )
    assert list(df["fine_tuned"]) == [False, False, True]
    assert df.loc[2, "value"] == df.loc[1, "value"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "svd"}, ValueError, "method must be"),
        ({"method": 3}, TypeError, "method must be"),
        ({"grid": []}, ValueError, "grid must not be empty"),
        ({"grid": "abc"}, TypeError, "grid"),
        ({"method": "pca_activations"}, ValueError, "calibration_data"),
        ({"fine_tune_epochs": 1}, ValueError, "fine_tune_data"),
        ({"fine_tune_epochs": -1}, ValueError, "fine_tune_epochs"),
        ({"batch_sizes": (0,)}, ValueError, "batch_sizes"),
        ({"method": "randomized", "randomized": False}, ValueError, "contradicts"),
        ({"randomized": True, "seeds": ()}, ValueError, "seeds"),
        ({"method_kwargs": {"a": 1}}, ValueError, "method_kwargs"),
        ({"model": "m"}, TypeError, "model"),
    ],
)
def test_bad_arguments(trained, kwargs, error, match):
    model, data = trained
    args = {
        "model": model,
        "method": zero_rows,
        "grid": [0.5],
        "test_data": data,
        "batch_sizes": (),
        "progress": False,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        sweep(args.pop("model"), args.pop("method"), args.pop("grid"), **args)


def test_summarize_bad_input():
    with pytest.raises(TypeError, match="DataFrame"):
        summarize([1, 2])
    with pytest.raises(ValueError, match="lacks"):
        summarize(pd.DataFrame({"accuracy": [0.5]}))


def test_validation_accuracy_is_scored_next_to_test_accuracy(trained):
    model, data = trained
    val = TensorDataset(data.tensors[0][:90], data.tensors[1][:90])
    df = sweep(model, zero_rows, [0.0, 1.0], test_data=data, val_data=val, batch_sizes=(),
               progress=False)
    assert list(df.columns[5:7]) == ["accuracy", "val_accuracy"]
    for row, value in zip(df.itertuples(), [None, 0.0, 1.0], strict=True):
        pruned = model if value is None else zero_rows(model, value)
        assert row.val_accuracy == pytest.approx(evaluate(pruned, val))
        assert row.accuracy == pytest.approx(evaluate(pruned, data))
    without = sweep(model, zero_rows, [0.0], test_data=data, batch_sizes=(), progress=False)
    assert "val_accuracy" not in without.columns
