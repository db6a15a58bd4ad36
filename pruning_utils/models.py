"""The networks the book prunes: two MLPs from the original work, a small VGG-style CNN,
LeNet-5, a small residual network and a small vision transformer.

Every model but the ResNet is an :class:`torch.nn.Sequential` with named children, so that
code walking a model layer by layer (folding BatchNorm, pruning hidden units or channels) sees
the execution order in ``model.named_children()``. They support what ``nn.Sequential``
supports: indexing, ``len``, iteration, and slicing, which returns a plain ``nn.Sequential``
of the same (shared) modules, e.g. ``build_model("small-cnn")[:-1]`` is the network without
its last layer. The ResNet adds feature maps across its blocks, so it is a chain of
containers whose blocks have their own ``forward``; the residual-aware width pruning
(:func:`~pruning_utils.surgery.group_prune`) reads its structure by tracing it.
Inputs are Fashion-MNIST/MNIST images, ``(N, 1, 28, 28)``; outputs are ``(N, 10)`` logits.

================  =======================================================  ==========
name              layers                                                   parameters
================  =======================================================  ==========
``simple-mlp``    784-120-84-10                                               105,214
``large-mlp``     784-128-512-2048-8192-2048-512-128-10                    35,897,866
``small-cnn``     3 × (conv3×3-BN-ReLU, max-pool), 32-64-128; 1152-128-10     241,770
``lenet5``        conv5×5 (6)-pool-conv5×5 (16)-pool-400-120-84-10             61,706
``small-resnet``  stem conv3×3 (32)-pool, 3 stages of basic blocks            308,074
                  (32-64-128 channels at 14, 7, 4 px), avg-pool, 128-10
``vit``           7×7 patches + class token, 4 pre-norm blocks, d = 64        138,442
================  =======================================================  ==========

On two CPU cores (PyTorch 2.14, fp32, batch 256) one training epoch over 60,000 images
takes about 2.5–4.5 min for ``small-cnn`` and 8–10 min for ``large-mlp``, depending on
the load of the machine; an epoch of ``small-resnet`` over the 55,000 training images took
39–66 s.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pruning_utils.nnutils import seeded
from pruning_utils.surgery.io import register_spec
from pruning_utils.validation import check_choice, check_int, check_int_sequence, check_seed

__all__ = [
    "MLP",
    "SimpleMLP",
    "LargeMLP",
    "SmallCNN",
    "LeNet5",
    "BasicBlock",
    "SmallResNet",
    "SMALL_RESNET_CHANNELS",
    "RMSNorm",
    "PatchEmbedding",
    "SelfAttention",
    "FeedForward",
    "EncoderBlock",
    "ClassToken",
    "VisionTransformer",
    "MODEL_NAMES",
    "build_model",
]

SIMPLE_MLP_WIDTHS: tuple[int, ...] = (784, 120, 84, 10)
LARGE_MLP_WIDTHS: tuple[int, ...] = (784, 128, 512, 2048, 8192, 2048, 512, 128, 10)

ActivationArg = str | type[nn.Module] | None


def _activation_factory(activation: ActivationArg) -> Callable[[], nn.Module] | None:
    """Turn the ``activation`` argument into a zero-argument module factory (or ``None``)."""
    if activation is None:
        return None
    if isinstance(activation, str):
        if activation.lower() != "relu":
            raise ValueError(
                f"activation must be None, 'relu' or an nn.Module subclass, got {activation!r}"
            )
        return nn.ReLU
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation
    raise TypeError(
        "activation must be None, 'relu' or an nn.Module subclass, "
        f"got {type(activation).__name__}"
    )


def _check_widths(name: str, widths: Sequence[int], least: int) -> tuple[int, ...]:
    """A sequence of at least ``least`` positive ints."""
    widths = check_int_sequence(name, widths, lower=1)
    if len(widths) < least:
        raise ValueError(f"{name} must have at least {least} entries, got {widths}")
    return widths


class _Sequential(nn.Sequential):
    """An ``nn.Sequential`` whose subclasses may take their own ``__init__`` arguments.

    ``nn.Sequential`` slices by calling ``self.__class__(OrderedDict(...))``, which a
    subclass with other constructor arguments cannot accept. Here a slice is a plain
    ``nn.Sequential`` of the same modules under the same names (shared, not copied), as
    for an ``nn.Sequential``; an integer index returns the module itself.
    """

    def __getitem__(self, idx: slice | int) -> nn.Module:
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)


class MLP(_Sequential):
    """A fully connected network ``Flatten, fc1, act1, fc2, act2, ..., fcK``.

    Layer ``i`` computes ``h_i = act(W_i h_{i-1} + b_i)`` with ``W_i`` of shape
    ``widths[i] × widths[i-1]`` (``out_features × in_features``); the last layer has no
    activation (it returns logits). Children are named ``flatten``, ``fc1``, ``act1``, ...,
    ``fcK``.

    Parameters
    ----------
    widths:
        Layer widths from input to output, e.g. ``(784, 120, 84, 10)``.
    activation:
        ``"relu"`` (default), an ``nn.Module`` subclass built with no arguments (e.g.
        ``nn.Tanh``), or ``None`` for no activation at all. With ``None`` the network is
        one linear map ``x ↦ W_K ⋯ W_1 x + b`` of rank at most ``min(widths)``, which is
        how the original work built its MLPs.
    """

    def __init__(self, widths: Sequence[int], activation: ActivationArg = "relu") -> None:
        widths = _check_widths("widths", widths, least=2)
        make_act = _activation_factory(activation)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        last = len(widths) - 1
        for i in range(1, len(widths)):
            layers[f"fc{i}"] = nn.Linear(widths[i - 1], widths[i])
            if make_act is not None and i < last:
                layers[f"act{i}"] = make_act()
        super().__init__(layers)
        self.widths = widths


class SimpleMLP(MLP):
    """The original work's small network, 784-120-84-10 (105,214 parameters).

    Parameters
    ----------
    activation:
        ``"relu"`` (default), an ``nn.Module`` subclass, or ``None`` for the original
        purely linear stack.
    """

    def __init__(self, activation: ActivationArg = "relu") -> None:
        super().__init__(SIMPLE_MLP_WIDTHS, activation=activation)


class LargeMLP(MLP):
    """The original work's large network, 784-128-512-2048-8192-2048-512-128-10.

    35,897,866 parameters; the two 2048×8192 layers hold 93 % of them, which makes it the
    network where low-rank and width pruning can pay off on a CPU.

    Parameters
    ----------
    activation:
        ``"relu"`` (default), an ``nn.Module`` subclass, or ``None`` for the original
        purely linear stack.
    widths:
        Layer widths; default ``LARGE_MLP_WIDTHS`` (the original ones). Smoke mode builds the book's
        LargeMLP with ``get_config().large_mlp_widths``, every hidden width divided by 4.
    """

    def __init__(
        self, activation: ActivationArg = "relu", widths: Sequence[int] = LARGE_MLP_WIDTHS
    ) -> None:
        super().__init__(widths, activation=activation)


class SmallCNN(_Sequential):
    """A VGG-style CNN for ``1×28×28`` images.

    ``len(channels)`` blocks of ``convs_per_block × (conv3×3 → BatchNorm2d → ReLU)`` followed
    by a 2×2 max-pool (28 → 14 → 7 → 3 for three blocks), then ``Flatten → fc1 → ReLU →
    fc2``. Convolutions have ``padding=1`` and no bias (BatchNorm follows each one). The
    model is one flat ``nn.Sequential`` whose children are named ``conv{b}_{j}``,
    ``bn{b}_{j}``, ``relu{b}_{j}``, ``pool{b}``, ``flatten``, ``fc1``, ``relu_fc``, ``fc2``.

    Parameters
    ----------
    channels:
        Output channels of each block; default ``(32, 64, 128)``.
    convs_per_block:
        Convolutions per block (default 1; 2 gives the classic VGG pairs at about 3× the
        training time).
    hidden:
        Width of the hidden fully connected layer (default 128).
    num_classes:
        Number of outputs (default 10).
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_block: int = 1,
        hidden: int = 128,
        num_classes: int = 10,
    ) -> None:
        channels = _check_widths("channels", channels, least=1)
        if len(channels) > 4:
            raise ValueError(
                f"channels must have between 1 and 4 entries (28 px halves at most 4 times), "
                f"got {len(channels)}"
            )
        convs_per_block = check_int("convs_per_block", convs_per_block)
        hidden = check_int("hidden", hidden)
        num_classes = check_int("num_classes", num_classes)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in, size = 1, 28
        for b, c_out in enumerate(channels, start=1):
            for j in range(1, convs_per_block + 1):
                layers[f"conv{b}_{j}"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
                layers[f"bn{b}_{j}"] = nn.BatchNorm2d(c_out)
                layers[f"relu{b}_{j}"] = nn.ReLU()
                c_in = c_out
            layers[f"pool{b}"] = nn.MaxPool2d(2)
            size //= 2
        layers["flatten"] = nn.Flatten()
        layers["fc1"] = nn.Linear(c_in * size * size, hidden)
        layers["relu_fc"] = nn.ReLU()
        layers["fc2"] = nn.Linear(hidden, num_classes)
        super().__init__(layers)
        self.channels = tuple(channels)


class LeNet5(_Sequential):
    """LeNet-5 (LeCun et al. 1998) for ``1×28×28`` inputs, with ReLU and max-pooling.

    ``conv1`` (5×5, 1→6, padding 2, so 28×28 is kept as in the original 32×32 input) →
    ReLU → pool → ``conv2`` (5×5, 6→16) → ReLU → pool → ``fc1`` (400→120) → ReLU → ``fc2``
    (120→84) → ReLU → ``fc3`` (84→10). The original used tanh-like units and average
    subsampling; ReLU and max-pooling are the usual modern choice and train faster.
    """

    def __init__(self, num_classes: int = 10) -> None:
        num_classes = check_int("num_classes", num_classes)
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(1, 6, 5, padding=2),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(6, 16, 5),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(16 * 5 * 5, 120),
                relu3=nn.ReLU(),
                fc2=nn.Linear(120, 84),
                relu4=nn.ReLU(),
                fc3=nn.Linear(84, num_classes),
            )
        )


