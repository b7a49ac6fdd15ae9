"""Mamba (Gu and Dao 2023): the selective state space model, one Mamba-1 block as a cell.

The SSM's step size ``Delta`` and its ``B`` and ``C`` are functions of the input, so the block
chooses at each step how much of its state to keep and what to write: the selection mechanism
the paper adds to S4. Its carry is the short convolution's window and the SSM state; the SSM
update is diagonal and linear in the state, so a parallel form computes every step's
coefficients at once (the convolution too) and runs one diagonal linear scan.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from memcell.cells import _common as c
from memcell.cells._conv import conv_sequence, conv_step
from memcell.types import Array, Cell, CellSpec

__all__ = ["MambaCarry", "MambaParams", "MambaSpec", "mamba"]

# The paper's (and the Mamba code's) initial step sizes: Delta log-uniform in [DT_MIN, DT_MAX],
# floored at DT_FLOOR, stored as the bias of a softplus.
DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4


class MambaParams(NamedTuple):
    """Mamba params (``e = expand * h`` inner channels, ``n`` state size, ``r`` the rank of Delta's projection)."""

    w_x: Array  # [d, 2e] input projection, blocks x then z (the gate branch)
    conv_w: Array  # [k, e] depthwise causal convolution taps, oldest first (conv_w[k-1]: the current step)
    conv_b: Array  # [e]
    w_ssm: Array  # [e, r + 2n] projection of the convolved input to Delta's low-rank part, B and C
    w_dt: Array  # [r, e] Delta's up-projection (r = 0: Delta does not depend on the input)
    b_dt: Array  # [e] Delta's bias: Delta = softplus(... + b_dt)
    a_log: Array  # [e, n] A = -exp(a_log), the diagonal continuous-time state matrix
    d: Array  # [e] the skip connection D
    w_out: Array  # [e, h] output projection


class MambaCarry(NamedTuple):
    conv: Array  # [*b, k - 1, e] the convolution's window: the last k - 1 inputs x, oldest first
    h: Array  # [*b, e, n] the SSM state


@dataclasses.dataclass(frozen=True)
class MambaSpec(CellSpec):
    """What ``memcell.mamba`` declares: its options and its parallel form (``CellSpec.parallel``)."""

    state_size: int = 16
    conv_size: int = 4
    expand: int = 2
    dt_rank: int = 1


def _uniform(key, shape, bound, dtype):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def mamba(
    hidden_size: int,
    state_size: int = 16,
    conv_size: int = 4,
    expand: int = 2,
    dt_rank: int | None = None,
    *,
    param_dtype=jnp.float32,
    dtype=None,
) -> Cell:
    """Mamba's block (Gu and Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
    Spaces", section 3 and figure 3) as one cell.

    Equations, per step, for ``e = expand * h`` channels and ``n = state_size`` (``*`` elementwise,
    ``A`` and the state ``s`` are ``[e, n]``)::

        [x, z]  = u W_x                                  input u [d]; x, z [e]
        x~      = silu(b_conv + sum_j w_conv[j] * x_{t-k+1+j})   causal depthwise conv over the
                                                         window (k - 1 earlier x, in the carry)
        [d~, B, C] = x~ W_ssm                             d~ [r], B [n], C [n]: from the input
        Delta   = softplus(d~ W_dt + b_dt)               [e], the selective step size
        A       = -exp(a_log)                            [e, n], S4D-real init A[:, j] = -(j + 1)
        A_bar   = exp(Delta * A)                         zero-order hold (ZOH)
        B_bar   = (exp(Delta * A) - 1) / A * B           ZOH: (Delta A)^-1 (exp(Delta A) - I) Delta B
        s'      = A_bar * s + B_bar * x~                 [e, n]
        y       = (s' C + D * x~) * silu(z)              [e]; s' C sums over the n states
        out     = y W_out                                [h]

    ``B_bar`` is the paper's exact ZOH (its equation 4). The Mamba code's selective scan uses
    the first-order ``B_bar = Delta * B`` instead (equal to first order in ``Delta``; the
    difference is under 5% for ``Delta |A| < 0.1``, where the initial ``Delta`` and ``A`` put most
    channels). Initialisation, as in the paper's code: the projections and the convolution as
    PyTorch's ``nn.Linear`` / ``nn.Conv1d`` (``U(+-1/sqrt(fan_in))``, no bias on the projections),
    ``W_dt ~ U(+-r^-1/2)``, ``b_dt`` the inverse softplus of a ``Delta`` drawn log-uniformly in
    ``[0.001, 0.1]``, ``a_log = log(1..n)`` (S4D-real) on every channel, ``D = 1``.

    The carry ``MambaCarry(conv, h)`` holds the convolution's window ``[*b, k - 1, e]`` (raw ``x``
    inputs, oldest first) and the SSM state ``h = s`` ``[*b, e, n]``, both float32 (float64 for
    float64 params). The cell's spec declares a parallel form (``memcell.unroll(...,
    backend="parallel")``): the projections and the convolution of every step at once (over the
    carried window followed by the sequence, restarting at resets), then one diagonal linear scan
    (``memcell.parallel.linear_scan``) over the ``[e, n]`` state.

    Args:
      hidden_size: ``h``, the width of the block's output (Mamba's ``d_model``).
      state_size: ``n``, the SSM state size per channel (``d_state``).
      conv_size: ``k``, the convolution's width (``d_conv``); the carry keeps ``k - 1`` inputs.
      expand: ``e = expand * h`` inner channels.
      dt_rank: ``r``, the rank of Delta's projection (None: ``ceil(h / 16)``, the paper's "auto").
        ``0`` makes Delta independent of the input, ``Delta = softplus(b_dt)`` (learned, one a
        channel; ``B`` and ``C`` stay selective): the fixed-Delta ablation of the paper's section 4.6.
      param_dtype: dtype of the params.
      dtype: computation dtype of the projections (None: that of params and inputs); bfloat16
        accumulates in float32, and the carry and the SSM stay float32.

    Returns:
      A ``Cell`` with ``MambaParams``, ``MambaCarry`` and a ``MambaSpec``; outputs ``[*b, T, h]``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.mamba(8, state_size=4)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> carry, ys = memcell.unroll(cell, params, jnp.ones((2, 10, 3)))
      >>> ys.shape, carry.conv.shape, carry.h.shape
      ((2, 10, 8), (2, 3, 16), (2, 16, 4))
      >>> _, ys_par = memcell.unroll(cell, params, jnp.ones((2, 10, 3)), backend="parallel")
      >>> bool(jnp.allclose(ys, ys_par, atol=1e-5))
      True
    """
    H = c.check_positive_int("hidden_size", hidden_size)
    N = c.check_positive_int("state_size", state_size)
    K = c.check_positive_int("conv_size", conv_size)
    E = H * c.check_positive_int("expand", expand)
    if dt_rank is None:
        R = math.ceil(H / 16)
    elif isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 0:
        raise ValueError(f"dt_rank must be None or an int >= 0, got {dt_rank!r}")
    else:
        R = dt_rank
    param_dtype = c.check_float_dtype("param_dtype", param_dtype)
    dtype = c.check_float_dtype("dtype", dtype, allow_none=True)

    def init(key, input_size: int) -> MambaParams:
        D = c.check_input_size(input_size)
        k_in, k_cw, k_cb, k_x, k_dw, k_dt, k_out = jax.random.split(key, 7)
        dt = jnp.exp(jax.random.uniform(k_dt, (E,), jnp.float32, math.log(DT_MIN), math.log(DT_MAX)))
        dt = jnp.maximum(dt, DT_FLOOR)
        inv_softplus = dt + jnp.log(-jnp.expm1(-dt))
        a_log = jnp.broadcast_to(jnp.log(jnp.arange(1, N + 1, dtype=jnp.float32)), (E, N))
        return MambaParams(
            w_x=_uniform(k_in, (D, 2 * E), 1 / math.sqrt(D), param_dtype),
            conv_w=_uniform(k_cw, (K, E), 1 / math.sqrt(K), param_dtype),
            conv_b=_uniform(k_cb, (E,), 1 / math.sqrt(K), param_dtype),
            w_ssm=_uniform(k_x, (E, R + 2 * N), 1 / math.sqrt(E), param_dtype),
            w_dt=_uniform(k_dw, (R, E), 1 / math.sqrt(R) if R else 0.0, param_dtype),
            b_dt=inv_softplus.astype(param_dtype),
            a_log=a_log.astype(param_dtype),
            d=jnp.ones((E,), param_dtype),
            w_out=_uniform(k_out, (E, H), 1 / math.sqrt(E), param_dtype),
        )

    def initial_carry(params: MambaParams, batch_shape=()) -> MambaCarry:
        batch_shape = tuple(batch_shape)
        dt = c.carry_dtype(params.w_x)
        return MambaCarry(conv=jnp.zeros(batch_shape + (K - 1, E), dt), h=jnp.zeros(batch_shape + (E, N), dt))

    def project_in(params: MambaParams, u: Array, dt) -> tuple[Array, Array]:
        xz = c.linear(u, params.w_x, dtype).astype(dt)
        return xz[..., :E], xz[..., E:]

    def selective(params: MambaParams, x: Array) -> tuple[Array, Array, Array]:
        """``(A_bar, B_bar * x, C)`` from the convolved input ``x: [..., e]``: ``[..., e, n]`` twice, ``[..., n]``."""
        dbc = c.linear(x, params.w_ssm, dtype).astype(x.dtype)
        d_low, B, C = dbc[..., :R], dbc[..., R : R + N], dbc[..., R + N :]
        delta = jax.nn.softplus(c.linear(d_low, params.w_dt, dtype).astype(x.dtype) + params.b_dt.astype(x.dtype))
        A = -jnp.exp(params.a_log.astype(x.dtype))
        dA = delta[..., None] * A
        # (exp(dA) - 1) / A without cancellation for small Delta: expm1.
        return jnp.exp(dA), jnp.expm1(dA) / A * B[..., None, :] * x[..., None], C

    def project_out(params: MambaParams, s: Array, C: Array, x: Array, z: Array) -> Array:
        y = jnp.einsum("...en,...n->...e", s, C) + params.d.astype(x.dtype) * x
        return c.linear(y * jax.nn.silu(z), params.w_out, dtype)

    def step(params: MambaParams, carry: MambaCarry, u: Array) -> tuple[MambaCarry, Array]:
        x, z = project_in(params, u, carry.h.dtype)
        window, x = conv_step(carry.conv, x, params.conv_w, params.conv_b)
        x = jax.nn.silu(x)
        a, b, C = selective(params, x)
        s = a * carry.h + b
        return MambaCarry(conv=window, h=s), project_out(params, s, C, x, z)

    def parallel(params: MambaParams, us: Array, carry0: MambaCarry, valid, resets, *, chunk_size: int, linear_scan):
        x, z = project_in(params, us, carry0.h.dtype)
        window, x = conv_sequence(carry0.conv, x, params.conv_w, params.conv_b, valid, resets)
        x = jax.nn.silu(x)
        a, b, C = selective(params, x)  # [*b, T, e, n]: every step's coefficients at once
        h0 = carry0.h[..., None, :, :]
        if valid is not None:  # past a sequence's length the state stays: a = 1, b = 0
            v = valid[..., None, None]
            a, b = jnp.where(v, a, jnp.ones_like(a)), jnp.where(v, b, jnp.zeros_like(b))
        if resets is not None:  # a restart from the initial state: s_t = a_t h0 + b_t
            r = resets[..., None, None]
            a, b = jnp.where(r, jnp.zeros_like(a), a), jnp.where(r, b + a * h0, b)
        s = linear_scan(a, b, carry0.h, axis=-3)  # the path's scan, over the steps axis of [*b, T, e, n]
        return MambaCarry(conv=window, h=s[..., -1, :, :]), project_out(params, s, C, x, z)

    spec = MambaSpec(step=step, dtype=dtype, parallel=parallel, state_size=N, conv_size=K, expand=E // H, dt_rank=R)
    return Cell(init, initial_carry, step, spec)
