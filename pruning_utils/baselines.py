"""Two standard pruning baselines to compare the matrix methods against.

``magnitude_prune``
    Global unstructured magnitude pruning: zero the ``amount`` fraction of weights with the
    smallest ``|w|`` over all chosen layers together (``torch.nn.utils.prune``). The zeros
    stay in dense tensors, so dense kernels run exactly as fast as before: it shrinks the
    model only for sparse storage or sparse kernels.
``l1_structured_prune``
    Structured L1-norm pruning (Li et al. 2017, "Pruning filters for efficient ConvNets"):
    drop the hidden units / filters whose weight rows have the smallest L1 norm, and build
    genuinely smaller layers (the next layer loses the matching inputs, a BatchNorm in
    between the matching channels), so parameters, FLOPs and time all drop.

Both return a new model (unless ``inplace=True``) carrying a
:class:`~pruning_utils.surgery.PruningReport` as ``model.pruning_report``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from pruning_utils.surgery import (
    LayerChange,
    PruningReport,
    _Leaf,
    _leaves,
    _new_conv,
    _new_linear,
)

__all__ = ["magnitude_prune", "l1_structured_prune"]

_ALLOWED_KINDS = (nn.Linear, nn.Conv2d)
# modules that keep the unit/channel dimension as it is (structured pruning passes through)
_CHANNELWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.Softsign, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_inplace(inplace: object) -> bool:
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    return inplace


def _check_fraction(name: str, value: object, *, upper_open: bool) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if not bad:
        value = float(value)
        bad = not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0)
    if bad:
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{name} must be a float in {interval}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- magnitude


def magnitude_prune(
    model: nn.Module,
    amount: float,
    layers: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    inplace: bool = False,
) -> nn.Module:
    """Global unstructured magnitude pruning.

    Over the weights ``w`` of every layer of the given types, together, the
    ``round(amount · total)`` entries of smallest ``|w|`` are set to zero
    (``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``, made permanent
    with ``prune.remove``: the result holds plain dense tensors with zeros, no masks or
    hooks). Biases are kept. Dense matrix kernels do the same work on zeros, so this
    does **not** make inference faster; ``count_params(m, nonzero=True)`` shows the saving
    that sparse storage would give.

    Parameters
    ----------
    model:
        The model (left untouched unless ``inplace``).
    amount:
        Fraction of the chosen weights to zero, a float in [0, 1].
    layers:
        Layer types whose ``weight`` is pruned (a non-empty tuple of nn.Module subclasses
        with a ``weight`` parameter; default Linear and Conv2d).
    inplace:
        Prune ``model`` itself.

    Returns
    -------
    torch.nn.Module
        The pruned model with ``pruning_report`` (``transform="magnitude"``; each layer's
        sparsity in ``note``; ``settings["sparsity"]`` is the achieved overall fraction).
    """
    _check_model(model)
    amount = _check_fraction("amount", amount, upper_open=False)
    if (
        not isinstance(layers, tuple)
        or not layers
        or not all(isinstance(k, type) and issubclass(k, nn.Module) for k in layers)
    ):
        raise TypeError(
            f"layers must be a non-empty tuple of nn.Module subclasses, e.g. "
            f"(nn.Linear, nn.Conv2d), got {layers!r}"
        )
    inplace = _check_inplace(inplace)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, layers) and isinstance(getattr(module, "weight", None), nn.Parameter)
    ]
    if not targets:
        kinds = ", ".join(k.__name__ for k in layers)
        raise ValueError(f"model has no layer of the types in layers ({kinds}) with a weight")

    pruned = model if inplace else copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    params_before = {name: _count(modules[name]) for name, _ in targets}
    with torch.no_grad():
        pairs = [(modules[name], "weight") for name, _ in targets]
        prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=amount)
        for module, pname in pairs:
            prune.remove(module, pname)

    changes = []
    zeros_total, weights_total = 0, 0
    for name, _ in targets:
        weight = modules[name].weight.detach()
        zeros = int(weight.numel() - torch.count_nonzero(weight))
        zeros_total += zeros
        weights_total += weight.numel()
        changes.append(
            LayerChange(
                name=name,
                change="magnitude",
                old_shape=tuple(weight.shape),
                new_shape=tuple(weight.shape),
                params_before=params_before[name],
                params_after=_count(modules[name]),
                note=f"sparsity {zeros / weight.numel():.4f} ({zeros} of {weight.numel()} "
                f"weights zero, stored dense)",
            )
        )
    total = _count(pruned)
    pruned.pruning_report = PruningReport(
        transform="magnitude",
        settings={
            "amount": amount,
            "layers": [k.__name__ for k in layers],
            "sparsity": zeros_total / weights_total,
        },
        layers=changes,
        params_before=total,
        params_after=total,
    )
    return pruned


# ----------------------------------------------------------------------------- L1 structured


def _is_weighted(module: nn.Module) -> bool:
    return type(module) in (nn.Linear, nn.Conv2d)


def _keep_count(n: int, fraction: float) -> int:
    """Units kept out of ``n`` when pruning ``fraction`` of them (``round``, like torch.prune)."""
    return max(1, n - int(round(fraction * n)))


def _unit_scores(layer: nn.Module) -> torch.Tensor:
    """L1 norm of each output unit's weights: rows of W, or filters ``W[f, :, :, :]``."""
    weight = layer.weight.detach()
    return weight.abs().reshape(weight.shape[0], -1).sum(dim=1)


