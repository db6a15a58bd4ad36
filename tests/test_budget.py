"""The latency budget: the per-layer table (cache, interpolation), the greedy allocation and the
budget transform's contract."""

import json

import numpy as np
import pytest
import torch

from pruning_utils.budget import BudgetResult, LatencyTable, allocate_widths, latency_budget
from pruning_utils.models import SmallResNet
from pruning_utils.surgery import GroupFit


@pytest.fixture(scope="module")
def fit():
    torch.manual_seed(0)
    net = SmallResNet(channels=(4, 8, 16)).eval()
    return GroupFit(net, data=torch.randn(32, 1, 28, 28))


@pytest.fixture(scope="module")
def table(fit, tmp_path_factory):
    folder = tmp_path_factory.mktemp("latency")
    return LatencyTable(fit, 8, num_threads=1, min_run_time=0.002, cache=folder,
                        fractions=(0.5, 1.0))


def test_table_entries_cache_and_interpolation(fit, table):
    frame = table.to_frame()
    # the stem reads the image (one channel, no group): timed at input fraction 1 only
    stem = frame[frame["layer"] == "stem.conv"]
    assert stem["fraction_in"].tolist() == [1.0, 1.0]
    assert stem["fraction_out"].tolist() == [0.5, 1.0]
    fc = frame[frame["layer"] == "fc"]  # writes the logits: output fraction 1 only
    assert fc["fraction_out"].tolist() == [1.0, 1.0]
    assert len(frame) == 2 + 8 * 4 + 2  # 8 convolutions read and write groups
    assert (frame["seconds"] > 0).all()
    again = LatencyTable(fit, 8, num_threads=1, min_run_time=0.002, cache=table.path.parent,
                         fractions=(0.5, 1.0))
    assert again.cached and all(np.array_equal(again.seconds[k], v)
                                for k, v in table.seconds.items())
    # interpolation: halfway between the grid points of one layer
    widths = {name: fit.group_width(name) for name in fit.prunable}
    three_quarters = {**widths, "layer3.0.conv1": 12}  # 12 of 16: output fraction 0.75
    grid = table.seconds["layer3.0.conv1"]  # rows: input fraction, columns: output fraction
    assert table.layer_seconds(three_quarters)["layer3.0.conv1"] == pytest.approx(
        (grid[1, 0] + grid[1, 1]) / 2)
    table.calibrate(2 * sum(table.layer_seconds({}).values()))
    assert table.predict({}) == pytest.approx(2 * sum(table.layer_seconds({}).values()))
    half = fit.widths_for(keep=0.5)
    assert table.activation_fraction(half) == pytest.approx(0.5, abs=0.01)


def test_a_damaged_cache_entry_is_measured_again(fit, tmp_path):
    first = LatencyTable(fit, 4, num_threads=1, min_run_time=0.001, cache=tmp_path,
                         fractions=(1.0,))
    (path,) = tmp_path.glob("layers_b4_*.json")
    path.write_text("{not json")
    second = LatencyTable(fit, 4, num_threads=1, min_run_time=0.001, cache=tmp_path,
                          fractions=(1.0,))
    assert not second.cached and json.loads(path.read_text())["key"] == first.key


def test_measured_entries_never_fall_with_more_channels(table):
    for grid in table.seconds.values():
        assert (np.diff(grid, axis=0) >= 0).all() and (np.diff(grid, axis=1) >= 0).all()


def test_allocation_meets_the_prediction_and_prefers_cheap_error(fit, table):
    measured = table.seconds
    # a synthetic cost: every layer's time is the product of its channel fractions
    table.seconds = {path: np.outer(*[np.asarray(side) for side in table._sides(use)])
                     for path, use in ((u.path, u) for u in table.uses)}
    table.calibrate(sum(table.layer_seconds({}).values()))
    full = table.predict({})
    assert allocate_widths(fit, table, 2 * full) == {n: fit.group_width(n) for n in fit.prunable}
    widths = allocate_widths(fit, table, 0.7 * full)
    assert table.predict(widths) <= 0.7 * full
    assert all(1 <= k <= fit.group_width(n) for n, k in widths.items())
    # one uniform fraction that also meets the prediction has a larger estimated error
    uniform = fit.widths_for(keep=0.7)
    assert table.predict(uniform) <= 0.7 * full
    def error(w):
        return sum(float(fit.residuals(n)[k]) for n, k in w.items())
    assert error(widths) < error(uniform)
    # widths in multiples of 4: a group of 4 channels stays whole, every other pruned width is
    # a multiple, and the prediction is still met (the groups have 4, 8 and 16 channels)
    aligned = allocate_widths(fit, table, 0.7 * full, multiple_of=4)
    assert table.predict(aligned) <= 0.7 * full
    for name, k in aligned.items():
        m = fit.group_width(name)
        assert k == m or (k % 4 == 0 and 4 <= k < m), (name, k, m)
    assert any(k < fit.group_width(n) for n, k in aligned.items())
    # nothing can be cut in blocks wider than every group
    assert allocate_widths(fit, table, 0.7 * full, multiple_of=64) == {
        n: fit.group_width(n) for n in fit.prunable}
    with pytest.raises(ValueError, match="multiple_of"):
        allocate_widths(fit, table, 0.7 * full, multiple_of=0)
    table.seconds = measured


