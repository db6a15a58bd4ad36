"""Datasets for the book: Fashion-MNIST (the default) and MNIST, offline first.

:func:`load_dataset` finds the raw IDX files in this order:

1. the data root (:func:`pruning_utils.config.data_root`, ``$PRUNING_BOOK_DATA``), in torchvision's
   layout ``<root>/FashionMNIST/raw/`` or ``<root>/MNIST/raw/``;
2. a system copy: Debian's package ``dataset-fashion-mnist`` installs the full Fashion-MNIST
   under ``/usr/share/datasets/fashion-mnist``; its files are unpacked into the data root;
3. torchvision's download, when the network answers within a few seconds;
4. otherwise a :class:`DatasetNotFoundError` that names the fixes.

Unpacking and downloading are atomic per file (a unique temporary name in the target folder,
then ``os.replace``), so processes that load the same fresh data root at once do not disturb
each other, and an interrupted or failed unpacking leaves nothing half-written. Every file is
checked when read (IDX magic number, announced shape against the file's size, as many labels
as images, labels in range); a damaged file raises :class:`~pruning_utils.files.CorruptFileError`
naming it and the way forward. The library never deletes a file it did not write.

The images come back as one :class:`~torch.utils.data.TensorDataset` of normalised float32
tensors ``(N, 1, 28, 28)`` with int64 labels: the whole of Fashion-MNIST is 190 MB in memory,
and indexing tensors is much faster than decoding PIL images one by one.
"""

from __future__ import annotations

import gzip
import math
import shutil
import socket
import struct
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from pruning_utils.config import data_root
from pruning_utils.files import CorruptFileError, atomic_files
from pruning_utils.validation import (
    check_bool,
    check_choice,
    check_int,
    check_real,
    check_seed,
)

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "CorruptFileError",
    "SPLITS",
    "validation_images",
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

#: The splits :func:`load_dataset` knows. The dataset's training file is divided once and for
#: all: its last twelfth (5,000 of Fashion-MNIST's 60,000 images) is the validation split
#: ``"val"``, on which every choice of the book is made; ``"train"`` is the rest (55,000
#: images), on which every model is trained; ``"train+val"`` is the whole file. The test
#: file (``"test"``, 10,000 images) is used only to report.
SPLITS = ("train", "val", "train+val", "test")


def validation_images(n_train_file: int) -> int:
    """How many of the ``n_train_file`` images of a training file form the validation split.

    The last twelfth, rounded (5,000 of 60,000); at least one image, and at least one left
    for training.
    """
    n_train_file = check_int("n_train_file", n_train_file, lower=2)
    return min(max(1, round(n_train_file / 12)), n_train_file - 1)

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


def _fix_for(path: Path, info: DatasetInfo) -> str:
    """What to do about a damaged dataset file at ``path``."""
    if any(path.parent == Path(d) for d in info.system_dirs):
        return (
            "the system copy is damaged: reinstall it (apt-get install --reinstall "
            "dataset-fashion-mnist), or set PRUNING_BOOK_DATA to a folder with intact IDX files"
        )
    return (
        "delete it and load again (it is then unpacked again from the system copy or "
        "downloaded again), or replace it with an intact copy"
    )


# ----------------------------------------------------------------------------- IDX files
#
# LeCun's IDX format: a big-endian header ``0x00 0x00 <type> <ndim>``, then ``ndim`` 32-bit
# sizes, then the values. Images are unsigned bytes ``(N, 28, 28)`` (magic 0x00000803),
# labels unsigned bytes ``(N,)`` (magic 0x00000801).

_UBYTE = 0x08
_IMAGE_SIZE = (28, 28)


def _kind(file_name: str) -> str:
    return "images" if "images" in file_name else "labels"


