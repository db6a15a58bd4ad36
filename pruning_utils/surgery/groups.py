"""Width pruning through residual and concatenated blocks: channel groups found by tracing.

A ResNet adds the maps of a block to its input, a DenseNet concatenates every layer's maps
to the maps before it. The channels on the two sides of such an addition are the *same*
channels — drop channel 5 of one side and channel 5 of the sum is wrong — so a width
pruning method must prune them together. :func:`channel_groups` finds them: it traces the
model with ``torch.fx``, follows every channel from the convolution (or Linear layer) that
produces it through element-wise and channel-wise operations (activations, BatchNorm,
pooling), additions (which *tie* the channels of their two sides) and concatenations
(which *stack* them), and groups the channels that the same layers read. One group is one
space of channels: every layer that reads one of its channels reads all of them.

:func:`group_prune` then chooses the channels each group keeps from the activations, with
the interpolative decomposition of Chee et al. (2022) that :func:`~pruning_utils.surgery.pca_prune`
uses for chains: ``H`` stacks what every reader of the group receives
(one row per image and position, one column per channel), a pivoted QR keeps the columns
``S`` and gives ``T`` (k × m) with ``H ≈ H[:, S] T``, every producer keeps its rows ``S``
and every reader absorbs ``T`` (``W ← W Tᵀ`` over its input channels). Additions,
activations, BatchNorm and pooling commute with keeping a subset of channels, so the kept
channels are computed exactly; only the readers approximate the dropped ones. BatchNorm
directly after a convolution is folded into it first; a BatchNorm that reads a
concatenation (DenseNet's pre-activation) is sliced.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pruning_utils.linalg import rank_for_energy
from pruning_utils.nnutils import batches, eval_mode, to_model
from pruning_utils.surgery.report import LayerChange, count, layer_shape
from pruning_utils.surgery.transform import per_layer_fractions, run_transform
from pruning_utils.surgery.tree import (
    CHANNEL_POOLS,
    PASS_THROUGH,
    check_not_shared,
    check_weights,
    fold_into,
    is_elementwise,
    new_conv,
    new_linear,
    sliced_batchnorm,
)
from pruning_utils.surgery.width import _copy_generator, _subsample_rows, _UnitSelection
from pruning_utils.validation import (
    check_bool,
    check_choice,
    check_exactly_one,
    check_finite,
    check_generator,
    check_int,
    check_model,
)

__all__ = [
    "GROUP_CRITERIA", "ChannelGroup", "GroupFit", "LayerUse", "channel_groups", "group_prune",
]

#: How :func:`group_prune` chooses the kept channels of a group.
GROUP_CRITERIA: tuple[str, ...] = ("interpolative", "l1")

_UNARY_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.hardswish,
    F.hardtanh, torch.sigmoid, torch.tanh, F.dropout, F.dropout2d, F.max_pool2d,
    F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.clone,
}
_UNARY_METHODS = {
    "relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float",
}
_BINARY = {
    operator.add, operator.iadd, operator.sub, operator.mul, operator.imul,
    operator.truediv, torch.add, torch.sub, torch.mul,
}
_BINARY_METHODS = {"add", "add_", "sub", "mul", "mul_"}


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned together: one space that the same layers read.

    Attributes
    ----------
    name:
        The path of its first producer in execution order (``"layer1.0.conv2"``); the key
        of a per-group ``variance`` / ``keep`` / ``widths`` dict.
    width:
        Number of channels ``m``.
    producers:
        Layers (Conv2d, Linear) whose output rows are these channels: more than one when
        an addition ties them (a ResNet stage: the stem or projection and every block's
        last convolution).
    readers:
        Layers (Conv2d, Linear) that read them; each absorbs ``T``.
    sliced:
        BatchNorm layers between producers and readers that are not folded (they read a
        concatenation) and lose the dropped channels.
    prunable:
        False when a channel reaches the model's output, the input, or an operation the
        tracer does not know (``reason`` says which).
    reason:
        Why the group is kept whole (empty when prunable).
    """

    name: str
    width: int
    producers: tuple[str, ...]
    readers: tuple[str, ...]
    sliced: tuple[str, ...] = ()
    prunable: bool = True
    reason: str = ""


@dataclass
class _Read:
    """A layer that reads channels: its path, the channel of each input position, the
    features per channel (``h·w`` after a Flatten, else 1), whether it is a Conv2d and the
    shape of one input (without the batch dimension)."""

    path: str
    ids: list[int]
    per: int
    conv: bool
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class LayerUse:
    """One Conv2d or Linear layer of a traced network, as the groups see it.

    Attributes
    ----------
    path:
        Module path.
    input_shape:
        Shape of one input (``(c_in, h, w)`` or ``(features,)``).
    inputs:
        ``{group name: input channels from it}``; channels of no prunable group (the
        network's input, a group kept whole) under ``None``.
    output:
        The prunable group its output rows belong to, or ``None``.
    per:
        Input features per channel (``h·w`` for a Linear after ``Flatten``, else 1).
    """

    path: str
    input_shape: tuple[int, ...]
    inputs: dict
    output: str | None
    per: int = 1


