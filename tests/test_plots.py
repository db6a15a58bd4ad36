"""Figures: they run on small frames and draw the expected artists."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from pruning_utils.methods import METHODS
from pruning_utils.plots import (  # noqa: E402
    DENSE_COLOR,
    PALETTE,
    axis_label,
    method_color,
    plot_pareto,
    plot_spectrum,
    plot_sweep,
    set_style,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def frame():
    rows = [
        dict(
            method="dense",
            parameter="rank",
            value=np.nan,
            seed=np.nan,
            fine_tuned=False,
            accuracy=0.9,
            params=1000,
            speedup_b1=1.0,
            latency_median_b1=0.002,
        )
    ]
    for r, acc in [(2, 0.5), (4, 0.7), (8, 0.85)]:
        rows.append(
            dict(
                method="low_rank_rank",
                parameter="rank",
                value=r,
                seed=np.nan,
                fine_tuned=False,
                accuracy=acc,
                params=100 * r,
                speedup_b1=8 / r,
                latency_median_b1=0.002 * r / 8,
            )
        )
        for seed, noise in [(0, -0.02), (1, 0.02)]:
            rows.append(
                dict(
                    method="randomized",
                    parameter="rank",
                    value=r,
                    seed=seed,
                    fine_tuned=False,
                    accuracy=acc - 0.1 + noise,
                    params=1000,
                    speedup_b1=0.5,
                    latency_median_b1=0.004,
                )
            )
    return pd.DataFrame(rows)


def test_set_style_and_palette():
    set_style()
    colours = [m.color for m in METHODS.values()]
    assert len(set(colours)) == len(colours) and DENSE_COLOR not in colours  # one per method
    for m in METHODS.values():  # a method's name, label and old labels share its colour
        assert {PALETTE[k] for k in (m.name, m.label, *m.aliases)} == {m.color}
    assert method_color("dense") == DENSE_COLOR
    assert method_color("my-method") == method_color("my-method")
    assert method_color("my-method") not in (DENSE_COLOR,)
    with pytest.raises(ValueError, match="context"):
        set_style("huge")
    with pytest.raises(ValueError, match="font_scale"):
        set_style(font_scale=0)
    with pytest.raises(TypeError, match="method"):
        method_color(3)


def test_axis_labels_carry_units():
    assert axis_label("accuracy") == ("test accuracy (%)", 100.0)
    assert axis_label("latency_median_b256") == ("latency, batch 256 (ms)", 1000.0)
    assert axis_label("speedup_b1")[0] == "measured speedup, batch 1 (× dense)"
    assert axis_label("value", "rank")[0] == "rank r"


def test_plot_sweep_draws_means_bands_and_dense(frame):
    ax = plot_sweep(frame, "value", "accuracy")
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["low_rank_rank", "randomized", "dense"]
    random_line = ax.get_lines()[1]
    np.testing.assert_allclose(random_line.get_ydata(), [40.0, 60.0, 75.0])  # seed means, in %
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1  # only the randomized method has several seeds
    dense_line = ax.get_lines()[2]
    assert dense_line.get_ydata()[0] == pytest.approx(90.0)
    assert to_hex(dense_line.get_color()) == DENSE_COLOR
    assert ax.get_xlabel() == "rank r" and ax.get_ylabel() == "test accuracy (%)"


def test_plot_sweep_latency_log_axes(frame):
    fig, ax = plt.subplots()
    out = plot_sweep(frame, y="latency_median_b1", ax=ax, logx=True, logy=True, title="t")
    assert out is ax
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_ylabel() == "latency, batch 1 (ms)"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [0.5, 1.0, 2.0])


def test_plot_pareto_points_and_sizes(frame):
    ax = plot_pareto(frame)
    assert ax.get_xscale() == "log"
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [s.get_label() for s in scatters] == ["low_rank_rank", "randomized", "dense"]
    low = scatters[0]
    np.testing.assert_allclose(low.get_offsets()[:, 0], [4.0, 2.0, 1.0])
    sizes = low.get_sizes()
    assert sizes[0] < sizes[1] < sizes[2]  # marker area grows with parameters
    assert len(scatters[1].get_offsets()) == 3  # seeds averaged: one point per setting
    assert "speedup" in ax.get_xlabel() and ax.get_ylabel() == "test accuracy (%)"


def test_plot_spectrum_energy_markers():
    spectra = {"fc1": torch.tensor([1.0, 3.0, 2.0]), "fc2": np.array([4.0, 0.0])}
    ax = plot_spectrum(spectra, energy=(0.9,), normalize=True)
    assert ax.get_yscale() == "log"
    lines = ax.get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), [1.0, 2 / 3, 1 / 3])
    # 90 % of 9 + 4 + 1 = 14 is reached at rank 2 (13/14 = 0.93), numpy oracle:
    cumulative = np.cumsum(np.array([3.0, 2.0, 1.0]) ** 2) / 14
    rank = int(np.argmax(cumulative >= 0.9)) + 1
    assert lines[1].get_xdata()[0] == rank == 2
    assert ax.get_ylabel() == "σ_i / σ_1"
    assert any("90% energy" == line.get_label() for line in lines)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda f: plot_sweep(f, y="missing"), ValueError, "lacks the columns"),
        (lambda f: plot_sweep([1]), TypeError, "DataFrame"),
        (lambda f: plot_sweep(f, ax="ax"), TypeError, "ax"),
        (lambda f: plot_pareto(f, size="nope"), ValueError, "lacks"),
        (lambda f: plot_spectrum({}), ValueError, "non-empty"),
        (lambda f: plot_spectrum({"a": [1.0, -1.0]}), ValueError, "non-negative"),
        (lambda f: plot_spectrum({"a": [[1.0]]}), ValueError, "1-D"),
        (lambda f: plot_spectrum({"a": [1.0]}, energy=(1.5,)), ValueError, "energy"),
    ],
)
def test_bad_arguments(frame, call, error, match):
    with pytest.raises(error, match=match):
        call(frame)
