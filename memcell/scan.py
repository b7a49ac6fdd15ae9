"""Unrolling cells over sequences (lengths, resets, reverse) and sequence-level layers.

Everything here is built on one function, ``unroll`` (the one frame and path resolution of
``memcell.paths``): ``layer``, ``bidirectional`` and ``stack`` compose it, they do not loop on their own.
"""

from typing import Callable, Sequence as SequenceOf

import jax
import jax.numpy as jnp

from memcell import _checks, paths, regularize
from memcell.types import Array, Backend, Cell, DirectionPair, Layer, Lengths, Outputs, PyTree, Resets, Sequence

__all__ = ["DirectionPair", "bidirectional", "layer", "stack", "unroll"]


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
    remat: bool | str | int = False,
    backend: Backend = "reference",
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
        sequence's own last one, and a length of 0 returns the initial carry. Concrete lengths
        outside ``[0, T]`` raise a ``ValueError``; traced ones (inside ``jax.jit``, where their
        values cannot be checked) are clipped to ``[0, T]``.
      resets: ``[T]`` or ``[*b, T]`` booleans, for packed sequences: where set, the carry is
        restarted from the initial carry before that step, so segments do not see each other.
        A reset past a sequence's length does nothing (the carry is kept there).
      reverse: read each sequence backwards; with ``lengths`` each starts from its own last real
        step. Outputs stay aligned with the inputs (``ys[..., t, :]`` belongs to ``xs[..., t, :]``).
      unroll: passed to ``jax.lax.scan``.
      remat: what the backward pass recomputes instead of keeping (``jax.checkpoint``), for one
        more forward pass. ``False``: nothing, every step's activations are kept. ``True`` or
        ``"step"``: each step, keeping every step's carry (O(T) carries). ``"sqrt"``: blocks of
        k = round(sqrt(T)) steps, keeping one carry a block and one block's activations at a
        time (O(sqrt(T))). An int k: blocks of k steps. T need not be a multiple of k (the last
        block is shorter); lengths, resets, reverse and the initial carry work with every policy.
        The fused path runs its kernel on each block; the parallel path refuses remat. See
        docs/cells_and_unrolling.md#long-sequences-in-memory for the measured memory and time.
      backend: ``"reference"`` (default) scans ``cell.step`` and is differentiable to any order;
        ``"fused"`` runs ``memcell.fused`` (one input matmul for all steps, hand-written
        first-order backward pass; same values and gradients) and raises a ``ValueError`` for a
        cell or option it does not implement; ``"parallel"`` runs ``memcell.parallel`` for cells
        whose carry update is linear in the carry (minGRU, minLSTM, LRU, RG-LRU, mLSTM: all
        steps' coefficients at once, then a chunked scan; derivatives of every order) and
        raises for any other; ``"cudnn"`` runs the default LSTM through cuDNN
        (``memcell.cudnn``; GPU only, float32, no resets) and raises a ``ValueError`` saying why
        where it cannot; ``"auto"`` runs the first path of the platform's order
        (``memcell.paths.order()``) that runs the cell and was measured faster there, else the
        reference (``memcell.paths.why_not(backend, cell)`` says why a path refuses a cell). The
        fused and cuDNN paths have no jvp:
        keep the reference (or the parallel path) for forward-mode and higher-order derivatives.

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
      >>> long = jnp.ones((100, 2))                        # 10 checkpointed blocks of 10 steps
      >>> g = jax.grad(lambda p: memcell.unroll(cell, p, long, remat="sqrt")[0].h.sum())(params)
    """
    return paths.run(cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse, unroll=unroll,
                     remat=remat, backend=backend)


_unroll = unroll  # `unroll` is also an argument name in the layer factories below


# ----------------------------------------------------------------------------- layers


def layer(
    cell: Cell,
    *,
    reverse: bool = False,
    unroll: int | bool = 1,
    remat: bool | str | int = False,
    backend: Backend = "reference",
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    zoneout: float | dict = 0.0,
    learn_initial_carry: bool = False,
) -> Layer:
    """Lifts a cell to a sequence ``Layer``: ``apply(params, xs, carry=None, *, lengths=None,
    resets=None, key=None) -> (carry, ys)`` is ``memcell.unroll`` with these options.

    ``apply`` with a ``key`` is training mode (the dropouts and zoneout draw their masks from it);
    without one, evaluation mode (deterministic). ``memcell.regularize`` says what each option does.

    Args:
      cell: the ``Cell``.
      reverse, unroll, remat, backend: as for ``memcell.unroll`` (``backend="auto"`` trains the
        default LSTM, GRU and RNN on the fused path).
      dropout: variational dropout on the inputs: one mask a sequence, the same at every step,
        kept inputs scaled by ``1 / (1 - dropout)``. Any backend (the cell itself is unchanged).
      recurrent_dropout: variational dropout on ``h`` where it enters the recurrent matmul, one
        mask a sequence (Gal and Ghahramani 2016); the LSTM's ``c`` and the GRU's
        ``z * h`` path are not dropped. For ``memcell.lstm``, ``memcell.rnn`` and ``memcell.gru``.
      zoneout: each unit of the carry keeps its previous value with this probability, a fresh
        mask each step (Krueger et al. 2017); at evaluation the expectation
        ``zoneout * carry_{t-1} + (1 - zoneout) * carry_t``. A dict ``{field: rate}`` sets a
        rate per carry field (``{"c": 0.5, "h": 0.05}``). Any cell.
      learn_initial_carry: the initial carry becomes a param, initialised to
        ``cell.initial_carry(params)`` and broadcast over the batch: the layer's params are
        ``LearntCarry(params, carry)``. A ``carry`` given to ``apply`` still replaces it.

    ``recurrent_dropout`` and ``zoneout`` change the step, so they run on the reference path:
    ``backend="auto"`` falls back to it, ``backend="fused"`` is refused, naming the option.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> lyr = memcell.layer(memcell.lstm(8), recurrent_dropout=0.25, zoneout={"c": 0.5, "h": 0.05})
      >>> params = lyr.init(jax.random.key(0), 3)
      >>> xs = jnp.ones((2, 5, 3))
      >>> _, ys_train = lyr.apply(params, xs, key=jax.random.key(1))   # masks drawn from the key
      >>> _, ys_eval = lyr.apply(params, xs)                            # deterministic
      >>> ys_train.shape == ys_eval.shape == (2, 5, 8)
      True
    """
    _checks.check_cell(cell)
    _checks.check_backend(backend)
    reverse = _checks.check_bool("reverse", reverse)
    remat = _checks.check_remat(remat)
    unroll = _checks.check_unroll(unroll)
    dropout = _checks.check_in("dropout", dropout, 0.0, 1.0, hi_open=True)
    recurrent_dropout = _checks.check_in("recurrent_dropout", recurrent_dropout, 0.0, 1.0, hi_open=True)
    zoneout = regularize.check_zoneout(zoneout)
    learn_initial_carry = _checks.check_bool("learn_initial_carry", learn_initial_carry)
    if recurrent_dropout > 0.0:
        regularize.recurrent_dropout_kind(cell)  # refuses the cells it cannot reach inside
    changes_step = {"recurrent_dropout": recurrent_dropout, "zoneout": zoneout}
    changes_step = {k: v for k, v in changes_step.items() if v}
    if changes_step:
        if backend == "fused":
            name, value = next(iter(changes_step.items()))
            raise ValueError(
                f"backend='fused' cannot run {name}={value!r}: it changes the step, which only the reference "
                "path runs; use backend='auto' or 'reference'"
            )
        backend = "reference"
    regularized = bool(dropout or changes_step)

    def init(key, input_size: int):
        params = cell.init(key, input_size)
        if not learn_initial_carry:
            return params
        return regularize.LearntCarry(params, cell.initial_carry(params))

    def apply(params, xs, carry=None, *, lengths=None, resets=None, key=None):
        if learn_initial_carry:
            if not isinstance(params, regularize.LearntCarry):
                raise TypeError(
                    f"params must be memcell.regularize.LearntCarry(params, carry) with learn_initial_carry=True, "
                    f"got {type(params).__name__}"
                )
            carry = params.carry if carry is None else carry
            params = params.params
        c, p = cell, params
        if regularized:
            xs = _checks.check_xs(xs, params)
            c, p, xs = regularize.regularized(
                cell, params, xs, key=key, dropout=dropout, recurrent_dropout=recurrent_dropout, zoneout=zoneout
            )
        return _unroll(
            c, p, xs, carry, lengths=lengths, resets=resets, reverse=reverse, unroll=unroll, remat=remat,
            backend=backend,
        )

    return Layer(init, apply)


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
    remat: bool | str | int = False,
    backend: Backend = "reference",
) -> Layer:
    """A bidirectional layer: ``forward`` reads each sequence left to right, ``backward`` right
    to left from the sequence's own last real step (so padding never reaches it first).

    Params and carry are ``DirectionPair(forward, backward)``. ``merge`` combines the two
    outputs, aligned by time step: ``"concat"`` (``[*b, T, 2H]``), ``"sum"``, ``"mean"``,
    ``"mul"`` or a function ``(ys_forward, ys_backward) -> ys``. ``unroll``, ``remat`` and
    ``backend`` are ``memcell.unroll``'s, for both directions.
    """
    _checks.check_cell(forward, "forward")
    _checks.check_cell(backward, "backward")
    if not callable(merge) and merge not in _MERGES:
        raise ValueError(f"merge must be one of {sorted(_MERGES)} or a callable, got {merge!r}")
    merge_fn = merge if callable(merge) else _MERGES[merge]
    _checks.check_backend(backend)
    remat = _checks.check_remat(remat)
    unroll = _checks.check_unroll(unroll)

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
        ``apply``'s key is split among the layers, so layers made with ``memcell.layer``'s
        ``dropout``, ``recurrent_dropout`` and ``zoneout`` train with it too.

    Returns:
      A ``Layer`` whose params and carry are tuples with one entry a layer.
    """
    layers = tuple(layer(x) if isinstance(x, Cell) else x for x in layers)
    if not layers:
        raise ValueError("layers must hold at least one Cell or Layer, got none")
    for i, x in enumerate(layers):
        if not isinstance(x, Layer):
            raise TypeError(f"layers[{i}] must be a memcell.Cell or memcell.Layer, got {type(x).__name__}")
    residual = _checks.check_bool("residual", residual)
    dropout = _checks.check_in("dropout", dropout, 0.0, 1.0, hi_open=True)
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
