"""Sweeps: prune a model at every point of a grid and measure each result.

:func:`sweep` returns one tidy DataFrame (one row per setting, seed and fine-tuning state)
with accuracy, parameters, FLOPs and, per batch size, latency and measured speedup against
the dense model, which is timed in the same run, interleaved with each pruned model.
:func:`summarize` turns the repeated runs of randomized methods into mean and standard
deviation per setting.

Named methods (``method=`` a name from :data:`~pruning_utils.methods.METHODS`, a label, or a
:class:`~pruning_utils.methods.Method`) are pruned through the registry: a method with a
``fit`` (the low-rank methods) decomposes the model once and truncates the decomposition
at every value of the grid; the others call their transform at every value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from pruning_utils.config import get_config
from pruning_utils.measure import compare_latency, count_flops, count_params
from pruning_utils.methods import Method, get_method
from pruning_utils.nnutils import model_device, seeded
from pruning_utils.train import evaluate, fine_tune

__all__ = ["sweep", "summarize"]


def _first_images(data: object, count: int) -> torch.Tensor:
    """The first ``count`` inputs of ``data`` (repeated cyclically if it holds fewer)."""
    if isinstance(data, tuple):
        images = data[0]
    elif isinstance(data, TensorDataset):
        images = data.tensors[0]
    else:
        loader = data
        if not isinstance(data, DataLoader):
            loader = DataLoader(data, batch_size=count, generator=torch.Generator())
        batches, seen = [], 0
        for inputs, _ in loader:
            batches.append(inputs)
            seen += len(inputs)
            if seen >= count:
                break
        images = torch.cat(batches)
    if len(images) == 0:
        raise ValueError("test_data is empty")
    if len(images) < count:
        images = images.repeat(math.ceil(count / len(images)), *([1] * (images.dim() - 1)))
    return images[:count].clone()


def _check_grid(grid: object) -> list:
    if isinstance(grid, (str, bytes)) or not isinstance(grid, (Sequence, np.ndarray)):
        raise TypeError(f"grid must be a sequence of values, got {type(grid).__name__}")
    values = list(grid.tolist() if isinstance(grid, np.ndarray) else grid)
    if not values:
        raise ValueError("grid must not be empty")
    return values


def _check_batch_sizes(batch_sizes: object) -> tuple[int, ...]:
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence):
        raise TypeError(f"batch_sizes must be a sequence of ints, got {batch_sizes!r}")
    out = tuple(batch_sizes)
    for b in out:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"batch_sizes must hold positive ints, got {batch_sizes!r}")
    return out


def sweep(
    model: nn.Module,
    method: str | Method | Callable[[nn.Module, object], nn.Module],
    grid: Sequence,
    *,
    test_data: Dataset | DataLoader | tuple[torch.Tensor, torch.Tensor],
    calibration_data: torch.Tensor | DataLoader | None = None,
    example_inputs: Mapping[int, torch.Tensor] | None = None,
    batch_sizes: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    randomized: bool | None = None,
    parameter: str | None = None,
    name: str | None = None,
    method_kwargs: Mapping[str, object] | None = None,
    fine_tune_data: Dataset | DataLoader | None = None,
    fine_tune_epochs: int = 0,
    fine_tune_lr: float = 1e-4,
    rounds: int = 5,
    min_run_time: float | None = None,
    num_threads: int | None = None,
    include_dense: bool = True,
    progress: bool = True,
    val_data: Dataset | DataLoader | tuple[torch.Tensor, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Prune ``model`` at every value of ``grid`` and measure each pruned model.

    For every value ``v`` (and every seed, for randomized methods) the model is pruned,
    optionally fine-tuned, and measured: test accuracy (:func:`~pruning_utils.train.evaluate`),
    parameters (stored and nonzero), FLOPs per image, and for every batch size ``B`` the
    median latency and the speedup ``t_dense / t_pruned`` of an interleaved timing of the
    dense and the pruned model (:func:`~pruning_utils.measure.compare_latency`). The dense
    model is the first row (``method="dense"``). ``model`` is never modified.

    Deterministic methods are run once per value (their ``seed`` is NaN). Randomized ones
    are run once per seed; their latency is timed for the first seed only (the cost of
    sampling does not depend on the seed) and :func:`summarize` averages over seeds.

    Parameters
    ----------
    model:
        The trained dense model.
    method:
        A registered method (name, label or :class:`~pruning_utils.methods.Method`) or a
        callable ``f(model, value) -> new model``. A callable
        marked ``randomized=True`` runs inside a block where torch's global generator is
        seeded with each seed (and restored afterwards).
    grid:
        The values of the swept parameter, e.g. ranks ``[8, 16, 32]``.
    test_data:
        Evaluation data (Dataset, DataLoader or ``(X, y)``); also the source of the timing
        inputs (its first ``B`` images).
    val_data:
        Validation data (the ``"val"`` split of :func:`~pruning_utils.data.load_dataset`):
        when given, every row also gets ``val_accuracy``. Choose settings on it
        (:func:`~pruning_utils.methods.most_compressed_within` with
        ``accuracy="val_accuracy"``) and report ``accuracy``, measured on ``test_data``.
    calibration_data:
        Inputs for the data-aware methods (``"low_rank_data"``, ``"pca_activations"``,
        ``"pca_interpolative"``; a method's ``needs_data``).
    example_inputs:
        ``{batch size: input batch}`` to time on; overrides ``batch_sizes``.
    batch_sizes:
        Batch sizes to time; default ``get_config().batch_sizes``; ``()`` skips all timing
        (accuracy-only sweeps are much faster).
    seeds:
        Seeds of a randomized method; default ``get_config().seeds``. Ignored for
        deterministic methods.
    randomized:
        Whether the method is random; inferred for named methods, default False for callables.
    parameter:
        Name of the swept parameter (inferred for named methods, ``"value"`` otherwise).
    name:
        Label in the ``method`` column (default: the method's name).
    method_kwargs:
        Further options of a registered method's transform (e.g.
        ``{"skip_unprofitable": False}`` for low rank). Variants that are methods of their
        own have their own registry entries: ``"low_rank_spatial"``, ``"low_rank_data"``
        (with ``calibration_data``), ``"randomized_conv"``.
    fine_tune_data, fine_tune_epochs, fine_tune_lr:
        When ``fine_tune_epochs > 0``, each pruned model is also fine-tuned on
        ``fine_tune_data`` (a copy, :func:`~pruning_utils.train.fine_tune`) and measured
        again in a row with ``fine_tuned=True`` (its latency is that of the untuned model,
        which has the same architecture). Magnitude-pruned weights are not masked during
        fine-tuning, so zeros may grow back (see ``nonzero_params``).
    rounds, min_run_time, num_threads:
        Timing settings for :func:`~pruning_utils.measure.compare_latency`.
    include_dense:
        Add the dense model's row first.
    progress:
        Show a tqdm bar over settings.

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``parameter``, ``value``, ``seed``, ``fine_tuned``,
        ``accuracy`` (on ``test_data``), ``val_accuracy`` (with ``val_data`` only),
        ``params``, ``nonzero_params``, ``flops`` (per image),
        ``prune_seconds``, and for each batch size ``B``: ``latency_median_b{B}``,
        ``latency_iqr_b{B}`` (seconds per call), ``speedup_b{B}`` (> 1 is faster; the median
        over the interleaved rounds' paired ratios) and its quartiles ``speedup_q1_b{B}``,
        ``speedup_q3_b{B}``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    values = _check_grid(grid)
    config = get_config()
    kwargs = dict(method_kwargs or {})
    if isinstance(method, (str, Method)):
        spec = get_method(method)
        if spec.needs_data and calibration_data is None:
            raise ValueError(f"method {spec.name!r} needs calibration_data (a batch of inputs)")
        if randomized is not None and randomized != spec.randomized:
            raise ValueError(f"randomized={randomized} contradicts method {spec.name!r}")
        randomized = spec.randomized
        parameter = parameter or spec.knob
        label = name or (method if isinstance(method, str) else spec.name)
        fitted = spec.fitted(model, data=calibration_data, **kwargs)

        def transform(m, v, s):
            return fitted(v, s)

    elif callable(method):
        if kwargs:
            raise ValueError("method_kwargs can only be used with a named method")
        randomized = bool(randomized)
        parameter = parameter or "value"
        label = name or getattr(method, "__name__", "custom")

        def transform(m, v, s):
            if s is None:
                return method(m, v)
            with seeded(s, model_device(m)):
                return method(m, v)
    else:
        raise TypeError(f"method must be a str or a callable, got {type(method).__name__}")

    if randomized:
        seeds = tuple(config.seeds if seeds is None else seeds)
        if not seeds:
            raise ValueError("seeds must not be empty for a randomized method")
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ValueError(f"seeds must be non-negative ints, got {seeds!r}")
        run_seeds: tuple[int | None, ...] = seeds
    else:
        run_seeds = (None,)
    if isinstance(fine_tune_epochs, bool) or not isinstance(fine_tune_epochs, int) or (
        fine_tune_epochs < 0
    ):
        raise ValueError(f"fine_tune_epochs must be an int >= 0, got {fine_tune_epochs!r}")
    if fine_tune_epochs and fine_tune_data is None:
        raise ValueError("fine_tune_epochs > 0 needs fine_tune_data")

    device = model_device(model)
    if example_inputs is not None:
        if not isinstance(example_inputs, Mapping):
            raise TypeError("example_inputs must be a dict {batch size: input tensor}")
        inputs = {int(b): x for b, x in example_inputs.items()}
    else:
        sizes = _check_batch_sizes(config.batch_sizes if batch_sizes is None else batch_sizes)
        pool = _first_images(test_data, max(sizes)) if sizes else None
        inputs = {b: pool[:b] for b in sizes}
    inputs = {b: x.to(device) for b, x in inputs.items()}
    one_image = _first_images(test_data, 1).to(device)

    def evaluate_seeded(m: nn.Module, seed: int | None) -> float:
        if seed is None:
            return evaluate(m, test_data)
        with seeded(seed, model_device(m)):
            return evaluate(m, test_data)

    def measures(m: nn.Module, seed: int | None) -> dict[str, float]:
        scores = {"accuracy": evaluate_seeded(m, seed)}
        if val_data is not None:
            if seed is None:
                scores["val_accuracy"] = evaluate(m, val_data)
            else:
                with seeded(seed, model_device(m)):
                    scores["val_accuracy"] = evaluate(m, val_data)
        return {
            **scores,
            "params": count_params(m),
            "nonzero_params": count_params(m, nonzero=True),
            "flops": count_flops(m, one_image),
        }

    latency_columns = [
        f"{kind}_b{b}" for b in inputs
        for kind in ("latency_median", "latency_iqr", "speedup", "speedup_q1", "speedup_q3")
    ]
    dense_times: dict[int, list[float]] = {b: [] for b in inputs}
    rows: list[dict] = []
    with tqdm(total=len(values) * len(run_seeds), disable=not progress, desc=label) as bar:
        for value in values:
            for i, seed in enumerate(run_seeds):
                bar.set_postfix({parameter: value, **({"seed": seed} if seed is not None else {})})
                start = time.perf_counter()
                pruned = transform(model, value, seed)
                prune_seconds = time.perf_counter() - start
                row = {
                    "method": label,
                    "parameter": parameter,
                    "value": value,
                    "seed": math.nan if seed is None else seed,
                    "fine_tuned": False,
                    **measures(pruned, seed),
                    "prune_seconds": prune_seconds,
                }
                row.update(dict.fromkeys(latency_columns, math.nan))
                if i == 0:
                    for b, x in inputs.items():
                        timing = compare_latency(
                            {"dense": model, "pruned": pruned},
                            x,
                            rounds=rounds,
                            min_run_time=min_run_time,
                            num_threads=num_threads,
                        )
                        dense_times[b].append(float(timing.loc["dense", "median_s"]))
                        row[f"latency_median_b{b}"] = float(timing.loc["pruned", "median_s"])
                        row[f"latency_iqr_b{b}"] = float(timing.loc["pruned", "iqr_s"])
                        row[f"speedup_b{b}"] = float(timing.loc["pruned", "speedup"])
                        row[f"speedup_q1_b{b}"] = float(timing.loc["pruned", "speedup_q1"])
                        row[f"speedup_q3_b{b}"] = float(timing.loc["pruned", "speedup_q3"])
                rows.append(row)
                if fine_tune_epochs:
                    tuned = fine_tune(
                        pruned,
                        fine_tune_data,
                        fine_tune_epochs,
                        lr=fine_tune_lr,
                        seed=0 if seed is None else seed,
                        progress=False,
                    )
                    tuned_row = dict(row, fine_tuned=True, **measures(tuned, seed))
                    rows.append(tuned_row)
                bar.update(1)

    if include_dense:
        dense_row = {
            "method": "dense",
            "parameter": parameter,
            "value": math.nan,
            "seed": math.nan,
            "fine_tuned": False,
            **measures(model, None),
            "prune_seconds": 0.0,
        }
        for b in inputs:
            times = dense_times[b]
            dense_row[f"latency_median_b{b}"] = float(np.median(times)) if times else math.nan
            dense_row[f"latency_iqr_b{b}"] = (
                float(np.subtract(*np.quantile(times, [0.75, 0.25]))) if times else math.nan
            )
            dense_row[f"speedup_b{b}"] = 1.0 if times else math.nan
            for quartile in ("q1", "q3"):
                dense_row[f"speedup_{quartile}_b{b}"] = dense_row[f"speedup_b{b}"]
        rows.insert(0, dense_row)
    columns = [
        "method", "parameter", "value", "seed", "fine_tuned", "accuracy",
        *(["val_accuracy"] if val_data is not None else []), "params",
        "nonzero_params", "flops", "prune_seconds", *latency_columns,
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame


def summarize(df: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every setting of a :func:`sweep` frame.

    Parameters
    ----------
    df:
        A frame returned by :func:`sweep` (or several concatenated).
    columns:
        Numeric columns to summarise; default all numeric columns except ``value`` and
        ``seed``.

    Returns
    -------
    pandas.DataFrame
        One row per ``(method, parameter, value, fine_tuned)`` with ``{col}_mean``,
        ``{col}_std`` (sample standard deviation, NaN for a single run; NaNs of untimed
        seeds are skipped) and ``runs`` (number of rows averaged).
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    keys = ["method", "parameter", "value", "fine_tuned"]
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise ValueError(f"df lacks the sweep columns {missing}")
    if columns is None:
        columns = [
            c
            for c in df.columns
            if c not in (*keys, "seed") and pd.api.types.is_numeric_dtype(df[c])
        ]
    else:
        columns = list(columns)
        bad = [c for c in columns if c not in df.columns or c in keys]
        if bad:
            raise ValueError(f"columns {bad} are not numeric measurement columns of df")
    grouped = df.groupby(keys, dropna=False, sort=False)
    stats = grouped[columns].agg(["mean", "std"])
    stats.columns = [f"{col}_{stat}" for col, stat in stats.columns]
    stats["runs"] = grouped.size()
    return stats.reset_index()
