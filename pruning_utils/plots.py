"""The book's figures: one style, one palette, and the three recurring plots.

* :func:`set_style` sets the seaborn theme used by every chapter.
* :data:`PALETTE` gives each method its own colour; the dense model is always near-black,
  so that it contrasts with every pruned variant (Okabe–Ito colours, readable by
  colour-blind readers).
* :func:`plot_sweep` (a measure against the swept parameter, mean ± std over seeds, dense
  as a reference line), :func:`plot_pareto` (accuracy against measured speedup) and
  :func:`plot_spectrum` (singular-value spectra with energy markers).

Accuracies are stored as fractions and drawn in percent; latencies are stored in seconds
and drawn in milliseconds.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes

from pruning_utils.methods import METHODS, palette

__all__ = [
    "DENSE_COLOR",
    "PRUNED_COLOR",
    "PALETTE",
    "set_style",
    "method_color",
    "axis_label",
    "plot_sweep",
    "plot_pareto",
    "plot_spectrum",
]

DENSE_COLOR = "#222222"
PRUNED_COLOR = "#D55E00"


class _Palette(Mapping):
    """``{method: colour}``: the dense model, then every method of the registry (read live,
    so a method registered later has its colour too)."""

    def _colours(self) -> dict[str, str]:
        return {"dense": DENSE_COLOR, **palette()}

    def __getitem__(self, key: str) -> str:
        return self._colours()[key]

    def __iter__(self):
        return iter(self._colours())

    def __len__(self) -> int:
        return len(self._colours())


# Colour of each method by registry name, label or alias (from
# pruning_utils.methods.METHODS), and of "dense".
PALETTE: Mapping[str, str] = _Palette()
_EXTRA_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")

_PARAMETER_LABELS = {
    "rank": "rank r",
    "energy": "energy kept, Σ_{i≤r} σ_i² / Σ σ_i² (fraction)",
    "variance": "variance kept (fraction)",
    "samples": "samples c per product",
    "keep": "fraction of weights or units kept",
    "amount": "fraction of weights or units removed",
}
_COLUMN_LABELS = {
    "accuracy": ("test accuracy (%)", 100.0),
    "params": ("parameters (count)", 1.0),
    "nonzero_params": ("nonzero parameters (count)", 1.0),
    "flops": ("FLOPs per image", 1.0),
    "prune_seconds": ("pruning time (s)", 1.0),
}


def set_style(context: str = "notebook", font_scale: float = 1.0) -> None:
    """Apply the book's seaborn theme (white grid, the method palette).

    Parameters
    ----------
    context:
        A seaborn context: ``"paper"``, ``"notebook"``, ``"talk"`` or ``"poster"``.
    font_scale:
        Scale of all fonts (a positive number).
    """
    contexts = ("paper", "notebook", "talk", "poster")
    if context not in contexts:
        raise ValueError(f"context must be one of {list(contexts)}, got {context!r}")
    if isinstance(font_scale, bool) or not isinstance(font_scale, (int, float)) or font_scale <= 0:
        raise ValueError(f"font_scale must be a positive number, got {font_scale!r}")
    sns.set_theme(
        context=context,
        style="whitegrid",
        palette=list(dict.fromkeys(m.color for m in METHODS.values())),
        font_scale=font_scale,
        rc={"figure.dpi": 110, "axes.spines.right": False, "axes.spines.top": False},
    )


def method_color(method: str) -> str:
    """The colour of a method: from :data:`PALETTE`, else a fixed colour chosen by name."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    if method in PALETTE:
        return PALETTE[method]
    return _EXTRA_COLORS[zlib.crc32(method.encode()) % len(_EXTRA_COLORS)]


def axis_label(column: str, parameter: str | None = None) -> tuple[str, float]:
    """Axis label (with unit) and scale factor for a column of a sweep frame.

    ``"value"`` is labelled by the swept ``parameter``; ``latency_*_b{B}`` columns are
    drawn in milliseconds and ``accuracy`` in percent.
    """
    if column == "value":
        return _PARAMETER_LABELS.get(parameter or "", parameter or "value"), 1.0
    if column in _COLUMN_LABELS:
        return _COLUMN_LABELS[column]
    match = re.fullmatch(r"latency_(median|iqr)_b(\d+)", column)
    if match:
        what = "latency" if match.group(1) == "median" else "latency IQR"
        return f"{what}, batch {match.group(2)} (ms)", 1000.0
    match = re.fullmatch(r"speedup_b(\d+)", column)
    if match:
        return f"measured speedup, batch {match.group(1)} (× dense)", 1.0
    return column, 1.0


