"""Datasets for the book: Fashion-MNIST (the default) and MNIST, offline first.

:func:`load_dataset` finds the raw IDX files in this order:

1. the data root (:func:`pruning_utils.config.data_root`, ``$PRUNING_BOOK_DATA``), in torchvision's
   layout ``<root>/FashionMNIST/raw/`` or ``<root>/MNIST/raw/``;
2. a system copy: Debian's package ``dataset-fashion-mnist`` installs the full Fashion-MNIST
   under ``/usr/share/datasets/fashion-mnist``; its files are unpacked into the data root;
3. torchvision's download, when the network answers within a few seconds;
4. otherwise a :class:`DatasetNotFoundError` that names the fixes.

The images come back as one :class:`~torch.utils.data.TensorDataset` of normalised float32
tensors ``(N, 1, 28, 28)`` with int64 labels: the whole of Fashion-MNIST is 190 MB in memory,
and indexing tensors is much faster than decoding PIL images one by one.
"""

from __future__ import annotations

import gzip
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from pruning_utils.config import data_root

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "load_dataset",
    "train_val_split",
    "make_loader",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What the book needs to know about a dataset."""

    name: str
    torchvision_class: str  # name of the class in torchvision.datasets (also its folder name)
    classes: tuple[str, ...]
    mean: float  # mean pixel value of the training images, on [0, 1]
    std: float
    system_dirs: tuple[str, ...]  # where a system package puts the raw IDX files


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        torchvision_class="FashionMNIST",
        classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        mean=0.2860,
        std=0.3530,
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
    "mnist": DatasetInfo(
        name="mnist",
        torchvision_class="MNIST",
        classes=tuple(str(d) for d in range(10)),
        mean=0.1307,
        std=0.3081,
        system_dirs=(),
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset is neither on disk nor downloadable."""


def _raw_dir(root: Path, info: DatasetInfo) -> Path:
    return root / info.torchvision_class / "raw"


def _has_raw(folder: Path) -> bool:
    """True when ``folder`` holds the four unpacked IDX files."""
    return all((folder / f).is_file() for pair in _IDX_FILES.values() for f in pair)


def _unpack_into(source: Path, target: Path) -> bool:
    """Copy the four IDX files (plain or ``.gz``) from ``source`` into ``target``, unpacked.

    Returns False, copying nothing, unless all four are there.
    """
    found = {}
    for pair in _IDX_FILES.values():
        for f in pair:
            plain, packed = source / f, source / f"{f}.gz"
            if plain.is_file():
                found[f] = plain
            elif packed.is_file():
                found[f] = packed
            else:
                return False
    target.mkdir(parents=True, exist_ok=True)
    for f, path in found.items():
        destination = target / f
        if destination.is_file():
            continue
        partial = destination.with_suffix(".partial")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(destination)
    return True


