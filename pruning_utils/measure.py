"""Measuring a model: parameters, FLOPs and wall-clock latency, and where low rank breaks even.

Conventions
-----------
* **Devices.** Every function that takes a model and inputs runs the model where it is:
  the inputs are moved to the model's device and floating dtype
  (:func:`pruning_utils.nnutils.to_model`), so a CPU batch can be given to a model on a
  GPU. Latency results record the device that was timed (``device``, ``device_name``).
* **FLOPs** are counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts
  matrix products and convolutions only, at **2 FLOPs per multiply-add**: a Linear layer on
  a batch of N costs ``2·N·in·out``, a Conv2d ``2·N·C_out·H_out·W_out·C_in·k_h·k_w``
  (divided by ``groups``). Bias additions, activations, pooling and BatchNorm are not
  counted; neither is the sampling inside randomized layers (only its matrix products).
  A model on the meta device is counted too (shapes only, nothing is computed).
* **Latency** is wall-clock seconds per forward call, measured with
  :class:`torch.utils.benchmark.Timer` (``blocked_autorange``) under
  ``torch.inference_mode()`` with the model in eval mode, after untimed warm-up calls.
  On the CPU the timing runs at an explicit intra-op thread count (``num_threads``). On a
  GPU the clock is read only after ``torch.cuda.synchronize``, so a block of calls is
  timed until its last kernel has finished, and ``num_threads`` does not apply (the host
  threads only launch kernels): it is recorded as ``None``. A shared machine is noisy, so
  comparisons between models are *interleaved* (:func:`compare_latency`): short
  measurements of A, B, A, B, ... and medians over rounds.
* **Memory.** Before timing on the CPU, :func:`keep_freed_memory` asks glibc's allocator to
  keep freed memory in the process. By default it hands large freed blocks back to the
  operating system, and the next forward pass pays a page fault for every 4 KiB page of
  its activations, in some processes and not in others, depending on what ran before; a
  model's time would then depend on the allocator's history. :func:`compare_latency`
  reports the minor page faults of one call of each model (``faults_per_call``) so that
  this is visible.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import math
import platform
import timeit
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pruning_utils.config import get_config
from pruning_utils.layers import SpatialLowRankConv2d
from pruning_utils.linalg import break_even_rank, conv_break_even_rank, spatial_break_even_rank
from pruning_utils.nnutils import capture_inputs, eval_mode, model_device, to_model
from pruning_utils.validation import check_bool, check_int, check_model, check_real


def _import_quietly():
    """Import torch.utils.benchmark without the CUDA-toolkit notice it logs on CPU-only machines.

    The import goes through ``torch.utils.cpp_extension``, which warns "No CUDA runtime is
    found" when a CUDA toolkit is installed but no GPU is present; CPU timing does not use it.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        logger.setLevel(level)
    return benchmark


benchmark = _import_quietly()

__all__ = [
    "LatencyResult",
    "count_params",
    "count_flops",
    "measure_latency",
    "compare_latency",
    "break_even_report",
    "device_name",
    "keep_freed_memory",
    "page_faults",
    "page_fault_probe",
]


# ----------------------------------------------------------------------------- memory

#: glibc's mallopt parameters (malloc.h) and the value both are set to
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 1 << 30
_memory_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Ask the C allocator to keep freed memory in the process, so timings pay no page faults.

    glibc's ``malloc`` serves large blocks with ``mmap`` (above a threshold that it raises
    as the process frees such blocks, up to 32 MiB) and returns the top of its heap to the
    system when more than a trim threshold is free. A forward pass that allocates an
    activation of that size then touches fresh pages, one page fault per 4 KiB, and
    whether it does depends on what the process allocated before. Both thresholds are set
    to 1 GiB with ``mallopt``: freed activations stay in the process and the next call
    reuses them. Process-wide and permanent (the process keeps up to 1 GiB it no longer
    uses); called by :func:`measure_latency` and :func:`compare_latency` before timing on
    the CPU.

    Returns
    -------
    bool
        Whether the allocator took the setting: ``False`` where the C library is not glibc
        (macOS, Windows, musl), which is then left as it is.
    """
    global _memory_kept
    if _memory_kept is None:
        _memory_kept = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _memory_kept = bool(
                    libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)
                    and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
                )
            except (OSError, AttributeError):
                _memory_kept = False
    return _memory_kept


def page_faults() -> int | None:
    """Minor page faults of this process so far (``None`` where the system does not count
    them): the difference around a call is what the call cost in fresh pages."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


