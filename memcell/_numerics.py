"""Numerics shared by the cells and the fast paths: matmuls with float32 accumulation, carry dtypes."""

import jax.numpy as jnp

from memcell.types import Array


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
