"""A latency budget: how many channels each group keeps so that the network reaches a speedup.

One variance for every layer spends the budget where the activations are easiest to compress,
not where the time goes. :func:`latency_budget` turns a target speedup at a batch size into
one width per channel group of a :class:`~pruning_utils.surgery.GroupFit`:

1. **Cost.** A :class:`LatencyTable` times every Conv2d and Linear layer of the network
   alone on this machine, at the batch size, for a grid of input and output channel
   fractions (a few seconds per layer, cached on disk). The network's predicted time at
   given widths is the sum of its layers' times (bilinear in the two fractions) plus the
   rest of the dense time (activations, additions, pooling) scaled by the fraction of
   the activations kept.
2. **Error.** Each group's error at ``k`` channels is the relative interpolative
   residual ``‖H − H[:, S_k] T_k‖_F² / ‖H‖_F²`` of its activations, read from the pivoted
   QR (:meth:`~pruning_utils.surgery.GroupFit.residuals`): the quantity the method's
   theory says it loses.
3. **Allocation.** Greedy on error per millisecond: starting from every channel, remove
   the step of channels (1/32 of a group) that adds the least estimated error per
   predicted second saved, until the prediction meets the target.
4. **Measurement.** The pruned network and the reference are timed in one interleaved
   :func:`~pruning_utils.measure.compare_latency` call. If the measured speedup misses the
   target by more than ``tolerance`` (with ``at_least``: falls below it, or above it by
   more than ``tolerance``), the target of the prediction is corrected by the ratio, kept
   between the aims already seen to land too low and too high, and the allocation repeated
   (at most ``rounds`` times): the table predicts the layers well, the rest of the network
   only roughly, and a step of channels in a layer at full resolution moves the measured
   time by more than the step suggests.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pruning_utils.config import data_root, get_config
from pruning_utils.files import atomic_files
from pruning_utils.measure import compare_latency, machine_record, measure_latency
from pruning_utils.surgery import GroupFit, LayerUse
from pruning_utils.validation import check_int, check_model, check_real

__all__ = ["FRACTIONS", "LatencyTable", "BudgetResult", "latency_budget", "allocate_widths"]

#: Channel fractions at which every layer is timed.
FRACTIONS: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 1.0)


def _layer_at(layer: nn.Module, c_in: int, c_out: int) -> nn.Module:
    """A fresh layer like ``layer`` with ``c_in`` inputs and ``c_out`` outputs (with bias: the
    layers of a pruned network carry their folded BatchNorm as a bias)."""
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(c_in, c_out, layer.kernel_size, stride=layer.stride,
                         padding=layer.padding, dilation=layer.dilation, bias=True,
                         padding_mode=layer.padding_mode)
    return nn.Linear(c_in, c_out, bias=True)


def _channels(count: int, fraction: float) -> int:
    return max(1, round(count * fraction))


class LatencyTable:
    """Per-layer latency of a traced network at one batch size, measured here and cached.

    ``table.seconds[path]`` is a ``len(f_in) × len(f_out)`` array of the median time of
    layer ``path`` alone with ``round(f·c_in)`` input and ``round(f·c_out)`` output channels
    (fractions :data:`FRACTIONS`; a layer whose inputs or outputs belong to no prunable
    group is timed at fraction 1 on that side only), made non-decreasing in both
    fractions (a running maximum: timing noise never makes more channels cheaper).

    Parameters
    ----------
    fit:
        The :class:`~pruning_utils.surgery.GroupFit` of the network.
    batch_size:
        Batch size of the timing.
    num_threads:
        Intra-op threads (default ``torch.get_num_threads()``).
    min_run_time:
        Measuring time per entry, in seconds (default ``get_config().timing_seconds / 10``).
    cache:
        ``True`` (default): read and write ``<data_root>/latency/``; a folder: that folder;
        ``False``: measure every time. The key holds the CPU, threads, torch version,
        batch size, layer shapes and fractions.
    """

    def __init__(
        self,
        fit: GroupFit,
        batch_size: int = 256,
        *,
        num_threads: int | None = None,
        min_run_time: float | None = None,
        cache: bool | str | Path = True,
        fractions: Sequence[float] = FRACTIONS,
    ) -> None:
        if not isinstance(fit, GroupFit):
            raise TypeError(f"fit must be a GroupFit, got {type(fit).__name__}")
        self.batch_size = check_int("batch_size", batch_size)
        self.num_threads = torch.get_num_threads() if num_threads is None else check_int(
            "num_threads", num_threads)
        default_time = get_config().timing_seconds / 10
        self.min_run_time = default_time if min_run_time is None else check_real(
            "min_run_time", min_run_time, lower=0.0, include_lower=False)
        self.fractions = tuple(sorted(check_real("fractions", f, lower=0.0, upper=1.0,
                                                 include_lower=False) for f in fractions))
        if self.fractions[-1] != 1.0:
            raise ValueError(f"fractions must include 1.0, got {self.fractions}")
        self.uses: list[LayerUse] = fit.layers()
        self.widths = {name: fit.group_width(name) for name in fit.prunable}
        reference = fit.reference()
        self._modules = {use.path: reference.get_submodule(use.path) for use in self.uses}
        self._outputs = {use.path: self._output_size(use) for use in self.uses}
        self.key = self._key()
        path = self._cache_path(cache)
        #: The cache file (``None`` without a cache).
        self.path = path
        loaded = self._read(path) if path is not None else None
        self.seconds: dict[str, np.ndarray] = loaded if loaded is not None else self._measure()
        self.cached = loaded is not None
        if path is not None and loaded is None:
            with atomic_files(path) as (tmp,):
                tmp.write_text(json.dumps({
                    "key": self.key,
                    "machine": machine_record(self.num_threads),
                    "seconds": {k: v.tolist() for k, v in self.seconds.items()},
                }, indent=1))
        # the rest of the dense time is set by calibrate(); until then only the layers count
        self.rest_seconds = 0.0

    # ------------------------------------------------------------------ measuring
    def _sides(self, use: LayerUse) -> tuple[tuple[float, ...], tuple[float, ...]]:
        prunable_in = any(name is not None for name in use.inputs)
        f_in = self.fractions if prunable_in else (1.0,)
        f_out = self.fractions if use.output is not None else (1.0,)
        return f_in, f_out

    def _output_size(self, use: LayerUse) -> int:
        layer = self._modules[use.path]
        with torch.no_grad():
            y = layer(torch.zeros(1, *use.input_shape, dtype=layer.weight.dtype,
                                  device=layer.weight.device))
        return int(y[0].numel())

    def _key(self) -> str:
        record = machine_record(self.num_threads)
        spec = {
            "cpu": record["cpu_model"], "threads": self.num_threads, "torch": record["torch"],
            "freed_memory_kept": record["freed_memory_kept"],
            "batch": self.batch_size, "time": self.min_run_time, "fractions": self.fractions,
            "layers": [
                [use.path, type(self._modules[use.path]).__name__, list(use.input_shape),
                 sorted((str(k), v) for k, v in use.inputs.items()), use.output is not None,
                 repr(self._modules[use.path])]
                for use in self.uses
            ],
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def _cache_path(self, cache: bool | str | Path) -> Path | None:
        if cache is False:
            return None
        if cache is True:
            folder = data_root() / "latency"
        elif isinstance(cache, (str, Path)):
            folder = Path(cache)
        else:
            raise TypeError(f"cache must be True, False or a folder, got {type(cache).__name__}")
        return folder / f"layers_b{self.batch_size}_{self.key}.json"

    def _read(self, path: Path) -> dict[str, np.ndarray] | None:
        if not path.is_file():
            return None
        try:
            blob = json.loads(path.read_text())
            seconds = {k: np.asarray(v, dtype=float) for k, v in blob["seconds"].items()}
        except (ValueError, KeyError, TypeError):
            return None  # a damaged entry is measured again and replaced
        if blob.get("key") != self.key or set(seconds) != set(self._modules):
            return None
        return seconds

    def _measure(self) -> dict[str, np.ndarray]:
        seconds = {}
        for use in self.uses:
            layer = self._modules[use.path]
            f_in, f_out = self._sides(use)
            c_in = use.input_shape[0] // use.per
            c_out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            grid = np.zeros((len(f_in), len(f_out)))
            for i, a in enumerate(f_in):
                for j, b in enumerate(f_out):
                    k_in = c_in if len(f_in) == 1 else _channels(c_in, a)
                    k_out = c_out if len(f_out) == 1 else _channels(c_out, b)
                    if isinstance(layer, nn.Conv2d):
                        x = torch.randn(self.batch_size, k_in, *use.input_shape[1:])
                        module = _layer_at(layer, k_in, k_out)
                    else:
                        x = torch.randn(self.batch_size, k_in * use.per)
                        module = _layer_at(layer, k_in * use.per, k_out)
                    grid[i, j] = measure_latency(
                        module.eval(), x, num_threads=self.num_threads,
                        min_run_time=self.min_run_time, warmup=1,
                    ).median
            # more channels never take less time: noise that says otherwise is levelled up
            grid = np.maximum.accumulate(np.maximum.accumulate(grid, axis=0), axis=1)
            seconds[use.path] = grid
        return seconds

    # ------------------------------------------------------------------ predicting
    def fractions_of(self, widths: Mapping[str, int]) -> dict[str, tuple[float, float]]:
        """``{layer: (input fraction, output fraction)}`` at ``widths`` (groups not named
        keep every channel)."""
        kept = {name: widths.get(name, m) / m for name, m in self.widths.items()}
        out = {}
        for use in self.uses:
            total = sum(use.inputs.values())
            f_in = sum(n * (1.0 if g is None else kept[g]) for g, n in use.inputs.items()) / total
            f_out = 1.0 if use.output is None else kept[use.output]
            out[use.path] = (f_in, f_out)
        return out

    def _interpolate(self, path: str, use: LayerUse, a: float, b: float) -> float:
        f_in, f_out = self._sides(use)
        grid = self.seconds[path]
        rows = [float(np.interp(b, f_out, grid[i])) for i in range(len(f_in))]
        return float(np.interp(a, f_in, rows)) if len(f_in) > 1 else rows[0]

    def layer_seconds(self, widths: Mapping[str, int]) -> dict[str, float]:
        """Predicted time of every layer at ``widths``."""
        fractions = self.fractions_of(widths)
        return {use.path: self._interpolate(use.path, use, *fractions[use.path])
                for use in self.uses}

    def activation_fraction(self, widths: Mapping[str, int]) -> float:
        """Share of the layers' output activations kept at ``widths``."""
        fractions = self.fractions_of(widths)
        total = sum(self._outputs.values())
        return sum(self._outputs[p] * fractions[p][1] for p in self._outputs) / total

    def predict(self, widths: Mapping[str, int]) -> float:
        """Predicted seconds of the whole network at ``widths``: the layers' times plus the
        rest (:meth:`calibrate`) scaled by the share of activations kept."""
        layers = sum(self.layer_seconds(widths).values())
        return layers + self.rest_seconds * self.activation_fraction(widths)

    def calibrate(self, full_seconds: float) -> None:
        """Set the time outside the layers from a measurement of the whole network at full
        width (at least zero)."""
        full_seconds = check_real("full_seconds", full_seconds, lower=0.0)
        self.rest_seconds = max(0.0, full_seconds - sum(self.layer_seconds({}).values()))

    def to_frame(self) -> pd.DataFrame:
        """One row per measured entry: layer, input and output fraction, seconds."""
        rows = []
        for use in self.uses:
            f_in, f_out = self._sides(use)
            for i, a in enumerate(f_in):
                for j, b in enumerate(f_out):
                    rows.append({"layer": use.path, "fraction_in": a, "fraction_out": b,
                                 "seconds": float(self.seconds[use.path][i, j])})
        return pd.DataFrame(rows)


