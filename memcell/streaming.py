"""Streaming: run a cell, a layer or a stack of layers one step (or one chunk) at a time.

``memcell.stream(layer, input_size)`` gives ``Stream(init_carry, step, feed)``: the carry is
what ``Layer.apply`` returns, so feeding a sequence in pieces, each continuing from the carry
the previous one left, gives the outputs of unrolling it at once. This is what generation needs
(``memcell.tasks.sample_text``): the next input is only known after the current output.

Bidirectional layers are refused: their backward direction reads each sequence from its end,
which a stream has not seen yet.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from memcell._checks import check_positive_int
from memcell.scan import layer as as_layer
from memcell.types import DirectionPair
from memcell.types import Array, Cell, Layer, PyTree

__all__ = ["Stream", "stream"]


class Stream(NamedTuple):
    """A layer run step by step: three pure functions.

    Attributes:
      init_carry: ``init_carry(params, batch_shape=()) -> carry``, the layer's initial carry
        (its learnt one, for ``learn_initial_carry=True``), with leading ``batch_shape``.
      step: ``step(params, carry, x) -> (carry, y)`` for one step, ``x: [*b, d]``, ``y: [*b, h]``.
      feed: ``feed(params, carry, xs) -> (carry, ys)`` for a chunk of steps, ``xs: [*b, t, d]``.
    """

    init_carry: Callable[..., PyTree]
    step: Callable[..., tuple[PyTree, Array]]
    feed: Callable[..., tuple[PyTree, Array]]


def _check_one_direction(carry) -> None:
    """Refuses a carry holding a ``DirectionPair``: the layer (or a layer of the stack) is bidirectional."""
    is_pair = lambda x: isinstance(x, DirectionPair)
    parts = carry if isinstance(carry, tuple) and not hasattr(carry, "_fields") else (carry,)
    for i, part in enumerate(parts):
        if any(is_pair(x) for x in jax.tree.leaves(part, is_leaf=is_pair)):
            where = "the layer" if len(parts) == 1 and parts[0] is carry else f"layer {i} of the stack"
            raise ValueError(
                f"memcell.stream cannot run a bidirectional layer ({where} is one): its backward direction "
                "reads each sequence from its end, which a stream has not seen yet"
            )


def stream(layer: Cell | Layer, input_size: int) -> Stream:
    """Runs ``layer`` step by step (or chunk by chunk), carrying its carry between calls.

    Feeding ``xs[..., :t1, :]``, then ``xs[..., t1:t2, :]`` and so on, each from the carry the
    previous call returned, gives the outputs and final carry of ``layer.apply(params, xs)`` at
    once. The stream runs in evaluation mode (no ``key``: no dropout).

    Args:
      layer: a ``Cell`` (lifted with ``memcell.layer``) or a one-directional ``Layer``
        (``memcell.layer``, ``memcell.stack`` of them).
      input_size: features of the inputs ``d``.

    Returns:
      A ``Stream(init_carry, step, feed)``. ``init_carry`` raises a ``ValueError`` for a
      bidirectional layer (or a stack holding one).

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> model = memcell.stack([memcell.lstm(8), memcell.gru(8)])
      >>> params = model.init(jax.random.key(0), 3)
      >>> s = memcell.stream(model, input_size=3)
      >>> carry = s.init_carry(params, batch_shape=(2,))
      >>> xs = jax.random.normal(jax.random.key(1), (2, 6, 3))
      >>> carry, ys_a = s.feed(params, carry, xs[:, :4])       # a chunk of 4 steps
      >>> carry, y5 = s.step(params, carry, xs[:, 4])          # then one step at a time
      >>> carry, y6 = s.step(params, carry, xs[:, 5])
      >>> _, ys = model.apply(params, xs)                      # all at once
      >>> bool(jnp.allclose(jnp.concatenate([ys_a, y5[:, None], y6[:, None]], 1), ys, atol=1e-6))
      True
    """
    if isinstance(layer, Cell):
        layer = as_layer(layer)
    if not isinstance(layer, Layer):
        raise TypeError(f"layer must be a memcell.Cell or memcell.Layer, got {type(layer).__name__}")
    input_size = check_positive_int("input_size", input_size)

    def init_carry(params, batch_shape=()) -> PyTree:
        try:
            batch_shape = tuple(int(b) for b in batch_shape)
        except TypeError:
            raise TypeError(f"batch_shape must be a tuple of ints, got {batch_shape!r}") from None
        # No steps: the carry the layer starts from, learnt or not, broadcast to the batch.
        carry, _ = layer.apply(params, jnp.zeros(batch_shape + (0, input_size), jnp.float32))
        _check_one_direction(carry)
        return carry

    def feed(params, carry, xs) -> tuple[PyTree, Array]:
        _check_one_direction(carry)
        xs = jnp.asarray(xs)
        if xs.ndim < 2 or xs.shape[-1] != input_size:
            raise ValueError(f"xs must have shape [*b, t, {input_size}] (a chunk of steps), got {tuple(xs.shape)}")
        return layer.apply(params, xs, carry)

    def step(params, carry, x) -> tuple[PyTree, Array]:
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[-1] != input_size:
            raise ValueError(f"x must have shape [*b, {input_size}] (one step), got {tuple(x.shape)}")
        carry, ys = feed(params, carry, x[..., None, :])
        return carry, ys[..., 0, :]

    return Stream(init_carry, step, feed)
