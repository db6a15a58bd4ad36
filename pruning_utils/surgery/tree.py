"""The module tree: which layers a transform may touch, walking chains, rebuilding layers.

Every transform of :mod:`pruning_utils.surgery` finds its layers and rebuilds them here, so
the rules hold for all of them: a layer used at two places of a model (a *shared* module)
and layers inside modules with a fused inference path are found once, and a rebuilt layer
keeps the device, dtype, train/eval mode and ``requires_grad`` of the layer it replaces.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pruning_utils.layers import (
    LowRankConv2d,
    LowRankLinear,
    RandomizedConv2d,
    RandomizedLinear,
    SpatialLowRankConv2d,
)
from pruning_utils.validation import check_finite

#: Layers built by the library: already the result of a transform, never walked into.
OUR_LAYERS = (
    LowRankLinear,
    LowRankConv2d,
    SpatialLowRankConv2d,
    RandomizedLinear,
    RandomizedConv2d,
)
#: Modules whose eval-mode fast path reads their submodules' ``.weight`` directly (or uses
#: their projections through the weights), so a replaced submodule would be ignored or break.
FUSED = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
)


def shared_modules(model: nn.Module, kinds: tuple[type, ...]) -> dict[int, list[str]]:
    """``{id: [paths]}`` of modules of ``kinds`` that appear at more than one path."""
    paths: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name and isinstance(module, kinds):
            paths.setdefault(id(module), []).append(name)
    return {key: names for key, names in paths.items() if len(names) > 1}


def check_not_shared(model: nn.Module, kinds: tuple[type, ...], transform: str) -> None:
    """Refuse a model in which a layer that ``transform`` would rebuild is used twice.

    A shared (tied) layer is one module object reachable at several paths; rebuilding it
    at one path would leave the other use dense (or inconsistent in width). Parameters
    shared between two different layers are refused the same way.
    """
    shared = shared_modules(model, kinds)
    if shared:
        uses = "; ".join(" and ".join(repr(p) for p in names) for names in shared.values())
        raise ValueError(
            f"{transform} cannot transform a model in which a layer is used at several places "
            f"(the same module object at {uses}); give each use its own module "
            "(copy.deepcopy) or pass layers= types that leave it out"
        )
    owners: dict[int, str] = {}
    for name, module in model.named_modules():
        if not name or not isinstance(module, kinds):
            continue
        for pname, param in module.named_parameters(recurse=False):
            other = owners.setdefault(id(param), f"{name}.{pname}")
            if other != f"{name}.{pname}":
                raise ValueError(
                    f"{transform} cannot transform layers that share a parameter: "
                    f"{other!r} and {name}.{pname!r} are the same tensor (tied weights)"
                )


def eligible(
    model: nn.Module, kinds: tuple[type, ...], transform: str
) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of the layers of ``kinds`` that ``transform`` may rebuild.

    Layers inside a layer of :mod:`pruning_utils.layers` are skipped (already transformed).
    Layers inside a module with a fused inference path (:data:`FUSED`, e.g.
    ``nn.TransformerEncoderLayer``) are left dense with a warning: their block would keep
    computing with the old weights (or fail) in eval mode. Build such blocks from explicit
    ``nn.Linear`` modules to transform them.
    """
    blocked: list[str] = []
    fused: list[str] = []
    found = []
    for name, module in model.named_modules():
        if any(prefix == "" or name.startswith(prefix + ".") for prefix in blocked):
            continue
        if isinstance(module, OUR_LAYERS):
            blocked.append(name)
            continue
        if isinstance(module, FUSED):
            if any(isinstance(m, kinds) for m in module.modules()):
                fused.append(f"{name or 'the model'} ({type(module).__name__})")
            blocked.append(name)
            continue
        if name and isinstance(module, kinds):
            found.append((name, module))
    if fused:
        warnings.warn(
            f"{transform} leaves the layers inside {', '.join(fused)} dense: these modules "
            "use a fused inference path that reads their weights directly, so a rebuilt layer "
            "would be ignored or fail in eval mode; build the block from explicit nn.Linear "
            "modules to transform it",
            UserWarning,
            stacklevel=3,
        )
    return found


