"""Width pruning: fewer hidden units or channels in a chain of layers (PCA, interpolative).

``pca_prune`` shrinks the hidden widths of an ``nn.Sequential`` chain with the original
work's Algorithm 2 (PCA of the weights), PCA of the activations (Levin et al. 1993) or the
interpolative decomposition of the activations (Chee et al. 2022); ``fold_batchnorm``
merges eval-mode BatchNorm into the layer before it, which width pruning needs first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from pruning_utils.layers import LowRankLinear
from pruning_utils.linalg import (
    PivotedQR,
    PrincipalComponents,
    rank_for_energy,
    truncated_svd,
)
from pruning_utils.nnutils import batches, eval_mode, to_model
from pruning_utils.surgery.report import LayerChange, count, layer_shape
from pruning_utils.surgery.transform import per_layer_fractions, run_transform
from pruning_utils.surgery.tree import (
    PASS_THROUGH,
    Leaf,
    check_between,
    check_not_shared,
    check_weights,
    fold_into,
    foldable,
    forward_chain,
    inherit_state,
    leaves,
    new_conv,
    new_linear,
)
from pruning_utils.validation import (
    check_bool,
    check_choice,
    check_finite,
    check_generator,
    check_int,
    check_model,
)

__all__ = ["PCA_METHODS", "WidthFit", "pca_prune", "fold_batchnorm"]

#: Width-pruning methods understood by :func:`pca_prune`.
PCA_METHODS: tuple[str, ...] = ("weights", "activations", "interpolative")


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
        producer.second = new_linear(W, b, producer.second)
        return producer
    if isinstance(producer, nn.Conv2d):
        return new_conv(W, b, producer)
    return new_linear(W, b, producer)


def _record(changes: dict, path: str, kind: str, width: int | None, note: str) -> None:
    """Record a change of one layer; a second change of the same layer extends the note."""
    if path in changes:
        _, old_width, old_note = changes[path]
        width = width if width is not None else old_width
        note = f"{old_note}; {note}"
    changes[path] = (kind, width, note)


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
    def body(new_model: nn.Module, report) -> None:
        for seq_name, seq in list(new_model.named_modules()):
            if not isinstance(seq, nn.Sequential):
                continue
            children = list(seq.named_children())
            for (name_a, a), (name_b, b) in zip(children, children[1:], strict=False):
                if not foldable(a, b):
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
                            count(b),
                            count(b),
                            skipped=True,
                            note="no running statistics: cannot fold",
                        )
                    )
                    continue
                before = count(a) + count(b)
                check_finite(f"{full_a}.weight", a.weight.detach())
                fold_into(a, b)
                setattr(seq, name_b, nn.Identity())
                report.layers.append(
                    LayerChange(
                        full_a,
                        "bn_folded",
                        tuple(a.weight.shape),
                        tuple(a.weight.shape),
                        before,
                        count(a),
                        note=f"{full_b} folded into {full_a}",
                    )
                )

    return run_transform(
        "fold_batchnorm", model, {}, body, inplace=inplace, kinds=(nn.BatchNorm1d, nn.BatchNorm2d)
    )


def pca_prune(
    model: nn.Sequential,
    variance: float | Sequence[float] | Mapping[str, float],
    method: str = "weights",
    *,
    data: Tensor | Iterable | None = None,
    generator: torch.Generator | int | None = 0,
    inplace: bool = False,
    max_rows: int = 16384,
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
    it (greedy, layer by layer). ``pca_prune`` is one :class:`WidthFit` pruned once; to
    prune one model at many settings, make the fit once and call its ``prune`` for each.

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
        Draws the row subset for convolutions: an int seed (default 0, reproducible), a
        ``torch.Generator`` (the subset is drawn on its device), or ``None`` for torch's
        global generator. A generator is read, not advanced: the rows are drawn from a
        copy of its state.

    Returns
    -------
    nn.Sequential
        The pruned model, with ``pruning_report``.
    """
    check_bool("inplace", inplace)
    fit = WidthFit(model, method, data=data, generator=generator, max_rows=max_rows)
    return fit.prune(variance, inplace=inplace)


