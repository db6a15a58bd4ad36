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
from pruning_utils.files import CorruptFileError
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
    return headline.BenchmarkData(
        validation=_toy_data(60, seed=4), test=_toy_data(96), train=_toy_data(120, seed=5),
        fine_tune_sets=tuple(_toy_data(48, seed=10 + s) for s in range(3)),
        calibration_sets=tuple(_toy_data(32, seed=20 + s).tensors[0] for s in range(3)),
    )


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
    methods = list(table.method_key)
    assert list(table.model) == ["toy-mlp"] * 4 + ["toy-cnn"] * 3  # + one control each
    assert methods[:3] == ["l1_structured", "magnitude", "low_rank_data"]
    assert methods[4:6] == ["l1_structured", "magnitude"]  # low_rank_data: MLPs only
    controls = table[table.method.str.contains("from scratch")]
    assert len(controls) == 2 and set(controls.method) == {
        "from scratch (widths of L1 structured (baseline))"}
    l1 = table[(table.model == "toy-mlp") & (table.method_key == "l1_structured")].iloc[0]
    magnitude = table[(table.model == "toy-mlp") & (table.method_key == "magnitude")].iloc[0]
    assert l1.parameter == "keep" and l1.param_ratio >= 1 and l1.flop_ratio >= 1
    assert magnitude.flop_ratio == pytest.approx(1.0)  # zeros in dense tensors
    control = controls[controls.model == "toy-mlp"].iloc[0]
    assert control.widths == l1.widths and control.params == l1.params  # the same shape
    for row in table.itertuples():
        assert 0 <= row.test_accuracy <= 1 and row.speedup_b1 > 0 and row.speedup_b256 > 0
        lo, hi = row.test_accuracy_ci95
        assert lo <= row.test_accuracy <= hi
        lo, hi = row.test_drop_ci95
        assert lo <= row.test_drop_points <= hi
        assert row.within_tolerance == (row.test_drop_points <= 1.0 + 1e-9)
        assert row.seeds == [0, 1, 2] and len(row.test_accuracy_by_seed) == 3
        assert row.test_accuracy == pytest.approx(sum(row.test_accuracy_by_seed) / 3)
        for q, s in ((row.speedup_b1_iqr, row.speedup_b1), (row.speedup_b256_iqr,
                                                             row.speedup_b256)):
            assert q[0] <= s <= q[1]
        if row.validation_within and isinstance(row.method_key, str):
            method = METHODS[row.method_key]
            assert row.setting in headline._thin(method.grid, 3)
    # a deterministic method without fine-tuning gives the same model for every seed
    if not magnitude.fine_tuned:
        assert len(set(magnitude.test_accuracy_by_seed)) == 1
    assert layer["rank"] == 4 and layer["flop_ratio"] == pytest.approx(32 * 64 / (4 * 96))
    assert layer["device"] == "cpu"  # where the networks are


def test_fine_tuned_choices_are_held_to_the_fine_tuned_reference():
    """A fine-tuned setting must come within tolerance of dense + the same epoch."""
    data = _toy_data(64)
    grid = (0.25, 0.5, 1.0)
    method = Method("keep", "keep", "keep",
                    lambda m, v, **k: __import__("pruning_utils").l1_structured_prune(m, v),
                    grid=grid)
    dense = _toy_mlp()
    # dense_accuracy=2 fails every setting without fine-tuning; the reference of the
    # fine-tuned pass decides alone
    lenient = headline.find_setting(dense, method, data, None, dense_accuracy=2.0,
                                    tuned_accuracy=0.0, tolerance=0.01, fine_tune_data=data,
                                    **QUIET)
    strict = headline.find_setting(dense, method, data, None, dense_accuracy=2.0,
                                   tuned_accuracy=2.0, tolerance=0.01, fine_tune_data=data,
                                   **QUIET)
    assert lenient.within and lenient.value == grid[0] and lenient.fine_tuned
    assert any(t.get("fine_tuned") for t in strict.tried)  # it tried, and nothing passed
    assert not strict.within and strict.value == grid[-1]


def _untimed(row, timing):
    """The row without its timing columns, NaN (a missing value in the table) as None."""
    return {k: None if isinstance(v, float) and v != v else v
            for k, v in row.items() if k not in timing}


