"""Dispatch from ``memcell.unroll(..., backend=...)``: which cells and options the fused path runs.

Only the cell's declared spec decides (see ``memcell.CellSpec``), never attributes of its functions.
"""

from memcell import _checks, _dispatch
from memcell.cells import GRUSpec, LSTMSpec, RNNSpec
from memcell.fused import layers
from memcell.types import Cell, Lengths, PyTree, Sequence

__all__ = ["supports", "unroll", "why_not"]



def _plan(cell: Cell, *, resets=None, remat: bool | str | int = False):
    """``(function, keyword args)`` that runs ``cell`` fused, or a string saying why it cannot.

    Only the cell's declared spec decides (see ``memcell.CellSpec``): a cell without one, or whose
    spec was made for another step function (a wrapped, partial or replaced step), runs the reference.
    """
    spec, reason = _dispatch.declared_spec(
        cell, "the cell declares no fast path (only memcell.lstm, memcell.gru and memcell.rnn cells do)")
    if reason is not None:
        return reason
    if resets is not None:
        return "resets (packed sequences) are not implemented by the fused path"
    if isinstance(spec, LSTMSpec):
        off = _dispatch.options_set(spec, LSTMSpec)  # the fused kernel implements the default LSTM only
        if off:
            return f"the fused LSTM implements the default cell only, this one sets {', '.join(off)}"
        return layers.lstm, dict(dtype=spec.dtype)
    if isinstance(spec, GRUSpec):
        if spec.reset_after is not True:
            return "the fused GRU implements reset_after=True only"
        return layers.gru, dict(dtype=spec.dtype)
    if isinstance(spec, RNNSpec):
        return layers.rnn, dict(dtype=spec.dtype, activation=spec.activation)
    return f"no fused path for a cell with a {type(spec).__name__}"


def why_not(cell: Cell, *, resets=None, remat: bool | str | int = False) -> str | None:
    """Why ``memcell.unroll(cell, ..., backend="fused")`` would refuse these options, or None if it runs."""
    plan = _plan(cell, resets=resets, remat=remat)
    return plan if isinstance(plan, str) else None


def supports(cell: Cell, *, resets=None, remat: bool | str | int = False) -> bool:
    """Whether ``memcell.unroll(cell, ..., backend="auto")`` would run the fused path for these options."""
    return why_not(cell, resets=resets, remat=remat) is None


def unroll(
    cell: Cell,
    params: PyTree,
    xs: Sequence,
    carry: PyTree | None = None,
    *,
    lengths: Lengths | None = None,
    resets=None,
    reverse: bool = False,
    remat: bool | str | int = False,
    backend: str = "fused",
):
    """``memcell.unroll`` on the fused path: what ``memcell.unroll(..., backend=...)`` calls.

    Args:
      cell, params, xs, carry, lengths, resets, reverse, remat: as for ``memcell.unroll``.
      backend: ``"fused"`` raises a ``ValueError`` saying why when the cell or an option has
        no fused implementation; ``"auto"`` returns None then, so the caller runs the reference.

    Returns:
      ``(carry, ys)``, or None (``backend="auto"`` only) when the fused path does not apply.
    """
    _checks.check_backend(backend, ("fused", "auto"))
    plan = _plan(cell, resets=resets, remat=remat)
    if isinstance(plan, str):
        if backend == "auto":
            return None
        raise ValueError(f"backend='fused' cannot run this unroll: {plan}; use backend='auto' or 'reference'")
    fn, kwargs = plan
    xs = _checks.check_xs(xs, params)
    _checks.check_params(cell, params, xs.shape[-1])  # the kernel would run any consistent params
    return fn(params, xs, carry, lengths=lengths, reverse=reverse, remat=remat, **kwargs)