def _idx_header(path: Path, kind: str, fix: str, shown: Path | None = None) -> tuple[int, tuple]:
    """Check the header of IDX file ``path`` against its size; return (data offset, shape).

    Errors name ``shown`` (default ``path``): the source file when ``path`` is a temporary
    file unpacked from it.
    """
    shown = path if shown is None else shown
    ndim = 3 if kind == "images" else 1
    magic_expected = (_UBYTE << 8) | ndim
    offset = 4 + 4 * ndim
    size = path.stat().st_size
    if size == 0:
        raise CorruptFileError(shown, "is empty", fix)
    with open(path, "rb") as handle:
        head = handle.read(offset)
    if len(head) < 4:
        raise CorruptFileError(
            shown, f"is truncated: {size} bytes, shorter than an IDX header", fix
        )
    (magic,) = struct.unpack(">I", head[:4])
    if magic != magic_expected:
        raise CorruptFileError(
            shown,
            f"starts with the magic number {magic:#010x} where an IDX file of {kind} starts with "
            f"{magic_expected:#010x}: it is not an IDX {kind} file, or it is damaged",
            fix,
        )
    if len(head) < offset:
        raise CorruptFileError(shown, f"is truncated: {size} bytes, shorter than its header", fix)
    shape = struct.unpack(f">{ndim}I", head[4:])
    expected = offset + math.prod(shape)
    described = f"{shape[0]} {kind}" + (f" of {shape[1]}x{shape[2]} pixels" if ndim == 3 else "")
    if size < expected:
        raise CorruptFileError(
            shown,
            f"is truncated: it holds {size} bytes where its header announces {described} "
            f"({expected} bytes)",
            fix,
        )
    if size > expected:
        raise CorruptFileError(
            shown,
            f"is damaged: it holds {size} bytes where its header announces {described} "
            f"({expected} bytes)",
            fix,
        )
    if shape[0] == 0:
        raise CorruptFileError(shown, f"holds no {kind}", fix)
    if ndim == 3 and shape[1:] != _IMAGE_SIZE:
        raise CorruptFileError(
            shown,
            f"holds images of {shape[1]}x{shape[2]} pixels; Fashion-MNIST and MNIST images "
            "have 28x28",
            fix,
        )
    return offset, shape


def _read_idx(path: Path, kind: str, fix: str) -> torch.Tensor:
    """The uint8 values of a checked IDX file, shaped as its header says."""
    offset, shape = _idx_header(path, kind, fix)
    buffer = bytearray(path.read_bytes())
    if len(buffer) != offset + math.prod(shape):  # the file changed since its header was read
        _idx_header(path, kind, fix)
    return torch.frombuffer(buffer, dtype=torch.uint8, offset=offset).reshape(shape)


