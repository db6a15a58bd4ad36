"""Randomized layers: swap layers for sampled-product layers (Drineas, Kannan & Mahoney 2006)."""

from __future__ import annotations

import math

import torch
from torch import nn

from pruning_utils.layers import PROBABILITY_RULES, RandomizedConv2d, RandomizedLinear, _seed_from
from pruning_utils.nnutils import set_module
from pruning_utils.surgery.report import LayerChange, count
from pruning_utils.surgery.transform import run_transform
from pruning_utils.surgery.tree import check_weights, eligible, inherit_state
from pruning_utils.validation import (
    check_bool,
    check_choice,
    check_fraction,
    check_generator,
    check_int,
    check_layer_types,
    check_model,
    is_int,
    is_real,
)

__all__ = ["randomize"]


def _inner_dim(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    kh, kw = layer.kernel_size
    return layer.in_channels * kh * kw


def _samples_for(samples: int | float, inner: int) -> int:
    if isinstance(samples, float):
        return max(1, math.ceil(samples * inner))
    return int(samples)


def randomize(
    model: nn.Module,
    samples: int | float,
    probabilities: str = "weights",
    *,
    generator: torch.Generator | int | None = None,
    layers: tuple[type[nn.Module], ...] = (nn.Linear,),
    inplace: bool = False,
) -> nn.Module:
    """Swap layers for sampled-product layers (Drineas, Kannan & Mahoney 2006).

    Every eligible ``nn.Linear`` becomes a :class:`~pruning_utils.layers.RandomizedLinear`
    and (when ``nn.Conv2d`` is in ``layers``) every ungrouped ``nn.Conv2d`` a
    :class:`~pruning_utils.layers.RandomizedConv2d`; the weights are copied. Each layer gets
    its own seed, drawn from ``generator``, so the whole model is reproducible.

    Parameters
    ----------
    model:
        The model (left untouched unless ``inplace``).
    samples:
        How much to keep: an int ``c >= 1``, that many samples per forward in every
        layer; or a float in ``(0, 1]``, a fraction of each layer's inner dimension (in_features, or
        C_in·k_h·k_w), ``c = max(1, ceil(fraction · inner))``.
    probabilities:
        ``"weights"`` (precomputed, ``p_k ∝ ‖W_{:,k}‖``) or ``"batch"`` (the original
        per-batch rule); see :class:`~pruning_utils.layers.RandomizedLinear`.
    layers:
        Layer types to swap, drawn from ``(nn.Linear, nn.Conv2d)``.
    generator:
        An int seed, a ``torch.Generator``, or ``None`` (seeds from torch's global generator).
    inplace:
        Modify ``model`` itself.

    Returns
    -------
    nn.Module
        The new model, with ``pruning_report`` (samples and seed per layer).
    """
    check_model(model)
    if is_int(samples):
        samples = check_int("samples", samples)
    elif is_real(samples):
        samples = check_fraction("samples", samples)
    else:
        raise TypeError(f"samples must be an int >= 1 or a float in (0, 1], got {samples!r}")
    probabilities = check_choice("probabilities", probabilities, PROBABILITY_RULES)
    kinds = check_layer_types(layers)
    check_bool("inplace", inplace)
    gen = check_generator(generator)
    found = eligible(model, kinds, "randomize")
    if not found:
        kinds_text = " or ".join(f"nn.{k.__name__}" for k in kinds)
        raise ValueError(f"model has nothing to randomize: no {kinds_text} layer found")
    check_weights(found)

    def body(new_model: nn.Module, report) -> None:
        for name, _ in found:
            layer = new_model.get_submodule(name)
            shape, before = tuple(layer.weight.shape), count(layer)
            if isinstance(layer, nn.Conv2d) and layer.groups != 1:
                report.layers.append(
                    LayerChange(
                        name,
                        "kept",
                        shape,
                        shape,
                        before,
                        before,
                        skipped=True,
                        note=f"grouped convolution (groups={layer.groups}) kept dense",
                    )
                )
                continue
            inner = _inner_dim(layer)
            c = _samples_for(samples, inner)
            seed = _seed_from(gen)
            if isinstance(layer, nn.Linear):
                new: nn.Module = RandomizedLinear.from_linear(layer, c, probabilities, seed)
            else:
                new = RandomizedConv2d.from_conv2d(layer, c, probabilities, seed)
            inherit_state(new, layer)
            set_module(new_model, name, new)
            report.layers.append(
                LayerChange(
                    name,
                    "randomized",
                    shape,
                    shape,
                    before,
                    count(new),
                    samples=c,
                    note=f"{c} of {inner} inner indices per forward ({c / inner:.2f}), seed {seed}",
                )
            )

    settings = dict(
        samples=samples, probabilities=probabilities, layers=[k.__name__ for k in kinds]
    )
    return run_transform("randomize", model, settings, body, inplace=inplace, kinds=kinds)
