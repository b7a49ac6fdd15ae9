"""The Pallas path: what ``memcell.unroll(..., backend="pallas")`` runs, given the frame's arrays.

A path is ``why_not`` and ``run``. The frame (``memcell.unroll``) checks the arguments, puts the
sequence in processing order (reversed within lengths for ``reverse=True``, padded inputs
zeroed), and calls ``run`` with ``valid`` (False past each length) and ``resets`` (processing
order); it masks the outputs of padded steps and restores the time order afterwards. Only the
cell's declared spec decides what runs (``memcell.CellSpec``):

- a ``LinearSpec`` (minGRU, minLSTM, LRU, RG-LRU, a user's): its coefficients for all steps at
  once (XLA), the diagonal recurrence in a kernel (``memcell.pallas.linear``), its readout (XLA);
- the default LSTM, the GRU with ``reset_after=True``, the tanh and ReLU RNN: the input
  projection as one matmul (XLA), the recurrence in a kernel (``memcell.pallas.recurrent``).
"""

import math

import jax
import jax.numpy as jnp

from memcell import _dispatch, _numerics
from memcell.cells import GRUSpec, LSTMSpec, RNNSpec
from memcell.pallas import tuning as _tuning
from memcell.pallas.linear import linear_scan
from memcell.pallas.recurrent import recurrence
from memcell.types import Cell, Frame, LinearSpec, Path, PyTree

__all__ = ["PATH", "run", "why_not"]

_PLATFORMS = ("gpu", "cpu")  # Triton lowering; interpret mode


def _kernel_name(spec) -> str:
    """The recurrent kernel (``memcell.pallas.recurrent.KINDS``) for an LSTM, GRU or RNN spec."""
    if isinstance(spec, LSTMSpec):
        return "lstm"
    if isinstance(spec, GRUSpec):
        return "gru"
    return spec.activation


def why_not(cell: Cell, params: PyTree = None, fr: Frame | None = None) -> str | None:
    """Why the Pallas path cannot run ``cell`` on this frame (a sentence), or None if it can.

    Args:
      cell: the cell; only its declared spec counts.
      params: its params, or None (their dtypes are checked: the kernels compute in float32 or bfloat16).
      fr: the frame, or None (its inputs' dtype is read, and its ``remat``: the kernels keep every
        step's factors, so any remat is refused).

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.gru(8, reset_after=False)
      >>> memcell.paths.why_not("pallas", cell, cell.init(jax.random.key(0), 3), jnp.ones((4, 3)))
      'the Pallas GRU implements reset_after=True only'
    """
    xs, remat = (None, False) if fr is None else (fr.xs, fr.remat)
    spec, reason = _dispatch.declared_spec(
        cell, "the cell declares no fast path (memcell's LSTM, GRU, RNN and linear-recurrence cells do)")
    if reason is not None:
        return reason
    if remat:
        return (f"remat={remat!r} is not implemented by the pallas path (its kernels keep every step's factors); "
                "run remat on the reference or fused path")
    platform = jax.default_backend()
    if platform not in _PLATFORMS:
        return (f"the Pallas kernels are written for GPUs (the Triton lowering) and checked on CPUs in interpret mode; "
                f"on {platform!r} they were never run")
    wide = sorted({str(jnp.result_type(a)) for a in jax.tree.leaves((params, xs))
                   if jnp.dtype(jnp.result_type(a)) in (jnp.float64, jnp.complex128)})
    if wide or (spec.dtype is not None and jnp.dtype(spec.dtype) == jnp.float64):
        return f"the Pallas kernels compute in float32 or bfloat16, got {', '.join(wide) or 'dtype=float64'}"
    if isinstance(spec, LinearSpec):
        return None
    if isinstance(spec, LSTMSpec):
        off = _dispatch.options_set(spec, LSTMSpec)
        return f"the Pallas LSTM implements the default cell only, this one sets {', '.join(off)}" if off else None
    if isinstance(spec, GRUSpec):
        return None if spec.reset_after is True else "the Pallas GRU implements reset_after=True only"
    if isinstance(spec, RNNSpec):
        return None if spec.activation in ("tanh", "relu") else f"no Pallas kernel for activation={spec.activation!r}"
    return f"no Pallas kernel for a cell with a {type(spec).__name__}"


