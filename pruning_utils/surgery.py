"""Model surgery: a trained model in, a smaller (or randomized) model out.

=====================  ===============================================================
``low_rank``           factorize every Linear / Conv2d by truncated SVD (Eckart–Young)
``pca_prune``          shrink hidden widths: the original Algorithm 2 (``"weights"``),
                       PCA of activations (Levin et al. 1993) or an interpolative
                       decomposition of activations (Chee et al. 2022)
``randomize``          swap layers for sampled-product layers (Drineas et al. 2006)
``fold_batchnorm``     merge eval-mode BatchNorm into the preceding Linear / Conv2d
``save_pruned``        save a recipe of the new structure plus the state dict
``load_pruned``        rebuild the structure (optionally on top of a base model) and load
=====================  ===============================================================

Every transform works on a deep copy unless ``inplace=True``, leaves its input untouched,
and attaches a :class:`PruningReport` to the returned model as ``model.pruning_report``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pruning_utils.layers import (
    LowRankConv2d,
    LowRankLinear,
    RandomizedConv2d,
    RandomizedLinear,
    SpatialLowRankConv2d,
    _check_rule,
    _seed_from,
    spatial_weight_matrix,
)
from pruning_utils.linalg import (
    _check_count,
    _check_finite,
    _check_fraction,
    _check_rank,
    _is_int,
    _is_real,
    _one_of_rank_energy,
    break_even_rank,
    conv_break_even_rank,
    conv_weight_matrix,
    interpolative_decomposition,
    low_rank_factors,
    pca,
    rank_for_energy,
    truncated_svd,
    whitened_low_rank_factors,
)

__all__ = [
    "LayerChange",
    "PruningReport",
    "low_rank",
    "pca_prune",
    "randomize",
    "fold_batchnorm",
    "save_pruned",
    "load_pruned",
    "SCHEMES",
    "PCA_METHODS",
]

#: Low-rank schemes for convolutions understood by :func:`low_rank`.
SCHEMES: tuple[str, ...] = ("channel", "spatial")
#: Width-pruning methods understood by :func:`pca_prune`.
PCA_METHODS: tuple[str, ...] = ("weights", "activations", "interpolative")

_OUR_LAYERS = (
    LowRankLinear,
    LowRankConv2d,
    SpatialLowRankConv2d,
    RandomizedLinear,
    RandomizedConv2d,
)
_FORMAT = "pruning_utils.pruned_model"
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------


@dataclass
class LayerChange:
    """What a transform did to one layer.

    Attributes
    ----------
    name:
        Module path in the model (``"features.3"``).
    change:
        Kind of change: ``"low_rank"``, ``"spatial_low_rank"``, ``"kept"``,
        ``"pca_weights"``, ``"pca_activations"``, ``"interpolative"``, ``"bottleneck"``,
        ``"input_folded"``, ``"randomized"``, ``"bn_folded"``.
    old_shape, new_shape:
        Weight shapes before and after (a factorized layer lists both factors).
    params_before, params_after:
        Parameters of the layer before and after.
    rank:
        Rank of a factorization (``None`` when not applicable).
    width:
        Hidden width kept by width pruning (``None`` when not applicable).
    samples:
        Samples per forward of a randomized layer (``None`` when not applicable).
    break_even:
        ``r*``, the rank below which the factorization saves parameters.
    skipped:
        True when the layer was eligible but kept dense.
    note:
        Free text: why it was skipped, whether the rank was clipped, etc.
    """

    name: str
    change: str
    old_shape: tuple
    new_shape: tuple
    params_before: int
    params_after: int
    rank: int | None = None
    width: int | None = None
    samples: int | None = None
    break_even: float | None = None
    skipped: bool = False
    note: str = ""


@dataclass
class PruningReport:
    """Per-layer record of a transform, with totals for the whole model.

    Stored as ``model.pruning_report`` (a plain attribute: it is not part of
    ``state_dict()`` and survives ``copy.deepcopy`` and ``torch.save(model)``).

    Attributes
    ----------
    transform:
        Name of the transform (``"low_rank"``, ...).
    settings:
        Its arguments, as primitives.
    layers:
        One :class:`LayerChange` per layer looked at.
    params_before, params_after:
        Parameters of the whole model before and after.
    """

    transform: str
    settings: dict = field(default_factory=dict)
    layers: list[LayerChange] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    @property
    def ratio(self) -> float:
        """``params_after / params_before`` (below 1 means smaller)."""
        return self.params_after / self.params_before if self.params_before else float("nan")

    def to_frame(self):
        """The layers as a ``pandas.DataFrame``, one row per layer."""
        import pandas as pd

        columns = [f.name for f in LayerChange.__dataclass_fields__.values()]
        frame = pd.DataFrame([asdict(layer) for layer in self.layers], columns=columns)
        for column in ("rank", "width", "samples"):  # integers with gaps
            frame[column] = frame[column].astype("Int64")
        frame["break_even"] = frame["break_even"].astype("Float64")
        return frame

    def to_dict(self) -> dict:
        """Primitives only (loadable with ``torch.load(..., weights_only=True)``)."""
        return {
            "transform": self.transform,
            "settings": _primitive(self.settings),
            "layers": [_primitive(asdict(layer)) for layer in self.layers],
            "params_before": int(self.params_before),
            "params_after": int(self.params_after),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PruningReport:
        """Inverse of :meth:`to_dict`."""
        layers = []
        for row in data.get("layers", []):
            row = dict(row)
            row["old_shape"] = _tuple_tree(row["old_shape"])
            row["new_shape"] = _tuple_tree(row["new_shape"])
            layers.append(LayerChange(**row))
        return cls(
            transform=data["transform"],
            settings=dict(data.get("settings", {})),
            layers=layers,
            params_before=int(data.get("params_before", 0)),
            params_after=int(data.get("params_after", 0)),
        )

    def summary(self) -> str:
        """One line: transform, parameters before → after, ratio."""
        changed = sum(1 for layer in self.layers if not layer.skipped)
        return (
            f"{self.transform}: {changed} of {len(self.layers)} layers changed, parameters "
            f"{self.params_before:,} -> {self.params_after:,} ({self.ratio:.3f}x)"
        )

    def __repr__(self) -> str:
        return f"PruningReport({self.summary()})"

    def __str__(self) -> str:
        return f"{self.summary()}\n{self.to_frame().to_string(index=False)}"

    def _repr_html_(self) -> str:
        return f"<p><b>{self.summary()}</b></p>{self.to_frame().to_html(index=False)}"


def _primitive(value: Any) -> Any:
    """Turn tuples into lists, recursively, and reject non-primitive leaves."""
    if isinstance(value, Mapping):
        return {str(k): _primitive(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_primitive(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if _is_int(value):
        return int(value)
    if _is_real(value):
        return float(value)
    if isinstance(value, type):
        return value.__name__
    return repr(value)


def _tuple_tree(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_tuple_tree(v) for v in value)
    return value


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _shape(module: nn.Module) -> tuple:
    """Weight shape(s) of a layer for the report."""
    if isinstance(module, LowRankLinear):
        return (tuple(module.first.weight.shape), tuple(module.second.weight.shape))
    if isinstance(module, LowRankConv2d):
        return (tuple(module.first.weight.shape), tuple(module.second.weight.shape))
    if isinstance(module, SpatialLowRankConv2d):
        return (tuple(module.vertical.weight.shape), tuple(module.horizontal.weight.shape))
    weight = getattr(module, "weight", None)
    return tuple(weight.shape) if isinstance(weight, Tensor) else ()


# ---------------------------------------------------------------------------
# shared helpers: arguments, module tree, calibration data
# ---------------------------------------------------------------------------


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return model


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _check_layer_types(layers: object) -> tuple[type, ...]:
    allowed = (nn.Linear, nn.Conv2d)
    if isinstance(layers, type):
        layers = (layers,)
    if not isinstance(layers, (tuple, list)) or not layers:
        raise TypeError(
            f"layers must be a non-empty tuple drawn from (nn.Linear, nn.Conv2d), got {layers!r}"
        )
    for kind in layers:
        if kind not in allowed:
            raise ValueError(
                "layers must contain only nn.Linear and nn.Conv2d, "
                f"got {getattr(kind, '__name__', kind)!r}"
            )
    return tuple(layers)


def _working_copy(model: nn.Module, inplace: bool) -> nn.Module:
    _check_bool("inplace", inplace)
    return model if inplace else copy.deepcopy(model)


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at path ``name`` through its parent's ``setattr``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _eligible(model: nn.Module, kinds: tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of layers of ``kinds``, outside our own layers and attention blocks.

    Layers inside a :class:`LowRankLinear` (etc.) are already the result of a transform;
    the projections of ``nn.MultiheadAttention`` are used through their weights, not their
    ``forward``, so replacing them would break the attention.
    """
    blocked: list[str] = []
    found = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in blocked):
            continue
        if isinstance(module, (*_OUR_LAYERS, nn.MultiheadAttention)):
            blocked.append(name)
            continue
        if name and isinstance(module, kinds):
            found.append((name, module))
    return found


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _check_data_type(data: object) -> None:
    if data is None or isinstance(data, Tensor):
        return
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a tensor of inputs or an iterable of batches (a DataLoader), "
            f"got {type(data).__name__}"
        )


