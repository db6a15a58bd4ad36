"""Pure functions on tensors: the theorems of the book.

Shapes follow PyTorch: a weight matrix ``W`` is ``out_features × in_features``
(``m × n``), data matrices hold samples in rows (``N × d``). Nothing here builds an
``nn.Module``; ``layers`` and ``surgery`` turn these factors into networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor

from pruning_utils.validation import (
    COMPUTE_DTYPES,
    check_choice,
    check_dtype,
    check_exactly_one,
    check_fraction,
    check_generator,
    check_int,
    check_int_pair,
    check_real,
    check_same_device,
    check_tensor,
    is_int,
)

# ---------------------------------------------------------------------------
# Conventions of this module
#
# * Arguments are checked by pruning_utils.validation (TypeError for a wrong kind,
#   ValueError for a bad value, the message names the argument).
# * Devices: every function computes on the device of its tensor arguments and returns
#   tensors there; meta tensors are refused (they hold no values).
# * Generators: ``None`` is torch's global generator, an int a new generator seeded with
#   it on the data's device, a ``torch.Generator`` itself (it must live on the data's
#   device type). A seed gives the same result on every run of the same device type;
#   CPU and CUDA streams differ. Functions that are reproducible by default take
#   ``generator=0``.
# * Half precision (float16, bfloat16): the factorizations run in ``compute_dtype``
#   (float32 when ``compute_dtype=None``, as LAPACK and cuSOLVER have no half-precision
#   SVD or QR) and return the input's dtype; see each function.
# ---------------------------------------------------------------------------


def _compute_dtype(X: Tensor, compute_dtype: object) -> torch.dtype:
    """The dtype a factorisation runs in: ``compute_dtype``, else X's own (float32 for half)."""
    if compute_dtype is None:
        return X.dtype if X.dtype in COMPUTE_DTYPES else torch.float32
    return check_dtype("compute_dtype", compute_dtype, COMPUTE_DTYPES)


def _working_dtype(X: Tensor) -> torch.dtype:
    """X's dtype, or float32 for half precision (no half-precision QR/SVD/solve kernels)."""
    return X.dtype if X.dtype in COMPUTE_DTYPES else torch.float32


_SPLITS = ("balanced", "left", "right")


def _thin_svd(M: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``M = U diag(S) Vh``, computed on the tall orientation.

    For a wide ``M`` (m < n) the SVD of ``Mᵀ`` is taken and transposed back: the same
    factorization (up to the signs of singular-vector pairs, which cancel in ``U diag(S) Vh``),
    but LAPACK's gesdd was measured 2.5–3× faster on 8192×2048 than on 2048×8192 here (MKL,
    2 threads, float32 and float64).
    """
    if M.shape[0] >= M.shape[1]:
        return torch.linalg.svd(M, full_matrices=False)
    V, S, Uh = torch.linalg.svd(M.mT, full_matrices=False)
    return Uh.mT, S, V.mT


def _split_factors(U: Tensor, S: Tensor, Vh: Tensor, split: str) -> tuple[Tensor, Tensor]:
    """Put the singular values into A, B or half into each: U diag(S) Vh = A @ B."""
    if split == "balanced":
        root = S.sqrt()
        return U * root, root[:, None] * Vh
    if split == "left":
        return U * S, Vh.clone()
    return U.clone(), S[:, None] * Vh


# ---------------------------------------------------------------------------
# Truncated SVD, energy and the Eckart-Young theorem
# ---------------------------------------------------------------------------


def truncated_svd(
    W: Tensor, rank: int, *, compute_dtype: torch.dtype | None = torch.float64
) -> tuple[Tensor, Tensor, Tensor]:
    """The leading ``rank`` singular triplets of ``W``.

    With ``W = Σ_i σ_i u_i v_iᵀ`` (``σ_1 ≥ σ_2 ≥ …``), returns ``U = [u_1 … u_r]``,
    ``S = (σ_1, …, σ_r)`` and ``Vh = [v_1 … v_r]ᵀ``, so ``U @ diag(S) @ Vh`` is the
    best rank-r approximation of ``W`` in every unitarily invariant norm
    (Eckart–Young–Mirsky).

    Parameters
    ----------
    W:
        Matrix ``m × n``.
    rank:
        Number of triplets ``r`` in ``[1, min(m, n)]``.
    compute_dtype:
        Dtype the SVD runs in (default float64, for accuracy); ``None`` runs it in
        W's dtype (float32 for a float16 or bfloat16 ``W``). Results come back in W's
        dtype, on W's device.

    Returns
    -------
    U, S, Vh:
        ``U`` (m×r) with orthonormal columns, ``S`` (r,) non-increasing and
        non-negative, ``Vh`` (r×n) with orthonormal rows.

    Examples
    --------
    >>> W = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    >>> U, S, Vh = truncated_svd(W, 2)
    >>> S
    tensor([3., 2.])
    """
    W = check_tensor("W", W, 2)
    rank = check_int("rank", rank, 1, min(W.shape))
    dtype = _compute_dtype(W, compute_dtype)
    U, S, Vh = torch.linalg.svd(W.detach().to(dtype), full_matrices=False)
    return (
        U[:, :rank].to(W.dtype).contiguous(),
        S[:rank].to(W.dtype).contiguous(),
        Vh[:rank].to(W.dtype).contiguous(),
    )


def _check_spectrum(name: str, S) -> Tensor:
    """Singular values: a finite, non-negative, non-increasing 1-D tensor."""
    S = check_tensor(name, S, 1)
    if bool((S < 0).any()):
        raise ValueError(f"{name} must be non-negative (singular values), got min {S.min():.3g}")
    if S.numel() > 1 and bool((S[1:] > S[:-1]).any()):
        raise ValueError(
            f"{name} must be sorted in non-increasing order, as torch.linalg.svd returns "
            "singular values; sort it with S.sort(descending=True).values"
        )
    return S


def rank_for_energy(S: Tensor, energy: float, *, rtol: float | None = None) -> int:
    """Smallest rank whose leading singular values keep a fraction ``energy`` of the energy.

    Returns the smallest ``r`` with ``Σ_{i≤r} σ_i² ≥ energy · Σ_i σ_i²``. This is the rule
    of scikit-learn's ``PCA(n_components=<float>)`` (cumulative explained-variance ratio,
    ``searchsorted(..., side="right") + 1``), which differs only on exact ties, where
    scikit-learn asks for strictly more than ``energy``.

    Round-off: singular values ``σ_i ≤ rtol · σ_1`` are treated as exact zeros, with
    ``rtol = len(S) · eps(S.dtype)`` by default (the rule of ``torch.linalg.matrix_rank``
    with ``len(S)`` for ``max(m, n)``). They are SVD noise, so ``energy=1.0`` returns the
    numerical rank, the count of ``σ_i > rtol · σ_1``, instead of ``len(S)`` because the
    noise carried a few ulps of energy. Below ``energy=1`` the change is of order
    ``len(S)³ · eps²`` and does not matter.

    Parameters
    ----------
    S:
        Singular values (1-D, non-negative, non-increasing), e.g. from
        :func:`torch.linalg.svdvals`.
    energy:
        Fraction of ``Σ σ_i²`` to keep, in ``(0, 1]``.
    rtol:
        Relative threshold below which singular values count as zero; ``None`` for the
        default above. A non-negative float.

    Returns
    -------
    int
        The rank ``r`` in ``[1, len(S)]``; 1 when ``S`` is all zero.
    """
    S = _check_spectrum("S", S)
    energy = check_fraction("energy", energy)
    if rtol is None:
        rtol = S.numel() * torch.finfo(S.dtype).eps
    else:
        rtol = check_real("rtol", rtol, lower=0.0)
    s = S.detach().to(torch.float64, copy=True)
    if float(s[0]) == 0.0:
        return 1
    s[s <= float(rtol) * s[0]] = 0.0
    cumulative = torch.cumsum(s * s, dim=0)
    # cumulative[-1] is the total computed by the same additions, so energy=1 is exact
    threshold = energy * cumulative[-1]
    return int(torch.searchsorted(cumulative, threshold, side="left")) + 1


def energy_kept(S: Tensor, rank: int) -> float:
    """Fraction of the energy kept by the leading ``rank`` singular values.

    ``Σ_{i≤r} σ_i² / Σ_i σ_i²``; by Eckart–Young, ``1 − energy_kept(S, r)`` is the squared
    relative Frobenius error ``‖W − W_r‖_F² / ‖W‖_F²`` of the rank-r truncation.

    Parameters
    ----------
    S:
        Singular values (1-D, non-negative, non-increasing).
    rank:
        ``r`` in ``[1, len(S)]``.

    Returns
    -------
    float
        The fraction in ``[0, 1]``; 1.0 when ``S`` is all zero (nothing to lose).
    """
    S = _check_spectrum("S", S)
    rank = check_int("rank", rank, 1, S.numel())
    s2 = S.detach().to(torch.float64) ** 2
    total = float(s2.sum())
    if total == 0.0:
        return 1.0
    return min(1.0, float(s2[:rank].sum()) / total)


# ---------------------------------------------------------------------------
# Randomized SVD (Halko, Martinsson & Tropp 2011)
# ---------------------------------------------------------------------------


def _gaussian(rows: int, cols: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard Gaussian matrix on ``like``'s device and dtype, drawn from ``generator``.

    ``generator`` lives on that device (:func:`~pruning_utils.validation.check_generator`);
    ``None`` draws from torch's global generator of that device.
    """
    return torch.randn(rows, cols, generator=generator, dtype=like.dtype, device=like.device)