#: Channels of the three stages of the book's ResNet (smoke mode divides them by 4).
SMALL_RESNET_CHANNELS: tuple[int, ...] = (32, 64, 128)


class BasicBlock(nn.Module):
    """A ResNet basic block (He et al. 2016): two 3×3 convolutions and a shortcut.

    ``out = ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x))``, where ``conv1`` has the
    block's ``stride`` and the shortcut is the identity when the shape is kept (``stride=1``
    and ``c_in = c_out``) or a *projection* ``downsample`` (a 1×1 convolution with the
    stride, then BatchNorm) otherwise. Convolutions have no bias (BatchNorm follows each),
    as in torchvision's ``BasicBlock``, whose child names this block uses.

    Parameters
    ----------
    c_in, c_out:
        Input and output channels.
    stride:
        Stride of ``conv1`` and of the projection (1 or 2).
    inner:
        Output channels of ``conv1`` (the block's inner width, which no shortcut ties);
        default ``c_out``. A network pruned block by block has its own inner widths.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, inner: int | None = None) -> None:
        super().__init__()
        c_in, c_out = check_int("c_in", c_in), check_int("c_out", c_out)
        stride = check_int("stride", stride, 1, 2)
        inner = c_out if inner is None else check_int("inner", inner)
        self.conv1 = nn.Conv2d(c_in, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(inner, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(c_out),
                )
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class SmallResNet(_Sequential):
    """A small ResNet for ``1×28×28`` images: a stem, three stages of basic blocks, a classifier.

    ``stem`` (conv3×3 1 → c_1, BatchNorm, ReLU, 2×2 max-pool: 28 → 14 px), then stages
    ``layer1``–``layer3`` of :class:`BasicBlock` with ``channels`` (c_1, c_2, c_3) at 14, 7
    and 4 px (the first block of stages 2 and 3 has stride 2 and a projection shortcut, the
    others identity shortcuts), then global average pooling, ``flatten`` and ``fc``
    (c_3 → 10). With the default ``(32, 64, 128)`` and one block per stage it does about
    10.3 million multiply-adds per image, 98 % of them in 3×3 convolutions, against
    SmallCNN's 7.6 million.

    The container is an ``nn.Sequential`` of ``stem, layer1, layer2, layer3, pool, flatten,
    fc``; the blocks inside add their shortcut, so a layer-by-layer walk of the chain
    does not see the additions: prune its widths with
    :func:`~pruning_utils.surgery.group_prune`, which traces them.

    Parameters
    ----------
    channels:
        Channels of the three stages; default :data:`SMALL_RESNET_CHANNELS`.
    blocks:
        Basic blocks per stage (default one each).
    num_classes:
        Number of outputs (default 10).
    inner:
        Inner width (``conv1``'s output channels) of the blocks of each stage; default the
        stage's ``channels``. With it a network of a pruned SmallResNet's widths can be
        built fresh and trained from scratch.
    """

    def __init__(
        self,
        channels: Sequence[int] = SMALL_RESNET_CHANNELS,
        blocks: Sequence[int] = (1, 1, 1),
        num_classes: int = 10,
        inner: Sequence[int] | None = None,
    ) -> None:
        channels = _check_widths("channels", channels, least=3)
        blocks = _check_widths("blocks", blocks, least=3)
        if len(channels) != 3 or len(blocks) != 3:
            raise ValueError(
                f"channels and blocks must have 3 entries (one per stage), got {channels} "
                f"and {blocks}"
            )
        inner = channels if inner is None else _check_widths("inner", inner, least=3)
        if len(inner) != 3:
            raise ValueError(f"inner must have 3 entries (one per stage), got {inner}")
        num_classes = check_int("num_classes", num_classes)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["stem"] = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(1, channels[0], 3, padding=1, bias=False),
                bn=nn.BatchNorm2d(channels[0]),
                relu=nn.ReLU(),
                pool=nn.MaxPool2d(2),
            )
        )
        c_in = channels[0]
        for stage, (c_out, count, width) in enumerate(zip(channels, blocks, inner, strict=True),
                                                      start=1):
            stride = 1 if stage == 1 else 2
            stage_blocks = []
            for i in range(count):
                stage_blocks.append(BasicBlock(c_in, c_out, stride if i == 0 else 1, width))
                c_in = c_out
            layers[f"layer{stage}"] = nn.Sequential(*stage_blocks)
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(c_in, num_classes)
        super().__init__(layers)
        self.channels = tuple(channels)
        self.inner = tuple(inner)


# ----------------------------------------------------------------------------- vision transformer


class RMSNorm(nn.Module):
    """Root-mean-square normalization of the last dimension: ``x / rms(x) ⊙ g``.

    ``rms(x) = sqrt(‖x‖² / mean_over + eps)``. LayerNorm is this applied to the centred
    vector ``x − mean(x)``; without the centring, ``rms(x Q) = rms(x)`` for every
    orthogonal ``Q`` (d × d), so a normalization without a scale (``affine=False``)
    commutes with rotations of the residual stream: ``norm(x Q) = norm(x) Q``. The scale
    ``g`` can be folded into the Linear layers that read the normalized vector.

    Parameters
    ----------
    dim:
        Width ``d`` of the normalized vectors.
    eps:
        Added to the mean square.
    affine:
        Learn a scale ``g`` of length ``dim`` (``weight``); ``False`` normalizes only.
    mean_over:
        The ``d`` of the mean square (default ``dim``). A residual stream sliced from
        ``d`` to ``d' < d`` components keeps ``mean_over = d``, so that ``rms`` of the
        sliced vector approximates ``rms`` of the full one.
    """

    def __init__(
        self, dim: int, eps: float = 1e-6, affine: bool = True, mean_over: int | None = None
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim)
        self.eps = float(eps)
        self.affine = bool(affine)
        self.mean_over = self.dim if mean_over is None else check_int("mean_over", mean_over)
        if self.affine:
            self.weight = nn.Parameter(torch.ones(self.dim))
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        """The scale back to ones."""
        if self.weight is not None:
            with torch.no_grad():
                self.weight.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        y = x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / self.mean_over + self.eps)
        return y if self.weight is None else y * self.weight

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.affine}, mean_over={self.mean_over}"


class PatchEmbedding(nn.Module):
    """Image → tokens: cut into ``patch_size × patch_size`` patches, embed, add a class token.

    A ``(N, channels, image_size, image_size)`` batch becomes ``(N, T, dim)`` with
    ``T = (image_size / patch_size)² + 1``: token 0 is the learned class token
    (``cls_token``), tokens 1…T−1 are the patches (row by row) through the Linear ``proj``
    (``dim × channels·patch_size²``); a learned position embedding (``position``,
    ``1 × T × dim``) is added to every token.
    """

    def __init__(
        self, image_size: int = 28, patch_size: int = 7, channels: int = 1, dim: int = 64
    ) -> None:
        super().__init__()
        self.image_size = check_int("image_size", image_size)
        self.patch_size = check_int("patch_size", patch_size)
        self.channels = check_int("channels", channels)
        self.dim = check_int("dim", dim)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size must divide image_size, got {self.patch_size} and {self.image_size}"
            )
        self.grid = self.image_size // self.patch_size
        self.tokens = self.grid * self.grid + 1
        self.proj = nn.Linear(self.channels * self.patch_size**2, self.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.dim))
        self.position = nn.Parameter(0.02 * torch.randn(1, self.tokens, self.dim))

    def reset_parameters(self) -> None:
        """A fresh start: ``proj`` as nn.Linear, zero class token, position ~ N(0, 0.02²)."""
        self.proj.reset_parameters()
        with torch.no_grad():
            self.cls_token.zero_()
            self.position.normal_(0.0, 0.02)

    def patches(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` → ``(N, T − 1, C·p²)``, patches row by row."""
        n, c, p, g = x.shape[0], self.channels, self.patch_size, self.grid
        x = x.reshape(n, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, g * g, c * p * p)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.proj(self.patches(x))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.position


class SelfAttention(nn.Module):
    """Multi-head self-attention with four explicit projections ``q``, ``k``, ``v``, ``out``.

    For tokens ``X`` (T × d) and head ``h`` with ``Q_h = X W_qhᵀ``, ``K_h``, ``V_h``
    (T × d_h each): ``Z_h = softmax(Q_h K_hᵀ / √d_h) V_h``, and the output is
    ``[Z_1 … Z_H] W_outᵀ + b_out``. The ``q``, ``k``, ``v`` layers are
    ``(heads·head_dim) × dim``, ``out`` is ``dim × (heads·head_dim)``; rows
    ``h·head_dim … (h+1)·head_dim − 1`` of ``q``, ``k``, ``v`` (and those columns of
    ``out``) belong to head ``h``.
    """

    def __init__(
        self, dim: int = 64, heads: int = 4, head_dim: int = 16, bias: bool = True
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim)
        self.heads = check_int("heads", heads)
        self.head_dim = check_int("head_dim", head_dim)
        self.bias = bool(bias)
        inner = self.heads * self.head_dim
        self.q = nn.Linear(self.dim, inner, bias=self.bias)
        self.k = nn.Linear(self.dim, inner, bias=self.bias)
        self.v = nn.Linear(self.dim, inner, bias=self.bias)
        self.out = nn.Linear(inner, self.dim, bias=self.bias)

    def split(self, y: Tensor) -> Tensor:
        """``(N, T, heads·head_dim)`` → ``(N, heads, T, head_dim)``."""
        n, t, _ = y.shape
        return y.reshape(n, t, self.heads, self.head_dim).transpose(1, 2)

    def heads_output(self, x: Tensor) -> Tensor:
        """``[Z_1 … Z_H]``, ``(N, T, heads·head_dim)``: the input of ``out``.

        Written as two explicit batched products (not a fused attention kernel), so that
        FLOP counters see the ``2·T²·d_h`` multiply-adds of every head.
        """
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        weights = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim**0.5, dim=-1)
        return (weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.heads_output(x))


