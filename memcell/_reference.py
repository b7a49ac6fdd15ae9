"""The reference path: ``jax.lax.scan`` over ``cell.step`` on a framed sequence.

It is the definition every other path is tested against: it runs any cell (a user's too), every
remat policy and derivatives of every order.
"""

import jax
import jax.numpy as jnp

from memcell import _checks
from memcell._remat import blocked_scan
from memcell._sequence import tree_where
from memcell.types import Frame, Path

__all__ = ["PATH"]


def _why_not(cell, params=None, fr: Frame | None = None) -> None:
    return None  # the reference runs every cell and option


def _run(cell, params, fr: Frame):
    """``(carry, ys)`` in processing order: a scan over time, keeping each sequence's carry past its length."""
    step = jax.checkpoint(cell.step) if fr.remat == "step" else cell.step
    carry0 = fr.carry0

    def body(c, inputs):
        x, ok, reset = inputs
        c_in = c if reset is None else tree_where(reset, carry0, c)
        new, y = step(params, c_in, x)
        return (new if ok is None else tree_where(ok, new, c)), y

    def scan(c, inputs):  # inputs [*b, t, .] -> (carry, ys [*b, t, H]); time-major only inside
        x, ok, reset = (None if a is None else jnp.moveaxis(a, -2, 0) for a in inputs)
        ok, reset = (None if a is None else a[..., 0] for a in (ok, reset))
        c, ys = jax.lax.scan(body, c, (x, ok, reset), unroll=fr.unroll)
        return c, jnp.moveaxis(ys, 0, -2)

    flags = lambda a: None if a is None else a[..., None]  # [*b, T] -> [*b, T, 1]: time on -2, as in xs
    inputs = (fr.xs, flags(fr.valid), flags(fr.resets))
    T = fr.xs.shape[-2]
    k = _checks.remat_block(fr.remat, T)
    if k is None:
        return scan(carry0, inputs)
    # blocks cut from the batch-major inputs: no time-major copy of all of xs
    return blocked_scan(scan, carry0, inputs, T, k, axis=-2)


PATH = Path("reference", _why_not, _run)