def test_retime_keeps_choices_and_rejects_other_weights(smoke, data):
    models = {"toy-mlp": _toy_mlp()}
    table, _ = headline.run_benchmark(
        ["toy-mlp"], methods=["l1_structured", "pca_interpolative"], dense_models=models,
        data=data, layer=None, num_threads=1, **QUIET,
    )
    meta = {"mode": "smoke", "rows": table.to_dict(orient="records")}
    again, _ = headline.retime_benchmark(meta, dense_models=models, data=data, layer=None,
                                         num_threads=1, **QUIET)
    timing = {"speedup_b1", "speedup_b256", "speedup_b1_iqr", "speedup_b256_iqr",
              "dense_ms_b256", "pruned_ms_b256", "retime_ratio_b256"}
    for old, new in zip(meta["rows"], again.to_dict(orient="records"), strict=True):
        assert _untimed(old, timing) == _untimed(new, timing)
        assert new["retime_ratio_b256"] == pytest.approx(
            new["speedup_b256"] / old["speedup_b256"])
    assert any("from scratch" in r["method"] for r in meta["rows"])
    with pytest.raises(RuntimeError, match="parameters but the table has"):
        headline.retime_benchmark({**meta, "rows": [{**meta["rows"][0], "params": 12345}]},
                                  dense_models=models, data=data, layer=None, **QUIET)
    control = next(r for r in meta["rows"] if "from scratch" in r["method"])
    with pytest.raises(RuntimeError, match="parameters but the table has"):
        headline.retime_benchmark({**meta, "rows": [{**control, "params": 12345}]},
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
    assert meta["mode"] == "smoke" and len(meta["rows"]) == 2 == len(table)  # + the control
    assert not (tmp_path / "headline.partial.json").exists()  # removed once the run is whole
    assert meta["protocol"]["selection"] == "validation"
    assert meta["protocol"]["validation_images"] == len(data.validation)
    machine = meta["machine"]
    assert {"cpu_model", "threads", "blas", "load_before", "load_after"} <= set(machine)
    for row in meta["rows"]:
        assert {"test_accuracy", "test_accuracy_ci95", "test_drop_points", "test_drop_ci95",
                "seeds", "speedup_b1_iqr", "speedup_b256_iqr", "retime_ratio_b256"} <= set(row)
    assert headline.main(["--smoke", "--out", str(tmp_path), "--retime", "--threads", "1"]) == 0
    after = json.loads((tmp_path / "headline.json").read_text())
    assert after["superseded_timings"][0]["rows"][0]["speedup_b256"] == (
        meta["rows"][0]["speedup_b256"])
    assert all(r["retime_ratio_b256"] > 0 for r in after["rows"])


def test_add_keeps_earlier_rows_and_refuses_another_protocol(smoke, data, tmp_path, monkeypatch):
    monkeypatch.setattr(headline, "load_benchmark_data", lambda *a, **k: data)
    monkeypatch.setattr(headline, "trained_model",
                        lambda name, **k: _toy_mlp() if name == "large-mlp" else _toy_cnn())
    monkeypatch.setattr(headline, "_layer_benchmark", lambda *a, **k: {
        "layer": "toy", "rank": 1, "break_even_rank": 1.0, "batch": 1, "dense_ms": 1.0,
        "factorized_ms": 1.0, "speedup": 1.0, "flop_ratio": 1.0})
    common = ["--smoke", "--out", str(tmp_path), "--threads", "1", "--no-control",
              "--methods", "l1_structured"]
    assert headline.main([*common, "--models", "large-mlp"]) == 0
    first = json.loads((tmp_path / "headline.json").read_text())
    for _ in range(2):  # adding the same network twice replaces its rows
        assert headline.main([*common, "--add", "--models", "small-cnn"]) == 0
    meta = json.loads((tmp_path / "headline.json").read_text())
    table = pd.read_csv(tmp_path / "headline.csv")
    assert [r["model"] for r in meta["rows"]] == ["large-mlp", "small-cnn"] == list(table["model"])
    assert meta["rows"][0] == first["rows"][0]  # the earlier network's row, timing included
    assert meta["layer"] == first["layer"] and len(meta["added_runs"]) == 2
    assert meta["added_runs"][0]["models"] == ["small-cnn"]
    with pytest.raises(SystemExit, match="same protocol"):
        headline.main([*common, "--add", "--models", "small-cnn", "--tolerance", "0.02"])


def test_retime_needs_earlier_results(smoke, tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        headline.main(["--smoke", "--out", str(tmp_path), "--retime"])
    (tmp_path / "headline.json").write_text('{"mode": "smoke", "rows": []}')
    with pytest.raises(SystemExit, match="before the validation protocol"):
        headline.main(["--smoke", "--out", str(tmp_path), "--retime"])
    (tmp_path / "headline.json").write_text('{"mode": ')
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        headline.main(["--smoke", "--out", str(tmp_path), "--retime"])


@pytest.mark.parametrize("argv, message", [
    (["--retime", "--methods", "magnitude (baseline)"], "drop --methods"),
    (["--threads", "0"], "--threads"),
    (["--retime", "--resume"], "pick one"),
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


def test_an_interrupted_run_resumes_from_its_checkpoint(smoke, data, tmp_path, monkeypatch):
    models = {"toy-mlp": _toy_mlp()}
    checkpoint = tmp_path / "headline.partial.json"
    first, _ = headline.run_benchmark(
        ["toy-mlp"], methods=["l1_structured", "pca_interpolative"], dense_models=models,
        data=data, layer=None, num_threads=1, checkpoint=checkpoint, **QUIET,
    )
    stored = json.loads(checkpoint.read_text())
    assert len(stored["rows"]) == 3 and "speedup_b256" not in stored["rows"][0]

    def no_search(*args, **kwargs):
        raise AssertionError("a resumed row must not be searched again")

    monkeypatch.setattr(headline, "find_setting", no_search)
    monkeypatch.setattr(headline, "_control", no_search)
    again, _ = headline.run_benchmark(
        ["toy-mlp"], methods=["l1_structured", "pca_interpolative"], dense_models=models,
        data=data, layer=None, num_threads=1, checkpoint=checkpoint, resume=True, **QUIET,
    )
    timing = {"speedup_b1", "speedup_b256", "speedup_b1_iqr", "speedup_b256_iqr",
              "dense_ms_b256", "pruned_ms_b256", "retime_ratio_b256"}
    for old, new in zip(first.to_dict(orient="records"), again.to_dict(orient="records"),
                        strict=True):
        assert _untimed(old, timing) == _untimed(new, timing)
        assert new["speedup_b256"] > 0
    # a checkpoint of another run, or a damaged one, is refused with the way out
    stored["key"]["tolerance"] = 0.05
    checkpoint.write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="run without --resume"):
        headline.run_benchmark(["toy-mlp"], methods=["l1_structured"], dense_models=models,
                               data=data, layer=None, checkpoint=checkpoint, resume=True,
                               **QUIET)
    checkpoint.write_text("{")
    with pytest.raises(CorruptFileError, match="delete it"):
        headline.run_benchmark(["toy-mlp"], methods=["l1_structured"], dense_models=models,
                               data=data, layer=None, checkpoint=checkpoint, resume=True,
                               **QUIET)


def test_residual_networks_get_the_group_methods_not_the_chain_ones():
    from pruning_utils.models import SmallCNN, SmallResNet

    chain = {m.name for m in headline.benchmark_methods("cnn")}
    residual = {m.name for m in headline.benchmark_methods("cnn", chain=False)}
    assert {"pca_interpolative", "l1_structured"} <= chain
    assert not {"pca_interpolative", "l1_structured"} & residual
    assert {"group_interpolative", "group_l1", "low_rank_energy"} <= residual
    assert headline.benchmark_methods("cnn", ["l1_structured"], chain=False) == ()
    assert headline.is_chain(SmallCNN()) and headline.is_chain(_toy_mlp())
    assert not headline.is_chain(SmallResNet(channels=(4, 8, 16)))
    assert headline.NETWORKS["small-resnet"] == "cnn"


def test_add_merges_a_network_into_earlier_results(smoke, data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(headline, "load_benchmark_data", lambda *a, **k: data)
    monkeypatch.setattr(headline, "trained_model", lambda name, **k: _toy_mlp())
    layer_runs = []
    monkeypatch.setattr(headline, "_layer_benchmark", lambda *a, **k: layer_runs.append(1) or {
        "layer": "toy", "rank": 1, "break_even_rank": 1.0, "batch": 1, "dense_ms": 1.0,
        "factorized_ms": 1.0, "speedup": 1.0, "flop_ratio": 1.0})
    base = ["--smoke", "--out", str(tmp_path), "--threads", "1", "--no-control",
            "--methods", "L1 units (baseline)"]
    assert headline.main([*base, "--models", "large-mlp"]) == 0
    first = json.loads((tmp_path / "headline.json").read_text())
    assert headline.main([*base, "--models", "small-cnn", "--add"]) == 0
    merged = json.loads((tmp_path / "headline.json").read_text())
    assert [r["model"] for r in merged["rows"]] == ["large-mlp", "small-cnn"]
    assert merged["rows"][0] == first["rows"][0]  # the earlier row is kept as it was
    assert merged["machine"] == first["machine"] and merged["layer"] == first["layer"]
    assert merged["added_runs"][0]["models"] == ["small-cnn"] and len(layer_runs) == 1
    assert merged["added_runs"][0]["retimes_before"] == 0  # no --retime ran before it
    assert len(pd.read_csv(tmp_path / "headline.csv")) == 2
    assert headline.main([*base, "--models", "small-cnn", "--add"]) == 0  # replaces its rows
    again = json.loads((tmp_path / "headline.json").read_text())
    assert [r["model"] for r in again["rows"]] == ["large-mlp", "small-cnn"]
    assert len(again["added_runs"]) == 2
    with pytest.raises(SystemExit):
        headline.main(["--smoke", "--out", str(tmp_path), "--retime", "--add"])
    assert "--add runs networks" in capsys.readouterr().err


def test_a_residual_network_runs_with_the_group_methods(smoke, data):
    from pruning_utils.models import SmallResNet

    torch.manual_seed(0)
    resnet = SmallResNet(channels=(4, 8, 8), num_classes=3).eval()
    table, _ = headline.run_benchmark(
        ["toy-resnet"], methods=["group_l1", "group_interpolative", "l1_structured"],
        dense_models={"toy-resnet": resnet}, data=data, layer=None, num_threads=1, **QUIET,
    )
    methods = table[~table.method.str.contains("from scratch")]
    assert list(methods.method_key) == ["group_l1", "group_interpolative"]  # no chain method
    # the train-small control: a SmallResNet (BatchNorm included) of the most compressed
    # width-pruning choice within tolerance on validation, its convolutions as wide
    source = methods[methods.validation_within.astype(bool)].sort_values("params").iloc[0]
    control = table[table.method.str.contains("from scratch")]
    assert list(control.method) == [f"from scratch (widths of {source.method})"]
    assert control.widths.iloc[0] == source.widths
    assert control.params.iloc[0] > source.params  # + BatchNorm, which the pruned one folds
    retimed, _ = headline.retime_benchmark(
        {"mode": "smoke", "rows": table.to_dict(orient="records")},
        dense_models={"toy-resnet": resnet}, data=data, layer=None, num_threads=1, **QUIET)
    assert list(retimed.params) == list(table.params)


def test_the_vit_is_benchmarked_with_the_transformer_methods():
    from pruning_utils.models import build_model

    vit = build_model("vit", seed=0, dim=16, depth=1, heads=2, hidden=16)
    assert headline._network(vit) == "transformer"
    names = {m.name for m in headline.benchmark_methods("transformer")}
    assert {"slice_stream", "prune_heads", "prune_units", "low_rank_energy",
            "low_rank_data"} <= names
    assert "pca_weights" not in names
    fresh = headline.from_scratch_architecture(vit, vit)()  # every tensor re-initialised
    assert not torch.equal(fresh.embed.position, vit.embed.position)


def test_from_scratch_small_resnet_has_the_pruned_widths_and_batchnorm():
    """The train-small control of a residual network: a fresh SmallResNet (BatchNorm back in
    every block) whose every convolution has the width of the pruned network's, with other
    weights than the pruned network."""
    from pruning_utils.models import SmallResNet
    from pruning_utils.surgery import group_prune

    torch.manual_seed(0)
    dense = SmallResNet(channels=(8, 16, 32)).eval()
    X = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    pruned = group_prune(dense, keep={"stem.conv": 5 / 8, "layer2.0.conv1": 9 / 16,
                                      "layer3.0.downsample.conv": 20 / 32}, data=X)
    fresh = headline.from_scratch_architecture(dense, pruned)()
    assert isinstance(fresh, SmallResNet) and fresh.channels == (5, 16, 20)
    assert fresh.inner == (8, 9, 32)

    def conv_shapes(model):
        return {n: tuple(m.weight.shape) for n, m in model.named_modules()
                if isinstance(m, nn.Conv2d)}

    assert conv_shapes(fresh) == conv_shapes(pruned)
    assert isinstance(fresh.layer2[0].bn1, nn.BatchNorm2d)
    assert not torch.equal(fresh.stem.conv.weight, pruned.stem.conv.weight)
    assert fresh(X[:2]).shape == (2, 10)
    # two blocks in a stage: no SmallResNet to rebuild, the pruned network re-initialised
    deeper = SmallResNet(channels=(8, 16, 32), blocks=(2, 1, 1)).eval()
    pruned_deeper = group_prune(deeper, keep={"stem.conv": 5 / 8}, data=X)
    copy = headline.from_scratch_architecture(deeper, pruned_deeper)()
    assert isinstance(copy.layer1[0].bn1, nn.Identity)  # BatchNorm stays folded away
    assert not torch.equal(copy.stem.conv.weight, pruned_deeper.stem.conv.weight)