def _batches(data: Tensor | Iterable, device: torch.device) -> Iterable[Tensor]:
    """Input tensors from a tensor or from every batch of a loader (``(x, y)`` -> ``x``)."""
    if isinstance(data, Tensor):
        yield data.to(device)
        return
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise TypeError(
                f"data batches must be tensors or (inputs, targets) pairs, got {type(x).__name__}"
            )
        yield x.to(device)


def _describe_first_layer(model: nn.Module) -> str:
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            return f"first layer {name!r} (nn.Linear) expects in_features={module.in_features}"
        if isinstance(module, nn.Conv2d):
            return f"first layer {name!r} (nn.Conv2d) expects in_channels={module.in_channels}"
    return "the model"


class _EvalMode:
    """Put every module in eval mode inside ``with``; restore each module's flag after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        for module, flag in self.flags:
            module.training = flag


def _run(model: nn.Module, x: Tensor) -> Tensor:
    """Forward ``x`` (no grad); a shape mismatch becomes a ValueError naming the first layer."""
    try:
        return model(x)
    except RuntimeError as err:
        raise ValueError(
            f"data does not fit the model: {_describe_first_layer(model)}, got inputs of "
            f"shape {tuple(x.shape)} ({err})"
        ) from err


def _capture_covariances(
    model: nn.Module, data: Tensor | Iterable, names: list[str]
) -> dict[str, Tensor]:
    """``C = Xᵀ X`` (float64) of the inputs of each named Linear layer over ``data``.

    Forward pre-hooks on ``model`` (left unchanged: eval mode inside, flags restored).
    """
    covariances: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook_for(name: str, n: int):
        def hook(_module, inputs):
            X = inputs[0].detach().reshape(-1, n).to(torch.float64)
            C = X.mT @ X
            covariances[name] = covariances[name] + C if name in covariances else C
            counts[name] = counts.get(name, 0) + X.shape[0]

        return hook

    handles = []
    try:
        for name in names:
            module = model.get_submodule(name)
            handles.append(module.register_forward_pre_hook(hook_for(name, module.in_features)))
        device = _model_device(model)
        with _EvalMode(model), torch.no_grad():
            for x in _batches(data, device):
                _run(model, x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if name not in covariances]
    if not counts:
        raise ValueError("data must hold at least one batch of inputs, got none")
    if missing:
        raise ValueError(f"data never reached the layers {missing}; they cannot be whitened")
    for name, C in covariances.items():
        _check_finite(f"inputs of layer {name!r}", C)
    return covariances


# ---------------------------------------------------------------------------
# low rank
# ---------------------------------------------------------------------------


def _spatial_break_even(conv: nn.Conv2d) -> float:
    """``r*`` of the spatial split: ``f c k_h k_w / (c k_h + f k_w)``."""
    f, c, kh, kw = conv.weight.shape
    return f * c * kh * kw / (c * kh + f * kw)


def _check_rank_arg(rank: object) -> int | dict[str, int] | None:
    if rank is None:
        return None
    if isinstance(rank, Mapping):
        if not rank:
            raise ValueError("rank as a dict must name at least one layer, got {}")
        for name, value in rank.items():
            if not isinstance(name, str):
                raise TypeError(f"rank dict keys must be module names (str), got {name!r}")
            _check_count(f"rank[{name!r}]", value)
        return {name: int(value) for name, value in rank.items()}
    return _check_count("rank", rank)


def low_rank(
    model: nn.Module,
    rank: int | Mapping[str, int] | None = None,
    energy: float | None = None,
    layers: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    skip_unprofitable: bool = True,
    scheme: str = "channel",
    data: Tensor | Iterable | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Replace every eligible layer by a truncated-SVD factorization (Eckart–Young).

    A Linear layer ``W`` (m×n) becomes :class:`~pruning_utils.layers.LowRankLinear`
    (``W ≈ A @ B``, A m×r, B r×n); a Conv2d becomes
    :class:`~pruning_utils.layers.LowRankConv2d` (``scheme="channel"``: SVD of the kernel
    flattened to C_out × C_in·k_h·k_w) or
    :class:`~pruning_utils.layers.SpatialLowRankConv2d` (``scheme="spatial"``: SVD of the
    (C_in·k_h) × (C_out·k_w) rearrangement). The module tree is walked with
    ``named_modules`` and layers are swapped through their parent, so any architecture
    works (residual additions, concatenations and BatchNorm are left as they are).

    Per layer: a global ``rank`` larger than the layer's full rank ``min(m, n)`` is clipped
    to it (so one global rank only cuts layers wider than ``r``, as in the original work);
    with ``skip_unprofitable`` a layer stays dense when its rank is not below the
    break-even rank ``r* = mn/(m + n)`` (conv, channel: ``d²cf/(d²c + f)``; spatial:
    ``f c k_h k_w / (c k_h + f k_w)``). Grouped convolutions are kept dense. The report
    records the rank used, ``r*``, clipping and skips.

    Parameters
    ----------
    model:
        The trained model (left untouched unless ``inplace``).
    rank:
        One rank ``r >= 1`` for all layers, or a dict ``{module name: rank}`` naming the
        layers to factorize (there a rank above the layer's ``min(m, n)`` is an error).
    energy:
        Fraction in ``(0, 1]`` of each layer's ``Σσ²`` to keep. Exactly one of rank, energy.
    layers:
        Layer types to factorize, drawn from ``(nn.Linear, nn.Conv2d)``.
    skip_unprofitable:
        Keep a layer dense when ``rank >= r*``.
    scheme:
        ``"channel"`` or ``"spatial"`` for convolutions.
    data:
        Calibration inputs (a tensor batch or a DataLoader, every batch used). When given,
        Linear layers are factorized data-aware
        (:func:`~pruning_utils.linalg.whitened_low_rank_factors`, minimising the output
        error on these inputs), with ``energy`` measured on the spectrum of ``W S``.
        The inputs of each layer are captured with hooks on the original model and kept as
        one ``n × n`` float64 matrix ``XᵀX`` per Linear layer (512 MiB for ``n = 8192``).
        Convolutions always use the plain SVD.
    inplace:
        Modify ``model`` itself instead of a copy.

    Returns
    -------
    nn.Module
        The new model, with ``pruning_report``.
    """
    _check_model(model)
    _one_of_rank_energy(rank, energy)
    rank = _check_rank_arg(rank)
    if energy is not None:
        energy = _check_fraction("energy", energy)
    kinds = _check_layer_types(layers)
    _check_bool("skip_unprofitable", skip_unprofitable)
    scheme = _check_choice("scheme", scheme, SCHEMES)
    _check_data_type(data)
    _check_bool("inplace", inplace)

    eligible = _eligible(model, kinds)
    if isinstance(rank, dict):
        names = dict(eligible)
        unknown = [name for name in rank if name not in names]
        if unknown:
            raise ValueError(
                f"rank names layers that are not eligible {tuple(k.__name__ for k in kinds)} "
                f"modules of the model: {unknown}; eligible: {list(names)[:20]}"
            )
        eligible = [(name, module) for name, module in eligible if name in rank]
    if not eligible:
        kinds_text = " or ".join(f"nn.{k.__name__}" for k in kinds)
        raise ValueError(f"model has nothing to factorize: no {kinds_text} layer found")
    for name, module in eligible:
        _check_finite(f"{name}.weight", module.weight.detach())
        if isinstance(rank, dict):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise ValueError(
                    f"rank names {name!r}, a grouped convolution (groups={module.groups}); "
                    "grouped convolutions are not factorized"
                )
            full = min(_factor_matrix_shape(module, scheme))
            _check_rank(f"rank[{name!r}]", rank[name], full)

    covariances: dict[str, Tensor] = {}
    if data is not None:
        linear_names = [name for name, module in eligible if isinstance(module, nn.Linear)]
        if linear_names:
            covariances = _capture_covariances(model, data, linear_names)

    params_before = _count(model)
    new_model = _working_copy(model, inplace)
    report = PruningReport(
        "low_rank",
        settings=dict(
            rank=rank,
            energy=energy,
            layers=[k.__name__ for k in kinds],
            skip_unprofitable=skip_unprofitable,
            scheme=scheme,
            data_aware=data is not None,
        ),
    )
    for name, _ in eligible:
        layer = new_model.get_submodule(name)
        wanted = rank[name] if isinstance(rank, dict) else rank
        change, new = _factorize(
            name, layer, wanted, energy, skip_unprofitable, scheme, covariances
        )
        report.layers.append(change)
        if new is not None:
            _set_module(new_model, name, new)
    report.params_before, report.params_after = params_before, _count(new_model)
    new_model.pruning_report = report
    return new_model


