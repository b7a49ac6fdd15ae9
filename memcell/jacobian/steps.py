"""Step Jacobians d c_t / d c_{t-1} and the norms of their products."""


import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from memcell.jacobian._common import (
    as_array,
    check_bool,
    check_norm,
    log_norm,
    over_batch,
    prepare,
    real_view,
    trajectory,
)
from memcell.types import Array, Cell, PyTree, Sequence

# ----------------------------------------------------------------------------- step Jacobians


def state_jacobians(
    cell: Cell, params: PyTree, xs: Sequence, *, carry: PyTree | None = None, flat: bool = False
) -> PyTree:
    """The step Jacobians ``J_t = d c_t / d c_{t-1}`` along the trajectory of ``xs``.

    Args:
      cell, params, xs, carry: as for ``gradient_norms_through_time``.
      flat: return the Jacobian of the raveled carry (``jax.flatten_util.ravel_pytree`` order)
        as one ``[*b, T, n, n]`` array instead of blocks.

    Returns:
      Blocks, nested as ``jax.jacfwd`` nests them: a pytree of the carry's structure (the
      output part) whose entries are pytrees of the carry's structure (the input part), each
      leaf ``[*b, T, *out_shape, *in_shape]``. For the LSTM, ``jac.c.c[..., t, :, :]`` is the
      memory-cell path ``d c_t / d c_{t-1}`` alone (``diag(f_t)`` without peepholes) and
      ``jac.h.h`` the hidden-to-hidden block. A complex carry leaf is seen as its real and
      imaginary parts (see the module doc): its blocks have a trailing axis of 2 on each side.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> from memcell.jacobian import state_jacobians
      >>> cell = memcell.lstm(4, forget_bias=1.0)
      >>> params = cell.init(jax.random.key(0), input_size=2)
      >>> jac = state_jacobians(cell, params, jnp.ones((10, 2)))
      >>> jac.c.c.shape, jac.h.c.shape
      ((10, 4, 4), (10, 4, 4))
    """
    check_bool("flat", flat)
    xs, batch_shape, carry0 = prepare(cell, params, xs, carry)
    cell, carry0 = real_view(cell, params, carry0)

    def one(xs_, c0):
        prev = trajectory(cell, params, xs_, c0)

        def jac(c_prev, x):
            if flat:
                v, unravel = ravel_pytree(c_prev)
                f = lambda v_: ravel_pytree(cell.step(params, unravel(v_), x)[0])[0]
                return jax.jacfwd(f)(v)
            return jax.jacfwd(lambda c: cell.step(params, c, x)[0])(c_prev)

        return jax.lax.map(lambda a: jac(*a), (prev, xs_))

    return over_batch(one, batch_shape, xs, carry0)


def product_norms(jacobians: Array, *, norm: str = "spectral", log: bool = False) -> Array:
    """Norms of the backward products ``J_{T-1} ... J_{T-k}`` of a stack of step Jacobians.

    Lag ``k`` matches ``gradient_norms_through_time``: index 0 is the identity and index ``k``
    the product of the last ``k`` Jacobians (the first, ``J_0``, from the initial carry, only
    enters at lag ``T``, which is left out). Use it on one block of ``state_jacobians``, e.g. the
    LSTM's cell path ``jac.c.c``, or on a flat Jacobian. Rescaled at every step like the rest.

    Args:
      jacobians: ``[*b, T, n, n]``, ``jacobians[..., t, :, :] = d c_t / d c_{t-1}``.
      norm: ``"spectral"`` or ``"frobenius"``.
      log: return natural logs of the norms.

    Returns:
      ``[*b, T]``.
    """
    check_norm(norm)
    check_bool("log", log)
    jacobians = as_array(jacobians)
    if not jnp.issubdtype(jacobians.dtype, jnp.floating):
        raise TypeError(f"jacobians must be a floating-point array, got dtype {jacobians.dtype}")
    if jacobians.ndim < 3 or jacobians.shape[-1] != jacobians.shape[-2] or jacobians.shape[-3] < 1:
        raise ValueError(f"jacobians must have shape [..., T, n, n] with T >= 1, got shape {tuple(jacobians.shape)}")
    jacobians = jnp.asarray(jacobians)
    jacobians = jacobians.astype(jnp.promote_types(jacobians.dtype, jnp.float32))  # products accumulate in float32+
    batch_shape, (T, n) = jacobians.shape[:-3], jacobians.shape[-3:-1]

    def one(js):
        def body(state, J):
            P, log_scale = state
            out = log_norm(P, norm) + log_scale
            P = P @ J
            s = jnp.max(jnp.abs(P))
            s = jnp.where(jnp.isfinite(s) & (s > 0), s, jnp.ones_like(s))
            return (P / s, log_scale + jnp.log(s)), out

        P0 = jnp.eye(n, dtype=js.dtype)
        log_scale0 = jnp.zeros((), jnp.promote_types(js.dtype, jnp.float32))
        return jax.lax.scan(body, (P0, log_scale0), js, reverse=True)[1][::-1]

    flat = jacobians.reshape((-1, T, n, n))
    out = jax.vmap(one)(flat).reshape(batch_shape + (T,))
    return out if log else jnp.exp(out)