def allocate_widths(
    fit: GroupFit,
    table: LatencyTable,
    seconds: float,
    *,
    steps: int = 32,
    multiple_of: int = 1,
) -> dict[str, int]:
    """Widths whose predicted time is at most ``seconds``, chosen greedily on error per second.

    Start from every channel; repeatedly remove, from the group where it costs the least
    estimated error (:meth:`~pruning_utils.surgery.GroupFit.residuals`) per predicted second
    saved, a step of ``⌈m / steps⌉`` channels, until ``table.predict(widths) <= seconds`` or
    no step saves time. With ``multiple_of`` every pruned width is a multiple of it (the step
    ends on the next multiple below; a group of at most ``multiple_of`` channels stays whole):
    CPU convolution kernels work on blocks of channels (16 floats on AVX-512), and a width
    just above a block boundary costs nearly a whole extra block. Returns ``{group name: k}``
    for every prunable group.
    """
    seconds = check_real("seconds", seconds, lower=0.0, include_lower=False)
    steps = check_int("steps", steps)
    multiple_of = check_int("multiple_of", multiple_of)
    widths = {name: fit.group_width(name) for name in fit.prunable}
    tails = {name: fit.residuals(name).numpy() for name in fit.prunable}
    now = table.predict(widths)
    while now > seconds:
        best, best_ratio, best_time = None, math.inf, now
        for name, k in widths.items():
            step = max(1, math.ceil(fit.group_width(name) / steps))
            smaller = (k - step) // multiple_of * multiple_of
            if smaller < 1:
                continue
            trial = {**widths, name: smaller}
            saved = now - table.predict(trial)
            if saved <= 0:
                continue
            ratio = (tails[name][smaller] - tails[name][k]) / saved
            if ratio < best_ratio:
                best, best_ratio, best_time = trial, ratio, now - saved
        if best is None:
            break
        widths, now = best, best_time
    return widths


