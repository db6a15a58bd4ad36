"""The book's headline benchmark: the most compressed setting of each method within 1 point.

Run it with ``python -m pruning_utils.headline`` (``python -m pruning_utils.benchmark`` is
the same command; ``--smoke`` for a quick run). For the LargeMLP and the SmallCNN trained on
Fashion-MNIST (:func:`~pruning_utils.train.trained_model`) and for every method of the
registry (:data:`~pruning_utils.methods.METHODS`) that applies to the network and has a
grid, it bisects the method's grid (ordered from the most compressed setting to the least,
accuracy assumed to grow along it) for the most compressed setting whose accuracy stays
within ``--tolerance`` (1 percentage point) of the dense model; where the method allows it,
a second bisection over the settings that failed gives each one epoch of fine-tuning on a
fixed random subset of the training split (``--fine-tune-images``, 10,000
by default) and finds the most compressed setting that passes after it.

The choice is made on one half of the test set (the *selection* half, 5,000 images) and
the accuracies reported are measured on the other half (the *report* half) and on the whole
test set, so that picking a setting does not flatter it. For the chosen setting the table
gives parameter and FLOP ratios and the latency speedup at batch 1 and 256, with the dense
and the pruned model timed interleaved in the same run
(:func:`~pruning_utils.measure.compare_latency`).
It ends with one 2048×8192 layer factorized at rank 128, timed against the dense layer.

The table is printed and written as ``headline.csv`` and ``headline.json`` (with the run's
settings, duration and the machine's load average) to ``--out`` (default
``<data root>/benchmark``).

Timings are only as good as the machine was quiet. ``--retime`` keeps the choices and the
accuracies of an earlier run in ``--out`` and measures the speedups again: it rebuilds each
chosen architecture from the dense model (fine-tuning changes weights, not shapes, so the
timing is the same), checks its parameter count against the table, and times it against
the dense model. The json keeps the superseded speedups and the load of both runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pruning_utils.config import SMOKE_ENV, data_root, get_config, seed_everything
from pruning_utils.data import load_dataset, train_val_split
from pruning_utils.layers import LowRankLinear
from pruning_utils.measure import compare_latency, count_flops, count_params
from pruning_utils.methods import Method, get_method, methods_for
from pruning_utils.nnutils import model_device
from pruning_utils.train import evaluate, fine_tune, trained_model

__all__ = [
    "BenchmarkData", "Choice", "benchmark_methods", "load_benchmark_data", "setting_of",
    "find_setting", "timing_inputs", "time_speedups", "run_benchmark", "retime_benchmark", "main",
]

#: The networks of the headline table and the kind of network each one is.
NETWORKS = {"large-mlp": "mlp", "small-cnn": "cnn"}


def benchmark_methods(
    network: str, methods: Sequence[str | Method] | None = None
) -> tuple[Method, ...]:
    """The methods the benchmark runs on a network of kind ``"mlp"`` or ``"cnn"``.

    Default: every registered method for that kind of network that has a grid. ``methods``
    (names, labels or :class:`~pruning_utils.methods.Method` objects, registered or not)
    narrows the list or adds outside methods; a named method that does not apply to the
    network is left out.
    """
    if methods is None:
        return tuple(m for m in methods_for(network) if m.grid)
    if isinstance(methods, (str, Method)):
        raise TypeError("methods must be a list of method names or Method objects")
    chosen = [get_method(m) for m in methods]
    empty = [m.name for m in chosen if not m.grid]
    if empty:
        raise ValueError(f"methods {empty} have no grid to search; give them one")
    return tuple(m for m in chosen if network in m.networks)


def _thin(grid: tuple[float, ...], points: int) -> tuple[float, ...]:
    """``points`` values spread evenly over ``grid``, its ends included (smoke runs)."""
    if points >= len(grid):
        return grid
    step = (len(grid) - 1) / max(points - 1, 1)
    return tuple(grid[round(k * step)] for k in range(points))


def _accuracy(model: nn.Module, data, seeds: Sequence[int]) -> float:
    """Accuracy, averaged over ``seeds`` for randomized models (reseeding their layers)."""
    sampled = [m for m in model.modules() if hasattr(m, "reseed")]
    if not sampled or not seeds:
        return evaluate(model, data)
    scores = []
    for seed in seeds:
        for k, layer in enumerate(sampled):
            layer.reseed(seed * 1000 + k)
        scores.append(evaluate(model, data))
    return sum(scores) / len(scores)


@dataclass
class Choice:
    """The setting :func:`find_setting` chose, and how it got there."""

    value: float | None
    model: nn.Module | None
    fine_tuned: bool
    within: bool
    tried: list[dict]


def find_setting(
    dense: nn.Module,
    method: Method,
    selection,
    calibration: torch.Tensor,
    *,
    dense_accuracy: float,
    tolerance: float = 0.01,
    fine_tune_data=None,
    seeds: Sequence[int] = (0, 1, 2),
    log: Callable[[str], None] = print,
) -> Choice:
    """The most compressed setting of ``method`` whose accuracy is within ``tolerance``.

    Accuracy is assumed to grow with the setting (the grid runs from the most compressed
    setting to the least), so both passes bisect the grid. First pass, no fine-tuning: the
    most compressed setting that passes (index ``i0``); a setting the method cannot build
    (any exception, e.g. nothing left to prune; it is recorded in ``tried``) counts as
    failing. Second pass, if the
    method is fine-tunable and ``fine_tune_data`` is given: bisection over the settings
    before ``i0``, one epoch of fine-tuning each. When no setting passes, the least
    compressed one is returned with ``within=False``.
    """
    threshold = dense_accuracy - tolerance
    tried: list[dict] = []
    models: dict[int, nn.Module] = {}
    seeds = tuple(seeds) if method.randomized else ()
    prune_at = method.fitted(dense, data=calibration if method.needs_data else None)

    def prune(i: int) -> nn.Module:
        if i not in models:
            models[i] = prune_at(method.grid[i], seeds[0] if seeds else None)
        return models[i]

    passing = None
    lo, hi = 0, len(method.grid)
    while lo < hi:  # the most compressed index in [lo, hi) that passes without fine-tuning
        mid = (lo + hi) // 2
        value = method.grid[mid]
        try:
            model = prune(mid)
        except Exception as exc:  # e.g. nothing to prune at this setting
            tried.append({"value": value, "error": f"{type(exc).__name__}: {exc}"})
            log(f"    {method.knob}={value:g}: cannot be built ({type(exc).__name__}: {exc})")
            lo = mid + 1
            continue
        acc = _accuracy(model, selection, seeds)
        tried.append({"value": value, "fine_tuned": False, "selection_accuracy": acc})
        log(f"    {method.knob}={value:g}: selection accuracy {acc:.4f}")
        if acc >= threshold:
            passing, hi = mid, mid
        else:
            lo = mid + 1
    choice = Choice(
        value=None if passing is None else method.grid[passing],
        model=None if passing is None else models[passing],
        fine_tuned=False,
        within=passing is not None,
        tried=tried,
    )
    if method.fine_tunable and fine_tune_data is not None:
        choice = _fine_tuned_choice(choice, method, prune, passing, selection, threshold,
                                    fine_tune_data, tried, seeds, log)
    if not choice.within:  # report the least compressed setting, plainly marked
        last = len(method.grid) - 1
        choice = Choice(method.grid[last], prune(last), False, False, tried)
    return choice


def _fine_tuned_choice(choice, method, prune, passing, selection, threshold, fine_tune_data,
                       tried, seeds, log) -> Choice:
    """Second pass of :func:`find_setting`: bisection with one epoch of fine-tuning."""
    lo, hi = 0, (passing if passing is not None else len(method.grid))
    while lo < hi:  # the most compressed index in [lo, hi) that passes after fine-tuning
        mid = (lo + hi) // 2
        try:
            tuned = fine_tune(prune(mid), fine_tune_data, epochs=1, progress=False)
        except Exception as exc:
            tried.append({"value": method.grid[mid], "error": f"{type(exc).__name__}: {exc}"})
            lo = mid + 1
            continue
        acc = _accuracy(tuned, selection, seeds)
        tried.append({"value": method.grid[mid], "fine_tuned": True, "selection_accuracy": acc})
        log(f"    {method.knob}={method.grid[mid]:g} + 1 epoch fine-tuning: {acc:.4f}")
        if acc >= threshold:
            choice = Choice(method.grid[mid], tuned, True, True, tried)
            hi = mid
        else:
            lo = mid + 1
    return choice


def timing_inputs(images: torch.Tensor) -> dict[int, torch.Tensor]:
    """The timing batches: the first 1 and 256 test images (repeated if there are fewer)."""
    return {b: images[:b].clone() if b <= len(images) else images.repeat(
        math.ceil(b / len(images)), 1, 1, 1)[:b].clone() for b in (1, 256)}


def time_speedups(dense: nn.Module, pruned: nn.Module, inputs: dict[int, torch.Tensor],
                  num_threads: int) -> dict[str, float]:
    """Speedups at batch 1 and 256 and the batch-256 times, dense and pruned interleaved."""
    timing = {
        b: compare_latency({"dense": dense, "pruned": pruned}, x, num_threads=num_threads,
                           rounds=5)
        for b, x in inputs.items()
    }
    return {
        "speedup_b1": float(timing[1].loc["pruned", "speedup"]),
        "speedup_b256": float(timing[256].loc["pruned", "speedup"]),
        "dense_ms_b256": 1e3 * float(timing[256].loc["dense", "median_s"]),
        "pruned_ms_b256": 1e3 * float(timing[256].loc["pruned", "median_s"]),
    }


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages, where the system reports them."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _layer_benchmark(m: int, n: int, rank: int, *, batch: int, num_threads: int,
                     seconds: float, device: torch.device | str = "cpu") -> dict:
    """One m×n layer (random weights) against its rank-``rank`` factorization, on ``device``."""
    gen = seed_everything(0)
    dense = nn.Linear(n, m)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(m, n, generator=gen) / math.sqrt(n))
    dense = dense.to(device)
    factorized = LowRankLinear.from_linear(dense, rank=rank)
    x = torch.randn(batch, n, generator=gen)  # moved to the layer's device by compare_latency
    timing = compare_latency(
        {"dense": dense, "factorized": factorized}, x,
        num_threads=num_threads, min_run_time=seconds, rounds=5,
    )
    return {
        "layer": f"{m}x{n} Linear (random weights)",
        "rank": rank,
        "break_even_rank": m * n / (m + n),
        "batch": batch,
        "dense_ms": 1e3 * float(timing.loc["dense", "median_s"]),
        "factorized_ms": 1e3 * float(timing.loc["factorized", "median_s"]),
        "speedup": float(timing.loc["factorized", "speedup"]),
        "flop_ratio": (m * n) / (rank * (m + n)),
        "device": str(torch.device(device)),
    }


@dataclass(frozen=True)
class BenchmarkData:
    """The data of the benchmark protocol.

    Attributes
    ----------
    test:
        The test set; split into a selection half and a report half (``seed=0``).
    fine_tune:
        The training images of the one epoch of fine-tuning.
    calibration:
        Calibration inputs of the data-aware methods.
    """

    test: TensorDataset
    fine_tune: TensorDataset
    calibration: torch.Tensor


def load_benchmark_data(fine_tune_images: int | None = 10_000) -> BenchmarkData:
    """Fashion-MNIST as the benchmark uses it.

    Sizes come from :func:`~pruning_utils.config.get_config` (smoke or full mode).
    """
    config = get_config()
    test = load_dataset("fashion-mnist", "test", subset=config.test_subset)
    sizes = [n for n in (config.train_subset, fine_tune_images) if n is not None]
    fine_tune_data = load_dataset(
        "fashion-mnist", "train", subset=min(sizes) if sizes else None, seed=2
    )
    calibration = load_dataset(
        "fashion-mnist", "train", subset=config.calibration_size, seed=1
    ).tensors[0]
    return BenchmarkData(test, fine_tune_data, calibration)


def _network(model: nn.Module) -> str:
    """``"cnn"`` for a model with a convolution, else ``"mlp"``."""
    return "cnn" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "mlp"


def _smoke(method: Method, points: int) -> Method:
    return replace(method, grid=_thin(tuple(method.grid), points))


def run_benchmark(
    models: Sequence[str] = ("large-mlp", "small-cnn"),
    *,
    methods: Sequence[str | Method] | None = None,
    tolerance: float = 0.01,
    num_threads: int = 2,
    fine_tune_images: int | None = 10_000,
    dense_models: Mapping[str, nn.Module] | None = None,
    data: BenchmarkData | None = None,
    layer: tuple[int, int, int] | None = (2048, 8192, 128),
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, dict | None]:
    """Run the benchmark and return ``(table, layer result)``; see the module docstring.

    Parameters
    ----------
    models:
        Names of the networks (rows of the table).
    methods:
        Registered method names or labels, or :class:`~pruning_utils.methods.Method`
        objects (outside methods included); default every registered method that applies
        to each network and has a grid.
    tolerance:
        Allowed accuracy drop (a fraction: 0.01 is one point).
    num_threads:
        Torch threads for the timings.
    fine_tune_images:
        Training images in the one epoch of fine-tuning (a fixed random subset; ``None``:
        the whole training split, capped by the configuration's subset).
    dense_models:
        ``{name: trained model}``; default :func:`~pruning_utils.train.trained_model` of
        each name.
    data:
        The protocol's data; default :func:`load_benchmark_data`.
    layer:
        ``(m, n, rank)`` of the single-layer timing (an m×n Linear with random weights
        against its rank factorization at batch 256); ``None`` skips it.
    log:
        Where progress lines go.
    """
    config = get_config()
    torch.set_num_threads(num_threads)
    data = load_benchmark_data(fine_tune_images) if data is None else data
    test = data.test
    report_half, selection_half = train_val_split(test, val_fraction=0.5, seed=0)
    inputs = timing_inputs(test.tensors[0])
    seeds = tuple(config.seeds[:3])

    rows = []
    for name in models:
        if dense_models is not None and name in dense_models:
            dense = dense_models[name]
        else:
            dense = trained_model(name, progress=False)
        method_list = benchmark_methods(_network(dense), methods)
        if config.smoke:
            method_list = tuple(_smoke(m, config.sweep_points) for m in method_list)
        dense_sel = evaluate(dense, selection_half)
        dense_rep = evaluate(dense, report_half)
        dense_test = evaluate(dense, test)
        dense_params = count_params(dense)
        dense_flops = count_flops(dense, inputs[1])
        log(f"{name}: dense accuracy {dense_test:.4f} (selection half {dense_sel:.4f}), "
            f"{dense_params:,} parameters, {dense_flops:,} FLOPs per image")
        for method in method_list:
            log(f"  {method.label}")
            start = time.perf_counter()
            choice = find_setting(
                dense, method, selection_half, data.calibration, dense_accuracy=dense_sel,
                tolerance=tolerance, fine_tune_data=data.fine_tune, seeds=seeds, log=log,
            )
            pruned = choice.model
            timing = time_speedups(dense, pruned, inputs, num_threads)
            params = count_params(pruned, nonzero=method.sparse)
            method_seeds = seeds if method.randomized else ()
            rows.append({
                "model": name,
                "method": method.label,
                "method_key": method.name,
                "parameter": method.knob,
                "setting": choice.value,
                "fine_tuned": choice.fine_tuned,
                "within_tolerance": choice.within,
                "dense_accuracy": dense_rep,
                "pruned_accuracy": _accuracy(pruned, report_half, method_seeds),
                "dense_accuracy_full_test": dense_test,
                "pruned_accuracy_full_test": _accuracy(pruned, test, method_seeds),
                "params": params,
                "param_ratio": dense_params / params,
                "flop_ratio": dense_flops / count_flops(pruned, inputs[1]),
                **timing,
                "settings_tried": len(choice.tried),
                "seconds": time.perf_counter() - start,
            })
            row = rows[-1]
            log(f"    chose {method.knob}={choice.value} (fine-tuned: {choice.fine_tuned}, "
                f"within: {choice.within}); speedup b1 {row['speedup_b1']:.2f}x, "
                f"b256 {row['speedup_b256']:.2f}x")
    result = None if layer is None else _layer_benchmark(
        *layer, batch=256, num_threads=num_threads, seconds=config.timing_seconds,
        device=model_device(dense) if models else "cpu")
    return pd.DataFrame(rows), result


def setting_of(row: Mapping, method: Method) -> float:
    """A results row's setting in its method's knob.

    Results written before the baselines said how much they *keep* store the fraction
    removed (``parameter == "amount"``); it is converted to ``keep = 1 - amount``.
    """
    if row.get("parameter") == "amount" and method.knob == "keep":
        return round(1.0 - float(row["setting"]), 12)
    return row["setting"]


def retime_benchmark(
    meta: dict,
    *,
    num_threads: int = 2,
    dense_models: Mapping[str, nn.Module] | None = None,
    data: BenchmarkData | None = None,
    layer: tuple[int, int, int] | None = (2048, 8192, 128),
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, dict | None]:
    """Time the choices of an earlier run again; return ``(table, layer result)``.

    ``meta`` is the content of that run's ``headline.json``. Every row's architecture is
    rebuilt from the dense model with the recorded method and setting (and the same
    calibration data), its parameter count is checked against the table, and dense and
    pruned are timed interleaved at batch 1 and 256. Only the four timing columns change.
    """
    config = get_config()
    mode = "smoke" if config.smoke else "full"
    if meta.get("mode") != mode:
        raise ValueError(
            f"the results come from a {meta.get('mode')!r} run but the current mode is "
            f"{mode!r}; set {SMOKE_ENV} to match (pass --smoke for a smoke run)"
        )
    torch.set_num_threads(num_threads)
    data = load_benchmark_data() if data is None else data
    inputs = timing_inputs(data.test.tensors[0])
    rows = [dict(row) for row in meta["rows"]]
    dense_cache: dict[str, nn.Module] = dict(dense_models or {})
    for row in rows:
        name = row["model"]
        method = get_method(row.get("method_key") or row["method"])
        if name not in dense_cache:
            if name not in NETWORKS:
                raise ValueError(f"model must be one of {list(NETWORKS)}, got {name!r}")
            dense_cache[name] = trained_model(name, progress=False)
        dense = dense_cache[name]
        pruned = method.prune(dense, setting_of(row, method),
                              data=data.calibration if method.needs_data else None)
        params = count_params(pruned, nonzero=method.sparse)
        if params != row["params"]:
            raise RuntimeError(
                f"{name}, {method.label} at {method.knob}={row['setting']:g} rebuilt with "
                f"{params:,} parameters but the table has {row['params']:,}: the results do "
                "not come from these weights and data"
            )
        row.update(time_speedups(dense, pruned, inputs, num_threads))
        log(f"  {name}, {method.label}: speedup b1 {row['speedup_b1']:.2f}x, "
            f"b256 {row['speedup_b256']:.2f}x")
    result = None if layer is None else _layer_benchmark(
        *layer, batch=256, num_threads=num_threads, seconds=config.timing_seconds,
        device=model_device(next(iter(dense_cache.values()))) if dense_cache else "cpu")
    return pd.DataFrame(rows), result


def _format(table: pd.DataFrame) -> str:
    shown = table.assign(
        dense_acc=(100 * table.dense_accuracy).map("{:.2f}".format),
        pruned_acc=(100 * table.pruned_accuracy).map("{:.2f}".format),
        params=table.param_ratio.map("{:.1f}x".format),
        flops=table.flop_ratio.map("{:.1f}x".format),
        b1=table.speedup_b1.map("{:.2f}x".format),
        b256=table.speedup_b256.map("{:.2f}x".format),
        setting=[f"{p}={v:g}" + (" +ft" if ft else "") + ("" if ok else " (none within)")
                 for p, v, ft, ok in zip(table.parameter, table.setting, table.fine_tuned,
                                         table.within_tolerance, strict=True)],
    )
    columns = ["model", "method", "setting", "dense_acc", "pruned_acc", "params", "flops",
               "b1", "b256"]
    return shown[columns].to_string(index=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pruning_utils.headline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--smoke", action="store_true", help="quick run (PRUNING_BOOK_SMOKE=1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <data root>/benchmark)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--fine-tune-images", type=int, default=10_000,
                        help="training images in the one epoch of fine-tuning (default 10000; "
                             "0: the whole training split)")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="allowed accuracy drop, as a fraction (default 0.01 = 1 point)")
    parser.add_argument("--models", nargs="+", default=["large-mlp", "small-cnn"],
                        choices=["large-mlp", "small-cnn"])
    parser.add_argument("--methods", nargs="+", default=None,
                        help="only these methods (names as in the table)")
    parser.add_argument("--retime", action="store_true",
                        help="keep the choices in --out/headline.json and time them again")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.fine_tune_images < 0:
        parser.error("--fine-tune-images must be >= 0")
    if not 0 < args.tolerance < 1:
        parser.error("--tolerance must be in (0, 1)")
    if args.retime and args.methods is not None:
        parser.error("--retime times every row of the earlier run; drop --methods")
    if args.smoke:
        os.environ[SMOKE_ENV] = "1"
    config = get_config()
    out = args.out if args.out is not None else data_root() / "benchmark"
    if args.retime:
        return _retime(out, args.threads)

    load_start = _load_average()
    start = time.perf_counter()
    table, layer = run_benchmark(
        args.models, methods=args.methods, tolerance=args.tolerance, num_threads=args.threads,
        fine_tune_images=args.fine_tune_images or None,
    )
    seconds = time.perf_counter() - start

    _print_results(table, layer, "smoke" if config.smoke else "full", args.threads)
    print(f"Total time: {seconds:.0f} s")

    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "headline.csv", index=False)
    meta = {
        "mode": "smoke" if config.smoke else "full",
        "dataset": "fashion-mnist",
        "threads": args.threads,
        "tolerance": args.tolerance,
        "fine_tune_images": args.fine_tune_images or None,
        "seconds": seconds,
        "load_average": {"start": load_start, "end": _load_average()},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "layer": layer,
        "rows": table.to_dict(orient="records"),
    }
    (out / "headline.json").write_text(json.dumps(meta, indent=2))
    print(f"Wrote {out / 'headline.csv'} and {out / 'headline.json'}")
    return 0


def _print_results(table: pd.DataFrame, layer: dict, mode: str, threads: int) -> None:
    print()
    print(f"Headline benchmark ({mode} mode, Fashion-MNIST, "
          f"{threads} threads; accuracies on the report half of the test set, %):")
    print(_format(table))
    print()
    print(f"One {layer['layer']}, rank {layer['rank']} (r* = {layer['break_even_rank']:.1f}), "
          f"batch {layer['batch']}: dense {layer['dense_ms']:.2f} ms, factorized "
          f"{layer['factorized_ms']:.2f} ms, speedup {layer['speedup']:.2f}x "
          f"(FLOP ratio {layer['flop_ratio']:.1f}x)")


_TIMING_COLUMNS = ("speedup_b1", "speedup_b256", "dense_ms_b256", "pruned_ms_b256")


def _retime(out: Path, threads: int) -> int:
    """``--retime``: time the choices in ``out/headline.json`` again and rewrite both files."""
    path = out / "headline.json"
    if not path.is_file():
        raise SystemExit(f"--retime needs the results of a run: {path} does not exist")
    meta = json.loads(path.read_text())
    load_start = _load_average()
    start = time.perf_counter()
    table, layer = retime_benchmark(meta, num_threads=threads)
    seconds = time.perf_counter() - start
    superseded = {
        "threads": meta["threads"],
        "load_average": meta.get("load_average"),
        "layer_speedup": meta["layer"]["speedup"],
        "rows": [{"model": r["model"], "method": r["method"],
                  **{c: r[c] for c in _TIMING_COLUMNS}} for r in meta["rows"]],
    }
    meta.setdefault("superseded_timings", []).append(superseded)
    meta.update(threads=threads, layer=layer, rows=table.to_dict(orient="records"))
    meta["timing_run"] = {"seconds": seconds,
                          "load_average": {"start": load_start, "end": _load_average()}}
    _print_results(table, layer, meta["mode"], threads)
    print(f"Timing took {seconds:.0f} s")
    table.to_csv(out / "headline.csv", index=False)
    path.write_text(json.dumps(meta, indent=2))
    print(f"Rewrote {out / 'headline.csv'} and {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
