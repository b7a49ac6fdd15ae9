"""The fused layers ``lstm``, ``gru`` and ``rnn``: ``memcell.unroll`` of the default cell on the fused path."""

import jax.numpy as jnp

from memcell import _checks, paths
from memcell.cells import GRUCarry, GRUParams, LSTMCarry, LSTMParams, RNNCarry, RNNParams, gru as gru_cell
from memcell.cells import lstm as lstm_cell, rnn as rnn_cell
from memcell.types import Lengths, Outputs, Sequence

__all__ = ["gru", "lstm", "rnn"]


def _run(cell, params, xs, carry, lengths, reverse, remat):
    """The one frame and the fused path, as ``memcell.unroll(cell, ..., backend="fused")`` runs them."""
    return paths.run(cell, params, xs, carry, lengths=lengths, reverse=reverse, remat=remat, backend="fused")


def _check_params(name: str, params, cls, n_gates: int, bias_fields: tuple[str, ...], extra: dict) -> int:
    """The fused layers take the default cell's params only; anything else is refused by name."""
    if not isinstance(params, cls):
        raise TypeError(f"params must be a memcell.cells.{cls.__name__} for memcell.fused.{name}, got {type(params).__name__}")
    for field, what in extra.items():
        if getattr(params, field) is not None:
            raise ValueError(
                f"memcell.fused.{name} does not implement {what} (params.{field} is set); "
                f"use memcell.unroll, or memcell.unroll(..., backend='auto'), which falls back to it"
            )
    w_x, w_h = params.w_x, params.w_h
    if getattr(w_h, "ndim", None) != 2 or w_h.shape[1] != n_gates * w_h.shape[0]:
        raise ValueError(
            f"memcell.fused.{name} needs params.w_h of shape [h, {n_gates}h] (all {n_gates} gate blocks; "
            f"gate ablations and cifg are not implemented), got shape {getattr(w_h, 'shape', None)}"
        )
    G = w_h.shape[1]
    if getattr(w_x, "ndim", None) != 2 or w_x.shape[1] != G:
        raise ValueError(f"params.w_x must have shape [d, {G}], got shape {getattr(w_x, 'shape', None)}")
    for field in bias_fields:
        b = getattr(params, field)
        if getattr(b, "shape", None) != (G,):
            raise ValueError(f"params.{field} must have shape ({G},), got shape {getattr(b, 'shape', None)}")
    for field in ("w_x", "w_h") + bias_fields:
        dt = getattr(params, field).dtype
        if not jnp.issubdtype(dt, jnp.floating):
            raise TypeError(f"params.{field} must be a floating-point array, got dtype {dt}")
    return w_h.shape[0]


def lstm(
    params: LSTMParams,
    xs: Sequence,
    carry: LSTMCarry | None = None,
    *,
    lengths: Lengths | None = None,
    reverse: bool = False,
    remat: bool | str | int = False,
    dtype=None,
) -> tuple[LSTMCarry, Outputs]:
    """The LSTM over a sequence, fused: equal to ``memcell.unroll(memcell.lstm(h, dtype=dtype), ...)``.

    Supports the default LSTM (gates ``i, f, g, o``, one bias; any init or ``forget_bias``,
    since those only set the params). Peepholes, layer norm, cifg and gate or activation
    ablations raise a ``ValueError``: run those with ``memcell.unroll``.

    Args:
      params: ``LSTMParams`` of ``memcell.lstm(h)`` (``w_x: [d, 4h]``, ``w_h: [h, 4h]``, ``b: [4h]``).
      xs: ``[*b, T, D]``, batch-major (time just before features).
      carry: initial ``LSTMCarry`` (default zeros); leaves broadcast to the batch axes.
      lengths: ``[*b]`` integers in ``[0, T]``, as in ``memcell.unroll``: padded steps keep the
        carry, output zeros and get zero gradients.
      reverse: read each sequence backwards (from its own last real step with ``lengths``).
      remat: ``False``, ``"sqrt"`` or an int k, as for ``memcell.unroll``: the kernel runs on
        checkpointed blocks of k steps (``"sqrt"``: round(sqrt(T))), so the backward pass keeps
        one carry a block and one block's coefficients instead of every step's.
      dtype: matmul computation dtype, the factory's ``dtype`` (bfloat16 accumulates in float32;
        the carry stays float32).

    Returns:
      ``(carry, ys)``: the final ``LSTMCarry`` and ``ys: [*b, T, h]``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> from memcell import fused
      >>> cell = memcell.lstm(16)
      >>> params = cell.init(jax.random.key(0), input_size=4)
      >>> xs = jnp.ones((2, 10, 4))
      >>> carry, ys = fused.lstm(params, xs)
      >>> bool(jnp.allclose(ys, memcell.unroll(cell, params, xs)[1], atol=1e-6))
      True
      >>> grads = jax.grad(lambda p: jnp.mean(fused.lstm(p, xs)[1] ** 2))(params)
    """
    dtype = _checks.check_float_dtype("dtype", dtype, allow_none=True)
    H = _check_params("lstm", params, LSTMParams, 4, ("b",),
                      {"p_i": "peepholes", "p_f": "peepholes", "p_o": "peepholes", "norm": "layer norm",
                       "w_hr": "the output projection (proj_size)"})
    return _run(lstm_cell(H, dtype=dtype), params, xs, carry, lengths, reverse, remat)


