"""Parameter and FLOP counts against hand formulas; latency measurement; break-even report."""

import math

import pandas as pd
import pytest
import torch
from torch import nn

from pruning_utils.bench import (
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
    surgery = pytest.importorskip("pruning_utils.surgery")
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
