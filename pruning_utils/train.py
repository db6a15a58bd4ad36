"""Training, evaluation, fine-tuning and a cache of trained weights.

* :func:`train` minimises the cross-entropy of a classifier with Adam (or SGD), seeded, on
  any device, with a tqdm bar; it updates the model it is given (that is its purpose).
* :func:`evaluate` returns top-1 accuracy in eval mode under ``torch.inference_mode``.
* :func:`fine_tune` trains a *copy* of a (pruned) model for a few epochs, like every
  transform of the library it leaves its input alone unless ``inplace=True``.
* :func:`train_or_load` trains a model once and caches its ``state_dict`` under
  ``data_root()/weights/``; later calls with the same settings load it instead. A cache
  entry whose files are damaged is refused with a
  :class:`~pruning_utils.files.CorruptFileError` that names the file and says to pass
  ``retrain=True``; a model whose architecture changed gets a new entry.

Seeds are reproducible per device type: the same seed gives the same weights on every CPU
run, and on every run on the same kind of CUDA device (with deterministic kernels), but CPU
and CUDA runs differ.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from pruning_utils.config import data_root, get_config, get_device
from pruning_utils.files import CorruptFileError, atomic_files
from pruning_utils.models import (
    LARGE_MLP_WIDTHS,
    MODEL_NAMES,
    SMALL_RESNET_CHANNELS,
    build_model,
)
from pruning_utils.nnutils import eval_mode, model_device, seeded, set_module, to_model
from pruning_utils.surgery.tree import fold_into
from pruning_utils.validation import (
    check_bool,
    check_choice,
    check_device,
    check_int,
    check_model,
    check_real,
    check_seed,
)

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
SCHEDULES = ("constant", "cosine")
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


def _make_optimizer(
    name: str, params, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


# --------------------------------------------------------------------------- BatchNorm while tuning

_STATISTICS_IMAGES = 2048  # inputs that set a restored BatchNorm's starting statistics


class _NormalisedConv(nn.Module):
    """``bn(conv(x))``: a convolution with a BatchNorm restored for fine-tuning."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _convs_without_batchnorm(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Paths of the plain ``nn.Conv2d`` layers whose output no ``nn.BatchNorm2d`` reads directly.

    One forward pass on ``example`` finds them: a convolution counts as normalised when the
    tensor it returns (the same object) is the input of a BatchNorm2d.
    """
    convs = {name: m for name, m in model.named_modules() if type(m) is nn.Conv2d}
    outputs: list[tuple[torch.Tensor, str]] = []
    normalised: set[str] = set()

    def produced(name: str):
        def hook(_module, _inputs, output):
            outputs.append((output, name))

        return hook

    def read(_module, inputs):
        normalised.update(name for out, name in outputs if out is inputs[0])

    handles = [m.register_forward_hook(produced(name)) for name, m in convs.items()]
    handles += [m.register_forward_pre_hook(read) for m in model.modules()
                if type(m) is nn.BatchNorm2d]
    try:
        with eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return [name for name in convs if name not in normalised]


def _restore_batchnorm(model: nn.Module, loader: DataLoader) -> list[str]:
    """Put a BatchNorm2d after every convolution that lacks one, as an identity in eval mode.

    Each new BatchNorm starts from its convolution's output statistics on up to
    ``_STATISTICS_IMAGES`` inputs of ``loader`` (running mean ``μ``, running variance
    ``σ²``) with ``γ = √(σ² + ε)`` and ``β = μ``, so ``bn(y) = y`` in eval mode and nearly so
    on a training batch. Returns the paths of the convolutions given one (changes ``model``).
    """
    inputs = []
    for batch_inputs, _labels in loader:
        inputs.append(batch_inputs)
        if sum(len(x) for x in inputs) >= _STATISTICS_IMAGES:
            break
    inputs = to_model(torch.cat(inputs)[:_STATISTICS_IMAGES], model)
    names = _convs_without_batchnorm(model, inputs[:8])
    if not names:
        return names
    # per channel: count, sum and sum of squares, in float64, one loader-sized chunk at a time
    sums: dict[str, list] = {name: [0, 0.0, 0.0] for name in names}

    def moments(name: str):
        def hook(_module, _inputs, output):
            y = output.detach().to(torch.float64).transpose(0, 1).reshape(output.shape[1], -1)
            sums[name][0] += y.shape[1]
            sums[name][1] = sums[name][1] + y.sum(dim=1)
            sums[name][2] = sums[name][2] + (y * y).sum(dim=1)

        return hook

    convs = {name: model.get_submodule(name) for name in names}
    handles = [conv.register_forward_hook(moments(name)) for name, conv in convs.items()]
    try:
        with eval_mode(model), torch.no_grad():
            for chunk in inputs.split(loader.batch_size or len(inputs)):
                model(chunk)
    finally:
        for handle in handles:
            handle.remove()
    for name, conv in convs.items():
        n, total, squares = sums[name]
        mean = total / n
        var = (squares / n - mean * mean).clamp(min=0.0)
        bn = nn.BatchNorm2d(conv.out_channels).to(conv.weight.device, conv.weight.dtype)
        bn.train(conv.training)
        with torch.no_grad():
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.weight.copy_(torch.sqrt(var + bn.eps))
            bn.bias.copy_(mean)
        set_module(model, name, _NormalisedConv(conv, bn))
    return names


def _fold_restored_batchnorm(model: nn.Module, names: list[str]) -> None:
    """Fold each restored BatchNorm (running statistics) into its convolution and unwrap it."""
    for name in names:
        wrapper = model.get_submodule(name)
        fold_into(wrapper.conv, wrapper.bn)
        set_module(model, name, wrapper.conv)


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
    schedule: str = "constant",
    seed: int = 0,
    device: str | torch.device | None = None,
    val_data: DataArg | None = None,
    progress: bool = True,
) -> TrainHistory:
    """Train a classifier by minimising the cross-entropy of its logits.

    The model is updated in place, moved to ``device`` and left in eval mode; each batch is
    moved to the model's device (floating inputs also to its dtype). Shuffling and any
    randomness inside the model (dropout) come from generators seeded with ``seed`` (the
    CPU generator, and the CUDA generator of ``device`` when it is a GPU); torch's global
    random state is restored afterwards. Reproducible per device type: two calls with the
    same seed on identical models give identical weights on the CPU, and on the same kind
    of GPU when its kernels are deterministic, but CPU and GPU runs differ.

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
    schedule:
        ``"constant"`` (default: ``lr`` throughout) or ``"cosine"`` (``lr`` decays to 0
        along half a cosine over all the mini-batches of all ``epochs``, so a run of
        ``epochs`` ends at a small learning rate; runs of different lengths differ at every
        step).
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
    model = check_model(model)
    epochs = check_int("epochs", epochs)
    batch_size = check_int("batch_size", batch_size)
    lr = check_real("lr", lr, lower=0.0, include_lower=False)
    seed = check_seed("seed", seed)
    optimizer = check_choice("optimizer", optimizer, _OPTIMIZERS)
    weight_decay = check_real("weight_decay", weight_decay, lower=0.0)
    schedule = check_choice("schedule", schedule, SCHEDULES)
    progress = check_bool("progress", progress)
    device = check_device(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    device = device if device is not None else model_device(model)
    loader = _as_loader(train_data, batch_size, shuffle=True, seed=seed, name="train_data")

    model.to(device)
    opt = _make_optimizer(optimizer, params, lr, weight_decay)
    history = TrainHistory()
    total = epochs * len(loader)
    decay = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        if schedule == "cosine"
        else None
    )
    with seeded(seed, device), tqdm(
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
                inputs, labels = to_model(inputs, model), labels.to(device)
                logits = model(inputs)
                loss = nn.functional.cross_entropy(logits, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if decay is not None:
                    decay.step()
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
    every submodule afterwards. Each batch is moved to the model's device (floating inputs
    also to its dtype), so CPU data evaluates a GPU model. The model is not modified: when
    ``device`` differs from the device of its parameters, a copy is moved there.

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
    model = check_model(model)
    batch_size = check_int("batch_size", batch_size)
    device = check_device(device)
    loader = _as_loader(data, batch_size, shuffle=False, seed=0, name="data")
    if device is not None and device != model_device(model):
        model = copy.deepcopy(model).to(device)
    target = model_device(model)
    correct, seen = 0, 0
    with eval_mode(model), torch.inference_mode():
        for inputs, labels in loader:
            logits = model(to_model(inputs, model))
            correct += int((logits.argmax(dim=1) == labels.to(target)).sum())
            seen += len(labels)
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
    schedule: str = "constant",
    batchnorm: bool = False,
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
    batch_size, optimizer, schedule, seed, device, progress:
        As for :func:`train` (``schedule="cosine"`` decays ``lr`` to 0 over the
        ``epochs``).
    batchnorm:
        Fine-tune with a BatchNorm after every convolution that lacks one, then fold it
        back. Pruning that folds BatchNorm into the convolutions (the width methods) leaves
        a CNN that trains without normalisation; with ``batchnorm=True`` each plain
        ``nn.Conv2d`` whose output no ``nn.BatchNorm2d`` reads gets one for the duration of
        the fine-tuning, starting as the identity (its statistics measured on up to 2,048
        inputs of ``data``), and the trained BatchNorm is folded into the convolution
        afterwards, so the returned model has the modules, shapes and speed of ``model``.
        The paths of those convolutions are kept as ``.fine_tune_batchnorm``. A model
        without a plain ``nn.Conv2d`` is an error.
    inplace:
        Fine-tune ``model`` itself instead of a copy.

    Returns
    -------
    torch.nn.Module
        The fine-tuned model, in eval mode.
    """
    model = check_model(model)
    inplace = check_bool("inplace", inplace)
    batchnorm = check_bool("batchnorm", batchnorm)
    if batchnorm and not any(type(m) is nn.Conv2d for m in model.modules()):
        raise ValueError(
            "batchnorm=True restores BatchNorm after convolutions, and the model has no "
            "nn.Conv2d; use batchnorm=False"
        )
    tuned = model if inplace else copy.deepcopy(model)
    restored: list[str] = []
    if batchnorm:
        loader = _as_loader(data, batch_size, shuffle=False, seed=seed, name="data")
        restored = _restore_batchnorm(tuned, loader)
    try:
        history = train(
            tuned,
            data,
            epochs,
            lr=lr,
            batch_size=batch_size,
            optimizer=optimizer,
            schedule=schedule,
            seed=seed,
            device=device,
            progress=progress,
        )
    finally:  # an interrupted run still leaves an in-place model with its own modules
        _fold_restored_batchnorm(tuned, restored)
    tuned.fine_tune_history = history
    if batchnorm:
        tuned.fine_tune_batchnorm = tuple(restored)
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
    ``hash`` covers all these fields plus ``extra`` (model options, batch size, optimizer,
    and, from :func:`train_or_load`, a fingerprint of the model's architecture).
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


def _architecture(model: nn.Module) -> str:
    """A short hash of a model's architecture.

    It covers the model's class name, every submodule's path, class name and settings
    (``extra_repr``: sizes, kernel, stride, ...) and every state-dict entry's name, shape
    and dtype, so that a model built differently under the same cache name gets its own
    cache entry.
    """
    parts = [type(model).__qualname__]
    for path, module in model.named_modules():
        parts.append(f"{path}:{type(module).__qualname__}({module.extra_repr()})")
    for key, tensor in model.state_dict().items():
        parts.append(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]


@contextmanager
def _cache_lock(folder: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold a lock on a weights folder: exclusive to write an entry, shared to read one.

    Writers rename a weights file and its sidecar into place under the exclusive lock and
    readers read both under a shared one, so a reader never pairs the weights of one run
    with the sidecar of another. Where ``fcntl`` is missing (Windows) or the file system
    refuses locks, no lock is taken (each file is still written atomically).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    handle = None
    if fcntl is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / ".lock", "a+b")  # noqa: SIM115 (closed below)
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:
            pass
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _cache_fix(weights: Path, sidecar: Path) -> str:
    return (
        f"pass retrain=True to train again and replace this cache entry, or delete "
        f"{weights.name} and {sidecar.name} from {weights.parent}"
    )


def _check_state(state: object, model: nn.Module) -> str | None:
    """Why ``state`` does not fit ``model`` (None when its names, shapes and dtypes all do)."""
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        return "does not hold a state dict (a dict of tensors)"
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} is {tuple(state[k].shape)} {state[k].dtype} where the model has "
        f"{tuple(t.shape)} {t.dtype}"
        for k, t in expected.items()
        if k in state and (state[k].shape != t.shape or state[k].dtype != t.dtype)
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing[:3]}" + (" ..." if len(missing) > 3 else ""))
    if unexpected:
        problems.append(f"unexpected {unexpected[:3]}" + (" ..." if len(unexpected) > 3 else ""))
    problems.extend(wrong[:3])
    if not problems:
        return None
    return "holds weights of another architecture (" + "; ".join(problems) + ")"


def _read_meta(sidecar: Path, content: bytes, fix: str) -> dict:
    """The parsed and checked JSON sidecar of a cache entry."""
    try:
        meta = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(sidecar, f"is not valid JSON ({exc})", fix) from exc
    if not isinstance(meta, dict):
        raise CorruptFileError(sidecar, "does not hold a JSON object", fix)
    for key, kind in (("architecture", str), ("weights_sha256", str), ("history", list)):
        if not isinstance(meta.get(key), kind):
            raise CorruptFileError(sidecar, f"lacks a valid {key!r} field", fix)
    if not all(isinstance(record, dict) for record in meta["history"]):
        raise CorruptFileError(sidecar, "holds a 'history' that is not a list of records", fix)
    return meta


def _load_cached(model: nn.Module, weights: Path, architecture: str) -> dict | None:
    """Load a cache entry into ``model`` and return its sidecar; None when there is none.

    Raises
    ------
    CorruptFileError
        When the weights file or its sidecar is missing, empty, truncated, modified, or
        belongs to another architecture.
    """
    sidecar = weights.with_suffix(".json")
    if not weights.is_file():
        return None
    with _cache_lock(weights.parent, exclusive=False):
        try:
            blob = weights.read_bytes()
        except FileNotFoundError:  # removed in the meantime: nothing cached
            return None
        try:
            text = sidecar.read_bytes()
        except FileNotFoundError:
            text = None
    fix = _cache_fix(weights, sidecar)
    if text is None:
        raise CorruptFileError(
            sidecar,
            f"is missing, although the weights file {weights.name} exists: the cache entry "
            "is incomplete",
            fix,
        )
    meta = _read_meta(sidecar, text, fix)
    if meta["architecture"] != architecture:
        raise CorruptFileError(
            sidecar,
            f"describes a model of another architecture (fingerprint {meta['architecture']}, "
            f"this model has {architecture}): the entry does not belong under this name",
            fix,
        )
    if not blob:
        raise CorruptFileError(weights, "is empty", fix)
    if hashlib.sha256(blob).hexdigest() != meta["weights_sha256"]:
        raise CorruptFileError(
            weights,
            f"does not match the SHA-256 checksum recorded in {sidecar.name}: it was truncated "
            "or modified after it was written",
            fix,
        )
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails with many types on a damaged file
        raise CorruptFileError(
            weights, f"cannot be read by torch.load ({type(exc).__name__}: {exc})", fix
        ) from exc
    problem = _check_state(state, model)
    if problem is not None:
        raise CorruptFileError(weights, problem, fix)
    model.load_state_dict(state)
    return meta


def _save_cached(model: nn.Module, weights: Path, meta: dict) -> None:
    """Write a cache entry: the CPU state dict and its JSON sidecar (with a checksum).

    Both files are written under temporary names and renamed into place together, under
    the folder's exclusive lock.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = buffer.getvalue()
    meta = {**meta, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    text = json.dumps(meta, indent=2, default=repr)
    sidecar = weights.with_suffix(".json")
    with _cache_lock(weights.parent, exclusive=True), atomic_files(weights, sidecar) as tmps:
        tmps[0].write_bytes(blob)
        tmps[1].write_text(text)


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

    The cache file (see :func:`weights_path`) is keyed by model name and options, a
    fingerprint of the model's architecture (class, submodules and their settings,
    state-dict names, shapes and dtypes), dataset (name and size, or a hash of its content),
    epochs, seed, learning rate, batch size, optimizer and smoke/full mode: a model whose
    architecture changed under the same name gets a new entry and is trained, never loaded
    with weights of the old one. The entry is a plain ``state_dict`` (loadable with
    ``torch.load(..., weights_only=True)``) and a JSON sidecar with the training history,
    the architecture fingerprint and the SHA-256 checksum of the weights file; both are
    written atomically (temporary files, then renamed into place together).

    A cache entry that cannot be used (weights file empty, truncated or modified, sidecar
    missing or not valid JSON, weights of another architecture) is never loaded and never
    replaced silently: a :class:`~pruning_utils.files.CorruptFileError` names the file,
    says what is wrong and to pass ``retrain=True`` (or delete the entry). A cache entry
    holds whatever device trained it first; weights are loaded onto ``device``.

    Parameters
    ----------
    name_or_factory:
        A name of :func:`~pruning_utils.models.build_model` (e.g. ``"large-mlp"``), or a
        zero-argument callable returning a fresh model (then ``name`` is required unless the
        callable is a class, whose name is used).
    dataset:
        A dataset name for :func:`~pruning_utils.data.load_dataset` (trained on its
        ``"train"`` split, restricted to ``get_config().train_subset`` images; the history
        records the accuracy on its ``"val"`` split after each epoch), or a Dataset of
        ``(x, y)`` pairs.
    epochs:
        Training epochs; default ``get_config().epochs_mlp`` for MLPs and LeNet-5 and
        ``epochs_cnn`` for ``"small-cnn"`` and ``"small-resnet"``, ``epochs_vit`` for ``"vit"``.
    seed:
        Seed of the initial weights (fresh models are built on the CPU under it, so the
        initial weights are the same on every device) and of the training
        (see :func:`train`: reproducible per device type).
    lr, batch_size, optimizer:
        As for :func:`train`.
    model_kwargs:
        Options passed to :func:`~pruning_utils.models.build_model`, e.g. ``{"activation": None}``.
    name:
        Name used in the cache key (required for an anonymous factory).
    device:
        Where to train and where the returned model lives; default
        :func:`~pruning_utils.config.get_device` (a GPU when there is one, else the CPU).
        :func:`evaluate` moves each batch to the model's device.
    root:
        Data root holding ``weights/`` (default :func:`~pruning_utils.config.data_root`).
    retrain:
        Train again even when cached weights exist, and replace them (also the way out of
        a damaged cache entry).
    progress:
        Show a tqdm bar while training.

    Returns
    -------
    torch.nn.Module
        The trained model in eval mode on ``device``, with ``.weights_path`` set to its
        cache file and ``.train_history`` (a :class:`TrainHistory`, also after loading
        from the cache).

    Raises
    ------
    CorruptFileError
        When the cache entry exists but cannot be used and ``retrain`` is False.
    """
    config = get_config()
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be None or a dict, got {type(model_kwargs).__name__}")
    model_kwargs = dict(model_kwargs or {})
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be None or a str, got {type(name).__name__}")
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
        key = name_or_factory.lower() if isinstance(name_or_factory, str) else None
        epochs = {"small-cnn": config.epochs_cnn, "small-resnet": config.epochs_cnn,
                  "vit": config.epochs_vit}.get(key, config.epochs_mlp)
    epochs = check_int("epochs", epochs)
    seed = check_seed("seed", seed)
    lr = check_real("lr", lr, lower=0.0, include_lower=False)
    batch_size = check_int("batch_size", batch_size)
    optimizer = check_choice("optimizer", optimizer, _OPTIMIZERS)
    retrain = check_bool("retrain", retrain)
    progress = check_bool("progress", progress)
    device = check_device(device)
    if root is not None and not isinstance(root, (str, Path)):
        raise TypeError(f"root must be None, a str or a pathlib.Path, got {type(root).__name__}")

    if isinstance(dataset, str):
        from pruning_utils.data import DATASETS, load_dataset

        # the split is part of the key: weights trained before the validation images were
        # held out (on all 60,000) are never loaded as if they had not seen them
        dataset_key = check_choice("dataset", dataset, sorted(DATASETS)) + "-train"
        train_data = load_dataset(dataset, "train", subset=config.train_subset, seed=0)
        val_data = load_dataset(dataset, "val", subset=config.test_subset, seed=0)
    elif isinstance(dataset, Dataset):
        train_data = dataset
        val_data = None
        dataset_key = f"data-{_dataset_fingerprint(dataset)}"
    else:
        raise TypeError(
            f"dataset must be a dataset name or a Dataset, got {type(dataset).__name__}"
        )

    with seeded(seed):  # on the CPU: the same initial weights on every device
        model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"the factory must return an nn.Module, got {type(model).__name__}")
    architecture = _architecture(model)
    extra = {"model_kwargs": model_kwargs, "batch_size": batch_size, "optimizer": optimizer,
             "architecture": architecture}
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
    device = device if device is not None else get_device()

    meta = None if retrain else _load_cached(model, path, architecture)
    model.to(device)
    if meta is None:
        history = train(
            model,
            train_data,
            epochs,
            lr=lr,
            batch_size=batch_size,
            optimizer=optimizer,
            seed=seed,
            device=device,
            val_data=val_data,
            progress=progress,
        )
        meta = {"name": key_name, "dataset": dataset_key, "epochs": epochs, "seed": seed,
                "lr": lr, "smoke": config.smoke, "train_size": len(train_data), **extra,
                "trained_on": str(torch.device(device)), "history": history.epochs}
        _save_cached(model, path, meta)
    model.eval()
    model.weights_path = path
    model.train_history = TrainHistory(epochs=meta["history"])
    return model


#: How the book trains each of its models (Adam, batch 256, on the whole training split of
#: Fashion-MNIST). The deep ReLU LargeMLP diverges or stalls at 1e-3; 3e-4 trains it well.
#: Epochs come from the run configuration (``epochs_mlp`` / ``epochs_cnn``).
BOOK_RECIPES: dict[str, dict] = {
    "simple-mlp": {"lr": 1e-3, "batch_size": 256},
    "large-mlp": {"lr": 3e-4, "batch_size": 256},
    "small-cnn": {"lr": 1e-3, "batch_size": 256},
    "lenet5": {"lr": 1e-3, "batch_size": 256},
    "small-resnet": {"lr": 1e-3, "batch_size": 256},
    "vit": {"lr": 1e-3, "batch_size": 256},
}


def trained_model(
    name: str,
    dataset: str = "fashion-mnist",
    *,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    **model_kwargs,
) -> nn.Module:
    """One of the book's trained models, trained once with :data:`BOOK_RECIPES` and cached.

    Every chapter and the headline benchmark load their models through this function, so
    they share one cache entry per model: the first caller trains, later ones load.

    Parameters
    ----------
    name:
        ``"simple-mlp"``, ``"large-mlp"``, ``"small-cnn"``, ``"lenet5"``, ``"small-resnet"`` or
        ``"vit"``.
    dataset:
        Dataset name for :func:`~pruning_utils.data.load_dataset`.
    seed:
        Seed of the initial weights and of the shuffling.
    progress:
        Show a tqdm bar if training is needed.
    device:
        Where the model lives (and trains, if it must); default
        :func:`~pruning_utils.config.get_device`, a GPU when there is one. Evaluate it
        with :func:`evaluate`, which moves each batch to the model's device.
    **model_kwargs:
        Options of the model, e.g. ``activation=None`` for the original linear stacks.
        ``"large-mlp"`` gets ``widths=get_config().large_mlp_widths`` unless given: the
        original widths in full mode, every hidden width divided by 4 in smoke mode;
        ``"small-resnet"`` gets ``channels=get_config().small_resnet_channels`` likewise.

    Returns
    -------
    torch.nn.Module
        The trained model in eval mode (see :func:`train_or_load`).
    """
    name = check_choice("name", name, list(BOOK_RECIPES))
    if name == "large-mlp":  # smoke mode narrows it; the original widths keep one cache key
        widths = tuple(model_kwargs.pop("widths", get_config().large_mlp_widths))
        if widths != LARGE_MLP_WIDTHS:
            model_kwargs["widths"] = widths
    if name == "small-resnet":  # the same for the ResNet's channels
        channels = tuple(model_kwargs.pop("channels", get_config().small_resnet_channels))
        if channels != SMALL_RESNET_CHANNELS:
            model_kwargs["channels"] = channels
    return train_or_load(
        name,
        dataset,
        seed=seed,
        model_kwargs=model_kwargs,
        progress=progress,
        device=device,
        **BOOK_RECIPES[name],
    )
