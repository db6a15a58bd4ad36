"""The record a transform leaves on the model it returns: :class:`PruningReport`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from pruning_utils.layers import LowRankConv2d, LowRankLinear, SpatialLowRankConv2d
from pruning_utils.validation import is_int, is_real

__all__ = ["LayerChange", "PruningReport", "count", "layer_shape", "primitive", "tuple_tree"]


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
            "settings": primitive(self.settings),
            "layers": [primitive(asdict(layer)) for layer in self.layers],
            "params_before": int(self.params_before),
            "params_after": int(self.params_after),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PruningReport:
        """Inverse of :meth:`to_dict`."""
        layers = []
        for row in data.get("layers", []):
            row = dict(row)
            row["old_shape"] = tuple_tree(row["old_shape"])
            row["new_shape"] = tuple_tree(row["new_shape"])
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


def primitive(value: Any) -> Any:
    """Turn tuples into lists, recursively, and reject non-primitive leaves."""
    if isinstance(value, Mapping):
        return {str(k): primitive(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [primitive(v) for v in value]
    # exact types: numpy.float64 is a subclass of float, but torch.load(weights_only=True)
    # cannot read it back, so numpy (and other) scalars become plain Python numbers below
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if is_int(value):
        return int(value)
    if is_real(value):
        return float(value)
    if isinstance(value, type):
        return value.__name__
    return repr(value)


def tuple_tree(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(tuple_tree(v) for v in value)
    return value


def count(module: nn.Module) -> int:
    """Parameters of a module, each counted once (shared ones too)."""
    return sum(p.numel() for p in module.parameters())


def layer_shape(module: nn.Module) -> tuple:
    """Weight shape(s) of a layer for the report."""
    if isinstance(module, LowRankLinear):
        return (tuple(module.first.weight.shape), tuple(module.second.weight.shape))
    if isinstance(module, LowRankConv2d):
        return (tuple(module.first.weight.shape), tuple(module.second.weight.shape))
    if isinstance(module, SpatialLowRankConv2d):
        return (tuple(module.vertical.weight.shape), tuple(module.horizontal.weight.shape))
    weight = getattr(module, "weight", None)
    return tuple(weight.shape) if isinstance(weight, Tensor) else ()