class FeedForward(nn.Module):
    """The MLP of an encoder block: ``down(GELU(up(x)))``, ``dim → hidden → dim``."""

    def __init__(self, dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.dim = check_int("dim", dim)
        self.hidden = check_int("hidden", hidden)
        self.up = nn.Linear(self.dim, self.hidden)
        self.act = nn.GELU()
        self.down = nn.Linear(self.hidden, self.dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


class EncoderBlock(nn.Module):
    """Pre-norm encoder block: ``x ← x + attn(norm1(x))``, then ``x ← x + mlp(norm2(x))``.

    ``x`` is the residual stream, ``(N, T, d)``: every block reads it through a
    normalization and adds its output back to it.
    """

    def __init__(
        self, dim: int = 64, heads: int = 4, head_dim: int = 16, hidden: int = 128
    ) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = SelfAttention(dim, heads, head_dim)
        self.norm2 = RMSNorm(dim)
        self.mlp = FeedForward(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ClassToken(nn.Module):
    """``(N, T, d)`` → ``(N, d)``: the class token (token 0) of every example."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0]


class VisionTransformer(_Sequential):
    """A small vision transformer (Dosovitskiy et al. 2021) for ``1×28×28`` images.

    ``embed`` (:class:`PatchEmbedding`: 7×7 patches, 16 patch tokens plus a class token,
    ``T = 17``) → ``block1`` … ``block{depth}`` (:class:`EncoderBlock`, pre-norm, with
    :class:`RMSNorm`) → ``norm`` → ``pool`` (:class:`ClassToken`) → ``head`` (Linear
    ``num_classes × dim``). Every matrix is an explicit ``nn.Linear``: per block ``attn.q``,
    ``attn.k``, ``attn.v``, ``attn.out``, ``mlp.up``, ``mlp.down``. The normalization is
    RMSNorm, LayerNorm without the centring, so that a rotation of the residual stream can
    be folded into the weights exactly (:func:`~pruning_utils.surgery.slice_stream`).

    Parameters
    ----------
    dim:
        Width ``d`` of the residual stream (default 64).
    depth:
        Number of encoder blocks (default 4).
    heads:
        Attention heads ``H`` per block (default 4).
    head_dim:
        Width ``d_h`` of a head (default ``dim // heads``).
    hidden:
        Hidden width ``d_ff`` of each block's MLP (default ``2 · dim``).
    patch_size:
        Side of the square patches (must divide 28; default 7).
    num_classes:
        Number of outputs (default 10).
    """

    def __init__(
        self,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        head_dim: int | None = None,
        hidden: int | None = None,
        patch_size: int = 7,
        num_classes: int = 10,
    ) -> None:
        dim = check_int("dim", dim)
        depth = check_int("depth", depth)
        heads = check_int("heads", heads)
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"heads must divide dim when head_dim is not given, got {heads}"
                                 f" and {dim}")
            head_dim = dim // heads
        head_dim = check_int("head_dim", head_dim)
        hidden = check_int("hidden", 2 * dim if hidden is None else hidden)
        num_classes = check_int("num_classes", num_classes)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            embed=PatchEmbedding(28, patch_size, 1, dim)
        )
        for i in range(1, depth + 1):
            layers[f"block{i}"] = EncoderBlock(dim, heads, head_dim, hidden)
        layers["norm"] = RMSNorm(dim)
        layers["pool"] = ClassToken()
        layers["head"] = nn.Linear(dim, num_classes)
        super().__init__(layers)
        self.dim, self.depth, self.heads, self.head_dim, self.hidden = (
            dim, depth, heads, head_dim, hidden)


# save_pruned / load_pruned rebuild these from their attributes (a sliced or pruned block)
register_spec(RMSNorm, ("dim", "eps", "affine", "mean_over"))
register_spec(PatchEmbedding, ("image_size", "patch_size", "channels", "dim"))
register_spec(SelfAttention, ("dim", "heads", "head_dim", "bias"))
register_spec(FeedForward, ("dim", "hidden"))


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "simple-mlp": SimpleMLP,
    "large-mlp": LargeMLP,
    "small-cnn": SmallCNN,
    "lenet5": LeNet5,
    "small-resnet": SmallResNet,
    "vit": VisionTransformer,
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_model(name: str, *, seed: int | None = None, **kwargs) -> nn.Module:
    """Build a freshly initialised model by name.

    Parameters
    ----------
    name:
        One of ``MODEL_NAMES``: ``"simple-mlp"``, ``"large-mlp"``, ``"small-cnn"``, ``"lenet5"``,
        ``"small-resnet"``, ``"vit"``.
    seed:
        When given, the initial weights are drawn from torch's CPU generator seeded with
        ``seed`` (the global random state, CPU and CUDA, is left as it was), so the same seed
        gives the same weights on every run; ``None`` uses the global random state.
    **kwargs:
        Passed to the model class, e.g. ``activation=None`` for the MLPs.

    Returns
    -------
    torch.nn.Module
        The model, in training mode, on the CPU.
    """
    key = check_choice("name", name.lower() if isinstance(name, str) else name, MODEL_NAMES)
    if seed is None:
        return _REGISTRY[key](**kwargs)
    seed = check_seed("seed", seed)
    with seeded(seed):  # the CPU generator only: models are built on the CPU
        return _REGISTRY[key](**kwargs)
