"""Training, evaluation, fine-tuning and a cache of trained weights.

* :func:`train` minimises the cross-entropy of a classifier with Adam (or SGD), seeded, on
  any device, with a tqdm bar; it updates the model it is given (that is its purpose).
* :func:`evaluate` returns top-1 accuracy in eval mode under ``torch.inference_mode``.
* :func:`fine_tune` trains a *copy* of a (pruned) model for a few epochs, like every
  transform of the library it leaves its input alone unless ``inplace=True``.
* :func:`train_or_load` trains a model once and caches its ``state_dict`` under
  ``data_root()/weights/``; later calls with the same settings load it instead.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from pruning_utils.config import data_root, get_config, get_device
from pruning_utils.models import MODEL_NAMES, build_model

__all__ = [
    "TrainHistory",
    "train",
    "evaluate",
    "fine_tune",
    "train_or_load",
    "weights_path",
    "BOOK_RECIPES",
    "trained_model",
]

_OPTIMIZERS = ("adam", "adamw", "sgd")
DataArg = Dataset | DataLoader | tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainHistory:
    """What happened during :func:`train`: one record per epoch.

    Attributes
    ----------
    epochs:
        One dict per epoch with ``epoch`` (1-based), ``loss`` (mean training cross-entropy),
        ``train_accuracy`` (accuracy on the training batches, measured while training),
        ``val_accuracy`` (NaN without ``val_data``) and ``seconds`` (wall-clock time).
    """

    epochs: list[dict[str, float]] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """The history as a DataFrame with one row per epoch."""
        columns = ["epoch", "loss", "train_accuracy", "val_accuracy", "seconds"]
        return pd.DataFrame(self.epochs, columns=columns)

    @property
    def final_loss(self) -> float:
        """Mean training loss of the last epoch (NaN if no epoch ran)."""
        return self.epochs[-1]["loss"] if self.epochs else math.nan


# ----------------------------------------------------------------------------- helpers


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return seed


def _check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a positive float, got {lr!r}")
    return float(lr)


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _as_loader(
    data: DataArg, batch_size: int, *, shuffle: bool, seed: int, name: str
) -> DataLoader:
    """A DataLoader over ``data``: a Dataset, a DataLoader (used as is) or a tuple ``(X, y)``."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, tuple):
        if len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
            raise TypeError(f"{name} as a tuple must be (inputs, labels) tensors")
        if len(data[0]) != len(data[1]):
            raise ValueError(
                f"{name} inputs and labels differ in length: {len(data[0])} vs {len(data[1])}"
            )
        data = TensorDataset(*data)
    if not isinstance(data, Dataset):
        raise TypeError(
            f"{name} must be a Dataset, a DataLoader or a tuple (inputs, labels), "
            f"got {type(data).__name__}"
        )
    if len(data) == 0:
        raise ValueError(f"{name} is empty")
    # an explicit generator also keeps the loader's worker seed off torch's global generator
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Run a block with torch's global generators seeded, restoring them afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _make_optimizer(
    name: str, params, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


# ----------------------------------------------------------------------------- public API