def inherit_state(new: nn.Module, old: nn.Module) -> nn.Module:
    """Give a rebuilt layer the train/eval mode and ``requires_grad`` of the one it replaces.

    Every parameter of ``new`` named like one of ``old`` (``weight``, ``bias``) takes that
    parameter's flag; the others (the factors of a factorized layer) take the flag of
    ``old.weight``.
    """
    new.train(old.training)
    flags = {name: p.requires_grad for name, p in old.named_parameters()}
    default = flags.get("weight", any(flags.values()) if flags else True)
    for name, param in new.named_parameters():
        leaf = name.rpartition(".")[2]
        param.requires_grad_(flags.get(name, flags.get(leaf, default)))
    return new


ELEMENTWISE = (
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
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
CHANNEL_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class Leaf:
    container: nn.Module
    key: str
    path: str

    @property
    def module(self) -> nn.Module:
        return self.container._modules[self.key]

    def replace(self, new: nn.Module) -> None:
        setattr(self.container, self.key, new)


def leaves(seq: nn.Sequential, prefix: str = "") -> list[Leaf]:
    """Children of a Sequential in execution order, nested Sequentials flattened."""
    out = []
    for key, child in seq.named_children():
        path = f"{prefix}{key}"
        if isinstance(child, nn.Sequential) and type(child).forward is nn.Sequential.forward:
            out += leaves(child, path + ".")
        else:
            out.append(Leaf(seq, key, path))
    return out


def is_elementwise(module: nn.Module) -> bool:
    if isinstance(module, nn.PReLU):
        return module.num_parameters == 1
    return isinstance(module, ELEMENTWISE)


def check_between(
    producer: Leaf, consumer: Leaf, between: list[Leaf]
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
        if isinstance(module, PASS_THROUGH):
            continue
        if is_elementwise(module):
            linear = False
            continue
        if conv_out and flatten_at is None and isinstance(module, CHANNEL_POOLS):
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




def new_linear(W: Tensor, b: Tensor | None, like: nn.Linear) -> nn.Linear:
    """A Linear holding ``W`` (m×n) and ``b``, on the device/dtype of ``like``."""
    ref = like.weight
    layer = nn.Linear(
        W.shape[1], W.shape[0], bias=b is not None, device=ref.device, dtype=ref.dtype
    )
    with torch.no_grad():
        layer.weight.copy_(W)
        if b is not None:
            layer.bias.copy_(b)
    return inherit_state(layer, like)


def new_conv(W: Tensor, b: Tensor | None, like: nn.Conv2d) -> nn.Conv2d:
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
    return inherit_state(layer, like)




def foldable(layer: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(layer, nn.Conv2d) and type(bn) is nn.BatchNorm2d) or (
        isinstance(layer, nn.Linear) and type(bn) is nn.BatchNorm1d
    )


def fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
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




def sliced_batchnorm(bn: nn.modules.batchnorm._BatchNorm, keep: Tensor) -> nn.Module:
    """A copy of ``bn`` that keeps only the channels ``keep``."""
    new = type(bn)(
        len(keep),
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        device=keep.device if bn.weight is None else bn.weight.device,
        dtype=None if bn.weight is None else bn.weight.dtype,
    )
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight.detach()[keep])
            new.bias.copy_(bn.bias.detach()[keep])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[keep])
            new.running_var.copy_(bn.running_var[keep])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return inherit_state(new, bn)


def forward_chain(modules: Sequence[nn.Module], x: Tensor) -> Tensor:
    """``x`` through ``modules`` in order."""
    for module in modules:
        x = module(x)
    return x


def check_weights(layers: Sequence[tuple[str, nn.Module]]) -> None:
    """Every layer's weight holds values (not on the meta device) that are finite."""
    for name, module in layers:
        weight = module.weight.detach()
        if weight.device.type == "meta":
            raise ValueError(
                f"{name}.weight is on the meta device and holds no values; load the model's "
                "weights (model.to_empty(device=...) and load_state_dict) before transforming it"
            )
        check_finite(f"{name}.weight", weight)


def describe_first_layer(model: nn.Module) -> str:
    """What the model's first Linear / Conv2d expects, for error messages about inputs."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            return f"first layer {name!r} (nn.Linear) expects in_features={module.in_features}"
        if isinstance(module, nn.Conv2d):
            return f"first layer {name!r} (nn.Conv2d) expects in_channels={module.in_channels}"
    return "the model"
