"""The library on a CUDA device: models and inputs on a GPU, CPU inputs to GPU models,
sampling without host synchronization, generators of the right device, synchronized timing.

Every test here needs a CUDA device and is skipped without one. The CPU side of the same
plumbing (inputs moved to the model's device and dtype, meta tensors refused, generators
of the wrong device type refused, the GPU sampling path without host reads) is tested in
test_measure.py, test_layers.py and test_linalg.py.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning_utils import linalg
from pruning_utils.layers import (
    LowRankConv2d,
    LowRankLinear,
    RandomizedConv2d,
    RandomizedLinear,
    SpatialLowRankConv2d,
)
from pruning_utils.measure import (
    break_even_report,
    compare_latency,
    count_flops,
    measure_latency,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FAST = 0.02  # seconds of timing per measurement
f64 = torch.float64


@pytest.fixture
def cuda() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(autouse=True)
def _full_float32():
    """Float32 products and convolutions in full precision (no TF32), as on the CPU."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@contextlib.contextmanager
def no_host_sync():
    """Raise on any operation that makes the host wait for the GPU."""
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))


# ---------------------------------------------------------------------------
# measure: CPU inputs, CUDA model
# ---------------------------------------------------------------------------


def test_count_flops_moves_cpu_inputs_to_the_model(cuda):
    model, x = _mlp(), torch.randn(5, 3, 4, 4)
    assert count_flops(model.to(cuda), x) == 2 * 5 * (48 * 32 + 32 * 10)


def test_measure_latency_on_the_gpu(cuda):
    model, x = _mlp().to(cuda).train(), torch.randn(8, 3, 4, 4)  # CPU input
    threads = torch.get_num_threads()
    result = measure_latency(model, x, num_threads=1, min_run_time=FAST, warmup=2)
    assert result.device == str(cuda) and result.device_name == torch.cuda.get_device_name(cuda)
    assert result.num_threads is None  # not applied on a GPU
    assert 0 < result.median < 1 and result.batch_size == 8
    assert torch.get_num_threads() == threads and model.training


def test_gpu_timing_waits_for_the_kernels(cuda):
    """The measured time covers the GPU work, not only the kernel launches."""

    class Heavy(nn.Module):
        def forward(self, x):
            for _ in range(8):
                x = x @ x
                x = x / x.norm()
            return x

    x = torch.randn(1024, 1024, device=cuda)
    model = Heavy()
    for _ in range(2):
        model(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        model(x)
    end.record()
    torch.cuda.synchronize()
    per_call = start.elapsed_time(end) / 1000 / 5  # seconds, from CUDA events
    result = measure_latency(model, x, min_run_time=0.1, warmup=1)
    assert result.median >= 0.5 * per_call, (result.median, per_call)


def test_compare_latency_across_devices(cuda):
    cpu_model, gpu_model = _mlp(), _mlp().to(cuda)
    table = compare_latency(
        {"cpu": cpu_model, "gpu": gpu_model}, torch.randn(4, 3, 4, 4), rounds=2, min_run_time=FAST
    )
    assert list(table["device"]) == ["cpu", str(cuda)]
    assert table.loc["cpu", "num_threads"] >= 1 and pd.isna(table.loc["gpu", "num_threads"])
    assert (table["median_s"] > 0).all()


def test_break_even_report_on_the_gpu(cuda):
    from pruning_utils import surgery

    dense = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 8 * 8, 64))  # fmt: skip
    low = surgery.low_rank(dense, rank=4)
    changed = sorted(c.name for c in low.pruning_report.layers if not c.skipped)
    report = break_even_report(
        dense.to(cuda), low.to(cuda), torch.randn(2, 3, 8, 8), rounds=1, min_run_time=FAST
    )
    assert changed and sorted(report["layer"]) == changed
    assert (report["device"] == str(cuda)).all()
    assert (report["measured_speedup"] > 0).all()


