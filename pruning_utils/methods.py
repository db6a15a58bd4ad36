"""The method registry: every pruning method described once.

A :class:`Method` says what a method is called, which value says how much it keeps and in
which direction, whether it needs calibration data, is randomized or may be fine-tuned,
its default grid (from the most compressed setting to the least), its colour in figures,
and how to apply it. Sweeps (:func:`~pruning_utils.sweeps.sweep`), the headline benchmark
(:mod:`pruning_utils.headline`), the figures (:mod:`pruning_utils.plots`) and the chapters
all read :data:`METHODS`; adding a method is one :func:`register_method` call.

A method from outside the library (a criterion of another pruning library, say) is
registered the same way and then runs under the book's protocol::

    def my_prune(model, keep, *, data=None, generator=None):
        ...                                   # return a new, smaller model
    register_method(Method("mine", "my criterion", knob="keep", apply=my_prune,
                           grid=(0.1, 0.3, 0.5)))
    sweep(model, "mine", [0.2, 0.5], test_data=test)

:func:`most_compressed_within` picks, from a sweep's rows, the most compressed setting
whose accuracy stays within a tolerance of the dense model's (the book's selection rule).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from pruning_utils.surgery import (
    GroupFit,
    HeadFit,
    LowRankFit,
    StreamFit,
    UnitFit,
    WidthFit,
    group_prune,
    l1_structured_prune,
    low_rank,
    magnitude_prune,
    pca_prune,
    prune_heads,
    prune_units,
    randomize,
    slice_stream,
)
from pruning_utils.validation import check_real, is_int

__all__ = [
    "Method",
    "METHODS",
    "register_method",
    "get_method",
    "methods_for",
    "most_compressed_within",
    "palette",
]

#: The kinds of network a method may apply to.
NETWORK_KINDS: tuple[str, ...] = ("mlp", "cnn", "transformer")

#: ``apply(model, value, *, data, generator) -> new model``.
Apply = Callable[..., nn.Module]
#: ``fit(model, data, **options) -> prune`` with ``prune(value, generator) -> new model``.
Fit = Callable[..., Callable[[Any, Any], nn.Module]]


@dataclass(frozen=True)
class Method:
    """One pruning method as sweeps, the benchmark, figures and chapters use it.

    Attributes
    ----------
    name:
        Registry key (``"low_rank_energy"``).
    label:
        Name in tables and legends (``"low rank"``).
    knob:
        The value that says how much is kept (``"energy"``, ``"rank"``, ``"variance"``,
        ``"samples"``, ``"keep"``).
    apply:
        ``apply(model, value, *, data=None, generator=None) -> new model``; never modifies
        ``model``.
    keeps:
        What the knob measures, in words (shown in axis labels and tables).
    larger_keeps_more:
        Direction of the knob: True when a larger value keeps more (every built-in method).
    needs_data:
        Whether ``apply`` needs calibration inputs (``data=``).
    randomized:
        Whether the pruned model is random (its accuracy is averaged over seeds).
    fine_tunable:
        Whether fine-tuning may rescue a setting (not magnitude pruning, whose zeros would
        grow back, nor randomized layers, which are estimators).
    grid:
        Default settings, from the most compressed to the least.
    color:
        Colour in figures.
    networks:
        Kinds of network the method applies to: ``"mlp"`` (chains of Linear layers),
        ``"cnn"`` (convolutional networks), ``"transformer"`` (the pre-norm vision
        transformer, ``build_model("vit")``).
    fit:
        Optional ``fit(model, data, **options) -> prune(value, generator)``: the expensive part
        (decompositions, activation capture) done once per model and data, every setting
        then a cheap truncation with results identical to ``apply``. For a greedy method
        (the PCA width methods decompose each layer on the already pruned layers before
        it), a layer's decomposition is shared by the settings that agree on the layers
        before it. Without it, every setting calls ``apply``.
    aliases:
        Other labels that name this method (older result files).
    sparse:
        Whether the method zeroes weights in dense tensors (its size is counted as nonzero
        parameters).
    shrinks_width:
        Whether the pruned model is the same kind of network with fewer hidden units or
        channels (a plain architecture that could also be trained from scratch: the
        benchmark's train-small control takes its widths from such a method).
    chains_only:
        Whether the method walks an ``nn.Sequential`` chain of layers (``pca_prune``,
        ``l1_structured_prune``) and so does not apply to networks whose blocks add or
        concatenate feature maps (a ResNet: use the group methods).
    """

    name: str
    label: str
    knob: str
    apply: Apply
    keeps: str = ""
    larger_keeps_more: bool = True
    needs_data: bool = False
    randomized: bool = False
    fine_tunable: bool = True
    grid: tuple = ()
    color: str = "#777777"
    networks: tuple[str, ...] = ("mlp", "cnn")
    fit: Fit | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    sparse: bool = False
    shrinks_width: bool = False
    chains_only: bool = False

    def __post_init__(self) -> None:
        for attribute in ("name", "label", "knob"):
            value = getattr(self, attribute)
            if not isinstance(value, str) or not value:
                raise TypeError(f"Method.{attribute} must be a non-empty str, got {value!r}")
        if not callable(self.apply):
            raise TypeError(f"Method.apply must be callable, got {type(self.apply).__name__}")
        if self.fit is not None and not callable(self.fit):
            raise TypeError(f"Method.fit must be callable or None, got {type(self.fit).__name__}")
        unknown = set(self.networks) - set(NETWORK_KINDS)
        if unknown:
            raise ValueError(f"Method.networks must be drawn from {NETWORK_KINDS}, got {unknown}")

    def prune(
        self, model: nn.Module, value: Any, *, data: Any = None, generator: Any = None, **options
    ) -> nn.Module:
        """``apply(model, value, data=..., generator=..., **options)``.

        ``options`` are further keywords of the transform behind the method (for example
        ``skip_unprofitable=False`` for low rank).
        """
        self._check_call(data, options)
        return self.apply(model, value, data=data, generator=generator, **options)

    def fitted(self, model: nn.Module, *, data: Any = None, **options) -> Callable[..., nn.Module]:
        """``prune(value, generator=None)`` for one model and data, decomposing once.

        With ``fit`` the decompositions are computed on the first setting that needs them
        and truncated for every other; otherwise every setting calls ``apply``.
        """
        self._check_call(data, options)
        if self.fit is not None:
            fitted = self.fit(model, data, **options)
            return lambda value, generator=None: fitted(value, generator)
        return lambda value, generator=None: self.apply(
            model, value, data=data, generator=generator, **options
        )

    def _check_call(self, data: Any, options: Mapping) -> None:
        if self.needs_data and data is None:
            raise ValueError(
                f"method {self.name!r} needs calibration data: pass data= (a batch of inputs)"
            )
        reserved = sorted(set(options) & {"data", "generator", "inplace"})
        if reserved:
            raise ValueError(
                f"options {reserved} are not transform options of method {self.name!r}: "
                "calibration inputs go in data= (use a data-aware method such as "
                "'low_rank_data'), seeds in generator=, and methods never work in place"
            )


#: Every registered method by name.
METHODS: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to :data:`METHODS` (``replace=True`` to redefine a name)."""
    if not isinstance(method, Method):
        raise TypeError(f"method must be a Method, got {type(method).__name__}")
    if method.name in METHODS and not replace:
        raise ValueError(
            f"a method named {method.name!r} is already registered; pass replace=True to "
            "redefine it"
        )
    METHODS[method.name] = method
    return method


def get_method(method: str | Method) -> Method:
    """A registered method by name, label or alias (a :class:`Method` is returned as is)."""
    if isinstance(method, Method):
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a str or a Method, got {type(method).__name__}")
    if method in METHODS:
        return METHODS[method]
    for candidate in METHODS.values():
        if method == candidate.label or method in candidate.aliases:
            return candidate
    raise ValueError(f"method must be one of {list(METHODS)} (or their labels), got {method!r}")


def methods_for(network: str) -> list[Method]:
    """The registered methods that apply to ``"mlp"``, ``"cnn"`` or ``"transformer"`` networks."""
    if network not in NETWORK_KINDS:
        raise ValueError(f"network must be one of {list(NETWORK_KINDS)}, got {network!r}")
    return [m for m in METHODS.values() if network in m.networks]


def most_compressed_within(
    frame: pd.DataFrame,
    dense_accuracy: float,
    tolerance: float = 0.01,
    *,
    accuracy: str = "accuracy",
    by: Iterable[str] = ("method", "fine_tuned"),
    rank_by: str = "params",
    largest: bool = False,
) -> pd.DataFrame:
    """Per group, the best row among those whose accuracy is within ``tolerance`` of dense.

    ``frame`` holds sweep rows (:func:`~pruning_utils.sweeps.sweep`); a row passes when
    ``frame[accuracy] >= dense_accuracy - tolerance`` (accuracies as fractions: a tolerance
    of 0.01 is one point). Among the passing rows of each group (``by``), the best has the
    smallest ``rank_by`` (default: the fewest parameters, the most compressed), or the
    largest with ``largest=True`` (e.g. ``rank_by="speedup_b256"``: the fastest). Groups
    with no passing row are left out. Choose on validation accuracy, then report the chosen
    rows' test accuracy.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    tolerance = check_real("tolerance", tolerance, lower=0.0, upper=1.0)
    dense_accuracy = check_real("dense_accuracy", dense_accuracy, lower=0.0, upper=1.0)
    keys = list(by)
    missing = [c for c in (*keys, accuracy, rank_by) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks the columns {missing}")
    passing = frame[frame[accuracy] >= dense_accuracy - tolerance]
    if passing.empty:
        return passing.copy()
    ordered = passing.sort_values(rank_by, ascending=not largest, kind="stable")
    best = ordered.groupby(keys, sort=False).head(1)
    order = {key: i for i, key in enumerate(frame[keys].drop_duplicates().itertuples(index=False))}
    position = best[keys].apply(lambda row: order[tuple(row)], axis=1)
    return best.assign(_order=position).sort_values("_order").drop(columns="_order").reset_index(
        drop=True)


# ----------------------------------------------------------------------------- built-in methods


def _low_rank_fit(*, data_aware: bool = False, knob: str = "energy", **fixed) -> Fit:
    def fit(model: nn.Module, data: Any, **options):
        per_setting = {k: options.pop(k) for k in ("skip_unprofitable",) if k in options}
        fitted = LowRankFit(model, data=data if data_aware else None, **fixed, **options)
        return lambda value, generator: fitted.prune(**{knob: value}, **per_setting)

    return fit


def _low_rank_energy(**fixed) -> Apply:
    return lambda m, v, *, data=None, generator=None, **kw: low_rank(m, energy=v, **fixed, **kw)


def _pca(kind: str) -> Apply:
    def apply(m, v, *, data=None, generator=None, **kw):
        if kind == "weights":
            return pca_prune(m, v, method=kind, **kw)
        seed = 0 if generator is None else generator
        return pca_prune(m, v, method=kind, data=data, generator=seed, **kw)

    return apply


def _pca_fit(kind: str) -> Fit:
    """``fit`` of a PCA method: one :class:`WidthFit` per seed of the row subset.

    The fit for seed 0 (``apply``'s default) is made at once; another int seed gets its
    own on first use, and a ``torch.Generator`` (whose state moves with every draw) is
    passed to ``apply``.
    """

    def fit(model: nn.Module, data: Any, **options):
        def make(seed: int) -> WidthFit:
            if kind == "weights":  # no data and no draws, as in _pca
                return WidthFit(model, kind, **options)
            return WidthFit(model, kind, data=data, generator=seed, **options)

        fits = {0: make(0)}  # validates the model and data, captures the inputs once

        def prune(value, generator):
            seed = 0 if generator is None or kind == "weights" else generator
            if not is_int(seed):  # a torch.Generator: draws from its current state
                return _pca(kind)(model, value, data=data, generator=seed, **options)
            if seed not in fits:
                fits[seed] = make(seed)
            return fits[seed].prune(value)

        return prune

    return fit


def _group(criterion: str, knob: str) -> Apply:
    def apply(m, v, *, data=None, generator=None, **kw):
        seed = 0 if generator is None else generator
        return group_prune(m, **{knob: v}, criterion=criterion, data=data, generator=seed, **kw)

    return apply


def _group_fit(criterion: str, knob: str) -> Fit:
    """``fit`` of a group method: one :class:`GroupFit` (seed 0 draws the rows of ``H``);
    another seed is passed to ``apply``."""

    def fit(model: nn.Module, data: Any, **options):
        fitted = GroupFit(model, data=data, criterion=criterion, **options)

        def prune(value, generator):
            if generator is None or generator == 0 or criterion == "l1":
                return fitted.prune(**{knob: value})
            return _group(criterion, knob)(model, value, data=data, generator=generator,
                                           **options)

        return prune

    return fit


def _transformer_fit(kind: type) -> Fit:
    """``fit`` of a transformer method: ``kind(model, data)`` once, then ``prune(value)``."""

    def fit(model: nn.Module, data: Any, **options):
        fitted = kind(model, data)
        return lambda value, generator: fitted.prune(value, **options)

    return fit


def _randomized(layers: tuple[type[nn.Module], ...]) -> Apply:
    return lambda m, v, *, data=None, generator=None, **kw: randomize(
        m, v, generator=generator, **{"layers": layers, **kw}
    )


_ENERGIES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
_VARIANCES = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999)
_KEEP_L1 = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_KEEP_MAGNITUDE = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
_SAMPLE_FRACTIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
_KEEP_STREAM = (0.5, 0.625, 0.75, 0.875, 1.0)
_KEEP_HEADS = (0.25, 0.5, 0.75, 1.0)
_KEEP_UNITS = (0.125, 0.25, 0.5, 0.75, 1.0)
_ENERGY = "energy kept, Σ_{i≤r} σ_i² / Σ σ_i² per layer"

for _method in (
    Method(
        "low_rank_rank", "low rank (rank)", "rank",
        lambda m, v, *, data=None, generator=None, **kw: low_rank(m, rank=v, **kw),
        keeps="rank r of every factorized layer", color="#0072B2",
        fit=_low_rank_fit(knob="rank"),
    ),
    Method(
        "low_rank_energy", "low rank", "energy", _low_rank_energy(),
        keeps=_ENERGY, grid=_ENERGIES, color="#56B4E9", fit=_low_rank_fit(),
        aliases=("low rank (channel)",), networks=("mlp", "cnn", "transformer"),
    ),
    Method(
        "pca_weights", "PCA weights (Alg. 2)", "variance", _pca("weights"),
        keeps="energy of the centred weights kept", grid=_VARIANCES, color="#E69F00",
        networks=("mlp",), fit=_pca_fit("weights"), shrinks_width=True, chains_only=True,
    ),
    Method(
        "pca_activations", "PCA activations", "variance", _pca("activations"),
        keeps="variance of the hidden activations kept", needs_data=True, grid=_VARIANCES,
        color="#D55E00", networks=("mlp",), fit=_pca_fit("activations"), shrinks_width=True,
        chains_only=True,
    ),
    Method(
        "pca_interpolative", "PCA interpolative", "variance", _pca("interpolative"),
        keeps="energy of the (uncentred) hidden activations kept", needs_data=True,
        grid=_VARIANCES, color="#CC79A7", aliases=("PCA channels (interpolative)",),
        fit=_pca_fit("interpolative"), shrinks_width=True, chains_only=True,
    ),
    Method(
        "randomized", "randomized matmul", "samples", _randomized((nn.Linear,)),
        keeps="sampled fraction of each layer's inner dimension", randomized=True,
        fine_tunable=False, grid=_SAMPLE_FRACTIONS, color="#009E73", networks=("mlp",),
    ),
    Method(
        "magnitude", "magnitude (baseline)", "keep",
        lambda m, v, *, data=None, generator=None, **kw: magnitude_prune(m, v, **kw),
        keeps="fraction of weights kept (the rest zeroed)", fine_tunable=False, sparse=True,
        grid=_KEEP_MAGNITUDE, color="#999999",
    ),
    Method(
        "l1_structured", "L1 structured (baseline)", "keep",
        lambda m, v, *, data=None, generator=None, **kw: l1_structured_prune(m, v, **kw),
        keeps="fraction of hidden units / filters kept", grid=_KEEP_L1, color="#8C510A",
        aliases=("L1 units (baseline)", "L1 filters (baseline)"), shrinks_width=True,
        chains_only=True,
    ),
    Method(
        "low_rank_spatial", "low rank (spatial)", "energy", _low_rank_energy(scheme="spatial"),
        keeps=_ENERGY + " (spatial split of convolutions)", grid=_ENERGIES, color="#3D6FA8",
        networks=("cnn",), fit=_low_rank_fit(scheme="spatial"),
    ),
    Method(
        "low_rank_rank_data", "low rank (rank), data-aware", "rank",
        lambda m, v, *, data=None, generator=None, **kw: low_rank(m, rank=v, data=data, **kw),
        keeps="rank r of every factorized layer, whitened by the calibration inputs",
        needs_data=True, color="#7570B3", networks=("mlp",),
        fit=_low_rank_fit(data_aware=True, knob="rank"),
    ),
    Method(
        "low_rank_data", "low rank, data-aware", "energy",
        lambda m, v, *, data=None, generator=None, **kw: low_rank(m, energy=v, data=data, **kw),
        keeps="output energy kept, of the spectrum of W S (whitened)", needs_data=True,
        grid=_ENERGIES, color="#1B9E77", networks=("mlp", "transformer"),
        fit=_low_rank_fit(data_aware=True),
    ),
    Method(
        "group_interpolative", "interpolative (residual-aware)", "variance",
        _group("interpolative", "variance"),
        keeps="energy of each channel group's activations kept", needs_data=True,
        grid=_VARIANCES, color="#AA3377", networks=("cnn",),
        fit=_group_fit("interpolative", "variance"), shrinks_width=True,
    ),
    Method(
        "group_l1", "group L1 (baseline)", "keep", _group("l1", "keep"),
        keeps="fraction of each channel group's channels kept", needs_data=True,
        grid=_KEEP_L1, color="#BF8F3F", networks=("cnn",), fit=_group_fit("l1", "keep"),
        shrinks_width=True,
    ),
    Method(
        "randomized_conv", "randomized im2col", "samples",
        _randomized((nn.Conv2d, nn.Linear)),
        keeps="sampled fraction of each layer's inner dimension", randomized=True,
        fine_tunable=False, grid=_SAMPLE_FRACTIONS, color="#66A61E", networks=("cnn",),
    ),
    Method(
        "slice_stream", "stream PCA (SliceGPT)", "keep",
        lambda m, v, *, data=None, generator=None, **kw: slice_stream(m, v, data=data, **kw),
        keeps="fraction of the residual-stream width d kept after the PCA rotation",
        needs_data=True, grid=_KEEP_STREAM, color="#E7298A", networks=("transformer",),
        fit=_transformer_fit(StreamFit), shrinks_width=True,
    ),
    Method(
        "prune_heads", "heads (interpolative)", "keep",
        lambda m, v, *, data=None, generator=None, **kw: prune_heads(m, v, data=data, **kw),
        keeps="fraction of the attention heads of each block kept", needs_data=True,
        grid=_KEEP_HEADS, color="#A6761D", networks=("transformer",),
        fit=_transformer_fit(HeadFit), shrinks_width=True,
    ),
    Method(
        "prune_units", "MLP units (interpolative)", "keep",
        lambda m, v, *, data=None, generator=None, **kw: prune_units(m, v, data=data, **kw),
        keeps="fraction of the hidden units of each block's MLP kept", needs_data=True,
        grid=_KEEP_UNITS, color="#666666", networks=("transformer",),
        fit=_transformer_fit(UnitFit), shrinks_width=True,
    ),
):  # fmt: skip
    register_method(_method)


def palette() -> Mapping[str, str]:
    """``{name: colour}`` of every registered method (labels and aliases included)."""
    colours: dict[str, str] = {}
    for m in METHODS.values():
        for key in (m.name, m.label, *m.aliases):
            colours[key] = m.color
    return colours