def _flat(a, batch_shape, B: int):
    """``[*b, ...]`` -> ``[B, ...]`` (leaves broadcast to the batch axes first); None stays None."""
    if a is None:
        return None
    return jnp.broadcast_to(a, batch_shape + a.shape[len(batch_shape):]).reshape((B,) + a.shape[len(batch_shape):])


def run(cell: Cell, params: PyTree, fr: Frame):
    """The unroll on the Pallas path, on the frame's arrays: ``(carry, ys)``, ys in processing order.

    Args:
      cell: a cell ``why_not`` accepts.
      params: its params.
      fr: the frame (``memcell.paths.run`` makes it, and returns by itself where it has no step):
        ``fr.xs [*b, T, D]`` in processing order with padded inputs zeroed, ``fr.carry0`` broadcast
        to the batch axes ``*b``, ``fr.valid`` (False past each length: the carry stays there) and
        ``fr.resets`` (where True the carry restarts from ``carry0`` before the step), each
        ``[*b, T]`` bool or None.

    Returns:
      ``(carry, ys)``: the final carry and ``ys: [*b, T, h]`` in processing order (a padded step's
      output is the carry it kept; the frame zeroes it).
    """
    spec = cell.spec
    xs = fr.xs
    batch_shape, T = tuple(xs.shape[:-2]), xs.shape[-2]
    B = math.prod(batch_shape)
    leaves, treedef = jax.tree.flatten(fr.carry0)
    platform = jax.default_backend()
    tuning = _tuning.for_platform(platform)
    flat = lambda a: _flat(a, batch_shape, B)
    valid, resets = flat(fr.valid), flat(fr.resets)
    if isinstance(spec, LinearSpec):
        if len(leaves) != 1:
            raise ValueError(f"a LinearSpec cell's carry must hold exactly one array, got {len(leaves)} leaves")
        (h0,) = leaves
        a, b = spec.coefficients(params, xs)
        if spec.log_space:  # the kernel never multiplies coefficients across steps: linear space is as precise
            a, b = jnp.exp(a), jnp.exp(b)
        H = a.shape[-1]
        hs, h_last = linear_scan(flat(a), flat(b), flat(h0), valid=valid, resets=resets, tuning=tuning,
                                 platform=platform)
        hs = hs.astype(jnp.result_type(hs, h0)).reshape(batch_shape + (T, H))
        ys = spec.readout(params, hs, xs)
        return jax.tree.unflatten(treedef, [h_last.reshape(batch_shape + (H,)).astype(h0.dtype)]), ys
    kind = _kernel_name(spec)
    G = {"lstm": 4, "gru": 3}.get(kind, 1)
    H = params.w_h.shape[0]
    zx = _numerics.linear(flat(xs), params.w_x, spec.dtype)  # one matmul over all steps
    zx = zx + (params.b_x if isinstance(spec, GRUSpec) else params.b)
    hs, last = recurrence(kind, zx.reshape(B, T, G, H), params.w_h, params.b_h if isinstance(spec, GRUSpec) else None,
                          tuple(flat(c) for c in leaves), valid, resets, dtype=spec.dtype, tuning=tuning,
                          platform=platform)
    carry = [c.reshape(batch_shape + (H,)).astype(leaf.dtype) for c, leaf in zip(last, leaves)]
    return jax.tree.unflatten(treedef, carry), hs.reshape(batch_shape + (T, H)).astype(leaves[0].dtype)


def _auto_why_not(cell: Cell, platform: str) -> str | None:
    """``backend="auto"`` takes the Pallas path only on a platform where the benchmark measured it
    faster (``memcell.pallas.tuning.AUTO``); no platform has been measured."""
    if _tuning.auto_runs_pallas(platform):
        return None
    return (f"the Pallas path is unmeasured on {platform} (memcell.pallas.tuning.AUTO): backend='auto' takes it "
            "only where make bench-gpu measured it faster")


PATH = Path("pallas", why_not, run, _auto_why_not)