def test_latency_budget_contract(fit, table):
    net = fit._model
    x = torch.randn(8, 1, 28, 28)
    result = latency_budget(fit, 1.2, reference=net, example_input=x, table=table, rounds=2,
                            timing_rounds=2, min_run_time=0.02, num_threads=1)
    assert isinstance(result, BudgetResult) and 1 <= len(result.rounds) <= 2
    for name, k in result.widths.items():
        assert k <= fit.group_width(name)
    assert result.model.pruning_report.settings["widths"] == {
        n: k for n, k in result.widths.items() if k < fit.group_width(n)}
    assert result.estimated_error >= 0
    with pytest.raises(ValueError, match="speedup"):
        latency_budget(fit, 1.0, reference=net, example_input=x, table=table)
    with pytest.raises(ValueError, match="batch size"):
        latency_budget(fit, 2.0, reference=net, example_input=x[:4], table=table)
    with pytest.raises(TypeError, match="GroupFit"):
        latency_budget(net, 2.0, reference=net, example_input=x)
    with pytest.raises(ValueError, match="fractions must include 1.0"):
        LatencyTable(fit, 8, fractions=(0.5,), cache=False)



def test_at_least_keeps_a_floor_and_aims_inside_the_window(fit, table, monkeypatch):
    """With ``at_least`` a round below the target is never returned while one at or above it
    exists, and the corrections aim at the middle of [target, target·(1 + tolerance)]: checked
    with a timing stub that measures every pruned network 15 % below the table's predicted
    speedup, so that the first round, aimed inside the window, lands below it."""
    import pandas as pd

    import pruning_utils.budget as budget

    net = fit._model
    x = torch.randn(8, 1, 28, 28)
    full = 1.5 * sum(table.layer_seconds({}).values())  # the rest: half the layers' time

    def stub(models, example_input, **timing):
        speedups = {name: 1.0 if name in ("reference", "full") else
                    0.85 * table.predict({}) / table.predict(
                        model.pruning_report.settings["widths"])
                    for name, model in models.items()}
        return pd.DataFrame({"median_s": [full / s for s in speedups.values()],
                             "speedup": list(speedups.values()),
                             "speedup_q1": list(speedups.values()),
                             "speedup_q3": list(speedups.values())}, index=list(speedups))

    monkeypatch.setattr(budget, "compare_latency", stub)
    saved = table.rest_seconds
    try:
        plain = latency_budget(fit, 1.1, reference=net, example_input=x, table=table,
                               rounds=1, tolerance=0.1)
        floor = latency_budget(fit, 1.1, reference=net, example_input=x, table=table,
                               rounds=6, tolerance=0.1, at_least=True)
    finally:
        table.rest_seconds = saved
    assert plain.rounds["aimed"].iloc[0] == pytest.approx(1.1)
    assert floor.rounds["aimed"].iloc[0] == pytest.approx(1.1 * 1.05)
    measured = floor.rounds["measured"].tolist()
    assert measured[0] < 1.1 and any(m >= 1.1 for m in measured), floor.rounds
    # the slowest round at or above the target is the one returned; it ends the search only
    # inside the window
    assert floor.speedup == min(m for m in measured if m >= 1.1)
    assert all(not 1.1 <= m <= 1.21 for m in measured[:-1])
    with pytest.raises(TypeError, match="at_least"):
        latency_budget(fit, 1.1, reference=net, example_input=x, table=table, at_least=1)


def test_which_round_is_returned():
    """The rule that picks a budget's answer among its rounds (target 2): nearest the target by
    default; with ``at_least``, any round at or above the target over any round below it, the
    slower of two above, the faster of two below."""
    from pruning_utils.budget import _closer

    assert _closer(1.95, 2.2, 2.0, at_least=False)  # 2.5 % away beats 10 %
    assert not _closer(2.3, 1.95, 2.0, at_least=False)
    assert not _closer(1.95, 2.2, 2.0, at_least=True)  # below never beats at or above
    assert _closer(2.2, 1.99, 2.0, at_least=True)
    assert _closer(2.05, 2.2, 2.0, at_least=True) and not _closer(2.2, 2.05, 2.0, at_least=True)
    assert _closer(1.9, 1.5, 2.0, at_least=True) and not _closer(1.5, 1.9, 2.0, at_least=True)
    assert _closer(2.0, 2.1, 2.0, at_least=True)  # exactly the target counts as reached
