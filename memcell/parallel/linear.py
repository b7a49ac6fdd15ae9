"""Linear recurrences over time without a step-by-step loop over all T steps.

``linear_scan(a, b, h0)`` computes ``h_t = a_t * h_{t-1} + b_t`` (elementwise, any float or
complex dtype) for all ``t``; ``log_linear_scan(log_a, log_b)`` computes the same recurrence in
log space for positive terms starting from zero. Both are chunked scans: time is cut into
``K`` chunks of ``L`` steps (``L`` about ``sqrt(T)``), every chunk is scanned from zero at once
(``L`` sequential steps, each over all ``K`` chunks and all features: the work of one step is
large enough to amortise the loop), then a short sequential pass over the ``K`` chunk ends
carries each chunk's incoming state, and one elementwise pass adds it to every step. The work
is ``O(T)`` in two short sequential loops (``jax.lax.associative_scan`` makes about ``2 log2 T``
passes over strided slices of all the data), and no product runs over more than ``L`` steps,
so the precision does not degrade with ``T``.

Derivatives: ``linear_scan`` has a ``custom_jvp`` whose tangent is the same recurrence,
``dh_t = a_t dh_{t-1} + (da_t h_{t-1} + db_t)``, run by the same chunked scan; JAX transposes it
into the backward pass, which is again that recurrence run backwards in time
(``g_t = dL/dh_t + a_{t+1} g_{t+1}``, ``dL/db_t = g_t``, ``dL/da_t = g_t h_{t-1}``). So the
gradient costs two more chunked scans and keeps only ``a`` and the ``h`` of the forward pass,
and derivatives of every order exist.
"""

import functools
import math

import jax
import jax.numpy as jnp

from memcell.types import Array

__all__ = ["chunk_size_for", "linear_scan", "log_linear_scan"]

NEG = -1e30  # log of "zero" kept finite: exp underflows to 0 and logaddexp's derivative stays finite


def chunk_size_for(T: int) -> int:
    """The chunk length ``L`` for ``T`` steps: about ``sqrt(T)``, so the within-chunk scan and the
    pass over chunk ends are equally long (each ``O(sqrt(T))`` sequential steps)."""
    return max(1, int(round(math.sqrt(T))))


