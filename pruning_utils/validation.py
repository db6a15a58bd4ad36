"""Argument checks shared by the whole library (the bottom of its dependency graph).

One rule everywhere, in the spirit of scikit-learn's ``check_scalar``: a value of the wrong
*kind* raises ``TypeError``, a value of the right kind but outside its range raises
``ValueError``, and every message names the argument and what it may be.

One generator convention everywhere (:func:`check_generator`): ``None`` means torch's global
generator, an ``int`` a fresh generator seeded with it, a ``torch.Generator`` itself.
Functions that must be reproducible by default take ``generator=0``.

This module imports nothing from the rest of the library.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "is_int",
    "is_real",
    "check_bool",
    "check_int",
    "check_real",
    "check_fraction",
    "check_choice",
    "check_model",
    "check_tensor",
    "check_finite",
    "check_generator",
    "check_seed",
    "check_layer_types",
    "check_int_sequence",
    "check_int_pair",
    "check_exactly_one",
    "check_dtype",
    "check_same_device",
    "check_device",
]

#: Floating dtypes that the factorizations compute in.
COMPUTE_DTYPES = (torch.float32, torch.float64)


def is_int(value: object) -> bool:
    """True for python and numpy integers, False for bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """True for python and numpy reals (ints included), False for bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_bool(name: str, value: object) -> bool:
    """``value`` must be ``True`` or ``False`` (TypeError otherwise)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_int(name: str, value: object, lower: int | None = 1, upper: int | None = None) -> int:
    """An int in ``[lower, upper]`` (either bound may be None), returned as a python int.

    >>> check_int("rank", 3)
    3
    >>> try:
    ...     check_int("rank", 0)
    ... except ValueError as err:
    ...     print(err)
    rank must be an int >= 1, got 0
    """
    if lower is not None and upper is not None:
        allowed = f"an int in [{lower}, {upper}]"
    elif lower is not None:
        allowed = f"an int >= {lower}"
    elif upper is not None:
        allowed = f"an int <= {upper}"
    else:
        allowed = "an int"
    if not is_int(value):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if (lower is not None and value < lower) or (upper is not None and value > upper):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return int(value)


