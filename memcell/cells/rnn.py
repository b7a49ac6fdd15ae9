"""The Elman RNN."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from memcell.cells import _common as c
from memcell.types import Array, Cell, CellSpec

_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


class RNNParams(NamedTuple):
    w_x: Array  # [d, h] input kernel
    w_h: Array  # [h, h] recurrent kernel U
    b: Array  # [h]


class RNNCarry(NamedTuple):
    h: Array  # [*b, h]


@dataclasses.dataclass(frozen=True)
class RNNSpec(CellSpec):
    """What ``memcell.rnn`` declares for fast paths: the options its step was built with."""

    activation: str | None = "tanh"  # None: a user's function, which no fast path computes


def rnn(
    hidden_size: int,
    *,
    activation="tanh",
    kernel_init="lecun_normal",
    recurrent_init="orthogonal",
    bias_init=None,
    recurrent_scale: float = 1.0,
    param_dtype=jnp.float32,
    dtype=None,
) -> Cell:
    """The Elman RNN: ``h' = act(x W + h U + b)``, with ``y = h'``.

    Args:
      hidden_size: number of hidden units ``h``.
      activation: ``"tanh"`` or ``"relu"`` (with ``recurrent_init="identity"``: the IRNN
        of Le et al. 2015), or a function (Flax's ``activation_fn``); a function other than
        ``jnp.tanh`` and ``jax.nn.relu`` runs the reference path (its spec says ``activation=None``).
      kernel_init: initialiser of ``W``: a name (``"lecun_normal"``, ``"glorot_uniform"``,
        ``"orthogonal"``, ``"uniform"`` (PyTorch's), ``"zeros"``) or a
        ``jax.nn.initializers`` callable.
      recurrent_init: initialiser of ``U``; the same names plus ``"identity"``.
      bias_init: initialiser of ``b`` (a name as above or a callable; None: zeros).
      recurrent_scale: ``U`` is multiplied by this after init. With the orthogonal or identity
        init every eigenvalue of ``U`` has modulus ``recurrent_scale``, so it is exactly the
        spectral radius (0.9: vanishing, 1.5: exploding).
      param_dtype: dtype of the params.
      dtype: computation dtype of the matmuls (None: that of params and inputs). With
        ``jnp.bfloat16`` the matmuls run in bf16 and accumulate in float32; the carry is float32.

    Returns:
      A ``Cell`` with ``RNNParams`` and ``RNNCarry``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.rnn(8, recurrent_scale=0.9)
      >>> params = cell.init(jax.random.key(0), input_size=3)
      >>> carry, ys = memcell.unroll(cell, params, jnp.ones((5, 3)))
      >>> ys.shape, carry.h.shape
      ((5, 8), (8,))
    """
    hidden_size = c.check_positive_int("hidden_size", hidden_size)
    act, activation = c.resolve_fn("activation", activation, _ACTIVATIONS)
    param_dtype = c.check_float_dtype("param_dtype", param_dtype)
    dtype = c.check_float_dtype("dtype", dtype, allow_none=True)
    k_init = c.resolve_init("kernel_init", kernel_init, hidden_size)
    r_init = c.resolve_init("recurrent_init", recurrent_init, hidden_size)
    b_init = None if bias_init is None else c.resolve_init("bias_init", bias_init, hidden_size)

    def init(key, input_size: int) -> RNNParams:
        input_size = c.check_input_size(input_size)
        kx, kh = jax.random.split(key)
        return RNNParams(
            w_x=c.block_matrix(kx, k_init, input_size, hidden_size, 1, param_dtype),
            w_h=c.block_matrix(kh, r_init, hidden_size, hidden_size, 1, param_dtype, recurrent_scale),
            b=c.bias_blocks(key, b_init, hidden_size, 1, param_dtype),
        )

    def initial_carry(params: RNNParams, batch_shape=()) -> RNNCarry:
        return RNNCarry(c.zeros_carry(params.w_h, batch_shape))

    def step(params: RNNParams, carry: RNNCarry, x: Array) -> tuple[RNNCarry, Array]:
        z = c.linear(x, params.w_x, dtype) + c.linear(carry.h, params.w_h, dtype) + params.b
        h = act(z).astype(carry.h.dtype)
        return RNNCarry(h), h

    spec = RNNSpec(step=step, dtype=dtype, activation=activation)
    return Cell(init, initial_carry, step, spec)


def irnn(hidden_size: int, **options) -> Cell:
    """The IRNN of Le et al. 2015: ``memcell.rnn`` with ReLU and an identity recurrent init.

    ``options`` go to ``memcell.rnn`` (``recurrent_init`` may still be given; ``activation`` is
    ReLU by definition and refused).

    Example:
      >>> import jax, memcell
      >>> from memcell.cells import irnn
      >>> params = irnn(4).init(jax.random.key(0), input_size=2)
      >>> bool((params.w_h == jax.numpy.eye(4)).all())
      True
    """
    if "activation" in options:
        raise TypeError(f"irnn is the ReLU RNN by definition: activation cannot be set, got {options['activation']!r}")
    options.setdefault("recurrent_init", "identity")
    return rnn(hidden_size, activation="relu", **options)
