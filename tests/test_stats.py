"""Intervals of accuracy claims, against scipy's Wilson interval and a direct bootstrap."""

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from torch import nn

from pruning_utils.stats import (
    accuracy_interval,
    correct_predictions,
    paired_difference_interval,
)
from pruning_utils.train import evaluate


def _coin(n, p, seed):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) < p


@pytest.mark.parametrize("n, p", [(50, 0.5), (1000, 0.87), (5000, 0.99), (30, 1.0)])
def test_wilson_interval_matches_scipy(n, p):
    correct = _coin(n, p, seed=n)
    ours = accuracy_interval(correct)
    k = int(correct.sum())
    theirs = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert ours.estimate == pytest.approx(k / n)
    assert ours.low == pytest.approx(theirs.low, abs=1e-9)
    assert ours.high == pytest.approx(theirs.high, abs=1e-9)
    assert 0.0 <= ours.low <= ours.estimate <= ours.high <= 1.0


def test_interval_of_several_seeds_averages_them():
    runs = [_coin(2000, 0.8, seed=s) for s in range(3)]
    interval = accuracy_interval(runs)
    assert interval.estimate == pytest.approx(float(torch.stack(runs).float().mean()))
    assert interval.low < interval.estimate < interval.high
    # averaging over seeds cannot widen the interval beyond one run's (same images, p≈0.8)
    single = accuracy_interval(runs[0])
    assert interval.high - interval.low <= 1.1 * (single.high - single.low)


def test_paired_bootstrap_matches_the_normal_approximation():
    a = _coin(4000, 0.86, seed=1)
    flip = _coin(4000, 0.05, seed=2)
    b = a ^ flip  # b differs from a on about 5 % of the images
    interval = paired_difference_interval(a, b, resamples=4000, generator=3)
    diff = (a.double() - b.double()).numpy()
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert interval.estimate == pytest.approx(diff.mean())
    assert interval.low == pytest.approx(diff.mean() - 1.96 * se, abs=0.35 * se)
    assert interval.high == pytest.approx(diff.mean() + 1.96 * se, abs=0.35 * se)
    # pairing: the interval is much narrower than that of two independent accuracies
    independent = 1.96 * np.sqrt(2 * 0.86 * 0.14 / len(diff))
    assert interval.high - interval.estimate < 0.5 * independent


def test_identical_models_have_a_zero_width_difference():
    a = _coin(500, 0.7, seed=4)
    interval = paired_difference_interval(a, a.clone())
    assert interval.estimate == interval.low == interval.high == 0.0


def test_bootstrap_is_reproducible_by_generator():
    a, b = _coin(300, 0.8, seed=5), _coin(300, 0.75, seed=6)
    assert paired_difference_interval(a, b, generator=7) == paired_difference_interval(
        a, b, generator=7)


def test_correct_predictions_agree_with_evaluate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x, y = torch.randn(70, 3, 4), torch.randint(0, 4, (70,))
    correct = correct_predictions(model, (x, y), batch_size=16)
    assert correct.dtype == torch.bool and correct.shape == (70,)
    assert float(correct.float().mean()) == pytest.approx(evaluate(model, (x, y)))
    expected = model(x).argmax(1) == y
    assert torch.equal(correct, expected)


@pytest.mark.parametrize("call, error, message", [
    (lambda: accuracy_interval([True, False]), TypeError, "correct must be a bool tensor"),
    (lambda: accuracy_interval(torch.tensor([0.5, 1.0])), ValueError, "0/1 or bool"),
    (lambda: accuracy_interval(torch.ones(3, dtype=torch.bool), level=1.0), ValueError, "level"),
    (lambda: accuracy_interval(torch.ones(0, dtype=torch.bool)), ValueError, "at least one"),
    (lambda: accuracy_interval([torch.ones(3), torch.ones(4)]), ValueError, "different numbers"),
    (lambda: paired_difference_interval(torch.ones(3), torch.ones(4)), ValueError,
     "same images"),
    (lambda: paired_difference_interval(torch.ones(3), torch.ones(3), resamples=10), ValueError,
     "resamples"),
    (lambda: correct_predictions(nn.Linear(2, 2), (torch.ones(3, 2), torch.ones(2))),
     ValueError, "as many labels"),
    (lambda: correct_predictions(nn.Linear(2, 2), [1, 2, 3]), TypeError, "data must be"),
])
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
