"""Datasets: where files are found, their checks, atomic unpacking, bad arguments."""

import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pruning_utils import data
from pruning_utils.data import DATASETS, DatasetNotFoundError, load_dataset, validation_images
from pruning_utils.files import CorruptFileError

REPO = Path(__file__).resolve().parents[1]

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def image_bytes(n: int, fill: int, size: int = 28) -> bytes:
    """An IDX file of ``n`` images of ``size × size`` pixels, all ``fill``."""
    return struct.pack(">IIII", 0x0803, n, size, size) + bytes([fill]) * (n * size * size)


def label_bytes(n: int) -> bytes:
    """An IDX file of ``n`` labels ``0, 1, ..., 9, 0, 1, ...``."""
    return struct.pack(">II", 0x0801, n) + bytes(i % 10 for i in range(n))


def write_idx(folder: Path, n_train: int, n_test: int, fill: int, packed: bool) -> None:
    """Write tiny IDX files (the format of LeCun's MNIST distribution): images are all ``fill``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        for name, payload in zip(FILES[split], (image_bytes(n, fill), label_bytes(n)), strict=True):
            if packed:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)


def listing(folder: Path) -> list[str]:
    """Every file under ``folder``, relative, sorted (hidden temporary files included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def hermetic_data_root(monkeypatch, tmp_path):
    """No test reads or writes the real data root."""
    monkeypatch.setenv("PRUNING_BOOK_DATA", str(tmp_path / "default-root"))


@pytest.fixture
def no_system_copy(monkeypatch, tmp_path):
    info = DATASETS["fashion-mnist"]
    fake = tmp_path / "system"
    moved = info.__class__(**{**info.__dict__, "system_dirs": (str(fake),)})
    monkeypatch.setitem(DATASETS, "fashion-mnist", moved)
    return fake


def test_data_root_comes_first(tmp_path, no_system_copy):
    root = tmp_path / "root"
    write_idx(root / "FashionMNIST" / "raw", 20, 10, fill=255, packed=False)
    write_idx(no_system_copy, 30, 10, fill=0, packed=True)
    train = load_dataset("fashion-mnist", "train+val", root=root, normalize=False, download=False)
    assert len(train) == 20
    assert torch.all(train.tensors[0] == 1.0)


def test_system_copy_is_unpacked_into_root(tmp_path, no_system_copy):
    root = tmp_path / "root"
    write_idx(no_system_copy, 30, 12, fill=51, packed=True)
    test = load_dataset("fashion-mnist", "test", root=root, normalize=False, download=False)
    images, labels = test.tensors
    assert images.shape == (12, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == [i % 10 for i in range(12)]
    assert torch.allclose(images, torch.full_like(images, 51 / 255))
    assert (root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


def test_packed_files_in_root_are_found(tmp_path, no_system_copy):
    root = tmp_path / "root"
    write_idx(root / "FashionMNIST" / "raw", 8, 4, fill=0, packed=True)
    assert len(load_dataset("fashion-mnist", "train+val", root=root, download=False)) == 8


def test_normalisation_uses_dataset_statistics(tmp_path, no_system_copy):
    root = tmp_path / "root"
    write_idx(root / "FashionMNIST" / "raw", 8, 4, fill=255, packed=False)
    images = load_dataset("fashion-mnist", "train", root=root, download=False).tensors[0]
    info = DATASETS["fashion-mnist"]
    assert torch.allclose(images, torch.full_like(images, (1.0 - info.mean) / info.std))


def test_subset_is_deterministic(tmp_path, no_system_copy):
    root = tmp_path / "root"
    write_idx(root / "FashionMNIST" / "raw", 50, 4, fill=0, packed=False)
    a = load_dataset("fashion-mnist", "train", root=root, subset=10, seed=1, download=False)
    b = load_dataset("fashion-mnist", "train", root=root, subset=10, seed=1, download=False)
    c = load_dataset("fashion-mnist", "train", root=root, subset=10, seed=2, download=False)
    assert len(a) == 10
    assert torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(a.tensors[1], c.tensors[1])


def test_missing_data_error_is_fast_and_says_what_to_do(tmp_path, no_system_copy, monkeypatch):
    # no data anywhere and, as on an offline machine, no answer from the server
    monkeypatch.setattr(data, "_network_answers", lambda url, timeout: False)
    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", "train", root=tmp_path / "empty")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in message
    assert "PRUNING_BOOK_DATA" in message and "online" in message


def test_offline_probe_gives_up_within_timeout(monkeypatch):
    # name resolution ignores socket timeouts: simulate a lookup that hangs
    def hang(*args, **kwargs):
        time.sleep(5)
        raise TimeoutError("the lookup finally gave up")

    monkeypatch.setattr(data.socket, "create_connection", hang)
    start = time.perf_counter()
    assert data._network_answers("http://example.invalid/", timeout=0.5) is False
    assert time.perf_counter() - start < 2


def test_offline_probe_reports_refusal(monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionRefusedError

    monkeypatch.setattr(data.socket, "create_connection", refuse)
    assert data._network_answers("https://example.invalid/", timeout=0.5) is False


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"name": "cifar10"}, ValueError, "name must be one of"),
        ({"name": 3}, TypeError, "name must be one of"),
        ({"split": "validation"}, ValueError, "split must be one of"),
        ({"subset": 0}, ValueError, "subset must be"),
        ({"subset": 2.5}, TypeError, "subset must be"),
        ({"seed": -1}, ValueError, "seed must be"),
        ({"normalize": 1}, TypeError, "normalize must be"),
        ({"download": "no"}, TypeError, "download must be"),
        ({"timeout": 0}, ValueError, "timeout must be"),
        ({"root": 3}, TypeError, "root must be"),
    ],
)
def test_bad_arguments(kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        load_dataset(**{"name": "fashion-mnist", "split": "train", "root": tmp_path, **kwargs})


def test_train_val_split_is_deterministic_and_disjoint():
    dataset = torch.utils.data.TensorDataset(torch.arange(100))
    train, val = data.train_val_split(dataset, val_fraction=0.1, seed=3)
    train2, val2 = data.train_val_split(dataset, val_fraction=0.1, seed=3)
    assert len(train) == 90 and len(val) == 10
    assert train.indices == train2.indices and val.indices == val2.indices
    assert set(train.indices).isdisjoint(val.indices)
    with pytest.raises(ValueError, match="val_fraction"):
        data.train_val_split(dataset, val_fraction=1.0)
    with pytest.raises(TypeError, match="val_fraction"):
        data.train_val_split(dataset, val_fraction="0.1")
    with pytest.raises(ValueError, match="too small"):
        data.train_val_split(torch.utils.data.TensorDataset(torch.arange(1)), val_fraction=0.5)
    with pytest.raises(TypeError, match="dataset must be"):
        data.train_val_split(42)


def test_make_loader_shuffles_by_seed():
    dataset = torch.utils.data.TensorDataset(torch.arange(64))

    def order(seed):
        return torch.cat([b[0] for b in data.make_loader(dataset, 8, shuffle=True, seed=seed)])

    assert torch.equal(order(0), order(0))
    assert not torch.equal(order(0), order(1))
    assert torch.equal(torch.cat([b[0] for b in data.make_loader(dataset, 8)]), torch.arange(64))
    with pytest.raises(ValueError, match="batch_size"):
        data.make_loader(dataset, 0)
    with pytest.raises(TypeError, match="batch_size"):
        data.make_loader(dataset, 8.0)
    with pytest.raises(TypeError, match="shuffle"):
        data.make_loader(dataset, 8, shuffle="yes")


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_full_fashion_mnist_offline(tmp_path):
    train = load_dataset("fashion-mnist", "train+val", root=tmp_path, download=False)
    test = load_dataset("fashion-mnist", "test", root=tmp_path, download=False)
    assert len(train) == 60_000 and len(test) == 10_000
    fit = load_dataset("fashion-mnist", "train", root=tmp_path, download=False)
    val = load_dataset("fashion-mnist", "val", root=tmp_path, download=False)
    assert len(fit) == 55_000 and len(val) == 5_000
    assert torch.equal(torch.cat([fit.tensors[1], val.tensors[1]]), train.tensors[1])
    counts = np.bincount(train.tensors[1].numpy())
    assert counts.tolist() == [6000] * 10
    # the library's IDX reader against torchvision's
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw = tmp_path / "FashionMNIST" / "raw"
    images, labels = data._read_split(raw, "test", DATASETS["fashion-mnist"])
    assert torch.equal(images, read_image_file(str(raw / FILES["test"][0])))
    assert torch.equal(labels.long(), read_label_file(str(raw / FILES["test"][1])))


# ----------------------------------------------------------------------------- damaged files

IMAGES, LABELS = FILES["train"]


def truncate(payload: bytes) -> bytes:
    return payload[: len(payload) // 2]


@pytest.mark.parametrize(
    ("file", "payload", "problem"),
    [
        (IMAGES, b"", "is empty"),
        (IMAGES, truncate(image_bytes(20, 7)), "is truncated"),
        (IMAGES, image_bytes(20, 7)[:10], "is truncated"),
        (IMAGES, image_bytes(20, 7) + b"\0" * 5, "is damaged"),
        (IMAGES, label_bytes(20), "magic number 0x00000801"),
        (IMAGES, b"<html>404 Not Found</html>", "magic number"),
        (IMAGES, image_bytes(20, 7, size=32), "28x28"),
        (IMAGES, image_bytes(0, 7), "holds no images"),
        (LABELS, label_bytes(19), "holds 19 labels but train-images-idx3-ubyte"),
        (LABELS, struct.pack(">II", 0x0801, 20) + bytes([12] * 20), "label 12, outside 0..9"),
        (LABELS, image_bytes(20, 7), "magic number 0x00000803"),
    ],
)
def test_damaged_idx_file_is_named_with_the_way_forward(tmp_path, no_system_copy, file, payload,
                                                        problem):
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    write_idx(raw, 20, 10, fill=7, packed=False)
    (raw / file).write_bytes(payload)
    with pytest.raises(CorruptFileError) as info:
        load_dataset("fashion-mnist", "train", root=tmp_path / "root", download=False)
    error = info.value
    assert isinstance(error, ValueError)  # one library error, a ValueError like every bad value
    assert error.path == raw / file and str(raw / file) in str(error)
    assert problem in str(error)
    assert "To fix: delete" in str(error) and "load again" in str(error)
    assert (raw / file).read_bytes() == payload  # the library deletes no file of the user
    # the other split, whose files are intact, still loads
    assert len(load_dataset("fashion-mnist", "test", root=tmp_path / "root", download=False)) == 10


def test_truncated_gz_of_system_copy_leaves_nothing_behind(tmp_path, no_system_copy):
    write_idx(no_system_copy, 20, 10, fill=7, packed=True)
    packed = no_system_copy / f"{IMAGES}.gz"
    damaged = truncate(packed.read_bytes())
    packed.write_bytes(damaged)
    root = tmp_path / "root"
    with pytest.raises(CorruptFileError, match="gzip stream ends") as info:
        load_dataset("fashion-mnist", "train", root=root, download=False)
    assert info.value.path == packed and "reinstall" in str(info.value)
    assert packed.read_bytes() == damaged
    # the intact files were unpacked, the damaged one left no trace (no .partial, no .tmp)
    unpacked = listing(root)
    assert f"FashionMNIST/raw/{IMAGES}" not in unpacked
    assert all(name.startswith("FashionMNIST/raw/") and "." not in Path(name).name
               for name in unpacked), unpacked
    # once the system copy is repaired, loading works
    packed.write_bytes(gzip.compress(image_bytes(20, 7)))
    train = load_dataset("fashion-mnist", "train+val", root=root, download=False, normalize=False)
    assert torch.allclose(train.tensors[0], torch.full((20, 1, 28, 28), 7 / 255))
    assert listing(root) == sorted(f"FashionMNIST/raw/{f}" for pair in FILES.values() for f in pair)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"not gzip at all", "is not a valid gzip file"),
        (gzip.compress(truncate(image_bytes(20, 7))), "is truncated: it holds"),
        (gzip.compress(label_bytes(20)), "magic number"),
    ],
)
def test_damaged_gz_in_data_root_is_named(tmp_path, no_system_copy, content, problem):
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    write_idx(raw, 20, 10, fill=7, packed=True)
    (raw / f"{IMAGES}.gz").write_bytes(content)
    with pytest.raises(CorruptFileError, match=problem) as info:
        load_dataset("fashion-mnist", "train", root=tmp_path / "root", download=False)
    assert info.value.path == raw / f"{IMAGES}.gz" and "delete it" in str(info.value)
    assert (raw / f"{IMAGES}.gz").read_bytes() == content
    assert not (raw / IMAGES).exists()
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]