def _kept_units(layer: nn.Module, fraction: float) -> torch.Tensor:
    """Indices (ascending) of the units with the largest L1 norms."""
    scores = _unit_scores(layer)
    k = _keep_count(len(scores), fraction)
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:k].sort().values


def _sliced(layer: nn.Module, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Module:
    """A copy of a Linear or Conv2d keeping output units ``rows`` and input units ``cols``."""
    weight = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    if isinstance(layer, nn.Conv2d):
        return _new_conv(weight, bias, layer)
    return _new_linear(weight, bias, layer)


def _sliced_batchnorm(bn: nn.modules.batchnorm._BatchNorm, keep: torch.Tensor):
    new = type(bn)(
        len(keep),
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        device=keep.device if bn.weight is None else bn.weight.device,
        dtype=None if bn.weight is None else bn.weight.dtype,
    )
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight.detach()[keep])
            new.bias.copy_(bn.bias.detach()[keep])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[keep])
            new.running_var.copy_(bn.running_var[keep])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    new.train(bn.training)
    return new


def _input_columns(
    producer: nn.Module, consumer: nn.Module, keep: torch.Tensor, flattened: bool, path: str
) -> torch.Tensor:
    """Input indices of ``consumer`` that survive when ``producer`` keeps units ``keep``."""
    units = producer.weight.shape[0]
    if isinstance(consumer, nn.Conv2d):
        if not isinstance(producer, nn.Conv2d) or flattened:
            raise ValueError(f"layer {path!r}: a Conv2d can only follow a Conv2d here")
        if consumer.groups != 1:
            raise ValueError(f"layer {path!r}: grouped convolutions are not supported")
        return keep
    # consumer is Linear
    if isinstance(producer, nn.Linear):
        return keep
    if not flattened:
        raise ValueError(f"layer {path!r}: a Linear after a Conv2d needs an nn.Flatten between")
    if consumer.in_features % units:
        raise ValueError(
            f"layer {path!r}: in_features={consumer.in_features} is not a multiple of the "
            f"{units} channels of the convolution before it"
        )
    block = consumer.in_features // units  # spatial positions per channel, channel-major
    offsets = torch.arange(block, device=keep.device)
    return (keep.unsqueeze(1) * block + offsets).reshape(-1)


def _prunable_layers(model: nn.Module) -> tuple[list[_Leaf], list[int]]:
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"model must be an nn.Sequential (nested Sequentials allowed), got "
            f"{type(model).__name__}"
        )
    leaves = _leaves(model)
    weighted = [i for i, leaf in enumerate(leaves) if _is_weighted(leaf.module)]
    if len(weighted) < 2:
        raise ValueError(
            "model must contain at least two nn.Linear/nn.Conv2d layers "
            "(hidden units of all but the last one are pruned)"
        )
    for a, b in zip(weighted, weighted[1:], strict=False):
        for leaf in leaves[a + 1 : b]:
            m = leaf.module
            if not isinstance(m, (*_CHANNELWISE, *_BATCHNORMS, nn.Flatten)):
                raise ValueError(
                    f"cannot prune units through layer {leaf.path!r} of type "
                    f"{type(m).__name__}; between two Linear/Conv2d layers only activations, "
                    f"dropout, pooling, BatchNorm and Flatten are supported"
                )
            units = leaves[a].module.weight.shape[0]
            if isinstance(m, _BATCHNORMS) and m.num_features != units:
                raise ValueError(
                    f"BatchNorm {leaf.path!r} has {m.num_features} features but the layer "
                    f"before it, {leaves[a].path!r}, has {units} outputs"
                )
        conv = leaves[a].module
        if isinstance(conv, nn.Conv2d) and conv.groups != 1:
            raise ValueError(f"layer {leaves[a].path!r}: grouped convolutions are not supported")
    return leaves, weighted