@dataclass
class BudgetResult:
    """What :func:`latency_budget` reached.

    Attributes
    ----------
    model:
        The pruned network (with ``pruning_report``).
    target:
        The speedup asked for, over ``reference``.
    speedup, speedup_q1, speedup_q3:
        The measured speedup of the last round (median of the paired ratios and their
        quartiles).
    widths:
        ``{group name: channels kept}``.
    estimated_error:
        Sum over groups of the relative interpolative residuals at ``widths``.
    rounds:
        One row per round: predicted and measured speedup, the corrected target.
    """

    model: nn.Module
    target: float
    speedup: float
    speedup_q1: float
    speedup_q3: float
    widths: dict[str, int]
    estimated_error: float
    rounds: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def within(self) -> float:
        """Relative miss ``speedup / target − 1``."""
        return self.speedup / self.target - 1


def _closer(reached: float, best: float, target: float, at_least: bool) -> bool:
    """Whether a round that measured ``reached`` is a better answer than one that measured
    ``best``: nearer the target, or with ``at_least`` at or above it and the slower of two."""
    if not at_least:
        return abs(reached / target - 1) < abs(best / target - 1)
    if (reached >= target) != (best >= target):
        return reached >= target
    return reached < best if reached >= target else reached > best


def latency_budget(
    fit: GroupFit,
    speedup: float,
    *,
    reference: nn.Module,
    example_input: torch.Tensor,
    table: LatencyTable | None = None,
    tolerance: float = 0.05,
    at_least: bool = False,
    multiple_of: int = 1,
    rounds: int = 3,
    timing_rounds: int = 5,
    min_run_time: float | None = None,
    num_threads: int | None = None,
) -> BudgetResult:
    """Prune the network of ``fit`` to run ``speedup`` times faster than ``reference``.

    See the module for the four steps. The speedup is measured, not predicted: the pruned
    network and ``reference`` are timed on ``example_input`` in one interleaved call.

    Parameters
    ----------
    fit:
        The :class:`~pruning_utils.surgery.GroupFit` of the network (``criterion=
        "interpolative"`` or ``"l1"``).
    speedup:
        Target ``t_reference / t_pruned`` (> 1).
    reference:
        The network the speedup is measured against (usually the dense network as trained,
        BatchNorm unfolded).
    example_input:
        The batch the network is timed on (its first dimension is the batch size).
    table:
        A :class:`LatencyTable` at that batch size (built, or read from its cache, if
        ``None``); its :meth:`~LatencyTable.calibrate` is called with the full-width network's
        measured time.
    tolerance:
        Accept the measured speedup within this relative distance of the target.
    at_least:
        Accept only a measured speedup of at least the target, up to ``(1 + tolerance)``
        times it: the corrections then aim at the middle of that window, and the round
        returned is the slowest one at or above the target (if no round reached it, the
        fastest). Use it when the target is a floor, as in "at least 2× faster".
    multiple_of:
        Every pruned width a multiple of it (:func:`allocate_widths`).
    rounds:
        Most allocations (the first, then corrections).
    timing_rounds, min_run_time, num_threads:
        Of every :func:`~pruning_utils.measure.compare_latency` call.

    Returns
    -------
    BudgetResult
        The pruned network, the measured speedup and the history of the rounds.
    """
    if not isinstance(fit, GroupFit):
        raise TypeError(f"fit must be a GroupFit, got {type(fit).__name__}")
    speedup = check_real("speedup", speedup, lower=1.0, include_lower=False)
    check_model(reference, "reference")
    tolerance = check_real("tolerance", tolerance, lower=0.0, include_lower=False)
    rounds = check_int("rounds", rounds)
    multiple_of = check_int("multiple_of", multiple_of)
    if not isinstance(at_least, bool):
        raise TypeError(f"at_least must be True or False, got {at_least!r}")
    batch = int(example_input.shape[0])
    if table is None:
        table = LatencyTable(fit, batch, num_threads=num_threads)
    elif table.batch_size != batch:
        raise ValueError(
            f"table was measured at batch size {table.batch_size}, example_input has {batch}")
    timing = dict(rounds=timing_rounds, min_run_time=min_run_time, num_threads=num_threads)
    full = fit.reference()
    base = compare_latency({"reference": reference, "full": full}, example_input, **timing)
    table.calibrate(float(base.loc["full", "median_s"]))
    folding = float(base.loc["full", "speedup"])  # the folded network over the reference
    full_seconds = table.predict({})
    # the window of accepted speedups, and the speedup the corrections aim at
    low, high = (speedup, speedup * (1 + tolerance)) if at_least else (
        speedup * (1 - tolerance), speedup * (1 + tolerance))
    goal = (low + high) / 2 if at_least else speedup
    aim = goal
    below, above = 0.0, math.inf
    history, best = [], None
    for r in range(rounds):
        widths = allocate_widths(fit, table, full_seconds * folding / aim,
                                 multiple_of=multiple_of)
        model = fit.prune(widths=widths)
        measured = compare_latency({"reference": reference, "pruned": model}, example_input,
                                   **timing).loc["pruned"]
        reached = float(measured["speedup"])
        history.append({"round": r + 1, "aimed": aim,
                        "predicted": folding * full_seconds / table.predict(widths),
                        "measured": reached, "q1": float(measured["speedup_q1"]),
                        "q3": float(measured["speedup_q3"])})
        if best is None or _closer(reached, float(best[2]["speedup"]), speedup, at_least):
            best = (model, widths, measured)
        if low <= reached <= high:
            break
        # the aims known to land below and above the window bound the next one
        if reached < low:
            below = max(below, aim)
        else:
            above = min(above, aim)
        aim = aim * goal / reached
        if not below < aim < above and below > 0 and math.isfinite(above):
            aim = math.sqrt(below * above)
    model, widths, measured = best
    error = float(sum(fit.residuals(name)[k] for name, k in widths.items()))
    return BudgetResult(
        model=model, target=speedup, speedup=float(measured["speedup"]),
        speedup_q1=float(measured["speedup_q1"]), speedup_q3=float(measured["speedup_q3"]),
        widths=widths, estimated_error=error, rounds=pd.DataFrame(history),
    )
