"""The mLSTM over a whole sequence in chunkwise parallel form (Beck et al. 2024, appendix; Yang et al. 2024).

Time is cut into chunks of ``L`` steps. Within a chunk the outputs come from an attention-like
``[L, L]`` matrix: the log weight of step ``s``'s write as read at step ``t >= s`` is
``D[t, s] = log i_s + F_t - F_s`` (``F`` the cumulative log forget gate in the chunk), and the
state entering the chunk reaches step ``t`` with log weight ``m_in + F_t``. Each row is
stabilised by its maximum, which is exactly the recurrent step's stabiliser ``m_t`` (the
max-plus unrolling of ``m_t = max(log f_t + m_{t-1}, log i_t)``), so every ``exp`` has a
non-positive argument and the carry equals the recurrent one, ``m`` included. Between chunks, a
short ``lax.scan`` over the ``T / L`` chunk ends carries the state ``(C, n, m)``.

Resets restart the carry from ``carry0`` before their step: within a chunk a reset cuts the
attention matrix into segments, and ``carry0`` enters the segment as its incoming state. Steps
past a sequence's length (``valid`` false) get ``log f = 0`` and ``log i = -inf`` (a large
negative number, so that derivatives stay finite), so they leave the carry unchanged.
"""

import jax
import jax.numpy as jnp
import numpy as np

from memcell._checks import check_positive_int
from memcell.types import Array

__all__ = ["chunkwise"]

NEG = -1e30  # log of "zero" kept finite: exp underflows to 0 and derivatives stay finite


def _chunks(a: Array, K: int, L: int, fill) -> Array:
    """``[B, T, ...]`` -> ``[B, K, L, ...]``, padded at the end with ``fill``."""
    B, T = a.shape[:2]
    if K * L != T:
        a = jnp.concatenate([a, jnp.full((B, K * L - T) + a.shape[2:], fill, a.dtype)], axis=1)
    return a.reshape((B, K, L) + a.shape[2:])


