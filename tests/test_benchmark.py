"""A smoke run of the headline benchmark on the cheap methods (the full run is documented in
pruning_utils/benchmark.py and takes far longer)."""

import json

import pandas as pd
import pytest
import torch

from pruning_utils import benchmark
from pruning_utils.config import SMOKE_ENV


def test_thin_keeps_ends_and_order():
    grid = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    assert benchmark._thin(grid, 3) == (0.1, 0.4, 0.7)
    assert benchmark._thin(grid, 10) == grid


def test_smoke_run_writes_a_consistent_table(tmp_path, monkeypatch):
    monkeypatch.setenv(SMOKE_ENV, "1")
    code = benchmark.main([
        "--smoke", "--out", str(tmp_path), "--models", "large-mlp",
        "--methods", "L1 units (baseline)", "magnitude (baseline)",
    ])
    assert code == 0
    table = pd.read_csv(tmp_path / "headline.csv")
    meta = json.loads((tmp_path / "headline.json").read_text())
    assert sorted(table.method) == ["L1 units (baseline)", "magnitude (baseline)"]
    assert meta["mode"] == "smoke" and len(meta["rows"]) == 2
    l1 = next(table[table.method.str.startswith("L1")].itertuples())
    magnitude = next(table[table.method.str.startswith("magnitude")].itertuples())
    # structured pruning really removes units; magnitude pruning leaves the FLOPs alone
    assert l1.param_ratio > 1 and l1.flop_ratio > 1
    assert magnitude.flop_ratio == pytest.approx(1.0)
    for row in table.itertuples():
        assert 0 <= row.pruned_accuracy <= 1 and row.speedup_b1 > 0 and row.speedup_b256 > 0
        if row.within_tolerance:
            # the choice was made on the other half of the test set, so only a loose check here
            assert row.setting in benchmark._thin(
                {m.name: m for m in benchmark.MLP_METHODS}[row.method].grid, 3
            )
    layer = meta["layer"]
    assert layer["rank"] == 128
    assert layer["flop_ratio"] == pytest.approx(2048 * 8192 / (128 * 10240))
    assert layer["speedup"] > 0


def test_retime_keeps_choices_and_accuracies(tmp_path, monkeypatch):
    monkeypatch.setenv(SMOKE_ENV, "1")
    assert benchmark.main([
        "--smoke", "--out", str(tmp_path), "--models", "large-mlp",
        "--methods", "L1 units (baseline)", "PCA interpolative",
    ]) == 0
    before = json.loads((tmp_path / "headline.json").read_text())
    assert benchmark.main(["--smoke", "--out", str(tmp_path), "--retime"]) == 0
    after = json.loads((tmp_path / "headline.json").read_text())
    assert len(after["rows"]) == len(before["rows"]) == 2
    timing = set(benchmark._TIMING_COLUMNS)
    for old, new in zip(before["rows"], after["rows"], strict=True):
        # everything but the four timing columns is carried over unchanged
        assert {k: v for k, v in old.items() if k not in timing} == {
            k: v for k, v in new.items() if k not in timing}
        assert all(new[c] > 0 for c in timing)
    superseded = after["superseded_timings"][0]["rows"]
    assert [r["speedup_b256"] for r in superseded] == [
        r["speedup_b256"] for r in before["rows"]]
    assert after["timing_run"]["seconds"] > 0
    table = pd.read_csv(tmp_path / "headline.csv")
    assert list(table.speedup_b1) == pytest.approx([r["speedup_b1"] for r in after["rows"]])


def test_retime_rejects_results_from_other_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(SMOKE_ENV, "1")
    assert benchmark.main([
        "--smoke", "--out", str(tmp_path), "--models", "large-mlp",
        "--methods", "L1 units (baseline)",
    ]) == 0
    meta = json.loads((tmp_path / "headline.json").read_text())
    with pytest.raises(RuntimeError, match="parameters but the table has"):
        benchmark.retime_benchmark(
            {**meta, "rows": [{**meta["rows"][0], "params": 12345}]}, log=lambda _: None)
    with pytest.raises(ValueError, match="current mode is 'smoke'"):
        benchmark.retime_benchmark({**meta, "mode": "full"}, log=lambda _: None)
    with pytest.raises(ValueError, match="method 'no such method'"):
        benchmark.retime_benchmark(
            {**meta, "rows": [{**meta["rows"][0], "method": "no such method"}]},
            log=lambda _: None)


def test_retime_needs_earlier_results(tmp_path, monkeypatch):
    monkeypatch.setenv(SMOKE_ENV, "1")
    with pytest.raises(SystemExit, match="does not exist"):
        benchmark.main(["--smoke", "--out", str(tmp_path), "--retime"])


@pytest.mark.parametrize("argv, message", [
    (["--retime", "--methods", "magnitude (baseline)"], "drop --methods"),
    (["--threads", "0"], "--threads"),
    (["--tolerance", "2"], "--tolerance"),
    (["--models", "resnet50"], "invalid choice"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert message in capsys.readouterr().err


def _scaled_model(value: float) -> torch.nn.Module:
    """A linear classifier that is exact at ``value >= 0.5`` and useless below."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        if value < 0.5:
            model[1].weight.mul_(-1)
    return model


def test_find_setting_returns_the_most_compressed_passing_setting():
    x = torch.zeros(40, 4)
    y = torch.arange(40) % 2
    x[torch.arange(40), y] = 1.0
    data = torch.utils.data.TensorDataset(x, y)
    grid = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    calls = []

    def apply(model, value, calibration):
        calls.append(value)
        return _scaled_model(value)

    method = benchmark.Method("toy", "value", grid, apply, fine_tunable=False)
    choice = benchmark.find_setting(
        _scaled_model(1.0), method, data, x, dense_accuracy=1.0, log=lambda _: None
    )
    assert choice.value == 0.5 and choice.within and not choice.fine_tuned
    assert len(calls) <= 4  # bisection, not a walk over the nine settings

    failing = benchmark.Method("never", "value", grid, lambda m, v, c: _scaled_model(0.0),
                               fine_tunable=False)
    choice = benchmark.find_setting(
        _scaled_model(1.0), failing, data, x, dense_accuracy=1.0, log=lambda _: None
    )
    assert not choice.within and choice.value == grid[-1]
