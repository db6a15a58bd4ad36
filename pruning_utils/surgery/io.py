"""Save a transformed model as a recipe plus its weights, and rebuild it.

The recipe describes every layer by its constructor arguments (one table per layer type,
:data:`SPEC_ARGS`), so a file holds only primitives and tensors and is read with
``torch.load(..., weights_only=True)``. A file that is not a saved model, is truncated or
was tampered with gives one :class:`~pruning_utils.files.CorruptFileError` naming the file
and what to do.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pruning_utils.files import CorruptFileError, atomic_files
from pruning_utils.layers import (
    LowRankConv2d,
    LowRankLinear,
    RandomizedConv2d,
    RandomizedLinear,
    SpatialLowRankConv2d,
)
from pruning_utils.nnutils import model_device, model_dtype, set_module
from pruning_utils.surgery.report import PruningReport, primitive
from pruning_utils.surgery.tree import OUR_LAYERS
from pruning_utils.validation import check_model

__all__ = ["save_pruned", "load_pruned", "architecture", "from_architecture", "register_spec"]

_FORMAT = "pruning_utils.pruned_model"
_FORMAT_VERSION = 1


# constructor arguments read back from attributes of the same name
SPEC_ARGS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features"),
    nn.Conv2d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    ),
    nn.BatchNorm1d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.BatchNorm2d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.Identity: (),
    nn.Flatten: ("start_dim", "end_dim"),
    nn.Dropout: ("p", "inplace"),
    nn.Dropout2d: ("p", "inplace"),
    nn.ReLU: ("inplace",),
    nn.ReLU6: ("inplace",),
    nn.LeakyReLU: ("negative_slope", "inplace"),
    nn.ELU: ("alpha", "inplace"),
    nn.GELU: ("approximate",),
    nn.SiLU: ("inplace",),
    nn.Tanh: (),
    nn.Sigmoid: (),
    nn.Softmax: ("dim",),
    nn.LogSoftmax: ("dim",),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
    nn.AvgPool2d: (
        "kernel_size",
        "stride",
        "padding",
        "ceil_mode",
        "count_include_pad",
        "divisor_override",
    ),
    nn.AdaptiveAvgPool2d: ("output_size",),
    nn.AdaptiveMaxPool2d: ("output_size", "return_indices"),
    LowRankLinear: ("in_features", "out_features", "rank"),
    LowRankConv2d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "rank",
        "stride",
        "padding",
        "dilation",
        "padding_mode",
    ),
    SpatialLowRankConv2d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "rank",
        "stride",
        "padding",
        "dilation",
        "padding_mode",
    ),
    RandomizedLinear: ("in_features", "out_features", "samples", "probabilities", "seed"),
    RandomizedConv2d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "samples",
        "probabilities",
        "stride",
        "padding",
        "dilation",
        "padding_mode",
        "seed",
    ),
}
_BY_NAME = {kind.__name__: kind for kind in SPEC_ARGS}


def register_spec(kind: type[nn.Module], args: tuple[str, ...]) -> None:
    """Describe a module type for save/load: its constructor arguments, read from attributes.

    ``kind(**{a: module.a for a in args})`` must rebuild a module of the same structure
    (its submodules of known types are described, and replaced, on their own). The book's
    transformer registers its blocks this way (:mod:`pruning_utils.models`).
    """
    if not (isinstance(kind, type) and issubclass(kind, nn.Module)):
        raise TypeError(f"kind must be an nn.Module subclass, got {kind!r}")
    if not all(isinstance(a, str) for a in args):
        raise TypeError(f"args must be attribute names (str), got {args!r}")
    known = _BY_NAME.get(kind.__name__)
    if known is not None and known is not kind:
        raise ValueError(f"another module type is already registered as {kind.__name__!r}")
    SPEC_ARGS[kind] = tuple(args)
    _BY_NAME[kind.__name__] = kind


def _bias_flag(module: nn.Module) -> bool | None:
    if isinstance(module, LowRankLinear | LowRankConv2d):
        return module.second.bias is not None
    if isinstance(module, SpatialLowRankConv2d):
        return module.horizontal.bias is not None
    if isinstance(module, (nn.Linear, nn.Conv2d, RandomizedLinear, RandomizedConv2d)):
        return module.bias is not None
    return None


def _module_spec(module: nn.Module) -> dict | None:
    """Constructor arguments of a known layer as primitives (None for unknown types)."""
    kind = type(module)
    if kind not in SPEC_ARGS:
        return None
    spec: dict[str, Any] = {"type": kind.__name__}
    for arg in SPEC_ARGS[kind]:
        spec[arg] = primitive(getattr(module, arg))
    bias = _bias_flag(module)
    if bias is not None:
        spec["bias"] = bias
    return spec


def _build_module(spec: Mapping) -> nn.Module:
    kind = _BY_NAME.get(spec.get("type"))
    if kind is None:
        raise ValueError(f"the recipe names an unknown module type {spec.get('type')!r}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "type"}
    return kind(**kwargs)


def _tree_spec(module: nn.Module) -> dict | None:
    """Whole-structure description: Sequential containers of known layers (else None)."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        children = []
        for name, child in module.named_children():
            spec = _tree_spec(child)
            if spec is None:
                return None
            children.append([name, spec])
        return {"type": "Sequential", "children": children}
    return _module_spec(module)


