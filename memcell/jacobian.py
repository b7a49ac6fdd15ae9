"""Jacobians through time: how far back a cell's gradient reaches, measured with ``jax.vjp``.

The vanishing-gradient problem (Hochreiter 1991, Bengio et al. 1994, Pascanu et al. 2013) in
numbers, for any ``Cell``. Notation: ``c_t`` is the carry after step ``t`` of ``xs`` (0-based,
``c_{-1}`` the initial carry), ``h_t`` its hidden part, and ``J_t = d c_t / d c_{t-1}`` the
step Jacobian at ``(c_{t-1}, x_t)``. The gradient that reaches ``h`` from ``k`` steps later is
the product ``d h_{T-1} / d h_{T-1-k} = P_h J_{T-1} ... J_{T-k} E_h``: its norm shrinks
geometrically in ``k`` for a contracting plain RNN, while the LSTM's memory cell carries it
along ``d c_t / d c_{t-1} = diag(f_t)``, at a rate its forget gates set.

The hidden part of a carry. A carry is any pytree; the "h-part" is found by name: the leaf
that is the carry's field (NamedTuple field or dict key) called ``hidden`` (default ``"h"``,
the field every memcell cell uses for its hidden output). With the default, a carry with a
single leaf (a bare array, or a one-field NamedTuple) is its own hidden part. ``hidden`` may also be an int, the
index of the leaf in ``jax.tree.leaves(carry)``. Derivatives "with respect to ``h_t``" perturb
that leaf of ``c_t`` and hold the other leaves (the LSTM's ``c``) fixed at that step; later
steps propagate the perturbation through every part of the carry.

Everything here takes ``xs: [*b, T, D]`` like ``memcell.unroll`` (leading batch axes, or use
``jax.vmap``), works under ``jit`` and ``vmap`` (over sequences or over params, e.g. seeds), in
float32 and float64. All lags are computed in one reverse scan of batched vjps, with the running
product rescaled at every step and its log-scale kept apart, so ``log=True`` gives exact log-norms
where the norms themselves would underflow (radius 0.5 over 1000 steps is 1e-301) or overflow.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from memcell import _checks
from memcell._checks import as_array as _as_array, check_carry as _check_carry, check_xs as _check_xs
from memcell.types import Array, Cell, Key, PyTree, Sequence

__all__ = [
    "decay_rate",
    "gradient_norms_through_time",
    "input_gradient_norms",
    "loss_gradient_norms",
    "lyapunov_exponent",
    "product_norms",
    "singular_value_spectra",
    "state_jacobians",
    "unroll_with_probes",
]

_NORMS = ("spectral", "frobenius")


# ----------------------------------------------------------------------------- argument checks


def _check_cell(cell) -> None:
    _checks.check_cell(cell)


def _check_norm(norm) -> None:
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {list(_NORMS)}, got {norm!r}")


def _check_bool(name: str, value) -> None:
    _checks.check_bool(name, value)


def _prepare(cell, params, xs, carry) -> tuple[Array, tuple, PyTree]:
    _check_cell(cell)
    xs = _check_xs(xs, params)
    _checks.check_params(cell, params, xs.shape[-1])
    if xs.shape[-2] < 1:
        raise ValueError(f"xs must hold at least one time step, got shape {tuple(xs.shape)}")
    batch_shape = tuple(xs.shape[:-2])
    return xs, batch_shape, _check_carry(cell, params, carry, batch_shape)


def _hidden_index(cell, params, hidden) -> int:
    """The index, in ``jax.tree.leaves(carry)``, of the carry's hidden part (see the module doc)."""
    example = jax.eval_shape(lambda p: cell.initial_carry(p, ()), params)
    leaves = jax.tree_util.tree_flatten_with_path(example)[0]
    if isinstance(hidden, (bool, np.bool_)) or not isinstance(hidden, (str, int, np.integer)):
        raise TypeError(f"hidden must be a carry field name (str) or a leaf index (int), got {hidden!r}")
    if isinstance(hidden, (int, np.integer)):
        if not 0 <= hidden < len(leaves):
            raise ValueError(f"hidden must index one of the carry's {len(leaves)} leaves, got {hidden}")
        return int(hidden)
    for i, (path, _) in enumerate(leaves):
        if len(path) == 1 and getattr(path[0], "name", getattr(path[0], "key", None)) == hidden:
            return i
    if len(leaves) == 1 and hidden == "h":  # only the default falls back; a name the user gave must exist
        return 0
    names = [jax.tree_util.keystr(path) or "<the carry itself>" for path, _ in leaves]
    raise ValueError(
        f"hidden={hidden!r} names no leaf of the carry, whose leaves are {names}; pass hidden= as the "
        "field name or the leaf index of the carry's hidden output"
    )


def _leaf(tree: PyTree, i: int) -> Array:
    return jax.tree.leaves(tree)[i]


