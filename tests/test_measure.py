"""Parameter and FLOP counts against hand formulas; latency measurement; break-even report."""

import copy
import math

import pandas as pd
import pytest
import torch
from torch import nn

from pruning_utils.measure import (
    LatencyResult,
    break_even_report,
    compare_latency,
    count_flops,
    count_params,
    measure_latency,
)

FAST = 0.01  # seconds of timing per measurement in these tests


class StandInFactor(nn.Module):
    """W ≈ A @ B as two bias-free/biased Linear layers, with a ``rank`` attribute."""

    def __init__(self, linear: nn.Linear, rank: int):
        super().__init__()
        U, S, Vh = torch.linalg.svd(linear.weight.detach(), full_matrices=False)
        self.first = nn.Linear(linear.in_features, rank, bias=False)
        self.second = nn.Linear(rank, linear.out_features)
        with torch.no_grad():
            self.first.weight.copy_(Vh[:rank])
            self.second.weight.copy_(U[:, :rank] * S[:rank])
            self.second.bias.copy_(linear.bias)
        self.rank = rank

    def forward(self, x):
        return self.second(self.first(x))


def test_count_params_matches_manual_sum_and_nonzero():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Conv2d(2, 3, 3))
    expected = 5 * 4 + 4 + 2 * 3 * 9 + 3
    assert count_params(model) == expected
    with torch.no_grad():
        model[0].weight[:2].zero_()
    assert count_params(model) == expected
    assert count_params(model, nonzero=True) == expected - 10


def test_count_params_counts_shared_parameters_once():
    layer = nn.Linear(3, 3)
    assert count_params(nn.Sequential(layer, layer)) == 12


@pytest.mark.parametrize("batch", [1, 7])
def test_count_flops_linear_is_two_batch_in_out(batch):
    layer = nn.Linear(30, 20)
    assert count_flops(layer, torch.randn(batch, 30)) == 2 * batch * 30 * 20


@pytest.mark.parametrize(
    ("c_in", "c_out", "k", "stride", "padding", "size"),
    [(3, 8, 3, 1, 1, 12), (4, 6, 5, 2, 0, 17), (1, 2, (3, 1), 1, (1, 0), 9)],
)
def test_count_flops_conv_matches_formula(c_in, c_out, k, stride, padding, size):
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding)
    x = torch.randn(2, c_in, size, size)
    out = conv(x)
    k_h, k_w = conv.kernel_size
    expected = 2 * 2 * c_out * out.shape[2] * out.shape[3] * c_in * k_h * k_w
    assert count_flops(conv, x) == expected


def test_count_flops_restores_training_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    running = model[1].running_mean.clone()
    assert count_flops(model, torch.randn(3, 4)) == 2 * 3 * (16 + 8)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, running)  # eval mode: statistics untouched


def test_measure_latency_result_and_state():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU()).train()
    threads = torch.get_num_threads()
    result = measure_latency(model, torch.randn(8, 64), num_threads=1, min_run_time=FAST)
    assert isinstance(result, LatencyResult)
    assert 0 < result.median < 1 and result.iqr >= 0 and result.mean > 0
    assert result.number_of_runs >= 1 and result.number_per_run >= 1
    assert result.num_threads == 1 and result.batch_size == 8
    assert torch.get_num_threads() == threads
    assert model.training  # mode restored
    default = measure_latency(model, torch.randn(8, 64), min_run_time=FAST, warmup=0)
    assert default.num_threads == threads
    assert set(result.to_dict()) >= {"median", "iqr", "mean", "number_of_runs", "num_threads"}


def test_measure_latency_runs_under_inference_mode():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((torch.is_inference_mode_enabled(), self.training))
            return x

    measure_latency(Probe().train(), torch.zeros(1), min_run_time=FAST, warmup=1)
    assert seen and all(inference and not training for inference, training in seen)


