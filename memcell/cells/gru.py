"""The GRU (Cho et al. 2014)."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from memcell.cells import _common as c
from memcell.types import Array, Cell, CellSpec


class GRUParams(NamedTuple):
    """GRU params; gate blocks fused in the order ``r, z, n`` (PyTorch's)."""

    w_x: Array  # [d, 3h]
    w_h: Array  # [h, 3h]
    b_x: Array  # [3h] bias on the input side
    b_h: Array  # [3h] bias on the recurrent side (its n block sits inside r * (...))


class GRUCarry(NamedTuple):
    h: Array  # [*b, h]


@dataclasses.dataclass(frozen=True)
class GRUSpec(CellSpec):
    """What ``memcell.gru`` declares for fast paths: the options its step was built with."""

    reset_after: bool = True
    gate_fn: str | None = "sigmoid"  # None: a user's function, which no fast path computes
    activation_fn: str | None = "tanh"


def gru(
    hidden_size: int,
    *,
    reset_after: bool = True,
    gate_fn=jax.nn.sigmoid,
    activation_fn=jnp.tanh,
    kernel_init="lecun_normal",
    recurrent_init="orthogonal",
    bias_init=None,
    recurrent_scale: float = 1.0,
    param_dtype=jnp.float32,
    dtype=None,
) -> Cell:
    """The gated recurrent unit.

    Equations::

        r  = sigmoid(x W_r + b_xr + h U_r + b_hr)          reset gate
        z  = sigmoid(x W_z + b_xz + h U_z + b_hz)          update gate
        n  = tanh(x W_n + b_xn + r * (h U_n + b_hn))       reset_after=True (default)
        n  = tanh(x W_n + b_xn + (r * h) U_n + b_hn)       reset_after=False (Cho et al.)
        h' = (1 - z) * n + z * h

    The default applies the reset gate to the result of the recurrent matmul: the convention
    of PyTorch, cuDNN and Flax (Keras' ``reset_after=True``), which lets all three recurrent
    blocks share one matmul. ``y = h'``.

    Args:
      hidden_size: number of hidden units ``h``.
      reset_after: where the reset gate applies, as above.
      gate_fn, activation_fn: the functions in place of ``sigmoid`` and ``tanh`` above (Flax's
        options); others than these two give a cell without a spec (it runs the reference path).
      bias_init: None (zero biases) or an initialiser of ``b_x`` and of ``b_h``'s ``n`` block
        (Flax's ``GRUCell`` biases), ``b_h``'s ``r, z`` blocks starting at zero.
      kernel_init, recurrent_init, recurrent_scale, param_dtype, dtype: as for ``memcell.rnn``.

    Returns:
      A ``Cell`` with ``GRUParams`` and ``GRUCarry``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.gru(8)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> carry, ys = memcell.unroll(cell, params, jnp.ones((6, 3)))
      >>> ys.shape
      (6, 8)
    """
    hidden_size = c.check_positive_int("hidden_size", hidden_size)
    reset_after = c.check_bool("reset_after", reset_after)
    param_dtype = c.check_float_dtype("param_dtype", param_dtype)
    dtype = c.check_float_dtype("dtype", dtype, allow_none=True)
    k_init = c.resolve_init("kernel_init", kernel_init, hidden_size)
    r_init = c.resolve_init("recurrent_init", recurrent_init, hidden_size)
    b_init = None if bias_init is None else c.resolve_init("bias_init", bias_init, hidden_size)
    sigmoid, gate = c.resolve_fn("gate_fn", gate_fn, {"sigmoid": jax.nn.sigmoid})
    tanh, act = c.resolve_fn("activation_fn", activation_fn, {"tanh": jnp.tanh})
    H = hidden_size

    def init(key, input_size: int) -> GRUParams:
        input_size = c.check_input_size(input_size)
        kx, kh = jax.random.split(key)
        return GRUParams(
            w_x=c.block_matrix(kx, k_init, input_size, H, 3, param_dtype),
            w_h=c.block_matrix(kh, r_init, H, H, 3, param_dtype, recurrent_scale),
            b_x=c.bias_blocks(kx, b_init, H, 3, param_dtype),
            b_h=c.bias_blocks(kh, b_init, H, 3, param_dtype, drawn=(False, False, True)),
        )

    def initial_carry(params: GRUParams, batch_shape=()) -> GRUCarry:
        return GRUCarry(c.zeros_carry(params.w_h, batch_shape))

    def masked_step(params: GRUParams, carry: GRUCarry, x: Array, mask) -> tuple[GRUCarry, Array]:
        # h_in = h * mask enters the recurrent matmuls (recurrent dropout); h itself the update z * h
        h = carry.h
        h_in = h if mask is None else (h * mask).astype(h.dtype)
        xr, xz, xn = jnp.split(c.linear(x, params.w_x, dtype) + params.b_x, 3, axis=-1)
        if reset_after:
            hr, hz, hn = jnp.split(c.linear(h_in, params.w_h, dtype) + params.b_h, 3, axis=-1)
            r = sigmoid(xr + hr)
            z = sigmoid(xz + hz)
            n = tanh(xn + r * hn)
        else:
            w_rz, w_n = params.w_h[:, : 2 * H], params.w_h[:, 2 * H :]
            b_rz, b_n = params.b_h[: 2 * H], params.b_h[2 * H :]
            hr, hz = jnp.split(c.linear(h_in, w_rz, dtype) + b_rz, 2, axis=-1)
            r = sigmoid(xr + hr)
            z = sigmoid(xz + hz)
            n = tanh(xn + c.linear(r * h_in, w_n, dtype) + b_n)
        h_new = ((1.0 - z) * n + z * h).astype(h.dtype)
        return GRUCarry(h_new), h_new

    def step(params: GRUParams, carry: GRUCarry, x: Array) -> tuple[GRUCarry, Array]:
        return masked_step(params, carry, x, None)

    spec = GRUSpec(step=step, dtype=dtype, masked_step=masked_step, reset_after=reset_after, gate_fn=gate,
                   activation_fn=act)
    return Cell(init, initial_carry, step, spec)
