"""Small helpers on ``nn.Module`` trees, used across the library (each written once).

=======================  ==========================================================
:func:`model_device`     the device of a model's parameters (CPU when it has none)
:func:`model_dtype`      the floating dtype of a model's parameters
:func:`eval_mode`        a ``with`` block in eval mode, each module's flag restored
:func:`seeded`           a ``with`` block with torch's generators seeded (CPU and CUDA)
:func:`to_model`         move inputs to the model's device (and floating dtype)
:func:`set_module`       replace the submodule at a dotted path
:func:`capture_inputs`   the inputs that named layers receive on some data
=======================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from pruning_utils.validation import check_device, check_model, check_seed

__all__ = [
    "model_device",
    "model_dtype",
    "eval_mode",
    "seeded",
    "to_model",
    "set_module",
    "batches",
    "capture_inputs",
]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the model's first floating parameter (default dtype otherwise)."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


@contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run a block with torch's global CPU generator seeded with ``seed``, restored afterwards.

    For a CUDA ``device`` that device's generator is seeded and restored too; no other
    generator is touched (unlike ``torch.manual_seed``, which reseeds every CUDA device), so
    the block leaves the caller's random state exactly as it found it. Reproducible per
    device type: the same seed gives the same numbers on every CPU run, and on every run on
    the same kind of CUDA device, but CPU and CUDA streams differ.

    Parameters
    ----------
    seed:
        An int in ``[0, 2**63)``.
    device:
        The device the block draws random numbers on (default the CPU only).

    Examples
    --------
    >>> with seeded(3):
    ...     a = torch.rand(2)
    >>> with seeded(3):
    ...     b = torch.rand(2)
    >>> bool(torch.equal(a, b))
    True
    """
    seed = check_seed("seed", seed)
    device = check_device(device) or torch.device("cpu")
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put every module of ``models`` in eval mode; restore each module's own flag after."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def to_model(x: Tensor, model: nn.Module) -> Tensor:
    """``x`` on the model's device; a floating ``x`` also in the model's floating dtype.

    Integer inputs (token ids, say) keep their dtype. Nothing is copied when ``x`` is
    already there.
    """
    device = model_device(model)
    if x.is_floating_point():
        return x.to(device=device, dtype=model_dtype(model))
    return x.to(device)


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at path ``name`` through its parent's ``setattr``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def batches(data: Tensor | Iterable, name: str = "data") -> Iterator[Tensor]:
    """Input tensors from a tensor or from every batch of a loader (``(x, y)`` gives ``x``)."""
    if isinstance(data, Tensor):
        yield data
        return
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"{name} must be a tensor of inputs or an iterable of batches (a DataLoader), "
            f"got {type(data).__name__}"
        )
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise TypeError(
                f"{name} batches must be tensors or (inputs, targets) pairs, "
                f"got {type(x).__name__}"
            )
        yield x


def capture_inputs(
    model: nn.Module,
    data: Tensor | Iterable,
    layers: Sequence[str],
    *,
    limit: int | None = None,
) -> dict[str, Tensor]:
    """The inputs each named layer receives when ``data`` runs through ``model``.

    Forward pre-hooks record ``inputs[0]`` of every layer in ``layers`` while the model runs
    in eval mode under ``no_grad`` (each module's mode is restored, the hooks removed, the
    model left unchanged). Inputs are moved to the model's device and floating dtype.

    Parameters
    ----------
    model:
        Any module.
    data:
        A tensor of inputs or an iterable of batches (``(x, y)`` batches give ``x``).
    layers:
        Dotted module paths (``"features.3"``), as in ``model.named_modules()``.
    limit:
        Stop after this many inputs (rows of the first dimension); default all of ``data``.

    Returns
    -------
    dict
        ``{path: tensor}``, the concatenated inputs of each layer, on the model's device.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> seen = capture_inputs(net, torch.ones(5, 4), ["2"])
    >>> tuple(seen["2"].shape)
    (5, 3)
    """
    check_model(model)
    names = list(layers)
    known = dict(model.named_modules())
    unknown = [n for n in names if n not in known or not n]
    if unknown:
        raise ValueError(
            f"layers names modules that the model does not have: {unknown}; "
            f"some of its modules: {[n for n in known if n][:12]}"
        )
    chunks: dict[str, list[Tensor]] = {n: [] for n in names}

    def hook_for(name: str):
        def hook(_module, inputs):
            chunks[name].append(inputs[0].detach())

        return hook

    handles = [known[n].register_forward_pre_hook(hook_for(n)) for n in names]
    seen = 0
    try:
        with eval_mode(model), torch.no_grad():
            for x in batches(data):
                model(to_model(x, model))
                seen += len(x)
                if limit is not None and seen >= limit:
                    break
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n in names if not chunks[n]]
    if missing:
        raise ValueError(f"data never reached the layers {missing} (is data empty?)")
    out = {n: torch.cat(c) for n, c in chunks.items()}
    if limit is not None:
        out = {n: t[:limit] for n, t in out.items()}
    return out
