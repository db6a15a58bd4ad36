"""The headline benchmark's protocol, run on tiny models and data (the full run is documented
in pruning_utils/headline.py and takes far longer)."""

import json

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pruning_utils import headline
from pruning_utils.config import SMOKE_ENV
from pruning_utils.methods import METHODS, Method

QUIET = {"log": lambda _: None}


def _toy_data(n=96, seed=0):
    """A learnable 3-class problem on 1×6×6 images (the first three pixels say the class)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = 0.1 * torch.randn(n, 1, 6, 6, generator=gen)
    x[torch.arange(n), 0, 0, y] += 3.0
    return TensorDataset(x, y)


def _toy_mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 3))
    with torch.no_grad():  # a dense model that solves the toy problem
        model[1].weight.zero_()
        model[1].weight[:3, :3] = 2 * torch.eye(3)
        model[1].weight[3:].normal_(0, 0.01)
        model[3].weight.zero_()
        model[3].weight[:, :3] = torch.eye(3)
    return model.eval()


def _toy_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)
    ).eval()


@pytest.fixture
def data():
    test = _toy_data(96)
    return headline.BenchmarkData(test, _toy_data(48, seed=1), _toy_data(32, seed=2).tensors[0])


@pytest.fixture
def smoke(monkeypatch):
    monkeypatch.setenv(SMOKE_ENV, "1")


def test_thin_keeps_ends_and_order():
    grid = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    assert headline._thin(grid, 3) == (0.1, 0.4, 0.7)
    assert headline._thin(grid, 10) == grid


def test_methods_come_from_the_registry():
    mlp = {m.name for m in headline.benchmark_methods("mlp")}
    cnn = {m.name for m in headline.benchmark_methods("cnn")}
    assert {"low_rank_data", "pca_weights", "randomized"} <= mlp
    assert {"low_rank_spatial", "randomized_conv"} <= cnn
    assert not {"pca_weights", "randomized"} & cnn
    assert "low_rank_rank" not in mlp  # no grid: nothing to search
    assert [m.name for m in headline.benchmark_methods("mlp", ["L1 units (baseline)"])] == [
        "l1_structured"]


def test_run_writes_consistent_rows(smoke, data):
    table, layer = headline.run_benchmark(
        ["toy-mlp", "toy-cnn"], methods=["l1_structured", "magnitude", "low_rank_data"],
        dense_models={"toy-mlp": _toy_mlp(), "toy-cnn": _toy_cnn()}, data=data,
        layer=(32, 64, 4), num_threads=1, **QUIET,
    )
    assert list(table.model) == ["toy-mlp"] * 3 + ["toy-cnn"] * 2  # low_rank_data: MLPs only
    assert set(table.method_key) == {"l1_structured", "magnitude", "low_rank_data"}
    l1 = table[(table.model == "toy-mlp") & (table.method_key == "l1_structured")].iloc[0]
    magnitude = table[(table.model == "toy-mlp") & (table.method_key == "magnitude")].iloc[0]
    assert l1.parameter == "keep" and l1.param_ratio >= 1 and l1.flop_ratio >= 1
    assert magnitude.flop_ratio == pytest.approx(1.0)  # zeros in dense tensors
    for row in table.itertuples():
        assert 0 <= row.pruned_accuracy <= 1 and row.speedup_b1 > 0 and row.speedup_b256 > 0
        if row.within_tolerance:
            method = METHODS[row.method_key]
            assert row.setting in headline._thin(method.grid, 3)
    assert layer["rank"] == 4 and layer["flop_ratio"] == pytest.approx(32 * 64 / (4 * 96))
    assert layer["device"] == "cpu"  # where the networks are


def test_an_outside_method_runs_under_the_protocol(smoke, data):
    """A method defined outside the library is one Method; no private helper is needed."""
    seen = []

    def halve_hidden(model, keep, *, data=None, generator=None):
        seen.append(keep)
        from pruning_utils.surgery import l1_structured_prune
        return l1_structured_prune(model, keep)

    outside = Method("halve", "outside criterion", "keep", halve_hidden, grid=(0.25, 0.5, 1.0))
    table, _ = headline.run_benchmark(
        ["toy-mlp"], methods=[outside], dense_models={"toy-mlp": _toy_mlp()}, data=data,
        layer=None, num_threads=1, **QUIET,
    )
    assert list(table.method) == ["outside criterion"] and seen


def test_find_setting_bisects_and_survives_failing_settings():
    x = torch.zeros(40, 4)
    y = torch.arange(40) % 2
    x[torch.arange(40), y] = 1.0
    data = TensorDataset(x, y)

    def scaled(value):
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
        with torch.no_grad():
            model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
            if value < 0.5:
                model[1].weight.mul_(-1)
        return model

    grid = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    calls = []

    def apply(model, value, *, data=None, generator=None):
        calls.append(value)
        if value == 0.4:
            raise RuntimeError("this setting cannot be built")  # not a ValueError
        return scaled(value)

    method = Method("toy", "toy", "keep", apply, grid=grid, fine_tunable=False)
    choice = headline.find_setting(scaled(1.0), method, data, x, dense_accuracy=1.0, **QUIET)
    assert choice.value == 0.5 and choice.within and not choice.fine_tuned
    assert len(calls) <= 4  # bisection, not a walk over the nine settings
    never = Method("never", "never", "keep", lambda m, v, **k: scaled(0.0), grid=grid,
                   fine_tunable=False)
    choice = headline.find_setting(scaled(1.0), never, data, x, dense_accuracy=1.0, **QUIET)
    assert not choice.within and choice.value == grid[-1]


def test_retime_keeps_choices_and_rejects_other_weights(smoke, data):
    models = {"toy-mlp": _toy_mlp()}
    table, _ = headline.run_benchmark(
        ["toy-mlp"], methods=["l1_structured", "pca_interpolative"], dense_models=models,
        data=data, layer=None, num_threads=1, **QUIET,
    )
    meta = {"mode": "smoke", "rows": table.to_dict(orient="records")}
    again, _ = headline.retime_benchmark(meta, dense_models=models, data=data, layer=None,
                                         num_threads=1, **QUIET)
    timing = {"speedup_b1", "speedup_b256", "dense_ms_b256", "pruned_ms_b256"}
    for old, new in zip(meta["rows"], again.to_dict(orient="records"), strict=True):
        assert {k: v for k, v in old.items() if k not in timing} == {
            k: v for k, v in new.items() if k not in timing}
        assert all(new[c] > 0 for c in timing)
    with pytest.raises(RuntimeError, match="parameters but the table has"):
        headline.retime_benchmark({**meta, "rows": [{**meta["rows"][0], "params": 12345}]},
                                  dense_models=models, data=data, layer=None, **QUIET)
    with pytest.raises(ValueError, match="current mode is 'smoke'"):
        headline.retime_benchmark({**meta, "mode": "full"}, data=data, **QUIET)
    bad = {**meta["rows"][0], "method": "no such method", "method_key": None}
    with pytest.raises(ValueError, match="method must be one of"):
        headline.retime_benchmark({**meta, "rows": [bad]}, dense_models=models, data=data,
                                  layer=None, **QUIET)


def test_command_line_writes_both_files(smoke, data, tmp_path, monkeypatch):
    monkeypatch.setattr(headline, "load_benchmark_data", lambda *a, **k: data)
    monkeypatch.setattr(headline, "trained_model", lambda name, **k: _toy_mlp())
    monkeypatch.setattr(headline, "_layer_benchmark", lambda *a, **k: {
        "layer": "toy", "rank": 1, "break_even_rank": 1.0, "batch": 1, "dense_ms": 1.0,
        "factorized_ms": 1.0, "speedup": 1.0, "flop_ratio": 1.0})
    argv = ["--smoke", "--out", str(tmp_path), "--models", "large-mlp", "--threads", "1",
            "--methods", "L1 units (baseline)"]
    assert headline.main(argv) == 0
    meta = json.loads((tmp_path / "headline.json").read_text())
    table = pd.read_csv(tmp_path / "headline.csv")
    assert meta["mode"] == "smoke" and len(meta["rows"]) == 1 == len(table)
    assert headline.main(["--smoke", "--out", str(tmp_path), "--retime", "--threads", "1"]) == 0
    after = json.loads((tmp_path / "headline.json").read_text())
    assert after["superseded_timings"][0]["rows"][0]["speedup_b256"] == (
        meta["rows"][0]["speedup_b256"])


def test_retime_needs_earlier_results(smoke, tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        headline.main(["--smoke", "--out", str(tmp_path), "--retime"])


@pytest.mark.parametrize("argv, message", [
    (["--retime", "--methods", "magnitude (baseline)"], "drop --methods"),
    (["--threads", "0"], "--threads"),
    (["--tolerance", "2"], "--tolerance"),
    (["--models", "resnet50"], "invalid choice"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        headline.main(argv)
    assert message in capsys.readouterr().err


def test_older_results_with_amounts_are_read_as_keep():
    l1 = METHODS["l1_structured"]
    assert headline.setting_of({"parameter": "amount", "setting": 0.3}, l1) == 0.7
    assert headline.setting_of({"parameter": "keep", "setting": 0.3}, l1) == 0.3
    energy = METHODS["low_rank_energy"]
    assert headline.setting_of({"parameter": "energy", "setting": 0.7}, energy) == 0.7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_single_layer_timing_runs_on_the_gpu():
    layer = headline._layer_benchmark(32, 64, 4, batch=8, num_threads=1, seconds=0.01,
                                      device="cuda")
    assert layer["device"].startswith("cuda") and layer["speedup"] > 0