class WidthFit:
    """The decompositions behind :func:`pca_prune` for one model and calibration data.

    ``fit = WidthFit(model, method, data=calibration)`` validates the model and the data
    as :func:`pca_prune` does and captures the inputs of the first layer of the chain;
    ``fit.prune(variance)`` returns the same model as ``pca_prune(model, variance,
    method, data=calibration, ...)`` with the same arguments (the same modules, weights
    equal bit for bit, the same report), decomposing only what no earlier setting has.

    Each hidden layer is decomposed on the outputs of the pruned layers before it, so its
    decomposition depends on the setting only through the widths chosen upstream. The fit
    keeps, per hidden layer and per choice of those widths, the layer's inputs on the
    calibration data and the decomposition every width is a truncation of:

    * ``"weights"``: the SVD of the centred ``W_i``, which depends on ``W_i`` alone (one per
      layer for all settings);
    * ``"activations"``: every principal component of the hidden representation
      (:class:`~pruning_utils.linalg.PrincipalComponents`);
    * ``"interpolative"``: its singular values and one column-pivoted QR
      (:class:`~pruning_utils.linalg.PivotedQR`), which gives the interpolative
      decomposition for every ``k``.

    The activations themselves are dropped once decomposed. The first layer's
    decomposition serves every setting; a deeper layer's serves the settings that agree
    on the widths before it. Memory grows with the number of distinct upstream widths
    met: per hidden layer of ``m`` units, the decomposition holds about ``min(N, m) · m``
    numbers (float64 for ``"interpolative"``, the model's dtype for ``"activations"``)
    for ``N`` calibration rows.

    Parameters
    ----------
    model:
        An ``nn.Sequential`` chain, as for :func:`pca_prune`; never modified (unless
        ``prune(..., inplace=True)``), and it must not change while the fit is used.
    method:
        ``"weights"``, ``"activations"`` or ``"interpolative"``.
    data:
        Calibration inputs for ``"activations"`` and ``"interpolative"`` (a tensor or an
        iterable of batches); captured once, here.
    generator:
        Draws the row subset of a convolution's activation matrix: an int seed (default
        0), a ``torch.Generator`` or ``None`` (torch's global generator). A generator is
        read, not advanced: every setting draws from a copy of its state at this call,
        so each setting draws the rows :func:`pca_prune` would draw from that state.
    max_rows:
        Most rows of a convolution's activation matrix used by the decomposition.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
    ...                     nn.Linear(32, 10))
    >>> X = torch.randn(256, 20)
    >>> fit = WidthFit(net, "interpolative", data=X)  # captures the calibration inputs
    >>> small, large = (fit.prune(v) for v in (0.9, 0.99))  # the first layer factored once
    >>> small[0].out_features < large[0].out_features
    True
    >>> scratch = pca_prune(net, 0.9, method="interpolative", data=X)
    >>> all(torch.equal(a, b) for a, b in zip(small.state_dict().values(),
    ...                                        scratch.state_dict().values()))
    True
    """

    def __init__(
        self,
        model: nn.Sequential,
        method: str = "weights",
        *,
        data: Tensor | Iterable | None = None,
        generator: torch.Generator | int | None = 0,
        max_rows: int = 16384,
    ) -> None:
        check_model(model)
        if not isinstance(model, nn.Sequential):
            raise TypeError(
                "model must be an nn.Sequential chain (e.g. Flatten, Linear, ReLU, ..., Linear), "
                f"got {type(model).__name__}; build the chain as an nn.Sequential to prune its "
                "widths"
            )
        method = check_choice("method", method, PCA_METHODS)
        bad_data = isinstance(data, (str, bytes)) or not isinstance(data, (Tensor, Iterable))
        if data is not None and bad_data:
            raise TypeError(
                "data must be a tensor of inputs or an iterable of batches (a DataLoader), "
                f"got {type(data).__name__}"
            )
        if method != "weights" and data is None:
            raise ValueError(
                f"data is required for method={method!r}: calibration inputs (a tensor or a "
                "DataLoader) whose activations are decomposed"
            )
        max_rows = check_int("max_rows", max_rows)

        kinds = (nn.Linear, nn.Conv2d) if method == "interpolative" else (nn.Linear,)
        check_not_shared(
            model, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d), "pca_prune"
        )
        chain = leaves(model)
        positions = [i for i, leaf in enumerate(chain) if isinstance(leaf.module, kinds)]
        if len(positions) < 2:
            what = "nn.Linear / nn.Conv2d" if method == "interpolative" else "nn.Linear"
            raise ValueError(
                f"model has no hidden layer to prune: {what} layers found: {len(positions)} "
                "(a hidden layer sits between two of them)"
            )
        check_weights([(chain[pos].path, chain[pos].module) for pos in positions])
        for pos in positions:
            layer = chain[pos].module
            if isinstance(layer, nn.Conv2d) and layer.groups != 1:
                raise ValueError(
                    f"{chain[pos].path} is a grouped convolution (groups={layer.groups}); "
                    "its channels cannot be pruned"
                )
        _check_segments(chain, positions)

        # calibration inputs of the first layer, from the (untouched) modules before it
        X = None if method == "weights" else _calibration_inputs(model, chain, positions[0], data)
        # draws the rows of a convolution's activation matrix: every setting draws from a
        # copy of this state, so the generator given is read, not advanced
        rows = check_generator(generator)
        rows = _copy_generator(torch.default_generator if rows is None else rows)

        self.model: nn.Sequential | None = model
        self.method = method
        self.max_rows = max_rows
        self.data_aware = data is not None
        #: Paths of the layers producing the hidden outputs, in order (the names a dict
        #: ``variance`` uses).
        self.hidden: list[str] = [chain[pos].path for pos in positions[:-1]]
        self._kinds = kinds
        self._positions = positions
        self._weight_svds: dict[int, tuple[Tensor, Tensor]] = {}
        self._first: _Prefix | None = None if X is None else _Prefix(X, rows)

    def prune(
        self,
        variance: float | Sequence[float] | Mapping[str, float],
        *,
        inplace: bool = False,
    ) -> nn.Sequential:
        """The pruned model at one setting (see :func:`pca_prune` for ``variance``).

        Parameters
        ----------
        variance:
            Fraction in ``(0, 1]``; or a list with one value per hidden layer; or a dict
            ``{name of the layer producing the hidden output: fraction}``.
        inplace:
            Prune the fitted model itself; the fit cannot prune again afterwards.

        Returns
        -------
        nn.Sequential
            The pruned model, with ``pruning_report``.
        """
        if self.model is None:
            raise RuntimeError(
                "this WidthFit pruned its model in place (inplace=True) and holds no model "
                "any more; make a new WidthFit of the model to prune it again"
            )
        variances = per_layer_fractions("variance", variance, self.hidden)
        check_bool("inplace", inplace)
        positions = self._positions

        def body(work: nn.Module, report) -> None:
            chain = leaves(work)
            before_rows = {
                chain[p].path: (layer_shape(chain[p].module), count(chain[p].module))
                for p in positions
            }
            for a, b in zip(positions, positions[1:], strict=False):
                if a + 1 < b and foldable(chain[a].module, chain[a + 1].module):
                    fold_into(chain[a].module, chain[a + 1].module)
                    chain[a + 1].replace(nn.Identity())
            changes: dict[str, tuple[str, int | None, str]] = {}
            if self.method == "weights":
                _prune_weights(chain, positions, variances, changes, self._weight_svds)
            else:
                with eval_mode(work), torch.no_grad():
                    if self.method == "activations":
                        _prune_activations(chain, positions, variances, self._first, changes)
                    else:
                        _prune_interpolative(
                            chain, positions, variances, self._first, changes, self.max_rows
                        )
            for pos in positions:
                leaf = chain[pos]
                old_shape, old_count = before_rows[leaf.path]
                kind, width, note = changes.get(leaf.path, ("kept", None, ""))
                report.layers.append(
                    LayerChange(
                        leaf.path,
                        kind,
                        old_shape,
                        layer_shape(leaf.module),
                        old_count,
                        count(leaf.module),
                        width=width,
                        skipped=kind == "kept",
                        note=note,
                    )
                )

        settings = dict(
            variance=variance if not isinstance(variance, Mapping) else dict(variance),
            method=self.method,
            data_aware=self.data_aware,
        )
        model = self.model
        if inplace:  # the model changes: nothing later could be decomposed from it
            self.model = None
        return run_transform(
            "pca_prune", model, settings, body, inplace=inplace, kinds=self._kinds
        )


