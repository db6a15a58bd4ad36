"""Neural-network layers built from matrix factors.

Every class here replaces one dense layer by a cheaper computation of (approximately) the
same map, and keeps the math visible:

=========================  ==========================================================
``LowRankLinear``          ``y = A (B x) + b`` with ``W ≈ A @ B``, ``A`` (m×r), ``B`` (r×n)
``LowRankConv2d``          k_h×k_w conv to ``r`` channels, then a 1×1 conv (Denton et al.)
``SpatialLowRankConv2d``   k_h×1 conv to ``r`` channels, then a 1×k_w conv (Jaderberg et al.)
``RandomizedLinear``       sampled product ``x Wᵀ ≈ (1/c) Σ_t x_{:,i_t} W_{:,i_t}ᵀ / p_{i_t}``
``RandomizedConv2d``       the same sampled product on the im2col form of a convolution
=========================  ==========================================================

The factorizations come from :mod:`pruning_utils.linalg`; this module only turns factors
into ``nn.Module`` objects. Shapes follow PyTorch: ``W`` is ``out_features × in_features``.
Factors are computed in float64 by :func:`~pruning_utils.linalg.low_rank_factors` with its
default ``method="auto"``: the exact truncated SVD, except for a small rank of a large matrix
(``min(m, n) ≥ 256``), where a randomized SVD within about 1 % of the Eckart–Young optimum
is faster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning_utils.linalg import (
    _sampled_product,
    conv_weight_matrix,
    low_rank_factors,
    whitened_low_rank_factors,
)
from pruning_utils.validation import (
    check_choice,
    check_exactly_one,
    check_fraction,
    check_generator,
    check_int,
    check_int_pair,
    check_same_device,
    check_seed,
    check_tensor,
    is_int,
)

__all__ = [
    "LowRankLinear",
    "LowRankConv2d",
    "SpatialLowRankConv2d",
    "RandomizedLinear",
    "RandomizedConv2d",
    "PROBABILITY_RULES",
    "spatial_weight_matrix",
]

#: The sampling rules understood by :class:`RandomizedLinear` and :class:`RandomizedConv2d`.
PROBABILITY_RULES: tuple[str, ...] = ("batch", "weights")

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

IntPair = int | tuple[int, int]


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def _check_module(name: str, module: object, kind: type[nn.Module]) -> None:
    if not isinstance(module, kind):
        raise TypeError(f"{name} must be an nn.{kind.__name__}, got {type(module).__name__}")


def _check_ungrouped(name: str, conv: nn.Conv2d) -> None:
    if conv.groups != 1:
        raise ValueError(
            f"{name} must be an ungrouped convolution (groups=1), got groups={conv.groups}; "
            "a grouped kernel is block-diagonal and is not factorized as one matrix"
        )


def _check_padding(padding: str | IntPair) -> str | tuple[int, int]:
    if isinstance(padding, str):
        return check_choice("padding", padding, ("same", "valid"))
    return check_int_pair("padding", padding, lower=0)


def _seed_from(generator: torch.Generator | int | None) -> int:
    """A seed for a layer's private generator.

    ``int``: that seed; ``torch.Generator``: a seed drawn from it, on its device (so a
    seeded generator makes the layer reproducible); ``None``: a seed drawn from torch's
    global CPU generator, like the default initialisation of ``nn.Linear``.
    """
    if is_int(generator):
        return check_seed("generator", generator)
    gen = check_generator(generator)
    device = "cpu" if gen is None else gen.device
    return int(torch.randint(0, 2**62, (1,), generator=gen, device=device).item())


def _factor_rank(
    rank: int | None, energy: float | None, upper: int
) -> tuple[int | None, float | None]:
    """Validate the (rank, energy) pair of a single-layer factorization."""
    check_exactly_one(rank=rank, energy=energy)
    if rank is not None:
        rank = check_int("rank", rank, 1, upper)
    else:
        energy = check_fraction("energy", energy)
    return rank, energy


def spatial_weight_matrix(weight: Tensor) -> Tensor:
    """Rearrange a conv kernel for spatial (Jaderberg) separation.

    ``M[(c, y), (f, x)] = K[f, c, y, x]``: a ``(C_in·k_h) × (C_out·k_w)`` matrix. A rank-r
    factorization ``M ≈ V @ H`` with ``V`` ((C_in·k_h)×r) and ``H`` (r×(C_out·k_w)) is a
    k_h×1 convolution C_in → r (filters ``V``) followed by a 1×k_w convolution r → C_out
    (filters ``H``). Exact at rank ``min(C_in·k_h, C_out·k_w)``.

    Parameters
    ----------
    weight:
        Kernel of shape ``(C_out, C_in, k_h, k_w)``.

    Returns
    -------
    Tensor
        The ``(C_in·k_h) × (C_out·k_w)`` matrix.
    """
    if not isinstance(weight, Tensor) or weight.ndim != 4:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a 4-D conv kernel (C_out, C_in, k_h, k_w), got {shape}")
    f, c, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(c * kh, f * kw)


def _resolve_padding(
    padding: str | tuple[int, int], kernel_size: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Explicit ``(left, right, top, bottom)`` padding for ``F.pad``, as ``nn.Conv2d`` pads."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        pads = []
        for k, d in ((kernel_size[1], dilation[1]), (kernel_size[0], dilation[0])):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    ph, pw = padding  # type: ignore[misc]
    return (pw, pw, ph, ph)


# ---------------------------------------------------------------------------
# low rank
# ---------------------------------------------------------------------------


class LowRankLinear(nn.Module):
    """A linear layer through an ``r``-dimensional bottleneck: ``y = A (B x) + b``.

    The dense layer ``y = W x + b`` with ``W`` (m×n) is replaced by ``W ≈ A @ B``, ``A``
    (m×r), ``B`` (r×n): ``first`` is ``nn.Linear(n, r, bias=False)`` holding ``B`` and
    ``second`` is ``nn.Linear(r, m)`` holding ``A`` and the bias. Parameters and
    multiply-adds per input drop from ``mn`` to ``r(m + n)``, a saving only when
    ``r < r* = mn / (m + n)`` (:func:`pruning_utils.linalg.break_even_rank`).

    Parameters
    ----------
    in_features, out_features:
        ``n`` and ``m``.
    rank:
        ``r``, an int in ``[1, min(m, n)]``.
    bias:
        Whether ``second`` has a bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        in_features = check_int("in_features", in_features)
        out_features = check_int("out_features", out_features)
        rank = check_int("rank", rank, 1, min(in_features, out_features))
        kw = {"device": device, "dtype": dtype}
        self.first = nn.Linear(in_features, rank, bias=False, **kw)
        self.second = nn.Linear(rank, out_features, bias=bool(bias), **kw)

    @property
    def rank(self) -> int:
        """The bottleneck width ``r``."""
        return self.first.out_features

    @property
    def in_features(self) -> int:
        return self.first.in_features

    @property
    def out_features(self) -> int:
        return self.second.out_features

    def weight_product(self) -> Tensor:
        """The rank-r matrix ``A @ B`` (m×n) that this layer applies."""
        return self.second.weight @ self.first.weight

    @classmethod
    def from_factors(cls, A: Tensor, B: Tensor, bias: Tensor | None = None) -> LowRankLinear:
        """Build ``y = A (B x) + bias`` from given factors.

        Parameters
        ----------
        A:
            ``m × r`` (stored in ``second.weight``), ``r ≤ min(m, n)``.
        B:
            ``r × n`` (stored in ``first.weight``).
        bias:
            Length-``m`` vector or ``None``.

        Returns
        -------
        LowRankLinear
            On A's device and dtype.
        """
        A = check_tensor("A", A, 2)
        B = check_tensor("B", B, 2)
        if A.shape[1] != B.shape[0]:
            raise ValueError(
                f"A (m×r) and B (r×n) must share r, got A {tuple(A.shape)} and B {tuple(B.shape)}"
            )
        check_same_device(A=A, B=B)
        m, r = A.shape
        n = B.shape[1]
        if bias is not None:
            if not isinstance(bias, Tensor) or bias.shape != (m,):
                got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
                raise ValueError(f"bias must be a tensor of shape ({m},), got {got}")
            check_tensor("bias", bias, 1)
            check_same_device(A=A, bias=bias)
        layer = cls(n, m, r, bias=bias is not None, device=A.device, dtype=A.dtype)
        with torch.no_grad():
            layer.first.weight.copy_(B)
            layer.second.weight.copy_(A)
            if bias is not None:
                layer.second.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        rank: int | None = None,
        energy: float | None = None,
        *,
        data: Tensor | None = None,
    ) -> LowRankLinear:
        """Factorize a trained ``nn.Linear`` by truncated SVD.

        Without ``data``: ``W ≈ A @ B = U_r Σ_r V_rᵀ``, the best rank-r approximation in every
        unitarily invariant norm (Eckart–Young–Mirsky). With ``data`` (calibration inputs
        ``X``, N×n): the data-aware factors of
        :func:`pruning_utils.linalg.whitened_low_rank_factors`, which minimise the output error
        ``‖(W − AB) Xᵀ‖_F`` instead of the weight error. The bias is kept unchanged.

        Parameters
        ----------
        linear:
            The layer to factorize (left untouched).
        rank:
            ``r`` in ``[1, min(m, n)]``; give exactly one of ``rank`` and ``energy``.
        energy:
            Fraction in ``(0, 1]`` of ``Σσ²`` to keep; ``r`` is the smallest rank reaching it.
        data:
            Optional calibration inputs, shape ``(N, in_features)`` (leading dims are
            flattened: ``(..., in_features)``).

        Returns
        -------
        LowRankLinear
            On the layer's device and dtype; factors computed in float64.
        """
        _check_module("linear", linear, nn.Linear)
        W = check_tensor("linear.weight", linear.weight.detach(), 2)
        m, n = W.shape
        rank, energy = _factor_rank(rank, energy, min(m, n))
        if data is None:
            A, B = low_rank_factors(W, rank=rank, energy=energy)
        else:
            X = _linear_inputs("data", data, n)
            A, B = whitened_low_rank_factors(W, X.to(W), rank=rank, energy=energy)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls.from_factors(A.to(W), B.to(W), bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.second.bias is not None}"
        )


