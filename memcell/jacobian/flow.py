"""Gradient norms through time: one reverse scan of batched vjps over all lags."""


import jax
import jax.numpy as jnp

from memcell.jacobian._common import (
    check_bool,
    check_norm,
    hidden_index,
    leaf,
    log_norm,
    over_batch,
    prepare,
    real_view,
    replace_leaf,
    trajectory,
)
from memcell.types import Array, Cell, PyTree, Sequence

# ----------------------------------------------------------------------------- the reverse pass


def _reverse_pass(cell, params, xs, carry0, hi: int, *, norm: str, want_inputs: bool, want_spectra: bool):
    """One reverse scan over the trajectory of one sequence.

    Carries ``G = d h_{T-1} / d c_t`` (one row per unit of ``h``, a pytree of the carry's shape),
    as ``exp(log_scale) * G_hat`` with ``G_hat`` rescaled to unit max-abs at every step. Emits,
    per step ``t`` (later reversed to lag order), the log-norm of ``d h_{T-1} / d h_t`` (the h
    block of ``G``), optionally its log singular values, and the log-norm of ``d h_{T-1} / d x_t``.
    """
    prev = trajectory(cell, params, xs, carry0)
    h0 = leaf(carry0, hi)
    n = h0.size
    eye = jnp.eye(n, dtype=h0.dtype).reshape((n,) + h0.shape)
    G0 = jax.tree.map(lambda a: jnp.zeros((n,) + a.shape, a.dtype), carry0)
    G0 = replace_leaf(G0, hi, eye)

    def body(state, inputs):
        G, log_scale = state
        c_prev, x = inputs
        out = {"lag": log_norm(leaf(G, hi), norm) + log_scale}
        if want_spectra:
            sv = jnp.linalg.svd(leaf(G, hi).reshape(n, -1), compute_uv=False)
            out["spectrum"] = jnp.log(sv) + log_scale
        _, vjp = jax.vjp(lambda c, x_: cell.step(params, c, x_)[0], c_prev, x)
        dc, dx = jax.vmap(vjp)(G)
        if want_inputs:
            out["input"] = log_norm(dx, norm) + log_scale
        # Rescale so that long products neither underflow nor overflow; log_scale keeps the size.
        s = jnp.max(jnp.stack([jnp.max(jnp.abs(a)) for a in jax.tree.leaves(dc)]))
        s = jnp.where(jnp.isfinite(s) & (s > 0), s, jnp.ones_like(s))
        dc = jax.tree.map(lambda a: a / s.astype(a.dtype), dc)
        return (dc, log_scale + jnp.log(s).astype(log_scale.dtype)), out

    log_scale0 = jnp.zeros((), jnp.promote_types(h0.dtype, jnp.float32))
    _, out = jax.lax.scan(body, (G0, log_scale0), (prev, xs), reverse=True)
    # out["lag"][t] belongs to lag T-1-t: flip to lag order; inputs stay aligned with xs.
    out["lag"] = out["lag"][::-1]
    if want_spectra:
        out["spectrum"] = out["spectrum"][::-1]
    return out


def _flow(cell, params, xs, carry, hidden, *, norm="spectral", want_inputs=False, want_spectra=False):
    xs, batch_shape, carry0 = prepare(cell, params, xs, carry)
    check_norm(norm)
    cell, carry0 = real_view(cell, params, carry0)
    hi = hidden_index(cell, params, hidden)
    fn = lambda xs_, c_: _reverse_pass(
        cell, params, xs_, c_, hi, norm=norm, want_inputs=want_inputs, want_spectra=want_spectra
    )
    return over_batch(fn, batch_shape, xs, carry0)


def gradient_norms_through_time(
    cell: Cell,
    params: PyTree,
    xs: Sequence,
    *,
    carry: PyTree | None = None,
    norm: str = "spectral",
    hidden: str | int = "h",
    log: bool = False,
) -> Array:
    """Norms of ``d h_T / d h_{T-k}`` for every lag ``k = 0 .. T-1``, in one reverse pass.

    ``h_t`` is the hidden part of the carry after step ``t`` (1-based here, so ``h_T`` is the
    last); the derivative perturbs the hidden part of the carry after step ``T-k`` and holds its
    other parts (the LSTM's ``c``) fixed. Lag 0 is the identity (norm 1). Computed by one
    reverse scan of batched vjps (``h`` rows at a time), not by ``T`` jacrev calls.

    Args:
      cell: any ``Cell``.
      params: its params.
      xs: ``[*b, T, D]`` inputs, as for ``memcell.unroll``.
      carry: the initial carry (default ``cell.initial_carry``).
      norm: ``"spectral"`` (largest singular value) or ``"frobenius"``.
      hidden: which carry leaf is ``h``: a field name or a leaf index (see the module doc).
      log: return natural logs of the norms, exact where the norms under- or overflow.

    Returns:
      ``[*b, T]``: index ``k`` holds ``||d h_T / d h_{T-k}||`` (or its log).

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> from memcell.jacobian import gradient_norms_through_time, decay_rate
      >>> cell = memcell.rnn(16, recurrent_scale=0.9)
      >>> params = cell.init(jax.random.key(0), input_size=2)
      >>> xs = jax.random.normal(jax.random.key(1), (200, 2))
      >>> g = gradient_norms_through_time(cell, params, xs)
      >>> g.shape, float(g[0])
      ((200,), 1.0)
      >>> bool(g[100] < 1e-4 * g[1])     # vanishes: tanh' < 1 and radius 0.9
      True
    """
    check_bool("log", log)
    lag = _flow(cell, params, xs, carry, hidden, norm=norm)["lag"]
    return lag if log else jnp.exp(lag)


def input_gradient_norms(
    cell: Cell,
    params: PyTree,
    xs: Sequence,
    *,
    carry: PyTree | None = None,
    norm: str = "spectral",
    hidden: str | int = "h",
    log: bool = False,
) -> Array:
    """Norms of ``d h_T / d x_t`` for every input step: how far back the last output can see.

    Args:
      cell, params, xs, carry, norm, hidden, log: as for ``gradient_norms_through_time``.

    Returns:
      ``[*b, T]``, aligned with the inputs: index ``t`` holds ``||d h_T / d xs[..., t, :]||``
      (so index ``T-1`` is the last input and index ``T-1-k`` lies ``k`` steps back).

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> from memcell.jacobian import input_gradient_norms
      >>> cell = memcell.lstm(8, forget_bias=3.0)
      >>> params = cell.init(jax.random.key(0), input_size=2)
      >>> input_gradient_norms(cell, params, jnp.ones((50, 2))).shape
      (50,)
    """
    check_bool("log", log)
    out = _flow(cell, params, xs, carry, hidden, norm=norm, want_inputs=True)["input"]
    return out if log else jnp.exp(out)


def singular_value_spectra(
    cell: Cell,
    params: PyTree,
    xs: Sequence,
    *,
    carry: PyTree | None = None,
    hidden: str | int = "h",
    log: bool = False,
) -> Array:
    """Singular values of ``d h_T / d h_{T-k}`` for every lag ``k``, largest first.

    The spread of the spectrum says whether a few directions carry the gradient (a wide spread)
    or all do; its top value is ``gradient_norms_through_time(..., norm="spectral")``.

    Args:
      cell, params, xs, carry, hidden, log: as for ``gradient_norms_through_time``.

    Returns:
      ``[*b, T, n]`` with ``n`` the size of ``h``, descending along the last axis.
    """
    check_bool("log", log)
    out = _flow(cell, params, xs, carry, hidden, want_spectra=True)["spectrum"]
    return out if log else jnp.exp(out)


