"""The book's headline benchmark: the most compressed setting of each method within 1 point.

Run it with ``python -m pruning_utils.headline`` (``python -m pruning_utils.benchmark`` is
the same command; ``--smoke`` for a quick run). ``--models small-resnet --add`` runs the
ResNet alone and merges its rows into the table already in ``--out``: a network whose
blocks add feature maps gets the methods that do not need a chain of layers (the group
methods, low rank, magnitude, randomized im2col); its train-small control is a
:class:`~pruning_utils.models.SmallResNet` of the pruned widths, BatchNorm included. For the
LargeMLP and the SmallCNN trained on Fashion-MNIST
(:func:`~pruning_utils.train.trained_model`) and for every method of the registry
(:data:`~pruning_utils.methods.METHODS`) that applies to the network and has a grid, it
bisects the method's grid (ordered from the most compressed setting to the least,
accuracy assumed to grow along it) for the most compressed setting whose accuracy stays
within ``--tolerance`` (1 percentage point) of the dense model; where the method allows it,
a second bisection over the settings that failed gives each one epoch of fine-tuning on a
fixed random subset of the training split (``--fine-tune-images``, 10,000
by default) and finds the most compressed setting that passes after it.

Selection on validation, report on test. Every choice is made on the validation split
(the last 5,000 training images, on which no model was trained) against the dense model's
validation accuracy, or, for a fine-tuned setting, against the dense model given the same
epoch of fine-tuning (a fine-tuned pruned model is never compared with a less-trained dense
one). The chosen setting is then pruned (and fine-tuned) again for three seeds (calibration
sample, fine-tuning subset and order, sampling), and reported on the whole test set: mean
test accuracy with a 95 % interval, the drop against the reference with a paired bootstrap
interval over the same images, per-seed accuracies. A row is ``within_tolerance`` only if
its mean *test* drop is; ``validation_within`` says what the choice saw. Per network, a
train-small control (``"from scratch (widths of ...)"``) trains the architecture of the
most compressed width-pruning choice from scratch, with the same budget. Parameter and FLOP
ratios come with the latency speedup at batch 1 and 256 (median over 5 interleaved rounds
of the paired ratios, with its quartiles), dense and every row of a network timed in one
interleaved call per batch size (:func:`~pruning_utils.measure.compare_latency`).
It ends with one 2048×8192 layer factorized at rank 128, timed against the dense layer.

The table is printed and written as ``headline.csv`` and ``headline.json`` (with the
protocol, the run's duration and the machine: CPU model, threads, BLAS, load before and
after) to ``--out`` (default ``<data root>/benchmark``).

Timings are only as good as the machine was quiet, and every timing keeps freed memory in the
process (:func:`~pruning_utils.measure.keep_freed_memory`) so that no call pays the allocator's
page faults. ``--retime`` keeps the choices and the
accuracies of an earlier run in ``--out`` and measures the speedups again: it rebuilds each
chosen architecture from the dense model (fine-tuning changes weights, not shapes, so the
timing is the same), checks its parameter count against the table, and times it against
the dense model. The json keeps the superseded speedups and the machine of both runs, and
each row's ``retime_ratio_b256`` (new batch-256 speedup over the previous one): run
``--retime`` twice to see how far a timing moves between two runs (``make headline`` does
all three). Every finished row is also written to ``headline.partial.json`` in ``--out`` as
soon as it is done; ``--resume`` continues an interrupted run from it. ``--add --models vit``
runs one more network (the vision transformer of chapter 6) and puts its rows into the table
already in ``--out``, leaving the rows of the other networks, and their timings, as they were
(the json lists each added run with its machine under ``added_runs``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pruning_utils.config import SMOKE_ENV, data_root, get_config, seed_everything
from pruning_utils.data import load_dataset
from pruning_utils.files import CorruptFileError, atomic_files
from pruning_utils.layers import LowRankLinear
from pruning_utils.measure import compare_latency, count_flops, count_params, machine_record
from pruning_utils.methods import Method, get_method, methods_for
from pruning_utils.models import SmallCNN, SmallResNet, VisionTransformer
from pruning_utils.nnutils import model_device, seeded
from pruning_utils.stats import (
    Interval,
    accuracy_interval,
    correct_predictions,
    paired_difference_interval,
)
from pruning_utils.surgery.tree import leaves
from pruning_utils.train import BOOK_RECIPES, evaluate, fine_tune, train, trained_model

__all__ = [
    "BenchmarkData", "Choice", "benchmark_methods", "load_benchmark_data", "setting_of",
    "find_setting", "timing_inputs", "time_speedups", "run_benchmark", "retime_benchmark", "main",
]

#: The networks of the headline table and the kind of network each one is. The default run
#: covers the first two; ``--models small-resnet --add`` (or ``vit``) adds a network's rows to
#: a table.
NETWORKS = {"large-mlp": "mlp", "small-cnn": "cnn", "small-resnet": "cnn", "vit": "transformer"}
DEFAULT_MODELS = ("large-mlp", "small-cnn")


def benchmark_methods(
    network: str, methods: Sequence[str | Method] | None = None, *, chain: bool = True
) -> tuple[Method, ...]:
    """The methods the benchmark runs on a network of a kind: ``"mlp"``, ``"cnn"``, ...

    Default: every registered method for that kind of network that has a grid. ``methods``
    (names, labels or :class:`~pruning_utils.methods.Method` objects, registered or not)
    narrows the list or adds outside methods; a named method that does not apply to the
    network is left out. With ``chain=False`` (a network whose blocks add or concatenate
    feature maps) the methods that walk a chain of layers (``Method.chains_only``) are left
    out too.
    """
    if methods is None:
        return tuple(m for m in methods_for(network) if m.grid and (chain or not m.chains_only))
    if isinstance(methods, (str, Method)):
        raise TypeError("methods must be a list of method names or Method objects")
    chosen = [get_method(m) for m in methods]
    empty = [m.name for m in chosen if not m.grid]
    if empty:
        raise ValueError(f"methods {empty} have no grid to search; give them one")
    return tuple(m for m in chosen if network in m.networks and (chain or not m.chains_only))


def is_chain(model: nn.Module) -> bool:
    """Whether ``model`` is an ``nn.Sequential`` chain whose every Linear and Conv2d is a
    step of the chain (not inside a block with its own ``forward``, as a ResNet's are)."""
    if not isinstance(model, nn.Sequential):
        return False
    for leaf in leaves(model):
        module = leaf.module
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in module.modules()):
            return False
    return True


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
    tuned_accuracy: float | None = None,
    tolerance: float = 0.01,
    fine_tune_data=None,
    seeds: Sequence[int] = (0, 1, 2),
    log: Callable[[str], None] = print,
) -> Choice:
    """The most compressed setting of ``method`` whose accuracy is within ``tolerance``.

    ``selection`` is the data the choice is made on (the benchmark passes the validation
    split); ``dense_accuracy`` is the dense model's accuracy on it and ``tuned_accuracy``
    that of the dense model given the same epoch of fine-tuning (default
    ``dense_accuracy``): a fine-tuned setting passes only within ``tolerance`` of the
    latter, so that fine-tuning is never credited with what one more epoch of training
    would give the dense model too.

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
    tuned_threshold = (dense_accuracy if tuned_accuracy is None else tuned_accuracy) - tolerance
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
        choice = _fine_tuned_choice(choice, method, prune, passing, selection,
                                    tuned_threshold, fine_tune_data, tried, seeds, log)
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


#: Seeds of the whole prune (+ fine-tune) pipeline: seed ``s`` draws the calibration sample,
#: the fine-tuning subset and its order, and the samples of randomized methods.
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class BenchmarkData:
    """The data of the benchmark protocol.

    Attributes
    ----------
    validation:
        Where every choice is made (the ``"val"`` split: the last 5,000 training images).
    test:
        Where every reported accuracy is measured (the test split), and only that.
    train:
        The training split, on which the train-small control is trained from scratch.
    fine_tune_sets:
        Per seed, the training images of the one epoch of fine-tuning.
    calibration_sets:
        Per seed, the calibration inputs of the data-aware methods.
    """

    validation: TensorDataset
    test: TensorDataset
    train: TensorDataset
    fine_tune_sets: tuple[TensorDataset, ...]
    calibration_sets: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        if not self.fine_tune_sets or len(self.fine_tune_sets) != len(self.calibration_sets):
            raise ValueError(
                "fine_tune_sets and calibration_sets must hold one entry per seed, and at "
                f"least one; got {len(self.fine_tune_sets)} and {len(self.calibration_sets)}"
            )

    @property
    def seeds(self) -> tuple[int, ...]:
        """The pipeline seeds ``0, 1, ...`` (one per fine-tuning and calibration set)."""
        return tuple(range(len(self.fine_tune_sets)))

    @property
    def fine_tune(self) -> TensorDataset:
        """Seed 0's fine-tuning images (the ones the choice is made with)."""
        return self.fine_tune_sets[0]

    @property
    def calibration(self) -> torch.Tensor:
        """Seed 0's calibration inputs."""
        return self.calibration_sets[0]