def _factor_matrix_shape(layer: nn.Module, scheme: str) -> tuple[int, int]:
    if isinstance(layer, nn.Linear):
        return tuple(layer.weight.shape)
    f, c, kh, kw = layer.weight.shape
    return (f, c * kh * kw) if scheme == "channel" else (c * kh, f * kw)


def _factorize(
    name: str,
    layer: nn.Module,
    rank: int | None,
    energy: float | None,
    skip_unprofitable: bool,
    scheme: str,
    covariances: dict[str, Tensor],
) -> tuple[LayerChange, nn.Module | None]:
    """Factorize one layer; return its report row and the new module (None: kept)."""
    W = layer.weight.detach()
    before = _count(layer)
    row = LayerChange(name, "kept", tuple(W.shape), tuple(W.shape), before, before)
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        row.skipped, row.note = True, f"grouped convolution (groups={layer.groups}) kept dense"
        return row, None
    if isinstance(layer, nn.Linear):
        M, r_star, kind = W, break_even_rank(*W.shape), "low_rank"
    elif scheme == "channel":
        M = conv_weight_matrix(W)
        r_star = conv_break_even_rank(layer.in_channels, layer.out_channels, layer.kernel_size)
        kind = "low_rank"
    else:
        M, r_star, kind = spatial_weight_matrix(W), _spatial_break_even(layer), "spatial_low_rank"
    row.break_even = r_star
    full = min(M.shape)
    notes = []
    if rank is not None:
        r = min(rank, full)
        if rank > full:
            notes.append(f"rank {rank} clipped to min(m, n) = {full}")
        if skip_unprofitable and r >= r_star:
            row.rank, row.skipped = r, True
            row.note = "; ".join([*notes, f"rank {r} >= r* = {r_star:.1f}: kept dense"])
            return row, None
    if name in covariances:
        A, B = whitened_low_rank_factors(
            M,
            rank=None if rank is None else min(rank, full),
            energy=energy,
            covariance=covariances[name],
        )
        notes.append("data-aware (whitened)")
    else:
        A, B = low_rank_factors(M, rank=None if rank is None else min(rank, full), energy=energy)
    r = A.shape[1]
    row.rank = r
    if rank is None and skip_unprofitable and r >= r_star:
        row.skipped = True
        row.note = "; ".join(
            [*notes, f"rank {r} for energy {energy} >= r* = {r_star:.1f}: kept dense"]
        )
        return row, None
    A, B = A.to(W), B.to(W)
    if isinstance(layer, nn.Linear):
        bias = None if layer.bias is None else layer.bias.detach()
        new: nn.Module = LowRankLinear.from_factors(A, B, bias)
    elif scheme == "channel":
        new = LowRankConv2d._from_factors(layer, A, B)
    else:
        new = SpatialLowRankConv2d._from_factors(layer, A, B)
    new.train(layer.training)
    row.change, row.new_shape, row.params_after = kind, _shape(new), _count(new)
    row.note = "; ".join(notes)
    return row, new


# ---------------------------------------------------------------------------
# BatchNorm folding
# ---------------------------------------------------------------------------


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(layer, nn.Conv2d) and type(bn) is nn.BatchNorm2d) or (
        isinstance(layer, nn.Linear) and type(bn) is nn.BatchNorm1d
    )


