"""Uncertainty of accuracy claims: per-image correctness, intervals, paired differences.

An accuracy measured on ``n`` test images is a proportion with a standard error of about
``sqrt(p (1 - p) / n)``: 0.47 points at ``p = 0.87`` and ``n = 5,000``, as large as the
book's one-point tolerance. So every accuracy the book reports carries an interval, and
every "pruned − dense" difference a *paired* interval (both models scored on the same
images, which removes the part of the noise the two share).

:func:`correct_predictions` scores a model image by image; :func:`accuracy_interval` gives the
Wilson score interval of one accuracy; :func:`paired_difference_interval` resamples the
images (a paired bootstrap) for the difference of two models, or of two groups of models
averaged over seeds.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pruning_utils.nnutils import eval_mode, model_device, seeded, to_model
from pruning_utils.validation import check_fraction, check_generator, check_int, check_model

__all__ = [
    "Interval",
    "correct_predictions",
    "accuracy_interval",
    "paired_difference_interval",
]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a ``level`` confidence interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    level: float

    def as_points(self) -> tuple[float, float, float]:
        """``(estimate, low, high)`` in percentage points (× 100)."""
        return 100 * self.estimate, 100 * self.low, 100 * self.high

    def __str__(self) -> str:
        e, lo, hi = self.as_points()
        return f"{e:.2f} [{lo:.2f}, {hi:.2f}]"


def correct_predictions(
    model: nn.Module, data, *, batch_size: int = 1024, seed: int | None = None
) -> torch.Tensor:
    """A bool tensor ``(N,)``: whether ``model`` classifies each image of ``data`` right.

    ``data`` is a Dataset of ``(x, y)`` pairs or a tuple ``(X, y)``, read in order (so two
    models scored on the same data line up image by image). The model runs in eval mode
    under ``torch.inference_mode()``; batches go to its device. ``seed`` seeds torch's
    generators around the pass (for models that sample, e.g. randomized layers).
    ``correct_predictions(...).float().mean()`` equals
    :func:`~pruning_utils.train.evaluate`.
    """
    model = check_model(model)
    batch_size = check_int("batch_size", batch_size, lower=1)
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError("data as a tuple must be (inputs, labels)")
        inputs, labels = data
    elif hasattr(data, "tensors"):
        inputs, labels = data.tensors[:2]
    elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        inputs = torch.stack([torch.as_tensor(x) for x, _ in items])
        labels = torch.as_tensor([int(y) for _, y in items])
    else:
        raise TypeError(f"data must be a Dataset or a tuple (X, y), got {type(data).__name__}")
    if len(inputs) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"data must hold as many labels as inputs, and at least one; got {len(inputs)} "
            f"inputs and {len(labels)} labels"
        )
    device = model_device(model)
    out = []
    with contextlib.ExitStack() as stack:
        if seed is not None:
            stack.enter_context(seeded(seed, device))
        stack.enter_context(eval_mode(model))
        stack.enter_context(torch.inference_mode())
        for start in range(0, len(labels), batch_size):
            logits = model(to_model(inputs[start:start + batch_size], model))
            out.append(logits.argmax(dim=1).cpu() == labels[start:start + batch_size].cpu())
    return torch.cat(out)


def _as_correct(name: str, value) -> torch.Tensor:
    """``value`` as a float matrix ``(groups, N)`` of 0/1 (one row per seed)."""
    if isinstance(value, torch.Tensor):
        rows = [value]
    elif isinstance(value, Sequence) and value and all(isinstance(v, torch.Tensor) for v in value):
        rows = list(value)
    else:
        raise TypeError(
            f"{name} must be a bool tensor (N,) from correct_predictions, or a list of them "
            f"(one per seed), got {type(value).__name__}"
        )
    for row in rows:
        if row.dim() != 1 or row.numel() == 0:
            raise ValueError(f"{name} must hold 1-D tensors of at least one image")
        if row.dtype != torch.bool and not bool(((row == 0) | (row == 1)).all()):
            raise ValueError(f"{name} must hold 0/1 or bool values (right or wrong per image)")
    if len({row.numel() for row in rows}) != 1:
        raise ValueError(f"the tensors of {name} score different numbers of images")
    return torch.stack([row.to(torch.float64) for row in rows])


def accuracy_interval(correct, level: float = 0.95) -> Interval:
    """The accuracy of ``correct`` (bool per image) with its Wilson score interval.

    For ``k`` right out of ``n`` and ``z`` the normal quantile of ``level``, the interval is
    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = k/n``: unlike the
    plain ``p ± z·se`` it stays inside [0, 1] and is accurate for small ``n``. A list of
    tensors (one per seed) gives the mean accuracy over seeds and the interval of the mean
    of ``n`` images' seed-averaged scores (normal approximation).
    """
    level = check_fraction("level", level, include_upper=False)
    scores = _as_correct("correct", correct)
    n = scores.shape[1]
    z = _normal_quantile(0.5 + level / 2)
    if scores.shape[0] == 1:
        p = float(scores.mean())
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        low, high = max(0.0, centre - half), min(1.0, centre + half)
        # at k = 0 or k = n one end is the estimate itself; keep rounding from moving it
        return Interval(p, 0.0 if p == 0.0 else low, 1.0 if p == 1.0 else high, level)
    per_image = scores.mean(dim=0)
    p = float(per_image.mean())
    half = z * float(per_image.std(unbiased=True)) / math.sqrt(n)
    return Interval(p, max(0.0, p - half), min(1.0, p + half), level)


def paired_difference_interval(
    correct_a,
    correct_b,
    level: float = 0.95,
    *,
    resamples: int = 2000,
    generator: torch.Generator | int | None = 0,
) -> Interval:
    """Accuracy of ``a`` minus accuracy of ``b`` on the same images, with a paired bootstrap.

    ``correct_a`` and ``correct_b`` come from :func:`correct_predictions` on the same data
    (or are lists of them, one per seed: then each side is averaged over its seeds). The
    images are resampled with replacement ``resamples`` times, the *same* indices for both
    sides, and the interval is the percentile interval of the resampled differences. A
    positive estimate means ``a`` is more accurate.
    """
    level = check_fraction("level", level, include_upper=False)
    resamples = check_int("resamples", resamples, lower=100)
    a = _as_correct("correct_a", correct_a).mean(dim=0)
    b = _as_correct("correct_b", correct_b).mean(dim=0)
    if a.numel() != b.numel():
        raise ValueError(
            f"correct_a scores {a.numel()} images and correct_b {b.numel()}: a paired "
            "comparison needs the same images"
        )
    gen = check_generator(generator)
    diff = a - b
    n = diff.numel()
    boot = torch.empty(resamples, dtype=torch.float64)
    for start in range(0, resamples, 250):
        count = min(250, resamples - start)
        idx = torch.randint(n, (count, n), generator=gen)
        boot[start:start + count] = diff[idx].mean(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(boot, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return Interval(float(diff.mean()), float(low), float(high), level)


def _normal_quantile(q: float) -> float:
    """The standard normal quantile (inverse CDF) at ``q`` in (0, 1)."""
    p = torch.tensor(2 * q - 1, dtype=torch.float64)
    return math.sqrt(2.0) * torch.special.erfinv(p).item()