def test_compare_latency_orders_a_big_and_a_small_model():
    torch.manual_seed(0)
    small = nn.Linear(256, 256)
    big = nn.Sequential(*[nn.Linear(256, 256) for _ in range(16)])
    x = torch.randn(32, 256)
    table = compare_latency({"big": big, "small": small}, x, rounds=3, min_run_time=0.03)
    assert list(table.index) == ["big", "small"]
    assert table.loc["big", "speedup"] == pytest.approx(1.0)
    assert table.loc["small", "speedup"] > 2.0  # 16 times fewer multiply-adds
    assert table.loc["big", "median_s"] > table.loc["small", "median_s"]
    assert (table["rounds"] == 3).all() and (table["batch_size"] == 32).all()
    for name in ("big", "small"):  # the quartiles bracket the median of the paired ratios
        q1, q3 = table.loc[name, ["speedup_q1", "speedup_q3"]]
        assert q1 <= table.loc[name, "speedup"] <= q3
        assert q3 - q1 == pytest.approx(table.loc[name, "speedup_iqr"])
    relative = compare_latency(
        {"big": big, "small": small}, x, reference="small", rounds=1, min_run_time=FAST
    )
    assert relative.loc["small", "speedup"] == pytest.approx(1.0)


def test_break_even_report_with_stand_in_factor():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    factorized = nn.Sequential(
        nn.Flatten(), StandInFactor(dense[1], rank=8), nn.ReLU(), nn.Linear(48, 10)
    )
    factorized[3].load_state_dict(dense[3].state_dict())
    x = torch.randn(16, 4, 16)
    report = break_even_report(dense, factorized, x, rounds=1, min_run_time=FAST)
    assert isinstance(report, pd.DataFrame) and list(report["layer"]) == ["1"]
    row = report.iloc[0]
    assert row["type"] == "StandInFactor" and row["shape"] == "48×64" and row["rank"] == 8
    r_star = 48 * 64 / (48 + 64)
    assert row["break_even_rank"] == pytest.approx(r_star)
    assert row["rank_ratio"] == pytest.approx(8 / r_star)
    assert row["dense_flops"] == 2 * 16 * 64 * 48
    assert row["factorized_flops"] == 2 * 16 * 8 * (64 + 48)
    assert row["predicted_speedup"] == pytest.approx(64 * 48 / (8 * 112))
    assert row["measured_speedup"] > 0 and row["dense_s"] > 0 and row["batch_size"] == 16


def test_break_even_report_on_surgery_low_rank():
    from pruning_utils import surgery

    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    low = surgery.low_rank(dense, rank=4)
    report = break_even_report(dense, low, torch.randn(2, 3, 8, 8), rounds=1, min_run_time=FAST)
    changed = [c.name for c in low.pruning_report.layers if not c.skipped]
    assert sorted(report["layer"]) == sorted(changed)
    conv = report.set_index("layer").loc["0"]
    assert conv["break_even_rank"] == pytest.approx(9 * 3 * 16 / (9 * 3 + 16))
    assert (report["rank"] == 4).all()


def test_break_even_report_without_factorized_layers_is_empty():
    model = nn.Sequential(nn.Linear(4, 4))
    report = break_even_report(model, model, torch.randn(1, 4), min_run_time=FAST)
    assert report.empty and "measured_speedup" in report.columns


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: count_params("m"), TypeError, "model must be"),
        (lambda: count_params(nn.Linear(2, 2), nonzero=1), TypeError, "nonzero"),
        (lambda: count_flops(nn.Linear(2, 2), [1.0, 2.0]), TypeError, "example_input"),
        (
            lambda: measure_latency(nn.Linear(2, 2), torch.zeros(1, 2), num_threads=0),
            ValueError,
            "num_threads",
        ),
        (
            lambda: measure_latency(nn.Linear(2, 2), torch.zeros(1, 2), min_run_time=-1.0),
            ValueError,
            "min_run_time",
        ),
        (
            lambda: measure_latency(nn.Linear(2, 2), torch.zeros(1, 2), warmup=-1),
            ValueError,
            "warmup",
        ),
        (lambda: compare_latency({}, torch.zeros(1, 2)), ValueError, "non-empty"),
        (
            lambda: compare_latency({"a": nn.Linear(2, 2)}, torch.zeros(1, 2), reference="b"),
            ValueError,
            "reference",
        ),
        (
            lambda: compare_latency({"a": nn.Linear(2, 2)}, torch.zeros(1, 2), rounds=0),
            ValueError,
            "rounds",
        ),
        (lambda: compare_latency({"a": "m"}, torch.zeros(1, 2)), TypeError, "models"),
        (
            lambda: break_even_report(nn.Linear(2, 2), None, torch.zeros(1, 2)),
            TypeError,
            "factorized_model",
        ),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_latency_defaults_come_from_config(monkeypatch):
    monkeypatch.setenv("PRUNING_BOOK_SMOKE", "1")
    result = measure_latency(nn.Linear(4, 4), torch.zeros(1, 4))
    assert result.number_of_runs >= 1 and math.isfinite(result.median)


