"""Unrolling cells over sequences (lengths, resets, reverse) and sequence-level layers.

Everything here is built on one function, ``unroll``: ``layer``, ``bidirectional`` and
``stack`` compose it, they do not loop on their own.
"""

from typing import Callable, NamedTuple, Sequence as SequenceOf

import jax
import jax.numpy as jnp
import numpy as np

from memcell.types import Array, Cell, Layer, Lengths, Outputs, PyTree, Resets, Sequence

__all__ = ["DirectionPair", "bidirectional", "layer", "stack", "unroll"]


# ----------------------------------------------------------------------------- input checks
# Shapes and dtypes are static even under jit, so these run before anything is traced and
# turn a bad argument into a message naming it instead of an error from inside XLA.


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _as_array(x):
    return x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)


def _input_size(params) -> int | None:
    """The input size the params expect, for the built-in cells (they all have ``w_x: [d, ...]``)."""
    w_x = getattr(params, "w_x", None)
    shape = getattr(w_x, "shape", None)
    return shape[0] if shape is not None and len(shape) == 2 else None


def _check_xs(xs, params) -> Array:
    xs = _as_array(xs)
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"xs must be a floating-point array, got dtype {xs.dtype}")
    if xs.ndim < 2:
        raise ValueError(f"xs must have shape [..., T, D] (time, then features), got shape {tuple(xs.shape)}")
    d = _input_size(params)
    if d is not None and xs.shape[-1] != d:
        raise ValueError(
            f"xs must have {d} features on its last axis (the params' input_size), "
            f"got shape {tuple(xs.shape)} with {xs.shape[-1]}"
        )
    return jnp.asarray(xs)


def _check_lengths(lengths, batch_shape: tuple, T: int) -> Array | None:
    if lengths is None:
        return None
    lengths = _as_array(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must be an integer array, got dtype {lengths.dtype}")
    if tuple(lengths.shape) != batch_shape:
        raise ValueError(
            f"lengths must have shape {batch_shape} (the batch axes of xs), got shape {tuple(lengths.shape)}"
        )
    if _is_concrete(lengths) and lengths.size:
        # np.asarray first: np.min on a jax.Array dispatches to jnp.min, which is traced
        # (and cannot be turned into an int) when this runs inside a jit trace.
        host = np.asarray(lengths)
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi > T:
            raise ValueError(f"lengths must lie in [0, T={T}] (T = xs.shape[-2]), got min {lo} and max {hi}")
    return jnp.asarray(lengths)


def _check_resets(resets, batch_shape: tuple, T: int) -> Array | None:
    if resets is None:
        return None
    resets = _as_array(resets)
    if not (resets.dtype == jnp.bool_ or jnp.issubdtype(resets.dtype, jnp.integer)):
        raise TypeError(f"resets must be a boolean (or 0/1 integer) array, got dtype {resets.dtype}")
    if tuple(resets.shape) not in {(T,), batch_shape + (T,)}:
        raise ValueError(f"resets must have shape ({T},) or {batch_shape + (T,)}, got shape {tuple(resets.shape)}")
    return jnp.broadcast_to(jnp.asarray(resets) != 0, batch_shape + (T,))


def _check_carry(cell: Cell, params, carry, batch_shape: tuple) -> PyTree:
    if carry is None:
        return cell.initial_carry(params, batch_shape)
    expected = jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params)
    if jax.tree.structure(carry) != jax.tree.structure(expected):
        raise ValueError(
            f"carry must have the structure of cell.initial_carry: {jax.tree.structure(expected)}, "
            f"got {jax.tree.structure(carry)}"
        )

    def fit(c, e):
        c = _as_array(c)
        try:
            return jnp.broadcast_to(jnp.asarray(c, e.dtype), e.shape)
        except ValueError:
            raise ValueError(
                f"carry leaves must have shape {e.shape} (batch axes of xs, then the carry's own), "
                f"got shape {tuple(c.shape)}"
            ) from None

    return jax.tree.map(fit, carry, expected)


# ----------------------------------------------------------------------------- unroll


