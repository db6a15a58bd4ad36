import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pruning_utils import data
from pruning_utils.data import DATASETS, DatasetNotFoundError, load_dataset

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx(folder: Path, n_train: int, n_test: int, fill: int, packed: bool) -> None:
    """Write tiny IDX files (the format of LeCun's MNIST distribution): images are all ``fill``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = struct.pack(">IIII", 0x0803, n, 28, 28) + bytes([fill]) * (n * 28 * 28)
        labels = struct.pack(">II", 0x0801, n) + bytes(i % 10 for i in range(n))
        for name, payload in zip(FILES[split], (images, labels), strict=True):
            if packed:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)


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
    train = load_dataset("fashion-mnist", "train", root=root, normalize=False, download=False)
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
    assert len(load_dataset("fashion-mnist", "train", root=root, download=False)) == 8


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
    "kwargs, match",
    [
        ({"name": "cifar10"}, "name must be one of"),
        ({"split": "validation"}, "split must be one of"),
        ({"subset": 0}, "subset must be"),
        ({"subset": 2.5}, "subset must be"),
    ],
)
def test_bad_arguments(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
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


def test_make_loader_shuffles_by_seed():
    dataset = torch.utils.data.TensorDataset(torch.arange(64))

    def order(seed):
        return torch.cat([b[0] for b in data.make_loader(dataset, 8, shuffle=True, seed=seed)])

    assert torch.equal(order(0), order(0))
    assert not torch.equal(order(0), order(1))
    assert torch.equal(torch.cat([b[0] for b in data.make_loader(dataset, 8)]), torch.arange(64))
    with pytest.raises(ValueError, match="batch_size"):
        data.make_loader(dataset, 0)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_full_fashion_mnist_offline(tmp_path):
    train = load_dataset("fashion-mnist", "train", root=tmp_path, download=False)
    test = load_dataset("fashion-mnist", "test", root=tmp_path, download=False)
    assert len(train) == 60_000 and len(test) == 10_000
    counts = np.bincount(train.tensors[1].numpy())
    assert counts.tolist() == [6000] * 10