def load_benchmark_data(
    fine_tune_images: int | None = 10_000, seeds: Sequence[int] = SEEDS
) -> BenchmarkData:
    """Fashion-MNIST as the benchmark uses it.

    Sizes come from :func:`~pruning_utils.config.get_config` (smoke or full mode): the
    validation split is subsampled like the test split in smoke mode. Seed ``s`` draws its
    fine-tuning subset with seed ``1000 + s`` and its calibration sample with ``2000 + s``,
    both from the training split.
    """
    config = get_config()
    validation = load_dataset("fashion-mnist", "val", subset=config.test_subset)
    test = load_dataset("fashion-mnist", "test", subset=config.test_subset)
    train = load_dataset("fashion-mnist", "train", subset=config.train_subset, seed=0)
    sizes = [n for n in (config.train_subset, fine_tune_images) if n is not None]
    fine_tune_sets = tuple(
        load_dataset("fashion-mnist", "train", subset=min(sizes) if sizes else None,
                     seed=1000 + s)
        for s in seeds
    )
    calibration_sets = tuple(
        load_dataset("fashion-mnist", "train", subset=config.calibration_size,
                     seed=2000 + s).tensors[0]
        for s in seeds
    )
    return BenchmarkData(validation, test, train, fine_tune_sets, calibration_sets)