def _replace_leaf(tree: PyTree, i: int, value: Array) -> PyTree:
    leaves, treedef = jax.tree.flatten(tree)
    leaves[i] = value
    return jax.tree.unflatten(treedef, leaves)


def _over_batch(fn: Callable, batch_shape: tuple, xs: Array, carry: PyTree):
    """Applies the one-sequence ``fn(xs, carry)`` to every sequence of the batch axes."""
    if not batch_shape:
        return fn(xs, carry)
    n = math.prod(batch_shape)
    flat = lambda a: a.reshape((n,) + a.shape[len(batch_shape) :])
    out = jax.vmap(fn)(flat(xs), jax.tree.map(flat, carry))
    return jax.tree.map(lambda a: a.reshape(batch_shape + a.shape[1:]), out)


# ----------------------------------------------------------------------------- the reverse pass


def _trajectory(cell, params, xs: Array, carry0: PyTree) -> PyTree:
    """The carries entering each step: ``prev[t] = c_{t-1}``, stacked on a leading time axis."""

    def body(c, x):
        new, _ = cell.step(params, c, x)
        return new, c

    return jax.lax.scan(body, carry0, xs)[1]


def _log_norm(m: Array, norm: str) -> Array:
    # Norms in float32 at least: bfloat16 loses digits, and LAPACK has no bfloat16 SVD.
    m = m.reshape(m.shape[0], -1).astype(jnp.promote_types(m.dtype, jnp.float32))
    if norm == "spectral":
        return jnp.log(jnp.linalg.svd(m, compute_uv=False)[0])
    return jnp.log(jnp.sqrt(jnp.sum(jnp.square(m))))


