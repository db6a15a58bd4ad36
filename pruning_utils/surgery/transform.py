"""The one skeleton every model transform runs through, and the per-layer-type table.

A transform (``low_rank``, ``pca_prune``, ``randomize``, the baselines) validates its own
arguments, then hands :func:`run_transform` a *body* that rebuilds layers of a working
model. The skeleton does the rest, the same way for all of them:

1. refuses a model it cannot transform faithfully (a layer used at two places, a model on
   the meta device);
2. counts the parameters, copies the model unless ``inplace=True`` (the caller's model is
   never changed otherwise);
3. runs the body, which appends one :class:`~pruning_utils.surgery.report.LayerChange` per
   layer to the report;
4. gives every module the body created the train/eval mode of the module it replaced;
5. attaches the :class:`~pruning_utils.surgery.report.PruningReport` as
   ``model.pruning_report`` and returns the model.

:data:`LAYER_KINDS` says, per layer type and convolution scheme, which matrix a layer is,
its break-even rank and how to rebuild it from factors ``A @ B``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from pruning_utils.layers import (
    LowRankConv2d,
    LowRankLinear,
    SpatialLowRankConv2d,
    spatial_weight_matrix,
)
from pruning_utils.linalg import (
    break_even_rank,
    conv_break_even_rank,
    conv_weight_matrix,
    spatial_break_even_rank,
)
from pruning_utils.nnutils import model_device
from pruning_utils.surgery.report import PruningReport, count
from pruning_utils.surgery.tree import check_not_shared
from pruning_utils.validation import check_bool, check_fraction, check_model

__all__ = [
    "LayerKind", "LAYER_KINDS", "SCHEMES", "layer_kind", "run_transform", "renamed",
    "per_layer_fractions", "select_layers",
]

#: Low-rank schemes for convolutions understood by :func:`~pruning_utils.surgery.low_rank`.
SCHEMES: tuple[str, ...] = ("channel", "spatial")


@dataclass(frozen=True)
class LayerKind:
    """How the matrix methods see one type of layer.

    Attributes
    ----------
    matrix:
        The matrix a factorization approximates (Linear: ``W``; conv, channel scheme:
        ``C_out × C_in·k_h·k_w``; conv, spatial scheme: ``C_in·k_h × C_out·k_w``).
    break_even:
        ``r*``: below it the factorization has fewer parameters and multiply-adds.
    from_factors:
        ``f(layer, A, B) -> module`` computing ``A @ B`` in place of the layer.
    change:
        The report's name for the change.
    """

    matrix: Callable[[nn.Module], Tensor]
    break_even: Callable[[nn.Module], float]
    from_factors: Callable[[nn.Module, Tensor, Tensor], nn.Module]
    change: str


def _linear_from_factors(layer: nn.Linear, A: Tensor, B: Tensor) -> nn.Module:
    bias = None if layer.bias is None else layer.bias.detach()
    return LowRankLinear.from_factors(A, B, bias)


def _conv_break_even(conv: nn.Conv2d) -> float:
    return conv_break_even_rank(conv.in_channels, conv.out_channels, conv.kernel_size)


def _spatial_break_even(conv: nn.Conv2d) -> float:
    return spatial_break_even_rank(conv.in_channels, conv.out_channels, conv.kernel_size)


_LINEAR = LayerKind(
    matrix=lambda layer: layer.weight.detach(),
    break_even=lambda layer: break_even_rank(*layer.weight.shape),
    from_factors=_linear_from_factors,
    change="low_rank",
)

#: ``{(layer type, scheme): LayerKind}``; a Linear layer is the same in both schemes.
LAYER_KINDS: dict[tuple[type[nn.Module], str], LayerKind] = {
    (nn.Linear, "channel"): _LINEAR,
    (nn.Linear, "spatial"): _LINEAR,
    (nn.Conv2d, "channel"): LayerKind(
        matrix=lambda conv: conv_weight_matrix(conv.weight.detach()),
        break_even=_conv_break_even,
        from_factors=LowRankConv2d._from_factors,
        change="low_rank",
    ),
    (nn.Conv2d, "spatial"): LayerKind(
        matrix=lambda conv: spatial_weight_matrix(conv.weight.detach()),
        break_even=_spatial_break_even,
        from_factors=SpatialLowRankConv2d._from_factors,
        change="spatial_low_rank",
    ),
}


def layer_kind(layer: nn.Module, scheme: str = "channel") -> LayerKind:
    """The :class:`LayerKind` of a Linear or Conv2d layer (by type, subclasses included)."""
    for (kind, kind_scheme), handler in LAYER_KINDS.items():
        if kind_scheme == scheme and isinstance(layer, kind):
            return handler
    raise TypeError(
        f"no low-rank handler for {type(layer).__name__} with scheme {scheme!r}; "
        f"known: {sorted({(k.__name__, s) for k, s in LAYER_KINDS})}"
    )


def renamed(
    kwargs: dict, old: str, new: str, value: object, convert: Callable = lambda v: v
) -> object:
    """Support a renamed keyword for one release: warn and return the converted old value.

    ``kwargs`` are the extra keywords a function received; ``value`` is what it got for
    ``new``. Any keyword other than ``old`` is an error, as for a normal function.
    """
    unknown = [k for k in kwargs if k != old]
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}")
    if old not in kwargs:
        return value
    if value is not None:
        raise TypeError(f"give {new}= only ({old}= is its deprecated old name), not both")
    warnings.warn(
        f"{old}= is deprecated and will be removed in the next release; use {new}= "
        "(see the docstring: it says how much is kept)",
        DeprecationWarning,
        stacklevel=3,
    )
    return convert(kwargs[old])


def run_transform(
    name: str,
    model: nn.Module,
    settings: Mapping,
    body: Callable[[nn.Module, PruningReport], None],
    *,
    inplace: bool,
    kinds: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
) -> nn.Module:
    """Run ``body(working_model, report)`` inside the transform skeleton (see the module)."""
    check_model(model)
    check_bool("inplace", inplace)
    if model_device(model).type == "meta":
        raise ValueError(
            "model is on the meta device and holds no weights; materialize it "
            "(model.to_empty(device=...) and load its state dict) before transforming it"
        )
    check_not_shared(model, kinds, name)
    params_before = count(model)
    work = model if inplace else copy.deepcopy(model)
    modes = {path: module.training for path, module in work.named_modules()}
    existing = {id(module) for module in work.modules()}
    report = PruningReport(name, settings=dict(settings))
    body(work, report)
    for path, module in work.named_modules():
        if id(module) in existing:
            continue
        ancestor = path
        while ancestor not in modes:  # nearest path that existed before: the replaced layer
            ancestor = ancestor.rpartition(".")[0]
        module.training = modes[ancestor]
    report.params_before, report.params_after = params_before, count(work)
    work.pruning_report = report
    return work


def per_layer_fractions(name: str, value: object, layers: list[str]) -> list[float | None]:
    """One fraction in ``(0, 1]`` per layer of ``layers`` from a transform's "how much" value.

    ``value`` is one fraction for every layer, a list with one per layer, or a dict
    ``{layer path: fraction}`` (layers it does not name get ``None``: leave them alone).
    """
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in layers]
        if unknown:
            raise ValueError(
                f"{name} names layers {unknown} that are not prunable hidden layers; "
                f"allowed: {layers}"
            )
        return [
            None if value.get(h) is None else check_fraction(f"{name}[{h!r}]", value[h])
            for h in layers
        ]
    if isinstance(value, (list, tuple)):
        if len(value) != len(layers):
            raise ValueError(
                f"{name} as a list needs one value per hidden layer ({len(layers)}: {layers}), "
                f"got {len(value)}"
            )
        return [check_fraction(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [check_fraction(name, value)] * len(layers)


def select_layers(
    found: list[tuple[str, nn.Module]], names: object, kinds: tuple[type, ...], argument: str
) -> list[tuple[str, nn.Module]]:
    """The layers of ``found`` that ``names`` (an iterable of paths) selects, all checked."""
    known = dict(found)
    wanted = list(names)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(
            f"{argument} names layers that are not eligible "
            f"{tuple(k.__name__ for k in kinds)} modules of the model: {unknown}; "
            f"eligible: {list(known)[:20]}"
        )
    return [(n, m) for n, m in found if n in wanted]