def _linear_inputs(name: str, data: Tensor, in_features: int) -> Tensor:
    """Calibration inputs of a Linear layer as an ``N × in_features`` matrix."""
    if not isinstance(data, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(data).__name__}")
    if data.ndim < 1 or data.shape[-1] != in_features:
        raise ValueError(
            f"{name} must have in_features={in_features} features in its last dimension, "
            f"got shape {tuple(data.shape)}"
        )
    return check_tensor(name, data.reshape(-1, in_features), 2)


class _ConvGeometry(nn.Module):
    """Shared bookkeeping for layers that replace an ``nn.Conv2d``."""

    def _set_geometry(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair,
        padding: str | IntPair,
        dilation: IntPair,
        padding_mode: str,
    ) -> None:
        self.in_channels = check_int("in_channels", in_channels)
        self.out_channels = check_int("out_channels", out_channels)
        self.kernel_size = check_int_pair("kernel_size", kernel_size)
        self.stride = check_int_pair("stride", stride)
        self.padding = _check_padding(padding)
        self.dilation = check_int_pair("dilation", dilation)
        self.padding_mode = check_choice("padding_mode", padding_mode, _PADDING_MODES)
        if self.padding == "same" and self.stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got stride={self.stride}")

    def _geometry_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s

    @staticmethod
    def _conv_args(conv: nn.Conv2d) -> dict:
        return dict(
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            padding_mode=conv.padding_mode,
        )