def _tree_where(mask: Array, a: PyTree, b: PyTree) -> PyTree:
    """``where(mask, a, b)`` leaf by leaf; ``mask: [*b]`` broadcasts over each leaf's trailing axes."""

    def pick(x, y):
        m = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
        return jnp.where(m, x, y)

    return jax.tree.map(pick, a, b)


def _reverse_within(x: Array, lengths: Array, axis: int) -> Array:
    """Reverses each sequence's first ``length`` steps along ``axis``; padding stays at the end.

    The permutation is its own inverse, so the same call maps the outputs back.
    """
    T = x.shape[axis]
    t = jnp.arange(T)
    idx = jnp.where(t < lengths[..., None], lengths[..., None] - 1 - t, t)  # [*b, T]
    if axis == -2:
        idx = idx[..., None]
    return jnp.take_along_axis(x, idx, axis=axis)


def _segment_ends(resets: Array) -> Array:
    """Read backwards, a segment starts where the next one begins: step t ends a segment if t + 1 resets."""
    return jnp.concatenate([resets[..., 1:], jnp.zeros_like(resets[..., :1])], axis=-1)


def unroll(
    cell: Cell,
    params: PyTree,
    xs: Sequence,
    carry: PyTree | None = None,
    *,
    lengths: Lengths | None = None,
    resets: Resets | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    remat: bool = False,
    backend: str = "reference",
) -> tuple[PyTree, Outputs]:
    """Runs ``cell.step`` over the time axis of ``xs`` with ``jax.lax.scan``.

    Args:
      cell: the ``Cell``.
      params: its params.
      xs: ``[*b, T, D]``: one sequence ``[T, D]`` or any leading batch axes (or use ``jax.vmap``).
      carry: the initial carry (default ``cell.initial_carry(params, batch_shape)``); leaves
        broadcast to the batch axes.
      lengths: ``[*b]`` integers in ``[0, T]``. Steps past a sequence's length leave its carry
        unchanged, give zero outputs and get zero gradients; the final carry is each
        sequence's own last one, and a length of 0 returns the initial carry.
      resets: ``[T]`` or ``[*b, T]`` booleans, for packed sequences: where set, the carry is
        restarted from the initial carry before that step, so segments do not see each other.
      reverse: read each sequence backwards; with ``lengths`` each starts from its own last real
        step. Outputs stay aligned with the inputs (``ys[..., t, :]`` belongs to ``xs[..., t, :]``).
      unroll: passed to ``jax.lax.scan``.
      remat: rematerialise each step in the backward pass (``jax.checkpoint``): memory
        O(T * carry) instead of O(T * activations), for one more forward pass.
      backend: ``"reference"`` (default) scans ``cell.step`` and is differentiable to any order;
        ``"fused"`` runs ``memcell.fused`` (one input matmul for all steps, hand-written
        first-order backward pass; same values and gradients) and raises a ``ValueError`` for a
        cell or option it does not implement; ``"auto"`` runs the fused path where it applies and
        the reference elsewhere. The fused path has no jvp: keep the reference for forward-mode
        and higher-order derivatives.

    Returns:
      ``(carry, ys)``: the final carry and the outputs ``[*b, T, H]``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.lstm(4)
      >>> params = cell.init(jax.random.key(0), input_size=2)
      >>> xs = jnp.ones((3, 5, 2))                         # 3 sequences of 5 steps
      >>> carry, ys = memcell.unroll(cell, params, xs, lengths=jnp.array([5, 2, 0]))
      >>> bool((ys[1, 2:] == 0).all()), bool((carry.h[2] == 0).all())
      (True, True)
    """
    _check_backend(backend)
    if backend != "reference":
        from memcell import fused  # fused builds on this module: imported here, not at the top

        out = fused.unroll(
            cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse, remat=remat, backend=backend
        )
        if out is not None:
            return out
    xs = _check_xs(xs, params)
    batch_shape, T = tuple(xs.shape[:-2]), xs.shape[-2]
    lengths = _check_lengths(lengths, batch_shape, T)
    resets = _check_resets(resets, batch_shape, T)
    carry0 = _check_carry(cell, params, carry, batch_shape)
    step = jax.checkpoint(cell.step) if remat else cell.step

    scan_reverse = False
    if reverse:
        if resets is not None:
            resets = _segment_ends(resets)
        if lengths is None:
            scan_reverse = True
        else:
            xs = _reverse_within(xs, lengths, axis=-2)
            if resets is not None:
                resets = _reverse_within(resets, lengths, axis=-1)

    valid = None if lengths is None else jnp.arange(T) < lengths[..., None]  # [*b, T]

    def body(c, inputs):
        x, ok, reset = inputs
        c_in = c if reset is None else _tree_where(reset, carry0, c)
        if ok is None:
            return step(params, c_in, x)
        # Zeroing padded inputs keeps garbage (inf, nan) in padding out of the gradients.
        new, y = step(params, c_in, jnp.where(ok[..., None], x, jnp.zeros_like(x)))
        return _tree_where(ok, new, c), jnp.where(ok[..., None], y, jnp.zeros_like(y))

    time_major = lambda a: None if a is None else jnp.moveaxis(a, -1, 0)  # [*b, T] -> [T, *b]
    inputs = (jnp.moveaxis(xs, -2, 0), time_major(valid), time_major(resets))
    carry, ys = jax.lax.scan(body, carry0, inputs, reverse=scan_reverse, unroll=unroll)
    ys = jnp.moveaxis(ys, 0, -2)
    if reverse and lengths is not None:
        ys = _reverse_within(ys, lengths, axis=-2)
    return carry, ys