def _network(model: nn.Module) -> str:
    """``"transformer"`` for the ViT, ``"cnn"`` for a model with a convolution, else ``"mlp"``."""
    if isinstance(model, VisionTransformer):
        return "transformer"
    return "cnn" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "mlp"


def _smoke(method: Method, points: int) -> Method:
    return replace(method, grid=_thin(tuple(method.grid), points))


def _correct(model: nn.Module, data, seed: int) -> torch.Tensor:
    """Right or wrong per image; the sampling layers of a randomized model reseeded first."""
    for k, layer in enumerate(m for m in model.modules() if hasattr(m, "reseed")):
        layer.reseed(seed * 1000 + k)
    return correct_predictions(model, data, seed=seed)


def _recipe(name: str) -> dict:
    """Learning rate, batch size and epochs with which the network ``name`` is trained."""
    config = get_config()
    recipe = dict(BOOK_RECIPES.get(name, {"lr": 1e-3, "batch_size": 256}))
    recipe["epochs"] = {"small-cnn": config.epochs_cnn, "small-resnet": config.epochs_cnn,
                        "vit": config.epochs_vit}.get(name, config.epochs_mlp)
    return recipe


def from_scratch_architecture(dense: nn.Module, pruned: nn.Module) -> Callable[[], nn.Module]:
    """A factory of fresh models shaped like ``pruned`` (widths) and built like ``dense``.

    For a :class:`~pruning_utils.models.SmallCNN` it is a ``SmallCNN`` with the pruned
    network's channels and hidden width, and for a :class:`~pruning_utils.models.SmallResNet`
    (one block per stage) a ``SmallResNet`` with the pruned network's stage and inner
    widths, each with the BatchNorm layers that width pruning folds away; otherwise a copy
    of ``pruned`` whose every layer is re-initialised.
    """
    convs = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    if isinstance(dense, SmallCNN) and len(convs) == len(dense.channels) and len(linears) == 2:
        channels, hidden = tuple(convs), linears[0].out_features
        return lambda: SmallCNN(channels=channels, hidden=hidden)
    if _one_block_per_stage(dense):
        named = dict(pruned.named_modules())
        blocks = [f"layer{s}.0" for s in (1, 2, 3)]
        if all(f"{b}.conv1" in named and f"{b}.conv2" in named for b in blocks):
            stages = tuple(named[f"{b}.conv2"].out_channels for b in blocks)
            inner = tuple(named[f"{b}.conv1"].out_channels for b in blocks)
            classes = linears[-1].out_features
            return lambda: SmallResNet(channels=stages, inner=inner, num_classes=classes)

    def fresh() -> nn.Module:
        model = copy.deepcopy(pruned)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return model

    return fresh


def _one_block_per_stage(model: nn.Module) -> bool:
    """Whether ``model`` is a SmallResNet with one block per stage, the residual network
    whose pruned widths :func:`from_scratch_architecture` rebuilds with BatchNorm."""
    return isinstance(model, SmallResNet) and all(
        len(getattr(model, f"layer{s}")) == 1 for s in (1, 2, 3))


