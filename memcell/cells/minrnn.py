"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201).

Both cells compute their gates from the input alone, so the carry update is linear in the
carry, ``h_t = a_t * h_{t-1} + b_t``, and the cells declare ``(a, b)`` for all steps at once
(a ``LinearSpec``) for the parallel scan. The step is the reference: the same recurrence, one
step at a time, in linear space, in both modes.

Numerics, shared by both cells. Every gate-derived coefficient is written without cancellation:
``1 - z`` is ``sigmoid(-k)`` (not ``1 - sigmoid(k)``, which is 0 in float32 once ``z`` is within
6e-8 of 1), ``log z = -softplus(-k)`` and ``log(1 - z) = -softplus(k)``, and minLSTM's
normalised gates are ``f' = sigmoid(-d)``, ``i' = sigmoid(d)`` (``log f' = -softplus(d)``,
``log i' = -softplus(-d)``) with ``d = log i - log f = softplus(-k_f) - softplus(-k_i)``.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from memcell.cells import _common as c
from memcell.types import Array, Cell, LinearSpec

__all__ = [
    "MinGRUCarry", "MinGRUParams", "MinGRUSpec", "MinLSTMCarry", "MinLSTMParams", "MinLSTMSpec", "mingru", "minlstm",
]


class MinGRUParams(NamedTuple):
    """minGRU params; blocks fused along the last axis in the order ``z, h~``."""

    w_x: Array  # [d, 2h]
    b: Array  # [2h]


class MinGRUCarry(NamedTuple):
    h: Array  # [*b, h]


class MinLSTMParams(NamedTuple):
    """minLSTM params; blocks fused along the last axis in the order ``f, i, h~``."""

    w_x: Array  # [d, 3h]
    b: Array  # [3h]


class MinLSTMCarry(NamedTuple):
    h: Array  # [*b, h]


@dataclasses.dataclass(frozen=True)
class MinGRUSpec(LinearSpec):
    """What ``memcell.mingru`` declares: its coefficients, readout and ``log_space`` (``LinearSpec``'s)."""


@dataclasses.dataclass(frozen=True)
class MinLSTMSpec(LinearSpec):
    """What ``memcell.minlstm`` declares: its coefficients, readout and ``log_space`` (``LinearSpec``'s)."""


# ----------------------------------------------------------------------------- shared pieces


def _g(x: Array) -> Array:
    """The paper's positive activation: ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below (continuous at 0)."""
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def _log_g(x: Array) -> Array:
    """``log g(x)`` without forming ``g``: ``log(x + 0.5)`` above 0, ``-softplus(-x)`` below.

    The log branch reads ``max(x, 0)``, so the branch that ``where`` discards never takes the log
    of a negative number (its nan would reach the gradient through ``where``).
    """
    return jnp.where(x >= 0, jnp.log(jnp.maximum(x, 0.0) + 0.5), -jax.nn.softplus(-x))


def _fan_in_uniform(key, shape, dtype):
    """PyTorch's ``nn.Linear`` init, U(-1/sqrt(d), 1/sqrt(d)) with ``d = shape[0]``, the fan-in."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


# "fan_in_uniform" and the names c.resolve_init knows (listed here so one message names them all).
_KERNEL_INITS = ("fan_in_uniform", "glorot_uniform", "identity", "lecun_normal", "orthogonal", "uniform", "zeros")


def _factory_args(hidden_size, log_space, kernel_init, param_dtype, dtype):
    hidden_size = c.check_positive_int("hidden_size", hidden_size)
    log_space = c.check_bool("log_space", log_space)
    param_dtype = c.check_float_dtype("param_dtype", param_dtype)
    dtype = c.check_float_dtype("dtype", dtype, allow_none=True)
    if callable(kernel_init):
        k_init = kernel_init
    elif isinstance(kernel_init, str) and kernel_init == "fan_in_uniform":
        k_init = _fan_in_uniform
    else:
        c.check_choice("kernel_init", kernel_init, _KERNEL_INITS)
        k_init = c.resolve_init("kernel_init", kernel_init, hidden_size)
    return hidden_size, log_space, k_init, param_dtype, dtype


def _make_init(params_type, n_blocks: int, hidden: int, k_init, param_dtype):
    def init(key, input_size: int):
        input_size = c.check_input_size(input_size)
        kw, kb = jax.random.split(key)
        # The bias is drawn like nn.Linear's, U(-1/sqrt(d), 1/sqrt(d)): the paper's code is built
        # from nn.Linear layers (with their biases) and sets no init of its own.
        bound = 1.0 / math.sqrt(input_size)
        b = jax.random.uniform(kb, (n_blocks * hidden,), jnp.promote_types(param_dtype, jnp.float32), -bound, bound)
        return params_type(
            w_x=c.block_matrix(kw, k_init, input_size, hidden, n_blocks, param_dtype),
            b=b.astype(param_dtype),
        )

    return init


def _pre_activations(params, x: Array, dtype, n_blocks: int) -> list[Array]:
    """The gate blocks of ``x W + b``, in float32 or wider (``c.linear`` accumulates there)."""
    acc = c.linear(x, params.w_x, dtype)
    pre = acc + params.b.astype(acc.dtype)
    return jnp.split(pre.astype(c.carry_dtype(params.w_x)), n_blocks, axis=-1)


def _make_functions(dtype, n_blocks: int, linear_coefficients, log_coefficients, log_space: bool):
    """``coefficients``, ``readout`` and the step's carry update, from the cell's coefficient maps.

    ``linear_coefficients(blocks) -> (a, b)`` and ``log_coefficients(blocks) -> (log a, log b)``
    take the gate pre-activations of one or all steps; the step uses the linear ones in both modes.
    """

    def coefficients(params, xs: Array) -> tuple[Array, Array]:
        blocks = _pre_activations(params, xs, dtype, n_blocks)
        return log_coefficients(blocks) if log_space else linear_coefficients(blocks)

    def readout(params, hs: Array, xs: Array) -> Array:
        del params, xs
        return hs  # y_t = h_t

    def step_h(params, h: Array, x: Array) -> Array:
        a, b = linear_coefficients(_pre_activations(params, x, dtype, n_blocks))
        return (a * h + b).astype(h.dtype)

    return coefficients, readout, step_h


# ----------------------------------------------------------------------------- minGRU


def mingru(
    hidden_size: int,
    *,
    log_space: bool = False,
    kernel_init="fan_in_uniform",
    param_dtype=jnp.float32,
    dtype=None,
) -> Cell:
    """The minimal GRU: gates from the input only, so the recurrence is linear in ``h``.

    Equations, for ``[k, k_h] = x W + b`` (blocks ``z, h~``)::

        z   = sigmoid(k)                        update gate
        h~  = k_h                               candidate (log_space=False)
        h~  = g(k_h)                            candidate (log_space=True), g below
        h'  = (1 - z) * h + z * h~              i.e. a = 1 - z, b = z * h~

    ``y = h'``. With ``log_space=True`` the candidate goes through the paper's positive
    activation ``g(x) = x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` otherwise, so every ``h`` after
    a non-negative initial carry is positive and the declared coefficients are logarithms,
    ``log a = -softplus(k)``, ``log b = -softplus(-k) + log g(k_h)``, which the parallel scan
    combines with ``logaddexp``. The step computes the same recurrence in linear space.

    Numerics in float32. The step is a convex combination of ``h`` and ``h~``: it never
    overflows, and a rounding error made at one step shrinks by ``a`` at every later step, so the
    step stays accurate over any length (2000 steps with ``a`` below 1e-13: relative error
    3e-6 against float64). What float32 loses lies in the coefficients and their products over
    time. ``a = 1 - z`` is computed as ``sigmoid(-k)``, without cancellation, yet a nearly closed
    gate (``k = -20``) still rounds ``a = 1 - 2e-9`` to exactly 1 (a slow leak stored as none),
    and under a strongly open one (``k = 20``, ``a = 2e-9``) the products ``a_1 ... a_t`` underflow
    to 0 within a few steps (float32 ends near 1e-38, 1e-45 subnormal). A parallel form built on
    those products, ``h_t = A_t * sum_s b_s / A_s`` with ``A_t = a_1 ... a_t``, then divides by 0
    (on that sequence 74% of its values were inf or nan). Log space keeps ``log a =
    -softplus(k)`` to float32's relative precision at both extremes and turns products into sums,
    which neither underflow nor overflow; that is why the paper scans there. One caveat, measured:
    a scan that sums ``log a`` over all ``T`` steps at once (the paper's cumsum and
    logcumsumexp) loses ``|sum log a| * 6e-8`` in ``log h`` (sum -6e4, relative error 2e-3 on
    that sequence); a scan that sums over chunks of about ``sqrt(T)`` steps keeps 2e-6.

    Args:
      hidden_size: number of hidden units ``h``.
      log_space: the paper's log-space variant (positive ``h~`` through ``g``; ``(log a, log b)``
        declared for the parallel scan), as above.
      kernel_init: ``"fan_in_uniform"`` (default: PyTorch's ``nn.Linear``, U(-1/sqrt(d), 1/sqrt(d)),
        as the paper's code) or any ``kernel_init`` of ``memcell.rnn``; each block is drawn on its
        own. The bias is always drawn like ``nn.Linear``'s.
      param_dtype: dtype of the params.
      dtype: computation dtype of the matmul (None: that of params and inputs); bfloat16
        accumulates in float32, the gates are computed in float32 and the carry stays float32.

    Returns:
      A ``Cell`` with ``MinGRUParams`` and ``MinGRUCarry``; its spec is a ``MinGRUSpec``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.mingru(8, log_space=True)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> params.w_x.shape, params.b.shape   # blocks z, h~ fused
      ((3, 16), (16,))
      >>> carry, ys = memcell.unroll(cell, params, jnp.ones((2, 6, 3)))
      >>> ys.shape
      (2, 6, 8)
      >>> bool((ys > 0).all())   # g keeps h positive in log space
      True
    """
    H, log_space, k_init, param_dtype, dtype = _factory_args(hidden_size, log_space, kernel_init, param_dtype, dtype)

    def linear_coefficients(blocks):
        k, k_h = blocks
        h_tilde = _g(k_h) if log_space else k_h
        return jax.nn.sigmoid(-k), jax.nn.sigmoid(k) * h_tilde

    def log_coefficients(blocks):
        k, k_h = blocks
        return -jax.nn.softplus(k), -jax.nn.softplus(-k) + _log_g(k_h)

    coefficients, readout, step_h = _make_functions(dtype, 2, linear_coefficients, log_coefficients, log_space)

    def initial_carry(params: MinGRUParams, batch_shape=()) -> MinGRUCarry:
        return MinGRUCarry(jnp.zeros(tuple(batch_shape) + (H,), c.carry_dtype(params.w_x)))

    def step(params: MinGRUParams, carry: MinGRUCarry, x: Array) -> tuple[MinGRUCarry, Array]:
        h = step_h(params, carry.h, x)
        return MinGRUCarry(h), h

    spec = MinGRUSpec(step=step, dtype=dtype, coefficients=coefficients, readout=readout, log_space=log_space)
    return Cell(_make_init(MinGRUParams, 2, H, k_init, param_dtype), initial_carry, step, spec)


# ----------------------------------------------------------------------------- minLSTM


def minlstm(
    hidden_size: int,
    *,
    log_space: bool = False,
    kernel_init="fan_in_uniform",
    param_dtype=jnp.float32,
    dtype=None,
) -> Cell:
    """The minimal LSTM: forget and input gates from the input only, normalised to sum to 1.

    Equations, for ``[k_f, k_i, k_h] = x W + b`` (blocks ``f, i, h~``)::

        f   = sigmoid(k_f),  i = sigmoid(k_i)   forget and input gates
        f'  = f / (f + i),   i' = i / (f + i)   normalised: the scale of h does not grow with time
        h~  = k_h                               candidate (log_space=False)
        h~  = g(k_h)                            candidate (log_space=True), g as in mingru
        h'  = f' * h + i' * h~                  i.e. a = f', b = i' * h~

    ``y = h'``. ``f'`` and ``i'`` are computed as ``sigmoid(-d)`` and ``sigmoid(d)`` with
    ``d = log i - log f = softplus(-k_f) - softplus(-k_i)``; with ``log_space=True`` the declared
    coefficients are ``log a = -softplus(d)`` and ``log b = -softplus(-d) + log g(k_h)``. The
    step computes the same recurrence in linear space.

    Numerics in float32: as for ``memcell.mingru``, with ``f'`` in the role of ``1 - z``. The
    step is a convex combination and stays accurate over any length (2000 steps with ``f'``
    down to 1e-13: relative error 2e-6 against float64); products of ``f'`` over strongly decaying
    stretches underflow, and an ``f'`` within 6e-8 of 1 rounds to 1, which log space (``log f' =
    -softplus(d)``, summed rather than multiplied) keeps.

    Args:
      hidden_size: number of hidden units ``h``.
      log_space: the paper's log-space variant, as above and in ``memcell.mingru``.
      kernel_init, param_dtype, dtype: as for ``memcell.mingru``.

    Returns:
      A ``Cell`` with ``MinLSTMParams`` and ``MinLSTMCarry``; its spec is a ``MinLSTMSpec``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.minlstm(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> params.w_x.shape   # blocks f, i, h~ fused
      (3, 24)
      >>> carry, ys = memcell.unroll(cell, params, jnp.ones((5, 3)))
      >>> ys.shape, carry.h.shape
      ((5, 8), (8,))
    """
    H, log_space, k_init, param_dtype, dtype = _factory_args(hidden_size, log_space, kernel_init, param_dtype, dtype)

    def log_ratio(k_f, k_i):
        return jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)  # d = log i - log f

    def linear_coefficients(blocks):
        k_f, k_i, k_h = blocks
        d = log_ratio(k_f, k_i)
        h_tilde = _g(k_h) if log_space else k_h
        return jax.nn.sigmoid(-d), jax.nn.sigmoid(d) * h_tilde

    def log_coefficients(blocks):
        k_f, k_i, k_h = blocks
        d = log_ratio(k_f, k_i)
        return -jax.nn.softplus(d), -jax.nn.softplus(-d) + _log_g(k_h)

    coefficients, readout, step_h = _make_functions(dtype, 3, linear_coefficients, log_coefficients, log_space)

    def initial_carry(params: MinLSTMParams, batch_shape=()) -> MinLSTMCarry:
        return MinLSTMCarry(jnp.zeros(tuple(batch_shape) + (H,), c.carry_dtype(params.w_x)))

    def step(params: MinLSTMParams, carry: MinLSTMCarry, x: Array) -> tuple[MinLSTMCarry, Array]:
        h = step_h(params, carry.h, x)
        return MinLSTMCarry(h), h

    spec = MinLSTMSpec(step=step, dtype=dtype, coefficients=coefficients, readout=readout, log_space=log_space)
    return Cell(_make_init(MinLSTMParams, 3, H, k_init, param_dtype), initial_carry, step, spec)
