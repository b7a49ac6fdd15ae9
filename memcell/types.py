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
    "BidirectionalSpec",
    "Cell",
    "CellLayerSpec",
    "CellSpec",
    "DirectionPair",
    "Frame",
    "Key",
    "Lengths",
    "Layer",
    "LayerSpec",
    "LinearSpec",
    "Outputs",
    "Path",
    "PyTree",
    "Resets",
    "Sequence",
    "StackSpec",
]

PyTree = Any
Key = PRNGKeyArray | Array
Sequence = Float[Array, "*b t d"]
Outputs = Float[Array, "*b t h"]
Lengths = Int[ArrayLike, "*b"]
Resets = Bool[ArrayLike, "*b t"]

# The one list of unroll backends: "reference" scans cell.step (the definition, differentiable to
# any order); "parallel", "cudnn" and "fused" are the fast paths (memcell.paths: each refuses, by a
# sentence, what it cannot run); "auto" runs the first path of the platform's order (memcell.paths.ORDER)
# that runs the cell and was measured faster there.
Backend = Literal["reference", "fused", "parallel", "cudnn", "pallas", "auto"]
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
      parallel: the cell's own form over all steps at once, for the parallel path (None: the path's
        generic forms, such as ``LinearSpec``'s scan): ``parallel(params, xs, carry0, valid, resets,
        *, chunk_size, linear_scan) -> (carry, ys)`` on a ``Frame``'s arrays (``ys`` in processing
        order; padded outputs may hold anything). ``linear_scan(a, b, h0)`` is the path's diagonal
        scan ``h_t = a_t h_{t-1} + b_t`` over axis -2 (``axis=`` another), handed in so that a cell
        needs no import of a path.
      masked_step: ``masked_step(params, carry, x, mask) -> (carry, y)``: the step with ``mask``
        (shaped like ``carry.h``) applied to ``h`` only where it enters the recurrent matmuls, for
        recurrent dropout (Gal and Ghahramani), where the step also reads ``h`` elsewhere (the
        GRU's ``z * h``). None: masking ``carry.h`` before the step is that (declared by the
        LSTM and the RNN, which read ``h`` only through their matmul) or the cell does not say.
    """

    step: Callable = dataclasses.field(repr=False, compare=False)
    dtype: Any = None
    parallel: Callable | None = dataclasses.field(default=None, repr=False, compare=False)
    masked_step: Callable | None = dataclasses.field(default=None, repr=False, compare=False)

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


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What a layer made by ``memcell.layer``, ``memcell.bidirectional`` or ``memcell.stack`` is, in data,
    so that streaming and export read it instead of guessing from its functions.

    Like ``CellSpec``, a spec vouches for one ``apply`` function, compared by identity: a ``Layer``
    whose ``apply`` is any other object (wrapped or replaced) is not described by it.

    Attributes:
      apply: the exact ``apply`` function the spec describes.
    """

    apply: Callable = dataclasses.field(repr=False, compare=False)

    def describes(self, layer) -> bool:
        """Whether this spec describes ``layer``: the layer's ``apply`` is the very function it was made for."""
        return getattr(layer, "apply", None) is self.apply


@dataclasses.dataclass(frozen=True)
class CellLayerSpec(LayerSpec):
    """``memcell.layer(cell, ...)``: one cell over the sequence in one direction, and its options."""

    cell: Any = None
    reverse: bool = False
    unroll: Any = 1
    remat: Any = False
    backend: str = "reference"
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    zoneout: Any = 0.0
    learn_initial_carry: bool = False


@dataclasses.dataclass(frozen=True)
class BidirectionalSpec(LayerSpec):
    """``memcell.bidirectional(forward, backward, ...)``; ``merge`` is the name or the user's function."""

    forward: Any = None
    backward: Any = None
    merge: Any = "concat"
    merge_fn: Callable = dataclasses.field(default=None, repr=False, compare=False)
    unroll: Any = 1
    remat: Any = False
    backend: str = "reference"


@dataclasses.dataclass(frozen=True)
class StackSpec(LayerSpec):
    """``memcell.stack(layers, ...)``: its layers (``Layer``s, cells already lifted) and options."""

    layers: tuple = ()
    residual: bool = False
    dropout: float = 0.0


class Layer(NamedTuple):
    """A sequence-level layer, stax-style: a pair of pure functions.

    Attributes:
      init: ``init(key, input_size) -> params``.
      apply: ``apply(params, xs, carry=None, *, lengths=None, key=None) -> (carry, ys)``
        with ``xs: [*b, t, d]`` and ``ys: [*b, t, h]``.
      spec: a ``LayerSpec`` the layer factories fill in (None, the default, for a user's layer);
        ignored where its ``apply`` is not this layer's.
    """

    init: Callable[..., PyTree]
    apply: Callable[..., tuple[PyTree, Array]]
    spec: LayerSpec | None = None


class DirectionPair(NamedTuple):
    """Params (or carry) of a bidirectional layer."""

    forward: PyTree
    backward: PyTree


class Frame(NamedTuple):
    """One unroll's arguments, checked and put in the one canonical form every path receives.

    ``memcell.unroll`` frames once (``memcell._frame``); a path never checks, reverses or masks again.

    Attributes:
      xs: ``[*b, T, D]`` in processing order: read backwards (``reverse=True``), each sequence is
        reversed within its own length, so every path runs forwards from step 0. Padded steps' inputs
        are zeros, so garbage there reaches neither values nor gradients.
      carry0: the initial carry, every leaf broadcast to the batch axes ``[*b, ...]``.
      valid: ``[*b, T]`` bools, False past each sequence's length; None without lengths.
      resets: ``[*b, T]`` bools in processing order, where the carry restarts from ``carry0``
        before the step (False past each length); None without resets.
      lengths: ``[*b]`` integers in ``[0, T]``, or None.
      remat: the checked remat policy (``False``, ``"step"``, ``"sqrt"`` or an int).
      unroll: ``jax.lax.scan``'s unroll for the paths that scan.
      reverse: whether ``xs`` was reversed (the frame restores the outputs' order; paths ignore it).
    """

    xs: Any
    carry0: PyTree
    valid: Any
    resets: Any
    lengths: Any
    remat: Any
    unroll: Any
    reverse: bool


class Path(NamedTuple):
    """One way of running a cell over a framed sequence (see ``memcell.paths``).

    Attributes:
      name: the backend name that selects it (``memcell.BACKENDS``).
      why_not: ``why_not(cell, params, frame) -> str | None``: a sentence saying why this path cannot
        run ``cell`` (read from its declared spec) on this frame, or None. ``params`` and ``frame``
        may be None (and a frame's ``xs`` None) when only the cell and options are known.
      run: ``run(cell, params, frame, **options) -> (carry, ys)`` with ``ys [*b, T, h]`` in
        processing order; only called where ``why_not`` is None and ``T > 0``.
      auto_why_not: ``auto_why_not(cell, platform) -> str | None``: why ``backend="auto"`` skips this
        path on ``platform`` though it could run (no measurement there says it is faster), or None.
    """

    name: str
    why_not: Callable[..., str | None]
    run: Callable[..., tuple[PyTree, Array]]
    auto_why_not: Callable[..., str | None] = lambda cell, platform: None