# ---------------------------------------------------------------------------
# randomized layers: sampling on the GPU without host synchronization
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["weights", "batch"])
@pytest.mark.parametrize("training", [False, True])
def test_randomized_linear_forward_never_waits(cuda, rule, training):
    torch.manual_seed(0)
    dense = nn.Linear(256, 64).to(cuda)
    x = torch.randn(32, 256, device=cuda)
    x @ dense.weight.T  # initialise cuBLAS outside the checked region
    for samples in (1, 16, 300):  # one draw, fewer than n, more than n
        layer = RandomizedLinear.from_linear(dense, samples, rule, generator=0).train(training)
        with no_host_sync():
            ys = [layer(x) for _ in range(3)]
        assert all(y.shape == (32, 64) and y.device == x.device for y in ys)
    with no_host_sync():
        empty = layer(torch.randn(0, 256, device=cuda))
    assert empty.shape == (0, 64)


@pytest.mark.parametrize("rule", ["weights", "batch"])
def test_randomized_conv_forward_never_waits(cuda, rule):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1).to(cuda)
    layer = RandomizedConv2d.from_conv2d(conv, 7, rule, generator=0)
    x = torch.randn(4, 3, 9, 9, device=cuda)
    conv(x)
    with no_host_sync():
        y = layer(x)
    assert y.shape == (4, 8, 9, 9)


def test_randomized_half_precision_forward_never_waits(cuda):
    torch.manual_seed(0)
    dense = nn.Linear(128, 32).to(cuda, torch.float16)
    x = torch.randn(16, 128, device=cuda, dtype=torch.float16)
    x @ dense.weight.T
    for rule in ("weights", "batch"):
        layer = RandomizedLinear.from_linear(dense, 64, rule, generator=0)
        with no_host_sync():
            y = layer(x)
        assert y.dtype == torch.float16 and bool(torch.isfinite(y).all())


@pytest.mark.parametrize("rule", ["weights", "batch"])
def test_randomized_linear_is_unbiased_on_the_gpu(cuda, rule):
    """The GPU sampler (inverse transform, fixed-size gather) is unbiased: 4000 draws."""
    torch.manual_seed(0)
    dense = nn.Linear(10, 4).double().to(cuda)
    layer = RandomizedLinear.from_linear(dense, samples=3, probabilities=rule, generator=0)
    x = torch.randn(5, 10, dtype=f64, device=cuda)
    with torch.no_grad():
        draws = torch.stack([layer(x) for _ in range(4000)])
        exact = dense(x)
    mean, se = draws.mean(0), draws.std(0) / np.sqrt(draws.shape[0])
    assert bool(((mean - exact).abs() <= 5 * se + 1e-9).all())
    assert float(draws.std(0).max()) > 0


def test_randomized_linear_is_reproducible_per_device(cuda):
    torch.manual_seed(0)
    dense = nn.Linear(64, 16)
    x = torch.randn(8, 64)
    a = RandomizedLinear.from_linear(dense.to(cuda), 8, generator=3)
    b = RandomizedLinear.from_linear(dense.to(cuda), 8, generator=3)
    xa = x.to(cuda)
    first = a(xa)
    torch.testing.assert_close(b(xa), first, rtol=0, atol=0)
    assert not torch.equal(a(xa), first)  # fresh draws on every call
    a.reseed(3)
    torch.testing.assert_close(a(xa), first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="input is on cpu but the layer's weights are on cuda"):
        a(x)


def test_randomize_a_model_and_move_it(cuda):
    """A randomized model built on the CPU and moved to the GPU samples there."""
    dense = nn.Linear(32, 8)
    cpu = RandomizedLinear.from_linear(dense, 16, generator=1)
    gpu = RandomizedLinear.from_linear(dense, 16, generator=1).to(cuda)
    assert gpu.weight.T.is_contiguous() and gpu.weight_probabilities.device == gpu.weight.device
    torch.testing.assert_close(gpu.weight_probabilities.cpu(), cpu.weight_probabilities)
    x = torch.randn(4, 32, device=cuda)
    with no_host_sync():
        assert gpu(x).device == x.device


