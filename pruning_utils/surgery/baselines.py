"""Two standard pruning baselines to compare the matrix methods against.

``magnitude_prune``
    Global unstructured magnitude pruning: keep the ``keep`` fraction of weights with the
    largest ``|w|`` over all chosen layers together and zero the others
    (``torch.nn.utils.prune``). The zeros stay in dense tensors, so dense kernels run
    exactly as fast as before: it shrinks the model only for sparse storage or sparse
    kernels.
``l1_structured_prune``
    Structured L1-norm pruning (Li et al. 2017, "Pruning filters for efficient ConvNets"):
    keep the ``keep`` fraction of hidden units / filters whose weight rows have the largest
    L1 norm, and build genuinely smaller layers (the next layer loses the matching inputs,
    a BatchNorm in between the matching channels), so parameters, FLOPs and time all drop.

Like every transform, both say how much they *keep*; the old ``amount=`` (the fraction
removed) still works for one release, with a ``DeprecationWarning``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from pruning_utils.surgery.report import LayerChange, count
from pruning_utils.surgery.transform import per_layer_fractions, renamed, run_transform
from pruning_utils.surgery.tree import (
    CHANNEL_POOLS,
    ELEMENTWISE,
    PASS_THROUGH,
    Leaf,
    check_weights,
    leaves,
    new_conv,
    new_linear,
    sliced_batchnorm,
)
from pruning_utils.validation import check_model, check_real, is_real

__all__ = ["magnitude_prune", "l1_structured_prune"]

# modules that keep the unit/channel dimension as it is (structured pruning passes through)
_CHANNELWISE = (nn.PReLU, *ELEMENTWISE, *PASS_THROUGH, *CHANNEL_POOLS)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _one_minus(value: object) -> object:
    """``amount`` (removed) as ``keep``: ``1 - amount`` for numbers and dict values."""
    if isinstance(value, Mapping):
        return {k: (1.0 - v if is_real(v) else v) for k, v in value.items()}
    return 1.0 - value if is_real(value) else value


def magnitude_prune(
    model: nn.Module,
    keep: float | None = None,
    *,
    layers: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    inplace: bool = False,
    **deprecated,
) -> nn.Module:
    """Global unstructured magnitude pruning.

    Over the weights ``w`` of every layer of the given types, together, the
    ``round((1 − keep) · total)`` entries of smallest ``|w|`` are set to zero
    (``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``, made permanent
    with ``prune.remove``: the result holds plain dense tensors with zeros, no masks or
    hooks). Biases are kept. Dense matrix kernels do the same work on zeros, so this
    does **not** make inference faster; ``count_params(m, nonzero=True)`` shows the saving
    that sparse storage would give.

    Parameters
    ----------
    model:
        The model (left untouched unless ``inplace``).
    keep:
        How much to keep: the fraction of the chosen weights kept, a float in [0, 1]
        (the others are zeroed). ``amount=`` (the fraction zeroed, ``1 − keep``) is its
        deprecated old name.
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
    check_model(model)
    keep = renamed(deprecated, "amount", "keep", keep, _one_minus)
    if keep is None:
        raise TypeError("magnitude_prune() missing keep=, the fraction of weights kept")
    keep = check_real("keep", keep, lower=0.0, upper=1.0)
    if (
        not isinstance(layers, tuple)
        or not layers
        or not all(isinstance(k, type) and issubclass(k, nn.Module) for k in layers)
    ):
        raise TypeError(
            f"layers must be a non-empty tuple of nn.Module subclasses, e.g. "
            f"(nn.Linear, nn.Conv2d), got {layers!r}"
        )
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, layers) and isinstance(getattr(module, "weight", None), nn.Parameter)
    ]
    if not targets:
        kinds = ", ".join(k.__name__ for k in layers)
        raise ValueError(f"model has no layer of the types in layers ({kinds}) with a weight")
    check_weights(targets)

    def body(pruned: nn.Module, report) -> None:
        modules = dict(pruned.named_modules())
        params_before = {name: count(modules[name]) for name, _ in targets}
        with torch.no_grad():
            pairs = [(modules[name], "weight") for name, _ in targets]
            prune.global_unstructured(
                pairs, pruning_method=prune.L1Unstructured, amount=1.0 - keep
            )
            for module, pname in pairs:
                prune.remove(module, pname)
        zeros_total, weights_total = 0, 0
        for name, _ in targets:
            weight = modules[name].weight.detach()
            zeros = int(weight.numel() - torch.count_nonzero(weight))
            zeros_total += zeros
            weights_total += weight.numel()
            report.layers.append(
                LayerChange(
                    name=name,
                    change="magnitude",
                    old_shape=tuple(weight.shape),
                    new_shape=tuple(weight.shape),
                    params_before=params_before[name],
                    params_after=count(modules[name]),
                    note=f"sparsity {zeros / weight.numel():.4f} ({zeros} of {weight.numel()} "
                    f"weights zero, stored dense)",
                )
            )
        report.settings["sparsity"] = zeros_total / weights_total

    settings = {"keep": keep, "layers": [k.__name__ for k in layers]}
    return run_transform("magnitude", model, settings, body, inplace=inplace, kinds=layers)