def l1_structured_prune(
    model: nn.Sequential,
    amount: float | Mapping[str, float],
    inplace: bool = False,
) -> nn.Sequential:
    """Remove the hidden units / filters of smallest L1 norm (Li et al. 2017).

    The model is an ``nn.Sequential`` (nested plain Sequentials are read in order) whose
    ``nn.Linear`` and ``nn.Conv2d`` layers form a chain; between two of them only
    activations, dropout, pooling, BatchNorm and ``nn.Flatten`` may appear. For each of
    these layers except the last (whose outputs are the logits), unit ``i`` is scored by
    ``s_i = Σ_j |W_ij|`` (a filter: ``Σ |W[i, :, :, :]|``) and the ``round(amount · m)``
    lowest-scoring units are removed (at least one is kept). Scores use the original
    weights of each layer (Li et al.'s "independent" strategy). Removing unit ``i`` deletes
    row ``i`` of ``W`` and ``b``, channel ``i`` of a BatchNorm after it, and the inputs of
    the next layer fed by it (for a Conv2d → Flatten → Linear step, the block of
    ``H·W`` features of channel ``i``). Kept units keep their order, so ``amount=0`` gives
    a model that computes exactly the same function.

    Parameters
    ----------
    model:
        The ``nn.Sequential`` to prune (left untouched unless ``inplace``).
    amount:
        Fraction of units removed in every hidden layer, a float in [0, 1); or a dict
        ``{layer name: fraction}`` for some hidden layers (the others are kept whole).
    inplace:
        Prune ``model`` itself.

    Returns
    -------
    torch.nn.Sequential
        A model with smaller layers, with ``pruning_report`` (``transform="l1_structured"``;
        ``width`` is the number of units kept).
    """
    _check_model(model)
    inplace = _check_inplace(inplace)
    leaves, weighted = _prunable_layers(model)
    hidden = [leaves[i].path for i in weighted[:-1]]
    if isinstance(amount, Mapping):
        unknown = [k for k in amount if k not in hidden]
        if unknown:
            raise ValueError(
                f"amount names layers {unknown} that are not prunable hidden layers; "
                f"allowed: {hidden}"
            )
        fractions = {
            k: _check_fraction(f"amount[{k!r}]", v, upper_open=True) for k, v in amount.items()
        }
        settings_amount: object = dict(fractions)
    else:
        fraction = _check_fraction("amount", amount, upper_open=True)
        fractions = dict.fromkeys(hidden, fraction)
        settings_amount = fraction

    pruned = model if inplace else copy.deepcopy(model)
    leaves = _leaves(pruned)
    params_before = _count(pruned)
    changes: list[LayerChange] = []
    previous: tuple[nn.Module, torch.Tensor] | None = None  # (original producer, kept units)
    flattened = False  # an nn.Flatten lies between the producer and the current layer
    with torch.no_grad():
        for position, index in enumerate(weighted):
            leaf = leaves[index]
            layer = leaf.module  # still the original layer: scores use original weights
            units = layer.weight.shape[0]
            is_last = position == len(weighted) - 1
            cols = None
            if previous is not None and len(previous[1]) < previous[0].weight.shape[0]:
                cols = _input_columns(previous[0], layer, previous[1], flattened, leaf.path)
            keep = None if is_last else _kept_units(layer, fractions.get(leaf.path, 0.0))
            rows = keep if keep is not None and len(keep) < units else None
            if rows is not None or cols is not None:
                new = _sliced(layer, rows, cols)
                leaf.replace(new)
                removed = units - new.weight.shape[0]
                changes.append(
                    LayerChange(
                        name=leaf.path,
                        change="l1_structured" if rows is not None else "input_sliced",
                        old_shape=tuple(layer.weight.shape),
                        new_shape=tuple(new.weight.shape),
                        params_before=_count(layer),
                        params_after=_count(new),
                        width=None if is_last else int(new.weight.shape[0]),
                        note=f"removed {removed} of {units} units"
                        if rows is not None
                        else "inputs sliced",
                    )
                )
            if is_last:
                break
            flattened = False
            for between in leaves[index + 1 : weighted[position + 1]]:
                m = between.module
                if isinstance(m, nn.Flatten):
                    flattened = True
                elif isinstance(m, _BATCHNORMS) and len(keep) < m.num_features:
                    new_bn = _sliced_batchnorm(m, keep)
                    between.replace(new_bn)
                    changes.append(
                        LayerChange(
                            name=between.path,
                            change="bn_sliced",
                            old_shape=(m.num_features,),
                            new_shape=(len(keep),),
                            params_before=_count(m),
                            params_after=_count(new_bn),
                            width=len(keep),
                        )
                    )
            previous = (layer, keep)
    pruned.pruning_report = PruningReport(
        transform="l1_structured",
        settings={"amount": settings_amount},
        layers=changes,
        params_before=params_before,
        params_after=_count(pruned),
    )
    return pruned
