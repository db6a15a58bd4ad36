"""Measuring a model: parameters, FLOPs and wall-clock latency, and where low rank breaks even.

Conventions
-----------
* **FLOPs** are counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts
  matrix products and convolutions only, at **2 FLOPs per multiply-add**: a Linear layer on
  a batch of N costs ``2·N·in·out``, a Conv2d ``2·N·C_out·H_out·W_out·C_in·k_h·k_w``
  (divided by ``groups``). Bias additions, activations, pooling and BatchNorm are not
  counted; neither is the sampling inside randomized layers (only its matrix products).
* **Latency** is wall-clock seconds per forward call, measured with
  :class:`torch.utils.benchmark.Timer` (``blocked_autorange``) under
  ``torch.inference_mode()`` with the model in eval mode, at an explicit thread count.
  This machine is shared and noisy, so comparisons between models are *interleaved*
  (:func:`compare_latency`): short measurements of A, B, A, B, ... and medians over rounds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pruning_utils.config import get_config


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
]


# ----------------------------------------------------------------------------- helpers


def _check_model(model: object, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_input(example_input: object) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(
            f"example_input must be a torch.Tensor, got {type(example_input).__name__}"
        )
    return example_input


def _check_threads(num_threads: object) -> int:
    if num_threads is None:
        return torch.get_num_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be None or a positive int, got {num_threads!r}")
    return num_threads


def _check_time(name: str, value: object) -> float:
    if value is None:
        return float(get_config().timing_seconds)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be None or a positive number of seconds, got {value!r}")
    return float(value)


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@contextmanager
def _eval_mode(model: nn.Module):
    """Put every submodule in eval mode and restore each one's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def _iqr(values: list[float] | np.ndarray) -> float:
    q1, q3 = np.quantile(np.asarray(values, dtype=float), [0.25, 0.75])
    return float(q3 - q1)


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
    """
    model = _check_model(model)
    if not isinstance(nonzero, bool):
        raise TypeError(f"nonzero must be a bool, got {type(nonzero).__name__}")
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
    example_input:
        A batch of inputs.

    Returns
    -------
    int
        Total FLOPs of the forward pass.
    """
    model = _check_model(model)
    example_input = _check_input(example_input)
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), counter:
        model(example_input)
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
        Intra-op threads used while timing.
    batch_size:
        First dimension of the input.
    """

    median: float
    iqr: float
    mean: float
    number_of_runs: int
    number_per_run: int
    num_threads: int
    batch_size: int

    def to_dict(self) -> dict[str, float | int]:
        """The fields as a dict (for DataFrames)."""
        return asdict(self)


def _timer(model: nn.Module, example_input: torch.Tensor, num_threads: int) -> benchmark.Timer:
    return benchmark.Timer(
        stmt="model(x)",
        globals={"model": model, "x": example_input},
        num_threads=num_threads,
    )


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
    """Median wall-clock time of ``model(example_input)``.

    The model is put in eval mode (each submodule's mode is restored afterwards), called
    ``warmup`` times, then timed with ``torch.utils.benchmark.Timer.blocked_autorange``
    under ``torch.inference_mode()`` at ``num_threads`` intra-op threads.

    Parameters
    ----------
    model:
        The model to time.
    example_input:
        The input batch (on the model's device).
    num_threads:
        Intra-op threads while timing; default ``torch.get_num_threads()``. Recorded in
        the result.
    min_run_time:
        Minimum total measuring time in seconds; default ``get_config().timing_seconds``.
    warmup:
        Untimed calls before measuring (an int >= 0).

    Returns
    -------
    LatencyResult
        Median, IQR and mean seconds per call, and how they were measured.
    """
    model = _check_model(model)
    example_input = _check_input(example_input)
    threads = _check_threads(num_threads)
    min_run_time = _check_time("min_run_time", min_run_time)
    warmup = _check_count("warmup", warmup, 0)
    with _eval_mode(model):
        timer = _timer(model, example_input, threads)
        if warmup:
            with torch.inference_mode():
                timer.timeit(warmup)
        measurement = _time_blocks(timer, min_run_time)
    times = list(measurement.times)
    return LatencyResult(
        median=float(measurement.median),
        iqr=_iqr(times),
        mean=float(measurement.mean),
        number_of_runs=len(times),
        number_per_run=int(measurement.number_per_run),
        num_threads=threads,
        batch_size=int(example_input.shape[0]) if example_input.dim() else 1,
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
    (paired ratios cancel noise common to the round).

    Parameters
    ----------
    models:
        Named models, e.g. ``{"dense": m, "rank 64": m64}`` (at least one).
    example_input:
        The input batch given to every model.
    reference:
        Name of the model speedups are relative to; default the first one.
    rounds:
        Number of interleaved rounds (>= 1).
    num_threads:
        Intra-op threads; default ``torch.get_num_threads()``.
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
        faster), ``speedup_iqr``, ``rounds``, ``num_threads``, ``batch_size``.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty dict {name: nn.Module}")
    for key, model in models.items():
        _check_model(model, f"models[{key!r}]")
    example_input = _check_input(example_input)
    names = list(models)
    if reference is None:
        reference = names[0]
    if reference not in models:
        raise ValueError(f"reference must be one of {names}, got {reference!r}")
    rounds = _check_count("rounds", rounds, 1)
    threads = _check_threads(num_threads)
    total = _check_time("min_run_time", min_run_time)
    warmup = _check_count("warmup", warmup, 0)
    per_round = total / rounds

    per_model: dict[str, list[float]] = {name: [] for name in names}
    with _multi_eval_mode(models.values()):
        timers = {name: _timer(models[name], example_input, threads) for name in names}
        if warmup:
            with torch.inference_mode():
                for timer in timers.values():
                    timer.timeit(warmup)
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                per_model[name].append(float(_time_blocks(timers[name], per_round).median))

    ref = np.asarray(per_model[reference])
    rows = []
    for name in names:
        t = np.asarray(per_model[name])
        ratios = ref / t
        rows.append(
            {
                "model": name,
                "median_s": float(np.median(t)),
                "iqr_s": _iqr(t),
                "mean_s": float(np.mean(t)),
                "speedup": float(np.median(ratios)),
                "speedup_iqr": _iqr(ratios),
                "rounds": rounds,
                "num_threads": threads,
                "batch_size": int(example_input.shape[0]) if example_input.dim() else 1,
            }
        )
    return pd.DataFrame(rows).set_index("model")


@contextmanager
def _multi_eval_mode(models):
    modes = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


# ----------------------------------------------------------------------------- break-even


def _break_even(dense: nn.Module, replacement: nn.Module) -> float:
    """r*: the rank below which ``replacement``'s factorization of ``dense`` saves work.

    The spatial scheme (a k_h×1 conv c→r, then a 1×k_w conv r→f) costs
    ``r (k_h c + k_w f)`` against ``k_h k_w c f``; other factorizations use
    :func:`~pruning_utils.linalg.break_even_rank` or
    :func:`~pruning_utils.linalg.conv_break_even_rank`.
    """
    from pruning_utils import linalg

    if isinstance(dense, nn.Conv2d) and type(replacement).__name__ == "SpatialLowRankConv2d":
        k_h, k_w = dense.kernel_size
        c, f = dense.in_channels, dense.out_channels
        return k_h * k_w * c * f / (k_h * c + k_w * f)
    if isinstance(dense, nn.Linear):
        return float(linalg.break_even_rank(dense.out_features, dense.in_features))
    if isinstance(dense, nn.Conv2d):
        return float(
            linalg.conv_break_even_rank(dense.in_channels, dense.out_channels, dense.kernel_size)
        )
    return math.nan


def _capture_inputs(
    model: nn.Module, names: list[str], example_input: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The input each named submodule receives when ``model(example_input)`` runs."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:

        def hook(module, args, name=name):
            captured[name] = args[0].detach().clone()

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        with _eval_mode(model), torch.inference_mode():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n in names if n not in captured]
    if missing:
        raise ValueError(f"layers {missing} were not called by the forward pass")
    return captured


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
    under some name and ``factorized_model`` has a module of another type under the same
    name (as the transforms of :mod:`pruning_utils.surgery` leave names unchanged). Each
    such pair is run on the input the dense layer really receives in
    ``dense_model(example_input)`` (captured with a forward pre-hook).

    For a dense ``W`` (m×n) replaced by ``U V`` with U (m×r) and V (r×n) the work drops from
    ``mn`` to ``r(m+n)`` multiply-adds per input, so the factorization pays off only for
    ``r < r* = mn/(m+n)`` (:func:`pruning_utils.linalg.break_even_rank`; for a k×k conv
    c→f, ``r* = k²cf/(k²c+f)``, :func:`pruning_utils.linalg.conv_break_even_rank`).

    Parameters
    ----------
    dense_model, factorized_model:
        The original model and a model returned by a factorizing transform.
    example_input:
        An input batch for ``dense_model``; its batch size is the one timed.
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
        (median of paired ratios) and ``batch_size``.
    """
    dense_model = _check_model(dense_model, "dense_model")
    factorized_model = _check_model(factorized_model, "factorized_model")
    example_input = _check_input(example_input)
    rounds = _check_count("rounds", rounds, 1)
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
        "measured_speedup", "batch_size",
    ]
    if not names:
        return pd.DataFrame(columns=columns)
    inputs = _capture_inputs(dense_model, names, example_input)
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
                "batch_size": int(x.shape[0]) if x.dim() else 1,
            }
        )
    return pd.DataFrame(rows, columns=columns)