def randomized_range_finder(
    W: Tensor, size: int, n_iter: int = 0, generator: torch.Generator | int | None = None
) -> Tensor:
    """Orthonormal basis ``Q`` (m × size) of an approximate range of ``W`` (HMT Alg. 4.4).

    Draws a Gaussian ``Ω`` (n × size), forms ``Y = W Ω`` and orthonormalises it,
    ``Q R = Y``. Each of the ``n_iter`` power (subspace) iterations applies ``Wᵀ`` then
    ``W`` and re-orthonormalises after *each* application, ``Q ← qr(W qr(Wᵀ Q))``;
    without it, directions with ``σ_j < eps^{1/(2q+1)} σ_1`` would be lost to
    round-off in ``(W Wᵀ)^q W Ω``. ``‖W − Q Qᵀ W‖`` is the error bounded by
    :func:`hmt_error_bound`.

    Parameters
    ----------
    W:
        Matrix ``m × n``; the computation runs in its dtype on its device (float32 for a
        float16 or bfloat16 ``W``, with ``Q`` returned in W's dtype).
    size:
        Number of columns ``ℓ`` of the basis (target rank plus oversampling), in
        ``[1, min(m, n)]``.
    n_iter:
        Number of power iterations ``q ≥ 0``.
    generator:
        Source of the Gaussian test matrix: ``None`` (torch's global generator of W's
        device), an int seed, or a ``torch.Generator`` on W's device type.

    Returns
    -------
    Tensor
        ``Q`` (m × ℓ) with orthonormal columns.
    """
    W = check_tensor("W", W, 2)
    size = check_int("size", size, 1, min(W.shape))
    n_iter = check_int("n_iter", n_iter, lower=0)
    generator = check_generator(generator, W.device)
    Q = _range_finder(W.detach().to(_working_dtype(W)), size, n_iter, generator)
    return Q.to(W.dtype)


def _range_finder(W: Tensor, size: int, n_iter: int, generator) -> Tensor:
    Omega = _gaussian(W.shape[1], size, W, generator)  # n × ℓ
    Q, _ = torch.linalg.qr(W @ Omega)  # m × ℓ
    for _ in range(n_iter):
        Z, _ = torch.linalg.qr(W.mT @ Q)  # n × ℓ
        Q, _ = torch.linalg.qr(W @ Z)  # m × ℓ
    return Q