def _new_axes(ax: Axes | None) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    elif not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax


def _check_frame(df: object, columns: Sequence[str]) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks the columns {missing}; it has {list(df.columns)}")
    return df


def _split_dense(df: pd.DataFrame, hue: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    is_dense = df[hue] == "dense" if hue in df.columns else pd.Series(False, index=df.index)
    return df[is_dense], df[~is_dense]


def plot_sweep(
    df: pd.DataFrame,
    x: str = "value",
    y: str = "accuracy",
    *,
    hue: str = "method",
    ax: Axes | None = None,
    dense: bool = True,
    logx: bool = False,
    logy: bool = False,
    title: str | None = None,
) -> Axes:
    """A measure against the swept parameter, one line per method, mean ± std band.

    Rows with the same ``hue`` and ``x`` (the seeds of a randomized method) are averaged;
    the band spans mean ± one standard deviation where there are several. Fine-tuned rows
    (``fine_tuned=True``) are drawn dashed. The dense model's value is a horizontal
    reference line.

    Parameters
    ----------
    df:
        A :func:`~pruning_utils.sweeps.sweep` frame (or any frame with ``x``, ``y``, ``hue``).
    x, y:
        Columns for the axes (``"value"`` is the swept parameter).
    hue:
        Column that separates lines (default ``"method"``; ``"dense"`` rows are the reference).
    ax:
        Axes to draw into; default a new figure.
    dense:
        Draw the dense reference line.
    logx, logy:
        Logarithmic axes.
    title:
        Axes title.

    Returns
    -------
    matplotlib.axes.Axes
    """
    df = _check_frame(df, [x, y, hue])
    ax = _new_axes(ax)
    dense_rows, rows = _split_dense(df, hue)
    parameter = None
    if "parameter" in rows.columns and rows["parameter"].nunique() == 1:
        parameter = str(rows["parameter"].iloc[0])
    x_label, x_scale = axis_label(x, parameter)
    y_label, y_scale = axis_label(y)
    tuned_col = rows["fine_tuned"] if "fine_tuned" in rows.columns else pd.Series(False, rows.index)
    for (group, tuned), part in rows.groupby([rows[hue], tuned_col.astype(bool)], sort=False):
        stats = part.groupby(x)[y].agg(["mean", "std", "count"]).sort_index()
        xs = stats.index.to_numpy(dtype=float) * x_scale
        mean = stats["mean"].to_numpy(dtype=float) * y_scale
        color = method_color(str(group))
        label = f"{group} (fine-tuned)" if tuned else str(group)
        ax.plot(xs, mean, marker="o", color=color, linestyle="--" if tuned else "-", label=label)
        if (stats["count"] > 1).any():
            std = np.nan_to_num(stats["std"].to_numpy(dtype=float)) * y_scale
            ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    if dense and not dense_rows.empty and dense_rows[y].notna().any():
        ax.axhline(
            float(dense_rows[y].mean()) * y_scale, color=DENSE_COLOR, linestyle=":", label="dense"
        )
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    return ax


def plot_pareto(
    df: pd.DataFrame,
    x: str = "speedup_b1",
    y: str = "accuracy",
    *,
    size: str | None = "params",
    hue: str = "method",
    ax: Axes | None = None,
    logx: bool = True,
    title: str | None = None,
) -> Axes:
    """Accuracy against measured speedup for every method and setting.

    Each point is one setting (seeds averaged), coloured by method, with marker area
    proportional to ``size`` (parameters by default). The dense model is a black star at
    its own coordinates; a dotted vertical line marks speedup 1 (no gain). Points up and to
    the right are better.

    Parameters
    ----------
    df:
        A :func:`~pruning_utils.sweeps.sweep` frame, or several concatenated.
    x, y:
        Columns for the axes (default ``speedup_b1`` and ``accuracy``).
    size:
        Column giving marker areas, or ``None`` for equal markers.
    hue:
        Column naming the method.
    ax:
        Axes to draw into; default a new figure.
    logx:
        Logarithmic speedup axis (default True: speedups are ratios).
    title:
        Axes title.

    Returns
    -------
    matplotlib.axes.Axes
    """
    needed = [x, y, hue] + ([size] if size is not None else [])
    df = _check_frame(df, needed)
    ax = _new_axes(ax)
    keys = [hue] + [c for c in ("value", "fine_tuned") if c in df.columns]
    numeric = [c for c in dict.fromkeys([x, y] + ([size] if size else [])) if c not in keys]
    points = df.groupby(keys, dropna=False, sort=False)[numeric].mean().reset_index()
    points = points[points[x].notna() & points[y].notna()]
    dense_rows, rows = _split_dense(points, hue)
    biggest = float(points[size].max()) if size is not None and len(points) else 1.0
    x_label, x_scale = axis_label(x)
    y_label, y_scale = axis_label(y)

    def areas(part: pd.DataFrame) -> np.ndarray | float:
        if size is None or biggest <= 0:
            return 40.0
        return 15.0 + 285.0 * part[size].to_numpy(dtype=float) / biggest

    for group, part in rows.groupby(hue, sort=False):
        ax.scatter(
            part[x].to_numpy(dtype=float) * x_scale,
            part[y].to_numpy(dtype=float) * y_scale,
            s=areas(part),
            color=method_color(str(group)),
            alpha=0.8,
            edgecolors="white",
            linewidths=0.5,
            label=str(group),
        )
    if not dense_rows.empty:
        ax.scatter(
            dense_rows[x].to_numpy(dtype=float) * x_scale,
            dense_rows[y].to_numpy(dtype=float) * y_scale,
            s=areas(dense_rows) if size is not None else 120.0,
            marker="*",
            color=DENSE_COLOR,
            label="dense",
            zorder=3,
        )
    ax.axvline(1.0 * x_scale, color="grey", linestyle=":", linewidth=1)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x_label + (", log scale" if logx else ""))
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(title)
    legend = ax.legend(frameon=False, title=None if size is None else f"marker area ∝ {size}")
    for handle in legend.legend_handles:  # equal legend markers, whatever the point sizes
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([60.0])
    return ax