def _reverse_pass(cell, params, xs, carry0, hi: int, *, norm: str, want_inputs: bool, want_spectra: bool):
    """One reverse scan over the trajectory of one sequence.

    Carries ``G = d h_{T-1} / d c_t`` (one row per unit of ``h``, a pytree of the carry's shape),
    as ``exp(log_scale) * G_hat`` with ``G_hat`` rescaled to unit max-abs at every step. Emits,
    per step ``t`` (later reversed to lag order), the log-norm of ``d h_{T-1} / d h_t`` (the h
    block of ``G``), optionally its log singular values, and the log-norm of ``d h_{T-1} / d x_t``.
    """
    prev = _trajectory(cell, params, xs, carry0)
    h0 = _leaf(carry0, hi)
    n = h0.size
    eye = jnp.eye(n, dtype=h0.dtype).reshape((n,) + h0.shape)
    G0 = jax.tree.map(lambda a: jnp.zeros((n,) + a.shape, a.dtype), carry0)
    G0 = _replace_leaf(G0, hi, eye)

    def body(state, inputs):
        G, log_scale = state
        c_prev, x = inputs
        out = {"lag": _log_norm(_leaf(G, hi), norm) + log_scale}
        if want_spectra:
            sv = jnp.linalg.svd(_leaf(G, hi).reshape(n, -1), compute_uv=False)
            out["spectrum"] = jnp.log(sv) + log_scale
        _, vjp = jax.vjp(lambda c, x_: cell.step(params, c, x_)[0], c_prev, x)
        dc, dx = jax.vmap(vjp)(G)
        if want_inputs:
            out["input"] = _log_norm(dx, norm) + log_scale
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
    xs, batch_shape, carry0 = _prepare(cell, params, xs, carry)
    _check_norm(norm)
    hi = _hidden_index(cell, params, hidden)
    fn = lambda xs_, c_: _reverse_pass(
        cell, params, xs_, c_, hi, norm=norm, want_inputs=want_inputs, want_spectra=want_spectra
    )
    return _over_batch(fn, batch_shape, xs, carry0)


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
    _check_bool("log", log)
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
    _check_bool("log", log)
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
    _check_bool("log", log)
    out = _flow(cell, params, xs, carry, hidden, want_spectra=True)["spectrum"]
    return out if log else jnp.exp(out)


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
      ``jac.h.h`` the hidden-to-hidden block.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> from memcell.jacobian import state_jacobians
      >>> cell = memcell.lstm(4, forget_bias=1.0)
      >>> params = cell.init(jax.random.key(0), input_size=2)
      >>> jac = state_jacobians(cell, params, jnp.ones((10, 2)))
      >>> jac.c.c.shape, jac.h.c.shape
      ((10, 4, 4), (10, 4, 4))
    """
    _check_bool("flat", flat)
    xs, batch_shape, carry0 = _prepare(cell, params, xs, carry)

    def one(xs_, c0):
        prev = _trajectory(cell, params, xs_, c0)

        def jac(c_prev, x):
            if flat:
                v, unravel = ravel_pytree(c_prev)
                f = lambda v_: ravel_pytree(cell.step(params, unravel(v_), x)[0])[0]
                return jax.jacfwd(f)(v)
            return jax.jacfwd(lambda c: cell.step(params, c, x)[0])(c_prev)

        return jax.lax.map(lambda a: jac(*a), (prev, xs_))

    return _over_batch(one, batch_shape, xs, carry0)


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
    _check_norm(norm)
    _check_bool("log", log)
    jacobians = _as_array(jacobians)
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
            out = _log_norm(P, norm) + log_scale
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
    xs, batch_shape, carry0 = _prepare(cell, params, xs, carry)
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

    return _over_batch(one, batch_shape, xs, carry0)


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
    _check_bool("log", log)
    norms = _as_array(norms)
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


# ----------------------------------------------------------------------------- loss gradients


def unroll_with_probes(
    cell: Cell,
    params: PyTree,
    xs: Sequence,
    probes: Array,
    carry: PyTree | None = None,
    *,
    hidden: str | int = "h",
) -> tuple[PyTree, Array]:
    """``memcell.unroll`` with ``probes[..., t, :]`` added to the hidden part after each step.

    With zero probes the values are those of ``unroll``; the gradient of a loss with respect to
    the probes is ``dL / dh_t`` for every ``t`` (the total derivative, through all later
    steps), obtained in the same backward pass as the params' gradient. When the step returns
    its carry's hidden part as its output (every memcell cell does), the probe reaches the
    output too.

    Args:
      cell, params, xs, carry, hidden: as for ``gradient_norms_through_time``.
      probes: ``[*b, T, *h_shape]``, normally zeros.

    Returns:
      ``(carry, ys)`` as ``memcell.unroll`` returns them.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> from memcell.jacobian import unroll_with_probes
      >>> cell = memcell.gru(4)
      >>> params = cell.init(jax.random.key(0), input_size=1)
      >>> xs, probes = jnp.ones((20, 1)), jnp.zeros((20, 4))
      >>> loss = lambda p, z: unroll_with_probes(cell, p, xs, z)[1][-1].sum()
      >>> grads, dl_dh = jax.grad(loss, argnums=(0, 1))(params, probes)
      >>> dl_dh.shape
      (20, 4)
    """
    xs, batch_shape, carry0 = _prepare(cell, params, xs, carry)
    hi = _hidden_index(cell, params, hidden)
    h_shape = jax.eval_shape(lambda p: _leaf(cell.initial_carry(p, ()), hi), params).shape
    probes = _as_array(probes)
    expected = batch_shape + (xs.shape[-2],) + tuple(h_shape)
    if not jnp.issubdtype(probes.dtype, jnp.floating):
        raise TypeError(f"probes must be a floating-point array, got dtype {probes.dtype}")
    if tuple(probes.shape) != expected:
        raise ValueError(f"probes must have shape {expected} (batch, time, hidden), got shape {tuple(probes.shape)}")

    def body(c, inputs):
        x, p = inputs
        new, y = cell.step(params, c, x)
        h = _leaf(new, hi)
        h_probed = h + p.astype(h.dtype)
        # Identity, not equality: the probe reaches y only where y is the carry's own h leaf.
        y = h_probed if y is h else y
        return _replace_leaf(new, hi, h_probed), y

    n_b = len(batch_shape)
    time_major = lambda a: jnp.moveaxis(a, n_b, 0)
    c, ys = jax.lax.scan(body, carry0, (time_major(xs), time_major(jnp.asarray(probes))))
    return c, jnp.moveaxis(ys, 0, n_b)


def loss_gradient_norms(
    cell: Cell,
    params: PyTree,
    xs: Sequence,
    loss_fn: Callable[[Array], Array],
    *,
    carry: PyTree | None = None,
    hidden: str | int = "h",
) -> Array:
    """Euclidean norms of ``dL / dh_t`` for every step, for a loss ``L = loss_fn(ys)`` on the outputs.

    One forward and one backward pass (zero probes, see ``unroll_with_probes``), so it is cheap
    enough to log during training; to get the params' gradient in the same pass, differentiate
    ``unroll_with_probes`` with respect to both.

    Args:
      cell, params, xs, carry, hidden: as for ``gradient_norms_through_time``.
      loss_fn: ``ys [*b, T, H] -> scalar``.

    Returns:
      ``[*b, T]``: ``||dL / dh_t||`` per sequence and step.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (ys -> scalar), got {type(loss_fn).__name__}")
    xs, batch_shape, carry0 = _prepare(cell, params, xs, carry)
    hi = _hidden_index(cell, params, hidden)
    h_leaf = jax.eval_shape(lambda p: _leaf(cell.initial_carry(p, batch_shape), hi), params)
    T = xs.shape[-2]
    probes = jnp.zeros(batch_shape + (T,) + h_leaf.shape[len(batch_shape) :], h_leaf.dtype)

    def loss(z):
        value = loss_fn(unroll_with_probes(cell, params, xs, z, carry0, hidden=hidden)[1])
        if jnp.shape(value) != ():
            raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(value)}")
        return value

    g = jax.grad(loss)(probes)
    h_axes = tuple(range(len(batch_shape) + 1, g.ndim))
    return jnp.sqrt(jnp.sum(jnp.square(g), axis=h_axes))