def _is_weighted(module: nn.Module) -> bool:
    return type(module) in (nn.Linear, nn.Conv2d)


def _keep_count(n: int, keep: float) -> int:
    """Units kept out of ``n`` when keeping ``keep`` of them: the ``round((1 − keep) n)``
    removed are counted like ``torch.nn.utils.prune`` counts them; at least one stays."""
    return max(1, n - int(round((1.0 - keep) * n)))


def _unit_scores(layer: nn.Module) -> torch.Tensor:
    """L1 norm of each output unit's weights: rows of W, or filters ``W[f, :, :, :]``."""
    weight = layer.weight.detach()
    return weight.abs().reshape(weight.shape[0], -1).sum(dim=1)


def _kept_units(layer: nn.Module, keep: float) -> torch.Tensor:
    """Indices (ascending) of the units with the largest L1 norms."""
    scores = _unit_scores(layer)
    k = _keep_count(len(scores), keep)
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
        return new_conv(weight, bias, layer)
    return new_linear(weight, bias, layer)


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


def _prunable_layers(model: nn.Module) -> tuple[list[Leaf], list[int]]:
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"model must be an nn.Sequential (nested Sequentials allowed), got "
            f"{type(model).__name__}"
        )
    chain = leaves(model)
    weighted = [i for i, leaf in enumerate(chain) if _is_weighted(leaf.module)]
    if len(weighted) < 2:
        raise ValueError(
            "model must contain at least two nn.Linear/nn.Conv2d layers "
            "(hidden units of all but the last one are pruned)"
        )
    for a, b in zip(weighted, weighted[1:], strict=False):
        for leaf in chain[a + 1 : b]:
            m = leaf.module
            if not isinstance(m, (*_CHANNELWISE, *_BATCHNORMS, nn.Flatten)):
                raise ValueError(
                    f"cannot prune units through layer {leaf.path!r} of type "
                    f"{type(m).__name__}; between two Linear/Conv2d layers only activations, "
                    f"dropout, pooling, BatchNorm and Flatten are supported"
                )
            units = chain[a].module.weight.shape[0]
            if isinstance(m, _BATCHNORMS) and m.num_features != units:
                raise ValueError(
                    f"BatchNorm {leaf.path!r} has {m.num_features} features but the layer "
                    f"before it, {chain[a].path!r}, has {units} outputs"
                )
        conv = chain[a].module
        if isinstance(conv, nn.Conv2d) and conv.groups != 1:
            raise ValueError(f"layer {chain[a].path!r}: grouped convolutions are not supported")
    return chain, weighted