def train(
    model: nn.Module,
    train_data: DataArg,
    epochs: int,
    *,
    lr: float = 1e-3,
    batch_size: int = 256,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    val_data: DataArg | None = None,
    progress: bool = True,
) -> TrainHistory:
    """Train a classifier by minimising the cross-entropy of its logits.

    The model is updated in place, moved to ``device`` and left in eval mode. Shuffling and
    any randomness inside the model (dropout) come from generators seeded with ``seed``;
    torch's global random state is restored afterwards, so two calls with the same seed on
    identical models give identical weights (on the CPU).

    Parameters
    ----------
    model:
        A module mapping a batch of inputs to logits ``(N, classes)``.
    train_data:
        A Dataset of ``(input, label)`` pairs, a tuple ``(X, y)`` of tensors, or a
        DataLoader (then used as it is: ``batch_size`` and the shuffling seed are ignored).
    epochs:
        Number of passes over ``train_data`` (a positive int).
    lr:
        Learning rate.
    batch_size:
        Mini-batch size when ``train_data`` is not already a DataLoader.
    optimizer:
        ``"adam"`` (default), ``"adamw"``, or ``"sgd"`` (momentum 0.9).
    weight_decay:
        L2 penalty passed to the optimizer.
    seed:
        Seed of the shuffling order and of the model's own randomness.
    device:
        Where to train; default: the device the model's parameters are on.
    val_data:
        Optional data on which :func:`evaluate` is run after each epoch.
    progress:
        Show a tqdm bar over the mini-batches.

    Returns
    -------
    TrainHistory
        Per-epoch loss, training accuracy, validation accuracy and time.
    """
    model = _check_model(model)
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    lr = _check_lr(lr)
    seed = _check_seed(seed)
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(_OPTIMIZERS)}, got {optimizer!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not (
        0 <= weight_decay < math.inf
    ):
        raise ValueError(f"weight_decay must be a float >= 0, got {weight_decay!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    device = torch.device(device) if device is not None else _model_device(model)
    loader = _as_loader(train_data, batch_size, shuffle=True, seed=seed, name="train_data")

    model.to(device)
    opt = _make_optimizer(optimizer, params, lr, float(weight_decay))
    history = TrainHistory()
    total = epochs * len(loader)
    with _seeded(seed, device), tqdm(
        total=total, disable=not progress, desc="train", unit="batch", leave=False
    ) as bar:
        for epoch in range(1, epochs + 1):
            model.train()
            start = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = 0
            bar.set_description(f"train epoch {epoch}/{epochs}")
            for inputs, labels in loader:
                inputs, labels = inputs.to(device), labels.to(device)
                logits = model(inputs)
                loss = nn.functional.cross_entropy(logits, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(labels)
                correct += (logits.detach().argmax(dim=1) == labels).sum()
                seen += len(labels)
                bar.update(1)
            if seen == 0:
                raise ValueError("train_data yielded no batches")
            mean_loss = float(loss_sum) / seen
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"training loss became {mean_loss} in epoch {epoch}; "
                    f"try a smaller lr (got {lr})"
                )
            record = {
                "epoch": float(epoch),
                "loss": mean_loss,
                "train_accuracy": float(correct) / seen,
                "val_accuracy": math.nan,
                "seconds": time.perf_counter() - start,
            }
            if val_data is not None:
                record["val_accuracy"] = evaluate(model, val_data)
            history.epochs.append(record)
            bar.set_postfix(loss=f"{mean_loss:.4f}")
    model.eval()
    return history


def evaluate(
    model: nn.Module,
    data: DataArg,
    device: str | torch.device | None = None,
    batch_size: int = 1024,
) -> float:
    """Top-1 accuracy of ``model`` on ``data``, a float in [0, 1].

    Runs in eval mode under ``torch.inference_mode()`` and restores the train/eval mode of
    every submodule afterwards. The model is not modified: when ``device`` differs from the
    device of its parameters, a copy is moved there.

    Parameters
    ----------
    model:
        A classifier returning logits ``(N, classes)``.
    data:
        A Dataset, a DataLoader or a tuple ``(X, y)`` of tensors.
    device:
        Where to run; default: the device the model's parameters are on.
    batch_size:
        Batch size when ``data`` is not already a DataLoader.

    Returns
    -------
    float
        ``(number of argmax(logits) == label) / N``.
    """
    model = _check_model(model)
    batch_size = _check_positive_int("batch_size", batch_size)
    loader = _as_loader(data, batch_size, shuffle=False, seed=0, name="data")
    own = _model_device(model)
    device = torch.device(device) if device is not None else own
    if device != own:
        model = copy.deepcopy(model).to(device)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    correct, seen = 0, 0
    try:
        with torch.inference_mode():
            for inputs, labels in loader:
                inputs, labels = inputs.to(device), labels.to(device)
                correct += int((model(inputs).argmax(dim=1) == labels).sum())
                seen += len(labels)
    finally:
        for module, mode in modes:
            module.training = mode
    if seen == 0:
        raise ValueError("data yielded no batches")
    return correct / seen


def fine_tune(
    model: nn.Module,
    data: DataArg,
    epochs: int = 1,
    *,
    lr: float = 1e-4,
    batch_size: int = 256,
    optimizer: str = "adam",
    seed: int = 0,
    device: str | torch.device | None = None,
    inplace: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Fine-tune a (pruned) model for a few epochs, returning a new model.

    Pruning transforms never mutate their input, and neither does fine-tuning: the model is
    deep-copied first (``inplace=False``, the default), so the pruned-but-not-tuned model
    stays available for comparison. The returned model carries the training history as
    ``.fine_tune_history`` and keeps the ``.pruning_report`` of its input, if any.

    Parameters
    ----------
    model:
        The model to fine-tune.
    data:
        Training data, as for :func:`train`.
    epochs:
        Number of epochs (the book uses one).
    lr:
        Learning rate; smaller than for training from scratch (default ``1e-4``).
    batch_size, optimizer, seed, device, progress:
        As for :func:`train`.
    inplace:
        Fine-tune ``model`` itself instead of a copy.

    Returns
    -------
    torch.nn.Module
        The fine-tuned model, in eval mode.
    """
    model = _check_model(model)
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    tuned = model if inplace else copy.deepcopy(model)
    history = train(
        tuned,
        data,
        epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        seed=seed,
        device=device,
        progress=progress,
    )
    tuned.fine_tune_history = history
    return tuned


# ----------------------------------------------------------------------------- weights cache


def _dataset_fingerprint(dataset: Dataset) -> str:
    """A short hash of a dataset's content (tensors of a TensorDataset, else its items)."""
    digest = hashlib.sha1()
    digest.update(str(len(dataset)).encode())
    if isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
    else:
        items = [dataset[i] for i in range(len(dataset))]
        tensors = tuple(torch.stack([torch.as_tensor(item[j]) for item in items])
                        for j in range(len(items[0])))
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text).strip("-") or "x"


def weights_path(
    name: str,
    dataset: str,
    epochs: int,
    seed: int,
    lr: float,
    *,
    smoke: bool,
    train_size: int,
    extra: dict | None = None,
    root: str | Path | None = None,
) -> Path:
    """Path of the cached ``state_dict`` for one training setting.

    The file name reads ``{name}_{dataset}_e{epochs}_lr{lr}_s{seed}_n{train_size}_{mode}_{hash}.pt``
    under ``root/weights`` (``root`` defaults to :func:`~pruning_utils.config.data_root`);
    ``hash`` covers all these fields plus ``extra`` (model options, batch size, optimizer).
    """
    key = {
        "name": name,
        "dataset": dataset,
        "epochs": epochs,
        "seed": seed,
        "lr": lr,
        "smoke": smoke,
        "train_size": train_size,
        "extra": extra or {},
    }
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=repr).encode()).hexdigest()[:10]
    mode = "smoke" if smoke else "full"
    stem = (
        f"{_slug(name)}_{_slug(dataset)}_e{epochs}_lr{lr:g}_s{seed}"
        f"_n{train_size}_{mode}_{digest}"
    )
    base = Path(root) if root is not None else data_root()
    return base / "weights" / f"{stem}.pt"