def randomized_svd(
    W: Tensor,
    rank: int,
    oversample: int = 10,
    n_iter: int = 2,
    generator: torch.Generator | int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Approximate leading ``rank`` singular triplets by the randomized SVD of HMT.

    The two stages of Halko, Martinsson & Tropp (2011):

    1. range finder (:func:`randomized_range_finder`): ``Q`` (m × ℓ),
       ``ℓ = min(rank + oversample, m, n)``, an orthonormal basis of
       ``W Ω`` refined by ``n_iter`` power iterations;
    2. ``B = Qᵀ W`` (ℓ × n) is small: its exact SVD ``B = Û Σ Vᵀ`` gives
       ``W ≈ Q Qᵀ W = (Q Û) Σ Vᵀ``, truncated to the leading ``rank`` triplets.

    The cost is ``O(mnℓ)`` per pass over ``W`` instead of ``O(mn·min(m, n))``.

    Parameters
    ----------
    W:
        Matrix ``m × n``; the computation runs in its dtype on its device (float32 for a
        float16 or bfloat16 ``W``, with the results returned in W's dtype).
    rank:
        Target rank ``k`` in ``[1, min(m, n)]``.
    oversample:
        Extra columns ``p ≥ 0`` of the test matrix (HMT recommend 5–10).
    n_iter:
        Power iterations ``q ≥ 0`` (1 or 2 are usually enough).
    generator:
        Source of the Gaussian test matrix: ``None`` (torch's global generator of W's
        device), an int seed or a ``torch.Generator`` on W's device type. The same seed
        gives the same result on the same device type.

    Returns
    -------
    U, S, Vh:
        ``U`` (m×k) orthonormal columns, ``S`` (k,) non-increasing, ``Vh`` (k×n)
        orthonormal rows, with ``W ≈ U @ diag(S) @ Vh``.
    """
    W = check_tensor("W", W, 2)
    rank = check_int("rank", rank, 1, min(W.shape))
    oversample = check_int("oversample", oversample, lower=0)
    n_iter = check_int("n_iter", n_iter, lower=0)
    generator = check_generator(generator, W.device)
    out = W.dtype
    W = W.detach().to(_working_dtype(W))
    size = min(rank + oversample, *W.shape)
    Q = _range_finder(W, size, n_iter, generator)  # m × ℓ
    B = Q.mT @ W  # ℓ × n
    Ub, S, Vh = torch.linalg.svd(B, full_matrices=False)
    U = Q @ Ub[:, :rank]
    return (
        U.to(out).contiguous(),
        S[:rank].to(out).contiguous(),
        Vh[:rank].to(out).contiguous(),
    )


def hmt_error_bound(
    S: Tensor, rank: int, oversample: int, n_iter: int = 0, *, norm: str = "fro"
) -> float:
    """Bound on the expected range-finder error ``E‖W − Q Qᵀ W‖`` (Halko, Martinsson & Tropp).

    ``Q`` has ``ℓ = k + p`` columns (``k = rank``, ``p = oversample``) and is built by
    :func:`randomized_range_finder` from a Gaussian test matrix with ``q = n_iter``
    power iterations; ``S`` are the singular values of ``W``. Hypotheses of the
    theorems: ``k ≥ 2``, ``p ≥ 2``, ``k + p ≤ min(m, n)``.

    ``norm="fro"``, ``q = 0`` (HMT Thm 10.5)::

        E‖W − QQᵀW‖_F ≤ (1 + k/(p−1))^{1/2} (Σ_{j>k} σ_j²)^{1/2}

    ``norm="spectral"``, ``q = 0`` (Thm 10.6)::

        E‖W − QQᵀW‖_2 ≤ (1 + √(k/(p−1))) σ_{k+1} + (e√(k+p)/p) (Σ_{j>k} σ_j²)^{1/2}

    ``norm="spectral"``, ``q > 0`` (Cor. 10.10): the bound of Thm 10.6 with every
    ``σ_j`` replaced by ``σ_j^{2q+1}``, taken to the power ``1/(2q+1)``.

    ``norm="fro"``, ``q > 0``: HMT state no Frobenius bound for the power scheme, and
    the spectral trick of Cor. 10.10 does not carry over. We return
    ``√k · B_2 + (Σ_{j>k} σ_j²)^{1/2}`` with ``B_2`` the Cor. 10.10 bound, which holds
    because ``‖(I − P)W‖_F² = ‖(I − P)W_k‖_F² + ‖(I − P)(W − W_k)‖_F²`` (the cross
    term vanishes as the right singular vectors of ``W_k`` and ``W − W_k`` are
    orthogonal), ``‖(I − P)W_k‖_F ≤ √k ‖(I − P)W‖_2`` and
    ``‖(I − P)(W − W_k)‖_F ≤ (Σ_{j>k} σ_j²)^{1/2}``. It is valid but loose: plot it
    as an upper envelope, not as a prediction.

    The bound is for the basis ``Q``; the rank-k truncation returned by
    :func:`randomized_svd` can be slightly worse than ``‖W − QQᵀW‖``.

    Parameters
    ----------
    S:
        Singular values of ``W`` (1-D, non-negative, non-increasing).
    rank:
        Target rank ``k ≥ 2``.
    oversample:
        Oversampling ``p ≥ 2`` with ``k + p ≤ len(S)``.
    n_iter:
        Power iterations ``q ≥ 0``.
    norm:
        ``"fro"`` or ``"spectral"``.

    Returns
    -------
    float
        The bound.
    """
    S = _check_spectrum("S", S)
    norm = check_choice("norm", norm, ("fro", "spectral"))
    n_iter = check_int("n_iter", n_iter, lower=0)
    oversample = check_int("oversample", oversample, lower=2)  # HMT Thm 10.5 needs p >= 2
    if not is_int(rank):
        raise TypeError(f"rank must be an int in [2, len(S) - oversample], got {rank!r}")
    upper = S.numel() - int(oversample)
    if not 2 <= rank <= upper:
        raise ValueError(
            f"rank must be an int in [2, len(S) - oversample] = [2, {upper}] "
            f"(HMT need k >= 2 and k + p <= min(m, n)), got {rank}"
        )
    k, p, q = int(rank), int(oversample), n_iter
    s = S.detach().to(torch.float64)
    tail_fro = float(torch.linalg.vector_norm(s[k:]))
    if norm == "fro" and q == 0:
        return math.sqrt(1.0 + k / (p - 1)) * tail_fro
    power = 2 * q + 1
    scale = float(s[0]) if float(s[0]) > 0 else 1.0
    t = (s / scale) ** power  # scaled to avoid overflow of σ^(2q+1)
    spectral = (
        (1.0 + math.sqrt(k / (p - 1))) * float(t[k])
        + math.e * math.sqrt(k + p) / p * float(torch.linalg.vector_norm(t[k:]))
    ) ** (1.0 / power) * scale
    if norm == "spectral":
        return spectral
    return math.sqrt(k) * spectral + tail_fro


# ---------------------------------------------------------------------------
# Low-rank factors W ≈ A @ B
# ---------------------------------------------------------------------------

# Settings of the randomized path of low_rank_factors: more power iterations and
# oversampling than the randomized_svd defaults, so that the error stays within 1 % of
# the Eckart-Young optimum even for flat spectra (Gaussian matrices, freshly
# initialised layers), the hardest case. Measured (float64, 512×1024, worst of 2 seeds):
# p = r//4 + 10 and q = 4 gave at most 1.0062× the optimal Frobenius error for r ≤ 192
# (Gaussian, σ_j = j^-0.25 and j^-0.5), where the defaults p = 10, q = 2 reached 1.029×.
_AUTO_N_ITER = 4


def _auto_oversample(rank: int) -> int:
    return rank // 4 + 10


# When method="auto" takes the randomized path: min(m, n) >= 256 and the basis size
# l = r + r//4 + 10 is at most a quarter of min(m, n). Measured on a 2-core CPU
# (float64, torch 2.14, the machine shared with other jobs, so best of 10-12
# interleaved runs). Speedup = full-SVD time / randomized_svd time (q = 4), with
# 2 threads and [with 1 thread]:
#   128×512    l/min 0.14: 1.0× [1.5×]  0.25: 0.59× [0.75×]  0.35: 0.32× [0.53×]
#   256×256    l/min 0.15: 3.4× [2.3×]  0.25: 1.2×  [1.65×]  0.35: 1.0×  [0.92×]
#   256×1024   l/min 0.15: 2.1× [2.1×]  0.25: 1.7×  [1.4×]   0.35: 0.76× [0.99×]
#   512×2048   l/min 0.15: 4.2× [2.7×]  0.25: 2.3×  [1.45×]  0.35: 1.5×  [1.0×]
#   2048×8192  r = 64: 7.0×, r = 256: 4.0×, r = 512 (l/min 0.32): 1.4× (full SVD 70-90 s)
# The full SVD of a 128×512 matrix takes about 15 ms, so small layers gain nothing.
# torch.svd_lowrank (same algorithm, global RNG) ran within ±30 % of randomized_svd at
# the same q; we use randomized_svd so that the generator argument makes it reproducible.
_AUTO_MIN_DIM = 256
_AUTO_MAX_FRACTION = 0.25


def _prefer_randomized(m: int, n: int, rank: int) -> bool:
    """Whether method="auto" takes the randomized path for a rank-``rank`` m×n problem."""
    k = min(m, n)
    return k >= _AUTO_MIN_DIM and rank + _auto_oversample(rank) <= _AUTO_MAX_FRACTION * k


def low_rank_factors(
    W: Tensor,
    rank: int | None = None,
    energy: float | None = None,
    *,
    split: str = "balanced",
    method: str = "auto",
    compute_dtype: torch.dtype | None = torch.float64,
    generator: torch.Generator | int | None = 0,
) -> tuple[Tensor, Tensor]:
    """Rank-r factors ``W ≈ A @ B`` with A (m×r), B (r×n) from the truncated SVD.

    With ``W_r = U_r diag(S_r) Vh_r`` the best rank-r approximation (Eckart–Young),
    ``‖W − A B‖_F = (Σ_{j>r} σ_j²)^{1/2}`` and ``‖W − A B‖_2 = σ_{r+1}``. The singular
    values are split between the factors by ``split``:

    - ``"balanced"``: ``A = U_r diag(S_r)^{1/2}``, ``B = diag(S_r)^{1/2} Vh_r``; both
      factors have the same scale (column i of A and row i of B both have norm
      ``√σ_i``), which suits fine-tuning and low-precision storage;
    - ``"left"``: ``A = U_r diag(S_r)``, ``B = Vh_r``;
    - ``"right"``: ``A = U_r``, ``B = diag(S_r) Vh_r`` (the split of the original
      project: A has orthonormal columns).

    As layers, ``x ↦ x Wᵀ`` becomes ``x ↦ (x Bᵀ) Aᵀ``: a Linear n→r then a Linear r→m.

    Parameters
    ----------
    W:
        Matrix ``m × n`` (out_features × in_features).
    rank:
        ``r`` in ``[1, min(m, n)]``.
    energy:
        Keep the smallest rank with ``Σ_{i≤r} σ_i² ≥ energy · Σ σ_i²``, energy in
        ``(0, 1]`` (:func:`rank_for_energy`, with the round-off threshold of W's
        dtype, so ``energy=1.0`` gives the numerical rank of W). Exactly one of
        ``rank`` and ``energy``.
    split:
        ``"balanced"`` (default), ``"left"`` or ``"right"``.
    method:
        ``"full"``: ``torch.linalg.svd``; ``"randomized"``: :func:`randomized_svd` with
        ``p = rank//4 + 10`` and 4 power iterations (within about 1 % of the optimal
        error); ``"auto"``: randomized only where it was measured to be faster (see
        the comment on the rule in the source). ``energy`` needs the whole spectrum and
        always uses the full SVD.
    compute_dtype:
        Dtype of the SVD, default float64 (float32 weights are factorised in double
        precision); ``None`` uses W's dtype (float32 for a float16 or bfloat16 ``W``).
        Results come back in W's dtype, on W's device.
    generator:
        Source of the randomized path's test matrix: an int seed (default 0, so results
        are reproducible on each device type), a ``torch.Generator`` on W's device type,
        or ``None`` for torch's global generator.

    Returns
    -------
    A, B:
        ``A`` (m×r) and ``B`` (r×n) in W's dtype.

    Examples
    --------
    >>> W = torch.outer(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0, 1.0]))
    >>> A, B = low_rank_factors(W, rank=1)
    >>> torch.allclose(A @ B, W)
    True
    """
    W = check_tensor("W", W, 2)
    m, n = W.shape
    check_exactly_one(rank=rank, energy=energy)
    split = check_choice("split", split, _SPLITS)
    method = check_choice("method", method, ("auto", "full", "randomized"))
    if rank is not None:
        rank = check_int("rank", rank, 1, min(m, n))
    else:
        energy = check_fraction("energy", energy)
        if method == "randomized":
            raise ValueError(
                "method='randomized' needs rank=: energy= needs the whole spectrum, "
                "use method='full' or 'auto'"
            )
    generator = check_generator(generator, W.device)
    randomized = rank is not None and (
        method == "randomized" or (method == "auto" and _prefer_randomized(m, n, rank))
    )
    spectrum = Spectrum(
        W, compute_dtype=compute_dtype, rank=rank if randomized else None, generator=generator
    )
    return spectrum.factors(rank=rank, energy=energy, split=split)


# ---------------------------------------------------------------------------
# Break-even ranks
# ---------------------------------------------------------------------------


def break_even_rank(m: int, n: int) -> float:
    """Rank below which ``W ≈ A @ B`` has fewer parameters and multiply-adds than ``W``.

    ``W`` (m×n) has ``mn`` parameters and multiply-adds per input; the factors A (m×r)
    and B (r×n) have ``r(m + n)``. They win for ``r < r* = mn / (m + n)`` (a square
    layer: ``n/2``).

    Parameters
    ----------
    m, n:
        Positive ints, the shape of ``W``.

    Returns
    -------
    float
        ``r* = mn / (m + n)``.
    """
    m = check_int("m", m)
    n = check_int("n", n)
    return m * n / (m + n)


def conv_break_even_rank(in_channels: int, out_channels: int, kernel_size) -> float:
    """Break-even rank of a convolution split into a ``d_h×d_w`` conv c→r and a 1×1 conv r→f.

    The dense kernel has ``d_h d_w c f`` weights (and multiply-adds per output pixel);
    the pair has ``r (d_h d_w c + f)``, so the split wins for
    ``r < r* = d_h d_w c f / (d_h d_w c + f)``. This is :func:`break_even_rank` of the
    flattened kernel ``f × (c d_h d_w)`` (:func:`conv_weight_matrix`).

    Parameters
    ----------
    in_channels:
        ``c ≥ 1``.
    out_channels:
        ``f ≥ 1``.
    kernel_size:
        ``d`` or ``(d_h, d_w)``, positive ints.

    Returns
    -------
    float
        ``r*``.
    """
    c = check_int("in_channels", in_channels)
    f = check_int("out_channels", out_channels)
    d_h, d_w = check_int_pair("kernel_size", kernel_size, lower=1)
    return d_h * d_w * c * f / (d_h * d_w * c + f)


def spatial_break_even_rank(in_channels: int, out_channels: int, kernel_size) -> float:
    """Break-even rank of a ``d_h×d_w`` conv split into a ``d_h×1`` conv c→r and a ``1×d_w`` r→f.

    The spatial (Jaderberg) separation costs ``r (d_h c + d_w f)`` weights and
    multiply-adds per output pixel against ``d_h d_w c f``, so it wins for
    ``r < r* = d_h d_w c f / (d_h c + d_w f)``: :func:`break_even_rank` of the
    ``(c d_h) × (f d_w)`` matrix of ``layers.spatial_weight_matrix`` when the horizontal
    convolution runs at every input column (stride 1).

    Parameters
    ----------
    in_channels, out_channels, kernel_size:
        As in :func:`conv_break_even_rank`.

    Returns
    -------
    float
        ``r*``.

    Examples
    --------
    >>> spatial_break_even_rank(16, 32, 3)
    32.0
    """
    c = check_int("in_channels", in_channels)
    f = check_int("out_channels", out_channels)
    d_h, d_w = check_int_pair("kernel_size", kernel_size, lower=1)
    return d_h * d_w * c * f / (d_h * c + d_w * f)


# ---------------------------------------------------------------------------
# Principal component analysis
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PCAResult:
    """Principal components of a data matrix ``X`` (N × d, samples in rows).

    Attributes
    ----------
    mean:
        Column means ``μ`` (d,).
    components:
        ``V_k`` (k × d): orthonormal rows, the leading right singular vectors of the
        centred data ``X − μ``, i.e. the leading eigenvectors of the sample covariance.
        Each row's largest-magnitude entry is positive (the sign rule of scikit-learn).
    explained_variance:
        Eigenvalues of the sample covariance ``λ_i = σ_i² / (N − 1)`` (k,).
    explained_variance_ratio:
        ``λ_i / Σ_j λ_j`` over *all* components (k,).
    """

    mean: Tensor
    components: Tensor
    explained_variance: Tensor
    explained_variance_ratio: Tensor

    @property
    def n_components(self) -> int:
        """Number of components ``k``."""
        return self.components.shape[0]

    def transform(self, X: Tensor) -> Tensor:
        """Coordinates ``Z = (X − μ) V_kᵀ`` (N × k) of samples ``X`` (N × d)."""
        X = check_tensor("X", X, 2)
        d = self.components.shape[1]
        if X.shape[1] != d:
            raise ValueError(f"X must have {d} columns (features), got shape {tuple(X.shape)}")
        check_same_device(X=X, components=self.components)
        return (X.to(self.mean.dtype) - self.mean) @ self.components.mT

    def inverse_transform(self, Z: Tensor) -> Tensor:
        """Reconstruction ``Z V_k + μ`` (N × d) from coordinates ``Z`` (N × k)."""
        Z = check_tensor("Z", Z, 2)
        if Z.shape[1] != self.n_components:
            raise ValueError(
                f"Z must have {self.n_components} columns (components), got shape {tuple(Z.shape)}"
            )
        check_same_device(Z=Z, components=self.components)
        return Z.to(self.mean.dtype) @ self.components + self.mean


def _check_samples(X: object) -> Tensor:
    """A data matrix ``N × d`` (samples in rows) with ``N ≥ 2``."""
    X = check_tensor("X", X, 2)
    if X.shape[0] < 2:
        raise ValueError(f"X must have at least 2 rows (samples), got shape {tuple(X.shape)}")
    return X


def _check_pca_setting(
    variance: object, n_components: object, N: int, d: int
) -> tuple[float | None, int | None]:
    """At most one of ``variance`` (in (0, 1]) and ``n_components`` (in [1, min(N, d)])."""
    if variance is not None and n_components is not None:
        raise ValueError(
            "give at most one of variance and n_components, "
            f"got variance={variance!r} and n_components={n_components!r}"
        )
    if variance is not None:
        variance = check_fraction("variance", variance)
    if n_components is not None:
        n_components = check_int("n_components", n_components, 1, min(N, d))
    return variance, n_components


class PrincipalComponents:
    """Every principal component of ``X``, computed once and truncated at any setting.

    ``PrincipalComponents(X)`` centres ``X`` (N × d) and takes the SVD ``X − μ = U Σ Vᵀ``
    once (in ``compute_dtype``); ``result(variance=v)`` or ``result(n_components=k)`` then
    returns the same :class:`PCAResult` as ``pca(X, variance=v)`` or
    ``pca(X, n_components=k)``, for every setting without another SVD. It keeps the
    ``min(N, d)`` components in X's dtype and the singular values, not ``X``.

    Parameters
    ----------
    X:
        Data ``N × d`` with ``N ≥ 2``.
    compute_dtype:
        Dtype of the SVD (default float64); ``None`` uses X's dtype (float32 for a
        float16 or bfloat16 ``X``).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(50, 2, generator=g) @ torch.randn(2, 6, generator=g)  # rank 2
    >>> X = X + 0.01 * torch.randn(50, 6, generator=g)  # and a little noise
    >>> components = PrincipalComponents(X)  # one SVD
    >>> [components.result(variance=v).n_components for v in (0.5, 0.99, 1.0)]
    [1, 2, 6]
    >>> bool(torch.equal(components.result(variance=0.9).components,
    ...                  pca(X, variance=0.9).components))
    True
    """

    def __init__(self, X: Tensor, *, compute_dtype: torch.dtype | None = torch.float64) -> None:
        X = _check_samples(X)
        N, d = X.shape
        dtype = _compute_dtype(X, compute_dtype)
        Xc = X.detach().to(dtype)
        mean = Xc.mean(dim=0)
        _, S, Vh = torch.linalg.svd(Xc - mean, full_matrices=False)
        # sign rule: the largest-magnitude entry of each component is positive
        pivots = Vh.abs().argmax(dim=1)
        signs = torch.sign(Vh.gather(1, pivots[:, None]))
        signs[signs == 0] = 1
        explained = S**2 / (N - 1)
        total = explained.sum()
        self.shape = (N, d)
        self.dtype = X.dtype
        self.singular_values = S
        self.mean = mean.to(X.dtype)
        self.components = (Vh * signs).to(X.dtype)  # all min(N, d), in X's dtype
        self.explained_variance = explained
        self.explained_variance_ratio = (
            explained / total if float(total) > 0 else torch.zeros_like(explained)
        )

    def n_components_for(self, variance: float) -> int:
        """The number of components ``pca(X, variance=variance)`` keeps."""
        variance = check_fraction("variance", variance)
        S = self.singular_values
        return rank_for_energy(S, variance, rtol=S.numel() * torch.finfo(self.dtype).eps)

    def result(self, variance: float | None = None, n_components: int | None = None) -> PCAResult:
        """The :class:`PCAResult` of ``pca(X, variance=..., n_components=...)``."""
        variance, n_components = _check_pca_setting(variance, n_components, *self.shape)
        if variance is not None:
            k = self.n_components_for(variance)
        elif n_components is not None:
            k = n_components
        else:
            k = self.singular_values.numel()
        return PCAResult(  # copies: a caller may change the result in place
            mean=self.mean.clone(),
            components=self.components[:k].clone(),
            explained_variance=self.explained_variance[:k].to(self.dtype, copy=True),
            explained_variance_ratio=self.explained_variance_ratio[:k].to(self.dtype, copy=True),
        )


def pca(
    X: Tensor,
    variance: float | None = None,
    n_components: int | None = None,
    *,
    compute_dtype: torch.dtype | None = torch.float64,
) -> PCAResult:
    """Principal component analysis of ``X`` (N × d, samples in rows) by the SVD.

    Centre, ``X − μ = U Σ Vᵀ``; the components are the rows of ``Vᵀ`` and the explained
    variances ``σ_i² / (N − 1)``, as in scikit-learn's ``PCA(svd_solver="full")``.
    At most one of ``variance`` and ``n_components`` may be given; with neither, all
    ``min(N, d)`` components are kept. To truncate one ``X`` at many settings, use
    :class:`PrincipalComponents`, which takes the SVD once.

    Parameters
    ----------
    X:
        Data ``N × d`` with ``N ≥ 2``.
    variance:
        Keep the smallest ``k`` whose cumulative explained-variance ratio reaches
        ``variance`` in ``(0, 1]`` (:func:`rank_for_energy` on ``Σ``; the rule of
        ``PCA(n_components=<float>)``).
    n_components:
        Keep ``k`` components, ``k`` in ``[1, min(N, d)]``.
    compute_dtype:
        Dtype of the SVD (default float64); ``None`` uses X's dtype (float32 for a
        float16 or bfloat16 ``X``). Results come back in X's dtype, on X's device.

    Returns
    -------
    PCAResult

    Examples
    --------
    >>> X = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    >>> pca(X, n_components=1).components
    tensor([[0.7071, 0.7071]])
    """
    X = _check_samples(X)
    _check_pca_setting(variance, n_components, *X.shape)  # before the SVD
    components = PrincipalComponents(X, compute_dtype=compute_dtype)
    return components.result(variance=variance, n_components=n_components)


# ---------------------------------------------------------------------------
# Randomized matrix multiplication (Drineas, Kannan & Mahoney 2006)
# ---------------------------------------------------------------------------


def _check_product(A, B) -> tuple[Tensor, Tensor]:
    A = check_tensor("A", A, 2)
    B = check_tensor("B", B, 2)
    if A.shape[1] != B.shape[0]:
        raise ValueError(
            "inner dimensions must match: A is m×n and B is n×p, "
            f"got A {tuple(A.shape)} and B {tuple(B.shape)}"
        )
    if A.dtype != B.dtype:
        raise TypeError(f"A and B must have the same dtype, got {A.dtype} and {B.dtype}")
    check_same_device(A=A, B=B)
    return A, B


def _column_row_norms(A: Tensor, B: Tensor) -> Tensor:
    """``|A^(k)| · |B_(k)|`` for k = 1..n, in float64."""
    a = torch.linalg.vector_norm(A.detach().to(torch.float64), dim=0)
    b = torch.linalg.vector_norm(B.detach().to(torch.float64), dim=1)
    return a * b


def _optimal_probabilities(A: Tensor, B: Tensor) -> Tensor:
    """Optimal DKM probabilities in float64 (uniform when every product is zero)."""
    weights = _column_row_norms(A, B)
    total = weights.sum()
    if float(total) == 0.0:
        return torch.full_like(weights, 1.0 / weights.numel())
    return weights / total


def _resolve_probabilities(A: Tensor, B: Tensor, probabilities) -> Tensor:
    """Checked, normalised probabilities in float64; the optimal ones when None."""
    if probabilities is None:
        return _optimal_probabilities(A, B)
    n = A.shape[1]
    p = check_tensor("probabilities", probabilities, 1)
    if p.numel() != n:
        raise ValueError(
            f"probabilities must have one entry per column of A (n = {n}), "
            f"got shape {tuple(p.shape)}"
        )
    p = p.detach().to(device=A.device, dtype=torch.float64)
    if bool((p < 0).any()) or float(p.sum()) <= 0.0:
        raise ValueError("probabilities must be non-negative with a positive sum")
    p = p / p.sum()
    missed = (p == 0) & (_column_row_norms(A, B) > 0)
    if bool(missed.any()):
        raise ValueError(
            "probabilities must be positive wherever |A^(k)|·|B_(k)| > 0, otherwise the "
            f"estimator is biased; zero at index {int(missed.nonzero()[0])}"
        )
    return p


def sampling_probabilities(A: Tensor, B: Tensor) -> Tensor:
    """Optimal sampling probabilities for the product ``A @ B`` (Drineas, Kannan & Mahoney).

    ``p_k = |A^(k)| |B_(k)| / Σ_k' |A^(k')| |B_(k')|`` with ``A^(k)`` column k of A
    (m×n) and ``B_(k)`` row k of B (n×p). They minimise the expected squared Frobenius
    error of :func:`randomized_matmul`. When every product ``|A^(k)||B_(k)|`` is zero
    (``AB = 0`` and every estimate is exactly 0) the uniform distribution is returned.

    Parameters
    ----------
    A:
        Matrix ``m × n``.
    B:
        Matrix ``n × p``, same dtype as A.

    Returns
    -------
    Tensor
        ``p`` (n,), non-negative, summing to 1, in A's dtype (computed in float64), on
        A's device.

    Examples
    --------
    >>> A = torch.tensor([[1.0, 0.0, 3.0]])
    >>> B = torch.ones(3, 2)
    >>> sampling_probabilities(A, B)
    tensor([0.2500, 0.0000, 0.7500])
    """
    A, B = _check_product(A, B)
    return _optimal_probabilities(A, B).to(A.dtype)


def randomized_matmul(
    A: Tensor,
    B: Tensor,
    samples: int,
    probabilities: Tensor | None = None,
    generator: torch.Generator | int | None = None,
) -> Tensor:
    """Unbiased sampled estimate of ``A @ B`` from ``samples`` column–row pairs.

    Draw ``i_1, …, i_c`` i.i.d. with ``P(i = k) = p_k`` (with replacement) and return::

        C R = (1/c) Σ_t A^(i_t) B_(i_t) / p_(i_t)

    with ``E[C R] = A B``. Pairs drawn several times are gathered once and weighted by
    their count, so the cost is one ``m × u × p`` product for the ``u ≤ c`` distinct
    indices (the same estimate as the sum above, up to rounding). On a GPU the number
    ``u`` is not known without waiting for the device, so ``min(c, n)`` slots are
    gathered there, the unused ones with weight 0 (see ``_sampled_product``).

    Parameters
    ----------
    A:
        Matrix ``m × n``.
    B:
        Matrix ``n × p``, same dtype and device as A. Half precision (float16, bfloat16)
        is computed in float32 and returned in A's dtype.
    samples:
        Number of draws ``c ≥ 1``.
    probabilities:
        ``p`` (n,), non-negative weights (normalised here) that are positive wherever
        ``|A^(k)||B_(k)| > 0``. ``None`` uses :func:`sampling_probabilities`.
    generator:
        Source of the draws: ``None`` (torch's global generator of A's device), an int
        seed, or a ``torch.Generator`` on A's device type.

    Returns
    -------
    Tensor
        The estimate (m × p), in A's dtype, on A's device.

    Examples
    --------
    With all the weight on one column-row pair every draw picks it, and the estimate is
    exact:

    >>> A = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    >>> B = torch.tensor([[5.0], [3.0]])
    >>> randomized_matmul(A, B, samples=4, generator=0)
    tensor([[6.],
            [3.]])
    """
    A, B = _check_product(A, B)
    samples = check_int("samples", samples)
    generator = check_generator(generator, A.device)
    p = _resolve_probabilities(A, B, probabilities)
    work = _working_dtype(A)
    return _sampled_product(A.to(work), B.to(work), samples, p, generator).to(A.dtype)


def _draw(p: Tensor, samples: int, generator: torch.Generator | None, sync_free: bool) -> Tensor:
    """``samples`` i.i.d. indices with ``P(i = k) = p_k``, on p's device.

    ``sync_free=False``: ``torch.multinomial`` (it checks ``p`` on the host). Otherwise
    inverse-transform sampling, ``i = #{k : F_k ≤ u}`` with ``F`` the cumulative sums of
    ``p`` and ``u`` uniform on ``[0, F_n)``: the same distribution without a check that
    makes the host wait for the device. Both give the same stream for the same seed on
    every run of one device type.
    """
    if not sync_free:
        return torch.multinomial(p, samples, replacement=True, generator=generator)
    cdf = torch.cumsum(p, 0, dtype=torch.float64)
    u = torch.rand(samples, generator=generator, dtype=torch.float64, device=p.device)
    idx = torch.searchsorted(cdf, u * cdf[-1], right=True)
    return idx.clamp_(max=p.numel() - 1)  # u·F_n rounded up to F_n


def _sampled_product(
    A: Tensor,
    B: Tensor,
    samples: int,
    p: Tensor,
    generator: torch.Generator | None,
    *,
    sync_free: bool | None = None,
    poison: Tensor | None = None,
) -> Tensor:
    """The estimator of :func:`randomized_matmul` without argument checks.

    ``(1/c) Σ_t A^(i_t) B_(i_t) / p_(i_t)`` with ``i_t ~ p`` i.i.d.; indices drawn several
    times are gathered once and weighted by their count. The randomized layers call it on
    every forward with weights validated at construction: the checks of the public
    function (finiteness, float64 copies) would cost several times the product itself.
    ``p`` lives on A's device, ``generator`` (or torch's global one) on its device type.

    Two ways to find the distinct indices, chosen by ``sync_free`` (default: True on
    every device but the CPU):

    * exact size (CPU): ``bincount`` then ``nonzero``; the ``u ≤ c`` distinct indices in
      increasing order. ``nonzero`` has a data-dependent size, so on a GPU it would make
      the host wait for the device on every call.
    * fixed size: counts by ``index_add_``, then the ``min(c, n)`` slots hold the drawn
      indices in increasing order followed by undrawn ones with weight 0. Every shape is
      known in advance, so nothing waits for the device; the product is ``min(c, n)``
      wide instead of ``u``. The estimate is the same up to rounding.

    ``poison``: an optional 0-d tensor; when it is not finite the estimate is NaN (a
    non-finite input of the layers then gives a non-finite output, as in ``nn.Linear``,
    without a host-side check).
    """
    n = A.shape[1]
    if sync_free is None:
        sync_free = A.device.type != "cpu"
    idx = _draw(p, samples, generator, sync_free)
    if not sync_free:
        counts = torch.bincount(idx, minlength=n)
        kept = counts.nonzero().squeeze(1)
        scale = counts[kept].to(torch.float64) / (samples * p[kept].to(torch.float64))
    else:
        counts = torch.zeros(n, dtype=torch.long, device=A.device)
        counts.index_add_(0, idx, torch.ones_like(idx))
        if samples >= n:
            kept = torch.arange(n, device=A.device)
        else:  # drawn indices first (stable: in increasing order), then undrawn ones
            undrawn = (counts == 0).to(torch.uint8)
            kept = torch.sort(undrawn, stable=True).indices[:samples]
        num = counts[kept].to(torch.float64)
        den = samples * p[kept].to(torch.float64)
        scale = torch.where((num > 0) & (den > 0), num / den, 0.0)
    if poison is not None:
        scale = scale + 0.0 * poison.to(torch.float64)
    return (A[:, kept] * scale.to(A.dtype)) @ B[kept]


def dkm_expected_error(
    A: Tensor, B: Tensor, samples: int, probabilities: Tensor | None = None
) -> float:
    """Exact expected squared error ``E‖AB − CR‖_F²`` of :func:`randomized_matmul`.

    ``Σ_k |A^(k)|² |B_(k)|² / (c p_k) − ‖AB‖_F² / c`` (terms with ``p_k = 0`` and a zero
    product contribute nothing). With the optimal probabilities this is
    ``((Σ_k |A^(k)||B_(k)|)² − ‖AB‖_F²) / c``.

    Parameters
    ----------
    A, B, samples, probabilities:
        As in :func:`randomized_matmul`.

    Returns
    -------
    float
        The expected squared Frobenius error, computed in float64 (clipped at 0
        against round-off).
    """
    A, B = _check_product(A, B)
    samples = check_int("samples", samples)
    p = _resolve_probabilities(A, B, probabilities)
    weights = _column_row_norms(A, B).to(p.device)
    used = p > 0
    first = float((weights[used] ** 2 / p[used]).sum())
    product = A.detach().to(torch.float64) @ B.detach().to(torch.float64)
    exact = float(torch.linalg.matrix_norm(product) ** 2)
    return max(0.0, (first - exact) / samples)


def dkm_error_bound(A: Tensor, B: Tensor, samples: int) -> float:
    """DKM bound ``‖A‖_F² ‖B‖_F² / c`` on the expected squared error with optimal probabilities.

    By Cauchy–Schwarz, ``(Σ_k |A^(k)||B_(k)|)² ≤ ‖A‖_F² ‖B‖_F²``, so this bounds
    :func:`dkm_expected_error` at the optimal probabilities. The error is relative to
    ``‖A‖_F ‖B‖_F``, not to ``‖AB‖_F``.

    Parameters
    ----------
    A:
        Matrix ``m × n``.
    B:
        Matrix ``n × p``.
    samples:
        Number of draws ``c ≥ 1``.

    Returns
    -------
    float
        The bound, computed in float64.
    """
    A, B = _check_product(A, B)
    samples = check_int("samples", samples)
    a = float(torch.linalg.matrix_norm(A.detach().to(torch.float64)) ** 2)
    b = float(torch.linalg.matrix_norm(B.detach().to(torch.float64)) ** 2)
    return a * b / samples


# ---------------------------------------------------------------------------
# Convolution as a matrix product (im2col)
# ---------------------------------------------------------------------------


def _check_conv_weight(weight) -> Tensor:
    weight = check_tensor("weight", weight)
    if weight.ndim != 4:
        raise ValueError(
            "weight must be a 4-D tensor C_out × C_in × k_h × k_w, "
            f"got shape {tuple(weight.shape)} ({weight.ndim}-D)"
        )
    return weight


def conv_weight_matrix(weight: Tensor) -> Tensor:
    """Flatten a convolution kernel to the matrix ``K`` (C_out × C_in·k_h·k_w).

    Row ``o`` holds filter ``o`` in the order ``(c, i, j)`` (channel, kernel row,
    kernel column), the order in which :func:`torch.nn.functional.unfold` lays out
    input patches, so that ``conv2d(x, weight)`` is ``K @ unfold(x)`` at every output
    position (:func:`conv2d_as_matmul`). ``K.reshape(weight.shape)`` undoes it.

    Parameters
    ----------
    weight:
        Kernel ``C_out × C_in × k_h × k_w``.

    Returns
    -------
    Tensor
        ``K`` (C_out × C_in·k_h·k_w), a view of ``weight`` when it is contiguous.
    """
    weight = _check_conv_weight(weight)
    return weight.reshape(weight.shape[0], -1)


def conv2d_as_matmul(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """2-D convolution computed as one matrix product on unfolded patches (im2col).

    ``unfold`` turns the input (N × C_in × H × W) into patch columns
    ``P`` (N × C_in·k_h·k_w × L), one column per output position
    (``L = H_out · W_out``); the output is ``K @ P + b`` with ``K`` the flattened kernel
    (:func:`conv_weight_matrix`), reshaped to N × C_out × H_out × W_out. It equals
    :func:`torch.nn.functional.conv2d` (cross-correlation, like every deep learning
    convolution) and is the form in which the matrix methods of the book apply to
    convolutions. ``H_out = ⌊(H + 2 pad_h − dil_h (k_h − 1) − 1) / stride_h⌋ + 1``.

    Parameters
    ----------
    x:
        Input ``N × C_in × H × W`` (or unbatched ``C_in × H × W``).
    weight:
        Kernel ``C_out × C_in × k_h × k_w``.
    bias:
        ``b`` (C_out,) or None.
    stride, padding, dilation:
        An int or a pair ``(h, w)``; stride and dilation ``≥ 1``, padding ``≥ 0``
        (string paddings such as ``"same"`` are not supported).
    groups:
        Only 1: grouped and depthwise convolutions are not supported.

    Returns
    -------
    Tensor
        ``N × C_out × H_out × W_out`` (or ``C_out × H_out × W_out`` for an unbatched x),
        in x's dtype on x's device (computed in float32 for float16 and bfloat16).
    """
    if groups != 1 or not is_int(groups):
        raise ValueError(
            "groups must be 1: grouped and depthwise convolutions are not supported, "
            f"got {groups!r}"
        )
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (3, 4):
        raise ValueError(
            f"x must be a 4-D tensor N × C_in × H × W (or 3-D unbatched), got shape "
            f"{tuple(x.shape)} ({x.ndim}-D)"
        )
    x = check_tensor("x", x)
    weight = _check_conv_weight(weight)
    stride = check_int_pair("stride", stride, lower=1)
    padding = check_int_pair("padding", padding, lower=0)
    dilation = check_int_pair("dilation", dilation, lower=1)
    unbatched = x.ndim == 3
    if unbatched:
        x = x.unsqueeze(0)
    c_out, c_in, k_h, k_w = weight.shape
    if x.shape[1] != c_in:
        hint = (
            "; grouped convolutions (groups > 1) are not supported"
            if x.shape[1] % c_in == 0
            else ""
        )
        raise ValueError(
            f"x has {x.shape[1]} channels but weight expects C_in = {c_in} "
            f"(weight shape {tuple(weight.shape)}){hint}"
        )
    if x.dtype != weight.dtype:
        raise TypeError(f"x and weight must have the same dtype, got {x.dtype} and {weight.dtype}")
    check_same_device(x=x, weight=weight)
    if bias is not None:
        bias = check_tensor("bias", bias, 1)
        if bias.numel() != c_out:
            raise ValueError(
                f"bias must have C_out = {c_out} entries, got shape {tuple(bias.shape)}"
            )
        check_same_device(x=x, bias=bias)
    H, W = x.shape[2], x.shape[3]
    h_out = (H + 2 * padding[0] - dilation[0] * (k_h - 1) - 1) // stride[0] + 1
    w_out = (W + 2 * padding[1] - dilation[1] * (k_w - 1) - 1) // stride[1] + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"the (padded) input {H}×{W} is smaller than the dilated kernel "
            f"{dilation[0] * (k_h - 1) + 1}×{dilation[1] * (k_w - 1) + 1}: output would be "
            f"{h_out}×{w_out}"
        )
    out, work = x.dtype, _working_dtype(x)
    x, weight = x.to(work), weight.to(work)
    patches = F.unfold(x, (k_h, k_w), dilation=dilation, padding=padding, stride=stride)
    y = weight.reshape(c_out, -1) @ patches  # N × C_out × L
    if bias is not None:
        y = y + bias.to(work)[:, None]
    y = y.reshape(x.shape[0], c_out, h_out, w_out).to(out)
    return y.squeeze(0) if unbatched else y


# ---------------------------------------------------------------------------
# Interpolative decomposition (column selection by pivoted QR)
# ---------------------------------------------------------------------------


class PivotedQR:
    """One column-pivoted QR of ``H``, from which the interpolative decomposition of any
    rank ``k`` is read.

    ``PivotedQR(H)`` factors ``H P = Q R`` once (SciPy's LAPACK ``geqp3``, float64, on the
    CPU; ``Q`` is not formed) and keeps the pivots and the first ``ρ`` rows of ``R`` (``ρ``
    the numerical rank, at most ``min(N, m)``), not ``H``; ``interpolative(k)`` returns
    the same ``indices, T`` as ``interpolative_decomposition(H, k)`` for every ``k`` in
    ``[1, m]``: the pivoting does not depend on ``k``, only the triangular solve does.

    Parameters
    ----------
    H:
        Matrix ``N × m``.

    Examples
    --------
    >>> H = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    >>> qr = PivotedQR(H)
    >>> indices, T = qr.interpolative(3)
    >>> indices2, T2 = interpolative_decomposition(H, 3)
    >>> bool(torch.equal(indices, indices2) and torch.equal(T, T2))
    True
    """

    def __init__(self, H: Tensor) -> None:
        H = check_tensor("H", H, 2)
        N, m = H.shape
        self.shape = (N, m)
        self.dtype, self.device = H.dtype, H.device
        H64 = H.detach().to("cpu", torch.float64).numpy()
        R, perm = scipy.linalg.qr(H64, mode="r", pivoting=True)
        diag = np.abs(np.diag(R[: min(N, m)]))
        threshold = max(N, m) * torch.finfo(H.dtype).eps * (diag[0] if diag.size else 0.0)
        self.numerical_rank = int(np.count_nonzero(diag > threshold))
        # every solve reads only the first numerical_rank rows of R
        self.R = np.ascontiguousarray(R[: self.numerical_rank])
        self.perm = perm

    def residuals(self) -> Tensor:
        """Relative errors ``‖H − H[:, S_k] T_k‖_F² / ‖H‖_F²`` for ``k = 0, 1, …, m`` (float64).

        With ``R = [[R11, R12], [0, R22]]`` (R11 k×k) the error of the rank-``k``
        interpolative decomposition is ``‖R22‖_F``, the norm of the rows of ``R`` from
        ``k`` on (``H P = Q R`` with ``Q`` orthonormal, so ``‖H‖_F = ‖R‖_F``); rows past the
        numerical rank count as zero.

        Examples
        --------
        >>> H = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
        >>> qr = PivotedQR(H)
        >>> indices, T = qr.interpolative(2)
        >>> error = (torch.linalg.norm(H - H[:, indices] @ T) / torch.linalg.norm(H)) ** 2
        >>> bool(torch.isclose(qr.residuals()[2], error.double(), rtol=1e-6))
        True
        """
        m = self.shape[1]
        rows = np.sum(self.R**2, axis=1)  # the first numerical_rank rows of R
        tail = np.zeros(m + 1)
        tail[: rows.size] = np.cumsum(rows[::-1])[::-1]
        total = tail[0]
        return torch.from_numpy(tail / total if total > 0 else tail)

    def interpolative(self, k: int) -> tuple[Tensor, Tensor]:
        """``indices`` (k,) and ``T`` (k × m) of :func:`interpolative_decomposition`."""
        m = self.shape[1]
        k = check_int("k", k, 1, m)
        R, perm = self.R, self.perm
        used = min(k, self.numerical_rank)
        T_perm = np.zeros((k, m))
        T_perm[:, :k] = np.eye(k)
        if used > 0 and k < m:
            T_perm[:used, k:] = scipy.linalg.solve_triangular(R[:used, :used], R[:used, k:])
        T = np.empty_like(T_perm)
        T[:, perm] = T_perm
        indices = torch.from_numpy(perm[:k].astype(np.int64)).to(self.device)
        return indices, torch.from_numpy(T).to(device=self.device, dtype=self.dtype)


def interpolative_decomposition(H: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Select ``k`` columns of ``H`` that reproduce the others: ``H ≈ H[:, indices] @ T``.

    Pivoted QR ``H P = Q R`` puts the most linearly independent columns first. With
    ``R = [[R11, R12], [0, R22]]`` (R11 k×k), the first k pivots are kept and the
    others are expressed through them by solving the triangular system
    ``R11 X = R12``: ``H P ≈ H[:, P[:k]] [I  X]``, with error ``‖R22‖_F``. ``T``
    (k × m) is ``[I X]`` with its columns put back in the original order, so the
    selected columns are reproduced exactly (``T[:, indices] = I``).

    When ``k`` exceeds the numerical rank ``ρ`` of ``H`` (pivots with
    ``|R_jj| ≤ max(N, m) · eps · |R_11|``, eps of H's dtype), only the first ``ρ``
    selected columns are used in the solve (the others would divide by round-off);
    the reconstruction is then exact up to round-off.

    In width pruning (Chee et al. 2022), ``H`` (N × m) holds the activations of m hidden
    units on N calibration inputs: keep the units ``indices`` and fold ``T`` into the
    next layer, ``W_next ← W_next Tᵀ``. The pivoting does not depend on ``k``: for many
    ``k`` of one ``H``, factor it once with :class:`PivotedQR`.

    Parameters
    ----------
    H:
        Matrix ``N × m``.
    k:
        Number of columns to keep, in ``[1, m]``.

    Returns
    -------
    indices:
        LongTensor (k,) of selected columns, in pivot order (most important first).
    T:
        Interpolation matrix ``k × m`` in H's dtype. Both on H's device; the pivoted QR
        runs in float64 on the CPU (SciPy) whatever H's device and dtype.
    """
    H = check_tensor("H", H, 2)
    k = check_int("k", k, 1, H.shape[1])  # before the factorization
    return PivotedQR(H).interpolative(k)