def l1_structured_prune(
    model: nn.Sequential,
    keep: float | Mapping[str, float] | None = None,
    *,
    inplace: bool = False,
    **deprecated,
) -> nn.Sequential:
    """Keep the hidden units / filters of largest L1 norm, remove the others (Li et al. 2017).

    The model is an ``nn.Sequential`` (nested plain Sequentials are read in order) whose
    ``nn.Linear`` and ``nn.Conv2d`` layers form a chain; between two of them only
    activations, dropout, pooling, BatchNorm and ``nn.Flatten`` may appear. For each of
    these layers except the last (whose outputs are the logits), unit ``i`` is scored by
    ``s_i = Σ_j |W_ij|`` (a filter: ``Σ |W[i, :, :, :]|``); the ``round((1 − keep) · m)``
    lowest-scoring units are removed (at least one is kept). Scores use the original
    weights of each layer (Li et al.'s "independent" strategy). Removing unit ``i`` deletes
    row ``i`` of ``W`` and ``b``, channel ``i`` of a BatchNorm after it, and the inputs of
    the next layer fed by it (for a Conv2d → Flatten → Linear step, the block of
    ``H·W`` features of channel ``i``). Kept units keep their order, so ``keep=1`` gives
    a model that computes exactly the same function.

    Parameters
    ----------
    model:
        The ``nn.Sequential`` to prune (left untouched unless ``inplace``).
    keep:
        How much to keep: the fraction of units kept in every hidden layer, a float in
        ``(0, 1]``; or a dict ``{layer name: fraction kept}`` for some hidden layers (the
        others are kept whole). ``amount=`` (the fraction removed, ``1 − keep``) is its
        deprecated old name.
    inplace:
        Prune ``model`` itself.

    Returns
    -------
    torch.nn.Sequential
        A model with smaller layers, with ``pruning_report`` (``transform="l1_structured"``;
        ``width`` is the number of units kept).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> l1_structured_prune(net, 0.25)[0].out_features
    4
    """
    check_model(model)
    keep = renamed(deprecated, "amount", "keep", keep, _one_minus)
    if keep is None:
        raise TypeError("l1_structured_prune() missing keep=, the fraction of units kept")
    chain, weighted = _prunable_layers(model)
    check_weights([(chain[i].path, chain[i].module) for i in weighted])
    hidden = [chain[i].path for i in weighted[:-1]]
    kept = per_layer_fractions("keep", keep, hidden)
    fractions = {h: 1.0 if k is None else k for h, k in zip(hidden, kept, strict=True)}
    settings_keep: object = (
        {h: k for h, k in zip(hidden, kept, strict=True) if k is not None}
        if isinstance(keep, Mapping) else kept[0]
    )

    def body(pruned: nn.Module, report) -> None:
        chain = leaves(pruned)
        previous: tuple[nn.Module, torch.Tensor] | None = None  # (original producer, kept)
        flattened = False  # an nn.Flatten lies between the producer and the current layer
        with torch.no_grad():
            for position, index in enumerate(weighted):
                leaf = chain[index]
                layer = leaf.module  # still the original layer: scores use original weights
                units = layer.weight.shape[0]
                is_last = position == len(weighted) - 1
                cols = None
                if previous is not None and len(previous[1]) < previous[0].weight.shape[0]:
                    cols = _input_columns(previous[0], layer, previous[1], flattened, leaf.path)
                kept = None if is_last else _kept_units(layer, fractions.get(leaf.path, 1.0))
                rows = kept if kept is not None and len(kept) < units else None
                if rows is not None or cols is not None:
                    new = _sliced(layer, rows, cols)
                    leaf.replace(new)
                    removed = units - new.weight.shape[0]
                    report.layers.append(
                        LayerChange(
                            name=leaf.path,
                            change="l1_structured" if rows is not None else "input_sliced",
                            old_shape=tuple(layer.weight.shape),
                            new_shape=tuple(new.weight.shape),
                            params_before=count(layer),
                            params_after=count(new),
                            width=None if is_last else int(new.weight.shape[0]),
                            note=f"removed {removed} of {units} units"
                            if rows is not None
                            else "inputs sliced",
                        )
                    )
                if is_last:
                    break
                flattened = False
                for between in chain[index + 1 : weighted[position + 1]]:
                    m = between.module
                    if isinstance(m, nn.Flatten):
                        flattened = True
                    elif isinstance(m, _BATCHNORMS) and len(kept) < m.num_features:
                        new_bn = sliced_batchnorm(m, kept)
                        between.replace(new_bn)
                        report.layers.append(
                            LayerChange(
                                name=between.path,
                                change="bn_sliced",
                                old_shape=(m.num_features,),
                                new_shape=(len(kept),),
                                params_before=count(m),
                                params_after=count(new_bn),
                                width=len(kept),
                            )
                        )
                previous = (layer, kept)

    return run_transform(
        "l1_structured", model, {"keep": settings_keep}, body, inplace=inplace,
        kinds=(nn.Linear, nn.Conv2d, *_BATCHNORMS),
    )