def _atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file in the target folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def train_or_load(
    name_or_factory: str | Callable[[], nn.Module],
    dataset: str | Dataset = "fashion-mnist",
    epochs: int | None = None,
    seed: int = 0,
    *,
    lr: float = 1e-3,
    batch_size: int = 256,
    optimizer: str = "adam",
    model_kwargs: dict | None = None,
    name: str | None = None,
    device: str | torch.device | None = None,
    root: str | Path | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Train a model once and cache its weights; later calls load them.

    The cache file (see :func:`weights_path`) is keyed by model name and options, dataset
    (name and size, or a hash of its content), epochs, seed, learning rate, batch size,
    optimizer and smoke/full mode. It is written atomically (temporary file, then rename)
    with a JSON sidecar holding the training history, and loaded with
    ``torch.load(..., weights_only=True)``.

    Parameters
    ----------
    name_or_factory:
        A name of :func:`~pruning_utils.models.build_model` (e.g. ``"large-mlp"``), or a
        zero-argument callable returning a fresh model (then ``name`` is required unless the
        callable is a class, whose name is used).
    dataset:
        A dataset name for :func:`~pruning_utils.data.load_dataset` (its training split,
        restricted to ``get_config().train_subset`` images), or a Dataset of ``(x, y)`` pairs.
    epochs:
        Training epochs; default ``get_config().epochs_mlp`` for MLPs and LeNet-5 and
        ``epochs_cnn`` for ``"small-cnn"``.
    seed:
        Seed of the initial weights (fresh models are built under it) and of the shuffling.
    lr, batch_size, optimizer:
        As for :func:`train`.
    model_kwargs:
        Options passed to :func:`~pruning_utils.models.build_model`, e.g. ``{"activation": None}``.
    name:
        Name used in the cache key (required for an anonymous factory).
    device:
        Where to train and where the returned model lives; default
        :func:`~pruning_utils.config.get_device`.
    root:
        Data root holding ``weights/`` (default :func:`~pruning_utils.config.data_root`).
    retrain:
        Train again even when cached weights exist (and overwrite them).
    progress:
        Show a tqdm bar while training.

    Returns
    -------
    torch.nn.Module
        The trained model in eval mode, with ``.weights_path`` set to its cache file and
        ``.train_history`` (a :class:`TrainHistory`, also after loading from the cache).
    """
    config = get_config()
    model_kwargs = dict(model_kwargs or {})
    if isinstance(name_or_factory, str):
        key_name = name or name_or_factory.lower()

        def factory() -> nn.Module:
            return build_model(name_or_factory, **model_kwargs)

        if name_or_factory.lower() not in MODEL_NAMES:
            raise ValueError(
                f"name_or_factory must be one of {list(MODEL_NAMES)} or a callable, "
                f"got {name_or_factory!r}"
            )
    elif callable(name_or_factory):
        if model_kwargs:
            raise ValueError("model_kwargs can only be used with a model name, not a factory")
        if name is None:
            if isinstance(name_or_factory, type):
                name = name_or_factory.__name__
            else:
                raise ValueError("name is required when name_or_factory is not a model name")
        key_name = name
        factory = name_or_factory
    else:
        raise TypeError(
            "name_or_factory must be a model name or a callable, "
            f"got {type(name_or_factory).__name__}"
        )
    if epochs is None:
        is_cnn = isinstance(name_or_factory, str) and name_or_factory.lower() == "small-cnn"
        epochs = config.epochs_cnn if is_cnn else config.epochs_mlp
    epochs = _check_positive_int("epochs", epochs)
    seed = _check_seed(seed)
    lr = _check_lr(lr)
    batch_size = _check_positive_int("batch_size", batch_size)
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(_OPTIMIZERS)}, got {optimizer!r}")

    if isinstance(dataset, str):
        from pruning_utils.data import load_dataset

        dataset_key = dataset
        train_data = load_dataset(dataset, "train", subset=config.train_subset, seed=0)
    elif isinstance(dataset, Dataset):
        train_data = dataset
        dataset_key = f"data-{_dataset_fingerprint(dataset)}"
    else:
        raise TypeError(
            f"dataset must be a dataset name or a Dataset, got {type(dataset).__name__}"
        )

    extra = {"model_kwargs": model_kwargs, "batch_size": batch_size, "optimizer": optimizer}
    path = weights_path(
        key_name,
        dataset_key,
        epochs,
        seed,
        lr,
        smoke=config.smoke,
        train_size=len(train_data),
        extra=extra,
        root=root,
    )
    device = torch.device(device) if device is not None else get_device()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"the factory must return an nn.Module, got {type(model).__name__}")

    if path.is_file() and not retrain:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.to(device)
    else:
        model.to(device)
        history = train(
            model,
            train_data,
            epochs,
            lr=lr,
            batch_size=batch_size,
            optimizer=optimizer,
            seed=seed,
            device=device,
            progress=progress,
        )
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        _atomic_save(state, path)
        meta = {"name": key_name, "dataset": dataset_key, "epochs": epochs, "seed": seed,
                "lr": lr, "smoke": config.smoke, "train_size": len(train_data), **extra,
                "history": history.epochs}
        _atomic_write_text(
            json.dumps(meta, indent=2, default=repr), path.with_suffix(".json")
        )
    model.eval()
    model.weights_path = path
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        model.train_history = TrainHistory(epochs=json.loads(sidecar.read_text())["history"])
    return model



#: How the book trains each of its models (Adam, batch 256, on the whole training split of
#: Fashion-MNIST). The deep ReLU LargeMLP diverges or stalls at 1e-3; 3e-4 trains it well.
#: Epochs come from the run configuration (``epochs_mlp`` / ``epochs_cnn``).
BOOK_RECIPES: dict[str, dict] = {
    "simple-mlp": {"lr": 1e-3, "batch_size": 256},
    "large-mlp": {"lr": 3e-4, "batch_size": 256},
    "small-cnn": {"lr": 1e-3, "batch_size": 256},
    "lenet5": {"lr": 1e-3, "batch_size": 256},
}


def trained_model(
    name: str,
    dataset: str = "fashion-mnist",
    *,
    seed: int = 0,
    progress: bool = True,
    **model_kwargs,
) -> nn.Module:
    """One of the book's trained models, trained once with :data:`BOOK_RECIPES` and cached.

    Every chapter and the headline benchmark load their models through this function, so
    they share one cache entry per model: the first caller trains, later ones load.

    Parameters
    ----------
    name:
        ``"simple-mlp"``, ``"large-mlp"``, ``"small-cnn"`` or ``"lenet5"``.
    dataset:
        Dataset name for :func:`~pruning_utils.data.load_dataset`.
    seed:
        Seed of the initial weights and of the shuffling.
    progress:
        Show a tqdm bar if training is needed.
    **model_kwargs:
        Options of the model, e.g. ``activation=None`` for the original linear stacks.

    Returns
    -------
    torch.nn.Module
        The trained model in eval mode (see :func:`train_or_load`).
    """
    if name not in BOOK_RECIPES:
        raise ValueError(f"name must be one of {list(BOOK_RECIPES)}, got {name!r}")
    return train_or_load(
        name, dataset, seed=seed, model_kwargs=model_kwargs, progress=progress, **BOOK_RECIPES[name]
    )
