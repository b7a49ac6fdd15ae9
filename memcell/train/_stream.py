"""Truncated backpropagation through time over long streams: the stream state a ``TrainState``
carries from window to window, and the train step that reads and writes it.

Each batch row reads its own contiguous stream, window after window. The sampler keeps its
place in the streams (the ``cursor``, e.g. one position a row); the model's carry at the end of
a window is the initial carry of the next, held as data, so the gradient stops at the window
boundary. Both live in ``TrainState.stream``, so jit, vmap over seeds and checkpoints handle
them like any other leaf, and a resumed run continues the same streams with the same carries.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import numpy as np
import optax

from memcell._checks import as_array
from memcell.train._args import check_callable, check_transformation
from memcell.train._state import TrainState, step_keys
from memcell.train._steps import apply_gradients
from memcell.types import Array, PyTree

# loss_fn(params, carry, batch, key) -> (loss, (carry, metrics))
StreamLossFn = Callable[..., tuple[Array, tuple[PyTree, dict]]]


class StreamState(NamedTuple):
    """Where a stateful run stands in its streams (``TrainState.stream``).

    With N models trained together every leaf has a leading axis of size N.
    """

    cursor: PyTree  # the sampler's place in its streams, e.g. int32 [b]: each row's next position
    carry: PyTree  # the model's carry after the last window, leaves [b, ...]


def _checked(loss_fn: StreamLossFn) -> StreamLossFn:
    """``loss_fn`` with its output checked while it is traced, so a wrong form is named here
    rather than inside ``jax.grad``."""

    def f(params, carry, batch, key):
        out = loss_fn(params, carry, batch, key)
        ok = isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple) and len(out[1]) == 2
        if not (ok and isinstance(out[1][1], Mapping)):
            raise TypeError("loss_fn must return (loss, (carry, metrics)) with metrics a dict, "
                            f"got {type(out).__name__} {jax.tree.structure(out)}")
        loss = as_array(out[0])
        if tuple(loss.shape) != () or not jax.numpy.issubdtype(loss.dtype, jax.numpy.floating):
            raise ValueError(f"loss_fn must return a floating scalar loss, got shape {tuple(loss.shape)} "
                             f"dtype {loss.dtype}")
        if jax.tree.structure(out[1][0]) != jax.tree.structure(carry):
            raise ValueError(f"loss_fn must return a carry of the structure it was given "
                             f"{jax.tree.structure(carry)}, got {jax.tree.structure(out[1][0])}")
        return out

    return f


def make_stream_train_step(loss_fn: StreamLossFn, tx: optax.GradientTransformation) -> Callable:
    """A pure, jit-able train step ``(state, batch) -> (state, metrics)`` for truncated BPTT.

    The window starts from ``state.stream.carry`` and the carry ``loss_fn`` returns is written
    back (through ``jax.lax.stop_gradient``), so the next window continues it while no gradient
    crosses the boundary. ``fit`` runs it with a stateful sampler
    ``sample(key, cursor) -> (batch, cursor)`` when ``state.stream`` is a ``StreamState``.

    Args:
      loss_fn: ``loss_fn(params, carry, batch, key) -> (loss, (carry, metrics))``: the window's
        loss from initial carry ``carry`` and the carry at its end. Restarting the carry where
        a stream begins anew (a new document, a wrap-around) is the loss function's business,
        from flags in ``batch``.
      tx: the optax optimizer, as for ``make_train_step``.

    Returns:
      ``train_step(state, batch) -> (state, metrics)``; ``state.stream`` must be a
      ``StreamState``. Metrics as for ``make_train_step``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from memcell import train
      >>> def loss_fn(w, carry, xs, key):            # a running sum as the "carry"
      ...     carry = carry + jnp.sum(xs)
      ...     return (w - carry) ** 2, (carry, {})
      >>> tx = train.optimizer(0.1)
      >>> state = train.init_state(0, lambda k: jnp.zeros(()), tx)
      >>> state = state._replace(stream=train.StreamState(cursor=jnp.zeros((), jnp.int32), carry=jnp.zeros(())))
      >>> step = jax.jit(train.make_stream_train_step(loss_fn, tx))
      >>> state, _ = step(state, jnp.ones(3))
      >>> state, _ = step(state, jnp.ones(3))
      >>> float(state.stream.carry), int(state.step)
      (6.0, 2)
    """
    check_callable("loss_fn", loss_fn, "(params, carry, batch, key) -> (loss, (carry, metrics))")
    check_transformation("tx", tx)
    checked_loss = _checked(loss_fn)

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        if not isinstance(state.stream, StreamState):
            raise TypeError("a stream train step needs state.stream to be a memcell.train.StreamState, "
                            f"got {type(state.stream).__name__}")
        _, loss_key = step_keys(state)
        grad_fn = jax.value_and_grad(checked_loss, has_aux=True)
        (loss, (carry, aux)), grads = grad_fn(state.params, state.stream.carry, batch, loss_key)
        state, metrics = apply_gradients(tx, state, loss, aux, grads)
        stream = state.stream._replace(carry=jax.lax.stop_gradient(carry))
        return state._replace(stream=stream), metrics

    return train_step


def sample_stream(sample: Callable, state: TrainState, data_key) -> tuple[TrainState, PyTree]:
    """The next batch of a stateful sampler, and ``state`` with the sampler's cursor advanced."""
    batch, cursor = sample(data_key, state.stream.cursor)
    return state._replace(stream=state.stream._replace(cursor=cursor)), batch


def sampled_batch(sample: Callable, state: TrainState, n_models: int | None) -> PyTree:
    """The shapes of a batch ``sample`` draws for ``state`` (``jax.eval_shape``, nothing runs):
    ``sample(key)``'s, or for a state holding a ``StreamState``, ``sample(key, cursor)``'s batch,
    checked to come with a cursor like the one it was given. ``fit`` calls it before anything
    compiles, so a sampler of the wrong kind is named here, not deep inside the jit."""
    key = jax.random.key(0)
    if state.stream is None:
        try:
            return jax.eval_shape(sample, key)
        except TypeError as e:
            raise TypeError(f"sample must be sample(key) -> batch for a state without a stream (state.stream is None); "
                            f"calling it with a key failed: {e}") from None
    per_model = (lambda s: s[1:]) if n_models is not None else (lambda s: s)
    cursor = jax.tree.map(lambda x: jax.ShapeDtypeStruct(per_model(np.shape(x)), jax.numpy.result_type(x)),
                          state.stream.cursor)
    try:
        out = jax.eval_shape(sample, key, cursor)
    except TypeError as e:
        raise TypeError("sample must be sample(key, cursor) -> (batch, cursor) for a state holding a StreamState "
                        f"(truncated BPTT); calling it with (key, cursor) failed: {e}") from None
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("sample(key, cursor) must return (batch, cursor) for a state holding a StreamState, got "
                        f"{type(out).__name__} {jax.tree.structure(out)}")
    form = lambda tree: jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)
    if form(out[1]) != form(cursor):
        raise ValueError(f"sample(key, cursor) must return a cursor of the form it was given {form(cursor)}, "
                         f"got {form(out[1])}")
    return out[0]
