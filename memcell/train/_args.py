"""Argument checks of the training API that ``memcell._checks`` does not hold: step counts,
positive rates, callables, optimizers, paths and JSON configs.

Each check returns the value it accepted and raises ``ValueError``/``TypeError`` naming the
argument, what it expects and what it got.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_count(name: str, value, low: int = 0) -> int:
    """A number of steps: an int (not a bool) >= ``low``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def check_positive_number(name: str, value, what: str = "a positive finite number") -> float:
    if not (_is_real(value) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def check_real(name: str, value) -> float:
    """A finite real number (not a bool)."""
    if not (_is_real(value) and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def check_callable(name: str, value, signature: str) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be a function {signature}, got {type(value).__name__} {value!r}")


def check_optional_callable(name: str, value, signature: str) -> None:
    if value is not None:
        check_callable(name, value, signature)


def check_transformation(name: str, tx) -> None:
    """An optax ``GradientTransformation``: anything with callable ``init`` and ``update``."""
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"{name} must be an optax.GradientTransformation (with init and update), got {type(tx).__name__}"
        )


def check_path(name: str, value) -> None:
    """A file or directory path (``str`` or ``os.PathLike``), or None."""
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike path (or None), got {type(value).__name__} {value!r}")


def check_config(config) -> dict | None:
    """A JSON-able dict, returned as its JSON round trip (what a checkpoint stores and reads back)."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise TypeError(f"config must be a JSON-serialisable dict (or None), got {type(config).__name__}")
    try:
        return json.loads(json.dumps(config))
    except (TypeError, ValueError) as e:
        raise TypeError(f"config must be JSON-serialisable: {e}") from None
