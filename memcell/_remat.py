"""Blocked rematerialisation over time, shared by the reference and the fused unroll.

``blocked_scan`` cuts T steps into ``n = T // k`` blocks of k steps plus a tail of ``T % k``; an
outer ``jax.lax.scan`` runs the blocks, each under ``jax.checkpoint``. The backward pass then keeps
the carry at each block boundary (n carries) and recomputes one block's activations at a time:
with k = sqrt(T), memory ~ 2 sqrt(T) steps' worth instead of T (Chen et al. 2016, "Training deep
nets with sublinear memory cost"), for one more forward pass.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from memcell.types import PyTree


def _take(inputs: PyTree, start, size: int, axis: int) -> PyTree:
    """Steps ``[start, start + size)`` of every leaf (time on ``axis``); None leaves stay None."""
    return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, axis % a.ndim), inputs)


def blocked_scan(block: Callable, carry: PyTree, inputs: PyTree, T: int, k: int, *, axis: int = 0,
                 reverse: bool = False) -> tuple[PyTree, PyTree]:
    """Runs ``block(carry, inputs_block) -> (carry, ys_block)`` over T steps in checkpointed blocks of k.

    Args:
      block: runs the steps of one block (any number of them) in order (``reverse``: backwards).
      carry: the initial carry.
      inputs: a pytree of arrays with time on ``axis`` (T long); None leaves pass through.
      T: the number of steps.
      k: steps a block, 1 <= k <= T; a tail of ``T % k`` steps runs as one more (shorter) block.
      axis: the time axis of the inputs and of the outputs ``block`` returns (negative: from the end).
      reverse: run the blocks from the last to the first (the tail first), as ``block`` runs its steps.

    Returns:
      ``(carry, ys)``: the last carry and the outputs of all blocks, time on ``axis``, in input order.
    """
    n, r = divmod(T, k)
    # Inside the scan the blocks can share nothing with each other, so CSE needs no guarding there.
    inner = jax.checkpoint(lambda c, j: block(c, _take(inputs, j * k, k, axis)), prevent_cse=False)
    tail = jax.checkpoint(lambda c: block(c, _take(inputs, n * k, r, axis)))

    def merge(y):  # [n, *s] with k steps on s's time axis -> s with n k steps there
        s, a = y.shape[1:], axis % (y.ndim - 1)
        return jnp.moveaxis(y, 0, a).reshape(s[:a] + (n * k,) + s[a + 1:])

    if r and reverse:
        carry, ys_tail = tail(carry)
    carry, ys = jax.lax.scan(inner, carry, jnp.arange(n), reverse=reverse)
    ys = jax.tree.map(merge, ys)
    if r and not reverse:
        carry, ys_tail = tail(carry)
    if r:
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis), ys, ys_tail)
    return carry, ys