# ---------------------------------------------------------------------------
# linalg with CUDA tensors and CUDA generators
# ---------------------------------------------------------------------------


def test_factorizations_with_a_cuda_generator(cuda):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(300, 8, dtype=f64, generator=g) @ torch.randn(8, 280, dtype=f64, generator=g)
    W += 1e-3 * torch.randn(300, 280, dtype=f64, generator=g)
    Wc = W.to(cuda)
    gen = torch.Generator(device=cuda).manual_seed(0)
    A, B = linalg.low_rank_factors(Wc, 8, method="randomized", generator=gen)
    assert A.device == Wc.device
    C, D = linalg.low_rank_factors(Wc, 8, method="randomized")  # default: seed 0 on W's device
    torch.testing.assert_close(A, C)
    tail = float(np.sqrt((np.linalg.svd(W.numpy(), compute_uv=False)[8:] ** 2).sum()))
    assert float(torch.linalg.norm(Wc - A @ B)) <= 1.01 * tail
    U, S, Vh = linalg.randomized_svd(Wc, 5, generator=7)
    U2, S2, _ = linalg.randomized_svd(Wc, 5, generator=torch.Generator(device=cuda).manual_seed(7))
    torch.testing.assert_close(S, S2)
    assert U.device == Wc.device
    Q = linalg.randomized_range_finder(Wc, 10, generator=1)
    assert Q.device == Wc.device and Q.shape == (300, 10)
    X = torch.randn(400, 280, dtype=f64, device=cuda)
    A, B = linalg.whitened_low_rank_factors(Wc, X, rank=8, method="randomized", generator=2)
    assert A.device == Wc.device


@pytest.mark.parametrize(
    "call",
    [
        lambda W, g: linalg.low_rank_factors(W, 4, method="randomized", generator=g),
        lambda W, g: linalg.randomized_svd(W, 4, generator=g),
        lambda W, g: linalg.randomized_range_finder(W, 4, generator=g),
        lambda W, g: linalg.randomized_matmul(W, W.T.contiguous(), 3, generator=g),
        lambda W, g: linalg.whitened_low_rank_factors(
            W, W, rank=4, method="randomized", generator=g
        ),
    ],
)
def test_a_cpu_generator_for_cuda_data_is_refused(cuda, call):
    W = torch.randn(20, 20, device=cuda)
    with pytest.raises(ValueError, match="generator lives on cpu but the computation runs on cuda"):
        call(W, torch.Generator().manual_seed(0))


