"""Gated DeltaNet (Yang, Kautz and Hatamizadeh 2024): a matrix memory written by the gated delta rule.

The delta rule replaces what the memory holds under a key (it writes the error ``v - S k``,
not ``v``), and a scalar gate ``alpha`` decays the whole memory: targeted replacement and
wholesale forgetting, the two ways a fixed-size memory makes room. The update is linear in the
memory, so a chunkwise form (``memcell.cells._delta_chunks``) computes the same outputs with
matrix products within chunks and a short scan over chunk states.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from memcell.cells import _common as c
from memcell.cells._conv import conv_sequence, conv_step
from memcell.cells._delta_chunks import chunkwise
from memcell.types import Array, Cell, CellSpec

__all__ = ["GatedDeltaNetCarry", "GatedDeltaNetParams", "GatedDeltaNetSpec", "gated_deltanet"]

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4  # the Mamba-2 step-size init the paper's code uses
L2_EPS, NORM_EPS = 1e-6, 1e-5  # inside the L2 normalisation of q, k and the output RMSNorm (the paper's code's)
# The chunkwise form is quadratic in the chunk length (an [L, L] system a chunk and head): at most
# this many steps a chunk, whatever the platform's choice for diagonal scans (one chunk of T on CPU).
MAX_CHUNK = 64


class GatedDeltaNetParams(NamedTuple):
    """Gated DeltaNet params (``H`` heads of key and value width ``dk = dv``, ``i = H * dk``)."""

    w_x: Array  # [d, 4i + 2H] input projections, blocks q, k, v, g (output gate), then a, b (H each)
    conv_w: Array  # [k, 3i] short causal convolution of q, k, v (no bias), taps oldest first
    a_log: Array  # [H] decay rate A = exp(a_log)
    dt_bias: Array  # [H] the decay's step-size bias
    norm: Array  # [dv] the output RMSNorm's gain (shared by the heads)
    w_out: Array  # [i, h] output projection


class GatedDeltaNetCarry(NamedTuple):
    conv: Array  # [*b, k - 1, 3i] the convolution's window: the last k - 1 projected q, k, v
    S: Array  # [*b, H, dv, dk] the matrix memory of each head (S k reads the value stored under k)


@dataclasses.dataclass(frozen=True)
class GatedDeltaNetSpec(CellSpec):
    """What ``memcell.gated_deltanet`` declares: its options and its chunkwise parallel form."""

    num_heads: int = 1
    head_dim: int = 1
    conv_size: int = 4


def _uniform(key, shape, bound, dtype):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def _l2_normalise(a: Array) -> Array:
    return a * jax.lax.rsqrt(jnp.sum(a * a, axis=-1, keepdims=True) + L2_EPS)


def gated_deltanet(
    hidden_size: int,
    num_heads: int = 1,
    head_dim: int | None = None,
    *,
    conv_size: int = 4,
    param_dtype=jnp.float32,
    dtype=None,
) -> Cell:
    """Gated DeltaNet (Yang, Kautz and Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2
    with Delta Rule", section 3 and figure 1), its token mixer as one cell.

    Equations, per head (``dk = dv = head_dim``; ``S`` is ``[dv, dk]``)::

        [q~, k~, v~, g, a, b] = x W                      x the input [d]
        [q, k, v] = silu(conv([q~, k~, v~]))             short causal depthwise conv (window in the carry)
        q = q / ||q|| / sqrt(dk),  k = k / ||k||          L2-normalised (q also scaled, as attention)
        alpha = exp(-exp(a_log) * softplus(a + dt_bias))  decay gate in (0, 1), a scalar a head
        beta  = sigmoid(b)                                 write strength, a scalar a head
        S' = S (alpha (I - beta k k^T)) + beta v k^T       the gated delta rule
           = alpha S + beta (v - alpha S k) k^T
        o  = S' q                                          [dv]
        y  = (RMSNorm(o) * w_norm * silu(g)) W_out         output norm (over dv) and gate; y [h]

    The projections have no biases. Initialisation as the paper's code (flash-linear-attention's
    ``GatedDeltaNet`` layer): projections and convolution as PyTorch's ``nn.Linear`` / ``nn.Conv1d``
    (``U(+-1/sqrt(fan_in))``), ``exp(a_log) ~ U(0, 16)`` (kept above 1e-4), ``dt_bias`` the inverse
    softplus of a step drawn log-uniformly in ``[0.001, 0.1]``, ``w_norm = 1``. Its value width
    is ``head_dim`` here (the code's default ``expand_v=2`` doubles it).

    The carry ``GatedDeltaNetCarry(conv, S)`` holds the convolution's window ``[*b, k - 1, 3 H
    dk]`` and the memories ``S [*b, H, dv, dk]``, float32 (float64 for float64 params). The
    cell's spec declares the chunkwise parallel form (``memcell.unroll(..., backend="parallel")``):
    every step's projections and convolution at once, then the WY/UT representation within chunks
    of at most 64 steps and a scan over chunk states (``memcell.cells._delta_chunks``).

    Args:
      hidden_size: ``h``, the width of the output.
      num_heads: ``H``, the number of heads (one memory each).
      head_dim: ``dk = dv`` (None: ``hidden_size // num_heads``, which must then divide evenly).
      conv_size: ``k``, the short convolution's width (4, the paper's); 1 is a per-channel scale.
      param_dtype: dtype of the params.
      dtype: computation dtype of the projections (None: that of params and inputs); bfloat16
        accumulates in float32, and the carry and the recurrence stay float32.

    Returns:
      A ``Cell`` with ``GatedDeltaNetParams``, ``GatedDeltaNetCarry`` and a ``GatedDeltaNetSpec``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.gated_deltanet(8, num_heads=2)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> carry, ys = memcell.unroll(cell, params, jnp.ones((2, 10, 3)))
      >>> ys.shape, carry.conv.shape, carry.S.shape
      ((2, 10, 8), (2, 3, 24), (2, 2, 4, 4))
      >>> _, ys_par = memcell.unroll(cell, params, jnp.ones((2, 10, 3)), backend="parallel")
      >>> bool(jnp.allclose(ys, ys_par, atol=1e-5))
      True
    """
    Hd = c.check_positive_int("hidden_size", hidden_size)
    heads = c.check_positive_int("num_heads", num_heads)
    if head_dim is None:
        if Hd % heads:
            raise ValueError(f"num_heads must divide hidden_size when head_dim is None, got num_heads={heads} "
                             f"and hidden_size={Hd}")
        dk = Hd // heads
    else:
        dk = c.check_positive_int("head_dim", head_dim)
    K = c.check_positive_int("conv_size", conv_size)
    param_dtype = c.check_float_dtype("param_dtype", param_dtype)
    dtype = c.check_float_dtype("dtype", dtype, allow_none=True)
    inner = heads * dk

    def init(key, input_size: int) -> GatedDeltaNetParams:
        D = c.check_input_size(input_size)
        k_x, k_conv, k_a, k_dt, k_out = jax.random.split(key, 5)
        A = jnp.maximum(jax.random.uniform(k_a, (heads,), jnp.float32, 0.0, 16.0), 1e-4)
        dt = jnp.exp(jax.random.uniform(k_dt, (heads,), jnp.float32, math.log(DT_MIN), math.log(DT_MAX)))
        dt = jnp.maximum(dt, DT_FLOOR)
        return GatedDeltaNetParams(
            w_x=_uniform(k_x, (D, 4 * inner + 2 * heads), 1 / math.sqrt(D), param_dtype),
            conv_w=_uniform(k_conv, (K, 3 * inner), 1 / math.sqrt(K), param_dtype),
            a_log=jnp.log(A).astype(param_dtype),
            dt_bias=(dt + jnp.log(-jnp.expm1(-dt))).astype(param_dtype),
            norm=jnp.ones((dk,), param_dtype),
            w_out=_uniform(k_out, (inner, Hd), 1 / math.sqrt(inner), param_dtype),
        )

    def initial_carry(params: GatedDeltaNetParams, batch_shape=()) -> GatedDeltaNetCarry:
        batch_shape = tuple(batch_shape)
        dt = c.carry_dtype(params.w_x)
        return GatedDeltaNetCarry(conv=jnp.zeros(batch_shape + (K - 1, 3 * inner), dt),
                                  S=jnp.zeros(batch_shape + (heads, dk, dk), dt))

    def project(params: GatedDeltaNetParams, x: Array, dt):
        """``(qkv before the conv, g, log alpha, beta)`` for inputs ``[..., d]``."""
        z = c.linear(x, params.w_x, dtype).astype(dt)
        a, b = z[..., 4 * inner : 4 * inner + heads], z[..., 4 * inner + heads :]
        log_alpha = -jnp.exp(params.a_log.astype(dt)) * jax.nn.softplus(a + params.dt_bias.astype(dt))
        return z[..., : 3 * inner], z[..., 3 * inner : 4 * inner], log_alpha, jax.nn.sigmoid(b)

    def qkv_heads(qkv: Array):
        """``(q, k, v)``, each ``[..., H, dk]``, from the convolved projections."""
        qkv = jax.nn.silu(qkv)
        per_head = lambda a: a.reshape(a.shape[:-1] + (heads, dk))
        q, k, v = (per_head(qkv[..., j * inner : (j + 1) * inner]) for j in range(3))
        return _l2_normalise(q) / math.sqrt(dk), _l2_normalise(k), v

    def readout(params: GatedDeltaNetParams, o: Array, g: Array) -> Array:
        """``(RMSNorm(o) * w_norm * silu(g)) W_out`` for ``o: [..., H, dv]``, ``g: [..., H dv]``."""
        o = o * jax.lax.rsqrt(jnp.mean(o * o, axis=-1, keepdims=True) + NORM_EPS) * params.norm.astype(o.dtype)
        o = o.reshape(o.shape[:-2] + (inner,)) * jax.nn.silu(g)
        return c.linear(o, params.w_out, dtype)

    def step(params: GatedDeltaNetParams, carry: GatedDeltaNetCarry, x: Array):
        qkv, g, log_alpha, beta = project(params, x, carry.S.dtype)
        window, qkv = conv_step(carry.conv, qkv, params.conv_w, None)
        q, k, v = qkv_heads(qkv)
        alpha, beta = jnp.exp(log_alpha)[..., None, None], beta[..., None, None]
        Sk = jnp.einsum("...vk,...k->...v", carry.S, k)
        S = alpha * carry.S + beta * (v - alpha[..., 0] * Sk)[..., :, None] * k[..., None, :]
        o = jnp.einsum("...vk,...k->...v", S, q)
        return GatedDeltaNetCarry(conv=window, S=S), readout(params, o, g)

    def parallel(params: GatedDeltaNetParams, xs: Array, carry0: GatedDeltaNetCarry, valid, resets, *, chunk_size: int,
                 linear_scan=None):
        dt = carry0.S.dtype
        qkv, g, log_alpha, beta = project(params, xs, dt)
        window, qkv = conv_sequence(carry0.conv, qkv, params.conv_w, None, valid, resets)
        q, k, v = qkv_heads(qkv)
        batch, T = xs.shape[:-2], xs.shape[-2]
        if valid is not None:  # past a sequence's length the memory stays: alpha = 1, beta = 0
            log_alpha = jnp.where(valid[..., None], log_alpha, 0.0)
            beta = jnp.where(valid[..., None], beta, 0.0)
        flat = lambda a, tail: jnp.broadcast_to(a, batch + a.shape[a.ndim - tail :]).reshape((-1,) + a.shape[a.ndim - tail :])
        rs = None if resets is None else flat(resets, 1)
        S, o = chunkwise(flat(q, 3), flat(k, 3), flat(v, 3), flat(log_alpha, 2), flat(beta, 2), flat(carry0.S, 3),
                         rs, min(chunk_size, MAX_CHUNK))
        o = o.reshape(batch + (T, heads, dk))
        return GatedDeltaNetCarry(conv=window, S=S.reshape(batch + S.shape[1:])), readout(params, o, g)

    spec = GatedDeltaNetSpec(step=step, dtype=dtype, parallel=parallel, num_heads=heads, head_dim=dk, conv_size=K)
    return Cell(init, initial_carry, step, spec)
