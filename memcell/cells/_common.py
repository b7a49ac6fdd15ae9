"""Pieces the cell factories share: argument checks, initialisers, matmuls with float32 accumulation."""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from memcell.types import Array

Initializer = Callable[[Array, tuple[int, ...], jnp.dtype], Array]


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def check_float_dtype(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError as e:
        raise TypeError(f"{name} must be a floating dtype, got {value!r}") from e
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating dtype, got {dtype}")
    return dtype


def _uniform(bound: float) -> Initializer:
    def init(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _identity(key, shape, dtype):
    del key
    return jnp.eye(shape[0], shape[1], dtype=dtype)


def resolve_init(name: str, value, hidden_size: int) -> Initializer:
    """Turns an initialiser name (or a ``jax.nn.initializers``-style callable) into a callable.

    ``"uniform"`` is PyTorch's default, U(-1/sqrt(h), 1/sqrt(h)); ``"identity"`` is the IRNN
    recurrent init (Le et al. 2015); ``"orthogonal"`` gives every gate block a spectral
    radius of exactly 1, so ``recurrent_scale`` sets it.
    """
    if callable(value):
        return value
    table = {
        "lecun_normal": jax.nn.initializers.lecun_normal(),
        "glorot_uniform": jax.nn.initializers.glorot_uniform(),
        "orthogonal": jax.nn.initializers.orthogonal(),
        "identity": _identity,
        "uniform": _uniform(1.0 / math.sqrt(hidden_size)),
        "zeros": jax.nn.initializers.zeros,
    }
    check_choice(name, value, table)
    return table[value]


def block_matrix(key, init: Initializer, rows: int, hidden: int, n_blocks: int, dtype, scale=1.0):
    """A ``[rows, n_blocks * hidden]`` kernel, each gate block initialised on its own.

    Per-block initialisation keeps orthogonal and identity inits meaningful for each gate,
    rather than for the wide fused matrix.
    """
    keys = jax.random.split(key, n_blocks)
    # Draw in float32 at least: QR (orthogonal init) and friends have no bfloat16 kernels.
    draw_dtype = jnp.promote_types(dtype, jnp.float32)
    blocks = [init(k, (rows, hidden), draw_dtype) for k in keys]
    return (scale * jnp.concatenate(blocks, axis=-1)).astype(dtype)


def accumulation_dtype(*arrays) -> jnp.dtype:
    # bfloat16 and float16 compute accumulates in float32; float64 stays float64.
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def linear(x: Array, w: Array, dtype) -> Array:
    """``x @ w`` computed in ``dtype`` (None: the inputs' dtype) and accumulated in float32 or wider."""
    acc = accumulation_dtype(x, w)
    if dtype is not None:
        x, w = x.astype(dtype), w.astype(dtype)
    return jnp.matmul(x, w, preferred_element_type=acc)


def carry_dtype(w_h: Array) -> jnp.dtype:
    """The carry is float32 even for bfloat16 params (the state accumulates over many steps)."""
    return jnp.promote_types(w_h.dtype, jnp.float32)


def zeros_carry(w_h: Array, batch_shape) -> Array:
    batch_shape = tuple(batch_shape)
    return jnp.zeros(batch_shape + (w_h.shape[0],), carry_dtype(w_h))


def check_input_size(input_size) -> int:
    return check_positive_int("input_size", input_size)