def _fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """``bn(layer(x)) = layer'(x)`` in eval mode: scale rows by ``γ/√(var+ε)``, shift the bias."""
    W = layer.weight.detach().to(torch.float64)
    mean = bn.running_mean.detach().to(torch.float64)
    var = bn.running_var.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    b = layer.bias.detach().to(torch.float64) if layer.bias is not None else torch.zeros_like(mean)
    new_w = W * scale.reshape(-1, *([1] * (W.ndim - 1)))
    new_b = (b - mean) * scale + beta
    dtype = layer.weight.dtype
    with torch.no_grad():
        layer.weight.copy_(new_w.to(dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(new_b.to(dtype))
        else:
            layer.bias.copy_(new_b.to(dtype))


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows its layer in an ``nn.Sequential``.

    ``BN(Wx + b) = γ (Wx + b − μ)/√(σ² + ε) + β = (s ⊙ W) x + s ⊙ (b − μ) + β`` with
    ``s = γ/√(σ² + ε)`` (running statistics), so the layer absorbs the BatchNorm and the
    BatchNorm is replaced by ``nn.Identity``. Pairs are ``Conv2d → BatchNorm2d`` and
    ``Linear → BatchNorm1d`` that are consecutive children of an ``nn.Sequential`` (a
    custom module's ``forward`` order is unknown, so e.g. a ResNet block is left alone).
    BatchNorm without running statistics (``track_running_stats=False``) is left alone.
    The outputs are equal in eval mode; in training mode the model no longer normalises
    with batch statistics.

    Parameters
    ----------
    model:
        The model (left untouched unless ``inplace``).
    inplace:
        Modify ``model`` itself.

    Returns
    -------
    nn.Module
        The new model, with ``pruning_report`` (one row per folded pair).
    """
    _check_model(model)
    params_before = _count(model)
    new_model = _working_copy(model, inplace)
    report = PruningReport("fold_batchnorm")
    for seq_name, seq in list(new_model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:], strict=False):
            if not _foldable(a, b):
                continue
            full_b = f"{seq_name}.{name_b}" if seq_name else name_b
            full_a = f"{seq_name}.{name_a}" if seq_name else name_a
            if b.running_mean is None or b.running_var is None:
                report.layers.append(
                    LayerChange(
                        full_b,
                        "kept",
                        (b.num_features,),
                        (b.num_features,),
                        _count(b),
                        _count(b),
                        skipped=True,
                        note="no running statistics: cannot fold",
                    )
                )
                continue
            before = _count(a) + _count(b)
            _check_finite(f"{full_a}.weight", a.weight.detach())
            _fold_into(a, b)
            setattr(seq, name_b, nn.Identity())
            report.layers.append(
                LayerChange(
                    full_a,
                    "bn_folded",
                    tuple(a.weight.shape),
                    tuple(a.weight.shape),
                    before,
                    _count(a),
                    note=f"{full_b} folded into {full_a}",
                )
            )
    report.params_before, report.params_after = params_before, _count(new_model)
    new_model.pruning_report = report
    return new_model


# ---------------------------------------------------------------------------
# width pruning
# ---------------------------------------------------------------------------

_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
)
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_CHANNEL_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class _Leaf:
    container: nn.Module
    key: str
    path: str

    @property
    def module(self) -> nn.Module:
        return self.container._modules[self.key]

    def replace(self, new: nn.Module) -> None:
        setattr(self.container, self.key, new)


def _leaves(seq: nn.Sequential, prefix: str = "") -> list[_Leaf]:
    """Children of a Sequential in execution order, nested Sequentials flattened."""
    out = []
    for key, child in seq.named_children():
        path = f"{prefix}{key}"
        if isinstance(child, nn.Sequential) and type(child).forward is nn.Sequential.forward:
            out += _leaves(child, path + ".")
        else:
            out.append(_Leaf(seq, key, path))
    return out


def _is_elementwise(module: nn.Module) -> bool:
    if isinstance(module, nn.PReLU):
        return module.num_parameters == 1
    return isinstance(module, _ELEMENTWISE)


def _check_between(
    producer: _Leaf, consumer: _Leaf, between: list[_Leaf]
) -> tuple[bool, int | None]:
    """Validate the modules between two weight layers of a chain.

    Returns ``(linear, flatten_at)``: whether the segment is linear (only pass-through
    modules, BatchNorm already folded) and the index in ``between`` of the Flatten that
    separates a convolution from a Linear layer (None for Linear → Linear, Conv → Conv).
    """
    p, c = producer.module, consumer.module
    conv_out = isinstance(p, nn.Conv2d)
    linear = True
    flatten_at = None
    for i, leaf in enumerate(between):
        module = leaf.module
        if isinstance(module, nn.Flatten) and conv_out and flatten_at is None:
            if module.start_dim != 1 or module.end_dim != -1:
                raise ValueError(
                    f"{leaf.path}: only nn.Flatten(start_dim=1, end_dim=-1) is supported"
                )
            flatten_at = i
            continue
        if isinstance(module, _PASS_THROUGH):
            continue
        if _is_elementwise(module):
            linear = False
            continue
        if conv_out and flatten_at is None and isinstance(module, _CHANNEL_POOLS):
            linear = False
            continue
        raise ValueError(
            f"cannot prune the hidden layer between {producer.path!r} and {consumer.path!r}: "
            f"{leaf.path!r} ({type(module).__name__}) is not an elementwise activation, "
            "dropout, channel-wise pooling or a BatchNorm directly after its layer"
        )
    if conv_out and isinstance(c, nn.Linear) and flatten_at is None:
        raise ValueError(
            f"a Conv2d ({producer.path!r}) followed by a Linear ({consumer.path!r}) needs an "
            "nn.Flatten between them"
        )
    if isinstance(p, nn.Linear) and isinstance(c, nn.Conv2d):
        raise ValueError(
            f"a Linear layer ({producer.path!r}) feeding a Conv2d ({consumer.path!r}) "
            "is not supported"
        )
    return linear, flatten_at


def _check_variance(variance: object, hidden: list[str]) -> list[float | None]:
    """One fraction (or None = leave alone) per hidden layer."""
    if isinstance(variance, Mapping):
        unknown = [k for k in variance if k not in hidden]
        if unknown:
            raise ValueError(
                f"variance names layers without a prunable output {unknown}; "
                f"hidden layers: {hidden}"
            )
        return [
            None if variance.get(h) is None else _check_fraction(f"variance[{h!r}]", variance[h])
            for h in hidden
        ]
    if isinstance(variance, (list, tuple)):
        if len(variance) != len(hidden):
            raise ValueError(
                f"variance as a list needs one value per hidden layer ({len(hidden)}: {hidden}), "
                f"got {len(variance)}"
            )
        return [_check_fraction(f"variance[{i}]", v) for i, v in enumerate(variance)]
    return [_check_fraction("variance", variance)] * len(hidden)


def _new_linear(W: Tensor, b: Tensor | None, like: nn.Linear) -> nn.Linear:
    """A Linear holding ``W`` (m×n) and ``b``, on the device/dtype of ``like``."""
    ref = like.weight
    layer = nn.Linear(
        W.shape[1], W.shape[0], bias=b is not None, device=ref.device, dtype=ref.dtype
    )
    with torch.no_grad():
        layer.weight.copy_(W)
        if b is not None:
            layer.bias.copy_(b)
    layer.train(like.training)
    return layer


def _new_conv(W: Tensor, b: Tensor | None, like: nn.Conv2d) -> nn.Conv2d:
    """A Conv2d with kernel ``W`` and the geometry of ``like``."""
    ref = like.weight
    layer = nn.Conv2d(
        W.shape[1],
        W.shape[0],
        like.kernel_size,
        stride=like.stride,
        padding=like.padding,
        dilation=like.dilation,
        bias=b is not None,
        padding_mode=like.padding_mode,
        device=ref.device,
        dtype=ref.dtype,
    )
    with torch.no_grad():
        layer.weight.copy_(W)
        if b is not None:
            layer.bias.copy_(b)
    layer.train(like.training)
    return layer


def _wb(layer: nn.Module) -> tuple[Tensor, Tensor]:
    """Weight and bias (zeros when absent) of a layer, float64."""
    W = layer.weight.detach().to(torch.float64)
    b = (
        layer.bias.detach().to(torch.float64)
        if layer.bias is not None
        else torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)
    )
    return W, b


def _row_layer(producer: nn.Module) -> nn.Linear:
    """The Linear whose rows produce a hidden layer (the second factor of a LowRankLinear)."""
    return producer.second if isinstance(producer, LowRankLinear) else producer


def _with_rows(producer: nn.Module, W: Tensor, b: Tensor) -> nn.Module:
    """``producer`` with new output rows ``W``, ``b`` (a LowRankLinear keeps its first factor)."""
    if isinstance(producer, LowRankLinear):
        producer.second = _new_linear(W, b, producer.second)
        return producer
    if isinstance(producer, nn.Conv2d):
        return _new_conv(W, b, producer)
    return _new_linear(W, b, producer)


def _record(changes: dict, path: str, kind: str, width: int | None, note: str) -> None:
    """Record a change of one layer; a second change of the same layer extends the note."""
    if path in changes:
        _, old_width, old_note = changes[path]
        width = width if width is not None else old_width
        note = f"{old_note}; {note}"
    changes[path] = (kind, width, note)


def _forward(modules: Sequence[nn.Module], x: Tensor) -> Tensor:
    for module in modules:
        x = module(x)
    return x


def pca_prune(
    model: nn.Sequential,
    variance: float | Sequence[float] | Mapping[str, float],
    method: str = "weights",
    data: Tensor | Iterable | None = None,
    inplace: bool = False,
    *,
    max_rows: int = 16384,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """Shrink the hidden widths of a chain of layers.

    The model is an ``nn.Sequential`` (nested Sequentials are read in order). Its Linear
    layers ``W_1 … W_L`` (``W_i`` is m_i × m_{i−1}) form the chain; anything before the
    first one (``nn.Flatten``, a feature extractor) and after the last one is kept, and
    the last layer's output width never changes. Between two layers only elementwise
    activations, dropout and a BatchNorm1d directly after its layer are allowed (the
    BatchNorm is folded first, :func:`fold_batchnorm`). ``variance`` is, for every method,
    the fraction of a spectrum's energy ``Σσ²`` that is kept.

    ``method="weights"`` — the original work's Algorithm 2, from the weights alone.
        For each hidden layer i: centre the columns of ``W_i``
        (``W_c = W_i − 1 μᵀ``, μ the mean row), take the SVD ``W_c = U Σ Vᵀ``, keep the
        ``j`` leading left singular vectors ``P′`` (m_i × j) reaching ``variance`` of
        ``Σσ²``, and set ``W_i ← P′ᵀ W_i P``, ``b_i ← P′ᵀ b_i`` with ``P`` the previous
        layer's ``P′`` (the identity for the first layer; the last layer becomes
        ``W_L P``). The new hidden units are the coordinates ``P′ᵀ h_i``. Where it loses
        information: the pruned chain passes ``P′P′ᵀ h_i`` instead of ``h_i``. The
        centring only chooses ``P′``: every column of ``P′`` is orthogonal to the all-ones
        vector, so the projection drops the mean over units of every hidden output
        (``1 μᵀ x`` and the mean of ``b_i``) — even at ``variance=1.0``, where ``P′P′ᵀ`` is
        the projector onto the range of ``W_c``. It is exact at ``variance=1.0`` when every
        hidden ``W_i`` already has zero column means and ``b_i`` lies in the range of ``W_i``
        (e.g. no bias). It ignores the data, and it is only meaningful for a
        linear chain: with an activation ``σ`` between layers the result computes
        ``σ(P′ᵀ h)`` where the next layer needs ``σ(h)``, and ``σ`` does not commute with
        ``P′ᵀ``.

    ``method="activations"`` — principal components pruning (Levin, Leen & Moody 1993).
        Run ``data`` through the chain; for each hidden layer take the PCA of the
        representation the next layer receives, ``h`` (post-activation when there is an
        activation): ``h ≈ μ + Pᵀ P (h − μ)`` with ``P`` (k × m) the leading components.
        In a linear segment the projection merges into the layer (rows ``P W``, bias
        ``P (b − μ)``) and the mean and back-projection into the next one
        (``W_next Pᵀ``, ``b_next + W_next μ``): the layer really has k units. After an
        activation it cannot pass through the nonlinearity, so the next layer becomes a
        bottleneck ``W_next Pᵀ · P`` (a :class:`~pruning_utils.layers.LowRankLinear` with
        first factor ``P``), or a dense layer ``W_next PᵀP`` when that has fewer
        parameters. Exact on the calibration data at ``variance=1.0`` (k is the numerical
        rank of the centred activations), for linear chains and for nonlinear ones.

    ``method="interpolative"`` — interpolative decomposition (Chee et al. 2022).
        For each hidden layer, ``H`` (N×m) holds the representation the next layer
        receives (post-activation); ``k = rank_for_energy(σ(H), variance)`` and
        ``H ≈ H[:, S] T`` (:func:`~pruning_utils.linalg.interpolative_decomposition`, T
        k×m). The layer keeps only the units ``S`` (rows of ``W`` and ``b``) and the next
        layer absorbs ``T``: ``W_next ← W_next Tᵀ``. The layer keeps its activation and
        really gets narrower, because an elementwise activation commutes with selecting
        units. Exact on the calibration data whenever ``k`` equals the rank of each ``H``
        (so at ``variance=1.0``), for linear and ReLU (any elementwise) networks.

        It also prunes the channels of convolutions in a chain ``Conv2d [BatchNorm2d] act
        [pool] … Flatten Linear …``: BatchNorm is folded first (the decomposition needs
        the post-activation maps), ``H`` is the (N·h·w) × C matrix of the maps the next
        layer receives (at most ``max_rows`` rows, drawn with ``generator``), the kept
        filters are ``S`` and the next convolution's kernel becomes
        ``K_next[:, j] = Σ_i T[j, i] K_next[:, i]`` (the next Linear after Flatten:
        the same per spatial position). Pooling commutes with selecting channels but a
        max-pool does not commute with the combination ``T``: the decomposition is taken
        of the pooled maps, which is what the next layer receives, so it is exact when
        ``k`` equals the rank of the pooled matrix; the rank of the maps before pooling
        says nothing about it.

    Each hidden layer is decomposed on the outputs of the already pruned layers before
    it (greedy, layer by layer).

    Parameters
    ----------
    model:
        An ``nn.Sequential`` (left untouched unless ``inplace``).
    variance:
        Fraction in ``(0, 1]``; or a list with one value per hidden layer; or a dict
        ``{name of the layer producing the hidden output: fraction}`` (layers not named
        are left alone).
    method:
        ``"weights"``, ``"activations"`` or ``"interpolative"``.
    data:
        Calibration inputs for ``"activations"`` and ``"interpolative"``: a tensor or an
        iterable of batches (a DataLoader; ``(x, y)`` batches give ``x``). Every batch is
        used and all activations of one layer are held in memory, so pass a calibration
        subset (a few hundred to a few thousand inputs).
    inplace:
        Modify ``model`` itself.
    max_rows:
        Most rows of a convolution's activation matrix used by the decomposition.
    generator:
        Draws the row subset for convolutions (default: a generator seeded with 0).

    Returns
    -------
    nn.Sequential
        The pruned model, with ``pruning_report``.
    """
    _check_model(model)
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            "model must be an nn.Sequential chain (e.g. Flatten, Linear, ReLU, ..., Linear), "
            f"got {type(model).__name__}; build the chain as an nn.Sequential to prune its widths"
        )
    method = _check_choice("method", method, PCA_METHODS)
    _check_data_type(data)
    if method != "weights" and data is None:
        raise ValueError(
            f"data is required for method={method!r}: calibration inputs (a tensor or a "
            "DataLoader) whose activations are decomposed"
        )
    _check_bool("inplace", inplace)
    max_rows = _check_count("max_rows", max_rows)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )

    kinds = (nn.Linear, nn.Conv2d) if method == "interpolative" else (nn.Linear,)
    leaves = _leaves(model)
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf.module, kinds)]
    if len(positions) < 2:
        what = "nn.Linear / nn.Conv2d" if method == "interpolative" else "nn.Linear"
        raise ValueError(
            f"model has no hidden layer to prune: {what} layers found: {len(positions)} "
            "(a hidden layer sits between two of them)"
        )
    for pos in positions:
        layer = leaves[pos].module
        _check_finite(f"{leaves[pos].path}.weight", layer.weight.detach())
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise ValueError(
                f"{leaves[pos].path} is a grouped convolution (groups={layer.groups}); "
                "its channels cannot be pruned"
            )
    hidden = [leaves[pos].path for pos in positions[:-1]]
    variances = _check_variance(variance, hidden)

    # validate the segments on the original (BatchNorm directly after a layer is foldable)
    for a, b in zip(positions, positions[1:], strict=False):
        between = leaves[a + 1 : b]
        if between and _foldable(leaves[a].module, between[0].module):
            bn = between[0].module
            if bn.running_mean is None:
                raise ValueError(
                    f"{between[0].path}: BatchNorm without running statistics cannot be folded"
                )
            between = between[1:]
        _check_between(leaves[a], leaves[b], between)

    # calibration inputs of the first layer, from the (untouched) modules before it
    X = None if method == "weights" else _calibration_inputs(model, leaves, positions[0], data)

    params_before = _count(model)
    new_model = _working_copy(model, inplace)
    leaves = _leaves(new_model)
    before_rows = {
        leaves[p].path: (_shape(leaves[p].module), _count(leaves[p].module)) for p in positions
    }
    for a, b in zip(positions, positions[1:], strict=False):
        if a + 1 < b and _foldable(leaves[a].module, leaves[a + 1].module):
            _fold_into(leaves[a].module, leaves[a + 1].module)
            leaves[a + 1].replace(nn.Identity())

    report = PruningReport(
        "pca_prune",
        settings=dict(
            variance=variance if not isinstance(variance, Mapping) else dict(variance),
            method=method,
            data_aware=data is not None,
        ),
    )
    changes: dict[str, tuple[str, int | None, str]] = {}
    if method == "weights":
        _prune_weights(leaves, positions, variances, changes)
    else:
        with _EvalMode(new_model), torch.no_grad():
            if method == "activations":
                _prune_activations(leaves, positions, variances, X, changes)
            else:
                gen = generator if generator is not None else torch.Generator().manual_seed(0)
                _prune_interpolative(leaves, positions, variances, X, changes, max_rows, gen)

    for pos in positions:
        leaf = leaves[pos]
        old_shape, old_count = before_rows[leaf.path]
        kind, width, note = changes.get(leaf.path, ("kept", None, ""))
        report.layers.append(
            LayerChange(
                leaf.path,
                kind,
                old_shape,
                _shape(leaf.module),
                old_count,
                _count(leaf.module),
                width=width,
                skipped=kind == "kept",
                note=note,
            )
        )
    report.params_before, report.params_after = params_before, _count(new_model)
    new_model.pruning_report = report
    return new_model


def _calibration_inputs(
    model: nn.Module, leaves: list[_Leaf], first: int, data: Tensor | Iterable
) -> Tensor:
    """All calibration inputs pushed through the modules before the first weight layer."""
    device = _model_device(model)
    prefix = [leaf.module for leaf in leaves[:first]]
    layer = leaves[first].module
    chunks = []
    with _EvalMode(model), torch.no_grad():
        for x in _batches(data, device):
            try:
                z = _forward(prefix, x)
            except RuntimeError as err:
                raise ValueError(
                    f"data does not fit the modules before {leaves[first].path!r}: got inputs "
                    f"of shape {tuple(x.shape)} ({err})"
                ) from err
            if isinstance(layer, nn.Linear) and (z.ndim < 1 or z.shape[-1] != layer.in_features):
                raise ValueError(
                    f"data does not match the first layer {leaves[first].path!r}: it expects "
                    f"{layer.in_features} input features, got {z.shape[-1] if z.ndim else 0} "
                    f"(inputs of shape {tuple(x.shape)})"
                )
            if isinstance(layer, nn.Conv2d) and (z.ndim != 4 or z.shape[1] != layer.in_channels):
                raise ValueError(
                    f"data does not match the first layer {leaves[first].path!r}: it expects "
                    f"(N, {layer.in_channels}, H, W) inputs, got shape {tuple(z.shape)}"
                )
            chunks.append(z)
    if not chunks:
        raise ValueError("data must hold at least one batch of inputs, got none")
    X = torch.cat(chunks)
    _check_finite("data", X)
    if X.shape[0] < 2:
        raise ValueError(f"data must hold at least 2 inputs, got shape {tuple(X.shape)}")
    return X


def _prune_weights(
    leaves: list[_Leaf],
    positions: list[int],
    variances: list[float | None],
    changes: dict,
) -> None:
    """The original Algorithm 2 on the Linear chain."""
    P_prev: Tensor | None = None  # previous layer's P′ (m_{i-1} × j_{i-1})
    for idx, pos in enumerate(positions):
        leaf = leaves[pos]
        layer = leaf.module
        W, b = _wb(layer)
        W_in = W if P_prev is None else W @ P_prev  # right projection: W_i P
        if idx == len(positions) - 1 or variances[idx] is None:
            if P_prev is not None:
                leaf.replace(_new_linear(W_in, None if layer.bias is None else b, layer))
                note = f"inputs projected to {W_in.shape[1]}"
                _record(changes, leaf.path, "input_folded", None, note)
            P_prev = None
            continue
        Wc = W - W.mean(dim=0, keepdim=True)  # centre the columns (mean over output units)
        U, S, _ = truncated_svd(Wc, min(Wc.shape))
        j = rank_for_energy(S, variances[idx])  # 1 when W_c = 0
        P = U[:, :j]  # m_i × j
        leaf.replace(_new_linear(P.T @ W_in, P.T @ b if layer.bias is not None else None, layer))
        _record(changes, leaf.path, "pca_weights", j, f"{W.shape[0]} -> {j} units")
        P_prev = P


def _prune_activations(
    leaves: list[_Leaf],
    positions: list[int],
    variances: list[float | None],
    X: Tensor,
    changes: dict,
) -> None:
    """Levin et al.: PCA of the hidden representation, merged or as a bottleneck."""
    for idx, (a, b) in enumerate(zip(positions, positions[1:], strict=False)):
        producer, consumer = leaves[a], leaves[b]
        between = [leaf.module for leaf in leaves[a + 1 : b]]
        linear = all(isinstance(m, _PASS_THROUGH) for m in between)
        H = _forward(between, producer.module(X))
        if variances[idx] is not None:
            m = H.shape[-1]
            res = pca(H.reshape(-1, m), variance=variances[idx])
            P = res.components.to(torch.float64)  # k × m
            mu = res.mean.to(torch.float64)  # m
            k = P.shape[0]
            Wn, bn = _wb(consumer.module)
            has_bias = consumer.module.bias is not None
            if linear:
                Wr, br = _wb(_row_layer(producer.module))
                producer.replace(_with_rows(producer.module, P @ Wr, P @ (br - mu)))
                consumer.replace(_new_linear(Wn @ P.T, bn + Wn @ mu, consumer.module))
                _record(changes, producer.path, "pca_activations", k, f"{m} -> {k} units (merged)")
                _record(changes, consumer.path, "input_folded", None, f"inputs {m} -> {k}")
            else:
                n_out = Wn.shape[0]
                bias = bn + Wn @ (mu - P.T @ (P @ mu))
                if not has_bias and float(bias.abs().max()) == 0:
                    bias = None
                if k * (m + n_out) < m * n_out:
                    new = LowRankLinear.from_factors(
                        (Wn @ P.T).to(consumer.module.weight),
                        P.to(consumer.module.weight),
                        None if bias is None else bias.to(consumer.module.weight),
                    )
                    new.train(consumer.module.training)
                    note = f"bottleneck {m} -> {k} -> {n_out} after the activation"
                else:
                    new = _new_linear(Wn @ P.T @ P, bias, consumer.module)
                    note = f"projection on {k} components folded (bottleneck would be larger)"
                consumer.replace(new)
                _record(changes, consumer.path, "bottleneck", k, note)
        X = _forward(between, producer.module(X))


def _subsample_rows(H: Tensor, max_rows: int, generator: torch.Generator) -> Tensor:
    if H.shape[0] <= max_rows:
        return H
    idx = torch.randperm(H.shape[0], generator=generator)[:max_rows].to(H.device)
    return H[idx]


def _prune_interpolative(
    leaves: list[_Leaf],
    positions: list[int],
    variances: list[float | None],
    X: Tensor,
    changes: dict,
    max_rows: int,
    generator: torch.Generator,
) -> None:
    """Chee et al.: keep the units an interpolative decomposition selects, fold T forward."""
    for idx, (a, b) in enumerate(zip(positions, positions[1:], strict=False)):
        producer, consumer = leaves[a], leaves[b]
        between_leaves = leaves[a + 1 : b]
        _, flatten_at = _check_between(producer, consumer, between_leaves)
        between = [leaf.module for leaf in between_leaves]
        pre = between if flatten_at is None else between[:flatten_at]
        post = [] if flatten_at is None else between[flatten_at:]
        if variances[idx] is not None:
            H = _forward(pre, producer.module(X))  # (N, m) or (N, C, h, w)
            conv = H.ndim == 4
            m = H.shape[1] if conv else H.shape[-1]
            Hmat = H.permute(0, 2, 3, 1).reshape(-1, m) if conv else H.reshape(-1, m)
            Hmat = _subsample_rows(Hmat, max_rows, generator) if conv else Hmat
            _check_finite(f"activations after {producer.path!r}", Hmat)
            S = torch.linalg.svdvals(Hmat.to(torch.float64))
            k = rank_for_energy(S, variances[idx], rtol=S.numel() * torch.finfo(Hmat.dtype).eps)
            indices, T = interpolative_decomposition(Hmat.to(torch.float64), k)
            T = T.to(torch.float64)
            Wp, bp = _wb(producer.module)
            has_bias = producer.module.bias is not None
            producer.replace(
                _with_rows(
                    producer.module,
                    Wp[indices],
                    bp[indices] if has_bias else None,
                )
            )
            Wn, bn = _wb(consumer.module)
            has_bias_n = consumer.module.bias is not None
            if isinstance(consumer.module, nn.Conv2d):
                Wn_new = torch.einsum("oihw,ji->ojhw", Wn, T)
                consumer.replace(_new_conv(Wn_new, bn if has_bias_n else None, consumer.module))
            elif conv:  # Flatten -> Linear: fold T at every spatial position
                hw = H.shape[2] * H.shape[3]
                if Wn.shape[1] != m * hw:
                    raise ValueError(
                        f"{consumer.path!r} expects {Wn.shape[1]} inputs but the flattened "
                        f"maps have {m}×{H.shape[2]}×{H.shape[3]} = {m * hw}"
                    )
                Wn_new = torch.einsum("oip,ji->ojp", Wn.reshape(Wn.shape[0], m, hw), T)
                consumer.replace(
                    _new_linear(
                        Wn_new.reshape(Wn.shape[0], k * hw),
                        bn if has_bias_n else None,
                        consumer.module,
                    )
                )
            else:
                consumer.replace(_new_linear(Wn @ T.T, bn if has_bias_n else None, consumer.module))
            unit = "channels" if isinstance(producer.module, nn.Conv2d) else "units"
            _record(changes, producer.path, "interpolative", k, f"{m} -> {k} {unit}")
            _record(changes, consumer.path, "input_folded", None, f"inputs {m} -> {k} {unit}")
        X = _forward(post, _forward(pre, producer.module(X)))


# ---------------------------------------------------------------------------
# randomized layers
# ---------------------------------------------------------------------------


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
    layers: tuple[type[nn.Module], ...] = (nn.Linear,),
    generator: torch.Generator | int | None = None,
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
        An int ``c >= 1``: that many samples per forward in every layer; or a float in
        ``(0, 1]``: a fraction of each layer's inner dimension (in_features, or
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
    _check_model(model)
    if _is_int(samples):
        samples = _check_count("samples", samples)
    elif _is_real(samples):
        samples = _check_fraction("samples", samples)
    else:
        raise TypeError(f"samples must be an int >= 1 or a float in (0, 1], got {samples!r}")
    probabilities = _check_rule(probabilities)
    kinds = _check_layer_types(layers)
    _check_bool("inplace", inplace)
    if generator is None:
        gen = None
    elif isinstance(generator, torch.Generator):
        gen = generator
    else:
        gen = torch.Generator().manual_seed(_seed_from(generator))
    eligible = _eligible(model, kinds)
    if not eligible:
        kinds_text = " or ".join(f"nn.{k.__name__}" for k in kinds)
        raise ValueError(f"model has nothing to randomize: no {kinds_text} layer found")
    for name, module in eligible:
        _check_finite(f"{name}.weight", module.weight.detach())

    params_before = _count(model)
    new_model = _working_copy(model, inplace)
    report = PruningReport(
        "randomize",
        settings=dict(
            samples=samples, probabilities=probabilities, layers=[k.__name__ for k in kinds]
        ),
    )
    for name, _ in eligible:
        layer = new_model.get_submodule(name)
        shape, before = tuple(layer.weight.shape), _count(layer)
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
        new.train(layer.training)
        _set_module(new_model, name, new)
        report.layers.append(
            LayerChange(
                name,
                "randomized",
                shape,
                shape,
                before,
                _count(new),
                samples=c,
                note=f"{c} of {inner} inner indices per forward ({c / inner:.2f}), seed {seed}",
            )
        )
    report.params_before, report.params_after = params_before, _count(new_model)
    new_model.pruning_report = report
    return new_model


# ---------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------

# constructor arguments read back from attributes of the same name
_SPEC_ARGS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features"),
    nn.Conv2d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    ),
    nn.BatchNorm1d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.BatchNorm2d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.Identity: (),
    nn.Flatten: ("start_dim", "end_dim"),
    nn.Dropout: ("p", "inplace"),
    nn.Dropout2d: ("p", "inplace"),
    nn.ReLU: ("inplace",),
    nn.ReLU6: ("inplace",),
    nn.LeakyReLU: ("negative_slope", "inplace"),
    nn.ELU: ("alpha", "inplace"),
    nn.GELU: ("approximate",),
    nn.SiLU: ("inplace",),
    nn.Tanh: (),
    nn.Sigmoid: (),
    nn.Softmax: ("dim",),
    nn.LogSoftmax: ("dim",),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
    nn.AvgPool2d: (
        "kernel_size",
        "stride",
        "padding",
        "ceil_mode",
        "count_include_pad",
        "divisor_override",
    ),
    nn.AdaptiveAvgPool2d: ("output_size",),
    nn.AdaptiveMaxPool2d: ("output_size", "return_indices"),
    LowRankLinear: ("in_features", "out_features", "rank"),
    LowRankConv2d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "rank",
        "stride",
        "padding",
        "dilation",
        "padding_mode",
    ),
    SpatialLowRankConv2d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "rank",
        "stride",
        "padding",
        "dilation",
        "padding_mode",
    ),
    RandomizedLinear: ("in_features", "out_features", "samples", "probabilities", "seed"),
    RandomizedConv2d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "samples",
        "probabilities",
        "stride",
        "padding",
        "dilation",
        "padding_mode",
        "seed",
    ),
}
_BY_NAME = {kind.__name__: kind for kind in _SPEC_ARGS}


def _bias_flag(module: nn.Module) -> bool | None:
    if isinstance(module, LowRankLinear | LowRankConv2d):
        return module.second.bias is not None
    if isinstance(module, SpatialLowRankConv2d):
        return module.horizontal.bias is not None
    if isinstance(module, (nn.Linear, nn.Conv2d, RandomizedLinear, RandomizedConv2d)):
        return module.bias is not None
    return None


def _module_spec(module: nn.Module) -> dict | None:
    """Constructor arguments of a known layer as primitives (None for unknown types)."""
    kind = type(module)
    if kind not in _SPEC_ARGS:
        return None
    spec: dict[str, Any] = {"type": kind.__name__}
    for arg in _SPEC_ARGS[kind]:
        spec[arg] = _primitive(getattr(module, arg))
    bias = _bias_flag(module)
    if bias is not None:
        spec["bias"] = bias
    return spec


def _build_module(spec: Mapping) -> nn.Module:
    kind = _BY_NAME.get(spec.get("type"))
    if kind is None:
        raise ValueError(f"the recipe names an unknown module type {spec.get('type')!r}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "type"}
    return kind(**kwargs)


def _tree_spec(module: nn.Module) -> dict | None:
    """Whole-structure description: Sequential containers of known layers (else None)."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        children = []
        for name, child in module.named_children():
            spec = _tree_spec(child)
            if spec is None:
                return None
            children.append([name, spec])
        return {"type": "Sequential", "children": children}
    return _module_spec(module)


def _build_tree(spec: Mapping) -> nn.Module:
    if spec.get("type") == "Sequential":
        seq = nn.Sequential()
        for name, child in spec["children"]:
            seq.add_module(name, _build_tree(child))
        return seq
    return _build_module(spec)


def _described_modules(model: nn.Module) -> dict[str, dict]:
    """``{path: spec}`` for every known layer, not descending into our layers."""
    out: dict[str, dict] = {}
    blocked: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in blocked):
            continue
        spec = _module_spec(module)
        if spec is not None:
            out[name] = spec
            if isinstance(module, _OUR_LAYERS):
                blocked.append(name)
    return out


def _float_dtype(model: nn.Module) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def save_pruned(model: nn.Module, path: str | Path) -> None:
    """Save a pruned model as a recipe plus its state dict.

    The file holds a dict of primitives and tensors (loadable with
    ``torch.load(path, weights_only=True)``)::

        {"format": ..., "version": 1,
         "recipe": {"root": class name, "dtype": "float32", "training": bool,
                    "tree": nested description or None,
                    "modules": {module path: {"type": ..., constructor arguments}}},
         "report": PruningReport.to_dict() or None,
         "state_dict": model.state_dict()}

    ``modules`` describes every standard layer (Linear, Conv2d, BatchNorm, pooling,
    activations, ...) and every layer of :mod:`pruning_utils.layers` by its constructor
    arguments (shapes, ranks, widths, samples, seeds); ``tree`` describes the whole model
    when it is a tree of ``nn.Sequential`` containers of such layers.

    Parameters
    ----------
    model:
        The model to save.
    path:
        File to write.
    """
    _check_model(model)
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or a pathlib.Path, got {type(path).__name__}")
    report = getattr(model, "pruning_report", None)
    blob = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "recipe": {
            "root": type(model).__name__,
            "dtype": str(_float_dtype(model)).removeprefix("torch."),
            "training": bool(model.training),
            "tree": _tree_spec(model),
            "modules": _described_modules(model),
        },
        "report": report.to_dict() if isinstance(report, PruningReport) else None,
        "state_dict": {
            k: v.detach().cpu() if isinstance(v, Tensor) else v
            for k, v in model.state_dict().items()
        },
    }
    torch.save(blob, Path(path))