@dataclass
class _Graph:
    """What tracing found: channel ids of each producer's rows, each reader's input and each
    sliced BatchNorm's input, the union-find of tied ids and the ids that must stay."""

    parent: list[int] = field(default_factory=list)
    fixed: dict[int, str] = field(default_factory=dict)
    produced: dict[str, list[int]] = field(default_factory=dict)
    reads: dict[str, _Read] = field(default_factory=dict)
    channelwise: dict[str, list[int]] = field(default_factory=dict)
    folds: list[tuple[str, str]] = field(default_factory=list)

    def fresh(self, n: int, fixed: str | None = None) -> list[int]:
        ids = list(range(len(self.parent), len(self.parent) + n))
        self.parent.extend(ids)
        if fixed:
            for i in ids:
                self.fixed.setdefault(i, fixed)
        return ids

    def root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def tie(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def fix(self, ids: Iterable[int], reason: str) -> None:
        for i in ids:
            self.fixed.setdefault(i, reason)


def _trace(model: nn.Module, example: Tensor) -> fx.GraphModule:
    """``model`` traced by ``torch.fx`` with shapes propagated on ``example``."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception as err:  # TraceError, TypeError, NotImplementedError, ...
        raise ValueError(
            f"group pruning traces the model with torch.fx to find the channels tied by "
            f"additions and concatenations, and tracing a {type(model).__name__} failed "
            f"({type(err).__name__}: {err}). Control flow that depends on the values of "
            "tensors cannot be traced; make forward() traceable, or prune an nn.Sequential "
            "chain with pca_prune"
        ) from err
    try:
        with torch.no_grad():
            ShapeProp(traced).propagate(example)
    except RuntimeError as err:
        raise ValueError(
            f"data does not fit the model: its first batch of shape {tuple(example.shape)} "
            f"failed in the traced forward ({err})"
        ) from err
    return traced


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _nodes_in(arg) -> list[fx.Node]:
    if isinstance(arg, fx.Node):
        return [arg]
    if isinstance(arg, (list, tuple)):
        return [n for a in arg for n in _nodes_in(a)]
    if isinstance(arg, dict):
        return [n for a in arg.values() for n in _nodes_in(a)]
    return []


def _analyse(model: nn.Module, traced: fx.GraphModule) -> _Graph:
    """Follow every channel through the traced graph (see the module docstring)."""
    graph = _Graph()
    chan: dict[fx.Node, tuple[list[int], int]] = {}  # node -> (channel ids, features each)
    users = {node: len(node.users) for node in traced.graph.nodes}
    calls: dict[str, int] = {}

    def opaque(node: fx.Node, why: str) -> None:
        for arg in _nodes_in((node.args, node.kwargs)):
            if arg in chan:
                graph.fix(chan[arg][0], why)
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            chan[node] = (graph.fresh(shape[1], why), 1)

    def flatten(node: fx.Node, source: fx.Node) -> None:
        shape_in, shape_out = _shape(source), _shape(node)
        if source not in chan or shape_out is None:
            return opaque(node, f"{node.name} (flatten of an untracked tensor)")
        ids, per = chan[source]
        if len(shape_out) == 2 and shape_in is not None and shape_out[1] == len(ids) * per * (
            math.prod(shape_in[2:]) if len(shape_in) > 2 else 1
        ):
            spatial = math.prod(shape_in[2:]) if len(shape_in) > 2 else 1
            chan[node] = (ids, per * spatial)
        elif shape_out == shape_in:
            chan[node] = chan[source]
        else:
            opaque(node, f"{node.name} (a reshape that mixes the channel dimension)")

    def binary(node: fx.Node, a, b) -> None:
        tensors = [x for x in (a, b) if isinstance(x, fx.Node) and x in chan]
        if len(tensors) == 1 and not any(
            isinstance(x, fx.Node) and x not in chan and _shape(x) for x in (a, b)
        ):
            chan[node] = chan[tensors[0]]  # a tensor and a number
            return
        if len(tensors) == 2:
            (ia, pa), (ib, pb) = chan[tensors[0]], chan[tensors[1]]
            if len(ia) == len(ib) and pa == pb and _shape(tensors[0]) == _shape(tensors[1]):
                for x, y in zip(ia, ib, strict=True):
                    graph.tie(x, y)
                chan[node] = (ia, pa)
                return
        opaque(node, f"{node.name} (an element-wise operation on tensors of other shapes)")

    for node in traced.graph.nodes:
        if node.op == "placeholder":
            shape = _shape(node)
            if shape is not None and len(shape) >= 2:
                chan[node] = (graph.fresh(shape[1], "the model's input"), 1)
        elif node.op == "get_attr":
            shape = _shape(node)
            if shape is not None and len(shape) >= 2:
                chan[node] = (graph.fresh(shape[1], f"{node.target} (a tensor attribute)"), 1)
        elif node.op == "output":
            for arg in _nodes_in(node.args):
                if arg in chan:
                    graph.fix(chan[arg][0], "the model's output")
        elif node.op == "call_module":
            path = str(node.target)
            module = traced.get_submodule(path)
            source = node.args[0] if node.args else None
            known = isinstance(source, fx.Node) and source in chan and len(node.args) == 1
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
                calls[path] = calls.get(path, 0) + 1
                if calls[path] > 1:
                    raise ValueError(
                        f"group pruning cannot prune a model that calls the layer {path!r} "
                        "twice in its forward: its weights would serve two places of different "
                        "widths; give each call its own module"
                    )
            shape_in = _shape(source) if known else None
            if not known:
                opaque(node, f"{path} ({type(module).__name__} with inputs not traced)")
            elif isinstance(module, nn.Conv2d) and module.groups == 1:
                ids, per = chan[source]
                graph.reads[path] = _Read(path, ids, per, conv=True, shape=shape_in[1:])
                chan[node] = (graph.fresh(module.out_channels), 1)
                graph.produced[path] = chan[node][0]
            elif isinstance(module, nn.Linear) and shape_in is not None and len(shape_in) == 2:
                ids, per = chan[source]
                graph.reads[path] = _Read(path, ids, per, conv=False, shape=shape_in[1:])
                chan[node] = (graph.fresh(module.out_features), 1)
                graph.produced[path] = chan[node][0]
            elif type(module) in (nn.BatchNorm1d, nn.BatchNorm2d):
                producer = source.target if source.op == "call_module" else None
                layer = traced.get_submodule(producer) if producer else None
                if (
                    layer is not None
                    and users[source] == 1
                    and isinstance(layer, (nn.Conv2d, nn.Linear))
                    and module.running_mean is not None
                    and (type(module) is nn.BatchNorm2d) == isinstance(layer, nn.Conv2d)
                ):
                    graph.folds.append((str(producer), path))
                elif module.running_mean is None:
                    opaque(node, f"{path} (BatchNorm without running statistics)")
                    continue
                else:
                    graph.channelwise[path] = chan[source][0]
                chan[node] = chan[source]
            elif (
                isinstance(module, PASS_THROUGH + CHANNEL_POOLS) or is_elementwise(module)
            ):
                chan[node] = chan[source]
            elif isinstance(module, nn.Flatten):
                if module.start_dim != 1 or module.end_dim != -1:
                    opaque(node, f"{path} (a Flatten other than start_dim=1)")
                else:
                    flatten(node, source)
            else:
                opaque(node, f"{path} ({type(module).__name__}, not a layer group pruning knows)")
        elif node.op == "call_function":
            fn = node.target
            args = node.args
            if fn in _UNARY_FUNCTIONS and args and isinstance(args[0], fx.Node) and args[0] in chan:
                chan[node] = chan[args[0]]
            elif fn in _BINARY and len(args) == 2:
                binary(node, *args)
            elif fn is torch.flatten and args and args[0] in chan:
                start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
                end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
                if start == 1 and end == -1:
                    flatten(node, args[0])
                else:
                    opaque(node, f"{node.name} (a flatten other than start_dim=1)")
            elif fn is torch.cat:
                parts = args[0] if args else node.kwargs.get("tensors", ())
                dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
                shapes = [_shape(p) if isinstance(p, fx.Node) else None for p in parts]
                ok = (
                    all(isinstance(p, fx.Node) and p in chan for p in parts)
                    and all(s is not None for s in shapes)
                    and dim in (1, 1 - len(shapes[0]))
                    and len({chan[p][1] for p in parts}) == 1
                )
                if ok:
                    chan[node] = ([i for p in parts for i in chan[p][0]], chan[parts[0]][1])
                else:
                    opaque(node, f"{node.name} (a concatenation along another dimension)")
            elif fn is getattr or fn is operator.getitem:
                opaque(node, f"{node.name} ({getattr(fn, '__name__', fn)})")
            else:
                opaque(node, f"{node.name} ({getattr(fn, '__name__', fn)}, an operation "
                       "group pruning does not know)")
        elif node.op == "call_method":
            name, args = node.target, node.args
            source = args[0] if args else None
            if name in ("size", "dim"):
                continue
            if name in _UNARY_METHODS and source in chan:
                chan[node] = chan[source]
            elif name in _BINARY_METHODS and len(args) == 2:
                binary(node, *args)
            elif name in ("flatten", "view", "reshape") and source in chan:
                flatten(node, source)
            else:
                opaque(node, f"{node.name} (method {name!r}, which group pruning does not know)")
    return graph


def _groups(graph: _Graph) -> tuple[list[ChannelGroup], dict[str, list[int]]]:
    """The spaces of channels (by root id), named by their first producer."""
    root = graph.root
    readers_of: dict[int, list[str]] = {}
    for path, read in graph.reads.items():
        for i in read.ids:
            r = root(i)
            if path not in readers_of.setdefault(r, []):
                readers_of[r].append(path)
    fixed: dict[int, str] = {}
    for i, why in graph.fixed.items():
        fixed.setdefault(root(i), why)
    producers_of: dict[int, list[str]] = {}
    order: list[int] = []
    for path, ids in graph.produced.items():
        for i in ids:
            r = root(i)
            if r not in producers_of:
                order.append(r)
            if path not in producers_of.setdefault(r, []):
                producers_of[r].append(path)
    channelwise_roots = {
        path: {root(i) for i in ids} for path, ids in graph.channelwise.items()
    }
    spaces: dict[tuple, list[int]] = {}
    for r in order:
        spaces.setdefault(tuple(readers_of.get(r, ())), []).append(r)
    groups, group_members = [], {}
    names: set[str] = set()
    for readers, roots in spaces.items():
        producers = []
        for r in roots:
            producers += [p for p in producers_of[r] if p not in producers]
        name = producers[0]
        suffix = 2
        while name in names:
            name, suffix = f"{producers[0]}#{suffix}", suffix + 1
        names.add(name)
        reasons = [fixed[r] for r in roots if r in fixed]
        if not readers:
            reasons.append("no layer reads them")
        members = set(roots)
        sliced = tuple(
            path for path, ids in channelwise_roots.items() if not members.isdisjoint(ids)
        )
        groups.append(
            ChannelGroup(
                name=name, width=len(roots), producers=tuple(producers),
                readers=tuple(readers), sliced=sliced, prunable=not reasons,
                reason=reasons[0] if reasons else "",
            )
        )
        group_members[name] = roots
    return groups, group_members


def _example(data: Tensor | Iterable, model: nn.Module) -> Tensor:
    for x in batches(data):
        if not x.is_floating_point():
            raise ValueError(
                f"data holds {x.dtype} inputs; the model computes on floating-point inputs "
                "(convert them, e.g. data.float())"
            )
        return to_model(x[:2], model)
    raise ValueError("data must hold at least one batch of inputs, got none")


def channel_groups(model: nn.Module, data: Tensor | Iterable) -> list[ChannelGroup]:
    """The channel groups of ``model``: which channels are pruned together (see the module).

    Parameters
    ----------
    model:
        Any ``torch.fx``-traceable network of Conv2d, Linear, BatchNorm, element-wise
        activations, pooling, additions and concatenations (torchvision's ResNets and
        DenseNets, the book's models). Never modified.
    data:
        Inputs (a tensor or an iterable of batches); the first batch sets the shapes.

    Returns
    -------
    list of ChannelGroup
        In order of their first producer.

    Examples
    --------
    >>> from pruning_utils.models import SmallResNet
    >>> groups = channel_groups(SmallResNet(), torch.zeros(2, 1, 28, 28))
    >>> for g in groups:
    ...     print(f"{g.name:24s} {g.width:3d} {' + '.join(g.producers)}")
    stem.conv                 32 stem.conv + layer1.0.conv2
    layer1.0.conv1            32 layer1.0.conv1
    layer2.0.downsample.conv  64 layer2.0.downsample.conv + layer2.0.conv2
    layer2.0.conv1            64 layer2.0.conv1
    layer3.0.downsample.conv 128 layer3.0.downsample.conv + layer3.0.conv2
    layer3.0.conv1           128 layer3.0.conv1
    fc                        10 fc
    """
    check_model(model)
    work = copy.deepcopy(model).eval()
    graph = _analyse(work, _trace(work, _example(data, work)))
    return _groups(graph)[0]


def group_prune(
    model: nn.Module,
    variance: float | Sequence[float] | Mapping[str, float] | None = None,
    *,
    keep: float | Sequence[float] | Mapping[str, float] | None = None,
    criterion: str = "interpolative",
    data: Tensor | Iterable,
    generator: torch.Generator | int | None = 0,
    inplace: bool = False,
    max_rows: int = 16384,
) -> nn.Module:
    """Prune the channels of a network with residual or concatenated blocks, group by group.

    The groups are those of :func:`channel_groups`. For each prunable group of ``m``
    channels, ``H`` stacks the maps that each of its readers receives on the calibration
    data (``N·h·w`` rows per reader, at most ``max_rows`` rows in all, drawn with
    ``generator``; a Linear reader after ``Flatten`` contributes one row per image and
    position). With ``criterion="interpolative"`` (Chee et al. 2022) ``k`` is
    ``rank_for_energy(σ(H), variance)`` (or ``⌈keep·m⌉``), a pivoted QR selects the
    channels ``S`` and ``T`` (k × m) with ``H ≈ H[:, S] T``; every producer keeps its rows
    ``S`` and every reader's weight becomes ``W Tᵀ`` over the group's input channels.
    ``criterion="l1"`` keeps the ``⌈keep·m⌉`` channels whose producer rows have the largest
    L1 norm summed over the group (after folding BatchNorm; the group-L1 criterion of
    dependency-graph pruners) and drops the others without a correction.

    All groups are decomposed on the activations of the unpruned network (one pass), so a
    :class:`GroupFit` prunes one network at many settings from one capture. The pruned
    network computes exactly the kept channels of every group from its (approximate)
    inputs: additions, concatenations, element-wise activations, BatchNorm and pooling
    commute with keeping channels. It is exact on the calibration data when every ``k``
    reaches the rank of its ``H`` (at ``variance=1.0``), whatever the depth.

    Parameters
    ----------
    model:
        A ``torch.fx``-traceable network (never modified unless ``inplace``). BatchNorm
        that directly follows the layer it normalises is folded into it; the returned
        model is the same class with narrower layers and ``nn.Identity`` in place of the
        folded BatchNorm, in eval mode semantics.
    variance:
        For ``"interpolative"``: the fraction of the energy ``Σσ²`` of each group's ``H``
        kept; one fraction, a list (one per prunable group, in the order of
        :attr:`GroupFit.groups`) or a dict ``{group name: fraction}`` (groups not named are
        left whole).
    keep:
        Instead of ``variance``: the fraction of each group's channels kept (the same
        forms). The only choice for ``"l1"``.
    criterion:
        ``"interpolative"`` or ``"l1"``.
    data:
        Calibration inputs (a tensor or an iterable of batches that can be iterated twice,
        such as a DataLoader: the first batch is traced, then every batch is captured); the
        activations the groups' readers receive are all held in memory.
    generator:
        Draws the row subset of ``H``: an int seed (default 0), a ``torch.Generator`` or
        ``None`` (torch's global generator); read, not advanced.
    inplace:
        Modify ``model`` itself.
    max_rows:
        Most rows of each group's ``H``.

    Returns
    -------
    nn.Module
        The pruned model with ``pruning_report``. Save it with
        :func:`~pruning_utils.surgery.save_pruned` and load it with
        ``load_pruned(path, base_model=<a fresh model of the same architecture>)``.
    """
    check_bool("inplace", inplace)
    fit = GroupFit(model, data=data, criterion=criterion, generator=generator, max_rows=max_rows)
    return fit.prune(variance, keep=keep, inplace=inplace)


class GroupFit:
    """The trace, the activations and the decompositions behind :func:`group_prune`, once.

    ``fit = GroupFit(model, data=calibration)`` traces the model, folds its BatchNorm,
    captures what every reader receives and factors each group's ``H`` once (one
    :class:`~pruning_utils.linalg.PivotedQR`); ``fit.prune(variance)`` (or ``keep=``,
    ``widths=``) returns the same model as :func:`group_prune` with the same arguments.

    Attributes
    ----------
    groups:
        Every :class:`ChannelGroup`, prunable or not.
    prunable:
        The names of the prunable groups, in order.

    Examples
    --------
    >>> from pruning_utils.models import SmallResNet
    >>> _ = torch.manual_seed(0)
    >>> net = SmallResNet(channels=(8, 16, 32)).eval()
    >>> X = torch.randn(64, 1, 28, 28)
    >>> fit = GroupFit(net, data=X)
    >>> whole = fit.prune(widths={})  # every group at full width: the same function
    >>> torch.allclose(whole(X), net(X), atol=1e-4)
    True
    >>> half = fit.prune(keep=0.5)
    >>> half.layer1[0].conv2.out_channels
    4
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        data: Tensor | Iterable,
        criterion: str = "interpolative",
        generator: torch.Generator | int | None = 0,
        max_rows: int = 16384,
    ) -> None:
        check_model(model)
        criterion = check_choice("criterion", criterion, GROUP_CRITERIA)
        if data is None or isinstance(data, (str, bytes)) or not isinstance(
            data, (Tensor, Iterable)
        ):
            raise TypeError(
                "data must be a tensor of inputs or an iterable of batches (a DataLoader): "
                f"calibration inputs for tracing and decomposing, got {type(data).__name__}"
            )
        max_rows = check_int("max_rows", max_rows)
        layers = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
        check_not_shared(model, layers, "group_prune")
        check_weights([(n, m) for n, m in model.named_modules() if isinstance(m, layers[:2])])
        rows = check_generator(generator)
        rows = _copy_generator(torch.default_generator if rows is None else rows)

        work = copy.deepcopy(model).eval()  # the folded reference every setting starts from
        example = _example(data, work)
        graph = _analyse(work, _trace(work, example))
        #: Shape of one input of the network (without the batch dimension).
        self.input_shape: tuple[int, ...] = tuple(example.shape[1:])
        for layer_path, bn_path in graph.folds:
            fold_into(work.get_submodule(layer_path), work.get_submodule(bn_path))
            _set(work, bn_path, nn.Identity())
        self.groups, self._members = _groups(graph)
        self.prunable = [g.name for g in self.groups if g.prunable]
        self.criterion = criterion
        self._graph = graph
        self._work = work
        self._model = model
        self._selections: dict[str, _UnitSelection] = {}
        self._scores: dict[str, Tensor] = {}
        if not self.prunable:
            raise ValueError(
                "model has no channel group to prune: "
                + "; ".join(f"{g.name}: {g.reason}" for g in self.groups)
            )
        if criterion == "l1":
            self._l1_scores()
        else:
            self._decompose(data, rows, max_rows)

    # ------------------------------------------------------------------ decompositions
    def _l1_scores(self) -> None:
        root = self._graph.root
        for name in self.prunable:
            index = {r: j for j, r in enumerate(self._members[name])}
            score = torch.zeros(len(index), dtype=torch.float64)
            for path, ids in self._graph.produced.items():
                W = self._work.get_submodule(path).weight.detach().to(torch.float64)
                norms = W.reshape(W.shape[0], -1).abs().sum(dim=1).cpu()
                for row, i in enumerate(ids):
                    if root(i) in index:
                        score[index[root(i)]] += norms[row]
            self._scores[name] = score

    def _decompose(self, data: Tensor | Iterable, rows: torch.Generator, max_rows: int) -> None:
        root = self._graph.root
        wanted: dict[str, list[str]] = {}  # reader -> groups it reads
        for name in self.prunable:
            for reader in next(g for g in self.groups if g.name == name).readers:
                wanted.setdefault(reader, []).append(name)
        captured: dict[str, list[Tensor]] = {path: [] for path in wanted}
        hooks = []
        for path in wanted:
            def hook(_module, inputs, path=path):
                captured[path].append(inputs[0].detach())
            hooks.append(self._work.get_submodule(path).register_forward_pre_hook(hook))
        try:
            with eval_mode(self._work), torch.no_grad():
                for x in batches(data):
                    self._work(to_model(x, self._work))
        finally:
            for handle in hooks:
                handle.remove()
        blocks: dict[str, list[Tensor]] = {name: [] for name in self.prunable}
        for path, names in wanted.items():
            read = self._graph.reads[path]
            X = torch.cat(captured.pop(path))
            if read.conv:  # (N, C, h, w) -> (N·h·w, C)
                X = X.permute(0, 2, 3, 1).reshape(-1, X.shape[1])
            elif read.per > 1:  # (N, C·per) -> (N·per, C)
                X = X.reshape(X.shape[0], len(read.ids), read.per).transpose(1, 2)
                X = X.reshape(-1, len(read.ids))
            positions = {}
            for p, i in enumerate(read.ids):
                positions.setdefault(root(i), p)
            for name in names:
                columns = [positions[r] for r in self._members[name]]
                blocks[name].append(X[:, columns])
        for name in self.prunable:
            parts = blocks[name]
            share = max(1, max_rows // len(parts))
            H = torch.cat([_subsample_rows(part, share, rows) for part in parts])
            if H.shape[0] < 2:
                raise ValueError(
                    f"data must hold at least 2 inputs to decompose group {name!r}, got "
                    f"{H.shape[0]} row(s)"
                )
            check_finite(f"activations read from group {name!r}", H)
            self._selections[name] = _UnitSelection(H, name, max_rows, rows)

    def layers(self) -> list[LayerUse]:
        """Every Conv2d and Linear layer that reads traced channels, in execution order, with
        the groups of its input channels and of its output rows (what a latency model of
        the pruned network needs)."""
        root = self._graph.root
        group_of = {r: name for name in self.prunable for r in self._members[name]}
        uses = []
        for path, read in self._graph.reads.items():
            inputs: dict[str | None, int] = {}
            for i in read.ids:
                key = group_of.get(root(i))
                inputs[key] = inputs.get(key, 0) + 1
            produced = self._graph.produced.get(path)
            output = group_of.get(root(produced[0])) if produced else None
            uses.append(LayerUse(path, tuple(read.shape), inputs, output, read.per))
        return uses

    def reference(self) -> nn.Module:
        """A copy of the network with its BatchNorm folded and every channel kept (the same
        function in eval mode)."""
        return self.prune(widths={})

    def group_width(self, name: str) -> int:
        """Number of channels ``m`` of group ``name``."""
        if name not in self._members:
            raise ValueError(f"name must be one of the groups {list(self._members)}, got {name!r}")
        return len(self._members[name])

    def residuals(self, name: str) -> Tensor:
        """Relative interpolative residual ``‖H − H[:, S_k] T_k‖_F² / ‖H‖_F²`` for every
        ``k = 0 … m`` of group ``name`` (from the pivoted QR: the squared norms of the rows
        of ``R`` from ``k`` on; for ``criterion="l1"``, the share of the group's L1 scores
        dropped)."""
        if name not in self.prunable:
            raise ValueError(
                f"name must be one of the prunable groups {self.prunable}, got {name!r}"
            )
        if self.criterion == "l1":
            s = torch.sort(self._scores[name], descending=True).values
            tail = s.flip(0).cumsum(0).flip(0)
            return torch.cat([tail, s.new_zeros(1)]) / s.sum()
        return self._selections[name].qr.residuals()

    # ------------------------------------------------------------------ pruning
    def widths_for(
        self, variance: object = None, *, keep: object = None
    ) -> dict[str, int]:
        """``{group name: k}`` for a ``variance`` or ``keep`` setting (see :func:`group_prune`)."""
        which = check_exactly_one(variance=variance, keep=keep)
        if which == "variance" and self.criterion == "l1":
            raise ValueError(
                "criterion='l1' chooses channels by weight norm: give keep=, not variance="
            )
        fractions = per_layer_fractions(which, variance if which == "variance" else keep,
                                        self.prunable)
        widths = {}
        for name, fraction in zip(self.prunable, fractions, strict=True):
            if fraction is None:
                continue
            m = len(self._members[name])
            if which == "keep":
                widths[name] = max(1, math.ceil(fraction * m - 1e-9))
            else:
                selection = self._selections[name]
                widths[name] = rank_for_energy(selection.singular_values, fraction,
                                               rtol=selection.rtol)
        return widths

    def _select(self, name: str, k: int) -> tuple[Tensor, Tensor]:
        if self.criterion == "l1":
            scores = self._scores[name]
            indices = torch.sort(scores, descending=True, stable=True).indices[:k]
            T = torch.zeros(k, scores.numel(), dtype=torch.float64)
            T[torch.arange(k), indices] = 1.0
            return indices, T
        return self._selections[name].qr.interpolative(k)

    def prune(
        self,
        variance: object = None,
        *,
        keep: object = None,
        widths: Mapping[str, int] | None = None,
        inplace: bool = False,
    ) -> nn.Module:
        """The pruned model at one setting: ``variance``, ``keep`` or explicit ``widths``
        (``{group name: channels kept}``; groups not named stay whole)."""
        check_bool("inplace", inplace)
        if widths is None:
            widths = self.widths_for(variance, keep=keep)
        else:
            if variance is not None or keep is not None:
                raise ValueError("give one of variance, keep and widths, not several")
            if not isinstance(widths, Mapping):
                raise TypeError(
                    f"widths must be a dict {{group name: channels}}, got {type(widths).__name__}"
                )
            for name, k in widths.items():
                if name not in self.prunable:
                    raise ValueError(
                        f"widths names {name!r}, which is not a prunable group; prunable: "
                        f"{self.prunable}"
                    )
                check_int(f"widths[{name!r}]", k, 1, len(self._members[name]))
            widths = dict(widths)
        graph, root = self._graph, self._graph.root
        # the channels dropped, and per channel of a pruned group: (index in group, T, kept)
        dropped: set[int] = set()
        mixing: dict[int, tuple[int, Tensor, list[int]]] = {}
        chosen: dict[str, int] = {}
        for group in self.groups:
            roots = self._members[group.name]
            k = widths.get(group.name)
            if not group.prunable or k is None or k >= len(roots):
                continue
            indices, T = self._select(group.name, k)
            indices, T = indices.cpu(), T.to("cpu", torch.float64)
            kept_roots = [roots[int(j)] for j in indices]
            dropped.update(set(roots) - set(kept_roots))
            for j, r in enumerate(roots):
                mixing[r] = (j, T, kept_roots)
            chosen[group.name] = k
        model = self._model
        folds = list(graph.folds)
        group_of = {r: g.name for g in self.groups for r in self._members[g.name]}

        def body(work: nn.Module, report) -> None:
            before = {
                path: (layer_shape(work.get_submodule(path)), count(work.get_submodule(path)))
                for path in dict.fromkeys(
                    [*graph.produced, *graph.reads, *(p for p, _ in folds), *graph.channelwise]
                )
            }
            for layer_path, bn_path in folds:
                bn_count = count(work.get_submodule(bn_path))
                before[layer_path] = (before[layer_path][0], before[layer_path][1] + bn_count)
                _set(work, bn_path, nn.Identity())
            notes: dict[str, list[str]] = {}
            kinds: dict[str, str] = {}
            for path in dict.fromkeys([*graph.produced, *graph.reads, *(p for p, _ in folds)]):
                reference = self._work.get_submodule(path)
                if path not in graph.produced and path not in graph.reads:
                    _set(work, path, copy.deepcopy(reference))
                    kinds[path] = "bn_folded"
                    continue
                W = reference.weight.detach().to(torch.float64)
                b = None if reference.bias is None else reference.bias.detach().to(torch.float64)
                changed = False
                if path in graph.produced:
                    ids = graph.produced[path]
                    rows = [p for p, i in enumerate(ids) if root(i) not in dropped]
                    if len(rows) < len(ids):
                        W, b = W[rows], None if b is None else b[rows]
                        changed = True
                        name = group_of[root(ids[0])]
                        kinds[path] = f"group_{self.criterion}"
                        notes.setdefault(path, []).append(
                            f"{len(ids)} -> {len(rows)} channels (group {name})"
                        )
                if path in graph.reads:
                    read = graph.reads[path]
                    A = _input_map(read.ids, root, dropped, mixing)
                    if A is not None:
                        A = A.to(W.device)
                        if read.conv:
                            W = torch.einsum("oihw,iq->oqhw", W, A)
                        else:
                            Wr = W.reshape(W.shape[0], len(read.ids), read.per)
                            W = torch.einsum("oip,iq->oqp", Wr, A).reshape(W.shape[0], -1)
                        changed = True
                        kinds.setdefault(path, "input_folded")
                        notes.setdefault(path, []).append(
                            f"inputs {len(read.ids)} -> {A.shape[1]} channels"
                        )
                folded = path in {p for p, _ in folds}
                like = self._work.get_submodule(path)
                if changed:
                    new = new_conv(W, b, like) if isinstance(like, nn.Conv2d) else new_linear(
                        W, b, like)
                    _set(work, path, new)
                elif folded:  # the folded layer as it is (a grouped convolution included)
                    _set(work, path, copy.deepcopy(like))
                    kinds[path] = "bn_folded"
            for path, ids in graph.channelwise.items():
                keep_at = [p for p, i in enumerate(ids) if root(i) not in dropped]
                if len(keep_at) < len(ids):
                    bn = work.get_submodule(path)
                    _set(work, path, sliced_batchnorm(bn, torch.tensor(keep_at)))
                    kinds[path] = "sliced"
                    notes.setdefault(path, []).append(f"{len(ids)} -> {len(keep_at)} channels")
            for path, (old_shape, old_count) in before.items():
                module = work.get_submodule(path)
                kind = kinds.get(path, "kept")
                produced = graph.produced.get(path)
                width = None
                if produced is not None and kind.startswith("group_"):
                    width = sum(root(i) not in dropped for i in produced)
                note = "; ".join(notes.get(path, []))
                if path in {p for p, _ in folds}:
                    bn = dict(folds)[path]
                    note = f"{bn} folded" + (f"; {note}" if note else "")
                report.layers.append(
                    LayerChange(
                        path, kind, old_shape, layer_shape(module), old_count, count(module),
                        width=width, skipped=kind == "kept", note=note,
                    )
                )

        settings = dict(
            criterion=self.criterion,
            variance=_primitive(variance), keep=_primitive(keep),
            widths=chosen,
        )
        return run_transform(
            "group_prune", model, settings, body, inplace=inplace,
            kinds=(nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d),
        )


def _primitive(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return value


def _input_map(
    ids: list[int],
    root,
    dropped: set[int],
    mixing: Mapping[int, tuple[int, Tensor, list[int]]],
) -> Tensor | None:
    """``A`` (C × C′) with ``x ≈ A x′``: a reader's old inputs from its pruned inputs.

    ``x′`` keeps the positions whose channel is kept, in order. A position whose channel
    belongs to a pruned group is ``Σ_j T[j, index] · (kept channel j)``; any other kept
    position is itself. ``None`` when nothing changes.
    """
    roots = [root(i) for i in ids]
    new_positions = [p for p, r in enumerate(roots) if r not in dropped]
    if len(new_positions) == len(ids) and not any(r in mixing for r in roots):
        return None
    first = {}
    for q, p in enumerate(new_positions):
        first.setdefault(roots[p], q)
    A = torch.zeros(len(ids), len(new_positions), dtype=torch.float64)
    for q, p in enumerate(new_positions):
        if roots[p] not in mixing:
            A[p, q] = 1.0
    for p, r in enumerate(roots):
        if r in mixing:
            index, T, kept_roots = mixing[r]
            for j, kr in enumerate(kept_roots):
                A[p, first[kr]] += T[j, index]
    return A


def _set(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, key = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, key, new)
