"""The parallel path as a ``memcell.types.Path``: cells whose carry update is linear in the carry.

Only the cell's declared spec decides (see ``memcell.CellSpec``): a spec with its own ``parallel``
form runs it; a ``LinearSpec`` (minGRU, minLSTM, LRU, RG-LRU, a user's) runs the chunked linear scan
of ``memcell.parallel.linear`` over the coefficients the spec computes for all steps at once; an
``MLSTMSpec`` runs the mLSTM's chunkwise form (``memcell.parallel.mlstm``); any other cell is refused.
The frame has already put lengths, resets, reverse and the initial carry in one form, so each form
only keeps the carry past a sequence's length and restarts it at a reset.
"""

import functools

import jax
import jax.numpy as jnp

from memcell import _checks, _dispatch
from memcell.cells.xlstm import MLSTMSpec
from memcell.parallel import mlstm, tuning
from memcell.parallel.linear import linear_scan
from memcell.types import Cell, Frame, LinearSpec, Path

__all__ = ["MLSTM_MAX_CHUNK", "PATH", "why_not"]


def why_not(cell: Cell, params=None, fr: Frame | None = None) -> str | None:
    """Why the parallel path cannot run ``cell`` on this frame, or None if it runs.

    Example:
      >>> import memcell
      >>> print(memcell.parallel.why_not(memcell.mingru(4)))
      None
    """
    spec, reason = _dispatch.declared_spec(
        cell, "the cell declares no parallel path (only cells whose carry update is linear in the carry do)")
    if reason is not None:
        return reason
    if fr is not None and fr.remat:
        return (f"remat={fr.remat!r} is not implemented by the parallel path (it computes every step's coefficients "
                "at once; checkpointed blocks of steps are not written for it); backend='auto' runs remat on the "
                "reference path")
    if spec.parallel is not None or isinstance(spec, (LinearSpec, MLSTMSpec)):
        return None
    return f"no parallel path for a cell with a {type(spec).__name__}: its carry update is not linear in the carry"


def _auto_why_not(cell: Cell, platform: str) -> str | None:
    if tuning.auto_runs_parallel(cell.spec, platform):
        return None
    return f"the parallel path was measured slower than the reference for a {type(cell.spec).__name__} on {platform}"


def _linear(spec: LinearSpec, params, xs, carry0, valid, resets, *, chunk_size: int, linear_scan):
    """``h_t = a_t h_{t-1} + b_t`` from the spec's coefficients; ``(carry, ys)``."""
    leaves, treedef = jax.tree.flatten(carry0)
    if len(leaves) != 1:
        raise ValueError(f"a LinearSpec cell's carry must hold exactly one array, got {len(leaves)} leaves")
    (h0,) = leaves
    a, b = spec.coefficients(params, xs)
    if spec.log_space:
        # The scan never forms a product of coefficients over more than one chunk, nor divides by
        # one, so it is as precise in linear space as the step itself (which also runs linear):
        # exp of the stably computed logs, and one scan. (The paper's log-space scan exists to
        # avoid the cumulative products of a one-pass parallel scan; memcell.parallel keeps
        # log_linear_scan for whoever wants log h itself.)
        a, b = jnp.exp(a), jnp.exp(b)
    if valid is not None:  # past a sequence's length the carry stays: a = 1, b = 0
        v = valid[..., None]
        a, b = jnp.where(v, a, jnp.ones_like(a)), jnp.where(v, b, jnp.zeros_like(b))
    if resets is not None:  # a restart: h_t = a_t h0 + b_t
        s, h0_t = resets[..., None], h0[..., None, :]
        a, b = jnp.where(s, jnp.zeros_like(a), a), jnp.where(s, b + a * h0_t, b)
    hs = linear_scan(a, b, h0.astype(jnp.result_type(a, b)))
    hs = hs.astype(jnp.result_type(hs, h0))
    ys = spec.readout(params, hs, xs)
    return jax.tree.unflatten(treedef, [hs[..., -1, :]]), ys


# The mLSTM's chunks are quadratic in their length (an [L, L] matrix a chunk and head), so it takes
# at most this many steps a chunk, whatever the linear scan's choice (one chunk of T steps on CPU).
# Measured on CPU (2 shared cores, load ~5; h=64, 4 heads, B=8, d=32; jit(grad) of sum(ys^2)):
# T=256: reference 34.8 ms, chunks of 16/32/64 steps 18.6/19.5/22.8 ms; T=1024: reference 239 ms,
# chunks of 32/64/128 steps 102/132/125 ms. Not measured on an accelerator yet.
MLSTM_MAX_CHUNK = 64


def _run(cell: Cell, params, fr: Frame, *, chunk_size: int | None = None):
    """The cell's parallel form over the framed sequence; ``(carry, ys)`` in processing order.

    ``chunk_size``: steps a chunk of the chunked scan (default: ``memcell.parallel.tuning``'s choice).
    """
    T = fr.xs.shape[-2]
    L = tuning.chunk_size(T) if chunk_size is None else _checks.check_positive_int("chunk_size", chunk_size)
    spec = cell.spec
    resets = None if fr.resets is None else jnp.broadcast_to(fr.resets, fr.xs.shape[:-1])
    args = (params, fr.xs, fr.carry0, fr.valid, resets)
    if isinstance(spec, MLSTMSpec) and spec.parallel is None:
        return mlstm.chunkwise(spec, *args, chunk_size=min(L, MLSTM_MAX_CHUNK))
    scan = functools.partial(linear_scan, chunk_size=L)
    form = spec.parallel if spec.parallel is not None else functools.partial(_linear, spec)
    return form(*args, chunk_size=L, linear_scan=scan)


PATH = Path("parallel", why_not, _run, _auto_why_not)