class FakeDownload:
    """Stands in for a torchvision dataset class: writes the .gz files as a download would."""

    mirrors = ["https://example.invalid/"]
    fail_after: int | None = None

    def __init__(self, root, train, download):
        raw = Path(root) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for i, name in enumerate(f for pair in FILES.values() for f in pair):
            if self.fail_after is not None and i == self.fail_after:
                (raw / f"{name}.gz").write_bytes(b"\x1f\x8b half a file")
                raise ConnectionResetError("connection reset by peer")
            payload = image_bytes(6, 9) if "images" in name else label_bytes(6)
            (raw / f"{name}.gz").write_bytes(gzip.compress(payload))


@pytest.mark.parametrize("fail_after", [None, 2])
def test_download_is_atomic(tmp_path, no_system_copy, monkeypatch, fail_after):
    monkeypatch.setattr(data, "_network_answers", lambda url, timeout: True)
    monkeypatch.setattr(FakeDownload, "fail_after", fail_after)
    monkeypatch.setattr(data, "_torchvision_class", lambda info: FakeDownload)
    root = tmp_path / "root"
    if fail_after is not None:
        with pytest.raises(DatasetNotFoundError, match="connection reset"):
            load_dataset("fashion-mnist", "train", root=root)
        assert listing(root) == []  # the half-downloaded files went with their scratch folder
    else:
        assert len(load_dataset("fashion-mnist", "test", root=root)) == 6
        assert listing(root) == sorted(
            f"FashionMNIST/raw/{f}" for pair in FILES.values() for f in pair
        )