def _copy_generator(generator: torch.Generator) -> torch.Generator:
    """A new generator on ``generator``'s device in its current state."""
    copy = torch.Generator(device=generator.device)
    copy.set_state(generator.get_state())
    return copy


class _Prefix:
    """One hidden layer on the calibration data, for one choice of the widths before it.

    ``inputs`` is what the layer producing the hidden output receives; ``decomposition``
    is the hidden output's, taken when a setting first needs it (the output itself is not
    kept); ``children`` are the next hidden layer's prefixes by the width chosen here
    (``None``: this layer left alone), and ``outputs`` the next layer's inputs while this
    layer is not narrowed, which such children share. ``rows`` is the row-subset
    generator in the state before this layer draws (only copies of it draw) and
    ``rows_after`` the one that drew.
    """

    __slots__ = ("inputs", "outputs", "rows", "rows_after", "decomposition", "children")

    def __init__(self, inputs: Tensor, rows: torch.Generator) -> None:
        self.inputs = inputs
        self.outputs: Tensor | None = None
        self.rows = rows
        self.rows_after = rows
        self.decomposition = None
        self.children: dict[int | None, _Prefix] = {}

    def child(
        self, width: int | None, layers: Sequence[nn.Module], *, narrowed: bool
    ) -> _Prefix:
        """The next layer's prefix: this one's inputs through ``layers`` (computed once).

        ``narrowed`` says whether the first of ``layers`` was pruned at ``width``; when it
        was not, the outputs are the same for every width and computed once for all.
        """
        if width not in self.children:
            if narrowed:
                outputs = forward_chain(layers, self.inputs)
            else:
                if self.outputs is None:
                    self.outputs = forward_chain(layers, self.inputs)
                outputs = self.outputs
            rows = self.rows if width is None else self.rows_after
            self.children[width] = _Prefix(outputs, rows)
        return self.children[width]