def _chunked(x: Array, L: int, fill) -> Array:
    """``[T, ...]`` -> ``[L, K, ...]``: padded with ``fill`` to ``K * L`` steps, step ``j`` of chunk ``k`` at ``[j, k]``."""
    T = x.shape[0]
    K = -(-T // L)
    if K * L != T:
        pad = jnp.full((K * L - T,) + x.shape[1:], fill, x.dtype)
        x = jnp.concatenate([x, pad], axis=0)
    return jnp.swapaxes(x.reshape((K, L) + x.shape[1:]), 0, 1)


def _unchunked(x: Array, T: int) -> Array:
    """The inverse of ``_chunked``: ``[L, K, ...]`` -> ``[T, ...]``."""
    L, K = x.shape[:2]
    return jnp.swapaxes(x, 0, 1).reshape((K * L,) + x.shape[2:])[:T]


def _scan_time_major(a: Array, b: Array, h0: Array, L: int) -> Array:
    """``h_t = a_t h_{t-1} + b_t`` for ``a, b: [T, ...]`` and ``h0: [...]``; returns ``h: [T, ...]``."""
    T = a.shape[0]
    if L >= T:  # one chunk: the plain sequential scan (what the CPU tuning measures fastest)
        return jax.lax.scan(lambda h, ab: (ab[0] * h + ab[1],) * 2, jnp.broadcast_to(h0, a.shape[1:]).astype(
            jnp.result_type(a, b)), (a, b))[1]
    ac, bc = _chunked(a, L, 1), _chunked(b, L, 0)  # padding steps keep the state: a = 1, b = 0

    def within(carry, ab):  # one step of every chunk at once, each started from zero
        h, p = carry
        a_j, b_j = ab
        h, p = a_j * h + b_j, a_j * p
        return (h, p), (h, p)

    zeros = jnp.zeros(ac.shape[1:], jnp.result_type(a, b))
    _, (h_loc, p_loc) = jax.lax.scan(within, (zeros, jnp.ones_like(zeros)), (ac, bc))  # [L, K, ...]

    def across(s, ends):  # the state entering each chunk
        p_end, h_end = ends
        return p_end * s + h_end, s

    _, s_in = jax.lax.scan(across, jnp.broadcast_to(h0, zeros.shape[1:]).astype(zeros.dtype), (p_loc[-1], h_loc[-1]))
    return _unchunked(h_loc + p_loc * s_in[None], T)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _linear_scan(a, b, h0, L):
    return _scan_time_major(a, b, h0, L)


@_linear_scan.defjvp
def _linear_scan_jvp(L, primals, tangents):
    a, b, h0 = primals
    da, db, dh0 = tangents
    h = _linear_scan(a, b, h0, L)
    h_prev = jnp.concatenate([jnp.broadcast_to(h0, h.shape[1:])[None].astype(h.dtype), h[:-1]], axis=0)
    # The tangent obeys the same recurrence, driven by da * h_{t-1} + db from dh0; it is linear in
    # the tangents, so JAX transposes it into the backward recurrence.
    dh = _linear_scan(a, da * h_prev + db, dh0, L)
    return h, dh


def _one_step_shaped(x: Array, like: Array) -> Array:
    return jnp.broadcast_to(jnp.asarray(x, like.dtype), like.shape[1:])


def linear_scan(a: Array, b: Array, h0: Array, *, axis: int = -2, chunk_size: int | None = None) -> Array:
    """All states of ``h_t = a_t * h_{t-1} + b_t``, elementwise, without a loop over all steps.

    Args:
      a, b: the coefficients, of one shape with time on ``axis`` (``[*b, T, h]`` by default), real
        or complex.
      h0: the state before the first step: the shape of one step of ``a`` (or broadcastable to it).
      axis: the time axis.
      chunk_size: steps a chunk (default ``chunk_size_for(T)``).

    Returns:
      ``h``, the shape of ``a``: the state after every step.

    Example:
      >>> import jax.numpy as jnp
      >>> from memcell.parallel import linear_scan
      >>> a, b = jnp.full((5, 1), 0.5), jnp.ones((5, 1))
      >>> linear_scan(a, b, jnp.zeros(1), axis=0)[:, 0].tolist()
      [1.0, 1.5, 1.75, 1.875, 1.9375]
    """
    a, b = jnp.broadcast_arrays(a, b)
    T = a.shape[axis]
    L = chunk_size_for(T) if chunk_size is None else int(chunk_size)
    a_t, b_t = jnp.moveaxis(a, axis, 0), jnp.moveaxis(b, axis, 0)
    h0 = _one_step_shaped(h0, a_t)
    # One chunk is the plain sequential scan, which JAX differentiates as well as the custom rule.
    scan = _scan_time_major if L >= T else _linear_scan
    return jnp.moveaxis(scan(a_t, b_t, h0, L), 0, axis)


def _log_scan_time_major(la: Array, lb: Array, L: int) -> Array:
    """``log h_t = logaddexp(la_t + log h_{t-1}, lb_t)`` from ``h = 0`` before the first step."""
    T = la.shape[0]
    if L >= T:  # one chunk: the plain sequential scan, from the first step
        step = lambda lh, ab: (jnp.logaddexp(ab[0] + lh, ab[1]),) * 2
        return jnp.concatenate([lb[:1], jax.lax.scan(step, lb[0], (la[1:], lb[1:]))[1]], axis=0)
    lac, lbc = _chunked(la, L, 0), _chunked(lb, L, NEG)  # padding steps keep the state

    def within(carry, ab):  # every chunk from its own first step (no log 0 to differentiate)
        lh, lp = carry
        la_j, lb_j = ab
        lh, lp = jnp.logaddexp(la_j + lh, lb_j), la_j + lp
        return (lh, lp), (lh, lp)

    first = (lbc[0], lac[0])
    _, (lh_rest, lp_rest) = jax.lax.scan(within, first, (lac[1:], lbc[1:]))
    lh_loc = jnp.concatenate([lbc[:1], lh_rest], axis=0)  # [L, K, ...]
    lp_loc = jnp.concatenate([lac[:1], lp_rest], axis=0)  # sum of la within the chunk so far

    ls_in = _states_entering(lp_loc[-1], lh_loc[-1])
    return _unchunked(jnp.logaddexp(lh_loc, lp_loc + ls_in[None]), T)


def _states_entering(lp_end: Array, lh_end: Array) -> Array:
    """``log s_k``: the log state entering chunk ``k`` (``NEG`` for the first), from each chunk's
    own sum of ``log a`` and its zero-started end state."""

    def across(ls, ends):
        lp, lh = ends
        return jnp.logaddexp(lp + ls, lh), ls

    ls0 = jnp.full(lh_end.shape[1:], NEG, lh_end.dtype)
    _, ls_in = jax.lax.scan(across, ls0, (lp_end, lh_end))
    return ls_in


def log_linear_scan(log_a: Array, log_b: Array, *, axis: int = -2, chunk_size: int | None = None) -> Array:
    """``log h`` for the positive recurrence ``h_t = a_t h_{t-1} + b_t`` from ``h = 0``, in log space.

    The state is kept as its logarithm, combined with ``logaddexp``; nothing is summed over more
    than ``chunk_size`` steps, so ``log h`` keeps float32's relative precision on long, strongly
    decaying sequences where ``h`` itself underflows. Differentiated by JAX through the scans.

    Args:
      log_a, log_b: ``log a`` and ``log b``, time on ``axis``; ``log_b`` may be very negative
        (``-1e30`` stands for ``b = 0``; ``-inf`` is replaced by it).
      axis, chunk_size: as for ``linear_scan``.

    Returns:
      ``log h`` after every step, the shape of ``log_a``.
    """
    log_a, log_b = jnp.broadcast_arrays(log_a, log_b)
    log_b = jnp.maximum(log_b, NEG)
    log_a = jnp.maximum(log_a, NEG)
    T = log_a.shape[axis]
    L = chunk_size_for(T) if chunk_size is None else int(chunk_size)
    out = _log_scan_time_major(jnp.moveaxis(log_a, axis, 0), jnp.moveaxis(log_b, axis, 0), L)
    return jnp.moveaxis(out, 0, axis)
