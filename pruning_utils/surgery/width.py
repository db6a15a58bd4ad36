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
from pruning_utils.linalg import interpolative_decomposition, pca, rank_for_energy, truncated_svd
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

__all__ = ["PCA_METHODS", "pca_prune", "fold_batchnorm"]

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
        Draws the row subset for convolutions: an int seed (default 0, reproducible), a
        ``torch.Generator`` (the subset is drawn on its device), or ``None`` for torch's
        global generator.

    Returns
    -------
    nn.Sequential
        The pruned model, with ``pruning_report``.
    """
    check_model(model)
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            "model must be an nn.Sequential chain (e.g. Flatten, Linear, ReLU, ..., Linear), "
            f"got {type(model).__name__}; build the chain as an nn.Sequential to prune its widths"
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
    check_bool("inplace", inplace)
    max_rows = check_int("max_rows", max_rows)

    kinds = (nn.Linear, nn.Conv2d) if method == "interpolative" else (nn.Linear,)
    check_not_shared(model, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d), "pca_prune")
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
    hidden = [chain[pos].path for pos in positions[:-1]]
    variances = per_layer_fractions("variance", variance, hidden)

    # validate the segments on the original (BatchNorm directly after a layer is foldable)
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

    # calibration inputs of the first layer, from the (untouched) modules before it
    X = None if method == "weights" else _calibration_inputs(model, chain, positions[0], data)
    gen = check_generator(generator)  # draws the rows of a convolution's activation matrix

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
        if method == "weights":
            _prune_weights(chain, positions, variances, changes)
        else:
            with eval_mode(work), torch.no_grad():
                if method == "activations":
                    _prune_activations(chain, positions, variances, X, changes)
                else:
                    _prune_interpolative(chain, positions, variances, X, changes, max_rows, gen)
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
        method=method,
        data_aware=data is not None,
    )
    return run_transform("pca_prune", model, settings, body, inplace=inplace, kinds=kinds)


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
                leaf.replace(new_linear(W_in, None if layer.bias is None else b, layer))
                note = f"inputs projected to {W_in.shape[1]}"
                _record(changes, leaf.path, "input_folded", None, note)
            P_prev = None
            continue
        Wc = W - W.mean(dim=0, keepdim=True)  # centre the columns (mean over output units)
        U, S, _ = truncated_svd(Wc, min(Wc.shape))
        j = rank_for_energy(S, variances[idx])  # 1 when W_c = 0
        P = U[:, :j]  # m_i × j
        leaf.replace(new_linear(P.T @ W_in, P.T @ b if layer.bias is not None else None, layer))
        _record(changes, leaf.path, "pca_weights", j, f"{W.shape[0]} -> {j} units")
        P_prev = P


def _prune_activations(
    leaves: list[Leaf],
    positions: list[int],
    variances: list[float | None],
    X: Tensor,
    changes: dict,
) -> None:
    """Levin et al.: PCA of the hidden representation, merged or as a bottleneck."""
    for idx, (a, b) in enumerate(zip(positions, positions[1:], strict=False)):
        producer, consumer = leaves[a], leaves[b]
        between = [leaf.module for leaf in leaves[a + 1 : b]]
        linear = all(isinstance(m, PASS_THROUGH) for m in between)
        H = forward_chain(between, producer.module(X))
        if variances[idx] is not None:
            m = H.shape[-1]
            try:
                res = pca(H.reshape(-1, m), variance=variances[idx])
            except ValueError as err:
                raise ValueError(
                    f"data: the activations after layer {producer.path!r}: {err}"
                ) from err
            P = res.components.to(torch.float64)  # k × m
            mu = res.mean.to(torch.float64)  # m
            k = P.shape[0]
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
        X = forward_chain(between, producer.module(X))


def _subsample_rows(H: Tensor, max_rows: int, generator: torch.Generator | None) -> Tensor:
    if H.shape[0] <= max_rows:
        return H
    device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randperm(H.shape[0], generator=generator, device=device)[:max_rows].to(H.device)
    return H[idx]


def _prune_interpolative(
    leaves: list[Leaf],
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
        _, flatten_at = check_between(producer, consumer, between_leaves)
        between = [leaf.module for leaf in between_leaves]
        pre = between if flatten_at is None else between[:flatten_at]
        post = [] if flatten_at is None else between[flatten_at:]
        if variances[idx] is not None:
            H = forward_chain(pre, producer.module(X))  # (N, m) or (N, C, h, w)
            conv = H.ndim == 4
            m = H.shape[1] if conv else H.shape[-1]
            Hmat = H.permute(0, 2, 3, 1).reshape(-1, m) if conv else H.reshape(-1, m)
            Hmat = _subsample_rows(Hmat, max_rows, generator) if conv else Hmat
            check_finite(f"activations after {producer.path!r}", Hmat)
            S = torch.linalg.svdvals(Hmat.to(torch.float64))
            if not bool(S.max() > 0):
                raise ValueError(
                    f"data: the activations after layer {producer.path!r} are all zero on the "
                    "calibration inputs (a dead layer?), so there is nothing to keep; use other "
                    "calibration data or leave this layer out with a dict variance"
                )
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
                consumer.replace(new_conv(Wn_new, bn if has_bias_n else None, consumer.module))
            elif conv:  # Flatten -> Linear: fold T at every spatial position
                hw = H.shape[2] * H.shape[3]
                if Wn.shape[1] != m * hw:
                    raise ValueError(
                        f"{consumer.path!r} expects {Wn.shape[1]} inputs but the flattened "
                        f"maps have {m}×{H.shape[2]}×{H.shape[3]} = {m * hw}"
                    )
                Wn_new = torch.einsum("oip,ji->ojp", Wn.reshape(Wn.shape[0], m, hw), T)
                consumer.replace(
                    new_linear(
                        Wn_new.reshape(Wn.shape[0], k * hw),
                        bn if has_bias_n else None,
                        consumer.module,
                    )
                )
            else:
                consumer.replace(new_linear(Wn @ T.T, bn if has_bias_n else None, consumer.module))
            unit = "channels" if isinstance(producer.module, nn.Conv2d) else "units"
            _record(changes, producer.path, "interpolative", k, f"{m} -> {k} {unit}")
            _record(changes, consumer.path, "input_folded", None, f"inputs {m} -> {k} {unit}")
        X = forward_chain(post, forward_chain(pre, producer.module(X)))