_PROBE = """
import json, sys, time
import torch
from pruning_utils.measure import keep_freed_memory, page_faults
folder, threads, calls, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
if keep:
    keep_freed_memory()
torch.set_num_threads(threads)
model = torch.load(folder + "/model.pt", weights_only=False).eval()
x = torch.load(folder + "/input.pt")
seconds, faults = [], []
with torch.inference_mode():
    for _ in range(3):
        model(x)
    for _ in range(calls):
        before, start = page_faults(), time.perf_counter()
        model(x)
        seconds.append(time.perf_counter() - start)
        faults.append(page_faults() - before)
seconds.sort()
faults.sort()
middle = len(seconds) // 2
print(json.dumps({"median_s": seconds[middle], "faults_per_call": faults[middle]}))
"""


def page_fault_probe(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    keep_memory: bool,
    num_threads: int | None = None,
    calls: int = 10,
) -> dict[str, float]:
    """Time a CPU model in a fresh Python process whose allocator returns, or keeps, freed memory.

    With ``keep_memory=False`` the process starts with ``MALLOC_MMAP_THRESHOLD_=131072``:
    glibc then serves every block above 128 KiB with ``mmap`` and gives it back to the
    system when it is freed, which is what it does, by default, for the blocks above its
    adjusted threshold (it depends on what the process allocated before). With
    ``keep_memory=True`` the process calls :func:`keep_freed_memory` first, as every timing
    function of this module does. After three untimed calls, ``calls`` calls are timed one by
    one and their minor page faults counted.

    Returns
    -------
    dict
        ``{"median_s", "faults_per_call"}``: medians over the calls.

    Raises
    ------
    RuntimeError
        Where page faults are not counted or the allocator is not glibc (the probe would
        measure nothing), or when the child process fails (its error is in the message).
    """
    import os
    import subprocess
    import sys
    import tempfile

    model = check_model(model)
    if model_device(model).type != "cpu":
        raise ValueError("page_fault_probe times CPU models; move the model to the CPU")
    keep_memory = check_bool("keep_memory", keep_memory)
    threads = _check_threads(num_threads)
    calls = check_int("calls", calls, lower=1)
    x = to_model(_check_input(example_input), model)
    if page_faults() is None or not keep_freed_memory():
        raise RuntimeError("page_fault_probe needs Linux with glibc (page faults counted, "
                           "mallopt available)")
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if not keep_memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    with tempfile.TemporaryDirectory() as folder:
        torch.save(model, os.path.join(folder, "model.pt"))
        torch.save(x, os.path.join(folder, "input.pt"))
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, folder, str(threads), str(calls),
             "1" if keep_memory else "0"],
            env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the probe process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _faults_per_call(model: nn.Module, x: torch.Tensor) -> float:
    """Minor page faults of one forward call (NaN where they are not counted)."""
    before = page_faults()
    if before is None:
        return math.nan
    with torch.inference_mode():
        model(x)
    return float(page_faults() - before)


# ----------------------------------------------------------------------------- helpers


def _check_input(example_input: object) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    return example_input


def _check_threads(num_threads: object) -> int:
    if num_threads is None:
        return torch.get_num_threads()
    return check_int("num_threads", num_threads, lower=1)


def _check_time(name: str, value: object) -> float:
    if value is None:
        return float(get_config().timing_seconds)
    return check_real(name, value, lower=0.0, include_lower=False)


def _check_timed_device(device: torch.device, name: str = "model") -> torch.device:
    if device.type == "meta":
        raise ValueError(
            f"{name} is on the meta device and holds no values: there is nothing to time; "
            "materialize it first (e.g. model.to_empty(device='cpu') and load the weights)"
        )
    return device


def _iqr(values: list[float] | np.ndarray) -> float:
    q1, q3 = np.quantile(np.asarray(values, dtype=float), [0.25, 0.75])
    return float(q3 - q1)


def _batch_size(x: torch.Tensor) -> int:
    return int(x.shape[0]) if x.dim() else 1


def device_name(device: torch.device | str) -> str:
    """A readable name of ``device``: the GPU's model (``"NVIDIA H100 80GB HBM3"``), or the CPU's.

    >>> device_name("cpu") != ""
    True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return platform.processor() or platform.machine() or "cpu"
    return device.type


def _synchronize(device: torch.device) -> None:
    """Wait for every kernel queued on ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        sync = getattr(getattr(torch, device.type, None), "synchronize", None)
        if sync is not None:
            sync()


