"""Shape notation and array aliases used on public signatures.

Axis letters, used in every shape comment and alias of the package:

- ``t`` time steps, ``d`` input features, ``h`` hidden units;
- ``*b`` any number of leading batch axes (none for one sequence);
- ``g`` a gate block count times ``h`` (``4h`` for the LSTM, ``3h`` for the GRU).

Sequences are batch-major with time just before features: ``xs: [*b, t, d]``.
"""

import dataclasses
from typing import Any, Callable, Literal, NamedTuple

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

__all__ = [
    "Array",
    "ArrayLike",
    "BACKENDS",
    "Backend",
    "Cell",
    "CellSpec",
    "Key",
    "Lengths",
    "Layer",
    "LinearSpec",
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

# The one list of unroll backends: "reference" scans cell.step (the definition, differentiable to
# any order); "fused" runs memcell.fused and "parallel" memcell.parallel, each refusing what it
# cannot run; "cudnn" runs memcell.cudnn (the default LSTM through cuDNN, GPU only); "auto" runs the
# fastest path the cell's spec allows (fused: measured; cuDNN, tried first on a GPU: not yet measured)
# and the reference elsewhere.
Backend = Literal["reference", "fused", "parallel", "cudnn", "auto"]
BACKENDS: tuple[str, ...] = Backend.__args__


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """What a built-in cell declares about itself, so that a fast path may run it instead of its step.

    Fast paths read only this, never attributes of functions. A spec vouches for one step
    function, held in ``step`` and compared by identity: a ``Cell`` whose ``step`` is any other
    object (a wrapped, partial or replaced step, a user's own) is not described by it and runs
    the reference path. Each cell kind subclasses this with its options as typed fields.

    Attributes:
      step: the exact step function the spec describes.
      dtype: the matmul computation dtype the factory was given (None: that of the inputs).
      parallel: the cell's own parallel form over a whole framed sequence, or None:
        ``parallel(params, xs, carry0, valid, resets, chunk_size) -> (carry, ys)`` with ``xs
        [*b, T, d]`` in processing order (padded inputs zeroed), ``valid [*b, T]`` bool or None
        (False past each length), ``resets [*b, T]`` bool or None (False past each length),
        ``carry0`` the initial carry broadcast to the batch; ``carry`` is the carry after each
        sequence's last valid step and ``ys`` the outputs in processing order (padded ones may be
        anything). ``memcell.unroll(..., backend="parallel")`` runs it.
    """

    step: Callable = dataclasses.field(repr=False, compare=False)
    dtype: Any = None
    parallel: Callable | None = dataclasses.field(default=None, repr=False, compare=False)

    def describes(self, cell) -> bool:
        """Whether this spec describes ``cell``: the cell's step is the very function it was made for."""
        return getattr(cell, "step", None) is self.step


@dataclasses.dataclass(frozen=True)
class LinearSpec(CellSpec):
    """A cell whose carry is one array updated linearly in itself, elementwise:
    ``h_t = a_t * h_{t-1} + b_t``, with ``a_t`` and ``b_t`` functions of the input ``x_t`` only.

    Such a cell declares how to compute its coefficients for all steps at once, so that one
    parallel scan over time (``memcell.unroll(..., backend="parallel")``) serves every such cell.
    The carry is a NamedTuple (or any pytree) with exactly one array leaf ``h``.

    Attributes:
      coefficients: ``coefficients(params, xs) -> (a, b)`` for ``xs: [*b, T, d]``: arrays
        ``[*b, T, h]`` in the carry's dtype (float32 or wider; complex for a complex carry). With
        ``log_space`` they are ``(log a, log b)`` of a positive recurrence (``a, b > 0``;
        ``log b = -inf`` allowed): the cell computes its gates stably in log space, and the
        chunked scan (which never forms a product over more than one chunk) runs on their exps.
      readout: ``readout(params, hs, xs) -> ys``: the outputs from the carries after every step,
        ``hs: [*b, T, h]``, and the inputs.
      log_space: whether ``coefficients`` returns logarithms, as above.
    """

    coefficients: Callable = dataclasses.field(default=None, repr=False, compare=False)
    readout: Callable = dataclasses.field(default=None, repr=False, compare=False)
    log_space: bool = False


class Cell(NamedTuple):
    """A recurrent cell: a bundle of three pure functions (like optax's GradientTransformation).

    Attributes:
      init: ``init(key, input_size) -> params``, a pytree of arrays.
      initial_carry: ``initial_carry(params, batch_shape=()) -> carry``, zeros of the
        carry's shape with leading ``batch_shape``.
      step: ``step(params, carry, x) -> (carry, y)`` for ``x: [*b, d]``; the order
        ``jax.lax.scan`` expects.
      spec: a ``CellSpec`` the built-in factories fill in, saying which fast path may run the
        cell; None (the default, and what a user's cell has) runs the reference path. A spec
        whose ``step`` is not this cell's ``step`` is ignored.
    """

    init: Callable[..., PyTree]
    initial_carry: Callable[..., PyTree]
    step: Callable[..., tuple[PyTree, Array]]
    spec: CellSpec | None = None


class Layer(NamedTuple):
    """A sequence-level layer, stax-style: a pair of pure functions.

    Attributes:
      init: ``init(key, input_size) -> params``.
      apply: ``apply(params, xs, carry=None, *, lengths=None, key=None) -> (carry, ys)``
        with ``xs: [*b, t, d]`` and ``ys: [*b, t, h]``.
    """

    init: Callable[..., PyTree]
    apply: Callable[..., tuple[PyTree, Array]]