def _check_segments(chain: list[Leaf], positions: list[int]) -> None:
    """Validate the segments on the original (BatchNorm directly after a layer is foldable)."""
    for a, b in zip(positions, positions[1:], strict=False):
        between = chain[a + 1 : b]
        if between and foldable(chain[a].module, between[0].module):
            bn = between[0].module
            if bn.running_mean is None:
                raise ValueError(
                    f"{between[0].path}: BatchNorm without running statistics cannot be folded"
                )
            between = between[1:]
        check_between(chain[a], chain[b], between)


def _calibration_inputs(
    model: nn.Module, leaves: list[Leaf], first: int, data: Tensor | Iterable
) -> Tensor:
    """All calibration inputs pushed through the modules before the first weight layer."""
    prefix = [leaf.module for leaf in leaves[:first]]
    layer = leaves[first].module
    chunks = []
    with eval_mode(model), torch.no_grad():
        for x in batches(data):
            if not x.is_floating_point():
                raise ValueError(
                    f"data does not fit the model: it holds {x.dtype} inputs, and the layers "
                    "of this chain compute on floating-point inputs (convert them, e.g. "
                    "data.float())"
                )
            x = to_model(x, model)
            try:
                z = forward_chain(prefix, x)
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
    check_finite("data", X)
    if X.shape[0] < 2:
        raise ValueError(f"data must hold at least 2 inputs, got shape {tuple(X.shape)}")
    return X