def gru(
    params: GRUParams,
    xs: Sequence,
    carry: GRUCarry | None = None,
    *,
    lengths: Lengths | None = None,
    reverse: bool = False,
    remat: bool | str | int = False,
    reset_after: bool = True,
    dtype=None,
) -> tuple[GRUCarry, Outputs]:
    """The GRU over a sequence, fused: equal to ``memcell.unroll(memcell.gru(h, dtype=dtype), ...)``.

    Only ``reset_after=True`` (the default, PyTorch's and cuDNN's) is fused: its three
    recurrent blocks share one matmul. ``reset_after=False`` raises a ``ValueError``.

    Args:
      params: ``GRUParams`` (``w_x: [d, 3h]``, ``w_h: [h, 3h]``, ``b_x, b_h: [3h]``).
      xs, carry, lengths, reverse, remat, dtype: as for ``memcell.fused.lstm``.
      reset_after: must be True; the keyword mirrors the factory's so a mismatch is refused.

    Returns:
      ``(carry, ys)``: the final ``GRUCarry`` and ``ys: [*b, T, h]``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> params = memcell.gru(8).init(jax.random.key(0), input_size=3)
      >>> carry, ys = memcell.fused.gru(params, jnp.ones((5, 6, 3)))
      >>> ys.shape
      (5, 6, 8)
    """
    if reset_after is not True:
        raise ValueError(
            f"memcell.fused.gru implements reset_after=True only, got reset_after={reset_after!r}; use memcell.unroll"
        )
    dtype = _checks.check_float_dtype("dtype", dtype, allow_none=True)
    H = _check_params("gru", params, GRUParams, 3, ("b_x", "b_h"), {})
    return _run(gru_cell(H, dtype=dtype), params, xs, carry, lengths, reverse, remat)


def rnn(
    params: RNNParams,
    xs: Sequence,
    carry: RNNCarry | None = None,
    *,
    lengths: Lengths | None = None,
    reverse: bool = False,
    remat: bool | str | int = False,
    activation: str = "tanh",
    dtype=None,
) -> tuple[RNNCarry, Outputs]:
    """The Elman RNN over a sequence, fused: equal to ``memcell.unroll(memcell.rnn(h, activation=..., dtype=...), ...)``.

    Args:
      params: ``RNNParams`` (``w_x: [d, h]``, ``w_h: [h, h]``, ``b: [h]``).
      xs, carry, lengths, reverse, remat, dtype: as for ``memcell.fused.lstm``.
      activation: ``"tanh"`` or ``"relu"``, as the factory's.

    Returns:
      ``(carry, ys)``: the final ``RNNCarry`` and ``ys: [*b, T, h]``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> params = memcell.rnn(8, activation="relu").init(jax.random.key(0), input_size=3)
      >>> carry, ys = memcell.fused.rnn(params, jnp.ones((6, 3)), activation="relu")
      >>> ys.shape, carry.h.shape
      ((6, 8), (8,))
    """
    _checks.check_choice("activation", activation, {"tanh", "relu"})
    dtype = _checks.check_float_dtype("dtype", dtype, allow_none=True)
    H = _check_params("rnn", params, RNNParams, 1, ("b",), {})
    return _run(rnn_cell(H, activation=activation, dtype=dtype), params, xs, carry, lengths, reverse, remat)
