"""Transforms of a pre-norm transformer: slice the residual stream, remove heads and MLP units.

The model is a pre-norm vision transformer such as ``build_model("vit")``: a patch
embedding ``embed`` (a Linear ``proj``, a ``cls_token`` and a ``position`` embedding) that
writes the residual stream ``x`` (``N × T × d``), blocks that read it through an RMSNorm
(``norm1``, ``norm2``) and add to it (``attn`` with Linear ``q``, ``k``, ``v``, ``out``;
``mlp`` with Linear ``up``, ``down``), a final RMSNorm ``norm`` and a Linear ``head``.

==================  ========================================================================
``slice_stream``    rotate the residual stream onto its principal axes (``Q`` from the PCA of
                    the stream on calibration data, folded into every weight that reads or
                    writes it) and keep its leading ``d'`` components (SliceGPT, Ashkboos et
                    al. 2024); ``keep=1`` is the rotation alone, the same function
``StreamFit``       the PCA behind ``slice_stream``, computed once, sliced at any width
``prune_heads``     keep ``k`` of the ``H`` heads of every block, chosen by the interpolative
                    decomposition of the heads' contributions; the least-squares correction
                    is folded into the output projection
``HeadFit``         the captured head outputs and pivoted QRs behind ``prune_heads``
``prune_units``     keep ``k`` of the ``d_ff`` hidden units of every MLP by the interpolative
                    decomposition of their activations; ``T`` folded into the down projection
``UnitFit``         the pivoted QRs behind ``prune_units``
==================  ========================================================================

Low rank of the projections needs nothing new: :func:`~pruning_utils.surgery.low_rank`
(plain or whitened with ``data=``) factorizes every ``nn.Linear`` of the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pruning_utils.linalg import PivotedQR, rank_for_energy
from pruning_utils.nnutils import capture_inputs
from pruning_utils.surgery.report import LayerChange, PruningReport, count
from pruning_utils.surgery.transform import run_transform
from pruning_utils.surgery.tree import describe_first_layer, new_linear
from pruning_utils.validation import (
    check_bool,
    check_exactly_one,
    check_fraction,
    check_model,
)

__all__ = [
    "TransformerParts",
    "transformer_parts",
    "StreamFit",
    "slice_stream",
    "HeadFit",
    "prune_heads",
    "UnitFit",
    "prune_units",
]

_EXPECTED = (
    "a pre-norm transformer such as build_model('vit'): children 'embed' (with a Linear "
    "'proj', 'cls_token' and 'position'), blocks with 'norm1', 'attn' (Linear q, k, v, out), "
    "'norm2', 'mlp' (Linear up, down), then 'norm' (RMSNorm) and a Linear 'head'"
)


@dataclass
class TransformerParts:
    """Where the residual stream is written and read in one model (see :func:`transformer_parts`).

    Attributes
    ----------
    embed:
        The patch embedding (writes the stream: ``proj``, ``cls_token``, ``position``).
    blocks:
        ``(path, block)`` of every encoder block, in order.
    norm:
        The final normalization.
    head:
        The classifier (reads the normalized class token).
    """

    embed: nn.Module
    blocks: list[tuple[str, nn.Module]]
    norm: nn.Module
    head: nn.Linear

    @property
    def dim(self) -> int:
        """Width ``d`` of the residual stream."""
        return int(self.embed.cls_token.shape[-1])

    def stream_inputs(self) -> list[str]:
        """Paths of the normalizations, whose inputs are the residual stream."""
        return [f"{p}.{n}" for p, _ in self.blocks for n in ("norm1", "norm2")] + ["norm"]


def _is_linear(module: object) -> bool:
    return type(module) is nn.Linear


def transformer_parts(model: nn.Module, *, plain: bool = True) -> TransformerParts:
    """Find the embedding, blocks, final norm and head of a pre-norm transformer.

    Raises a ValueError naming what is missing when ``model`` does not have the expected
    structure. With ``plain`` every projection must still be a plain ``nn.Linear`` (not
    factorized), as the transforms here rebuild them.
    """
    check_model(model)
    children = dict(model.named_children())
    embed, norm, head = children.get("embed"), children.get("norm"), children.get("head")
    problems = []
    if embed is None or not all(hasattr(embed, a) for a in ("proj", "cls_token", "position")):
        problems.append("no child 'embed' with proj, cls_token and position")
    if norm is None or not hasattr(norm, "mean_over"):
        problems.append("no child 'norm' that is an RMSNorm (LayerNorm does not commute with "
                        "rotations: train with RMSNorm, or fold its centring into the weights)")
    if not isinstance(head, nn.Module) or not hasattr(head, "in_features"):
        problems.append("no Linear child 'head'")
    blocks = [(name, child) for name, child in children.items()
              if all(hasattr(child, a) for a in ("norm1", "attn", "norm2", "mlp"))]
    if not blocks:
        problems.append("no encoder block (a child with norm1, attn, norm2, mlp)")
    if problems:
        raise ValueError(f"model must be {_EXPECTED}; found {'; '.join(problems)}")
    for name, block in blocks:
        attn, mlp = block.attn, block.mlp
        layers = {f"{name}.attn.{p}": getattr(attn, p, None) for p in ("q", "k", "v", "out")}
        layers |= {f"{name}.mlp.{p}": getattr(mlp, p, None) for p in ("up", "down")}
        missing = [p for p, m in layers.items() if not isinstance(m, nn.Module)]
        if missing or not hasattr(attn, "heads") or not hasattr(attn, "head_dim"):
            raise ValueError(
                f"model must be {_EXPECTED}; block {name!r} lacks {missing or 'heads'}")
        for norm_name in ("norm1", "norm2"):
            if not hasattr(getattr(block, norm_name), "mean_over"):
                raise ValueError(
                    f"model must be {_EXPECTED}; {name}.{norm_name} is a "
                    f"{type(getattr(block, norm_name)).__name__}, not an RMSNorm")
        if plain:
            factorized = [p for p, m in layers.items() if not _is_linear(m)]
            if factorized:
                raise ValueError(
                    f"the layers {factorized} are not plain nn.Linear (already factorized or "
                    "randomized?); apply this transform before low rank")
    if plain and not (_is_linear(head) and _is_linear(embed.proj)):
        raise ValueError("embed.proj and head must be plain nn.Linear; apply this transform "
                         "before low rank")
    return TransformerParts(embed, blocks, norm, head)


def _capture(model: nn.Module, data: object, names: list[str]) -> dict[str, Tensor]:
    if data is None:
        raise ValueError("data is required: calibration inputs (a batch of images or a loader)")
    try:
        return capture_inputs(model, data, names)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"data does not fit the model: {describe_first_layer(model)} ({err})") from err


def _row(name: str, change: str, old: nn.Module, new: nn.Module, **extra) -> LayerChange:
    return LayerChange(name, change, tuple(old.weight.shape), tuple(new.weight.shape),
                       count(old), count(new), **extra)


def _width(name: str, keep: float, total: int) -> int:
    """``max(1, round(keep · total))`` units of ``total`` for a fraction ``keep``."""
    return max(1, min(total, round(check_fraction(name, keep) * total)))


# ----------------------------------------------------------------------------- the stream


class StreamFit:
    """The principal axes of a transformer's residual stream, computed once.

    ``StreamFit(model, data)`` runs ``data`` through the model and collects the residual
    stream where every normalization reads it (the input of each ``norm1``, ``norm2`` and of
    the final ``norm``: every token of every example at every depth, ``M`` rows of width
    ``d``). Its uncentred second moment ``C = XᵀX / M`` has eigenvectors ``Q`` (``d × d``,
    orthogonal, columns by decreasing eigenvalue); ``prune(keep=...)`` or
    ``prune(variance=...)`` returns the model rotated by ``Q`` and sliced to ``d'`` columns
    (:func:`slice_stream`).

    Parameters
    ----------
    model:
        The trained transformer (never modified); its projections must be plain Linear.
    data:
        Calibration inputs (a tensor batch or a loader).
    """

    def __init__(self, model: nn.Module, data: Tensor | Iterable) -> None:
        self.model = check_model(model)
        parts = transformer_parts(model)
        self.dim = parts.dim
        stream = _capture(model, data, parts.stream_inputs())
        X = torch.cat([x.reshape(-1, self.dim) for x in stream.values()]).to(torch.float64)
        if not bool(torch.isfinite(X).all()):
            raise ValueError("data: the residual stream is not finite on these inputs")
        C = X.mT @ X / X.shape[0]
        eigenvalues, Q = torch.linalg.eigh(C)  # increasing
        #: Eigenvalues of ``C``, decreasing (float64).
        self.eigenvalues = eigenvalues.flip(0).clamp(min=0.0)
        #: The rotation ``Q`` (``d × d``, float64): column ``i`` is the ``i``-th principal axis.
        self.rotation = Q.flip(1)

    def width_for(self, keep: float | None = None, variance: float | None = None) -> int:
        """``d'`` for a fraction ``keep`` of ``d`` or a fraction ``variance`` of ``tr C``."""
        if check_exactly_one(keep=keep, variance=variance) == "keep":
            return _width("keep", keep, self.dim)
        S = self.eigenvalues.sqrt()  # the singular values of X / √M
        return rank_for_energy(S, check_fraction("variance", variance),
                               rtol=self.dim * torch.finfo(torch.float32).eps)

    def prune(
        self, keep: float | None = None, variance: float | None = None, *, inplace: bool = False
    ) -> nn.Module:
        """The model rotated and sliced to ``d'`` components (see :func:`slice_stream`)."""
        width = self.width_for(keep, variance)
        Q = self.rotation[:, :width]
        settings = dict(keep=keep, variance=variance, width=width, dim=self.dim)
        return run_transform("slice_stream", self.model, settings,
                             lambda work, report: _rotate(work, Q, report), inplace=inplace)