def _build_tree(spec: Mapping) -> nn.Module:
    if spec.get("type") == "Sequential":
        seq = nn.Sequential()
        for name, child in spec["children"]:
            seq.add_module(name, _build_tree(child))
        return seq
    return _build_module(spec)


def _described_modules(model: nn.Module) -> dict[str, dict]:
    """``{path: spec}`` for every known layer, not descending into our layers."""
    out: dict[str, dict] = {}
    blocked: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in blocked):
            continue
        spec = _module_spec(module)
        if spec is not None:
            out[name] = spec
            if isinstance(module, OUR_LAYERS):
                blocked.append(name)
    return out


def _float_dtype(model: nn.Module) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def save_pruned(model: nn.Module, path: str | Path) -> None:
    """Save a pruned model as a recipe plus its state dict.

    The file holds a dict of primitives and tensors (loadable with
    ``torch.load(path, weights_only=True)``)::

        {"format": ..., "version": 1,
         "recipe": {"root": class name, "dtype": "float32", "training": bool,
                    "tree": nested description or None,
                    "modules": {module path: {"type": ..., constructor arguments}}},
         "report": PruningReport.to_dict() or None,
         "state_dict": model.state_dict()}

    ``modules`` describes every standard layer (Linear, Conv2d, BatchNorm, pooling,
    activations, ...) and every layer of :mod:`pruning_utils.layers` by its constructor
    arguments (shapes, ranks, widths, samples, seeds); ``tree`` describes the whole model
    when it is a tree of ``nn.Sequential`` containers of such layers.

    Parameters
    ----------
    model:
        The model to save.
    path:
        File to write.
    """
    check_model(model)
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or a pathlib.Path, got {type(path).__name__}")
    report = getattr(model, "pruning_report", None)
    blob = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "recipe": {
            "root": type(model).__name__,
            "dtype": str(_float_dtype(model)).removeprefix("torch."),
            "training": bool(model.training),
            "tree": _tree_spec(model),
            "modules": _described_modules(model),
        },
        "report": report.to_dict() if isinstance(report, PruningReport) else None,
        "state_dict": {
            k: v.detach().cpu() if isinstance(v, Tensor) else v
            for k, v in model.state_dict().items()
        },
    }
    with atomic_files(Path(path)) as (tmp,):  # never a half-written file under the name
        torch.save(blob, tmp)


_DTYPES = {"float16", "bfloat16", "float32", "float64"}


def _read(path: Path) -> dict:
    """The saved blob, checked key by key; any defect is a :class:`PrunedModelFileError`."""
    what_to_do = "save the model again with save_pruned (the file cannot be repaired)"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (or is not a file)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # EOFError, RuntimeError, UnpicklingError, zipfile errors, ...
        raise CorruptFileError(
            path,
            "cannot be read as a saved model: it is empty, truncated or not written by "
            f"save_pruned ({type(err).__name__}: {err})",
            what_to_do,
        ) from err
    if not isinstance(blob, Mapping) or blob.get("format") != _FORMAT:
        raise CorruptFileError(
            path, f"was not written by save_pruned (no {_FORMAT!r} format tag)",
            "load it with the function that wrote it, or save the model with save_pruned",
        )
    if blob.get("version") != _FORMAT_VERSION:
        raise CorruptFileError(
            path, f"has format version {blob.get('version')}, expected {_FORMAT_VERSION}",
            "load it with the version of pruning_utils that wrote it, or save it again",
        )
    recipe = blob.get("recipe")
    problems = []
    if not isinstance(recipe, Mapping):
        problems.append("no recipe")
    else:
        for key, kind in (("root", str), ("dtype", str), ("training", bool),
                          ("modules", Mapping)):
            if not isinstance(recipe.get(key), kind):
                problems.append(f"recipe[{key!r}] is missing or not a {kind.__name__}")
        if isinstance(recipe.get("dtype"), str) and recipe["dtype"] not in _DTYPES:
            problems.append(f"recipe['dtype'] is {recipe['dtype']!r}, not one of {sorted(_DTYPES)}")
        if recipe.get("tree") is not None and not isinstance(recipe.get("tree"), Mapping):
            problems.append("recipe['tree'] is not a description")
    if not isinstance(blob.get("state_dict"), Mapping):
        problems.append("no state_dict")
    if problems:
        raise CorruptFileError(path, f"is damaged: {'; '.join(problems)}", what_to_do)
    return blob