def _read_split(raw: Path, split: str, info: DatasetInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 28, 28)`` and labels ``(N,)`` (uint8) of one split, checked."""
    image_file, label_file = (raw / f for f in _IDX_FILES[split])
    images = _read_idx(image_file, "images", _fix_for(image_file, info))
    labels = _read_idx(label_file, "labels", _fix_for(label_file, info))
    if len(labels) != len(images):
        raise CorruptFileError(
            label_file,
            f"holds {len(labels)} labels but {image_file.name} next to it holds "
            f"{len(images)} images: the two files do not belong together, or one is damaged",
            "delete both and load again (they are then unpacked again from the system copy "
            "or downloaded again), or replace them with an intact pair",
        )
    n_classes = len(info.classes)
    top = int(labels.max())
    if top >= n_classes:
        raise CorruptFileError(
            label_file,
            f"holds the label {top}, outside 0..{n_classes - 1} ({info.name} has "
            f"{n_classes} classes): it is damaged or belongs to another dataset",
            _fix_for(label_file, info),
        )
    return images, labels


# ----------------------------------------------------------------------------- finding files


def _unpack_into(source: Path, target: Path, info: DatasetInfo) -> bool:
    """Copy the four IDX files (plain or ``.gz``) from ``source`` into ``target``, unpacked.

    Returns False, copying nothing, unless all four are there. Files already in ``target``
    are kept. Each file is written under a unique temporary name, checked (IDX header against
    its size) and renamed into place, so that concurrent callers never see a partial file and
    a damaged source leaves nothing behind.

    Raises
    ------
    CorruptFileError
        When a source file is not a complete gzip stream or not a valid IDX file.
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
    for f, path in found.items():
        destination = target / f
        if destination.is_file():
            continue
        fix = _fix_for(path, info)
        with atomic_files(destination) as (tmp,):
            opener = gzip.open if path.suffix == ".gz" else open
            try:
                with opener(path, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except EOFError as exc:
                raise CorruptFileError(
                    path, "is truncated: its gzip stream ends before the end marker", fix
                ) from exc
            except (gzip.BadGzipFile, zlib.error) as exc:
                raise CorruptFileError(path, f"is not a valid gzip file ({exc})", fix) from exc
            _idx_header(tmp, _kind(f), fix, shown=path)
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


def _torchvision_class(info: DatasetInfo) -> type:
    """The torchvision dataset class that downloads ``info``'s files."""
    import torchvision.datasets as tvd

    return getattr(tvd, info.torchvision_class)


def _download(info: DatasetInfo, root: Path, timeout: float) -> str | None:
    """Try torchvision's download into ``root``; return None on success, else the reason.

    torchvision downloads into a fresh temporary folder under ``root``; the checked IDX
    files are then moved into ``root`` atomically and the temporary folder removed, so a
    failed or interrupted download leaves nothing half-written in the data root.
    """
    cls = _torchvision_class(info)
    mirror = cls.mirrors[0] if hasattr(cls, "mirrors") else cls.resources[0][0]
    if not _network_answers(mirror, timeout):
        return f"no answer from {urlparse(mirror).hostname} within {timeout:g} s"
    root.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(max(timeout, 30.0))
    try:
        with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as scratch:
            try:
                cls(scratch, train=True, download=True)
            except Exception as exc:  # network errors come in many types
                return f"download failed: {exc}"
            if not _unpack_into(_raw_dir(Path(scratch), info), _raw_dir(root, info), info):
                return "the download did not provide the four IDX files"
    finally:
        socket.setdefaulttimeout(previous)
    return None


def _locate(info: DatasetInfo, root: Path, download: bool, timeout: float) -> Path:
    """Make sure the raw IDX files are under ``root`` and return that folder."""
    raw = _raw_dir(root, info)
    if _has_raw(raw) or _unpack_into(raw, raw, info):
        return raw
    for system_dir in info.system_dirs:
        if _unpack_into(Path(system_dir), raw, info):
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
        ``"train"`` (the training file without its validation images: 55,000 of
        Fashion-MNIST's 60,000), ``"val"`` (the last 5,000 images of the training file, see
        :data:`SPLITS`), ``"train+val"`` (all 60,000) or ``"test"`` (10,000 images).
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
    CorruptFileError
        When a file is damaged (empty, truncated, not gzip or IDX, fewer labels than images,
        labels out of range); the message names the file and what to do.
    """
    name = check_choice("name", name, sorted(DATASETS))
    split = check_choice("split", split, SPLITS)
    if subset is not None:
        subset = check_int("subset", subset, lower=1)
    seed = check_seed("seed", seed)
    normalize = check_bool("normalize", normalize)
    download = check_bool("download", download)
    timeout = check_real("timeout", timeout, lower=0.0, include_lower=False)
    if root is not None and not isinstance(root, (str, Path)):
        raise TypeError(f"root must be None, a str or a pathlib.Path, got {type(root).__name__}")
    info = DATASETS[name]
    root = Path(root) if root is not None else data_root()
    raw = _locate(info, root, download, timeout)
    pixels, targets = _read_split(raw, "test" if split == "test" else "train", info)
    if split in ("train", "val"):
        n_val = validation_images(len(targets))
        cut = slice(None, len(targets) - n_val) if split == "train" else slice(-n_val, None)
        pixels, targets = pixels[cut], targets[cut]
    images = pixels.to(torch.float32).div_(255.0).unsqueeze(1)
    labels = targets.to(torch.int64)
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
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(
            f"dataset must be a Dataset with a length, got {type(dataset).__name__}"
        )
    val_fraction = check_real(
        "val_fraction", val_fraction, 0.0, 1.0, include_lower=False, include_upper=False
    )
    seed = check_seed("seed", seed)
    n = len(dataset)
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ValueError(
            f"dataset of {n} items is too small for val_fraction={val_fraction}: "
            "no item would be left for training"
        )
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
    batch_size = check_int("batch_size", batch_size, lower=1)
    shuffle = check_bool("shuffle", shuffle)
    seed = check_seed("seed", seed)
    drop_last = check_bool("drop_last", drop_last)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last
    )