def _fold_scale(norm: nn.Module, readers: list[nn.Linear]) -> list[Tensor]:
    """The readers' weights ``W diag(g)`` (float64): the norm's scale ``g`` folded in."""
    g = None if norm.weight is None else norm.weight.detach().to(torch.float64)
    out = []
    for layer in readers:
        W = layer.weight.detach().to(torch.float64)
        out.append(W if g is None else W * g)
    return out


def _plain_norm(norm: nn.Module, width: int) -> nn.Module:
    """A scale-free norm of width ``width`` averaging over the original ``mean_over``."""
    ref = norm.weight if norm.weight is not None else None
    new = type(norm)(width, eps=norm.eps, affine=False, mean_over=norm.mean_over)
    if ref is not None:
        new.to(ref.device)
    new.train(norm.training)
    return new


def _reader(layer: nn.Linear, W: Tensor, Q: Tensor) -> nn.Linear:
    """``W Q`` (m × d'): a layer that reads the rotated stream."""
    b = None if layer.bias is None else layer.bias.detach()
    return new_linear((W @ Q).to(layer.weight.dtype), b, layer)


def _writer(layer: nn.Linear, Q: Tensor) -> nn.Linear:
    """``Qᵀ W`` (d' × n) and ``Qᵀ b``: a layer that writes the rotated stream."""
    W = layer.weight.detach().to(torch.float64)
    b = None if layer.bias is None else (Q.mT @ layer.bias.detach().to(torch.float64))
    dtype = layer.weight.dtype
    return new_linear((Q.mT @ W).to(dtype), None if b is None else b.to(dtype), layer)


