"""The xLSTM cells (Beck et al. 2024): sLSTM (scalar memory, recurrent) and mLSTM (matrix memory, linear).

Both use an exponential input gate, made safe by a stabiliser state ``m``: the carry holds the
cell and normaliser states scaled by ``exp(-m)``, with ``m`` the running maximum of the log gate
products, so every ``exp`` in a step has a non-positive argument. The outputs do not depend on
``m`` (it cancels between numerator and denominator); it is there only for the float range.
"""

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from memcell.cells import _common as c
from memcell.types import Array, Cell, CellSpec

# ----------------------------------------------------------------------------- shared


def _check_heads(hidden_size: int, num_heads) -> int:
    num_heads = c.check_positive_int("num_heads", num_heads)
    if hidden_size % num_heads:
        raise ValueError(f"num_heads must divide hidden_size, got num_heads={num_heads} and hidden_size={hidden_size}")
    return num_heads


def _check_bias(name: str, value) -> tuple[float, float]:
    """A float (every unit) or a pair ``(first, last)`` spread linearly over heads or units."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), float(value)
    if (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return float(value[0]), float(value[1])
    raise ValueError(f"{name} must be a float or a pair of floats (first, last), got {value!r}")


def _spread(bias: tuple[float, float], n: int, dtype) -> Array:
    return jnp.linspace(bias[0], bias[1], n, dtype=jnp.float32).astype(dtype)


def _stabilised_gates(log_i: Array, log_f: Array, m: Array, fresh: Array | None = None):
    """``m' = max(log f + m, log i)`` and the stabilised gates ``i' = exp(log i - m')``,
    ``f' = exp(log f + m - m')``: both exponents are <= 0, so nothing overflows. Where ``fresh``
    (a normaliser still exactly zero: no input seen yet) ``m' = log i``, so ``i' = 1`` and the
    first input is never lost to underflow (the xLSTM reference code does this when all of ``n`` is
    zero; here each unit on its own)."""
    m_new = jnp.maximum(log_f + m, log_i)
    log_f_scaled = log_f + m - m_new
    if fresh is not None:  # there f' multiplies zeros, and log f + m - log i could overflow exp
        m_new = jnp.where(fresh, log_i, m_new)
        log_f_scaled = jnp.where(fresh, -jnp.inf, log_f_scaled)
    return jnp.exp(log_i - m_new), jnp.exp(log_f_scaled), m_new


# ----------------------------------------------------------------------------- sLSTM


class SLSTMParams(NamedTuple):
    """sLSTM params; gate blocks in the order ``i, f, z, o`` (the xLSTM code's)."""

    w_x: Array  # [d, 4h], each gate block [d, h]
    w_h: Array  # [heads, h/heads, 4h/heads]: block-diagonal recurrence, per head gate blocks i, f, z, o
    b: Array  # [4h]


class SLSTMCarry(NamedTuple):
    c: Array  # [*b, h] cell state, scaled by exp(-m)
    n: Array  # [*b, h] normaliser state, scaled by exp(-m)
    m: Array  # [*b, h] stabiliser (log scale of c and n)
    h: Array  # [*b, h] hidden output


@dataclasses.dataclass(frozen=True)
class SLSTMSpec(CellSpec):
    """What ``memcell.slstm`` declares: the options its step was built with (no fast path runs it yet),
    and ``log_scale``, ``(stabiliser, scaled fields)`` of its carry, for zoneout (``memcell.regularize``)."""

    num_heads: int = 1
    forget_gate: str = "sigmoid"
    # c and n are stored scaled by exp(-m): zoneout keeps or mixes (c, n, m) as one state (memcell.regularize)
    log_scale: tuple = ("m", ("c", "n"))


def slstm(
    hidden_size: int,
    *,
    num_heads: int = 1,
    forget_gate: str = "sigmoid",
    forget_bias: float | tuple[float, float] = 1.0,
    kernel_init="lecun_normal",
    recurrent_init="orthogonal",
    recurrent_scale: float = 1.0,
    param_dtype=jnp.float32,
    dtype=None,
) -> Cell:
    """The sLSTM of xLSTM (Beck et al. 2024): scalar memory, exponential gating, head-wise recurrence.

    Equations, for ``z~ = x W + h U + b`` split into gate blocks (``U`` block-diagonal by head)::

        log i = z~_i                                      exponential input gate
        log f = log_sigmoid(z~_f)    (forget_gate="sigmoid", default)
        log f = z~_f                 (forget_gate="exp")
        z  = tanh(z~_z),  o = sigmoid(z~_o)
        m' = max(log f + m, log i)                        stabiliser (m' = log i, f' = 0 where n = 0)
        i' = exp(log i - m'),  f' = exp(log f + m - m')
        c' = f' c + i' z,  n' = f' n + i'
        h' = o * c' / n'

    This is the paper's ``c_t = f c + i z``, ``n_t = f n + i``, ``h = o c / n`` with ``c`` and
    ``n`` stored scaled by ``exp(-m)`` (the ratio ``c / n`` is unchanged), so no ``exp``
    overflows however large the pre-activations. The default sigmoid forget gate is the xLSTM
    code's default (``log f = logsigmoid``); the paper allows either. ``y = h'``.

    Args:
      hidden_size: number of hidden units ``h``.
      num_heads: heads of the block-diagonal recurrence; must divide ``hidden_size``.
      forget_gate: ``"sigmoid"`` or ``"exp"``, as above.
      forget_bias: initial forget-gate bias: a float, or ``(first, last)`` spread linearly over units.
      kernel_init, recurrent_init, recurrent_scale: as for ``memcell.rnn``; each gate block of
        each head is initialised on its own.
      param_dtype: dtype of the params.
      dtype: computation dtype of the matmuls (None: that of params and inputs); bfloat16
        accumulates in float32, and the carry stays float32.

    Returns:
      A ``Cell`` with ``SLSTMParams`` and ``SLSTMCarry``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.slstm(8, num_heads=2)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> params.w_h.shape   # one [4, 16] recurrent block a head
      (2, 4, 16)
      >>> carry, ys = memcell.unroll(cell, params, jnp.ones((5, 3)))
      >>> ys.shape, carry.m.shape
      ((5, 8), (8,))
    """
    H = c.check_positive_int("hidden_size", hidden_size)
    heads = _check_heads(H, num_heads)
    c.check_choice("forget_gate", forget_gate, {"sigmoid", "exp"})
    bias_f = _check_bias("forget_bias", forget_bias)
    param_dtype = c.check_float_dtype("param_dtype", param_dtype)
    dtype = c.check_float_dtype("dtype", dtype, allow_none=True)
    k_init = c.resolve_init("kernel_init", kernel_init, H)
    r_init = c.resolve_init("recurrent_init", recurrent_init, H)
    dh = H // heads

    def init(key, input_size: int) -> SLSTMParams:
        input_size = c.check_input_size(input_size)
        kx, kh = jax.random.split(key)
        w_h = [c.block_matrix(k, r_init, dh, dh, 4, param_dtype, recurrent_scale) for k in jax.random.split(kh, heads)]
        zeros = jnp.zeros((H,), param_dtype)
        return SLSTMParams(
            w_x=c.block_matrix(kx, k_init, input_size, H, 4, param_dtype),
            w_h=jnp.stack(w_h),
            b=jnp.concatenate([zeros, _spread(bias_f, H, param_dtype), zeros, zeros]),
        )

    def initial_carry(params: SLSTMParams, batch_shape=()) -> SLSTMCarry:
        zeros = jnp.zeros(tuple(batch_shape) + (H,), c.carry_dtype(params.w_x))
        return SLSTMCarry(c=zeros, n=zeros, m=zeros, h=zeros)

    def recurrent(params: SLSTMParams, h: Array) -> Array:
        """``h U`` with ``U`` block-diagonal: ``[*b, h] -> [*b, 4h]`` in gate-major order."""
        hh = h.reshape(h.shape[:-1] + (heads, 1, dh))
        z = c.linear(hh, params.w_h, dtype)[..., 0, :]  # [*b, heads, 4 dh]: per head i, f, z, o
        z = z.reshape(h.shape[:-1] + (heads, 4, dh))
        return jnp.swapaxes(z, -3, -2).reshape(h.shape[:-1] + (4 * H,))

    def step(params: SLSTMParams, carry: SLSTMCarry, x: Array) -> tuple[SLSTMCarry, Array]:
        pre = c.linear(x, params.w_x, dtype) + recurrent(params, carry.h) + params.b
        zi, zf, zz, zo = jnp.split(pre.astype(carry.c.dtype), 4, axis=-1)
        log_f = jax.nn.log_sigmoid(zf) if forget_gate == "sigmoid" else zf
        i, f, m = _stabilised_gates(zi, log_f, carry.m, fresh=carry.n == 0)
        c_new = f * carry.c + i * jnp.tanh(zz)
        n_new = f * carry.n + i
        h_new = jax.nn.sigmoid(zo) * (c_new / n_new)
        new = SLSTMCarry(c=c_new, n=n_new, m=m, h=h_new.astype(carry.h.dtype))
        return new, new.h

    spec = SLSTMSpec(step=step, dtype=dtype, num_heads=heads, forget_gate=forget_gate)
    return Cell(init, initial_carry, step, spec)


# ----------------------------------------------------------------------------- mLSTM


class MLSTMParams(NamedTuple):
    """mLSTM params; output blocks of ``w_x`` and ``b`` in the order ``q, k, v, o`` (``h`` each),
    then the input and forget gate pre-activations (one a head each)."""

    w_x: Array  # [d, 4h + 2 heads]
    b: Array  # [4h + 2 heads]


class MLSTMCarry(NamedTuple):
    C: Array  # [*b, heads, dk, dv] matrix memory (sum of i k v^T), scaled by exp(-m)
    n: Array  # [*b, heads, dk] normaliser (sum of i k), scaled by exp(-m)
    m: Array  # [*b, heads] stabiliser


class MLSTMGates(NamedTuple):
    """The input-only part of an mLSTM step, for one step or all steps at once (float32 or wider)."""

    q: Array  # [*b, heads, dk]
    k: Array  # [*b, heads, dk], already scaled by 1/sqrt(dk)
    v: Array  # [*b, heads, dv]
    log_i: Array  # [*b, heads]
    log_f: Array  # [*b, heads] (log_sigmoid, <= 0)
    o: Array  # [*b, h] output gate


@dataclasses.dataclass(frozen=True)
class MLSTMSpec(CellSpec):
    """What ``memcell.mlstm`` declares, so that ``memcell.parallel.mlstm.chunkwise`` can run it.

    Attributes:
      num_heads: the number of heads; ``dk = dv = h / num_heads``.
      gates: ``gates(params, xs) -> MLSTMGates`` for inputs ``[*b, d]`` or ``[*b, T, d]`` (any
        leading axes): everything a step computes from its input alone. The step itself uses it.
      log_scale: ``(stabiliser, scaled fields)`` of the carry, for zoneout (``memcell.regularize``).
    """

    num_heads: int = 1
    # C and n are stored scaled by exp(-m): zoneout keeps or mixes (C, n, m) as one state (memcell.regularize)
    log_scale: tuple = ("m", ("C", "n"))
    gates: Callable = dataclasses.field(default=None, repr=False, compare=False)


def _floor(m: Array) -> Array:
    """``exp(-m)``, capped below the dtype's largest number: where ``exp(-m)`` would overflow
    (``m < -88`` in float32, after inputs that drove log i far below zero) the true output is below
    ``|num| / 1e38`` anyway, and an infinite floor made the gradient NaN (``0 * inf``)."""
    cap = float(np.log(np.finfo(m.dtype).max)) - 1.0
    return jnp.exp(jnp.minimum(-m, cap))


def _readout(g: MLSTMGates, C: Array, n: Array, m: Array) -> Array:
    """``h = o * (q C) / max(|q . n|, exp(-m))``, flattened over heads: ``[*b, h]``.

    ``C``, ``n`` are the stabilised states after the step (``C: [*b, heads, dk, dv]``), so this is
    ``C q / max(|n . q|, 1)`` of the unscaled states.
    """
    num = jnp.einsum("...k,...kv->...v", g.q, C)
    den = jnp.maximum(jnp.abs(jnp.sum(g.q * n, axis=-1)), _floor(m))
    h = num / den[..., None]
    return g.o * h.reshape(h.shape[:-2] + (-1,))


def mlstm(
    hidden_size: int,
    *,
    num_heads: int = 1,
    forget_bias: float | tuple[float, float] = (3.0, 6.0),
    kernel_init="lecun_normal",
    param_dtype=jnp.float32,
    dtype=None,
) -> Cell:
    """The mLSTM of xLSTM (Beck et al. 2024): a matrix memory per head, written with exponential gating.

    Equations, per head (``dk = dv = h / num_heads``; every gate from the input only)::

        q = x W_q + b_q,  k = (x W_k + b_k) / sqrt(dk),  v = x W_v + b_v
        log i = x w_i + b_i                               exponential input gate (a scalar a head)
        log f = log_sigmoid(x w_f + b_f)                  sigmoid forget gate (a scalar a head)
        o = sigmoid(x W_o + b_o)
        m' = max(log f + m, log i)
        i' = exp(log i - m'),  f' = exp(log f + m - m')
        C' = f' C + i' k v^T,  n' = f' n + i' k           (C stored [dk, dv])
        h' = o * (q C') / max(|q . n'|, exp(-m'))          (exp(-m') capped at the dtype's max / e)

    That is the paper's ``C_t = f C + i v k^T``, ``n_t = f n + i k``,
    ``h~ = C q / max(|n^T q|, 1)`` with ``C`` and ``n`` stored scaled by ``exp(-m)``. The carry
    update is linear in the carry, so a chunkwise parallel form
    (``memcell.parallel.mlstm.chunkwise``) computes the same values; this step is its reference.
    ``y = h'``.

    Args:
      hidden_size: number of hidden units ``h`` (the width of ``q``, ``k``, ``v`` and of ``y``).
      num_heads: number of heads; must divide ``hidden_size``.
      forget_bias: initial forget-gate bias: a float, or ``(first, last)`` spread linearly over
        the heads (default ``(3, 6)``, the xLSTM code's: forget gates start near 1, each head
        with its own timescale). Input-gate and other biases start at zero.
      kernel_init: initialiser of ``w_x`` (as for ``memcell.rnn``); each block on its own.
      param_dtype: dtype of the params.
      dtype: computation dtype of the projection (None: that of params and inputs); bfloat16
        accumulates in float32, and the carry stays float32.

    Returns:
      A ``Cell`` with ``MLSTMParams`` and ``MLSTMCarry``, and an ``MLSTMSpec``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.mlstm(8, num_heads=2)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> carry, ys = memcell.unroll(cell, params, jnp.ones((5, 3)))
      >>> ys.shape, carry.C.shape, carry.n.shape, carry.m.shape
      ((5, 8), (2, 4, 4), (2, 4), (2,))
    """
    H = c.check_positive_int("hidden_size", hidden_size)
    heads = _check_heads(H, num_heads)
    bias_f = _check_bias("forget_bias", forget_bias)
    param_dtype = c.check_float_dtype("param_dtype", param_dtype)
    dtype = c.check_float_dtype("dtype", dtype, allow_none=True)
    k_init = c.resolve_init("kernel_init", kernel_init, H)
    dk = H // heads

    def init(key, input_size: int) -> MLSTMParams:
        input_size = c.check_input_size(input_size)
        kx, kg = jax.random.split(key)
        w = c.block_matrix(kx, k_init, input_size, H, 4, param_dtype)
        w_gates = c.block_matrix(kg, k_init, input_size, heads, 2, param_dtype)
        b = jnp.zeros((4 * H + heads,), param_dtype)
        return MLSTMParams(
            w_x=jnp.concatenate([w, w_gates], axis=-1),
            b=jnp.concatenate([b, _spread(bias_f, heads, param_dtype)]),
        )

    def initial_carry(params: MLSTMParams, batch_shape=()) -> MLSTMCarry:
        batch_shape = tuple(batch_shape)
        dt = c.carry_dtype(params.w_x)
        return MLSTMCarry(
            C=jnp.zeros(batch_shape + (heads, dk, dk), dt),
            n=jnp.zeros(batch_shape + (heads, dk), dt),
            m=jnp.zeros(batch_shape + (heads,), dt),
        )

    def gates(params: MLSTMParams, x: Array) -> MLSTMGates:
        z = c.linear(x, params.w_x, dtype) + params.b  # float32 (or wider) accumulation
        per_head = lambda a: a.reshape(a.shape[:-1] + (heads, dk))
        q, k, v, o = (z[..., j * H : (j + 1) * H] for j in range(4))
        zi, zf = z[..., 4 * H : 4 * H + heads], z[..., 4 * H + heads :]
        return MLSTMGates(
            q=per_head(q), k=per_head(k) / math.sqrt(dk), v=per_head(v),
            log_i=zi, log_f=jax.nn.log_sigmoid(zf), o=jax.nn.sigmoid(o),
        )

    def step(params: MLSTMParams, carry: MLSTMCarry, x: Array) -> tuple[MLSTMCarry, Array]:
        g = jax.tree.map(lambda a: a.astype(carry.C.dtype), gates(params, x))
        i, f, m = _stabilised_gates(g.log_i, g.log_f, carry.m)
        C = f[..., None, None] * carry.C + i[..., None, None] * (g.k[..., :, None] * g.v[..., None, :])
        n = f[..., None] * carry.n + i[..., None] * g.k
        return MLSTMCarry(C=C, n=n, m=m), _readout(g, C, n, m)

    return Cell(init, initial_carry, step, MLSTMSpec(step=step, dtype=dtype, num_heads=heads, gates=gates))