# ---------------------------------------------------------------------------
# devices: inputs follow the model, results say what was timed
# ---------------------------------------------------------------------------


class Probe(nn.Module):
    """Records the device, dtype and identity of each input it receives."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, x):
        self.seen.append((x.device, x.dtype, id(x)))
        return x * self.scale


def test_inputs_are_moved_to_the_model_dtype_and_kept_when_already_there():
    probe = Probe().double()
    x = torch.randn(3, 4)  # float32 input, float64 model
    assert count_flops(probe, x) == 0
    result = measure_latency(probe, x, min_run_time=FAST, warmup=1)
    assert {(d.type, t) for d, t, _ in probe.seen} == {("cpu", torch.float64)}
    assert result.device == "cpu" and result.device_name and result.num_threads >= 1
    same = Probe()
    y = torch.randn(3, 4)
    measure_latency(same, y, min_run_time=FAST, warmup=1)
    assert {i for _, _, i in same.seen} == {id(y)}  # no copy when nothing must move


def test_count_flops_on_the_meta_device():
    """A model on the meta device is counted from shapes alone, with a CPU input."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    )
    x = torch.randn(2, 3, 6, 6)
    expected = count_flops(model, x)
    assert expected == 2 * 2 * (8 * 36 * 27 + 8 * 36 * 10)
    assert count_flops(model.to("meta"), x) == expected


def test_timing_refuses_the_meta_device():
    model = nn.Linear(4, 4, device="meta")
    with pytest.raises(ValueError, match="model is on the meta device.*nothing to time"):
        measure_latency(model, torch.zeros(1, 4), min_run_time=FAST)
    with pytest.raises(ValueError, match=r"models\['m'\] is on the meta device"):
        compare_latency({"m": model}, torch.zeros(1, 4), min_run_time=FAST)


def test_compare_latency_records_the_device():
    table = compare_latency(
        {"a": nn.Linear(8, 8), "b": nn.Linear(8, 2)},
        torch.randn(2, 8),
        rounds=1,
        min_run_time=FAST,
        num_threads=1,
    )
    assert list(table["device"]) == ["cpu", "cpu"] and (table["num_threads"] == 1).all()
    assert str(table["num_threads"].dtype) == "Int64"
    assert table["device_name"].map(bool).all()


