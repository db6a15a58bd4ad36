"""A smoke run of the headline benchmark on the cheap methods (the full run is documented in
pruning_utils/benchmark.py and takes far longer)."""

import json

import pandas as pd
import pytest

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


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads"),
    (["--tolerance", "2"], "--tolerance"),
    (["--models", "resnet50"], "invalid choice"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(argv)
    assert message in capsys.readouterr().err
