"""Run settings: smoke or full mode, where data lives, device and seeds.

Everything that differs between a quick test run and the full experiments of the
book is read here, from environment variables, and nowhere else:

``PRUNING_BOOK_SMOKE``
    ``1`` (or ``true``/``yes``/``on``) shrinks epochs, subset sizes and sweep grids, and
    builds the LargeMLP four times narrower, so that every notebook runs in a minute or two.
    Unset or ``0`` means full mode.
    Notebooks never set it; ``pytest --nbval notebooks/`` does (see ``conftest.py``).
``PRUNING_BOOK_DATA``
    The data root: where datasets are looked for first and where trained weights are
    cached. Defaults to ``data/`` at the repository root (or in the working directory
    when the package is installed elsewhere, e.g. in Colab).

Functions read the environment on every call, so a test can change it with
``monkeypatch.setenv`` and see the effect.

Seeds are reproducible per device type: the same seed gives the same numbers on every run
on the CPU, and on every run on a CUDA device, but CPU and CUDA streams differ (and CUDA
kernels are bitwise reproducible only under ``torch.use_deterministic_algorithms(True)``).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from pruning_utils.models import LARGE_MLP_WIDTHS, SMALL_RESNET_CHANNELS
from pruning_utils.validation import check_choice, check_int

__all__ = [
    "SMOKE_ENV",
    "DATA_ENV",
    "RunConfig",
    "smoke_mode",
    "get_config",
    "data_root",
    "get_device",
    "seed_everything",
]

SMOKE_ENV = "PRUNING_BOOK_SMOKE"
DATA_ENV = "PRUNING_BOOK_DATA"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

T = TypeVar("T")


def smoke_mode() -> bool:
    """Whether ``PRUNING_BOOK_SMOKE`` asks for the quick smoke run."""
    value = os.environ.get(SMOKE_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"environment variable {SMOKE_ENV}={value!r} is not understood; "
        f"use one of {sorted(_TRUE)} for smoke mode or {sorted(_FALSE - {''})} for full mode"
    )


@dataclass(frozen=True)
class RunConfig:
    """Sizes of one run of the experiments. Build it with :func:`get_config`.

    Attributes
    ----------
    smoke:
        True in smoke mode.
    train_subset, test_subset:
        Number of training / test images used (``None``: the whole split).
    calibration_size:
        Number of training images used as calibration data for data-aware pruning.
    epochs_mlp, epochs_cnn, epochs_vit:
        Training epochs of the MLPs, of the CNNs and of the vision transformer.
    fine_tune_epochs:
        Epochs of fine-tuning after pruning (the book never uses more than one).
    sweep_points:
        How many points a sweep grid has (ranks, energies, variances, samples).
    seeds:
        Seeds over which randomized methods are repeated.
    timing_seconds:
        Minimum measuring time per latency measurement, in seconds.
    batch_sizes:
        Batch sizes at which latency is measured.
    large_mlp_widths:
        Layer widths of the LargeMLP that :func:`~pruning_utils.train.trained_model` builds:
        the original 784-128-512-2048-8192-2048-512-128-10 in full mode, every hidden width
        divided by 4 in smoke mode (its float64 SVDs and 8192-wide covariances would
        otherwise take most of a smoke run).
    small_resnet_channels:
        Channels of the three stages of the ResNet that
        :func:`~pruning_utils.train.trained_model` builds: 32-64-128 in full mode, divided
        by 4 in smoke mode.
    """

    smoke: bool
    train_subset: int | None
    test_subset: int | None
    calibration_size: int
    epochs_mlp: int
    epochs_cnn: int
    epochs_vit: int
    fine_tune_epochs: int
    sweep_points: int
    seeds: tuple[int, ...]
    timing_seconds: float
    batch_sizes: tuple[int, ...]
    large_mlp_widths: tuple[int, ...]
    small_resnet_channels: tuple[int, ...]

    def pick(self, full: T, smoke: T) -> T:
        """Return ``smoke`` in smoke mode and ``full`` otherwise."""
        return smoke if self.smoke else full


_FULL = dict(
    train_subset=None,
    test_subset=None,
    calibration_size=2048,
    epochs_mlp=5,
    epochs_cnn=5,
    epochs_vit=10,
    fine_tune_epochs=1,
    sweep_points=9,
    seeds=(0, 1, 2, 3, 4),
    timing_seconds=1.0,
    batch_sizes=(1, 256),
    large_mlp_widths=LARGE_MLP_WIDTHS,
    small_resnet_channels=SMALL_RESNET_CHANNELS,
)
_SMOKE = dict(
    train_subset=2048,
    test_subset=512,
    calibration_size=256,
    epochs_mlp=1,
    epochs_cnn=1,
    epochs_vit=1,
    fine_tune_epochs=1,
    sweep_points=3,
    seeds=(0, 1),
    timing_seconds=0.05,
    batch_sizes=(1, 256),
    large_mlp_widths=(
        LARGE_MLP_WIDTHS[0], *(w // 4 for w in LARGE_MLP_WIDTHS[1:-1]), LARGE_MLP_WIDTHS[-1]
    ),
    small_resnet_channels=tuple(c // 4 for c in SMALL_RESNET_CHANNELS),
)


def get_config() -> RunConfig:
    """The :class:`RunConfig` for the current mode (read from ``PRUNING_BOOK_SMOKE``)."""
    smoke = smoke_mode()
    return RunConfig(smoke=smoke, **(_SMOKE if smoke else _FULL))


def _repository_root() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def data_root() -> Path:
    """Directory for datasets and cached weights.

    ``$PRUNING_BOOK_DATA`` when set; otherwise ``data/`` at the repository root for a
    checkout (editable install), or ``./data`` for an installed package.
    """
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    repo = _repository_root()
    return (repo if repo is not None else Path.cwd()) / "data"


def get_device(prefer: str | None = None) -> torch.device:
    """CUDA when available (e.g. Colab), else CPU.

    Parameters
    ----------
    prefer:
        ``None`` chooses automatically; ``"cpu"`` or ``"cuda"`` forces a device
        (``"cuda"`` raises when none is available).
    """
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prefer = check_choice("prefer", prefer, ("cpu", "cuda"))
    if prefer == "cuda" and not torch.cuda.is_available():
        raise ValueError("prefer='cuda' was requested but torch.cuda.is_available() is False")
    return torch.device(prefer)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python ``random``, numpy and torch (CPU and CUDA) with ``seed``.

    Returns a fresh ``torch.Generator`` seeded with the same value, for code that
    takes its randomness as an argument.
    """
    seed = check_int("seed", seed, lower=0, upper=2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the legacy global state is what needs seeding)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