def _prune_weights(
    leaves: list[Leaf],
    positions: list[int],
    variances: list[float | None],
    changes: dict,
    svds: dict[int, tuple[Tensor, Tensor]],
) -> None:
    """The original Algorithm 2 on the Linear chain.

    ``svds`` holds ``U, S`` of each hidden layer's centred weight by its index in the
    chain, taken on first use and reused by every later call.
    """
    P_prev: Tensor | None = None  # previous layer's P′ (m_{i-1} × j_{i-1})
    for idx, pos in enumerate(positions):
        leaf = leaves[pos]
        layer = leaf.module
        W, b = _wb(layer)
        W_in = W if P_prev is None else W @ P_prev  # right projection: W_i P
        if idx == len(positions) - 1 or variances[idx] is None:
            if P_prev is not None:
                leaf.replace(new_linear(W_in, None if layer.bias is None else b, layer))
                note = f"inputs projected to {W_in.shape[1]}"
                _record(changes, leaf.path, "input_folded", None, note)
            P_prev = None
            continue
        if idx not in svds:  # depends on W_i alone, not on the layers before
            Wc = W - W.mean(dim=0, keepdim=True)  # centre the columns (mean over output units)
            U, S, _ = truncated_svd(Wc, min(Wc.shape))
            svds[idx] = (U, S)
        U, S = svds[idx]
        j = rank_for_energy(S, variances[idx])  # 1 when W_c = 0
        P = U[:, :j]  # m_i × j
        leaf.replace(new_linear(P.T @ W_in, P.T @ b if layer.bias is not None else None, layer))
        _record(changes, leaf.path, "pca_weights", j, f"{W.shape[0]} -> {j} units")
        P_prev = P


def _principal_components(H: Tensor, path: str) -> PrincipalComponents:
    """Every principal component of the hidden representation ``H`` after layer ``path``."""
    try:
        return PrincipalComponents(H.reshape(-1, H.shape[-1]))
    except ValueError as err:
        raise ValueError(f"data: the activations after layer {path!r}: {err}") from err


def _prune_activations(
    leaves: list[Leaf],
    positions: list[int],
    variances: list[float | None],
    prefix: _Prefix,
    changes: dict,
) -> None:
    """Levin et al.: PCA of the hidden representation, merged or as a bottleneck.

    ``prefix`` holds the first layer's calibration inputs and, below it, the inputs and
    principal components of every layer for the upstream widths already met.
    """
    last = len(positions) - 2
    for idx, (a, b) in enumerate(zip(positions, positions[1:], strict=False)):
        producer, consumer = leaves[a], leaves[b]
        layers = [producer.module, *(leaf.module for leaf in leaves[a + 1 : b])]
        linear = all(isinstance(m, PASS_THROUGH) for m in layers[1:])
        k = None
        if variances[idx] is not None:
            if prefix.decomposition is None:
                H = forward_chain(layers, prefix.inputs)
                prefix.decomposition = _principal_components(H, producer.path)
            res = prefix.decomposition.result(variance=variances[idx])
            P = res.components.to(torch.float64)  # k × m
            mu = res.mean.to(torch.float64)  # m
            k, m = P.shape
            Wn, bn = _wb(consumer.module)
            has_bias = consumer.module.bias is not None
            if linear:
                Wr, br = _wb(_row_layer(producer.module))
                producer.replace(_with_rows(producer.module, P @ Wr, P @ (br - mu)))
                consumer.replace(new_linear(Wn @ P.T, bn + Wn @ mu, consumer.module))
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
                    inherit_state(new, consumer.module)
                    note = f"bottleneck {m} -> {k} -> {n_out} after the activation"
                else:
                    new = new_linear(Wn @ P.T @ P, bias, consumer.module)
                    note = f"projection on {k} components folded (bottleneck would be larger)"
                consumer.replace(new)
                _record(changes, consumer.path, "bottleneck", k, note)
        if idx < last:  # the next layer's inputs, from this layer as pruned
            prefix = prefix.child(
                k, [producer.module, *layers[1:]], narrowed=k is not None and linear
            )


def _subsample_rows(H: Tensor, max_rows: int, generator: torch.Generator) -> Tensor:
    """At most ``max_rows`` rows of ``H``, drawn without replacement on the generator's device."""
    if H.shape[0] <= max_rows:
        return H
    idx = torch.randperm(H.shape[0], generator=generator, device=generator.device)
    return H[idx[:max_rows].to(H.device)]


