"""The gated delta rule over a whole sequence in chunkwise form (Yang, Kautz and Hatamizadeh 2024,
section 3.3 and appendix A; the DeltaNet chunkwise algorithm of Yang et al. 2024 with a decay).

Per head, ``S_t = S_{t-1} (alpha_t (I - beta_t k_t k_t^T)) + beta_t v_t k_t^T`` and ``o_t = S_t q_t``
(``S: [dv, dk]``). Writing ``S_t = alpha_t S_{t-1} + u_t k_t^T`` with the new value
``u_t = beta_t (v_t - alpha_t S_{t-1} k_t)``, and ``gamma_t`` the product of the ``alpha`` in the
chunk up to ``t``, a chunk of ``L`` steps entered with the state ``S_in`` unrolls to::

    S_t = gamma_t S_in + sum_{i <= t} (gamma_t / gamma_i) u_i k_i^T
    u_t + beta_t sum_{i < t} (gamma_t / gamma_i) (k_t . k_i) u_i = beta_t (v_t - gamma_t S_in k_t)

The second line is a unit lower-triangular ``[L, L]`` system (the WY/UT representation): one
triangular solve gives ``U = U' - W S_in^T`` with ``U'`` and ``W`` independent of ``S_in``. Every
output is then ``o_t = gamma_t S_in q_t + sum_{i <= t} (gamma_t / gamma_i) (q_t . k_i) u_i``, and the
chunk's end state is affine in ``S_in``, ``S_L = S_in M + N``: a short ``lax.scan`` over the
``T / L`` chunks carries the state. All ratios ``gamma_t / gamma_i`` are formed as ``exp`` of
differences of the cumulative log decay over ``i <= t`` (never above 1), so nothing overflows.

Resets restart the state from ``S0`` before their step: within a chunk they cut the matrices into
segments, and a step after a reset reads ``S0`` (decayed from the reset) where the others read
``S_in``. Steps past a sequence's length have ``log alpha = 0`` and ``beta = 0`` (the caller sets
them), so they leave the state unchanged.
"""

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from memcell.types import Array

__all__ = ["chunkwise"]

NEG = -1e30  # log of "zero", kept finite so that derivatives stay finite


def _chunks(a: Array, K: int, L: int) -> Array:
    """``[B, T, H, ...]`` -> ``[B, K, H, L, ...]``, padded at the end with zeros."""
    B, T = a.shape[:2]
    if K * L != T:
        a = jnp.concatenate([a, jnp.zeros((B, K * L - T) + a.shape[2:], a.dtype)], axis=1)
    return jnp.moveaxis(a.reshape((B, K, L) + a.shape[2:]), 3, 2)


def chunkwise(q: Array, k: Array, v: Array, log_alpha: Array, beta: Array, S0: Array, resets: Array | None,
              chunk_size: int) -> tuple[Array, Array]:
    """The gated delta rule over ``T`` steps in chunks of ``chunk_size``.

    Args:
      q, k: ``[B, T, H, dk]`` (q already scaled), v: ``[B, T, H, dv]``.
      log_alpha, beta: ``[B, T, H]``: the log decay (<= 0) and the write strength.
      S0: ``[B, H, dv, dk]``, the state before the first step and after every reset.
      resets: ``[B, T]`` booleans or None: where set, the state restarts from ``S0`` before that step.
      chunk_size: steps a chunk (at most ``T`` is used).

    Returns:
      ``(S, o)``: the state after the last step ``[B, H, dv, dk]`` and the outputs ``o: [B, T, H, dv]``.
    """
    B, T = q.shape[:2]
    L = max(1, min(chunk_size, T))
    K = -(-T // L)
    q, k, v = _chunks(q, K, L), _chunks(k, K, L), _chunks(v, K, L)  # [B, K, H, L, d]
    la, beta = _chunks(log_alpha[..., None], K, L)[..., 0], _chunks(beta[..., None], K, L)[..., 0]  # [B, K, H, L]
    rs = jnp.zeros((B, T), bool) if resets is None else resets
    rs = _chunks(rs[:, :, None, None], K, L)[..., 0]  # [B, K, 1, L]

    g = jnp.cumsum(la, axis=-1)  # log gamma_t within the chunk
    steps = jnp.arange(L)
    seg = jnp.cumsum(rs, axis=-1)  # segment within the chunk; 0: the one the incoming state enters
    first = seg == 0
    last_reset = jax.lax.cummax(jnp.where(rs, steps, -1), axis=rs.ndim - 1)
    g_before = jnp.take_along_axis(g - la, jnp.maximum(last_reset, 0), axis=-1)  # log gamma just before the reset
    delta = jnp.exp(g - jnp.where(first, 0.0, g_before))  # how the segment's incoming state reaches t (<= 1)
    f_in, f_0 = delta * first, delta * (~first)  # ... for S_in, and for S0 after a reset

    same = seg[..., :, None] == seg[..., None, :]  # [B, K, 1, L, L]
    diff = g[..., :, None] - g[..., None, :]  # log gamma_t / gamma_i
    strict = jnp.exp(jnp.where(same & (steps[:, None] > steps[None, :]), diff, NEG))
    incl = jnp.exp(jnp.where(same & (steps[:, None] >= steps[None, :]), diff, NEG))
    A = beta[..., :, None] * strict * jnp.einsum("...ti,...si->...ts", k, k)
    eye = jnp.eye(L, dtype=A.dtype)
    dv = v.shape[-1]
    rhs = jnp.concatenate([beta[..., None] * v, (beta * f_in)[..., None] * k, (beta * f_0)[..., None] * k], axis=-1)
    sol = solve_triangular(eye + A, rhs, lower=True, unit_diagonal=True)
    U1, W_in, W_0 = sol[..., :dv], sol[..., dv : dv + k.shape[-1]], sol[..., dv + k.shape[-1] :]
    S0c = S0[:, None]  # [B, 1, H, dv, dk]
    U0 = U1 - jnp.einsum("...ti,...vi->...tv", W_0, S0c)  # U = U0 - W_in S_in^T

    # The chunk ends: S_L = S_in M + N.
    D_end = jnp.exp(jnp.where(seg == seg[..., -1:], g[..., -1:] - g, NEG))  # gamma_L / gamma_i in the last segment
    M = (f_in[..., -1, None, None] * jnp.eye(k.shape[-1], dtype=k.dtype)
         - jnp.einsum("...ti,...t,...tj->...ij", W_in, D_end, k))
    N = f_0[..., -1, None, None] * S0c + jnp.einsum("...tv,...t,...tj->...vj", U0, D_end, k)

    def across(S, MN):
        M_k, N_k = MN
        return jnp.einsum("...vi,...ij->...vj", S, M_k) + N_k, S

    over_k = lambda a: jnp.moveaxis(a, 1, 0)
    S_T, S_in = jax.lax.scan(across, S0, (over_k(M), over_k(N)))
    S_in = jnp.moveaxis(S_in, 0, 1)  # [B, K, H, dv, dk]: the state entering each chunk

    U = U0 - jnp.einsum("...ti,...vi->...tv", W_in, S_in)
    P = incl * jnp.einsum("...ti,...si->...ts", q, k)
    o = (f_in[..., None] * jnp.einsum("...ti,...vi->...tv", q, S_in)
         + f_0[..., None] * jnp.einsum("...ti,...vi->...tv", q, S0c)
         + jnp.einsum("...ts,...sv->...tv", P, U))  # [B, K, H, L, dv]
    o = jnp.moveaxis(o, 2, 3).reshape((B, K * L) + o.shape[2:3] + (dv,))[:, :T]
    return S_T, o
