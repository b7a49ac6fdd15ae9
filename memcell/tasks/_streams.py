"""Long token streams for truncated BPTT: a task's streams (``TokenStreams``), the stateful
sampler that reads them window after window, the window loss that continues the carry, and
the evaluation over the whole validation stream with the carry kept.

The training stream is cut into ``batch_size`` contiguous rows (as in char-rnn); row ``i``
reads its own row window after window. A window never crosses a document start: it ends just
before one (its ``lengths`` entry says how much of it is real, the rest is masked out of the
loss) and the next window begins at the document with a fresh carry. This keeps the restart
exact for every backend: ``memcell.unroll``'s ``resets`` restart from the carry it was given,
which here is the previous window's, and the fused path has no resets at all.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from memcell._sequence import tree_where
from memcell.types import Array

_FAR = np.iinfo(np.int32).max // 2  # a document start past every stream


class TokenStreams(NamedTuple):
    """A task's long streams (``Task.stream``), NumPy arrays.

    Attributes:
      train: int32 ``[n]``: the training tokens, one stream.
      train_starts: int32 ``[k]``: sorted positions in ``train`` where a document begins (0
        left out); empty where the corpus has no document boundaries.
      valid_xs, valid_ys: int32 ``[m]``: the validation stream's inputs and next tokens, the
        same tokens the task's windowed test set scores.
      valid_starts: int32 ``[j]``: positions in ``valid_xs`` where a document begins.
    """

    train: np.ndarray
    train_starts: np.ndarray
    valid_xs: np.ndarray
    valid_ys: np.ndarray
    valid_starts: np.ndarray


def row_size(streams: TokenStreams, batch_size: int, length: int) -> int:
    """Tokens in each of the ``batch_size`` contiguous rows the training stream is cut into."""
    size = len(streams.train) // batch_size
    if size < length + 1:
        raise ValueError(f"batch_size={batch_size} rows of the {len(streams.train)} training tokens hold "
                         f"{size} tokens each, fewer than a window of length={length} needs ({length + 1})")
    return size


def stream_sampler(streams: TokenStreams, batch_size: int, length: int) -> tuple[Callable, Array]:
    """The stateful sampler of truncated BPTT and its first cursor.

    Returns:
      ``(sample, cursor)``: ``sample(key, cursor) -> (batch, cursor)`` (the key is unused: the
      streams are read in order) and the first cursor, int32 ``[batch_size]`` zeros (each row's
      position in its row). A batch holds ``xs``, ``ys`` ``[b, length]``, ``lengths`` ``[b]``
      (shorter before a document start and at a row's end) and ``reset`` ``[b]`` (the window
      starts a document or the row anew: its carry restarts from the initial one).
    """
    size = row_size(streams, batch_size, length)
    # Padded so every slice stays in range; padding is read only past a window's length.
    tokens = jnp.asarray(np.concatenate([streams.train, np.zeros(length + 1, np.int32)]))
    starts = jnp.asarray(np.concatenate([streams.train_starts, [_FAR]]).astype(np.int32))
    base = jnp.arange(batch_size, dtype=jnp.int32) * size

    def sample(key, cursor):
        del key
        at = base + cursor
        nxt = starts[jnp.searchsorted(starts, at, side="right")]  # the next document start after each window's first
        lengths = jnp.minimum(jnp.minimum(length, size - 1 - cursor), nxt - at)
        reset = (cursor == 0) | jnp.isin(at, starts)
        win = jax.vmap(lambda s: jax.lax.dynamic_slice(tokens, (s,), (length + 1,)))(at)
        cursor = cursor + lengths
        cursor = jnp.where(cursor >= size - 1, 0, cursor)  # a row read to its end starts again
        batch = {"xs": win[:, :-1], "ys": win[:, 1:], "lengths": lengths, "reset": reset}
        return batch, cursor

    return sample, jnp.zeros((batch_size,), jnp.int32)


def initial_carry(model, params, batch_size: int, input_size: int):
    """The carry ``model``'s recurrent layers start from (learnt or not), for ``batch_size`` rows."""
    carry, _ = model.layers.apply(params.rnn, jnp.zeros((batch_size, 0, input_size), jnp.float32))
    return carry


def stream_loss_fn(task, model) -> Callable:
    """``loss_fn(params, carry, batch, key) -> (loss, (carry, metrics))`` for
    ``memcell.train.make_stream_train_step``: the window from ``carry`` (the initial carry on
    rows whose ``reset`` is set), its loss over the real steps, and the carry at its end.
    ``metrics`` adds ``tokens``, the real steps of the window."""
    V = task.input_size

    def f(params, carry, batch, key):
        B = batch["xs"].shape[0]
        carry = tree_where(batch["reset"], initial_carry(model, params, B, V), carry)
        xs = jax.nn.one_hot(batch["xs"], V, dtype=jnp.float32)
        carry, ys = model.layers.apply(params.rnn, xs, carry, lengths=batch["lengths"], key=key)
        loss, metrics = task.loss(model.head(params, ys), batch)
        return loss, (carry, {**metrics, "tokens": jnp.sum(batch["lengths"]).astype(jnp.float32)})

    return f


def stream_eval_fn(task, model) -> Callable:
    """``params -> metrics`` over the whole validation stream, read in order with the carry
    kept (restarted only where a document begins): each token is predicted from everything
    before it in its document, unlike the task's windowed test set, whose windows start cold."""
    s = task.stream
    V = task.input_size
    cuts = [0, *(int(j) for j in s.valid_starts), len(s.valid_xs)]
    pieces = [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]
    n = len(s.valid_xs)

    def evaluate(params):
        total = None
        for lo, hi in pieces:  # one unroll a document, from the initial carry
            xs = jax.nn.one_hot(jnp.asarray(s.valid_xs[None, lo:hi]), V, dtype=jnp.float32)
            _, ys = model.layers.apply(params.rnn, xs)
            loss, m = task.loss(model.head(params, ys), {"ys": jnp.asarray(s.valid_ys[None, lo:hi])})
            m = {k: v * (hi - lo) / n for k, v in {"loss": loss, **m}.items()}
            total = m if total is None else {k: total[k] + m[k] for k in total}
        return total

    return evaluate
