"""The linear recurrent unit, LRU (Orvieto et al. 2023): a complex diagonal linear recurrence."""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from memcell._checks import check_in
from memcell.cells import _common as c
from memcell.types import Array, Cell, LinearSpec


class LRUParams(NamedTuple):
    """LRU params, all real (so optimisers and checkpointers see real arrays): the complex
    ``B`` and ``C`` are stored as their real and imaginary parts."""

    nu_log: Array  # [h] |lambda| = exp(-exp(nu_log))
    theta_log: Array  # [h] arg(lambda) = exp(theta_log)
    gamma_log: Array  # [h] input normalisation, gamma = exp(gamma_log)
    b_re: Array  # [d, h] Re(B), laid out for u @ B
    b_im: Array  # [d, h] Im(B)
    c_re: Array  # [h, d] Re(C), laid out for x @ C
    c_im: Array  # [h, d] Im(C)
    d: Array  # [d] the skip connection D u


class LRUCarry(NamedTuple):
    x: Array  # [*b, h] complex64 (complex128 for float64 params)


@dataclasses.dataclass(frozen=True)
class LRUSpec(LinearSpec):
    """What ``memcell.lru`` declares for fast paths: a complex linear recurrence and its options."""

    r_min: float = 0.0
    r_max: float = 1.0
    max_phase: float = 2 * math.pi


def complex_dtype(w: Array) -> jnp.dtype:
    """complex64 for float32 and narrower params, complex128 for float64 ones."""
    return jnp.promote_types(c.carry_dtype(w), jnp.complex64)