def _as_numpy(values: object, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"singular_values[{name!r}] must be a non-empty 1-D array")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"singular_values[{name!r}] must be finite and non-negative")
    return np.sort(array)[::-1]


def plot_spectrum(
    singular_values: Mapping[str, torch.Tensor | np.ndarray | Sequence[float]],
    *,
    normalize: bool = False,
    energy: Sequence[float] = (0.9, 0.99),
    ax: Axes | None = None,
    logy: bool = True,
    title: str | None = None,
) -> Axes:
    """Singular-value spectra ``σ_1 ≥ σ_2 ≥ …`` of several layers, log y-axis.

    For each energy level ``e`` a marker sits at the smallest rank ``r`` with
    ``Σ_{i≤r} σ_i² / Σ_i σ_i² ≥ e`` (the rank that keeps that fraction of ``‖W‖_F²``).

    Parameters
    ----------
    singular_values:
        ``{layer name: σ}`` (tensors, arrays or lists; sorted here).
    normalize:
        Divide each spectrum by its largest value, ``σ_i / σ_1``.
    energy:
        Energy levels to mark, each in (0, 1]; ``()`` for none.
    ax:
        Axes to draw into; default a new figure.
    logy:
        Logarithmic y-axis (default True: spectra span decades). Zeros are not drawn.
    title:
        Axes title.

    Returns
    -------
    matplotlib.axes.Axes
    """
    if not isinstance(singular_values, Mapping) or not singular_values:
        raise ValueError("singular_values must be a non-empty dict {name: singular values}")
    levels = tuple(energy)
    for e in levels:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e <= 1:
            raise ValueError(f"energy levels must be in (0, 1], got {energy!r}")
    ax = _new_axes(ax)
    markers = ("v", "s", "D", "^", "P", "X")
    colors = sns.color_palette("colorblind", n_colors=max(len(singular_values), 1))
    for (name, values), color in zip(singular_values.items(), colors, strict=False):
        s = _as_numpy(values, str(name))
        y = s / s[0] if normalize and s[0] > 0 else s
        y_plot = np.where(y > 0, y, np.nan) if logy else y
        ranks = np.arange(1, len(s) + 1)
        ax.plot(ranks, y_plot, color=color, label=str(name))
        total = float(np.sum(s**2))
        if total == 0:
            continue
        cumulative = np.cumsum(s**2) / total
        for level, marker in zip(levels, markers, strict=False):
            r = int(np.searchsorted(cumulative, level - 1e-12) + 1)
            r = min(r, len(s))
            ax.plot(
                [r], [y_plot[r - 1]], marker=marker, color=color, linestyle="none",
                markeredgecolor="black", markersize=7,
            )  # fmt: skip
    for level, marker in zip(levels, markers, strict=False):
        ax.plot(
            [], [], marker=marker, color="white", markeredgecolor="black", linestyle="none",
            label=f"{level:.0%} energy",
        )  # fmt: skip
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("index i (singular values in decreasing order)")
    ax.set_ylabel("σ_i / σ_1" if normalize else "singular value σ_i")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    return ax