def _network_answers(url: str, timeout: float) -> bool:
    """Whether the host of ``url`` resolves and accepts a connection within ``timeout`` seconds.

    Name resolution ignores socket timeouts, so the probe runs in a daemon thread that is
    abandoned when it takes too long.
    """
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _download(info: DatasetInfo, root: Path, timeout: float) -> str | None:
    """Try torchvision's download into ``root``; return None on success, else the reason."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, info.torchvision_class)
    mirror = cls.mirrors[0] if hasattr(cls, "mirrors") else cls.resources[0][0]
    if not _network_answers(mirror, timeout):
        return f"no answer from {urlparse(mirror).hostname} within {timeout:g} s"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(max(timeout, 30.0))
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:  # network errors come in many types
        return f"download failed: {exc}"
    finally:
        socket.setdefaulttimeout(previous)
    return None


def _locate(info: DatasetInfo, root: Path, download: bool, timeout: float) -> Path:
    """Make sure the raw IDX files are under ``root`` and return that folder."""
    raw = _raw_dir(root, info)
    if _has_raw(raw) or _unpack_into(raw, raw):
        return raw
    for system_dir in info.system_dirs:
        if _unpack_into(Path(system_dir), raw):
            return raw
    reason = "download=False"
    if download:
        reason = _download(info, root, timeout)
        if reason is None and _has_raw(raw):
            return raw
    fixes = [f"put the IDX files (plain or .gz) in {raw}"]
    if info.system_dirs:
        fixes.insert(0, "install the Debian package: apt-get install dataset-fashion-mnist "
                        f"(it provides {info.system_dirs[0]})")
    fixes.append("set PRUNING_BOOK_DATA to a folder that holds them")
    fixes.append("or run online (e.g. in Colab) so that torchvision can download them")
    raise DatasetNotFoundError(
        f"dataset {info.name!r} was not found under the data root {root}"
        + (f" nor in {', '.join(info.system_dirs)}" if info.system_dirs else "")
        + f", and could not be downloaded ({reason}). To fix: " + "; ".join(fixes) + "."
    )


def load_dataset(
    name: str = "fashion-mnist",
    split: str = "train",
    root: str | Path | None = None,
    *,
    subset: int | None = None,
    seed: int = 0,
    normalize: bool = True,
    download: bool = True,
    timeout: float = 5.0,
) -> TensorDataset:
    """Load a split of Fashion-MNIST or MNIST as a ``TensorDataset``.

    Parameters
    ----------
    name:
        ``"fashion-mnist"`` (the book's default, available offline) or ``"mnist"`` (the
        original work's dataset; needs the network the first time, e.g. in Colab).
    split:
        ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
    root:
        Data root; default :func:`pruning_utils.config.data_root`.
    subset:
        Keep only this many images, chosen at random with ``seed`` (same ``seed``, same images).
    seed:
        Seed of the subset choice.
    normalize:
        Standardise pixels with the training set's mean and standard deviation
        (``DATASETS[name].mean/std``); otherwise return pixels on [0, 1].
    download:
        Whether to try torchvision's download when the files are nowhere on disk.
    timeout:
        Seconds to wait for the download server to answer before giving up.

    Returns
    -------
    TensorDataset
        ``(images, labels)`` with images float32 ``(N, 1, 28, 28)`` and labels int64 ``(N,)``.

    Raises
    ------
    DatasetNotFoundError
        When the files are missing and cannot be downloaded; the message lists the fixes.
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {sorted(DATASETS)}, got {name!r}")
    if split not in _IDX_FILES:
        raise ValueError(f"split must be one of {sorted(_IDX_FILES)}, got {split!r}")
    bad_subset = isinstance(subset, bool) or not isinstance(subset, int) or subset <= 0
    if subset is not None and bad_subset:
        raise ValueError(f"subset must be None or a positive int, got {subset!r}")
    info = DATASETS[name]
    root = Path(root) if root is not None else data_root()
    _locate(info, root, download, timeout)

    import torchvision.datasets as tvd

    dataset_class = getattr(tvd, info.torchvision_class)
    dataset = dataset_class(str(root), train=split == "train", download=False)
    images = dataset.data.to(torch.float32).div_(255.0).unsqueeze(1)
    labels = dataset.targets.to(torch.int64)
    if subset is not None and subset < len(labels):
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:subset]
        keep, _ = keep.sort()
        images, labels = images[keep], labels[keep]
    if normalize:
        images = images.sub_(info.mean).div_(info.std)
    return TensorDataset(images, labels)


def train_val_split(
    dataset: Dataset, val_fraction: float = 0.1, seed: int = 0
) -> tuple[Subset, Subset]:
    """Split ``dataset`` at random into training and validation parts, fixed by ``seed``.

    The original work trained on a 90 % split, hence the default ``val_fraction=0.1``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    n = len(dataset)
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ValueError(f"dataset of {n} items is too small for val_fraction={val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[n_val:]), Subset(dataset, order[:n_val])


def make_loader(
    dataset: Dataset,
    batch_size: int = 256,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` whose shuffling order depends only on ``seed``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last
    )