def load_pruned(path: str | Path, base_model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` and load its tensors.

    Parameters
    ----------
    path:
        File written by :func:`save_pruned` (read with ``weights_only=True``).
    base_model:
        A model of the original architecture (e.g. a fresh dense one). It is copied, every
        module the recipe describes differently (a factorized layer, a narrower Linear,
        an Identity in place of a folded BatchNorm) is replaced, then the state dict is
        loaded. Without it the recipe's ``tree`` is built, which exists only for models
        that are ``nn.Sequential`` trees of standard layers and our layers.

    Returns
    -------
    nn.Module
        The model on the CPU (``base_model``'s device when given), in the saved mode, with
        its ``pruning_report`` when one was saved.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or a pathlib.Path, got {type(path).__name__}")
    if base_model is not None:
        check_model(base_model)
    path = Path(path)
    blob = _read(path)
    recipe = blob["recipe"]
    dtype = getattr(torch, recipe["dtype"])
    if base_model is None:
        if recipe["tree"] is None:
            raise ValueError(
                f"{path} holds a {recipe['root']}, which is not a tree of nn.Sequential "
                "containers and standard layers; pass base_model= a freshly built "
                f"{recipe['root']} of the same architecture to rebuild it"
            )
        device = torch.device("cpu")
    else:
        model = copy.deepcopy(base_model)
        device = model_device(model)
        for name, spec in recipe["modules"].items():
            try:
                current = model.get_submodule(name)
            except AttributeError as err:
                raise ValueError(
                    f"base_model has no module {name!r} that the recipe describes; is it "
                    f"a {recipe['root']} of the same architecture?"
                ) from err
            if _module_spec(current) != spec:
                set_module(model, name, _build_module(spec).to(device=device, dtype=dtype))
    try:
        if base_model is None:
            model = _build_tree(recipe["tree"]).to(dtype)
        # assign=True keeps each saved tensor's dtype (a float64 layer in a float32 model
        # stays float64); the model's parameters keep their requires_grad
        model.load_state_dict(blob["state_dict"], strict=True, assign=True)
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        raise CorruptFileError(
            path, f"holds tensors that do not fit its recipe's architecture ({err})",
            "save the model again; with base_model=, pass the architecture it was saved from",
        ) from err
    if base_model is not None:
        model.to(device)
    model.train(bool(recipe["training"]))
    if blob.get("report") is not None:
        model.pruning_report = PruningReport.from_dict(blob["report"])
    return model


def architecture(model: nn.Module) -> dict:
    """The structure of a model as primitives (no weights): what :func:`from_architecture` builds.

    Only for models that are trees of ``nn.Sequential`` containers of standard layers and
    the layers of :mod:`pruning_utils.layers` (the book's models and what the transforms
    make of them). Useful to time an architecture on another machine without its weights:
    speed does not depend on the values of the weights of dense kernels.

    Examples
    --------
    >>> spec = architecture(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))
    >>> from_architecture(spec)
    Sequential(
      (0): Linear(in_features=4, out_features=3, bias=True)
      (1): ReLU()
    )
    """
    check_model(model)
    spec = _tree_spec(model)
    if spec is None:
        raise ValueError(
            f"a {type(model).__name__} is not a tree of nn.Sequential containers of standard "
            "layers and pruning_utils layers, so its architecture cannot be described alone; "
            "use save_pruned and load_pruned with base_model="
        )
    return {"format": _FORMAT, "version": _FORMAT_VERSION, "dtype": str(model_dtype(model))
            .removeprefix("torch."), "tree": spec}


def from_architecture(spec: Mapping, device: torch.device | str | None = None) -> nn.Module:
    """A model with the structure :func:`architecture` described, freshly initialised."""
    if not isinstance(spec, Mapping) or spec.get("format") != _FORMAT or "tree" not in spec:
        raise ValueError("spec must be a dict returned by architecture()")
    model = _build_tree(spec["tree"]).to(dtype=getattr(torch, spec.get("dtype", "float32")))
    return model.to(device) if device is not None else model
