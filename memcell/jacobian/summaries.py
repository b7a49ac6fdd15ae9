"""Summaries of gradient flow: the largest Lyapunov exponent and the decay rate per step."""


import jax
import jax.numpy as jnp
import numpy as np

from memcell.jacobian._common import (
    as_array,
    check_bool,
    over_batch,
    prepare,
    real_view,
)
from memcell.types import Array, Cell, Key, PyTree, Sequence

# ----------------------------------------------------------------------------- summaries


def lyapunov_exponent(
    cell: Cell,
    params: PyTree,
    xs: Sequence,
    *,
    carry: PyTree | None = None,
    key: Key | None = None,
    transient: int = 0,
) -> Array:
    """The largest Lyapunov exponent of the carry dynamics along the trajectory of ``xs``.

    A tangent vector ``v`` of the whole carry is pushed forward by ``v <- J_t v / ||J_t v||``
    (one jvp a step, Benettin's method) and the exponent is the mean of ``log ||J_t v||`` over
    steps ``transient .. T-1``: the growth rate per step (natural log) of the fastest-growing
    perturbation. Negative: the cell forgets its past at that rate; positive: it is chaotic
    and its gradients explode. For long sequences it is the rate at which the largest singular
    value of the Jacobian products grows with the lag.

    Args:
      cell, params, xs, carry: as for ``gradient_norms_through_time``.
      key: random key of the initial tangent vector (default ``jax.random.key(0)``).
      transient: steps left out of the mean while ``v`` aligns with the top direction.

    Returns:
      ``[*b]``: the exponent in nats per step.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> from memcell.jacobian import lyapunov_exponent
      >>> cell = memcell.rnn(32, recurrent_scale=0.5)
      >>> params = cell.init(jax.random.key(0), input_size=1)
      >>> bool(lyapunov_exponent(cell, params, jnp.zeros((100, 1))) < 0)
      True
    """
    xs, batch_shape, carry0 = prepare(cell, params, xs, carry)
    cell, carry0 = real_view(cell, params, carry0)
    T = xs.shape[-2]
    if isinstance(transient, (bool, np.bool_)) or not isinstance(transient, (int, np.integer)):
        raise TypeError(f"transient must be an int, got {transient!r}")
    if not 0 <= transient < T:
        raise ValueError(f"transient must lie in [0, T-1={T - 1}] (T = xs.shape[-2]), got {transient}")
    key = jax.random.key(0) if key is None else key

    def one(xs_, c0):
        leaves, treedef = jax.tree.flatten(c0)
        keys = jax.random.split(key, len(leaves))
        v = [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)]
        v = jax.tree.unflatten(treedef, v)
        v = jax.tree.map(lambda a: a / _tree_norm(v).astype(a.dtype), v)

        def body(state, x):
            c, v = state
            new, dv = jax.jvp(lambda c_: cell.step(params, c_, x)[0], (c,), (v,))
            r = _tree_norm(dv)
            safe = jnp.where(r > 0, r, jnp.ones_like(r))
            return (new, jax.tree.map(lambda a: a / safe.astype(a.dtype), dv)), jnp.log(r)

        logs = jax.lax.scan(body, (c0, v), xs_)[1]
        return jnp.mean(logs[transient:])

    return over_batch(one, batch_shape, xs, carry0)


def _tree_norm(tree: PyTree) -> Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(a.astype(jnp.promote_types(a.dtype, jnp.float32)))) for a in jax.tree.leaves(tree)))


def decay_rate(norms: Array, *, log: bool = False, start: int = 1, stop: int | None = None) -> Array:
    """The fitted exponential rate per step: the least-squares slope of ``log(norm)`` vs lag.

    ``norm_k ~ C exp(rate * k)``: a negative rate vanishes (``exp(rate)`` is the factor lost per
    step; ``-1 / rate`` the memory in steps), a positive one explodes. Non-finite log-norms
    (norms that underflowed to 0) are left out of the fit, so pass ``log=True`` values where
    you have them.

    Args:
      norms: ``[*b, T]`` norms by lag, as ``gradient_norms_through_time`` returns them.
      log: ``norms`` already holds natural logs.
      start, stop: the lags ``start <= k < stop`` fitted (default from 1, leaving out the
        identity at lag 0, to the end).

    Returns:
      ``[*b]``: the slope in nats per step; NaN where fewer than two finite points remain.

    Example:
      >>> import jax.numpy as jnp
      >>> from memcell.jacobian import decay_rate
      >>> round(float(decay_rate(0.9 ** jnp.arange(50.0))), 4) == round(float(jnp.log(0.9)), 4)
      True
    """
    check_bool("log", log)
    norms = as_array(norms)
    if not jnp.issubdtype(norms.dtype, jnp.floating):
        raise TypeError(f"norms must be a floating-point array, got dtype {norms.dtype}")
    if norms.ndim < 1:
        raise ValueError(f"norms must have shape [..., T], got shape {tuple(norms.shape)}")
    T = norms.shape[-1]
    stop = T if stop is None else stop
    for name, v in (("start", start), ("stop", stop)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {v!r}")
    if not 0 <= start < stop <= T or stop - start < 2:
        raise ValueError(f"start and stop must satisfy 0 <= start, start + 2 <= stop <= T={T}, got {start} and {stop}")
    y = jnp.asarray(norms)[..., start:stop]
    y = y if log else jnp.log(y)
    y = y.astype(jnp.promote_types(y.dtype, jnp.float32))
    k = jnp.arange(start, stop, dtype=y.dtype)
    w = jnp.isfinite(y).astype(y.dtype)
    y = jnp.where(w > 0, y, 0)
    n = w.sum(-1)
    k_mean = (w * k).sum(-1) / n
    y_mean = (w * y).sum(-1) / n
    dk = k - k_mean[..., None]
    cov = (w * dk * (y - y_mean[..., None])).sum(-1)
    var = (w * dk * dk).sum(-1)
    return jnp.where(n >= 2, cov / jnp.where(var > 0, var, 1), jnp.nan)