def _check_backend(backend) -> None:
    if backend not in ("reference", "fused", "auto"):
        raise ValueError(f"backend must be one of ['auto', 'fused', 'reference'], got {backend!r}")


_unroll = unroll  # `unroll` is also an argument name in the layer factories below


# ----------------------------------------------------------------------------- layers


def layer(
    cell: Cell, *, reverse: bool = False, unroll: int | bool = 1, remat: bool = False, backend: str = "reference"
) -> Layer:
    """Lifts a cell to a sequence ``Layer``: ``apply(params, xs, carry=None, *, lengths=None,
    resets=None, key=None) -> (carry, ys)`` is ``memcell.unroll`` with these options (``key`` is
    unused: cells are deterministic). ``backend="auto"`` trains the default LSTM, GRU and RNN on
    the fused path (see ``memcell.unroll``)."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a memcell.Cell, got {type(cell).__name__}")
    _check_backend(backend)

    def apply(params, xs, carry=None, *, lengths=None, resets=None, key=None):
        del key
        return _unroll(
            cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse, unroll=unroll, remat=remat,
            backend=backend,
        )

    return Layer(cell.init, apply)


class DirectionPair(NamedTuple):
    """Params (or carry) of a bidirectional layer."""

    forward: PyTree
    backward: PyTree


_MERGES: dict[str, Callable[[Array, Array], Array]] = {
    "concat": lambda f, b: jnp.concatenate([f, b], axis=-1),
    "sum": lambda f, b: f + b,
    "mean": lambda f, b: 0.5 * (f + b),
    "mul": lambda f, b: f * b,
}


def bidirectional(
    forward: Cell,
    backward: Cell,
    *,
    merge: str | Callable[[Array, Array], Array] = "concat",
    unroll: int | bool = 1,
    remat: bool = False,
    backend: str = "reference",
) -> Layer:
    """A bidirectional layer: ``forward`` reads each sequence left to right, ``backward`` right
    to left from the sequence's own last real step (so padding never reaches it first).

    Params and carry are ``DirectionPair(forward, backward)``. ``merge`` combines the two
    outputs, aligned by time step: ``"concat"`` (``[*b, T, 2H]``), ``"sum"``, ``"mean"``,
    ``"mul"`` or a function ``(ys_forward, ys_backward) -> ys``. ``unroll``, ``remat`` and
    ``backend`` are ``memcell.unroll``'s, for both directions.
    """
    for name, cell in (("forward", forward), ("backward", backward)):
        if not isinstance(cell, Cell):
            raise TypeError(f"{name} must be a memcell.Cell, got {type(cell).__name__}")
    if not callable(merge) and merge not in _MERGES:
        raise ValueError(f"merge must be one of {sorted(_MERGES)} or a callable, got {merge!r}")
    merge_fn = merge if callable(merge) else _MERGES[merge]
    _check_backend(backend)

    def init(key, input_size: int) -> DirectionPair:
        kf, kb = jax.random.split(key)
        return DirectionPair(forward.init(kf, input_size), backward.init(kb, input_size))

    def apply(params, xs, carry=None, *, lengths=None, resets=None, key=None):
        del key
        carry = DirectionPair(None, None) if carry is None else carry
        kw = dict(lengths=lengths, resets=resets, unroll=unroll, remat=remat, backend=backend)
        cf, yf = _unroll(forward, params.forward, xs, carry.forward, **kw)
        cb, yb = _unroll(backward, params.backward, xs, carry.backward, reverse=True, **kw)
        return DirectionPair(cf, cb), merge_fn(yf, yb)

    return Layer(init, apply)


def _output_size(lyr: Layer, params, input_size: int) -> int:
    ys = jax.eval_shape(lambda p: lyr.apply(p, jnp.zeros((1, input_size), jnp.float32))[1], params)
    return ys.shape[-1]


def stack(layers: SequenceOf[Cell | Layer], *, residual: bool = False, dropout: float = 0.0) -> Layer:
    """A deep RNN: layers applied one after another, each reading the previous one's outputs.

    Args:
      layers: ``Cell``s (lifted with ``memcell.layer``) or ``Layer``s (``bidirectional``, ``stack``).
      residual: add each layer's input to its output, from the second layer on (the sizes
        must then match; ``init`` says where they do not).
      dropout: rate of dropout on the inputs of the second and later layers (between layers),
        applied only when ``apply`` gets a ``key``; without one the stack is deterministic.

    Returns:
      A ``Layer`` whose params and carry are tuples with one entry a layer.
    """
    layers = tuple(layer(x) if isinstance(x, Cell) else x for x in layers)
    if not layers:
        raise ValueError("layers must hold at least one Cell or Layer, got none")
    for i, x in enumerate(layers):
        if not isinstance(x, Layer):
            raise TypeError(f"layers[{i}] must be a memcell.Cell or memcell.Layer, got {type(x).__name__}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
    n = len(layers)

    def init(key, input_size: int) -> tuple:
        params, d = [], input_size
        for i, (lyr, k) in enumerate(zip(layers, jax.random.split(key, n))):
            p = lyr.init(k, d)
            d_out = _output_size(lyr, p, d)
            if residual and i > 0 and d_out != d:
                raise ValueError(
                    f"residual=True needs layer {i}'s output size to equal its input size, got {d_out} and {d}"
                )
            params.append(p)
            d = d_out
        return tuple(params)

    def apply(params, xs, carry=None, *, lengths=None, resets=None, key=None):
        if len(params) != n:
            raise ValueError(f"params must hold one entry per layer ({n}), got {len(params)}")
        carry = (None,) * n if carry is None else tuple(carry)
        if len(carry) != n:
            raise ValueError(f"carry must hold one entry per layer ({n}), got {len(carry)}")
        keys = [None] * n if key is None else list(jax.random.split(key, n))
        h, carries = xs, []
        for i, (lyr, p, c) in enumerate(zip(layers, params, carry)):
            inp = h
            if i > 0 and dropout > 0.0 and keys[i] is not None:
                keys[i], sub = jax.random.split(keys[i])
                keep = jax.random.bernoulli(sub, 1.0 - dropout, inp.shape)
                inp = jnp.where(keep, inp / (1.0 - dropout), jnp.zeros_like(inp))
            c, y = lyr.apply(p, inp, c, lengths=lengths, resets=resets, key=keys[i])
            h = y + h if (residual and i > 0) else y
            carries.append(c)
        return tuple(carries), h

    return Layer(init, apply)