# ---------------------------------------------------------------------------
# Data-aware low rank: whitening (SVD-LLM)
# ---------------------------------------------------------------------------


def whitened_low_rank_factors(
    W: Tensor,
    X: Tensor | None = None,
    rank: int | None = None,
    energy: float | None = None,
    *,
    covariance: Tensor | None = None,
    eps: float = 1e-6,
    split: str = "balanced",
    compute_dtype: torch.dtype | None = torch.float64,
    method: str = "auto",
    generator: torch.Generator | int | None = 0,
) -> tuple[Tensor, Tensor]:
    """Low-rank factors of ``W`` that minimise the error on the layer's *outputs*.

    For a layer ``y = x Wᵀ`` with calibration inputs ``X`` (N × n, samples in rows),
    the output error of a replacement ``W′`` is
    ``‖X (W − W′)ᵀ‖_F² = tr((W − W′) C (W − W′)ᵀ)`` with ``C = Xᵀ X`` (n × n). With a
    Cholesky factor ``S S ᵀ = C + λI`` the error is ``‖(W − W′) S‖_F²``, so by
    Eckart–Young the best rank-r ``W′`` is ``[W S]_r S⁻¹`` and the squared error equals
    the discarded ``Σ_{j>r} σ_j(W S)²`` (SVD-LLM whitening). Writing
    ``[W S]_r = U_r Σ_r V_rᵀ`` the factors are ``W′ = A @ B`` with A (m×r),
    B (r×n), ``B = (·) V_rᵀ S⁻¹`` and Σ_r split as in :func:`low_rank_factors`.

    The ridge ``λ = eps · tr(C) / n`` keeps the Cholesky factor defined when ``C`` is
    rank deficient (fewer samples than inputs, or dead inputs). ``W′`` then minimises
    ``‖X (W − W′)ᵀ‖_F² + λ ‖W − W′‖_F²`` exactly: in directions the data never visits,
    ``W′`` stays close to ``W``. ``eps=0`` requires ``C`` positive definite.

    Parameters
    ----------
    W:
        Weight ``m × n`` (out_features × in_features).
    X:
        Calibration inputs ``N × n``; give exactly one of ``X`` and ``covariance``.
    rank:
        ``r`` in ``[1, min(m, n)]``.
    energy:
        Keep the smallest rank whose singular values of ``W S`` carry this fraction of
        ``Σ σ_j(WS)²``, i.e. of the output energy (:func:`rank_for_energy`). Exactly one
        of ``rank`` and ``energy``.
    covariance:
        ``C = Xᵀ X`` (n × n, symmetric positive semi-definite) instead of ``X``; any
        positive multiple gives the same factors.
    eps:
        Relative ridge ``≥ 0``.
    split:
        ``"balanced"``, ``"left"`` or ``"right"``, as in :func:`low_rank_factors`.
    compute_dtype:
        Dtype of the Cholesky factor and the SVD (default float64); ``None`` uses W's
        (float32 for a float16 or bfloat16 ``W``). Results come back in W's dtype.
    method:
        How the SVD of ``W S`` is computed, as in :func:`low_rank_factors`: ``"full"``
        (exact), ``"randomized"`` (:func:`randomized_svd` with ``p = rank//4 + 10`` and 4
        power iterations, within about 1 % of the optimal output error) or ``"auto"``
        (randomized only for a ``rank`` small against ``min(m, n) ≥ 256``, where it was
        measured to be faster). ``energy`` always uses the full SVD.
    generator:
        Source of the randomized path's test matrix, as in :func:`low_rank_factors`
        (default: seed 0, reproducible on each device type).

    Returns
    -------
    A, B:
        ``A`` (m×r) and ``B`` (r×n) in W's dtype, on W's device, ``W ≈ A @ B``.
    """
    W = check_tensor("W", W, 2)
    m, n = W.shape
    check_exactly_one(rank=rank, energy=energy)
    if rank is not None:
        rank = check_int("rank", rank, 1, min(m, n))
    else:
        energy = check_fraction("energy", energy)
    split = check_choice("split", split, _SPLITS)
    method = check_choice("method", method, ("auto", "full", "randomized"))
    if rank is None and method == "randomized":
        raise ValueError(
            "method='randomized' needs rank=: energy= needs the whole spectrum, "
            "use method='full' or 'auto'"
        )
    generator = check_generator(generator, W.device)
    if (X is None) == (covariance is None):
        raise ValueError("give exactly one of X (N × n calibration inputs) and covariance (n × n)")
    if X is not None:
        X = check_tensor("X", X, 2)
        if X.shape[1] != n:
            raise ValueError(
                f"X must have n = {n} columns (W is {m}×{n}, X holds inputs in rows), "
                f"got shape {tuple(X.shape)}"
            )
        check_same_device(W=W, X=X)
        X64 = X.detach().to(_compute_dtype(W, compute_dtype))
        covariance = X64.mT @ X64
    randomized = rank is not None and (
        method == "randomized" or (method == "auto" and _prefer_randomized(m, n, rank))
    )
    spectrum = Spectrum(
        W, covariance=covariance, eps=eps, compute_dtype=compute_dtype,
        rank=rank if randomized else None, generator=generator,
    )
    return spectrum.factors(rank=rank, energy=energy, split=split)