def check_real(
    name: str,
    value: object,
    lower: float | None = None,
    upper: float | None = None,
    *,
    include_lower: bool = True,
    include_upper: bool = True,
) -> float:
    """A finite real number between ``lower`` and ``upper``, returned as a float."""
    left = "[" if include_lower else "("
    right = "]" if include_upper else ")"
    lo = "-inf" if lower is None else f"{lower:g}"
    hi = "inf" if upper is None else f"{upper:g}"
    allowed = f"a number in {left}{lo}, {hi}{right}"
    if not is_real(value):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    value = float(value)
    ok = value == value and abs(value) != float("inf")  # NaN and infinities fail
    if lower is not None:
        ok = ok and (value >= lower if include_lower else value > lower)
    if upper is not None:
        ok = ok and (value <= upper if include_upper else value < upper)
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_fraction(name: str, value: object, *, include_upper: bool = True) -> float:
    """A real number in ``(0, 1]`` (``(0, 1)`` with ``include_upper=False``).

    >>> check_fraction("energy", 0.9)
    0.9
    """
    right = "]" if include_upper else ")"
    if not is_real(value):
        raise TypeError(f"{name} must be a float in (0, 1{right}, got {value!r}")
    value = float(value)
    if not (0.0 < value <= 1.0) or (not include_upper and value == 1.0):  # rejects NaN too
        raise ValueError(f"{name} must be a float in (0, 1{right}, got {value}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """One of the strings ``choices`` (TypeError for a non-string, ValueError otherwise)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {list(choices)}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_model(model: object, name: str = "model") -> nn.Module:
    """``model`` must be an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_finite(name: str, X: Tensor) -> None:
    """Raise ValueError when tensor ``X`` holds a NaN or an infinity."""
    if X.is_floating_point() and X.device.type != "meta" and not bool(torch.isfinite(X).all()):
        n_nan = int(torch.isnan(X).sum())
        n_inf = int(torch.isinf(X).sum())
        raise ValueError(
            f"{name} must contain only finite values, found {n_nan} NaN and {n_inf} Inf "
            f"entries (shape {tuple(X.shape)})"
        )


def check_tensor(
    name: str, X: object, ndim: int | None = None, *, finite: bool = True
) -> Tensor:
    """A non-empty floating-point tensor (finite unless ``finite=False``) of ``ndim`` dims."""
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}")
    if ndim is not None and X.ndim != ndim:
        raise ValueError(
            f"{name} must be a {ndim}-D tensor, got shape {tuple(X.shape)} ({X.ndim}-D)"
        )
    if not X.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {X.dtype}")
    if X.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(X.shape)}")
    if X.device.type == "meta":
        raise ValueError(
            f"{name} is on the meta device and holds no values; materialize it first "
            "(e.g. model.to_empty(device='cpu') and load the weights)"
        )
    if finite:
        check_finite(name, X)
    return X


def check_seed(name: str, value: object) -> int:
    """A seed: an int in ``[0, 2**63)``."""
    return check_int(name, value, lower=0, upper=2**63 - 1)


def check_generator(
    generator: object, device: torch.device | str | None = None, name: str = "generator"
) -> torch.Generator | None:
    """The library's one generator convention.

    ``None``: torch's global generator (returned as ``None``); an ``int``: a new
    ``torch.Generator`` on ``device`` (default CPU) seeded with it; a ``torch.Generator``:
    itself, which must live on ``device`` when one is given. A seed gives the same stream
    on every run of the same device type; CPU and CUDA streams differ.

    >>> check_generator(3).initial_seed()
    3
    """
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        if device is not None and torch.device(device).type != generator.device.type:
            raise ValueError(
                f"{name} lives on {generator.device.type} but the computation runs on "
                f"{torch.device(device).type}; pass a generator of that device or an int seed"
            )
        return generator
    if is_int(generator):
        seed = check_seed(name, generator)
        dev = torch.device("cpu") if device is None else torch.device(device)
        if dev.type == "meta":
            dev = torch.device("cpu")
        return torch.Generator(device=dev).manual_seed(seed)
    raise TypeError(
        f"{name} must be None (torch's global generator), an int seed or a torch.Generator, "
        f"got {type(generator).__name__}"
    )


def check_layer_types(
    layers: object, allowed: Sequence[type] = (nn.Linear, nn.Conv2d), name: str = "layers"
) -> tuple[type, ...]:
    """A non-empty tuple of layer types drawn from ``allowed`` (a single type is accepted)."""
    listed = [f"nn.{k.__name__}" for k in allowed]
    names = " and ".join([", ".join(listed[:-1]), listed[-1]] if len(listed) > 1 else listed)
    if isinstance(layers, type):
        layers = (layers,)
    if not isinstance(layers, (tuple, list)) or not layers:
        raise TypeError(f"{name} must be a non-empty tuple drawn from ({names}), got {layers!r}")
    for kind in layers:
        if kind not in tuple(allowed):
            raise ValueError(
                f"{name} must contain only {names}, got {getattr(kind, '__name__', kind)!r}"
            )
    return tuple(layers)


def check_int_sequence(name: str, values: object, lower: int = 1) -> tuple[int, ...]:
    """A sequence (not a string) of ints ``>= lower``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of ints >= {lower}, got {values!r}")
    out = tuple(values)
    for i, v in enumerate(out):
        check_int(f"{name}[{i}]", v, lower=lower)
    return tuple(int(v) for v in out)


def check_int_pair(name: str, value: object, lower: int = 1) -> tuple[int, int]:
    """An int or a pair of ints, each ``>= lower``, returned as a pair (as ``kernel_size``).

    >>> check_int_pair("kernel_size", 3)
    (3, 3)
    """
    allowed = f"an int or a pair of ints >= {lower}"
    pair = (value, value) if is_int(value) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(is_int(v) for v in pair):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if min(pair) < lower:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_exactly_one(**arguments: object) -> str:
    """The name of the one argument that is not ``None`` (ValueError unless exactly one is).

    >>> check_exactly_one(rank=None, energy=0.9)
    'energy'
    """
    given = [name for name, value in arguments.items() if value is not None]
    if len(given) != 1:
        names = " and ".join(arguments) if len(arguments) == 2 else ", ".join(arguments)
        got = " and ".join(f"{name}={value!r}" for name, value in arguments.items())
        raise ValueError(f"give exactly one of {names}, got {got}")
    return given[0]


def check_dtype(name: str, value: object, allowed: Sequence[torch.dtype]) -> torch.dtype:
    """One of the dtypes ``allowed`` (TypeError for a non-dtype, ValueError otherwise)."""
    names = ", ".join(str(d) for d in allowed)
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be one of {names}, got {value!r}")
    if value not in tuple(allowed):
        raise ValueError(f"{name} must be one of {names}, got {value}")
    return value


def check_same_device(**tensors: Tensor) -> torch.device:
    """The common device of ``tensors`` (ValueError naming each one's device otherwise).

    >>> check_same_device(A=torch.ones(1), B=torch.ones(1))
    device(type='cpu')
    """
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        where = " and ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(
            f"{' and '.join(devices)} must be on the same device, got {where}; "
            "move them with .to(device)"
        )
    return next(iter(devices.values()))
def check_device(device: object, name: str = "device") -> torch.device | None:
    """``None``, or a device given as a ``torch.device`` or a string such as ``"cuda:0"``.

    Returned as a ``torch.device`` (``None`` stays ``None``). A CUDA device must be
    available.

    >>> check_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"{name} must be None, a torch.device or a string such as 'cpu' or 'cuda', "
            f"got {type(device).__name__}"
        )
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(
            f"{name} must name a device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"{name} is {str(device)!r} but torch.cuda.is_available() is False; "
            "use 'cpu' or leave it None"
        )
    return device