# ----------------------------------------------------------------------------- concurrency

RACER = """
import dataclasses, hashlib, json, os, sys, time, types
from pathlib import Path

# import only the modules under test (torch, not the whole library): a quicker start
package = types.ModuleType("pruning_utils")
package.__path__ = [str(Path(sys.argv[1]) / "pruning_utils")]
sys.modules["pruning_utils"] = package
from pruning_utils import data

system, go, roots = sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
info = data.DATASETS["fashion-mnist"]
data.DATASETS["fashion-mnist"] = dataclasses.replace(info, system_dirs=(system,))
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():  # start together, so that the two unpack the same files at once
    time.sleep(0.0005)
digests = []
for root in roots:
    for split in ("train+val", "test"):
        images, labels = data.load_dataset(
            "fashion-mnist", split, root=root, download=False, normalize=False).tensors
        content = images.numpy().tobytes() + labels.numpy().tobytes()
        digests.append(hashlib.sha1(content).hexdigest())
print(json.dumps(digests))
"""


def test_two_processes_load_the_same_fresh_root(tmp_path):
    # distinct random pixels, so that a mix of two files or a torn file would show
    rng = np.random.default_rng(0)
    system = tmp_path / "system"
    system.mkdir()
    expected = {}
    for split, n in (("train", 1500), ("test", 300)):
        pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        header = struct.pack(">IIII", 0x0803, n, 28, 28)
        image_file, label_file = FILES[split]
        (system / f"{image_file}.gz").write_bytes(gzip.compress(header + pixels.tobytes(), 1))
        (system / f"{label_file}.gz").write_bytes(
            gzip.compress(struct.pack(">II", 0x0801, n) + labels.tobytes(), 1)
        )
        images = torch.from_numpy(pixels).to(torch.float32).div_(255.0).unsqueeze(1)
        expected[split] = hashlib.sha1(
            images.numpy().tobytes() + torch.from_numpy(labels).to(torch.int64).numpy().tobytes()
        ).hexdigest()
    roots = [tmp_path / f"root{i}" for i in range(6)]
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", RACER, str(REPO), str(system), str(go), *map(str, roots)]
    racers = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        if any(racer.poll() is not None for racer in racers):
            break
        time.sleep(0.01)
    go.touch()
    outputs = [racer.communicate(timeout=120) for racer in racers]
    for racer, (out, err) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, err
        assert json.loads(out) == [expected["train"], expected["test"]] * len(roots)
    names = sorted(f"FashionMNIST/raw/{f}" for pair in FILES.values() for f in pair)
    for root in roots:
        assert listing(root) == names  # no temporary or partial file left


def test_validation_split_is_the_last_twelfth_of_the_training_file(tmp_path):
    root = tmp_path / "root"
    write_idx(root / "FashionMNIST" / "raw", 24, 10, fill=255, packed=False)
    whole = load_dataset("fashion-mnist", "train+val", root=root, download=False)
    fit = load_dataset("fashion-mnist", "train", root=root, download=False)
    val = load_dataset("fashion-mnist", "val", root=root, download=False)
    assert (len(whole), len(fit), len(val)) == (24, 22, 2)
    assert torch.equal(torch.cat([fit.tensors[0], val.tensors[0]]), whole.tensors[0])
    assert validation_images(60_000) == 5_000
    assert validation_images(2) == 1
    with pytest.raises(ValueError, match="n_train_file"):
        validation_images(1)
    with pytest.raises(ValueError, match="'train\\+val'"):
        load_dataset("fashion-mnist", "validation", root=root, download=False)
