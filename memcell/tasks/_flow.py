"""How much of a task's loss gradient reaches each step before the readout: ``gradient_norms_by_lag``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from memcell.tasks._base import Model, Task, features
from memcell.types import Array, PyTree

WRT = ("hidden", "input")


def _lag_index(lengths: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """For sequences of ``lengths``: the step ``t = length - 1 - k`` of each lag ``k`` and which
    sequences reach it, for the lags ``k < median length`` (reached by at least half of them)."""
    k = np.arange(int(np.median(lengths)))
    steps = lengths[:, None] - 1 - k[None, :]  # [n, K]
    return np.clip(steps, 0, T - 1), steps >= 0


def _last_output_only(outputs: Array, lengths) -> Array:
    """``outputs [n, T, o]`` with the gradient stopped at every step but each sequence's last one:
    the loss's gradient is then that of the last output's loss term alone (values unchanged)."""
    T = outputs.shape[-2]
    last = jnp.full(outputs.shape[:-2], T - 1) if lengths is None else jnp.asarray(lengths) - 1
    keep = (jnp.arange(T) == last[..., None])[..., None]
    return jnp.where(keep, outputs, jax.lax.stop_gradient(outputs))


def gradient_norms_by_lag(task: Task, model: Model, params: PyTree, *, n: int = 64, wrt: str = "hidden",
                          last_output_only: bool = False) -> Array:
    """The loss gradient's norm at each lag before a sequence's last step, on ``task``'s test set.

    With ``L`` the task's own loss (``task.loss``) on the first ``n`` test sequences and ``t_i``
    the last real step of sequence ``i``, index ``k`` holds the mean over sequences of
    ``||dL / dh_{t_i - k}||`` (``wrt="hidden"``: the cell's hidden part, through
    ``memcell.jacobian.loss_gradient_norms``) or of ``||dL / dx_{t_i - k}||`` (``wrt="input"``:
    the model's input vectors, one-hot for token tasks; any model). For a task with one
    readout (``task.readout == "last"``) lag ``k`` is ``k`` steps before the readout; with
    one output a step (``"all"``: char_lm, copy) the gradient at lag ``k`` sums the losses of
    the ``k + 1`` last steps, unless ``last_output_only``: then it is the gradient of the last
    output's loss alone, ``k`` steps before that output, as for a single readout. ``jax.vmap`` it
    over stacked params to get one row a seed.

    Args:
      task: the task whose test sequences (``task.test``) and loss are used.
      model: a ``sequence_model`` for it; ``wrt="hidden"`` needs one built from a single ``Cell``.
      params: the model's params (``model.init``'s structure).
      n: test sequences used (the first ``n``; fewer if the test set is smaller).
      wrt: ``"hidden"`` or ``"input"``.
      last_output_only: differentiate only the loss of each sequence's last output (for tasks
        with one output a step; a single readout has nothing else). The loss must be a sum or a
        mean of per-step terms (every task's is).

    Returns:
      ``[K]`` norms by lag ``k = 0 .. K-1``, with ``K`` the median length of the ``n``
      sequences (the length for fixed-length tasks); each lag is averaged over the sequences
      long enough to reach it. In float32 a norm that underflows is 0.

    Example:
      >>> import jax, memcell
      >>> from memcell import tasks
      >>> task = tasks.adding(12, n_test=16)
      >>> model = tasks.sequence_model(memcell.rnn(8), task.output_size, task.readout)
      >>> params = model.init(jax.random.key(0), task.input_size)
      >>> g = jax.jit(lambda p: tasks.gradient_norms_by_lag(task, model, p))(params)
      >>> g.shape, bool(g[10] < g[1])     # a tanh RNN at init: the gradient fades with the lag
      ((12,), True)
    """
    if wrt not in WRT:
        raise ValueError(f"wrt must be one of {list(WRT)}, got {wrt!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(last_output_only, bool):
        raise TypeError(f"last_output_only must be a bool, got {type(last_output_only).__name__}")
    if wrt == "hidden" and model.cell is None:
        raise ValueError("wrt='hidden' needs a sequence_model built from a single Cell (a stack or a Layer has no "
                         "single hidden state); use wrt='input'")
    batch = jax.tree.map(lambda x: jnp.asarray(x[:n]), task.test)
    xs = features(task, batch["xs"])
    lengths = batch.get("lengths")
    n_seq, T = int(xs.shape[0]), int(xs.shape[1])
    host_lengths = np.full(n_seq, T) if lengths is None else np.asarray(task.test["lengths"][:n])
    steps, reach = _lag_index(host_lengths.astype(np.int64), T)

    only = _last_output_only if last_output_only and model.readout == "all" else (lambda out, _: out)
    if wrt == "hidden":
        from memcell.jacobian import loss_gradient_norms  # the jacobian module sits beside training

        loss_of_ys = lambda ys: task.loss(only(model.head(params, ys, lengths), lengths), batch)[0]
        g = loss_gradient_norms(model.cell, params.rnn, xs, loss_of_ys)  # [n, T]
    else:
        loss_of_xs = lambda x: task.loss(only(model.apply(params, x, lengths=lengths), lengths), batch)[0]
        dx = jax.grad(loss_of_xs)(xs)
        g = jnp.sqrt(jnp.sum(jnp.square(dx.astype(jnp.float32)), axis=-1))  # [n, T]
    by_lag = jnp.take_along_axis(g, jnp.asarray(steps), axis=1)  # [n, K]
    w = jnp.asarray(reach, g.dtype)
    return (by_lag * w).sum(0) / jnp.maximum(w.sum(0), 1)