def test_break_even_report_identifies_layers_by_class_not_name():
    """The spatial r* is used for the library's SpatialLowRankConv2d (and subclasses) only."""
    from pruning_utils.layers import SpatialLowRankConv2d as Spatial

    class SpatialLowRankConv2d(nn.Module):  # same name, another class: channel split
        def __init__(self, conv, rank):
            super().__init__()
            self.first = nn.Conv2d(conv.in_channels, rank, conv.kernel_size, padding=1)
            self.second = nn.Conv2d(rank, conv.out_channels, 1)
            self.rank = rank

        def forward(self, x):
            return self.second(self.first(x))

    class Renamed(Spatial):
        pass

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1))
    x = torch.randn(1, 4, 5, 5)
    r_channel = 9 * 4 * 6 / (9 * 4 + 6)
    r_spatial = 9 * 4 * 6 / (3 * 4 + 3 * 6)
    lookalike = nn.Sequential(SpatialLowRankConv2d(dense[0], 2))
    real = nn.Sequential(Renamed.from_conv2d(dense[0], rank=2))
    rows = {
        "lookalike": break_even_report(dense, lookalike, x, rounds=1, min_run_time=FAST),
        "real": break_even_report(dense, real, x, rounds=1, min_run_time=FAST),
    }
    assert rows["lookalike"].iloc[0]["break_even_rank"] == pytest.approx(r_channel)
    assert rows["real"].iloc[0]["break_even_rank"] == pytest.approx(r_spatial)
    assert rows["real"].iloc[0]["type"] == "Renamed" and rows["real"].iloc[0]["device"] == "cpu"


def test_machine_record_names_what_a_timing_depends_on():
    from pruning_utils.measure import machine_record

    record = machine_record(1)
    assert record["threads"] == 1 and record["cpu_count"] >= 1
    assert isinstance(record["cpu_model"], str) and record["cpu_model"]
    assert isinstance(record["blas"], dict) and record["torch"] == torch.__version__
    load = record["load_average"]
    assert load is None or (len(load) == 3 and all(v >= 0 for v in load))
    with pytest.raises(ValueError, match="num_threads"):
        machine_record(0)


def test_page_faults_count_fresh_pages():
    import mmap

    from pruning_utils.measure import page_faults

    if page_faults() is None:
        pytest.skip("this system does not count page faults")
    pages = 2048
    region = mmap.mmap(-1, pages * mmap.PAGESIZE)  # fresh anonymous memory, not yet touched
    before = page_faults()
    for k in range(pages):
        region[k * mmap.PAGESIZE] = 1  # one write per page: one fault per page
    touched = page_faults() - before
    region.close()
    assert pages <= touched < pages + 200


def test_freed_memory_is_reused_without_page_faults():
    import platform

    from pruning_utils.measure import keep_freed_memory, page_faults

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert keep_freed_memory() is False
        return
    assert keep_freed_memory() is True and keep_freed_memory() is True  # idempotent
    pages = (64 << 20) // 4096  # a 64 MiB block: above glibc's largest default mmap threshold
    faults = []
    for _ in range(20):
        before = page_faults()
        torch.ones(64 << 18)  # 64 MiB of float32, written and freed
        faults.append(page_faults() - before)
    assert max(faults) < pages + 500  # at most every page once
    # once the heap has grown to hold the block, it stays: no fresh pages any more
    assert max(faults[-3:]) < 200, f"freed memory was given back and touched again: {faults}"


def test_compare_latency_reports_page_faults_per_call():
    model = nn.Linear(8, 4)
    table = compare_latency({"a": model, "b": copy.deepcopy(model)}, torch.randn(16, 8),
                            rounds=1, min_run_time=0.01, warmup=1)
    faults = table["faults_per_call"]
    assert faults.isna().all() or ((faults >= 0) & (faults < 1000)).all()


def test_page_fault_probe_sees_freed_memory_returned_and_kept():
    import platform

    from pruning_utils.measure import page_fault_probe

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the probe needs glibc")
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256))
    x = torch.randn(512, 256)  # activations of 2 MiB (512 × 1024 floats), far above 128 KiB
    pages = 512 * 1024 * 4 // 4096
    returned = page_fault_probe(model, x, keep_memory=False, num_threads=1, calls=5)
    kept = page_fault_probe(model, x, keep_memory=True, num_threads=1, calls=5)
    assert returned["faults_per_call"] >= pages  # at least the hidden activation's pages, anew
    assert kept["faults_per_call"] < pages / 10
    assert returned["median_s"] > 0 and kept["median_s"] > 0
    with pytest.raises(ValueError, match="calls"):
        page_fault_probe(model, x, keep_memory=True, calls=0)
    with pytest.raises(TypeError, match="keep_memory"):
        page_fault_probe(model, x, keep_memory="yes")