def _rotate(work: nn.Module, Q: Tensor, report: PruningReport) -> None:
    """Fold the norms' scales, then ``Q`` (d × d'), into every weight touching the stream."""
    parts = transformer_parts(work)
    d, width = Q.shape
    change = "rotated" if width == d else "sliced"
    Q = Q.to(work.embed.proj.weight.device)

    def swap(parent: nn.Module, attr: str, new: nn.Module, path: str) -> None:
        report.layers.append(_row(path, change, getattr(parent, attr), new, width=width))
        setattr(parent, attr, new)

    embed = parts.embed
    swap(embed, "proj", _writer(embed.proj, Q), "embed.proj")
    with torch.no_grad():
        for attr in ("cls_token", "position"):
            old = getattr(embed, attr)
            new = (old.detach().to(torch.float64) @ Q).to(old.dtype)
            setattr(embed, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    embed.dim = width
    for path, block in parts.blocks:
        attn, mlp = block.attn, block.mlp
        for proj, W in zip(("q", "k", "v"), _fold_scale(block.norm1, [attn.q, attn.k, attn.v]),
                           strict=True):
            swap(attn, proj, _reader(getattr(attn, proj), W, Q), f"{path}.attn.{proj}")
        swap(attn, "out", _writer(attn.out, Q), f"{path}.attn.out")
        (W_up,) = _fold_scale(block.norm2, [mlp.up])
        swap(mlp, "up", _reader(mlp.up, W_up, Q), f"{path}.mlp.up")
        swap(mlp, "down", _writer(mlp.down, Q), f"{path}.mlp.down")
        block.norm1 = _plain_norm(block.norm1, width)
        block.norm2 = _plain_norm(block.norm2, width)
        attn.dim = mlp.dim = width
    (W_head,) = _fold_scale(parts.norm, [parts.head])
    swap(work, "head", _reader(parts.head, W_head, Q), "head")
    work.norm = _plain_norm(parts.norm, width)
    if hasattr(work, "dim"):
        work.dim = width


def slice_stream(
    model: nn.Module,
    keep: float | None = None,
    variance: float | None = None,
    *,
    data: Tensor | Iterable,
    inplace: bool = False,
) -> nn.Module:
    """Rotate the residual stream onto its principal axes and keep ``d'`` of them (SliceGPT).

    Every normalization is an RMSNorm, ``norm(x) = x / rms(x) ⊙ g``, and
    ``rms(x Q) = rms(x)`` for an orthogonal ``Q``. First each scale ``g`` is folded into the
    layers that read the normalized stream (``W ← W diag(g)``: ``q``, ``k``, ``v``, ``up``,
    ``head``), then with ``Q`` (``d × d``) from the PCA of the stream (:class:`StreamFit`):

    * layers that write the stream (``embed.proj``, ``attn.out``, ``mlp.down``):
      ``W ← Qᵀ W``, ``b ← Qᵀ b``; the class token and the position embedding: ``e ← e Q``;
    * layers that read it (``q``, ``k``, ``v``, ``up``, ``head``): ``W ← W Q``.

    The stream of the new model is ``x Q``, and its output is the original model's (up to
    round-off). Slicing keeps the first ``d'`` columns of ``Q``: every such matrix loses
    ``d − d'`` rows or columns. The sliced norms still divide by the mean square over ``d``
    (``mean_over``), so ``rms`` of the sliced vector approximates the full one.

    Parameters
    ----------
    model:
        The trained transformer (see :func:`transformer_parts`); left untouched unless
        ``inplace``.
    keep:
        Fraction of the width ``d`` kept: ``d' = round(keep · d)`` (``1.0``: rotation only).
    variance:
        Or: the fraction of the stream's energy ``tr C`` kept (the smallest ``d'`` whose
        leading eigenvalues reach it). Exactly one of keep, variance.
    data:
        Calibration inputs whose stream the PCA is taken of.
    inplace:
        Modify ``model`` itself instead of a copy.

    Returns
    -------
    nn.Module
        The rotated (and sliced) model with a ``pruning_report``.
    """
    check_bool("inplace", inplace)
    check_exactly_one(keep=keep, variance=variance)
    if keep is not None:
        check_fraction("keep", keep)
    else:
        check_fraction("variance", variance)
    return StreamFit(model, data).prune(keep, variance, inplace=inplace)


# ----------------------------------------------------------------------------- heads


class HeadFit:
    """The head outputs and their pivoted QRs behind :func:`prune_heads`, computed once.

    For every block, the input of ``attn.out`` on ``data`` is ``Z = [Z_1 … Z_H]`` (``M × H
    d_h``, ``M = N·T`` rows), and head ``h`` adds ``C_h = Z_h W_out,hᵀ`` (``M × d``) to the
    stream. The matrix whose column ``h`` is ``vec(C_h)`` is factored once by pivoted QR
    (:class:`~pruning_utils.linalg.PivotedQR`): its pivot order ranks the heads, the first
    ``k`` being the most linearly independent contributions.

    Parameters
    ----------
    model:
        The trained transformer (never modified).
    data:
        Calibration inputs.
    """

    def __init__(self, model: nn.Module, data: Tensor | Iterable) -> None:
        self.model = check_model(model)
        parts = transformer_parts(model)
        self.blocks = [p for p, _ in parts.blocks]
        names = [f"{p}.attn.out" for p in self.blocks]
        captured = _capture(model, data, names)
        self.outputs: dict[str, Tensor] = {}
        self.order: dict[str, list[int]] = {}
        for (path, block), name in zip(parts.blocks, names, strict=True):
            attn = block.attn
            Z = captured[name].reshape(-1, attn.heads * attn.head_dim).to(torch.float64)
            if not bool(torch.isfinite(Z).all()):
                raise ValueError(f"data: the head outputs of {path!r} are not finite")
            W = attn.out.weight.detach().to(torch.float64)
            contributions = torch.stack([
                (Z[:, _head_slice(attn, h)] @ W[:, _head_slice(attn, h)].mT).reshape(-1)
                for h in range(attn.heads)], dim=1)
            qr = PivotedQR(contributions)
            self.order[path] = [int(i) for i in qr.perm]
            self.outputs[path] = Z.cpu()  # the least-squares solve runs on the CPU (gelsd)

    def heads_for(self, keep: float) -> dict[str, list[int]]:
        """``{block: kept heads}`` (in pivot order) for a fraction ``keep`` of the heads."""
        kept = {}
        for path in self.blocks:
            H = len(self.order[path])
            kept[path] = self.order[path][: _width("keep", keep, H)]
        return kept

    def prune(self, keep: float, *, correct: bool = True, inplace: bool = False) -> nn.Module:
        """The model with ``round(keep · H)`` heads per block (see :func:`prune_heads`)."""
        check_bool("correct", correct)
        kept = self.heads_for(keep)

        def body(work: nn.Module, report: PruningReport) -> None:
            for path in self.blocks:
                _remove_heads(work.get_submodule(path).attn, path, kept[path],
                              self.outputs[path] if correct else None, report)

        settings = dict(keep=keep, correct=correct, kept={p: sorted(h) for p, h in kept.items()})
        return run_transform("prune_heads", self.model, settings, body, inplace=inplace)


def _head_slice(attn: nn.Module, h: int) -> slice:
    return slice(h * attn.head_dim, (h + 1) * attn.head_dim)


def _remove_heads(
    attn: nn.Module, path: str, kept: list[int], Z: Tensor | None, report: PruningReport
) -> None:
    """Keep heads ``kept`` of ``attn``; refit ``out`` on them when ``Z`` is given.

    The correction is the interpolation matrix of the kept columns: ``Z ≈ Z_J T`` with ``T
    = argmin ‖Z − Z_J T‖_F`` (the ``T`` of an interpolative decomposition whose kept columns
    come in groups of ``d_h``), folded as ``W_out ← W_out Tᵀ``.
    """
    kept = sorted(kept)
    columns = torch.cat([torch.arange(h * attn.head_dim, (h + 1) * attn.head_dim)
                         for h in kept]).to(attn.out.weight.device)
    W_out = attn.out.weight.detach()
    if Z is not None:
        Z_J = Z[:, columns.cpu()]
        T = torch.linalg.lstsq(Z_J, Z, driver="gelsd").solution  # (k d_h) × (H d_h), CPU
        W_new = (W_out.to(torch.float64) @ T.mT.to(W_out.device)).to(W_out.dtype)
    else:
        W_new = W_out[:, columns]
    for proj in ("q", "k", "v"):
        old = getattr(attn, proj)
        b = None if old.bias is None else old.bias.detach()[columns]
        new = new_linear(old.weight.detach()[columns], b, old)
        report.layers.append(_row(f"{path}.attn.{proj}", "heads", old, new, width=len(kept)))
        setattr(attn, proj, new)
    b_out = None if attn.out.bias is None else attn.out.bias.detach()
    new = new_linear(W_new, b_out, attn.out)
    report.layers.append(_row(f"{path}.attn.out", "heads_corrected" if Z is not None else
                              "heads", attn.out, new, width=len(kept),
                              note=f"kept heads {kept}"))
    attn.out = new
    attn.heads = len(kept)


def prune_heads(
    model: nn.Module,
    keep: float,
    *,
    data: Tensor | Iterable,
    correct: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """Keep ``round(keep · H)`` attention heads per block, chosen by interpolative decomposition.

    In every block, head ``h`` adds ``C_h = Z_h W_out,hᵀ`` to the residual stream. The
    heads whose contributions (as columns ``vec(C_h)``) come first in a column-pivoted QR
    are kept (:class:`HeadFit`), the rows of ``q``, ``k``, ``v`` and the columns of ``out``
    of the others removed. With ``correct`` the output projection is refitted on the kept
    heads, ``W_out ← W_out Tᵀ`` with ``T`` the least-squares ``Z ≈ Z_J T`` on the
    calibration data (the interpolative decomposition's correction, Chee et al. 2022);
    without it the removed heads' outputs are simply dropped, which is what zeroing them
    does. ``keep = 1`` (``correct`` or not) returns the same function.

    Parameters
    ----------
    model:
        The trained transformer (see :func:`transformer_parts`).
    keep:
        Fraction of the heads of each block kept, in ``(0, 1]`` (at least one head).
    data:
        Calibration inputs.
    correct:
        Fold the least-squares correction into ``attn.out``.
    inplace:
        Modify ``model`` itself instead of a copy.

    Returns
    -------
    nn.Module
        The pruned model; ``pruning_report.settings["kept"]`` lists the heads kept per block.
    """
    check_fraction("keep", keep)
    check_bool("correct", correct)
    check_bool("inplace", inplace)
    return HeadFit(model, data).prune(keep, correct=correct, inplace=inplace)


# ----------------------------------------------------------------------------- MLP units


class UnitFit:
    """The pivoted QRs of the MLP activations behind :func:`prune_units`, computed once.

    For every block, the activations ``A = GELU(up(norm2(x)))`` (``M × d_ff``) on ``data``
    are factored once by :class:`~pruning_utils.linalg.PivotedQR`; any width then costs one
    triangular solve per block.
    """

    def __init__(self, model: nn.Module, data: Tensor | Iterable) -> None:
        self.model = check_model(model)
        parts = transformer_parts(model)
        self.blocks = [p for p, _ in parts.blocks]
        names = [f"{p}.mlp.down" for p in self.blocks]
        captured = _capture(model, data, names)
        self.qr: dict[str, PivotedQR] = {}
        for (path, block), name in zip(parts.blocks, names, strict=True):
            A = captured[name].reshape(-1, block.mlp.up.out_features)
            if not bool(torch.isfinite(A).all()):
                raise ValueError(f"data: the MLP activations of {path!r} are not finite")
            self.qr[path] = PivotedQR(A)

    def prune(self, keep: float, *, inplace: bool = False) -> nn.Module:
        """The model with ``round(keep · d_ff)`` units per MLP (see :func:`prune_units`)."""
        check_fraction("keep", keep)
        choices = {}
        for path, qr in self.qr.items():
            choices[path] = qr.interpolative(_width("keep", keep, qr.shape[1]))

        def body(work: nn.Module, report: PruningReport) -> None:
            for path in self.blocks:
                mlp = work.get_submodule(path).mlp
                indices, T = choices[path]
                indices = indices.to(mlp.up.weight.device)
                up, down = mlp.up, mlp.down
                b = None if up.bias is None else up.bias.detach()[indices]
                new_up = new_linear(up.weight.detach()[indices], b, up)
                W = down.weight.detach()
                new_down = new_linear(
                    (W.to(torch.float64) @ T.to(W.device, torch.float64).mT).to(W.dtype),
                    None if down.bias is None else down.bias.detach(), down)
                report.layers.append(_row(f"{path}.mlp.up", "interpolative", up, new_up,
                                          width=len(indices)))
                report.layers.append(_row(f"{path}.mlp.down", "input_folded", down, new_down,
                                          width=len(indices)))
                mlp.up, mlp.down, mlp.hidden = new_up, new_down, len(indices)

        return run_transform("prune_units", self.model, dict(keep=keep), body, inplace=inplace)


def prune_units(
    model: nn.Module, keep: float, *, data: Tensor | Iterable, inplace: bool = False
) -> nn.Module:
    """Keep ``round(keep · d_ff)`` hidden units of every MLP, by interpolative decomposition.

    Chapter 3's method on the MLP of each block: with the activations ``A ≈ A[:, J] T``
    (:func:`~pruning_utils.linalg.interpolative_decomposition` of the ``M × d_ff``
    activations on ``data``), the rows ``J`` of ``up`` are kept and ``T`` is folded into
    the next matrix, ``W_down ← W_down Tᵀ`` (``d × k``). Every block is decomposed on the
    activations of the original model.

    Parameters
    ----------
    model:
        The trained transformer (see :func:`transformer_parts`).
    keep:
        Fraction of each MLP's hidden units kept, in ``(0, 1]``.
    data:
        Calibration inputs.
    inplace:
        Modify ``model`` itself instead of a copy.
    """
    check_fraction("keep", keep)
    check_bool("inplace", inplace)
    return UnitFit(model, data).prune(keep, inplace=inplace)