class LowRankConv2d(_ConvGeometry):
    """A convolution through ``r`` intermediate channels (Denton et al. 2014, channel SVD).

    The kernel ``K`` (C_out × C_in × k_h × k_w) flattened to ``W`` (C_out × C_in·k_h·k_w) is
    factorized ``W ≈ A @ B`` with ``A`` (C_out×r), ``B`` (r×C_in·k_h·k_w). Since a
    convolution is ``W`` times the im2col matrix of the input, this is a real k_h×k_w
    convolution with ``r`` filters (``B``; same stride, padding, dilation and padding mode)
    followed by a 1×1 convolution (``A``, with the bias). Cost per output position:
    ``r(C_in·k_h·k_w + C_out)`` instead of ``C_out·C_in·k_h·k_w``, a saving for
    ``r < d²cf / (d²c + f)`` (:func:`pruning_utils.linalg.conv_break_even_rank`).

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode:
        As in ``nn.Conv2d`` (``groups`` must be 1).
    rank:
        ``r`` in ``[1, min(C_out, C_in·k_h·k_w)]``.
    bias:
        Whether the 1×1 convolution has a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        rank: int,
        stride: IntPair = 1,
        padding: str | IntPair = 0,
        dilation: IntPair = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._set_geometry(
            in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode
        )
        kh, kw = self.kernel_size
        rank = check_int("rank", rank, 1, min(self.out_channels, self.in_channels * kh * kw))
        kw_ = {"device": device, "dtype": dtype}
        self.first = nn.Conv2d(
            self.in_channels,
            rank,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=False,
            padding_mode=self.padding_mode,
            **kw_,
        )
        self.second = nn.Conv2d(rank, self.out_channels, 1, bias=bool(bias), **kw_)

    @property
    def rank(self) -> int:
        """The number of intermediate channels ``r``."""
        return self.first.out_channels

    @classmethod
    def _from_factors(cls, conv: nn.Conv2d, A: Tensor, B: Tensor) -> LowRankConv2d:
        """Build from factors of ``conv_weight_matrix(conv.weight) ≈ A @ B``."""
        W = conv.weight
        r = A.shape[1]
        layer = cls(
            **cls._conv_args(conv),
            rank=r,
            bias=conv.bias is not None,
            device=W.device,
            dtype=W.dtype,
        )
        with torch.no_grad():
            layer.first.weight.copy_(B.reshape(r, *W.shape[1:]))
            layer.second.weight.copy_(A.reshape(W.shape[0], r, 1, 1))
            if conv.bias is not None:
                layer.second.bias.copy_(conv.bias)
        return layer

    @classmethod
    def from_conv2d(
        cls, conv: nn.Conv2d, rank: int | None = None, energy: float | None = None
    ) -> LowRankConv2d:
        """Factorize a trained ``nn.Conv2d`` by truncated SVD of its flattened kernel.

        The error of the flattened kernel is the Eckart–Young tail:
        ``‖W − AB‖_F = (Σ_{j>r} σ_j²)^{1/2}``.

        Parameters
        ----------
        conv:
            The convolution (``groups=1``; left untouched).
        rank:
            ``r`` in ``[1, min(C_out, C_in·k_h·k_w)]``; give exactly one of rank and energy.
        energy:
            Fraction in ``(0, 1]`` of ``Σσ²`` to keep.

        Returns
        -------
        LowRankConv2d
        """
        _check_module("conv", conv, nn.Conv2d)
        _check_ungrouped("conv", conv)
        check_tensor("conv.weight", conv.weight.detach(), 4)
        W = conv_weight_matrix(conv.weight.detach())
        rank, energy = _factor_rank(rank, energy, min(W.shape))
        A, B = low_rank_factors(W, rank=rank, energy=energy)
        return cls._from_factors(conv, A.to(W), B.to(W))

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"{self._geometry_repr()}, rank={self.rank}, bias={self.second.bias is not None}"


class SpatialLowRankConv2d(_ConvGeometry):
    """Spatially separated convolution (Jaderberg, Vedaldi & Zisserman 2014).

    With ``M[(c, y), (f, x)] = K[f, c, y, x]`` (:func:`spatial_weight_matrix`, a
    ``(C_in·k_h) × (C_out·k_w)`` matrix) and its rank-r SVD ``M ≈ V @ H``::

        K[f, c, y, x] ≈ Σ_r V[(c, y), r] H[r, (f, x)]

    i.e. a vertical k_h×1 convolution C_in → r (stride, padding and dilation of the rows)
    followed by a horizontal 1×k_w convolution r → C_out (those of the columns) carrying
    the bias. Exact at ``r = min(C_in·k_h, C_out·k_w)``, also for the padding modes that pad
    each axis independently (zeros, reflect, replicate, circular). Cost per output position
    about ``r(C_in·k_h + C_out·k_w)`` instead of ``C_out·C_in·k_h·k_w``.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode:
        As in ``nn.Conv2d`` (``groups`` must be 1).
    rank:
        ``r`` in ``[1, min(C_in·k_h, C_out·k_w)]``.
    bias:
        Whether the horizontal convolution has a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        rank: int,
        stride: IntPair = 1,
        padding: str | IntPair = 0,
        dilation: IntPair = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._set_geometry(
            in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode
        )
        kh, kw = self.kernel_size
        rank = check_int("rank", rank, 1, min(self.in_channels * kh, self.out_channels * kw))
        if isinstance(self.padding, str):
            pad_v: str | tuple[int, int] = self.padding
            pad_h: str | tuple[int, int] = self.padding
        else:
            pad_v, pad_h = (self.padding[0], 0), (0, self.padding[1])
        kw_ = {"device": device, "dtype": dtype}
        self.vertical = nn.Conv2d(
            self.in_channels,
            rank,
            (kh, 1),
            stride=(self.stride[0], 1),
            padding=pad_v,
            dilation=(self.dilation[0], 1),
            bias=False,
            padding_mode=self.padding_mode,
            **kw_,
        )
        self.horizontal = nn.Conv2d(
            rank,
            self.out_channels,
            (1, kw),
            stride=(1, self.stride[1]),
            padding=pad_h,
            dilation=(1, self.dilation[1]),
            bias=bool(bias),
            padding_mode=self.padding_mode,
            **kw_,
        )

    @property
    def rank(self) -> int:
        """The number of intermediate channels ``r``."""
        return self.vertical.out_channels

    @classmethod
    def _from_factors(cls, conv: nn.Conv2d, V: Tensor, H: Tensor) -> SpatialLowRankConv2d:
        """Build from factors of ``spatial_weight_matrix(conv.weight) ≈ V @ H``."""
        f, c, kh, kw = conv.weight.shape
        r = V.shape[1]
        layer = cls(
            **cls._conv_args(conv),
            rank=r,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            layer.vertical.weight.copy_(V.T.reshape(r, c, kh, 1))
            layer.horizontal.weight.copy_(H.reshape(r, f, kw).permute(1, 0, 2).reshape(f, r, 1, kw))
            if conv.bias is not None:
                layer.horizontal.bias.copy_(conv.bias)
        return layer

    @classmethod
    def from_conv2d(
        cls, conv: nn.Conv2d, rank: int | None = None, energy: float | None = None
    ) -> SpatialLowRankConv2d:
        """Separate a trained ``nn.Conv2d`` into a vertical and a horizontal convolution.

        Parameters
        ----------
        conv:
            The convolution (``groups=1``; left untouched).
        rank:
            ``r`` in ``[1, min(C_in·k_h, C_out·k_w)]``; give exactly one of rank and energy.
        energy:
            Fraction in ``(0, 1]`` of the spectrum's ``Σσ²`` (of :func:`spatial_weight_matrix`)
            to keep.

        Returns
        -------
        SpatialLowRankConv2d
        """
        _check_module("conv", conv, nn.Conv2d)
        _check_ungrouped("conv", conv)
        check_tensor("conv.weight", conv.weight.detach(), 4)
        M = spatial_weight_matrix(conv.weight.detach())
        rank, energy = _factor_rank(rank, energy, min(M.shape))
        V, H = low_rank_factors(M, rank=rank, energy=energy)
        return cls._from_factors(conv, V.to(M), H.to(M))

    def forward(self, x: Tensor) -> Tensor:
        return self.horizontal(self.vertical(x))

    def extra_repr(self) -> str:
        bias = self.horizontal.bias is not None
        return f"{self._geometry_repr()}, rank={self.rank}, bias={bias}"


# ---------------------------------------------------------------------------
# randomized multiplication
# ---------------------------------------------------------------------------


def _normalized(weights: Tensor) -> tuple[Tensor, Tensor]:
    """``(weights / Σ weights, Σ weights)``, uniform where the sum is zero or not finite.

    Computed on the device without asking the host anything (no ``float(total)``), so a
    forward never waits for a GPU. The sum is returned so that a non-finite input can
    make the output non-finite (see ``poison`` in ``linalg._sampled_product``).
    """
    total = weights.sum()
    usable = torch.isfinite(total) & (total > 0)
    uniform = torch.full_like(weights, 1.0 / weights.numel())
    return torch.where(usable, weights / total, uniform), total


class _Sampled(nn.Module):
    """Seed, lazy generator, sampling rule and cached probabilities of the randomized layers.

    The generator is created from ``seed`` on first use (on the device of the inputs) and
    is not part of the pickled state: a copy of the layer restarts its stream from
    ``seed``. The seed travels with ``state_dict()`` (as extra state).

    Buffers: ``weight_norms`` (``‖W_{:,k}‖`` for every inner index k, saved in the
    state dict) and ``weight_probabilities`` (the ``"weights"`` rule, derived from the
    norms, not saved). Both are refreshed by :meth:`refresh_probabilities`, on every
    call in training mode, and when a state dict is loaded. Nothing in a forward call
    validates them or waits for the device.
    """

    def _init_sampling(self, samples: int, probabilities: str, seed: int | None) -> None:
        self.samples = check_int("samples", samples)
        self.probabilities = check_choice("probabilities", probabilities, PROBABILITY_RULES)
        self.seed = _seed_from(seed)
        self._generator: torch.Generator | None = None
        self._generator_device: torch.device | None = None

    def _init_buffers(self) -> None:
        norms = self._weight_matrix().norm(dim=0)
        self.register_buffer("weight_norms", norms)
        self.register_buffer("weight_probabilities", self._weight_rule(norms), persistent=False)

    @staticmethod
    def _weight_rule(norms: Tensor) -> Tensor:
        """``p_k ∝ ‖W_{:,k}‖``, normalised in float64 and returned in the norms' dtype."""
        return _normalized(norms.to(torch.float64))[0].to(norms.dtype)

    def reseed(self, seed: int) -> None:
        """Restart the stream of samples from ``seed`` (an int in ``[0, 2**63)``)."""
        self.seed = check_seed("seed", seed)
        self._generator = None

    def _get_generator(self, device: torch.device) -> torch.Generator | None:
        if device.type == "meta":  # shapes only: nothing is drawn
            return None
        if self._generator is None or self._generator_device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
            self._generator_device = device
        return self._generator

    def get_extra_state(self) -> dict:
        return {"seed": self.seed}

    def set_extra_state(self, state: dict) -> None:
        self.reseed(int(state["seed"]))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_generator"] = None
        state["_generator_device"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_generator_device", None)  # layers pickled before it existed
        super().__setstate__(state)
        if "weight_probabilities" not in self._buffers:
            norms = self._buffers["weight_norms"]
            self._buffers["weight_probabilities"] = self._weight_rule(norms)
            self._non_persistent_buffers_set.add("weight_probabilities")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        with torch.no_grad():
            self.weight_probabilities = self._weight_rule(self.weight_norms)

    def _check_input(self, x: Tensor) -> None:
        """Host-side checks of a forward's input (shapes and devices only: no sync)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.device != self.weight.device:
            raise ValueError(
                f"input is on {x.device} but the layer's weights are on {self.weight.device}; "
                f"move the input with x.to({str(self.weight.device)!r})"
            )

    def _probabilities(self, inputs: Tensor, dim: int) -> tuple[Tensor, Tensor | None]:
        """Sampling probabilities over the inner dimension, and the batch total (or None).

        ``inputs`` is the factor of the product that comes from the batch; its norms along
        ``dim`` are the input norms of the inner indices (``X`` with ``dim=0`` for a
        linear layer, the im2col matrix ``U`` with ``dim=1`` for a convolution). The
        ``"batch"`` rule computes them in the batch's dtype (float32 for half precision),
        never in a float64 copy of the batch.
        """
        if self.training:  # weights may have changed since the last call
            self.refresh_probabilities()
        if self.probabilities == "weights":
            return self.weight_probabilities, None
        acc = torch.promote_types(inputs.dtype, torch.float32)
        a = torch.linalg.vector_norm(inputs, dim=dim, dtype=acc)
        return _normalized(a * self.weight_norms.to(acc))

    def refresh_probabilities(self) -> None:
        """Recompute the cached weight norms and weight-rule probabilities from the weights."""
        with torch.no_grad():
            self.weight_norms.copy_(self._weight_matrix().norm(dim=0))
            self.weight_probabilities.copy_(self._weight_rule(self.weight_norms))


class RandomizedLinear(_Sampled):
    """A linear layer that multiplies by sampling (Drineas, Kannan & Mahoney 2006).

    For inputs ``X`` (N×n, rows are samples) and ``W`` (m×n), ``X Wᵀ = Σ_k X_{:,k} W_{:,k}ᵀ``
    over the inner dimension ``k = 1..n``. Each forward draws ``c = samples`` indices
    ``i_1..i_c`` i.i.d. with ``P(i = k) = p_k`` and returns the unbiased estimate::

        y = (1/c) Σ_t X_{:,i_t} W_{:,i_t}ᵀ / p_{i_t} + b,     E[y] = X Wᵀ + b.

    It samples in training and evaluation mode alike (it is an estimator); ``c ≥ n`` is
    allowed (still i.i.d. with replacement, so still random). Fresh indices are drawn on
    every call from the layer's own generator (seeded with ``seed``; :meth:`reseed`), on
    the device of the input: a seed gives the same stream on every run of one device
    type, and different streams on CPU and CUDA.

    Probability rules (``probabilities``):

    ``"batch"``
        The original work's rule, ``p_k ∝ ‖X_{:,k}‖ · ‖W_{:,k}‖`` (norm of input column k
        over the batch times the norm of the weights leaving input k, i.e. row k of
        ``Wᵀ``). These are the optimal DKM probabilities for this batch, minimising
        ``E‖XWᵀ − estimate‖_F²``. Extra cost per forward: ``O(N·n)`` for the input norms
        (in the batch's dtype; the weight norms are cached in the buffer ``weight_norms``).
        A batch with a NaN or an infinity gives a NaN output.
    ``"weights"``
        ``p_k ∝ ‖W_{:,k}‖``, precomputed once (buffer ``weight_probabilities``). This is
        the optimal rule when every input feature has the same norm over the batch; if
        the actual input-column norms differ by at most a factor κ, then
        ``p_k ≥ optimal_k / κ`` and the DKM bound
        ``E‖XWᵀ − estimate‖_F² ≤ κ ‖X‖_F²‖W‖_F² / c`` still holds. Extra cost ``O(n)``.

    Either way the product costs ``N·u·m`` multiply-adds instead of ``N·n·m`` (``u ≤ c`` distinct
    indices), plus drawing ``c`` indices (``O(n + c)``) and copying the ``u`` sampled columns of
    ``X`` and rows of ``Wᵀ`` (``O((N + m)·u)`` memory traffic). The weight is stored
    column by column (``weight.T`` is contiguous), so each sampled row of ``Wᵀ`` is one
    contiguous read. Only a small ``c/n`` can pay for that overhead, and a small ``c/n``
    means a large variance: measure before concluding. In training mode the cached
    weight norms are recomputed on every call (``O(n·m)``) because the weights change.

    A forward never makes the host wait for the device: no value is read back, and on a
    GPU the distinct indices fill ``min(c, n)`` slots (unused ones weigh 0) instead of
    exactly ``u`` (see :func:`pruning_utils.linalg.randomized_matmul`).

    Parameters
    ----------
    in_features, out_features:
        ``n`` and ``m``.
    samples:
        ``c``, an int >= 1.
    probabilities:
        ``"weights"`` (default) or ``"batch"``.
    bias:
        Whether the layer has a bias.
    seed:
        Seed of the layer's generator; ``None`` draws one from torch's global generator.

    Examples
    --------
    >>> dense = nn.Linear(8, 3)
    >>> layer = RandomizedLinear.from_linear(dense, samples=4, generator=0)
    >>> layer(torch.ones(2, 8)).shape
    torch.Size([2, 3])
    >>> layer(torch.ones(0, 8)).shape  # an empty batch, as in nn.Linear
    torch.Size([0, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        samples: int,
        probabilities: str = "weights",
        bias: bool = True,
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.out_features = check_int("out_features", out_features)
        self._init_sampling(samples, probabilities, seed)
        kw = {"device": device, "dtype": dtype}
        dense = nn.Linear(in_features, out_features, bias=bool(bias), **kw)
        # the same values as nn.Linear's initialisation, stored column by column
        self.weight = nn.Parameter(_column_major(dense.weight.detach()))
        self.bias = dense.bias
        self._init_buffers()

    def _weight_matrix(self) -> Tensor:
        # row-major copy: the norms are then reduced in the same order as for nn.Linear
        return self.weight.detach().contiguous()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self.weight.T.is_contiguous():  # load_state_dict(assign=True) replaced it
            self.weight = nn.Parameter(
                _column_major(self.weight.detach()), requires_grad=self.weight.requires_grad
            )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        samples: int,
        probabilities: str = "weights",
        generator: torch.Generator | int | None = None,
    ) -> RandomizedLinear:
        """Wrap the weights of a trained ``nn.Linear`` (copied; the layer is left untouched).

        Parameters
        ----------
        linear:
            The dense layer (its weights finite, not on the meta device).
        samples:
            ``c``, the number of sampled inner indices per forward (int >= 1).
        probabilities:
            ``"weights"`` or ``"batch"`` (see the class docstring).
        generator:
            An int seed (the layer's seed), a ``torch.Generator`` to draw the seed from
            (on its device), or ``None`` (a seed from torch's global generator).

        Returns
        -------
        RandomizedLinear
            On the layer's device and dtype.
        """
        _check_module("linear", linear, nn.Linear)
        W = check_tensor("linear.weight", linear.weight.detach(), 2)
        layer = cls(
            linear.in_features,
            linear.out_features,
            samples,
            probabilities,
            bias=linear.bias is not None,
            seed=_seed_from(generator),
            device=W.device,
            dtype=W.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(W)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.refresh_probabilities()
        return layer

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"input must have in_features={self.in_features} entries in its last "
                f"dimension, got shape {tuple(x.shape)}"
            )
        X = x.reshape(-1, self.in_features)  # N × n
        Wt = self.weight.T  # n × m, contiguous: each sampled row is one contiguous read
        p, total = self._probabilities(X.detach(), dim=0)
        gen = self._get_generator(X.device)
        y = _sampled_product(X, Wt, self.samples, p, gen, poison=total)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"samples={self.samples}, probabilities={self.probabilities!r}, "
            f"bias={self.bias is not None}, seed={self.seed}"
        )


def _column_major(W: Tensor) -> Tensor:
    """``W`` (m×n) with the same values, stored so that ``W.T`` is contiguous."""
    return W.T.contiguous().T


class RandomizedConv2d(_Sampled, _ConvGeometry):
    """A convolution computed as a sampled im2col product.

    The input is unfolded (im2col) into ``U`` of shape ``(C_in·k_h·k_w) × (N·L)`` with
    ``L = H_out·W_out`` positions; the convolution is ``W U`` with ``W`` the flattened kernel
    (C_out × C_in·k_h·k_w). Each forward samples ``c`` inner indices (kernel taps) and
    returns ``(1/c) Σ_t W_{:,i_t} U_{i_t,:} / p_{i_t}`` plus the bias, folded back to
    ``(N, C_out, H_out, W_out)``. One set of indices serves the whole batch.

    Probability rules as in :class:`RandomizedLinear`: ``"batch"`` uses
    ``p_k ∝ ‖U_{k,:}‖ · ‖W_{:,k}‖`` (extra ``O(N·L·C_in·k_h·k_w)`` per call, as much as
    unfolding), ``"weights"`` uses ``p_k ∝ ‖W_{:,k}‖``. Unfolding materialises a
    ``k_h·k_w`` times larger copy of the input, so this layer is a teaching device for the
    estimator, not a fast convolution. Like :class:`RandomizedLinear` it samples on the
    input's device without making the host wait for it.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode:
        As in ``nn.Conv2d`` (``groups`` must be 1).
    samples:
        ``c``, an int >= 1 (``C_in·k_h·k_w`` inner indices exist).
    probabilities:
        ``"weights"`` (default) or ``"batch"``.
    bias:
        Whether the layer has a bias.
    seed:
        Seed of the layer's generator; ``None`` draws one from torch's global generator.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        samples: int,
        probabilities: str = "weights",
        stride: IntPair = 1,
        padding: str | IntPair = 0,
        dilation: IntPair = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._set_geometry(
            in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode
        )
        self._init_sampling(samples, probabilities, seed)
        dense = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            bias=bool(bias),
            device=device,
            dtype=dtype,
        )
        self.weight = dense.weight
        self.bias = dense.bias
        self._init_buffers()

    def _weight_matrix(self) -> Tensor:
        return self.weight.detach().reshape(self.out_channels, -1)  # C_out × C_in·k_h·k_w

    @classmethod
    def from_conv2d(
        cls,
        conv: nn.Conv2d,
        samples: int,
        probabilities: str = "weights",
        generator: torch.Generator | int | None = None,
    ) -> RandomizedConv2d:
        """Wrap the kernel of a trained ``nn.Conv2d`` (copied; the layer is left untouched).

        Parameters
        ----------
        conv:
            The convolution (``groups=1``).
        samples:
            ``c``, the number of sampled kernel taps per forward (int >= 1).
        probabilities:
            ``"weights"`` or ``"batch"``.
        generator:
            An int seed, a ``torch.Generator`` to draw the seed from, or ``None``.
        """
        _check_module("conv", conv, nn.Conv2d)
        _check_ungrouped("conv", conv)
        check_tensor("conv.weight", conv.weight.detach(), 4)
        layer = cls(
            **cls._conv_args(conv),
            samples=samples,
            probabilities=probabilities,
            bias=conv.bias is not None,
            seed=_seed_from(generator),
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        layer.refresh_probabilities()
        return layer

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.ndim not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(
                f"input must be (N, C, H, W) or (C, H, W) with C = in_channels = "
                f"{self.in_channels}, got shape {tuple(x.shape)}"
            )
        unbatched = x.ndim == 3
        if unbatched:
            x = x.unsqueeze(0)
        pads = _resolve_padding(self.padding, self.kernel_size, self.dilation)
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        if any(pads):
            x = F.pad(x, pads, mode=mode)
        n, _, h, w = x.shape
        (kh, kw), (dh, dw), (sh, sw) = self.kernel_size, self.dilation, self.stride
        h_out = (h - dh * (kh - 1) - 1) // sh + 1
        w_out = (w - dw * (kw - 1) - 1) // sw + 1
        if h_out < 1 or w_out < 1:
            raise ValueError(
                f"input of spatial size {h}×{w} (after padding) is smaller than the dilated "
                f"kernel {dh * (kh - 1) + 1}×{dw * (kw - 1) + 1}"
            )
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, stride=self.stride)
        U = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (C_in·kh·kw) × (N·L)
        W = self.weight.reshape(self.out_channels, -1)  # C_out × (C_in·kh·kw)
        p, total = self._probabilities(U.detach(), dim=1)
        gen = self._get_generator(x.device)
        y = _sampled_product(W, U, self.samples, p, gen, poison=total)  # C_out × (N·L)
        y = y.reshape(self.out_channels, n, h_out, w_out).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (
            f"{self._geometry_repr()}, samples={self.samples}, "
            f"probabilities={self.probabilities!r}, bias={self.bias is not None}, seed={self.seed}"
        )
