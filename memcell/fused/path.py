"""The fused path as a ``memcell.types.Path``: which cells it runs, and running them on a framed sequence.

Only the cell's declared spec decides (see ``memcell.CellSpec``), never attributes of its functions:
the default LSTM, the GRU with ``reset_after=True`` and the tanh/ReLU RNN.
"""

import jax.numpy as jnp

from memcell import _checks, _dispatch
from memcell._sequence import flat_batch_size
from memcell.cells import GRUSpec, LSTMSpec, RNNSpec
from memcell.fused import tuning
from memcell.fused._kernel import blocked, fused
from memcell.fused.kinds import gru_kind, lstm_kind, rnn_kind
from memcell.fused.layout import feature_axis
from memcell.types import Cell, Frame, Path

__all__ = ["PATH", "why_not"]


def why_not(cell: Cell, params=None, fr: Frame | None = None) -> str | None:
    """Why the fused path cannot run ``cell`` on this frame, or None if it runs.

    Example:
      >>> import memcell
      >>> from memcell import fused
      >>> fused.why_not(memcell.lstm(4, peephole=True))
      'the fused LSTM implements the default cell only, this one sets peephole'
    """
    spec, reason = _dispatch.declared_spec(
        cell, "the cell declares no fast path (only memcell.lstm, memcell.gru and memcell.rnn cells do)")
    if reason is not None:
        return reason
    if fr is not None and fr.resets is not None:
        return "resets (packed sequences) are not implemented by the fused path"
    if isinstance(spec, LSTMSpec):
        off = _dispatch.options_set(spec, LSTMSpec)  # the fused kernel implements the default LSTM only
        return f"the fused LSTM implements the default cell only, this one sets {', '.join(off)}" if off else None
    if isinstance(spec, GRUSpec):
        return None if spec.reset_after is True else "the fused GRU implements reset_after=True only"
    if isinstance(spec, RNNSpec):
        return None
    return f"no fused path for a cell with a {type(spec).__name__}"


def _kind(spec, H: int):
    """The kernel's description of the cell (its step and backward pieces) in the platform's layout."""
    t = tuning.for_platform()  # read now, at trace time
    layout = dict(axis=feature_axis(H, t), tuning=t)
    if isinstance(spec, LSTMSpec):
        return lstm_kind(spec.dtype, **layout)
    if isinstance(spec, GRUSpec):
        return gru_kind(spec.dtype, **layout)
    return rnn_kind(spec.dtype, spec.activation, **layout)


def _run(cell: Cell, params, fr: Frame):
    """The kernel over the batch flattened to one axis; ``(carry, ys)`` in processing order."""
    spec = cell.spec
    batch_shape, (T, D) = tuple(fr.xs.shape[:-2]), fr.xs.shape[-2:]
    H = params.w_h.shape[0]
    B = flat_batch_size(batch_shape)
    b_x, b_h = (params.b_x, params.b_h) if isinstance(spec, GRUSpec) else (params.b, None)
    carry0 = tuple(fr.carry0)
    flat_c = tuple(leaf.reshape(B, H) for leaf in carry0)
    mask = None if fr.valid is None else fr.valid.reshape(B, T)
    kind = _kind(spec, H)
    k = 1 if fr.remat == "step" else _checks.remat_block(fr.remat, T)
    args = (kind, params.w_x, params.w_h, b_x, b_h, fr.xs.reshape(B, T, D), flat_c, mask)
    carry_T, ys = fused(*args) if k is None else blocked(*args, k)
    carry = type(fr.carry0)(*(leaf.reshape(batch_shape + (H,)) for leaf in carry_T))
    return carry, ys.reshape(batch_shape + (T, H))


PATH = Path("fused", why_not, _run)
