"""Pieces the cell factories share: initialisers, and (re-exported) argument checks and float32-accumulating matmuls."""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from memcell._checks import check_bool, check_choice, check_float_dtype, check_positive_int
from memcell._numerics import accumulation_dtype, carry_dtype, linear, zeros_carry
from memcell.types import Array

__all__ = [  # the checks and numerics are re-exported so that each cell module reads ``c.<name>``
    "Initializer", "accumulation_dtype", "bias_blocks", "block_matrix", "carry_dtype", "check_bool", "check_choice",
    "check_float_dtype", "check_input_size", "check_positive_int", "linear", "resolve_fn", "resolve_init",
    "zeros_carry",
]

Initializer = Callable[[Array, tuple[int, ...], jnp.dtype], Array]


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


def bias_blocks(key, init: Initializer | None, hidden: int, n_blocks: int, dtype, drawn=None) -> Array:
    """A ``[n_blocks * hidden]`` bias: zeros, or each block drawn by ``init`` (a Flax ``bias_init``,
    called once a gate block as on Flax's per-gate layers; ``drawn[k]`` False keeps block ``k`` at zero)."""
    if init is None:
        return jnp.zeros((n_blocks * hidden,), dtype)
    # fold_in: the kernels' keys, hence the params of a cell without bias_init, stay as they were.
    keys = jax.random.split(jax.random.fold_in(key, 2), n_blocks)
    drawn = (True,) * n_blocks if drawn is None else drawn
    return jnp.concatenate([init(k, (hidden,), dtype) if on else jnp.zeros((hidden,), dtype)
                            for k, on in zip(keys, drawn)]).astype(dtype)


def resolve_fn(name: str, value, table: dict) -> tuple[Callable, str | None]:
    """``(function, its name in table)`` for a name in ``table`` or a callable (Flax's ``gate_fn``,
    ``activation_fn``); a callable that is not one of the table's functions has no name (None)."""
    if callable(value):
        return value, next((k for k, f in table.items() if f is value), None)
    check_choice(name, value, table)
    return table[value], value


def check_input_size(input_size) -> int:
    return check_positive_int("input_size", input_size)
