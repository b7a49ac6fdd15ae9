"""Shape notation and array aliases used on public signatures.

Axis letters, used in every shape comment and alias of the package:

- ``t`` time steps, ``d`` input features, ``h`` hidden units;
- ``*b`` any number of leading batch axes (none for one sequence);
- ``g`` a gate block count times ``h`` (``4h`` for the LSTM, ``3h`` for the GRU).

Sequences are batch-major with time just before features: ``xs: [*b, t, d]``.
"""

from typing import Any, Callable, NamedTuple

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

__all__ = [
    "Array",
    "ArrayLike",
    "Cell",
    "Key",
    "Lengths",
    "Layer",
    "Outputs",
    "PyTree",
    "Resets",
    "Sequence",
]

PyTree = Any
Key = PRNGKeyArray | Array
Sequence = Float[Array, "*b t d"]
Outputs = Float[Array, "*b t h"]
Lengths = Int[ArrayLike, "*b"]
Resets = Bool[ArrayLike, "*b t"]


class Cell(NamedTuple):
    """A recurrent cell: a bundle of three pure functions (like optax's GradientTransformation).

    Attributes:
      init: ``init(key, input_size) -> params``, a pytree of arrays.
      initial_carry: ``initial_carry(params, batch_shape=()) -> carry``, zeros of the
        carry's shape with leading ``batch_shape``.
      step: ``step(params, carry, x) -> (carry, y)`` for ``x: [*b, d]``; the order
        ``jax.lax.scan`` expects.
    """

    init: Callable[..., PyTree]
    initial_carry: Callable[..., PyTree]
    step: Callable[..., tuple[PyTree, Array]]


class Layer(NamedTuple):
    """A sequence-level layer, stax-style: a pair of pure functions.

    Attributes:
      init: ``init(key, input_size) -> params``.
      apply: ``apply(params, xs, carry=None, *, lengths=None, key=None) -> (carry, ys)``
        with ``xs: [*b, t, d]`` and ``ys: [*b, t, h]``.
    """

    init: Callable[..., PyTree]
    apply: Callable[..., tuple[PyTree, Array]]
