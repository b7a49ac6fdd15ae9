"""Array and argument helpers shared by the converters: what comes in is read as NumPy, checked by name."""

from typing import Mapping

import numpy as np


def to_numpy(name: str, value) -> np.ndarray:
    """A floating NumPy array from an array-like (NumPy, JAX, a CPU torch tensor), naming ``name`` on failure."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor: no import needed
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - re-raised with the key's name
        raise TypeError(f"{name} must be an array, got {type(value).__name__}") from e
    if arr.dtype == object:
        raise TypeError(f"{name} must be an array, got {type(value).__name__} {value!r:.60}")
    if not np.issubdtype(arr.dtype, np.floating) and arr.dtype.name != "bfloat16":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    return arr


def expect_shape(name: str, arr: np.ndarray, shape: tuple, what: str) -> None:
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), got shape {tuple(arr.shape)}")


def check_flag(name: str, value) -> bool:
    """Flags are bools: ``bidirectional="yes"`` is refused rather than read as truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def check_str(name: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r}")
    return value


def check_mapping(name: str, value, what: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return value