def load_pruned(path: str | Path, base_model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` and load its tensors.

    Parameters
    ----------
    path:
        File written by :func:`save_pruned` (read with ``weights_only=True``).
    base_model:
        A model of the original architecture (e.g. a fresh dense one). It is copied, every
        module the recipe describes differently (a factorized layer, a narrower Linear,
        an Identity in place of a folded BatchNorm) is replaced, then the state dict is
        loaded. Without it the recipe's ``tree`` is built, which exists only for models
        that are ``nn.Sequential`` trees of standard layers and our layers.

    Returns
    -------
    nn.Module
        The model on the CPU (``base_model``'s device when given), in the saved mode, with
        its ``pruning_report`` when one was saved.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or a pathlib.Path, got {type(path).__name__}")
    if base_model is not None:
        _check_model(base_model)
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, Mapping) or blob.get("format") != _FORMAT:
        raise ValueError(f"{path} was not written by save_pruned (no {_FORMAT!r} format tag)")
    if blob.get("version") != _FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {blob.get('version')}, expected {_FORMAT_VERSION}"
        )
    recipe = blob["recipe"]
    dtype = getattr(torch, recipe["dtype"])
    if base_model is None:
        if recipe["tree"] is None:
            raise ValueError(
                f"{path} holds a {recipe['root']}, which is not a tree of nn.Sequential "
                "containers and standard layers; pass base_model= a freshly built "
                f"{recipe['root']} of the same architecture to rebuild it"
            )
        model = _build_tree(recipe["tree"]).to(dtype)
    else:
        model = copy.deepcopy(base_model)
        device = _model_device(model)
        for name, spec in recipe["modules"].items():
            try:
                current = model.get_submodule(name)
            except AttributeError as err:
                raise ValueError(
                    f"base_model has no module {name!r} that the recipe describes; is it "
                    f"a {recipe['root']} of the same architecture?"
                ) from err
            if _module_spec(current) != spec:
                _set_module(model, name, _build_module(spec).to(device=device, dtype=dtype))
    model.load_state_dict(blob["state_dict"], strict=True)
    model.train(bool(recipe["training"]))
    if blob.get("report") is not None:
        model.pruning_report = PruningReport.from_dict(blob["report"])
    return model