class _UnitSelection:
    """What the interpolative decomposition of one hidden output needs for every ``k``.

    The singular values ``S`` of the activation matrix (N×m, or (N·h·w)×C for a
    convolution's maps of size ``spatial``), the ``rtol`` that counts round-off as zero
    and its column-pivoted QR.
    """

    __slots__ = ("singular_values", "rtol", "qr", "spatial")

    def __init__(self, H: Tensor, path: str, max_rows: int, generator: torch.Generator) -> None:
        conv = H.ndim == 4  # (N, m) or (N, C, h, w)
        m = H.shape[1] if conv else H.shape[-1]
        Hmat = H.permute(0, 2, 3, 1).reshape(-1, m) if conv else H.reshape(-1, m)
        Hmat = _subsample_rows(Hmat, max_rows, generator) if conv else Hmat
        check_finite(f"activations after {path!r}", Hmat)
        H64 = Hmat.to(torch.float64)
        S = torch.linalg.svdvals(H64)
        if not bool(S.max() > 0):
            raise ValueError(
                f"data: the activations after layer {path!r} are all zero on the "
                "calibration inputs (a dead layer?), so there is nothing to keep; use other "
                "calibration data or leave this layer out with a dict variance"
            )
        self.singular_values = S
        self.rtol = S.numel() * torch.finfo(Hmat.dtype).eps
        self.qr = PivotedQR(H64)
        self.spatial = tuple(H.shape[2:]) if conv else None

    def select(self, variance: float) -> tuple[Tensor, Tensor]:
        """The kept units ``indices`` (k,) and ``T`` (k × m, float64) for ``variance``."""
        k = rank_for_energy(self.singular_values, variance, rtol=self.rtol)
        return self.qr.interpolative(k)


def _prune_interpolative(
    leaves: list[Leaf],
    positions: list[int],
    variances: list[float | None],
    prefix: _Prefix,
    changes: dict,
    max_rows: int,
) -> None:
    """Chee et al.: keep the units an interpolative decomposition selects, fold T forward.

    ``prefix`` holds the first layer's calibration inputs and, below it, the inputs and
    decompositions of every layer for the upstream widths already met.
    """
    last = len(positions) - 2
    for idx, (a, b) in enumerate(zip(positions, positions[1:], strict=False)):
        producer, consumer = leaves[a], leaves[b]
        between_leaves = leaves[a + 1 : b]
        _, flatten_at = check_between(producer, consumer, between_leaves)
        between = [leaf.module for leaf in between_leaves]
        pre = between if flatten_at is None else between[:flatten_at]
        post = [] if flatten_at is None else between[flatten_at:]
        k = None
        if variances[idx] is not None:
            if prefix.decomposition is None:
                H = forward_chain([producer.module, *pre], prefix.inputs)
                generator = _copy_generator(prefix.rows)  # draws the rows of conv maps
                prefix.decomposition = _UnitSelection(H, producer.path, max_rows, generator)
                prefix.rows_after = generator
            selection = prefix.decomposition
            indices, T = selection.select(variances[idx])
            k, m = T.shape
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
                consumer.replace(new_conv(Wn_new, bn if has_bias_n else None, consumer.module))
            elif selection.spatial is not None:  # Flatten -> Linear: fold T at every position
                h, w = selection.spatial
                if Wn.shape[1] != m * h * w:
                    raise ValueError(
                        f"{consumer.path!r} expects {Wn.shape[1]} inputs but the flattened "
                        f"maps have {m}×{h}×{w} = {m * h * w}"
                    )
                Wn_new = torch.einsum("oip,ji->ojp", Wn.reshape(Wn.shape[0], m, h * w), T)
                consumer.replace(
                    new_linear(
                        Wn_new.reshape(Wn.shape[0], k * h * w),
                        bn if has_bias_n else None,
                        consumer.module,
                    )
                )
            else:
                consumer.replace(new_linear(Wn @ T.T, bn if has_bias_n else None, consumer.module))
            unit = "channels" if isinstance(producer.module, nn.Conv2d) else "units"
            _record(changes, producer.path, "interpolative", k, f"{m} -> {k} {unit}")
            _record(changes, consumer.path, "input_folded", None, f"inputs {m} -> {k} {unit}")
        if idx < last:  # the next layer's inputs, from this layer as pruned
            prefix = prefix.child(k, [producer.module, *pre, *post], narrowed=k is not None)