def _clock(device: torch.device) -> Callable[[], float]:
    """The timer of ``device``: wall clock, read after the device has finished its work."""
    if device.type == "cpu":
        return timeit.default_timer

    def synchronized() -> float:
        _synchronize(device)
        return timeit.default_timer()

    return synchronized


# ----------------------------------------------------------------------------- counting


def count_params(model: nn.Module, *, nonzero: bool = False) -> int:
    """Number of parameters of ``model`` (every ``nn.Parameter``, counted once).

    Parameters
    ----------
    model:
        Any module.
    nonzero:
        Count only nonzero entries. After magnitude pruning the zeros are still stored in
        dense tensors, so ``count_params(m)`` is unchanged while
        ``count_params(m, nonzero=True)`` drops.

    Returns
    -------
    int
        ``Σ_p numel(p)`` over the parameters ``p`` (or ``Σ_p nnz(p)``).

    Examples
    --------
    >>> count_params(nn.Linear(4, 3))
    15
    """
    model = check_model(model)
    check_bool("nonzero", nonzero)
    params = model.parameters()  # shared parameters are yielded once
    if nonzero:
        return int(sum(int(torch.count_nonzero(p.detach())) for p in params))
    return int(sum(p.numel() for p in params))


def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``model`` on ``example_input``.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` at 2 FLOPs per multiply-add
    (matrix products and convolutions only; see the module docstring). A Linear layer costs
    ``2·N·in_features·out_features`` and a Conv2d ``2·N·C_out·H_out·W_out·C_in·k_h·k_w``
    for a batch of ``N``; pass a batch of one for FLOPs per image.

    Parameters
    ----------
    model:
        The model; run in eval mode without gradients, its modes are restored afterwards.
        It may live on any device, the meta device included.
    example_input:
        A batch of inputs, moved to the model's device and floating dtype.

    Returns
    -------
    int
        Total FLOPs of the forward pass.

    Examples
    --------
    >>> count_flops(nn.Linear(30, 20), torch.randn(4, 30))
    4800
    """
    model = check_model(model)
    x = to_model(_check_input(example_input), model)
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class LatencyResult:
    """Wall-clock time of one forward call, in seconds.

    Attributes
    ----------
    median, iqr, mean:
        Median, interquartile range and mean over the timed blocks (seconds per call).
    number_of_runs:
        Number of timed blocks.
    number_per_run:
        Calls per timed block (each block's time is divided by it).
    num_threads:
        Intra-op threads used while timing on the CPU; ``None`` on a GPU, where it does
        not apply.
    batch_size:
        First dimension of the input.
    device:
        The device that was timed (``"cpu"``, ``"cuda:0"``).
    device_name:
        Its readable name (:func:`device_name`), e.g. the GPU's model.
    """

    median: float
    iqr: float
    mean: float
    number_of_runs: int
    number_per_run: int
    num_threads: int | None
    batch_size: int
    device: str = "cpu"
    device_name: str = ""

    def to_dict(self) -> dict[str, float | int | str | None]:
        """The fields as a dict (for DataFrames)."""
        return asdict(self)


def _timer(
    model: nn.Module, x: torch.Tensor, device: torch.device, num_threads: int
) -> benchmark.Timer:
    """A Timer of ``model(x)``: ``num_threads`` on the CPU, a synchronizing clock elsewhere."""
    return benchmark.Timer(
        stmt="model(x)",
        globals={"model": model, "x": x},
        # on a GPU the thread count is left as it is: it only changes how kernels are launched
        num_threads=num_threads if device.type == "cpu" else torch.get_num_threads(),
        timer=_clock(device),
    )


def _warm_up(timer: benchmark.Timer, calls: int, device: torch.device) -> None:
    if calls:
        with torch.inference_mode():
            timer.timeit(calls)
        _synchronize(device)


def _time_blocks(timer: benchmark.Timer, min_run_time: float) -> benchmark.Measurement:
    with torch.inference_mode():
        return timer.blocked_autorange(min_run_time=min_run_time)


def measure_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    num_threads: int | None = None,
    min_run_time: float | None = None,
    warmup: int = 3,
) -> LatencyResult:
    """Median wall-clock time of ``model(example_input)`` on the model's device.

    The input is moved to the model's device and floating dtype (once, before timing). The
    model is put in eval mode (each submodule's mode is restored afterwards), called
    ``warmup`` times, then timed with ``torch.utils.benchmark.Timer.blocked_autorange``
    under ``torch.inference_mode()``: at ``num_threads`` intra-op threads on the CPU, with
    the clock read after ``torch.cuda.synchronize`` on a GPU.

    Parameters
    ----------
    model:
        The model to time (not on the meta device).
    example_input:
        The input batch, on any device.
    num_threads:
        Intra-op threads while timing on the CPU; default ``torch.get_num_threads()``.
        Recorded in the result. Ignored for a model on a GPU (recorded as ``None``).
    min_run_time:
        Minimum total measuring time in seconds; default ``get_config().timing_seconds``.
    warmup:
        Untimed calls before measuring (an int >= 0).

    Returns
    -------
    LatencyResult
        Median, IQR and mean seconds per call, how they were measured, and on which device.
    """
    model = check_model(model)
    device = _check_timed_device(model_device(model))
    x = to_model(_check_input(example_input), model)
    threads = _check_threads(num_threads)
    min_run_time = _check_time("min_run_time", min_run_time)
    warmup = check_int("warmup", warmup, lower=0)
    if device.type == "cpu":
        keep_freed_memory()
    with eval_mode(model):
        timer = _timer(model, x, device, threads)
        _warm_up(timer, warmup, device)
        measurement = _time_blocks(timer, min_run_time)
    times = list(measurement.times)
    return LatencyResult(
        median=float(measurement.median),
        iqr=_iqr(times),
        mean=float(measurement.mean),
        number_of_runs=len(times),
        number_per_run=int(measurement.number_per_run),
        num_threads=threads if device.type == "cpu" else None,
        batch_size=_batch_size(x),
        device=str(device),
        device_name=device_name(device),
    )


def compare_latency(
    models: Mapping[str, nn.Module],
    example_input: torch.Tensor,
    *,
    reference: str | None = None,
    rounds: int = 5,
    num_threads: int | None = None,
    min_run_time: float | None = None,
    warmup: int = 3,
) -> pd.DataFrame:
    """Time several models on the same input, interleaved, and report speedups.

    Each round times every model for ``min_run_time / rounds`` seconds, in a rotating order
    (A, B, C, then B, C, A, ...), so that slow drifts of a shared machine hit all models
    alike. A model's latency is the median over rounds of its per-round medians; its
    speedup is the median over rounds of ``t_ref / t_model`` within the same round
    (paired ratios cancel noise common to the round). Each model runs on its own device,
    on a copy of the input moved there (models on different devices can be compared, a
    CPU model against a GPU one, say); GPU timings are synchronized as in
    :func:`measure_latency`.

    Parameters
    ----------
    models:
        Named models, e.g. ``{"dense": m, "rank 64": m64}`` (at least one).
    example_input:
        The input batch given to every model, on any device.
    reference:
        Name of the model speedups are relative to; default the first one.
    rounds:
        Number of interleaved rounds (>= 1).
    num_threads:
        Intra-op threads on the CPU; default ``torch.get_num_threads()``. Not applied to
        models on a GPU.
    min_run_time:
        Total measuring time per model in seconds, split over the rounds; default
        ``get_config().timing_seconds``.
    warmup:
        Untimed calls per model before the first round.

    Returns
    -------
    pandas.DataFrame
        One row per model (index ``model``) with columns ``median_s``, ``iqr_s`` (IQR of
        the per-round medians), ``mean_s``, ``speedup`` (``t_ref / t_model``; > 1 is
        faster), ``speedup_iqr`` and its quartiles ``speedup_q1``, ``speedup_q3`` (over the
        rounds' paired ratios), ``faults_per_call`` (minor page faults of one call after
        the rounds, NaN where the system does not count them; more than a few hundred
        means the call touches fresh memory, see :func:`keep_freed_memory`), ``rounds``,
        ``num_threads`` (``<NA>`` on a GPU), ``batch_size``, ``device`` and ``device_name``.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty dict {name: nn.Module}")
    devices = {}
    for key, model in models.items():
        check_model(model, f"models[{key!r}]")
        devices[key] = _check_timed_device(model_device(model), f"models[{key!r}]")
    example_input = _check_input(example_input)
    names = list(models)
    if reference is None:
        reference = names[0]
    if reference not in models:
        raise ValueError(f"reference must be one of {names}, got {reference!r}")
    rounds = check_int("rounds", rounds, lower=1)
    threads = _check_threads(num_threads)
    total = _check_time("min_run_time", min_run_time)
    warmup = check_int("warmup", warmup, lower=0)
    per_round = total / rounds

    if any(device.type == "cpu" for device in devices.values()):
        keep_freed_memory()
    per_model: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, float] = {}
    with eval_mode(*models.values()):
        timers, inputs = {}, {}
        for name in names:
            inputs[name] = to_model(example_input, models[name])
            timers[name] = _timer(models[name], inputs[name], devices[name], threads)
        for name in names:
            _warm_up(timers[name], warmup, devices[name])
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                per_model[name].append(float(_time_blocks(timers[name], per_round).median))
        for name in names:
            faults[name] = _faults_per_call(models[name], inputs[name])

    ref = np.asarray(per_model[reference])
    rows = []
    for name in names:
        t = np.asarray(per_model[name])
        ratios = ref / t
        device = devices[name]
        rows.append(
            {
                "model": name,
                "median_s": float(np.median(t)),
                "iqr_s": _iqr(t),
                "mean_s": float(np.mean(t)),
                "speedup": float(np.median(ratios)),
                "speedup_iqr": _iqr(ratios),
                "speedup_q1": float(np.quantile(ratios, 0.25)),
                "speedup_q3": float(np.quantile(ratios, 0.75)),
                "faults_per_call": faults[name],
                "rounds": rounds,
                "num_threads": threads if device.type == "cpu" else None,
                "batch_size": _batch_size(example_input),
                "device": str(device),
                "device_name": device_name(device),
            }
        )
    table = pd.DataFrame(rows).set_index("model")
    table["num_threads"] = table["num_threads"].astype("Int64")  # <NA> for GPU rows
    return table


# ----------------------------------------------------------------------------- break-even


def _break_even(dense: nn.Module, replacement: nn.Module) -> float:
    """r*: the rank below which ``replacement``'s factorization of ``dense`` saves work.

    A :class:`~pruning_utils.layers.SpatialLowRankConv2d` uses
    :func:`~pruning_utils.linalg.spatial_break_even_rank`; other factorizations of a
    convolution :func:`~pruning_utils.linalg.conv_break_even_rank`, of a linear layer
    :func:`~pruning_utils.linalg.break_even_rank`.
    """
    if isinstance(dense, nn.Conv2d) and isinstance(replacement, SpatialLowRankConv2d):
        return spatial_break_even_rank(dense.in_channels, dense.out_channels, dense.kernel_size)
    if isinstance(dense, nn.Linear):
        return float(break_even_rank(dense.out_features, dense.in_features))
    if isinstance(dense, nn.Conv2d):
        return float(conv_break_even_rank(dense.in_channels, dense.out_channels, dense.kernel_size))
    return math.nan


def break_even_report(
    dense_model: nn.Module,
    factorized_model: nn.Module,
    example_input: torch.Tensor,
    *,
    rounds: int = 5,
    num_threads: int | None = None,
    min_run_time: float | None = None,
) -> pd.DataFrame:
    """Predicted vs measured speedup of every factorized layer.

    A layer counts as factorized when ``dense_model`` has an ``nn.Linear`` or ``nn.Conv2d``
    under some name and ``factorized_model`` has a module of another class under the same
    name (as the transforms of :mod:`pruning_utils.surgery` leave names unchanged). Each
    such pair is run on the input the dense layer really receives in
    ``dense_model(example_input)`` (:func:`pruning_utils.nnutils.capture_inputs`, on the
    dense model's device), and each layer is timed on its own device.

    For a dense ``W`` (m×n) replaced by ``U V`` with U (m×r) and V (r×n) the work drops from
    ``mn`` to ``r(m+n)`` multiply-adds per input, so the factorization pays off only for
    ``r < r* = mn/(m+n)`` (:func:`pruning_utils.linalg.break_even_rank`; for a k×k conv
    c→f, ``r* = k²cf/(k²c+f)``, :func:`pruning_utils.linalg.conv_break_even_rank`; for a
    :class:`~pruning_utils.layers.SpatialLowRankConv2d`,
    :func:`pruning_utils.linalg.spatial_break_even_rank`).

    Parameters
    ----------
    dense_model, factorized_model:
        The original model and a model returned by a factorizing transform.
    example_input:
        An input batch for ``dense_model`` (on any device); its batch size is the one
        timed.
    rounds, num_threads, min_run_time:
        As for :func:`compare_latency` (interleaved timing of each dense/factorized pair).

    Returns
    -------
    pandas.DataFrame
        One row per factorized layer: ``layer``, ``type`` (of the replacement), ``shape``
        (dense weight shape), ``rank`` (the replacement's ``rank`` attribute, else NaN),
        ``break_even_rank`` (r*), ``rank_ratio`` (rank / r*), ``dense_flops``,
        ``factorized_flops``, ``predicted_speedup`` (FLOP ratio dense / factorized),
        ``dense_s`` and ``factorized_s`` (median seconds per call), ``measured_speedup``
        (median of paired ratios), ``batch_size`` and ``device`` (of the factorized layer).
    """
    dense_model = check_model(dense_model, "dense_model")
    factorized_model = check_model(factorized_model, "factorized_model")
    example_input = _check_input(example_input)
    rounds = check_int("rounds", rounds, lower=1)
    threads = _check_threads(num_threads)
    total = _check_time("min_run_time", min_run_time)

    dense_modules = dict(dense_model.named_modules())
    fact_modules = dict(factorized_model.named_modules())
    names = [
        name
        for name, module in dense_modules.items()
        if isinstance(module, (nn.Linear, nn.Conv2d))
        and name in fact_modules
        and type(fact_modules[name]) is not type(module)
    ]
    columns = [
        "layer", "type", "shape", "rank", "break_even_rank", "rank_ratio", "dense_flops",
        "factorized_flops", "predicted_speedup", "dense_s", "factorized_s",
        "measured_speedup", "batch_size", "device",
    ]  # fmt: skip
    if not names:
        return pd.DataFrame(columns=columns)
    inputs = capture_inputs(dense_model, example_input, names)
    rows = []
    for name in names:
        dense, fact, x = dense_modules[name], fact_modules[name], inputs[name]
        try:
            dense_flops = count_flops(dense, x)
            fact_flops = count_flops(fact, x)
        except RuntimeError as exc:
            raise ValueError(
                f"layer {name!r}: the replacement {type(fact).__name__} does not accept the "
                f"dense layer's input of shape {tuple(x.shape)} ({exc})"
            ) from exc
        timing = compare_latency(
            {"dense": dense, "factorized": fact},
            x,
            rounds=rounds,
            num_threads=threads,
            min_run_time=total,
        )
        rank = getattr(fact, "rank", None)
        if isinstance(rank, bool) or not isinstance(rank, (int, float)):
            rank = math.nan
        r_star = _break_even(dense, fact)
        rows.append(
            {
                "layer": name,
                "type": type(fact).__name__,
                "shape": "×".join(str(s) for s in dense.weight.shape),
                "rank": rank,
                "break_even_rank": r_star,
                "rank_ratio": rank / r_star if r_star else math.nan,
                "dense_flops": dense_flops,
                "factorized_flops": fact_flops,
                "predicted_speedup": dense_flops / fact_flops if fact_flops else math.inf,
                "dense_s": float(timing.loc["dense", "median_s"]),
                "factorized_s": float(timing.loc["factorized", "median_s"]),
                "measured_speedup": float(timing.loc["factorized", "speedup"]),
                "batch_size": _batch_size(x),
                "device": timing.loc["factorized", "device"],
            }
        )
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- the machine


def machine_record(num_threads: int | None = None) -> dict:
    """What a timing depends on: the CPU, torch's threads and BLAS, and the machine's load.

    Returns ``{"cpu_model", "cpu_count", "threads", "blas", "torch", "python", "platform",
    "load_average", "freed_memory_kept"}``; ``blas`` is read from
    ``torch.__config__.show()`` (BLAS library, LAPACK, MKL / oneDNN versions where torch
    reports them), ``load_average`` is the 1, 5 and 15 minute load (``None`` where the
    system does not report it), ``freed_memory_kept`` whether the allocator keeps freed
    memory for the timings (:func:`keep_freed_memory`, which this calls, as the timing
    functions do). Call it before and after a timing run and keep both loads with the
    results.
    """
    import os
    import platform
    import re

    threads = torch.get_num_threads() if num_threads is None else check_int(
        "num_threads", num_threads, lower=1)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    config = torch.__config__.show()
    blas = {}
    for key in ("BLAS_INFO", "LAPACK_INFO", "USE_MKL", "USE_MKLDNN", "USE_OPENMP"):
        match = re.search(rf"{key}=([^,\n]+)", config)
        if match:
            blas[key.lower()] = match.group(1).strip()
    for label, pattern in (("mkl", r"Intel\(R\) oneAPI Math Kernel Library Version ([^\s]+)"),
                           ("onednn", r"oneDNN v([^\s]+)")):
        match = re.search(pattern, config)
        if match:
            blas[f"{label}_version"] = match.group(1)
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "blas": blas,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": load,
        "freed_memory_kept": keep_freed_memory(),
    }
