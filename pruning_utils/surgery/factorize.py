"""Low rank: factorize layers by truncated SVD, decomposing each layer once.

:class:`LowRankFit` holds the decompositions of a model's layers (the SVD of each weight
matrix, or of the whitened matrix ``W S`` when calibration data is given) and yields a
factorized model for any rank or energy by truncating them; :func:`low_rank` is one fit
truncated once. A sweep over settings therefore pays for each SVD (and for capturing the
calibration activations) once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from pruning_utils.linalg import (
    Spectrum,
    _prefer_randomized,
    low_rank_factors,
    whitened_low_rank_factors,
)
from pruning_utils.nnutils import capture_inputs, set_module
from pruning_utils.surgery.report import LayerChange, count, layer_shape
from pruning_utils.surgery.transform import SCHEMES, layer_kind, run_transform, select_layers
from pruning_utils.surgery.tree import (
    check_weights,
    describe_first_layer,
    eligible,
    inherit_state,
)
from pruning_utils.validation import (
    check_bool,
    check_choice,
    check_exactly_one,
    check_fraction,
    check_generator,
    check_int,
    check_layer_types,
    check_model,
    is_int,
)

__all__ = ["LowRankFit", "low_rank"]


def _check_rank_arg(rank: object) -> int | dict[str, int] | None:
    if rank is None:
        return None
    if isinstance(rank, Mapping):
        if not rank:
            raise ValueError("rank as a dict must name at least one layer, got {}")
        for name, value in rank.items():
            if not isinstance(name, str):
                raise TypeError(f"rank dict keys must be module names (str), got {name!r}")
            check_int(f"rank[{name!r}]", value)
        return {name: int(value) for name, value in rank.items()}
    return check_int("rank", rank)


def _check_setting(rank: object, energy: object) -> tuple[int | dict | None, float | None]:
    """Exactly one of ``rank`` (an int or ``{layer: int}``) and ``energy`` (in (0, 1])."""
    check_exactly_one(rank=rank, energy=energy)
    rank = _check_rank_arg(rank)
    return rank, None if energy is None else check_fraction("energy", energy)


class LowRankFit:
    """The SVDs behind :func:`low_rank` for one model (and calibration data), computed once.

    ``fit = LowRankFit(model, data=calibration)`` validates the model, captures the inputs
    of its Linear layers on ``data`` (when given) and keeps them as ``XᵀX``;
    ``fit.prune(energy=e)`` or ``fit.prune(rank=r)`` returns the same model as
    ``low_rank(model, ...)`` with the same arguments, taking each layer's SVD
    (:class:`~pruning_utils.linalg.Spectrum`) the first time a setting needs it and
    truncating it for every later one. A rank small enough for the randomized SVD
    (where :func:`~pruning_utils.linalg.low_rank_factors` takes it) is computed directly,
    as :func:`low_rank` does.

    Parameters
    ----------
    model:
        The trained model; never modified.
    data:
        Calibration inputs for data-aware (whitened) factorization of Linear layers: a
        tensor or an iterable of batches. Convolutions always use the plain SVD.
    layers:
        Layer types to factorize, drawn from ``(nn.Linear, nn.Conv2d)``.
    scheme:
        ``"channel"`` or ``"spatial"`` for convolutions.
    names:
        Only these layers (module paths); default every eligible layer.
    generator:
        Seed (or generator) of the randomized SVD where it is used; default 0, so results
        are reproducible. A seed gives one stream per device type.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> fit = LowRankFit(net)  # nothing decomposed yet
    >>> small, large = (fit.prune(energy=e) for e in (0.5, 0.9))  # one SVD per layer
    >>> small.pruning_report.params_after < large.pruning_report.params_after
    True
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        data: Tensor | Iterable | None = None,
        layers: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
        scheme: str = "channel",
        names: Iterable[str] | None = None,
        generator: torch.Generator | int | None = 0,
    ) -> None:
        self.model = check_model(model)
        self.kinds = check_layer_types(layers)
        self.scheme = check_choice("scheme", scheme, SCHEMES)
        if generator is not None and not isinstance(generator, torch.Generator):
            check_generator(generator)  # validates the seed
        self.generator = generator
        found = eligible(model, self.kinds, "low_rank")
        if names is not None:
            found = select_layers(found, names, self.kinds, "rank")
        if not found:
            kinds_text = " or ".join(f"nn.{k.__name__}" for k in self.kinds)
            raise ValueError(f"model has nothing to factorize: no {kinds_text} layer found")
        check_weights(found)
        self.layers: list[tuple[str, nn.Module]] = found
        self.data_aware = data is not None
        self.covariances: dict[str, Tensor] = {}
        if data is not None:
            linear = [n for n, m in found if isinstance(m, nn.Linear)]
            if linear:
                self.covariances = _covariances(model, data, linear)
        self._spectra: dict[str, Spectrum] = {}

    def spectrum(self, name: str) -> Spectrum:
        """The (whitened) SVD of layer ``name``, computed on first use."""
        if name not in self._spectra:
            layer = dict(self.layers)[name]
            M = layer_kind(layer, self.scheme).matrix(layer)
            try:
                self._spectra[name] = Spectrum(M, covariance=self.covariances.get(name))
            except ValueError as err:
                raise ValueError(f"data: layer {name!r}: {err}") from err
        return self._spectra[name]

    def _randomized_factors(self, name: str, M: Tensor, rank: int) -> tuple[Tensor, Tensor]:
        gen = self.generator
        if gen is None or is_int(gen):
            gen = check_generator(0 if gen is None else gen, M.device)
        if name in self.covariances:
            return whitened_low_rank_factors(
                M, rank=rank, covariance=self.covariances[name], generator=gen
            )
        return low_rank_factors(M, rank=rank, generator=gen)

    def prune(
        self,
        rank: int | Mapping[str, int] | None = None,
        energy: float | None = None,
        *,
        skip_unprofitable: bool = True,
        inplace: bool = False,
    ) -> nn.Module:
        """The factorized model at one setting (see :func:`low_rank` for the arguments)."""
        rank, energy = _check_setting(rank, energy)
        check_bool("skip_unprofitable", skip_unprofitable)
        layers = self.layers
        if isinstance(rank, dict):
            layers = select_layers(layers, rank, self.kinds, "rank")
            for name, module in layers:
                if isinstance(module, nn.Conv2d) and module.groups != 1:
                    raise ValueError(
                        f"rank names {name!r}, a grouped convolution (groups={module.groups}); "
                        "grouped convolutions are not factorized"
                    )
                full = min(layer_kind(module, self.scheme).matrix(module).shape)
                check_int(f"rank[{name!r}]", rank[name], lower=1, upper=full)

        def body(work: nn.Module, report) -> None:
            for name, original in layers:
                wanted = rank[name] if isinstance(rank, dict) else rank
                row, new = self._layer(name, original, wanted, energy, skip_unprofitable)
                report.layers.append(row)
                if new is not None:
                    set_module(work, name, inherit_state(new, work.get_submodule(name)))

        settings = dict(
            rank=rank,
            energy=energy,
            layers=[k.__name__ for k in self.kinds],
            skip_unprofitable=skip_unprofitable,
            scheme=self.scheme,
            data_aware=self.data_aware,
        )
        return run_transform("low_rank", self.model, settings, body, inplace=inplace,
                             kinds=self.kinds)

    def _layer(
        self,
        name: str,
        layer: nn.Module,
        rank: int | None,
        energy: float | None,
        skip_unprofitable: bool,
    ) -> tuple[LayerChange, nn.Module | None]:
        """Factorize one layer; return its report row and the new module (None: kept)."""
        W = layer.weight.detach()
        before = count(layer)
        row = LayerChange(name, "kept", tuple(W.shape), tuple(W.shape), before, before)
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            row.skipped, row.note = True, f"grouped convolution (groups={layer.groups}) kept dense"
            return row, None
        handler = layer_kind(layer, self.scheme)
        M = handler.matrix(layer)
        r_star = handler.break_even(layer)
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
            if _prefer_randomized(*M.shape, r):
                A, B = self._randomized_factors(name, M, r)
            else:
                A, B = self.spectrum(name).factors(rank=r)
        else:
            A, B = self.spectrum(name).factors(energy=energy)
        if name in self.covariances:
            notes.append("data-aware (whitened)")
        r = A.shape[1]
        row.rank = r
        if rank is None and skip_unprofitable and r >= r_star:
            row.skipped = True
            row.note = "; ".join(
                [*notes, f"rank {r} for energy {energy} >= r* = {r_star:.1f}: kept dense"]
            )
            return row, None
        new = handler.from_factors(layer, A.to(W), B.to(W))
        row.change, row.new_shape, row.params_after = handler.change, layer_shape(new), count(new)
        row.note = "; ".join(notes)
        return row, new


