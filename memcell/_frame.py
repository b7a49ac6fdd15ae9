"""The one frame of an unroll: its arguments checked once and the sequence put in one canonical form.

``frame`` turns ``memcell.unroll``'s arguments into a ``memcell.types.Frame`` (time in processing
order, padded inputs zeroed, resets as flags that never fall in padding, the initial carry broadcast
to the batch); every path runs on that, and ``unframe`` masks the padded outputs and restores the
time order. No path checks, reverses or masks again.
"""

import jax
import jax.numpy as jnp

from memcell import _checks
from memcell._sequence import reverse_within, segment_ends
from memcell.types import Cell, Frame, PyTree

__all__ = ["empty_outputs", "frame", "unframe"]


def _lengths(lengths, batch_shape: tuple, T: int):
    """Checked lengths. Concrete lengths outside ``[0, T]`` are refused by name; traced ones (inside a
    jit, where no value can be checked without ``checkify``) are clipped to ``[0, T]``: a length past
    T reads the whole sequence, a negative one none of it, never NaN."""
    lengths = _checks.check_lengths(lengths, batch_shape, T)
    if lengths is None or _checks.is_concrete(lengths):
        return lengths
    return jnp.clip(lengths, 0, T)


def frame(cell: Cell, params, xs, carry, *, lengths=None, resets=None, reverse=False, remat=False,
          unroll=1) -> Frame:
    """Checks ``memcell.unroll``'s arguments (each once) and frames the sequence.

    Returns:
      The ``Frame``: see ``memcell.types.Frame`` for the form of each field.
    """
    reverse = _checks.check_bool("reverse", reverse)
    remat = _checks.check_remat(remat)
    unroll = _checks.check_unroll(unroll)
    xs = _checks.check_xs(xs, params)
    _checks.check_params(cell, params, xs.shape[-1])
    batch_shape, T = tuple(xs.shape[:-2]), xs.shape[-2]
    lengths = _lengths(lengths, batch_shape, T)
    resets = _checks.check_resets(resets, batch_shape, T)
    carry0 = _checks.check_carry(cell, params, carry, batch_shape)

    if reverse:
        if resets is not None:  # read backwards, a segment starts where the next one begins
            resets = segment_ends(resets)
        if lengths is None:
            xs = jnp.flip(xs, axis=-2)
            resets = None if resets is None else jnp.flip(resets, axis=-1)
        else:  # each sequence from its own last real step; padding stays at the end
            xs = reverse_within(xs, lengths, axis=-2)
            resets = None if resets is None else reverse_within(resets, lengths, axis=-1)
    valid = None if lengths is None else jnp.arange(T) < lengths[..., None]  # [*b, T]
    if valid is not None:
        # Zeroed padding keeps garbage (inf, nan) out of values and gradients; a reset past the
        # length does nothing, on every path (the carry is kept there).
        xs = jnp.where(valid[..., None], xs, jnp.zeros_like(xs))
        resets = None if resets is None else resets & valid
    return Frame(xs=xs, carry0=carry0, valid=valid, resets=resets, lengths=lengths, remat=remat, unroll=unroll,
                 reverse=reverse)


def unframe(fr: Frame, carry: PyTree, ys):
    """A path's ``(carry, ys)`` back in the caller's form: zero outputs past each length, time order restored."""
    if fr.valid is not None:
        ys = jnp.where(fr.valid[..., None], ys, jnp.zeros_like(ys))
    if fr.reverse:
        ys = jnp.flip(ys, axis=-2) if fr.lengths is None else reverse_within(ys, fr.lengths, axis=-2)
    return carry, ys


def empty_outputs(cell: Cell, params, fr: Frame):
    """The outputs of a sequence with no steps: ``[*b, 0, h]`` zeros of the step's output dtype."""
    batch_shape = fr.xs.shape[:-2]
    x = jax.ShapeDtypeStruct(batch_shape + fr.xs.shape[-1:], fr.xs.dtype)
    y = jax.eval_shape(cell.step, params, fr.carry0, x)[1]
    return jnp.zeros(batch_shape + (0,) + y.shape[len(batch_shape):], y.dtype)
