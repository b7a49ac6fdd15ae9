"""What the Flax wrappers (``memcell.linen``, ``memcell.nnx``) share: Flax's carry layouts and their argument checks.

Flax's LSTM cells carry the pair ``(c, h)``, its ``GRUCell`` and ``SimpleCell`` the hidden-state
array alone; memcell's carries are NamedTuples. Nothing here imports flax, so the wrappers
stay the only modules that do.
"""

import jax
import jax.numpy as jnp

from memcell.cells import LSTMCarry
from memcell.types import Array, Cell


def check_inputs(inputs) -> None:
    if not hasattr(inputs, "shape") or not hasattr(inputs, "dtype"):
        raise TypeError(f"inputs must be an array, got {type(inputs).__name__}")
    if inputs.ndim < 1:
        raise ValueError(f"inputs must have shape [..., features], got shape {tuple(inputs.shape)}")
    if not jnp.issubdtype(inputs.dtype, jnp.floating):
        raise TypeError(f"inputs must be a floating-point array, got dtype {inputs.dtype}")


def check_input_shape(input_shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    if not shape or shape[-1] < 1:
        raise ValueError(f"input_shape must be (*batch, features) with features >= 1, got {shape}")
    return shape


def check_carry_structure(cell: Cell, params, carry) -> None:
    """Refuses a carry whose pytree structure is not the cell's (e.g. Flax's ``(c, h)`` for memcell's ``LSTMCarry``)."""
    expected = jax.tree.structure(jax.eval_shape(lambda p: cell.initial_carry(p), params))
    got = jax.tree.structure(carry)
    if got != expected:
        raise TypeError(f"carry must have the structure of initialize_carry's carry, {expected}, got {got}")


def lstm_carry_from_flax(carry) -> LSTMCarry:
    if not (isinstance(carry, (tuple, list)) and len(carry) == 2):
        raise TypeError(f"carry must be the pair (c, h) of initialize_carry, got {type(carry).__name__}")
    c, h = carry
    return LSTMCarry(h=h, c=c)


def lstm_carry_to_flax(carry: LSTMCarry) -> tuple[Array, Array]:
    return (carry.c, carry.h)


def single_carry_from_flax(carry_cls, carry):
    """``GRUCarry``/``RNNCarry`` from Flax's carry, the hidden-state array itself."""
    if not hasattr(carry, "shape"):
        raise TypeError(f"carry must be the hidden-state array of initialize_carry, got {type(carry).__name__}")
    return carry_cls(carry)