def check_real_input(name: str, x) -> None:
    """Refuses complex (or integer) inputs at trace time: a dtype is static under jit."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a real floating-point array, got dtype {dtype}")


def _check_ring(r_min, r_max, max_phase) -> tuple[float, float, float]:
    r_min = check_in("r_min", r_min, 0.0, 1.0, hi_open=True)
    r_max = check_in("r_max", r_max, 0.0, 1.0, lo_open=True)
    if not r_min < r_max:
        raise ValueError(f"r_min must be below r_max, got r_min={r_min!r} and r_max={r_max!r}")
    ok = isinstance(max_phase, (int, float, np.integer, np.floating)) and not isinstance(max_phase, bool)
    if not (ok and math.isfinite(max_phase) and max_phase > 0):
        raise ValueError(f"max_phase must be a finite number > 0 (radians), got {max_phase!r}")
    return r_min, r_max, float(max_phase)


def ring_init(key, hidden_size: int, r_min: float, r_max: float, max_phase: float, dtype) -> tuple[Array, Array]:
    """``(nu_log, theta_log)`` with ``lambda`` uniform on the ring ``r_min <= |lambda| < r_max``
    (uniform in area: ``|lambda|^2 ~ U[r_min^2, r_max^2)``) and ``arg(lambda) ~ U[0, max_phase)``.

    Drawn in float32 at least; ``|lambda|^2`` and the phase are kept off 0 and 1 by a float
    ulp so that every param is finite (``|lambda| = 1`` would need ``nu_log = -inf``).
    """
    draw = jnp.promote_types(dtype, jnp.float32)
    k_r, k_p = jax.random.split(key)
    tiny, below_one = np.finfo(draw).tiny, np.nextafter(np.array(1, draw), np.array(0, draw))
    u = jax.random.uniform(k_r, (hidden_size,), draw)
    r2 = jnp.clip(r_min**2 + u * (r_max**2 - r_min**2), tiny, below_one)
    nu_log = jnp.log(-0.5 * jnp.log(r2))  # |lambda| = exp(-nu), nu = -log(r2) / 2
    phase = jnp.maximum(max_phase * jax.random.uniform(k_p, (hidden_size,), draw), tiny)
    return nu_log.astype(dtype), jnp.log(phase).astype(dtype)


def lru(
    hidden_size: int,
    *,
    r_min: float = 0.0,
    r_max: float = 1.0,
    max_phase: float = 2 * math.pi,
    param_dtype=jnp.float32,
    dtype=None,
) -> Cell:
    """The linear recurrent unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks
    for Long Sequences"): a complex diagonal linear recurrence with a real readout.

    Equations, in the paper's names (``u`` the input, ``x`` the complex state)::

        lambda = exp(-exp(nu_log) + i exp(theta_log))      diagonal, |lambda| < 1 always
        gamma  = exp(gamma_log)                            initialised to sqrt(1 - |lambda|^2)
        x'     = lambda * x + gamma * (u B)                B complex [d, h]
        y      = Re(x' C) + D * u                          C complex [h, d], D real [d]

    The output has the input's width ``d``, as in the paper (the LRU is a residual-style
    sequence layer: ``D`` is a vector, the skip connection of each input feature). The
    initialisation is the paper's: ``lambda`` uniform on the ring ``r_min <= |lambda| < r_max``
    (uniform in area, ``|lambda|^2 ~ U[r_min^2, r_max^2)``), phase ``~ U[0, max_phase)``,
    ``gamma = sqrt(1 - |lambda|^2)`` (learned afterwards on its own, as in the paper),
    ``B ~ N(0, 1/(2d))`` in each of its real and imaginary parts, ``C ~ N(0, 1/h)`` likewise,
    ``D ~ N(0, 1)``. The paper's stable choices for long-range tasks are ``r_min=0.9,
    r_max=0.999, max_phase=pi/10``.

    Everything complex is computed in complex64 (complex128 for float64 params) with the
    matmuls accumulated in float32 or wider; the carry ``LRUCarry(x)`` is complex. Inputs must
    be real: the step refuses complex ``x`` (``memcell.unroll`` already refuses complex ``xs``).
    The cell declares an ``LRUSpec`` (a ``LinearSpec`` with complex ``a = lambda`` and
    ``b = gamma * (u B)``), so ``memcell.unroll(..., backend="parallel")`` may run it.

    Args:
      hidden_size: the number of complex state units ``h``.
      r_min: the smallest initial ``|lambda|``, in ``[0, 1)``.
      r_max: the largest initial ``|lambda|``, in ``(0, 1]`` and above ``r_min``: ``|lambda| > 1``
        would make the recurrence explode and ``sqrt(1 - |lambda|^2)`` undefined, and the
        parametrisation cannot represent it anyway. Draws stay strictly below ``r_max`` (and
        below 1), so ``r_max=1`` is allowed as the paper's default.
      max_phase: the largest initial phase of ``lambda``, in radians (``> 0``, finite).
      param_dtype: dtype of the params.
      dtype: computation dtype of the input and output matmuls (None: that of params and
        inputs); bfloat16 accumulates in float32 and the carry stays complex64.

    Returns:
      A ``Cell`` with ``LRUParams`` and ``LRUCarry``; outputs ``[*b, T, d]``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.lru(16, r_min=0.9, r_max=0.999)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> carry, ys = memcell.unroll(cell, params, jnp.ones((2, 10, 3)))
      >>> ys.shape, carry.x.shape, carry.x.dtype      # outputs have the input's width
      ((2, 10, 3), (2, 16), dtype('complex64'))
    """
    hidden_size = c.check_positive_int("hidden_size", hidden_size)
    r_min, r_max, max_phase = _check_ring(r_min, r_max, max_phase)
    param_dtype = c.check_float_dtype("param_dtype", param_dtype)
    dtype = c.check_float_dtype("dtype", dtype, allow_none=True)
    H = hidden_size

    def init(key, input_size: int) -> LRUParams:
        D = c.check_input_size(input_size)
        k_ring, kb_re, kb_im, kc_re, kc_im, k_d = jax.random.split(key, 6)
        nu_log, theta_log = ring_init(k_ring, H, r_min, r_max, max_phase, param_dtype)
        nu = jnp.exp(nu_log.astype(jnp.float32))
        # 1 - |lambda|^2 = -expm1(-2 nu): no cancellation when |lambda| is close to 1.
        gamma_log = 0.5 * jnp.log(-jnp.expm1(-2.0 * nu))
        normal = lambda k, shape, scale: (jax.random.normal(k, shape, jnp.float32) * scale).astype(param_dtype)
        return LRUParams(
            nu_log=nu_log,
            theta_log=theta_log,
            gamma_log=gamma_log.astype(param_dtype),
            b_re=normal(kb_re, (D, H), 1.0 / math.sqrt(2 * D)),
            b_im=normal(kb_im, (D, H), 1.0 / math.sqrt(2 * D)),
            c_re=normal(kc_re, (H, D), 1.0 / math.sqrt(H)),
            c_im=normal(kc_im, (H, D), 1.0 / math.sqrt(H)),
            d=normal(k_d, (D,), 1.0),
        )

    def initial_carry(params: LRUParams, batch_shape=()) -> LRUCarry:
        return LRUCarry(jnp.zeros(tuple(batch_shape) + (H,), complex_dtype(params.nu_log)))

    def lam(params: LRUParams) -> Array:
        real = jnp.promote_types(params.nu_log.dtype, jnp.float32)
        nu, theta = jnp.exp(params.nu_log.astype(real)), jnp.exp(params.theta_log.astype(real))
        return jax.lax.complex(jnp.exp(-nu) * jnp.cos(theta), jnp.exp(-nu) * jnp.sin(theta))

    def drive(params: LRUParams, u: Array) -> Array:
        """``gamma * (u B)`` for ``u: [..., d]``, complex."""
        gamma = jnp.exp(params.gamma_log.astype(jnp.promote_types(params.gamma_log.dtype, jnp.float32)))
        bu = jax.lax.complex(c.linear(u, params.b_re, dtype), c.linear(u, params.b_im, dtype))
        return gamma * bu

    def out(params: LRUParams, x: Array, u: Array) -> Array:
        """``Re(x C) + D * u``: Re(x C) = Re(x) Re(C) - Im(x) Im(C)."""
        re = c.linear(jnp.real(x), params.c_re, dtype) - c.linear(jnp.imag(x), params.c_im, dtype)
        return re + params.d.astype(re.dtype) * u.astype(re.dtype)

    def step(params: LRUParams, carry: LRUCarry, u: Array) -> tuple[LRUCarry, Array]:
        check_real_input("x (the step's input)", u)
        x = (lam(params) * carry.x + drive(params, u)).astype(carry.x.dtype)
        return LRUCarry(x), out(params, x, u)

    def coefficients(params: LRUParams, xs: Array) -> tuple[Array, Array]:
        check_real_input("xs", xs)
        b = drive(params, xs).astype(complex_dtype(params.nu_log))
        return jnp.broadcast_to(lam(params).astype(b.dtype), b.shape), b

    def readout(params: LRUParams, hs: Array, xs: Array) -> Array:
        return out(params, hs, xs)

    spec = LRUSpec(step=step, dtype=dtype, coefficients=coefficients, readout=readout, log_space=False,
                   r_min=r_min, r_max=r_max, max_phase=max_phase)
    return Cell(init, initial_carry, step, spec)