# ---------------------------------------------------------------------------
# Decompose once, truncate many
# ---------------------------------------------------------------------------


class Spectrum:
    """The full (optionally whitened) SVD of a weight matrix, truncated at any rank.

    ``Spectrum(W)`` takes the thin SVD ``W = U diag(σ) Vh`` once (in ``compute_dtype``);
    ``factors(rank=r)`` or ``factors(energy=e)`` then returns the same ``A (m×r)``,
    ``B (r×n)`` as :func:`low_rank_factors` with ``method="full"`` — the leading triplets
    split as ``split`` says — for every ``r`` without another SVD. With ``covariance=C``
    (``C = XᵀX`` of the layer's inputs) it is the whitened spectrum of
    :func:`whitened_low_rank_factors`: the SVD of ``W S`` with ``S Sᵀ = C + λI``
    (``λ = eps·tr(C)/n``), truncated and mapped back with ``S⁻¹``, so the squared output
    error of the rank-r factors is ``Σ_{j>r} σ_j(W S)²``. Everything stays on W's device;
    ``compute_dtype=None`` is W's dtype (float32 for float16 and bfloat16), and the factors
    come back in W's dtype.

    Examples
    --------
    >>> W = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    >>> spectrum = Spectrum(W)
    >>> A, B = spectrum.factors(rank=2)
    >>> A2, B2 = low_rank_factors(W, rank=2, method="full")
    >>> bool(torch.equal(A, A2) and torch.equal(B, B2))
    True
    """

    def __init__(
        self,
        W: Tensor,
        *,
        covariance: Tensor | None = None,
        eps: float = 1e-6,
        compute_dtype: torch.dtype | None = torch.float64,
        rank: int | None = None,
        generator: torch.Generator | int | None = 0,
    ) -> None:
        W = check_tensor("W", W, ndim=2)
        m, n = W.shape
        eps = check_real("eps", eps, lower=0.0)
        dtype = _compute_dtype(W, compute_dtype)
        self.shape = (m, n)
        self.dtype = W.dtype
        self.whitening: Tensor | None = None
        M = W.detach().to(dtype)
        if covariance is not None:
            C = check_tensor("covariance", covariance, ndim=2)
            if C.shape != (n, n):
                raise ValueError(
                    f"covariance must be n × n = {n} × {n} to match W ({m}×{n}), "
                    f"got shape {tuple(C.shape)}"
                )
            check_same_device(W=W, covariance=C)
            C = C.detach().to(dtype)
            C = (C + C.mT) / 2
            trace = float(torch.diagonal(C).sum())
            if trace <= 0.0:
                raise ValueError(
                    "covariance is zero (or not positive semi-definite): the calibration "
                    "inputs of this layer are all zero"
                )
            C = C + (eps * trace / n) * torch.eye(n, dtype=dtype, device=C.device)
            S, info = torch.linalg.cholesky_ex(C)
            if int(info) != 0:
                raise ValueError(
                    f"covariance + eps·tr(C)/n·I is not positive definite with eps={eps}; "
                    "use eps > 0 for rank-deficient calibration data"
                )
            self.whitening = S
            M = M @ S
        if rank is None:
            self.U, self.S, self.Vh = _thin_svd(M)
        else:  # only the leading ``rank`` triplets, by the randomized SVD
            rank = check_int("rank", rank, 1, min(m, n))
            generator = check_generator(generator, W.device)
            self.U, self.S, self.Vh = randomized_svd(
                M, rank, _auto_oversample(rank), _AUTO_N_ITER, generator
            )
        self.partial = rank is not None

    @property
    def full_rank(self) -> int:
        """``min(m, n)``."""
        return min(self.shape)

    def rank_for(self, energy: float) -> int:
        """The rank that :func:`low_rank_factors` picks for ``energy`` (W's round-off)."""
        energy = check_fraction("energy", energy)
        if self.partial:
            raise ValueError(
                "energy= needs the whole spectrum, and this Spectrum holds only the leading "
                f"{self.S.numel()} triplets (it was built with rank=)"
            )
        return rank_for_energy(self.S, energy, rtol=self.S.numel() * torch.finfo(self.dtype).eps)

    def factors(
        self, rank: int | None = None, energy: float | None = None, *, split: str = "balanced"
    ) -> tuple[Tensor, Tensor]:
        """``A`` (m×r), ``B`` (r×n) in W's dtype; exactly one of ``rank`` and ``energy``."""
        check_exactly_one(rank=rank, energy=energy)
        split = check_choice("split", split, _SPLITS)
        upper = self.S.numel() if self.partial else self.full_rank
        r = (
            check_int("rank", rank, lower=1, upper=upper)
            if rank is not None
            else self.rank_for(energy)
        )
        U, S, Vh = self.U[:, :r], self.S[:r], self.Vh[:r]
        if self.whitening is not None:  # V_rᵀ S⁻¹: solve Z S = V_rᵀ with S lower triangular
            Vh = torch.linalg.solve_triangular(self.whitening, Vh, upper=False, left=False)
        A, B = _split_factors(U, S, Vh, split)
        return A.to(self.dtype).contiguous(), B.to(self.dtype).contiguous()
