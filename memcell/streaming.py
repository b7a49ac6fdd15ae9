"""Streaming: run a cell, a layer or a stack of layers one step (or one chunk) at a time.

``memcell.stream(layer, input_size)`` gives ``Stream(init_carry, step, feed)``: the carry is
what ``Layer.apply`` returns, so feeding a sequence in pieces, each continuing from the carry
the previous one left, gives the outputs of unrolling it at once. This is what generation needs
(``memcell.tasks.sample_text``): the next input is only known after the current output.

Bidirectional and reverse layers (``memcell.layer(cell, reverse=True)``, or a stack holding
either) are refused: they read each sequence from its end, which a stream has not seen yet.
The layers memcell makes say so in their ``Layer.spec``. A user's layer has no spec, and a reverse
layer's carry looks like a forward one's, so ``stream`` finds it by what defines a stream: once,
when it is made, it feeds the layer (with params of its own) two steps at once and one at a time,
and a layer whose carries differ is refused, naming it.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from memcell._checks import check_positive_int
from memcell.scan import layer as as_layer
from memcell.types import Array, BidirectionalSpec, Cell, CellLayerSpec, DirectionPair, Layer, PyTree, StackSpec

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


def _bidirectional(where: str) -> ValueError:
    return ValueError(f"memcell.stream cannot run a bidirectional layer ({where} is one): its backward direction "
                      "reads each sequence from its end, which a stream has not seen yet")


def _reverse(where: str, how: str) -> ValueError:
    return ValueError(f"memcell.stream cannot run a reverse layer ({where} reads its sequence backwards{how}): it "
                      "starts from each sequence's end, which a stream has not seen yet")


def _check_one_direction(carry) -> None:
    """Refuses a carry holding a ``DirectionPair``: the layer (or a layer of the stack) is bidirectional."""
    is_pair = lambda x: isinstance(x, DirectionPair)
    parts = _parts(carry)
    for i, part in enumerate(parts):
        if any(is_pair(x) for x in jax.tree.leaves(part, is_leaf=is_pair)):
            raise _bidirectional("the layer" if len(parts) == 1 and parts[0] is carry else f"layer {i} of the stack")


def _parts(carry) -> tuple:
    """The carry of each layer of a stack (a plain tuple), or the carry itself as the one part."""
    return carry if isinstance(carry, tuple) and not hasattr(carry, "_fields") else (carry,)


def _check_spec(layer: Layer, where: str = "the layer") -> bool:
    """Refuses a bidirectional or reverse layer its ``Layer.spec`` declares (a stack's layers each in
    turn); False where a layer (or one of a stack's) has no spec describing it, to be probed."""
    spec = layer.spec
    if spec is None or not spec.describes(layer):
        return False
    if isinstance(spec, StackSpec):
        return all(_check_spec(sub, f"layer {i} of the stack") for i, sub in enumerate(spec.layers))
    if isinstance(spec, BidirectionalSpec):
        raise _bidirectional(where)
    if isinstance(spec, CellLayerSpec):
        if spec.reverse:
            raise _reverse(where, ": memcell.layer(cell, reverse=True)")
        return True
    return False


@functools.lru_cache(maxsize=64)  # a model sampled from again and again is checked once
def _check_forward(layer: Layer, input_size: int) -> None:
    """Refuses a layer that reads its sequence backwards: two steps fed at once must leave the
    carry that feeding them one at a time leaves, layer by layer (the first that differs is named)."""
    with jax.ensure_compile_time_eval():  # concrete even where stream() is called under a trace
        params = layer.init(jax.random.key(0), input_size)
        xs = jax.random.normal(jax.random.key(1), (2, 2, input_size), jnp.float32)

    def probe(params):
        start, _ = layer.apply(params, xs[:, :0])
        whole, _ = layer.apply(params, xs, start)
        split, _ = layer.apply(params, xs[:, 1:], layer.apply(params, xs[:, :1], start)[0])
        return start, whole, split

    # Compiled once and called directly (one compilation, not one an operation; concrete values).
    start, whole, split = jax.jit(probe).lower(params).compile()(params)
    _check_one_direction(start)
    parts_w, parts_s = _parts(whole), _parts(split)
    for i, (w, s) in enumerate(zip(parts_w, parts_s)):
        far = any(not np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(s)))
        if far:
            where = "the layer" if len(parts_w) == 1 and parts_w[0] is whole else f"layer {i} of the stack"
            raise _reverse(where, ", e.g. memcell.layer(cell, reverse=True): feeding two steps at once and one "
                                  "at a time leaves it different carries")


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
      A ``Stream(init_carry, step, feed)``.

    Raises:
      ValueError: for a bidirectional or reverse layer, or a stack holding one (checked here,
        once, on params ``layer.init`` makes; ``init_carry`` and ``feed`` refuse a carry
        holding a bidirectional layer's ``DirectionPair`` too).

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
    if not _check_spec(layer):  # a user's layer (no spec): found by what it does
        try:
            hash(layer)
        except TypeError:  # a layer of unhashable callables: checked every time
            _check_forward.__wrapped__(layer, input_size)
        else:
            _check_forward(layer, input_size)

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