def _covariances(model: nn.Module, data: Tensor | Iterable, names: list[str]) -> dict[str, Tensor]:
    """``C = XᵀX`` (float64) of the inputs each named Linear layer receives on ``data``."""
    try:
        inputs = capture_inputs(model, data, names)
    except RuntimeError as err:
        raise ValueError(
            f"data does not fit the model: {describe_first_layer(model)} ({err})"
        ) from err
    out = {}
    for name, X in inputs.items():
        layer = model.get_submodule(name)
        X = X.reshape(-1, layer.in_features).to(torch.float64)
        if X.shape[0] == 0:
            raise ValueError("data must hold at least one input, got none")
        if not bool(torch.isfinite(X).all()):
            raise ValueError(f"data: the inputs of layer {name!r} are not all finite")
        out[name] = X.mT @ X
    return out


def low_rank(
    model: nn.Module,
    rank: int | Mapping[str, int] | None = None,
    energy: float | None = None,
    *,
    data: Tensor | Iterable | None = None,
    generator: torch.Generator | int | None = 0,
    layers: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    inplace: bool = False,
    skip_unprofitable: bool = True,
    scheme: str = "channel",
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
    records the rank used, ``r*``, clipping and skips. Rebuilt layers keep the device,
    dtype, train/eval mode and ``requires_grad`` of the layers they replace; a layer used
    at two places of the model is refused, and layers inside modules with a fused
    inference path (``nn.TransformerEncoderLayer``, ``nn.MultiheadAttention``) stay dense
    with a warning.

    To factorize one model at many settings, use :class:`LowRankFit`, which takes each
    SVD once.

    Parameters
    ----------
    model:
        The trained model (left untouched unless ``inplace``).
    rank:
        How much to keep: one rank ``r >= 1`` for all layers, or a dict
        ``{module name: rank}`` naming the layers to factorize (there a rank above the
        layer's ``min(m, n)`` is an error).
    energy:
        How much to keep: the fraction in ``(0, 1]`` of each layer's ``Σσ²``. Exactly one
        of rank, energy.
    data:
        Calibration inputs (a tensor batch or a DataLoader, every batch used). When given,
        Linear layers are factorized data-aware
        (:func:`~pruning_utils.linalg.whitened_low_rank_factors`, minimising the output
        error on these inputs), with ``energy`` measured on the spectrum of ``W S``.
        Floating inputs are converted to the model's device and dtype. The inputs of each
        layer are kept as one ``n × n`` float64 matrix ``XᵀX`` (512 MiB for ``n = 8192``).
        Convolutions always use the plain SVD.
    generator:
        Seed or generator of the randomized SVD, used for small ranks of large layers
        (default 0: reproducible on each device type).
    layers:
        Layer types to factorize, drawn from ``(nn.Linear, nn.Conv2d)``.
    inplace:
        Modify ``model`` itself instead of a copy.
    skip_unprofitable:
        Keep a layer dense when ``rank >= r*``.
    scheme:
        ``"channel"`` or ``"spatial"`` for convolutions.

    Returns
    -------
    nn.Module
        The new model, with ``pruning_report``.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> small = low_rank(net, rank=8)
    >>> type(small[0]).__name__, small.pruning_report.params_after < 64 * 64 + 64 + 650
    ('LowRankLinear', True)
    """
    check_model(model)
    _check_setting(rank, energy)  # before the (possibly long) capture of calibration data
    check_bool("skip_unprofitable", skip_unprofitable)
    check_bool("inplace", inplace)
    fit = LowRankFit(
        model,
        data=data,
        layers=layers,
        scheme=scheme,
        names=list(rank) if isinstance(rank, dict) else None,
        generator=generator,
    )
    return fit.prune(rank, energy, skip_unprofitable=skip_unprofitable, inplace=inplace)
