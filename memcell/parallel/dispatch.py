"""Dispatch from ``memcell.unroll(..., backend="parallel" | "auto")``: which cells the parallel path runs.

Only the cell's declared spec decides (see ``memcell.CellSpec``): a ``LinearSpec`` (minGRU,
minLSTM, LRU, RG-LRU) runs the chunked linear scan of ``memcell.parallel.linear`` over the
coefficients the spec computes for all steps at once; an ``MLSTMSpec`` runs the mLSTM's chunkwise
form (``memcell.parallel.mlstm``); any other cell is refused (``"auto"``: runs the next path).
Lengths, resets, reverse and the initial carry are handled here, once, for every such cell, and
give what the reference path gives.
"""

import jax
import jax.numpy as jnp

from memcell import _checks, _dispatch
from memcell._sequence import reverse_within, segment_ends
from memcell.cells.xlstm import MLSTMSpec
from memcell.parallel import mlstm, tuning
from memcell.parallel.linear import linear_scan
from memcell.types import Cell, Lengths, LinearSpec, PyTree, Sequence

__all__ = ["supports", "unroll", "why_not"]


def _plan(cell: Cell, *, remat: bool | str | int = False):
    """The function that runs ``cell`` in parallel over time, or a string saying why none does."""
    spec, reason = _dispatch.declared_spec(
        cell, "the cell declares no parallel path (only cells whose carry update is linear in the carry do)")
    if reason is not None:
        return reason
    if remat:
        return (f"remat={remat!r} is not implemented by the parallel path (it computes every step's coefficients "
                "at once; checkpointed blocks of steps are not written for it); backend='auto' runs remat on the "
                "reference path")
    if spec.parallel is not None:  # the cell's own parallel form, on the framed arrays
        return lambda spec, *framed: spec.parallel(*framed)
    if isinstance(spec, LinearSpec):
        return _linear
    if isinstance(spec, MLSTMSpec):
        return _mlstm
    return f"no parallel path for a cell with a {type(spec).__name__}: its carry update is not linear in the carry"


def why_not(cell: Cell, *, remat: bool | str | int = False) -> str | None:
    """Why ``memcell.unroll(cell, ..., backend="parallel")`` would refuse, or None if it runs."""
    plan = _plan(cell, remat=remat)
    return plan if isinstance(plan, str) else None


def supports(cell: Cell, *, remat: bool | str | int = False) -> bool:
    """Whether ``memcell.unroll(cell, ..., backend="parallel")`` runs for these options (``"auto"``
    runs it where ``memcell.parallel.tuning`` also measured it faster on the platform)."""
    return why_not(cell, remat=remat) is None


def _linear(spec: LinearSpec, params, xs, carry0, valid, resets, chunk_size: int):
    """``h_t = a_t h_{t-1} + b_t`` from the spec's coefficients; ``(carry, ys)``."""
    leaves, treedef = jax.tree.flatten(carry0)
    if len(leaves) != 1:
        raise ValueError(f"a LinearSpec cell's carry must hold exactly one array, got {len(leaves)} leaves")
    (h0,) = leaves
    a, b = spec.coefficients(params, xs)
    v = None if valid is None else valid[..., None]
    s = None if resets is None else resets[..., None]  # where the carry restarts from h0
    h0_t = h0[..., None, :]
    if spec.log_space:
        # The scan never forms a product of coefficients over more than one chunk, nor divides by
        # one, so it is as precise in linear space as the step itself (which also runs linear):
        # exp of the stably computed logs, and one scan. (The paper's log-space scan exists to
        # avoid the cumulative products of a one-pass parallel scan; memcell.parallel keeps
        # log_linear_scan for whoever wants log h itself.)
        a, b = jnp.exp(a), jnp.exp(b)
    if v is not None:  # past a sequence's length the carry stays: a = 1, b = 0
        a, b = jnp.where(v, a, jnp.ones_like(a)), jnp.where(v, b, jnp.zeros_like(b))
    if s is not None:  # a restart: h_t = a_t h0 + b_t
        a, b = jnp.where(s, jnp.zeros_like(a), a), jnp.where(s, b + a * h0_t, b)
    hs = linear_scan(a, b, h0.astype(jnp.result_type(a, b)), chunk_size=chunk_size)
    hs = hs.astype(jnp.result_type(hs, h0))
    ys = spec.readout(params, hs, xs)
    return jax.tree.unflatten(treedef, [hs[..., -1, :]]), ys