def test_linalg_keeps_results_on_the_device(cuda):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 6, dtype=f64, generator=g)
    result = linalg.pca(X.to(cuda), n_components=3)
    expected = linalg.pca(X, n_components=3)
    assert result.components.device.type == "cuda"
    torch.testing.assert_close(result.components.cpu(), expected.components)
    with pytest.raises(ValueError, match="X and components must be on the same device"):
        result.transform(X)
    idx, T = linalg.interpolative_decomposition(X.to(cuda), 3)
    assert idx.device.type == T.device.type == "cuda"
    x, k = torch.randn(2, 3, 7, 7, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    y = linalg.conv2d_as_matmul(x.to(cuda), k.to(cuda), padding=1)
    torch.testing.assert_close(y.cpu(), F.conv2d(x, k, padding=1), rtol=1e-4, atol=1e-4)
    A, B = torch.randn(3, 5, device=cuda), torch.randn(5, 2)
    with pytest.raises(ValueError, match="A and B must be on the same device"):
        linalg.randomized_matmul(A, B, 2)
    torch.testing.assert_close(linalg.sampling_probabilities(A, B.to(cuda)).sum().cpu(),
                               torch.tensor(1.0))  # fmt: skip


# ---------------------------------------------------------------------------
# low-rank layers on the GPU
# ---------------------------------------------------------------------------


def test_low_rank_layers_on_the_gpu(cuda):
    torch.manual_seed(0)
    linear = nn.Linear(40, 30)
    x = torch.randn(6, 40)
    cpu = LowRankLinear.from_linear(linear, rank=30)
    gpu = LowRankLinear.from_linear(linear.to(cuda), rank=30)
    assert gpu.first.weight.device == linear.weight.device
    torch.testing.assert_close(gpu(x.to(cuda)).cpu(), cpu.to("cpu")(x), rtol=1e-4, atol=1e-4)
    data = torch.randn(100, 40)  # calibration data on the CPU, layer on the GPU
    aware = LowRankLinear.from_linear(linear, rank=5, data=data)
    assert aware.first.weight.device == linear.weight.device
    conv = nn.Conv2d(3, 8, 3, padding=1).to(cuda)
    xc = torch.randn(2, 3, 9, 9, device=cuda)
    for cls, full in ((LowRankConv2d, 8), (SpatialLowRankConv2d, 9)):
        layer = cls.from_conv2d(conv, rank=full)
        torch.testing.assert_close(layer(xc), conv(xc), rtol=1e-4, atol=1e-4)


def test_correct_predictions_and_intervals_of_a_gpu_model(cuda):
    from pruning_utils.stats import accuracy_interval, correct_predictions
    from pruning_utils.train import evaluate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).to(cuda)
    x, y = torch.randn(70, 3, 4), torch.randint(0, 4, (70,))  # CPU data, GPU model
    correct = correct_predictions(model, (x, y), batch_size=16)
    assert correct.device.type == "cpu" and correct.shape == (70,)
    assert torch.equal(correct, (model.cpu()(x).argmax(1) == y))
    model.to(cuda)
    assert float(correct.float().mean()) == pytest.approx(evaluate(model, (x, y)))
    interval = accuracy_interval(correct)
    assert interval.low <= interval.estimate <= interval.high


def test_sweep_scores_validation_on_the_gpu(cuda):
    from torch.utils.data import TensorDataset

    from pruning_utils.sweeps import sweep

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 3)).to(cuda)
    data = TensorDataset(torch.randn(60, 1, 4, 4), torch.arange(60) % 3)
    val = TensorDataset(torch.randn(30, 1, 4, 4), torch.arange(30) % 3)
    df = sweep(model, "l1_structured", [0.5, 1.0], test_data=data, val_data=val,
               batch_sizes=(8,), rounds=1, min_run_time=FAST, progress=False)
    assert df["val_accuracy"].between(0, 1).all() and df["speedup_b8"].gt(0).all()
    assert (df["speedup_q1_b8"] <= df["speedup_b8"]).all()


# ---------------------------------------------------------------------------
# group pruning of a residual network on the GPU
# ---------------------------------------------------------------------------


def test_group_prune_on_the_gpu_matches_the_cpu(cuda):
    from pruning_utils.models import SmallResNet
    from pruning_utils.surgery import group_prune

    torch.manual_seed(0)
    net = SmallResNet(channels=(8, 16, 32)).train()
    with torch.no_grad():
        for _ in range(3):
            net(2 * torch.randn(16, 1, 28, 28) + 0.5)
    net.eval()
    X = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for options in ({"variance": 0.95}, {"keep": 0.5, "criterion": "l1"}):
        on_cpu = group_prune(net, data=X, **options)
        on_gpu = group_prune(net.to(cuda), data=X, **options)
        net.cpu()
        assert on_gpu.stem.conv.weight.device.type == "cuda"
        assert on_gpu.stem.conv.out_channels == on_cpu.stem.conv.out_channels
        with torch.no_grad():
            torch.testing.assert_close(on_gpu(X.to(cuda)).cpu(), on_cpu(X), rtol=1e-4, atol=1e-4)
    whole = group_prune(net.to(cuda), 1.0, data=X)
    with torch.no_grad():
        torch.testing.assert_close(whole(X.to(cuda)), net(X.to(cuda)), rtol=1e-4, atol=1e-4)