def _widths(model: nn.Module) -> list[int]:
    """Output widths of the Linear and Conv2d layers, in order (the control's shape)."""
    return [m.out_features if isinstance(m, nn.Linear) else m.out_channels
            for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _interval(values: Interval) -> list[float]:
    return [values.low, values.high]


class _Reference:
    """The dense model and the dense model given the same extra epoch, scored per seed."""

    def __init__(self, dense: nn.Module, data: BenchmarkData, seeds: Sequence[int]):
        self.val = evaluate(dense, data.validation)
        self.test = [_correct(dense, data.test, 0)] * len(seeds)
        tuned = [fine_tune(dense, data.fine_tune_sets[s], epochs=1, seed=s, progress=False)
                 for s in seeds]
        self.tuned_val = evaluate(tuned[0], data.validation)
        self.tuned_test = [_correct(m, data.test, s) for m, s in zip(tuned, seeds, strict=True)]

    def test_correct(self, fine_tuned: bool) -> list[torch.Tensor]:
        return self.tuned_test if fine_tuned else self.test


def _row(name, label, key, parameter, setting, fine_tuned, validation_within, reference,
         correct, seeds, tolerance) -> dict:
    """The accuracy fields of one row: test accuracy and drop with intervals, per seed."""
    ref = reference.test_correct(fine_tuned)
    accuracy = accuracy_interval(correct)
    drop = paired_difference_interval(ref, correct)
    dense_accuracy = accuracy_interval(ref)
    return {
        "model": name,
        "method": label,
        "method_key": key,
        "parameter": parameter,
        "setting": setting,
        "fine_tuned": fine_tuned,
        "validation_within": validation_within,
        "within_tolerance": bool(100 * drop.estimate <= 100 * tolerance + 1e-9),
        "reference": "dense + 1 epoch" if fine_tuned else "dense",
        "dense_accuracy": dense_accuracy.estimate,
        "pruned_accuracy": accuracy.estimate,
        "test_accuracy": accuracy.estimate,
        "test_accuracy_ci95": _interval(accuracy),
        "test_accuracy_by_seed": [float(c.float().mean()) for c in correct],
        "test_drop_points": 100 * drop.estimate,
        "test_drop_ci95": [100 * drop.low, 100 * drop.high],
        "seeds": list(seeds),
    }


def _time_rows(dense: nn.Module, models: Sequence[nn.Module], inputs: dict[int, torch.Tensor],
               num_threads: int, seconds_per_round: float) -> list[dict]:
    """One interleaved timing of dense and every model per batch size (5 rounds)."""
    named = {"dense": dense, **{f"m{i}": m for i, m in enumerate(models)}}
    out = [{} for _ in models]
    for b, x in inputs.items():
        table = compare_latency(named, x, num_threads=num_threads, rounds=TIMING_ROUNDS,
                                min_run_time=TIMING_ROUNDS * seconds_per_round)
        for i, row in enumerate(out):
            t = table.loc[f"m{i}"]
            row[f"speedup_b{b}"] = float(t["speedup"])
            row[f"speedup_b{b}_iqr"] = [float(t["speedup_q1"]), float(t["speedup_q3"])]
            if b == 256:
                row["dense_ms_b256"] = 1e3 * float(table.loc["dense", "median_s"])
                row["pruned_ms_b256"] = 1e3 * float(t["median_s"])
    return out


#: Interleaved rounds of every timing (the median and quartiles are over them).
TIMING_ROUNDS = 5


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
    control: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
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
        Training images in the one epoch of fine-tuning (a fixed random subset per seed;
        ``None``: the whole training split, capped by the configuration's subset).
    dense_models:
        ``{name: trained model}``; default :func:`~pruning_utils.train.trained_model` of
        each name.
    data:
        The protocol's data; default :func:`load_benchmark_data`.
    layer:
        ``(m, n, rank)`` of the single-layer timing (an m×n Linear with random weights
        against its rank factorization at batch 256); ``None`` skips it.
    control:
        Add, per network, the train-small control: the architecture of the most compressed
        width-pruning choice within tolerance on validation, trained from scratch on the
        training split for the dense recipe's epochs plus the same epoch of fine-tuning.
    checkpoint:
        A json file that receives every finished row (without its timing) as soon as it is
        done, written atomically, so that an interrupted run loses at most the row in hand.
    resume:
        Take the rows already in ``checkpoint`` (from a run with the same mode, tolerance,
        seeds and data sizes) instead of computing them again; their architectures are
        rebuilt from the dense model for the timing, and checked against the stored
        parameter counts.
    log:
        Where progress lines go.
    """
    config = get_config()
    torch.set_num_threads(num_threads)
    data = load_benchmark_data(fine_tune_images) if data is None else data
    seeds = data.seeds
    inputs = timing_inputs(data.test.tensors[0])

    run_key = {"mode": "smoke" if config.smoke else "full", "tolerance": tolerance,
               "seeds": list(seeds), "validation_images": len(data.validation),
               "test_images": len(data.test), "fine_tune_images": len(data.fine_tune)}
    done = _read_checkpoint(checkpoint, run_key, log) if resume and checkpoint else {}
    finished: list[dict] = []

    def keep(row: dict) -> None:
        finished.append({k: v for k, v in row.items() if k != "_model"})
        if checkpoint is not None:
            _write_json(Path(checkpoint), {"key": run_key, "rows": finished})

    rows: list[dict] = []
    for name in models:
        if dense_models is not None and name in dense_models:
            dense = dense_models[name]
        else:
            dense = trained_model(name, progress=False)
        chain = is_chain(dense)
        method_list = benchmark_methods(_network(dense), methods, chain=chain)
        if config.smoke:
            method_list = tuple(_smoke(m, config.sweep_points) for m in method_list)
        reference = _Reference(dense, data, seeds)
        dense_params = count_params(dense)
        dense_flops = count_flops(dense, inputs[1])
        log(f"{name}: dense validation accuracy {reference.val:.4f} (+1 epoch: "
            f"{reference.tuned_val:.4f}), {dense_params:,} parameters, {dense_flops:,} FLOPs")
        network_rows, timed = [], []
        for method in method_list:
            if (name, method.name) in done:
                row = dict(done[(name, method.name)])
                pruned = _rebuild(row, dense, data.calibration)
                log(f"  {method.label}: taken from {checkpoint}")
                keep(row)
                network_rows.append(row)
                timed.append(pruned)
                if method.shrinks_width:
                    row["_model"] = pruned
                continue
            log(f"  {method.label}")
            start = time.perf_counter()
            choice = find_setting(
                dense, method, data.validation, data.calibration, dense_accuracy=reference.val,
                tuned_accuracy=reference.tuned_val, tolerance=tolerance,
                fine_tune_data=data.fine_tune, seeds=seeds, log=log,
            )
            correct, params_by_seed = [], []
            for s in seeds:
                model = choice.model if s == 0 else _rerun(dense, method, choice, data, s)
                correct.append(_correct(model, data.test, s))
                params_by_seed.append(count_params(model, nonzero=method.sparse))
            pruned = choice.model
            params = count_params(pruned, nonzero=method.sparse)
            row = _row(name, method.label, method.name, method.knob, choice.value,
                       choice.fine_tuned, choice.within, reference, correct, seeds, tolerance)
            row.update({
                "params": params,
                "params_by_seed": params_by_seed,
                "param_ratio": dense_params / params,
                "flop_ratio": dense_flops / count_flops(pruned, inputs[1]),
                "widths": _widths(pruned),
                "validation_accuracy": float(_correct(pruned, data.validation, 0).float().mean()),
                "settings_tried": len(choice.tried),
                "seconds": time.perf_counter() - start,
            })
            log(f"    chose {method.knob}={choice.value} (fine-tuned: {choice.fine_tuned}, "
                f"validation: {choice.within}); test drop {row['test_drop_points']:.2f} "
                f"[{row['test_drop_ci95'][0]:.2f}, {row['test_drop_ci95'][1]:.2f}] points")
            keep(row)
            network_rows.append(row)
            timed.append(pruned)
            if method.shrinks_width:
                row["_model"] = pruned
        if control and (name, None) in done:
            row = dict(done[(name, None)])
            log(f"  {row['method']}: taken from {checkpoint}")
            keep(row)
            network_rows.append(row)
            timed.append(_rebuild(row, dense, data.calibration))
        elif control and not (chain or _one_block_per_stage(dense)):
            log("  no train-small control: the pruned network folds its BatchNorm into a "
                "residual architecture that would train from scratch without it")
        elif control:
            made = _control(name, dense, network_rows, data, reference, seeds, tolerance, log)
            if made is not None:
                row, model = made
                row.update(param_ratio=dense_params / row["params"],
                           flop_ratio=dense_flops / count_flops(model, inputs[1]))
                keep(row)
                network_rows.append(row)
                timed.append(model)
        for row in network_rows:
            row.pop("_model", None)
        log(f"  timing dense and {len(timed)} models, interleaved ({TIMING_ROUNDS} rounds)")
        for row, timing in zip(network_rows, _time_rows(
                dense, timed, inputs, num_threads, config.timing_seconds), strict=True):
            row.update(timing, retime_ratio_b256=None)
        rows.extend(network_rows)
    result = None if layer is None else _layer_benchmark(
        *layer, batch=256, num_threads=num_threads, seconds=config.timing_seconds,
        device=model_device(dense) if models else "cpu")
    return pd.DataFrame(rows), result


def _rerun(dense: nn.Module, method: Method, choice: Choice, data: BenchmarkData,
           seed: int) -> nn.Module:
    """The chosen setting, pruned (and fine-tuned) again with seed ``seed``'s data."""
    calibration = data.calibration_sets[seed] if method.needs_data else None
    model = method.prune(dense, choice.value, data=calibration,
                         generator=seed if method.randomized else None)
    if choice.fine_tuned:
        model = fine_tune(model, data.fine_tune_sets[seed], epochs=1, seed=seed, progress=False)
    return model


def _write_json(path: Path, content: dict) -> None:
    with atomic_files(path) as (tmp,):
        tmp.write_text(json.dumps(content, indent=1, default=_plain))


def _read_checkpoint(path: str | Path, run_key: dict, log) -> dict:
    """``{(model, method_key): row}`` from a checkpoint of a run like this one."""
    path = Path(path)
    if not path.is_file():
        log(f"no checkpoint at {path}: starting from the first row")
        return {}
    try:
        content = json.loads(path.read_text())
        stored_key, stored_rows = content["key"], content["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorruptFileError(path, f"is not a benchmark checkpoint ({exc})",
                               "delete it and run without --resume") from exc
    if stored_key != run_key:
        raise ValueError(
            f"the checkpoint {path} comes from another run ({stored_key}), not {run_key}; "
            "run without --resume to start again"
        )
    return {(row["model"], row.get("method_key")): row for row in stored_rows}


def _rebuild(row: Mapping, dense: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """The seed-0 architecture of a results row, rebuilt from the dense model and checked.

    A method row is pruned again at its setting (fine-tuning changes weights, not shapes);
    a control row is built fresh from its recorded widths. Either way its parameter count
    must be the table's, or the results do not come from these weights and data.
    """
    name = row["model"]
    if "from scratch" in str(row["method"]):
        return _control_shape(row, dense)
    method = get_method(row.get("method_key") or row["method"])
    model = method.prune(dense, setting_of(row, method),
                         data=calibration if method.needs_data else None,
                         generator=0 if method.randomized else None)
    params = count_params(model, nonzero=method.sparse)
    if params != row["params"]:
        raise RuntimeError(
            f"{name}, {method.label} at {method.knob}={row['setting']:g} rebuilt with "
            f"{params:,} parameters but the table has {row['params']:,}: the results do not "
            "come from these weights and data"
        )
    return model


def _control(name, dense, rows, data, reference, seeds, tolerance, log):
    """The train-small control row and its seed-0 model, or None without a width choice."""
    candidates = [r for r in rows if "_model" in r and r["validation_within"]]
    if not candidates:
        log("  no width-pruning choice within tolerance on validation: no control")
        return None
    source = min(candidates, key=lambda r: r["params"])
    factory = from_scratch_architecture(dense, source["_model"])
    recipe = _recipe(name)
    start = time.perf_counter()
    models, correct = [], []
    for s in seeds:
        with seeded(s):
            model = factory().to(model_device(dense))
        train(model, data.train, recipe["epochs"], lr=recipe["lr"],
              batch_size=recipe["batch_size"], seed=s, progress=False)
        model = fine_tune(model, data.fine_tune_sets[s], epochs=1, seed=s, progress=False)
        models.append(model)
        correct.append(_correct(model, data.test, s))
    label = f"from scratch (widths of {source['method']})"
    row = _row(name, label, None, "widths", None, True, None, reference, correct, seeds,
               tolerance)
    params = count_params(models[0])
    row.update({
        "params": params,
        "params_by_seed": [count_params(m) for m in models],
        "widths": _widths(models[0]),
        "validation_accuracy": evaluate(models[0], data.validation),
        "settings_tried": 0,
        "seconds": time.perf_counter() - start,
    })
    log(f"  {label}: {params:,} parameters, test drop {row['test_drop_points']:.2f} "
        f"[{row['test_drop_ci95'][0]:.2f}, {row['test_drop_ci95'][1]:.2f}] points")
    return row, models[0]


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
    rebuilt from the dense model with the recorded method and setting (seed 0's
    calibration data; a control row from its recorded widths), its parameter count is
    checked against the table, and per network dense and every row are timed in one
    interleaved call per batch size. Only the timing columns change, and
    ``retime_ratio_b256`` becomes the new batch-256 speedup over the earlier one.
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
    by_network: dict[str, list[tuple[dict, nn.Module]]] = {}
    for row in rows:
        name = row["model"]
        if name not in dense_cache:
            if name not in NETWORKS:
                raise ValueError(f"model must be one of {list(NETWORKS)}, got {name!r}")
            dense_cache[name] = trained_model(name, progress=False)
        model = _rebuild(row, dense_cache[name], data.calibration)
        by_network.setdefault(name, []).append((row, model))
    for name, pairs in by_network.items():
        log(f"  {name}: timing dense and {len(pairs)} models, interleaved")
        timings = _time_rows(dense_cache[name], [m for _, m in pairs], inputs, num_threads,
                             config.timing_seconds)
        for (row, _), timing in zip(pairs, timings, strict=True):
            before = row.get("speedup_b256")
            row.update(timing)
            row["retime_ratio_b256"] = (timing["speedup_b256"] / before) if before else None
            log(f"    {row['method']}: speedup b1 {row['speedup_b1']:.2f}x, "
                f"b256 {row['speedup_b256']:.2f}x")
    result = None if layer is None else _layer_benchmark(
        *layer, batch=256, num_threads=num_threads, seconds=config.timing_seconds,
        device=model_device(next(iter(dense_cache.values()))) if dense_cache else "cpu")
    return pd.DataFrame(rows), result


def _control_shape(row: Mapping, dense: nn.Module) -> nn.Module:
    """A fresh model with a control row's recorded widths (its timing needs no weights)."""
    widths = list(row["widths"])
    if isinstance(dense, SmallCNN):
        channels, hidden = widths[:-2], widths[-2]
        model = SmallCNN(channels=channels, hidden=hidden)
    elif _one_block_per_stage(dense) and len(widths) == len(_widths(dense)) == 10:
        # stem, then per stage conv1 (inner), conv2 (stage), [projection]; then the classifier
        model = SmallResNet(channels=(widths[0], widths[4], widths[7]),
                            inner=(widths[1], widths[3], widths[6]), num_classes=widths[-1])
    else:
        model = copy.deepcopy(dense)
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if len(layers) != len(widths) or any(isinstance(m, nn.Conv2d) for m in model.modules()):
            raise ValueError(f"cannot rebuild the control {row['method']!r} from its widths")
        slots = [(parent, child_name) for parent in model.modules()
                 for child_name, child in parent.named_children() if isinstance(child, nn.Linear)]
        fan_in = layers[0].in_features
        for (parent, child_name), width in zip(slots, widths, strict=True):
            setattr(parent, child_name, nn.Linear(fan_in, width))
            fan_in = width
    if _widths(model) != widths:
        raise RuntimeError(f"the control {row['method']!r} rebuilt with widths "
                           f"{_widths(model)}, not {widths}")
    if count_params(model) != row["params"]:
        raise RuntimeError(
            f"{row['model']}, {row['method']} rebuilt with {count_params(model):,} parameters "
            f"but the table has {row['params']:,}")
    return model.to(model_device(dense))


def _format(table: pd.DataFrame) -> str:
    def interval(lo_hi) -> str:
        return f"[{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]"

    shown = table.assign(
        test_acc=[f"{100 * a:.2f} {interval([100 * x for x in ci])}"
                  for a, ci in zip(table.test_accuracy, table.test_accuracy_ci95, strict=True)],
        drop=[f"{d:.2f} {interval(ci)}"
              for d, ci in zip(table.test_drop_points, table.test_drop_ci95, strict=True)],
        params=table.param_ratio.map("{:.1f}x".format),
        flops=table.flop_ratio.map("{:.1f}x".format),
        b1=[f"{s:.2f}x {interval(q)}"
            for s, q in zip(table.speedup_b1, table.speedup_b1_iqr, strict=True)],
        b256=[f"{s:.2f}x {interval(q)}"
              for s, q in zip(table.speedup_b256, table.speedup_b256_iqr, strict=True)],
        setting=[("" if v is None or (isinstance(v, float) and math.isnan(v))
                  else f"{p}={v:g}") + (" +ft" if ft else "") + ("" if ok else " (not within)")
                 for p, v, ft, ok in zip(table.parameter, table.setting, table.fine_tuned,
                                         table.within_tolerance, strict=True)],
    )
    columns = ["model", "method", "setting", "test_acc", "drop", "params", "flops", "b1",
               "b256"]
    return shown[columns].to_string(index=False)


def _protocol(args: argparse.Namespace, data: BenchmarkData) -> dict:
    config = get_config()
    return {
        "selection": "validation",
        "validation_images": len(data.validation),
        "test_images": len(data.test),
        "report": "test",
        "tolerance": args.tolerance,
        "within_tolerance": "the mean test drop over the seeds is at most the tolerance",
        "reference": "dense for rows without fine-tuning; for fine-tuned rows (and the "
                     "control) the dense model given the same epoch of fine-tuning on the "
                     "same images",
        "seeds": list(data.seeds),
        "seed_meaning": "calibration sample, fine-tuning subset and order, sampling of "
                        "randomized methods; the choice is made with seed 0",
        "fine_tune_images": len(data.fine_tune),
        "intervals": "test_accuracy_ci95: 95 % interval of the seed-averaged accuracy "
                     "(Wilson for one model); test_drop_ci95: paired bootstrap over the test "
                     "images, 2000 resamples",
        "timing": {"rounds": TIMING_ROUNDS, "seconds_per_round": config.timing_seconds,
                   "interleaved": "dense and every row of a network in one call per batch "
                                  "size; speedup = median of the rounds' paired ratios, "
                                  "iqr = [q1, q3] of them"},
        "control": "from scratch: the widths of the most compressed width-pruning choice "
                   "within tolerance on validation, trained on the training split for the "
                   "dense recipe's epochs plus the same epoch of fine-tuning",
    }


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
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        choices=list(NETWORKS))
    parser.add_argument("--add", action="store_true",
                        help="merge the rows of --models into the results already in --out "
                             "(replacing earlier rows of the same networks) instead of "
                             "writing a table of these networks alone; the single-layer "
                             "timing of the earlier run is kept")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="only these methods (names as in the table)")
    parser.add_argument("--no-control", action="store_true",
                        help="skip the train-small control rows")
    parser.add_argument("--resume", action="store_true",
                        help="take the rows that --out/headline.partial.json already holds (an "
                             "interrupted run's) instead of computing them again")
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
    if args.retime and args.resume:
        parser.error("--resume continues a run; --retime times a finished one: pick one")
    if args.retime and args.add:
        parser.error("--add runs networks and merges them; --retime times a finished run")
    if args.smoke:
        os.environ[SMOKE_ENV] = "1"
    config = get_config()
    out = args.out if args.out is not None else data_root() / "benchmark"
    if args.retime:
        return _retime(out, args.threads)

    machine = machine_record(args.threads)
    start = time.perf_counter()
    data = load_benchmark_data(args.fine_tune_images or None)
    earlier = _earlier_results(out, "smoke" if config.smoke else "full", args) if args.add else None
    table, layer = run_benchmark(
        args.models, methods=args.methods, tolerance=args.tolerance, num_threads=args.threads,
        data=data, control=not args.no_control, resume=args.resume,
        checkpoint=(out / "headline.partial.json"),
        **({"layer": None} if earlier is not None else {}),
    )
    seconds = time.perf_counter() - start
    after = machine_record(args.threads)
    _print_results(table, layer, "smoke" if config.smoke else "full", args.threads)
    print(f"Total time: {seconds:.0f} s")

    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "mode": "smoke" if config.smoke else "full",
        "dataset": "fashion-mnist",
        "threads": args.threads,
        "tolerance": args.tolerance,
        "fine_tune_images": args.fine_tune_images or None,
        "seconds": seconds,
        "protocol": _protocol(args, data),
        "machine": {**machine, "load_before": machine["load_average"],
                    "load_after": after["load_average"]},
        "layer": layer,
        "rows": table.to_dict(orient="records"),
    }
    meta["machine"].pop("load_average")
    if earlier is not None:
        table, meta = _merge(earlier, table, meta, args.models)
        _print_results(table, meta["layer"], meta["mode"], args.threads)
    _write(out, table, meta)
    (out / "headline.partial.json").unlink(missing_ok=True)  # the run is whole now
    return 0