# The mLSTM's chunks are quadratic in their length (an [L, L] matrix a chunk and head), so it takes
# at most this many steps a chunk, whatever the linear scan's choice (one chunk of T steps on CPU).
# Measured on CPU (2 shared cores, load ~5; h=64, 4 heads, B=8, d=32; jit(grad) of sum(ys^2)):
# T=256: reference 34.8 ms, chunks of 16/32/64 steps 18.6/19.5/22.8 ms; T=1024: reference 239 ms,
# chunks of 32/64/128 steps 102/132/125 ms. Not measured on an accelerator yet.
MLSTM_MAX_CHUNK = 64


def _mlstm(spec: MLSTMSpec, params, xs, carry0, valid, resets, chunk_size: int):
    """The mLSTM's chunkwise form (``memcell.parallel.mlstm``); ``(carry, ys)``."""
    return mlstm.chunkwise(spec, params, xs, carry0, valid, resets, chunk_size=min(chunk_size, MLSTM_MAX_CHUNK))


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
    backend: str = "parallel",
    chunk_size: int | None = None,
):
    """``memcell.unroll`` on the parallel path: what ``memcell.unroll(..., backend=...)`` calls.

    Args:
      cell, params, xs, carry, lengths, resets, reverse, remat: as for ``memcell.unroll``.
      backend: ``"parallel"`` raises a ``ValueError`` saying why when the cell or an option has no
        parallel implementation; ``"auto"`` returns None then, so the caller tries the next path.
      chunk_size: steps a chunk of the chunked scan (default: ``memcell.parallel.tuning``'s choice
        for the platform).

    Returns:
      ``(carry, ys)``, or None (``backend="auto"`` only) when the parallel path does not apply.
    """
    _checks.check_backend(backend, ("parallel", "auto"))
    plan = _plan(cell, remat=remat)
    if backend == "auto" and not isinstance(plan, str) and not tuning.auto_runs_parallel(cell.spec):
        return None  # measured slower than the reference on this platform (memcell.parallel.tuning)
    if isinstance(plan, str):
        if backend == "auto":
            return None
        raise ValueError(f"backend='parallel' cannot run this unroll: {plan}; use backend='auto' or 'reference'")
    xs = _checks.check_xs(xs, params)
    _checks.check_params(cell, params, xs.shape[-1])
    batch_shape, T = tuple(xs.shape[:-2]), xs.shape[-2]
    lengths = _checks.check_lengths(lengths, batch_shape, T)
    resets = _checks.check_resets(resets, batch_shape, T)
    carry0 = _checks.check_carry(cell, params, carry, batch_shape)
    if chunk_size is not None:
        chunk_size = _checks.check_positive_int("chunk_size", chunk_size)
    if T == 0:  # no step: the initial carry, and no outputs of the step's output shape
        x = jax.ShapeDtypeStruct(batch_shape + xs.shape[-1:], xs.dtype)
        y = jax.eval_shape(cell.step, params, carry0, x)[1]
        return carry0, jnp.zeros(batch_shape + (0,) + y.shape[len(batch_shape):], y.dtype)

    # The time direction, as on the reference path: read backwards, a segment starts where the next
    # one begins; with lengths each sequence is reversed within its own length.
    flip = reverse and lengths is None
    if reverse:
        if resets is not None:
            resets = segment_ends(resets)
        if lengths is not None:
            xs = reverse_within(xs, lengths, axis=-2)
            if resets is not None:
                resets = reverse_within(resets, lengths, axis=-1)
    if flip:
        xs = jnp.flip(xs, axis=-2)
        resets = None if resets is None else jnp.flip(resets, axis=-1)
    if resets is not None:
        resets = jnp.broadcast_to(resets, batch_shape + (T,))
    valid = None if lengths is None else jnp.arange(T) < lengths[..., None]  # [*b, T]
    if valid is not None:  # padded inputs zeroed: garbage there never reaches values or gradients
        xs = jnp.where(valid[..., None], xs, jnp.zeros_like(xs))

    L = tuning.chunk_size(T) if chunk_size is None else chunk_size
    carry, ys = plan(cell.spec, params, xs, carry0, valid, resets, L)
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
    if flip:
        ys = jnp.flip(ys, axis=-2)
    elif reverse:
        ys = reverse_within(ys, lengths, axis=-2)
    return carry, ys
