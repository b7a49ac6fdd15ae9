"""The real-gated linear recurrent unit, RG-LRU (De et al. 2024, Griffin)."""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from memcell._checks import check_in
from memcell.cells import _common as c
from memcell.types import Array, Cell, LinearSpec

# recurrentgemma bounds the derivative of sqrt(1 - a^2) at 1000 (its _MAX_SQRT_GRADIENT): as
# a -> 1 the exact derivative grows without bound, and is inf * 0 = nan where a rounds to 1.
_MAX_SQRT_GRADIENT = 1000.0


class RGLRUParams(NamedTuple):
    """RG-LRU params; the two gate blocks are fused in the order ``r, i`` (recurrence, input)."""

    w_gates: Array  # [h, 2h] gate kernels W_a, W_x, reading the (projected) input
    b_gates: Array  # [2h] gate biases b_a, b_x
    lam: Array  # [h] Lambda: a = exp(-c r softplus(Lambda)) = sigmoid(-Lambda)^(c r) (recurrentgemma's sign)
    w_in: Array | None = None  # [d, h] input projection (where input_size != h, or input_projection=True)


class RGLRUCarry(NamedTuple):
    h: Array  # [*b, h]


@dataclasses.dataclass(frozen=True)
class RGLRUSpec(LinearSpec):
    """What ``memcell.rglru`` declares for fast paths: a real linear recurrence and its options."""

    c: float = 8.0
    r_min: float = 0.9
    r_max: float = 0.999
    input_projection: bool | None = None


@jax.custom_jvp
def _sqrt_bounded(z: Array) -> Array:
    """``sqrt(z)`` whose derivative is capped at ``_MAX_SQRT_GRADIENT`` (exact for ``z >= 2.5e-7``)."""
    return jnp.sqrt(z)


@_sqrt_bounded.defjvp
def _sqrt_bounded_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    floor = 1.0 / (4.0 * _MAX_SQRT_GRADIENT**2)
    return _sqrt_bounded(z), 0.5 * dz / jnp.sqrt(jnp.maximum(z, floor))


def _check_rates(r_min, r_max) -> tuple[float, float]:
    r_min = check_in("r_min", r_min, 0.0, 1.0, lo_open=True, hi_open=True)
    r_max = check_in("r_max", r_max, 0.0, 1.0, lo_open=True, hi_open=True)
    if not r_min < r_max:
        raise ValueError(f"r_min must be below r_max, got r_min={r_min!r} and r_max={r_max!r}")
    return r_min, r_max