def _earlier_results(out: Path, mode: str, args: argparse.Namespace) -> dict | None:
    """The results in ``out/headline.json`` that ``--add`` merges into (None: none yet)."""
    path = out / "headline.json"
    if not path.is_file():
        print(f"--add: no earlier results at {path}; writing these networks alone")
        return None
    try:
        meta = json.loads(path.read_text())
        rows = meta["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorruptFileError(path, f"is not a benchmark result ({exc})",
                               "run the benchmark again without --add") from exc
    if meta.get("mode") != mode:
        raise SystemExit(f"--add: {path} holds a {meta.get('mode')!r} run, not a {mode!r} one")
    same = {"tolerance": args.tolerance, "fine_tune_images": args.fine_tune_images or None}
    differ = {k: (meta.get(k), v) for k, v in same.items() if meta.get(k) != v}
    if "protocol" not in meta or differ:
        raise SystemExit(f"--add needs an earlier run of the same protocol in {path}; it differs "
                         f"in {differ or 'protocol (written before the validation protocol)'}")
    if not isinstance(rows, list):
        raise CorruptFileError(path, "has no list of rows", "run the benchmark again")
    return meta


def _merge(earlier: dict, table: pd.DataFrame, meta: dict, models: Sequence[str]
           ) -> tuple[pd.DataFrame, dict]:
    """Earlier rows of other networks, then this run's rows; the earlier protocol, machine
    and single-layer timing are kept and this run is recorded under ``added_runs``."""
    kept = [row for row in earlier["rows"] if row.get("model") not in set(models)]
    rows = kept + table.to_dict(orient="records")
    merged = dict(earlier)
    merged["rows"] = rows
    merged.setdefault("added_runs", []).append({
        key: meta[key] for key in ("seconds", "protocol", "machine", "threads",
                                   "fine_tune_images", "tolerance")} | {
        "models": list(models),
        # how many --retime runs came before this one: those after it timed its rows again
        "retimes_before": len(earlier.get("superseded_timings", []))})
    return pd.DataFrame(rows), merged