def chunkwise(spec, params, xs: Array, carry0, valid: Array | None = None, resets: Array | None = None, *,
              chunk_size: int = 64):
    """Runs ``memcell.mlstm``'s recurrence over all steps of ``xs`` without a per-step loop.

    Args:
      spec: the cell's ``MLSTMSpec`` (its ``gates`` and ``num_heads``).
      params: the cell's ``MLSTMParams``.
      xs: ``[*b, T, d]`` inputs, already in reading order (reversed by the caller where needed),
        with zeros at padded steps.
      carry0: the initial ``MLSTMCarry`` broadcast to the batch: ``C: [*b, heads, dk, dv]``,
        ``n: [*b, heads, dk]``, ``m: [*b, heads]``.
      valid: ``[*b, T]`` booleans, a prefix mask (None: all valid); past it the carry is unchanged.
      resets: ``[*b, T]`` booleans (None: none); where set (and valid) the carry restarts from
        ``carry0`` before that step.
      chunk_size: the chunk length ``L`` (at most ``T`` is used); ``T`` need not be a multiple.

    Returns:
      ``(carry, ys)``: the carry after the last valid step (equal to the recurrent step's,
      ``m`` included) and the outputs ``ys: [*b, T, h]`` (not zeroed at padded steps).
    """
    chunk_size = check_positive_int("chunk_size", chunk_size)
    batch, T = tuple(xs.shape[:-2]), xs.shape[-2]
    dt = carry0.C.dtype
    g = jax.tree.map(lambda a: a.astype(dt), spec.gates(params, xs))
    heads, dv = carry0.C.shape[-3], carry0.C.shape[-1]
    flat = lambda a, tail: a.reshape((-1,) + a.shape[len(a.shape) - tail :])  # merge the batch axes
    q, k, v, o = flat(g.q, 3), flat(g.k, 3), flat(g.v, 3), flat(g.o, 2)  # [B, T, heads, dk] ...
    log_i, log_f = flat(g.log_i, 2), flat(g.log_f, 2)  # [B, T, heads]
    B = q.shape[0]
    ok = jnp.ones((B, T), bool) if valid is None else jnp.broadcast_to(valid, batch + (T,)).reshape(B, T)
    rs = jnp.zeros((B, T), bool) if resets is None else jnp.broadcast_to(resets, batch + (T,)).reshape(B, T)
    rs = rs & ok  # a reset past the length does nothing (the reference keeps the carry there)
    log_i = jnp.where(ok[..., None], log_i, NEG)
    log_f = jnp.where(ok[..., None], log_f, 0.0)
    C0, n0, m0 = (jnp.broadcast_to(a, batch + a.shape[len(a.shape) - tail :]).reshape((B,) + a.shape[len(a.shape) - tail :])
                  for a, tail in ((carry0.C, 3), (carry0.n, 2), (carry0.m, 1)))

    L = min(chunk_size, T)
    K = -(-T // L)
    # [B, K, heads, L, ...]: chunks, then heads, then steps within the chunk
    by_head = lambda a, fill: jnp.moveaxis(_chunks(a, K, L, fill), 3, 2)
    q, k, v = by_head(q, 0.0), by_head(k, 0.0), by_head(v, 0.0)
    log_i, log_f = by_head(log_i[..., None], NEG)[..., 0], by_head(log_f[..., None], 0.0)[..., 0]
    rs = _chunks(rs, K, L, False)[:, :, None, :]  # [B, K, 1, L]

    F = jnp.cumsum(log_f, axis=-1)  # [B, K, heads, L]: log forget product from the chunk start to t
    seg = jnp.cumsum(rs, axis=-1)  # segment number within the chunk; 0 = still the incoming state's
    steps = jnp.arange(L)
    last_reset = jax.lax.cummax(jnp.where(rs, steps, -1), axis=rs.ndim - 1)
    F_before = jnp.take_along_axis(F - log_f, jnp.maximum(last_reset, 0), axis=-1)  # F just before the reset
    b_in = jnp.where(seg == 0, m0[:, None, :, None] + F, NEG)  # log weight of the incoming state at t
    b_0 = jnp.where(seg > 0, m0[:, None, :, None] + F - F_before, NEG)  # of carry0 after a reset

    causal = (steps[:, None] >= steps[None, :]) & (seg[..., :, None] == seg[..., None, :])
    D = jnp.where(causal, log_i[..., None, :] + F[..., :, None] - F[..., None, :], NEG)  # [B, K, heads, L, L]
    m_local = jnp.maximum(jnp.max(D, axis=-1), b_0)  # [B, K, heads, L]: all but the incoming state

    # The chunk ends: the state each chunk would leave from a zero incoming state, then one scan.
    m_end = m_local[..., -1]
    w_end = jnp.exp(D[..., -1, :] - m_end[..., None])  # [B, K, heads, L]
    w0_end = jnp.exp(b_0[..., -1] - m_end)  # [B, K, heads]
    C_end = jnp.einsum("bkhs,bkhsi,bkhsj->bkhij", w_end, k, v) + w0_end[..., None, None] * C0[:, None]
    n_end = jnp.einsum("bkhs,bkhsi->bkhi", w_end, k) + w0_end[..., None] * n0[:, None]
    decay = jnp.where(seg[..., -1] == 0, F[..., -1], NEG)  # [B, K, heads]: how the incoming state reaches the end

    def across(state, chunk):
        C, n, m = state
        a, m_loc, C_loc, n_loc = chunk
        m_out = jnp.maximum(a + m, m_loc)
        w_in, w_loc = jnp.exp(a + m - m_out), jnp.exp(m_loc - m_out)
        C_out = w_in[..., None, None] * C + w_loc[..., None, None] * C_loc
        n_out = w_in[..., None] * n + w_loc[..., None] * n_loc
        return (C_out, n_out, m_out), (C, n, m)

    over_k = lambda a: jnp.moveaxis(a, 1, 0)
    (C_T, n_T, m_T), (C_in, n_in, m_in) = jax.lax.scan(
        across, (C0, n0, m0), (over_k(decay), over_k(m_end), over_k(C_end), over_k(n_end)))
    C_in, n_in, m_in = (jnp.moveaxis(a, 0, 1) for a in (C_in, n_in, m_in))  # [B, K, heads, ...]

    # The outputs of every step of every chunk at once.
    b_in = jnp.where(seg == 0, m_in[..., None] + F, NEG)
    m = jnp.maximum(m_local, b_in)  # [B, K, heads, L]: the recurrent step's m_t
    W = jnp.exp(D - m[..., None]) * jnp.einsum("bkhti,bkhsi->bkhts", q, k)
    w_in, w_0 = jnp.exp(b_in - m), jnp.exp(b_0 - m)
    num = (jnp.einsum("bkhts,bkhsj->bkhtj", W, v) + w_in[..., None] * jnp.einsum("bkhti,bkhij->bkhtj", q, C_in)
           + w_0[..., None] * jnp.einsum("bkhti,bhij->bkhtj", q, C0))
    den = (W.sum(-1) + w_in * jnp.einsum("bkhti,bkhi->bkht", q, n_in) + w_0 * jnp.einsum("bkhti,bhi->bkht", q, n0))
    cap = float(np.log(np.finfo(dt).max)) - 1.0  # exp(-m) capped as in the step: no inf, no NaN gradient
    h = num / jnp.maximum(jnp.abs(den), jnp.exp(jnp.minimum(-m, cap)))[..., None]  # [B, K, heads, L, dv]
    h = jnp.moveaxis(h, 2, 3).reshape(B, K * L, heads * dv)[:, :T]
    ys = (o * h).reshape(batch + (T, heads * dv))

    carry = type(carry0)(C=C_T.reshape(batch + C_T.shape[1:]), n=n_T.reshape(batch + n_T.shape[1:]),
                         m=m_T.reshape(batch + m_T.shape[1:]))
    return carry, ys