def rglru(
    hidden_size: int,
    *,
    c_scale: float = 8.0,
    r_min: float = 0.9,
    r_max: float = 0.999,
    input_projection: bool | None = None,
    kernel_init="lecun_normal",
    param_dtype=jnp.float32,
    dtype=None,
) -> Cell:
    """The real-gated linear recurrent unit of Griffin (De et al. 2024), the recurrence of
    Hawk, Griffin and RecurrentGemma.

    Equations, for ``x`` the input (of width ``h``)::

        r   = sigmoid(x W_a + b_a)                 recurrence gate
        i   = sigmoid(x W_x + b_x)                 input gate
        log a = -c * softplus(Lambda) * r          a = sigma(-Lambda)^(c r), in (0, 1)
        h'  = a * h + sqrt(1 - a^2) * (i * x)
        y   = h'

    ``c = 8`` (``c_scale``). ``sqrt(1 - a^2)`` is computed from ``log a`` as
    ``sqrt(-expm1(2 log a))`` (no cancellation when ``a`` is near 1), with its derivative capped
    at 1000 as in recurrentgemma (so that ``a`` rounding to 1 gives no nan; exact wherever
    ``1 - a^2 >= 2.5e-7``). The gate matrices are dense, as in the paper's equations
    (recurrentgemma uses block-diagonal ones, one block a head).

    ``Lambda`` is initialised as the paper says: ``a^c`` (the decay at ``r = 1``) uniform in
    ``[r_min, r_max] = [0.9, 0.999]``. (recurrentgemma's code instead draws ``a`` itself on that
    ring, uniform in area: pass ``r_min=0.9**8, r_max=0.999**8`` for a similar range.)

    Input width: the paper's RG-LRU reads an input of the hidden width (in Griffin it follows a
    linear layer and a convolution). For any other width the input is first mapped by a learned
    ``w_in: [d, h]`` (no bias, ``kernel_init``), ``x <- x w_in``, and everything above reads the
    projected ``x``; so the cell takes any ``input_size``, like the other cells. By default
    (``input_projection=None``) the projection exists exactly when ``input_size != hidden_size``;
    ``True`` always learns one, ``False`` never does (``init`` then refuses another input size).

    Resets: ``memcell.unroll(..., resets=...)`` restarts the carry from the initial carry (zeros
    by default) before a flagged step: Griffin's segment reset, which zeroes ``a`` at a segment
    start. One difference: recurrentgemma also skips the ``sqrt(1 - a^2)`` factor on the first
    token of each segment (and of each sequence); this cell applies the paper's equation at
    every step.

    The cell declares an ``RGLRUSpec`` (a ``LinearSpec`` with ``a`` as above and
    ``b = sqrt(1 - a^2) * (i * x)``), so ``memcell.unroll(..., backend="parallel")`` may run it.

    Args:
      hidden_size: number of hidden units ``h``.
      c_scale: the constant ``c`` (8 in the paper), ``> 0``.
      r_min, r_max: the range of the initial ``a^c``, ``0 < r_min < r_max < 1``.
      input_projection: ``None`` (project only when ``input_size != hidden_size``), ``True`` or
        ``False``: whether to learn an input projection ``w_in`` (see above).
      kernel_init: initialiser of the gate kernels (and of ``w_in``), as for ``memcell.rnn``.
      param_dtype: dtype of the params.
      dtype: computation dtype of the matmuls (None: that of params and inputs); bfloat16
        accumulates in float32, and the carry stays float32.

    Returns:
      A ``Cell`` with ``RGLRUParams`` and ``RGLRUCarry``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.rglru(8)
      >>> params = cell.init(jax.random.key(0), input_size=8)
      >>> carry, ys = memcell.unroll(cell, params, jnp.ones((2, 10, 8)))
      >>> ys.shape
      (2, 10, 8)
      >>> params.w_in is None, cell.init(jax.random.key(0), input_size=3).w_in.shape
      (True, (3, 8))
    """
    hidden_size = c.check_positive_int("hidden_size", hidden_size)
    c_scale = check_in("c_scale", c_scale, 0.0, math.inf, lo_open=True, hi_open=True)
    r_min, r_max = _check_rates(r_min, r_max)
    if input_projection is not None:
        input_projection = c.check_bool("input_projection", input_projection)
    k_init = c.resolve_init("kernel_init", kernel_init, hidden_size)
    param_dtype = c.check_float_dtype("param_dtype", param_dtype)
    dtype = c.check_float_dtype("dtype", dtype, allow_none=True)
    H = hidden_size

    def init(key, input_size: int) -> RGLRUParams:
        input_size = c.check_input_size(input_size)
        if input_projection is False and input_size != H:
            raise ValueError(
                f"input_size must equal hidden_size={H} with input_projection=False (the RG-LRU gates "
                f"its input elementwise, i * x), got {input_size}"
            )
        project = input_size != H if input_projection is None else input_projection
        k_g, k_lam, k_in = jax.random.split(key, 3)
        draw = jnp.promote_types(param_dtype, jnp.float32)
        a_c = jax.random.uniform(k_lam, (H,), draw, r_min, r_max)
        sp = -jnp.log(a_c) / c_scale  # softplus(Lambda), so that a^c = exp(-c softplus(Lambda)) = a_c
        lam = sp + jnp.log(-jnp.expm1(-sp))  # the inverse of softplus, stable for small sp
        return RGLRUParams(
            w_gates=c.block_matrix(k_g, k_init, H, H, 2, param_dtype),
            b_gates=jnp.zeros((2 * H,), param_dtype),
            lam=lam.astype(param_dtype),
            w_in=c.block_matrix(k_in, k_init, input_size, H, 1, param_dtype) if project else None,
        )

    def initial_carry(params: RGLRUParams, batch_shape=()) -> RGLRUCarry:
        return RGLRUCarry(jnp.zeros(tuple(batch_shape) + (H,), c.carry_dtype(params.lam)))

    def terms(params: RGLRUParams, x: Array) -> tuple[Array, Array]:
        """``(log a, sqrt(1 - a^2) * i * x)`` for ``x: [..., d]``, in float32 or wider."""
        if params.w_in is not None:
            x = c.linear(x, params.w_in, dtype)
        r, i = jnp.split(jax.nn.sigmoid(c.linear(x, params.w_gates, dtype) + params.b_gates), 2, axis=-1)
        acc = r.dtype
        log_a = -c_scale * jax.nn.softplus(params.lam.astype(acc)) * r
        return log_a, _sqrt_bounded(-jnp.expm1(2.0 * log_a)) * (i * x.astype(acc))

    def step(params: RGLRUParams, carry: RGLRUCarry, x: Array) -> tuple[RGLRUCarry, Array]:
        log_a, b = terms(params, x)
        h = (jnp.exp(log_a) * carry.h + b).astype(carry.h.dtype)
        return RGLRUCarry(h), h

    def coefficients(params: RGLRUParams, xs: Array) -> tuple[Array, Array]:
        log_a, b = terms(params, xs)
        carry = c.carry_dtype(params.lam)
        return jnp.exp(log_a).astype(carry), b.astype(carry)

    def readout(params: RGLRUParams, hs: Array, xs: Array) -> Array:
        del params, xs
        return hs

    spec = RGLRUSpec(step=step, dtype=dtype, coefficients=coefficients, readout=readout, log_space=False,
                     c=c_scale, r_min=r_min, r_max=r_max, input_projection=input_projection)
    return Cell(init, initial_carry, step, spec)