def _write(out: Path, table: pd.DataFrame, meta: dict) -> None:
    """``headline.csv`` and ``headline.json``, each written whole or not at all."""
    with atomic_files(out / "headline.csv", out / "headline.json") as (csv, js):
        table.to_csv(csv, index=False)
        js.write_text(json.dumps(meta, indent=2, default=_plain))
    print(f"Wrote {out / 'headline.csv'} and {out / 'headline.json'}")


def _plain(value):
    if isinstance(value, (bool,)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to json")


def _print_results(table: pd.DataFrame, layer: dict | None, mode: str, threads: int) -> None:
    print()
    print(f"Headline benchmark ({mode} mode, Fashion-MNIST, {threads} threads; chosen on "
          "validation; test accuracy and drop in points with 95 % intervals; speedups with "
          "[q1, q3]):")
    print(_format(table))
    if layer is not None:
        print()
        print(f"One {layer['layer']}, rank {layer['rank']} (r* = "
              f"{layer['break_even_rank']:.1f}), batch {layer['batch']}: dense "
              f"{layer['dense_ms']:.2f} ms, factorized {layer['factorized_ms']:.2f} ms, "
              f"speedup {layer['speedup']:.2f}x (FLOP ratio {layer['flop_ratio']:.1f}x)")


_TIMING_COLUMNS = ("speedup_b1", "speedup_b256", "speedup_b1_iqr", "speedup_b256_iqr",
                   "dense_ms_b256", "pruned_ms_b256")


def _retime(out: Path, threads: int) -> int:
    """``--retime``: time the choices in ``out/headline.json`` again and rewrite both files."""
    path = out / "headline.json"
    if not path.is_file():
        raise SystemExit(f"--retime needs the results of a run: {path} does not exist")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFileError(path, f"is not valid JSON ({exc})",
                               "run the benchmark again without --retime") from exc
    if "protocol" not in meta:
        raise SystemExit(
            f"{path} was written before the validation protocol (choices made on the test "
            "set); run the benchmark again without --retime"
        )
    machine = machine_record(threads)
    start = time.perf_counter()
    table, layer = retime_benchmark(meta, num_threads=threads)
    seconds = time.perf_counter() - start
    after = machine_record(threads)
    superseded = {
        "threads": meta["threads"],
        "machine": meta.get("machine"),
        "layer_speedup": (meta.get("layer") or {}).get("speedup"),
        "rows": [{"model": r["model"], "method": r["method"],
                  **{c: r.get(c) for c in _TIMING_COLUMNS}} for r in meta["rows"]],
    }
    meta.setdefault("superseded_timings", []).append(superseded)
    meta.update(threads=threads, layer=layer, rows=table.to_dict(orient="records"))
    meta["machine"] = {**machine, "load_before": machine["load_average"],
                       "load_after": after["load_average"]}
    meta["machine"].pop("load_average")
    meta["timing_run"] = {"seconds": seconds}
    _print_results(table, layer, meta["mode"], threads)
    print(f"Timing took {seconds:.0f} s")
    _write(out, table, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
