"""Sequence helpers shared by the reference and the fused unroll: masks, reversal within lengths."""

import jax
import jax.numpy as jnp

from memcell.types import Array, PyTree


def tree_where(mask: Array, a: PyTree, b: PyTree) -> PyTree:
    """``where(mask, a, b)`` leaf by leaf; ``mask: [*b]`` broadcasts over each leaf's trailing axes."""

    def pick(x, y):
        m = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
        return jnp.where(m, x, y)

    return jax.tree.map(pick, a, b)


def reverse_within(x: Array, lengths: Array, axis: int) -> Array:
    """Reverses each sequence's first ``length`` steps along ``axis`` (-1 or -2); padding stays at the end.

    The permutation is its own inverse, so the same call maps the outputs back.
    """
    T = x.shape[axis]
    t = jnp.arange(T)
    idx = jnp.where(t < lengths[..., None], lengths[..., None] - 1 - t, t)  # [*b, T]
    if axis == -2:
        idx = idx[..., None]
    return jnp.take_along_axis(x, idx, axis=axis)


def segment_ends(resets: Array) -> Array:
    """Read backwards, a segment starts where the next one begins: step t ends a segment if t + 1 resets."""
    return jnp.concatenate([resets[..., 1:], jnp.zeros_like(resets[..., :1])], axis=-1)


def flat_batch_size(batch_shape: tuple) -> int:
    """The number of sequences in ``batch_shape`` (1 for one unbatched sequence)."""
    n = 1
    for d in batch_shape:
        n *= int(d)
    return n
