"""Each cell kind the fused path runs: its forward step and the pieces of its backward pass.

When differentiating, each forward step also computes the factors of its own derivative that do
not depend on the incoming gradient ("coefficients"), from values the step has at hand, so
nothing is recomputed later: ``k``, G wide as the gate pre-activations (the kernel writes it over
zx's own buffer), and the kind's residuals, a NamedTuple of per-step [B, h] (or [h, B]) arrays
named by what they hold, each stored in a buffer of its own. Padded steps (lengths) are folded
into the coefficients: they make the step the identity on the carry gradient and emit zero.

The gate math itself (activations, new carry, derivative factors) is ``memcell._gates``', shared with
the Pallas kernels. Public so that what each kind stores for its backward pass can be read: ``Kind.residuals``.
"""

import functools
from typing import Callable, NamedTuple

import jax.numpy as jnp

from memcell import _gates as gates
from memcell.fused.layout import split
from memcell.fused.tuning import Tuning
from memcell.types import Array


class Kind(NamedTuple):
    """One cell kind in one layout: its forward step and the pieces of its backward pass."""

    n_gates: int
    dtype: object  # matmul computation dtype (None: the inputs')
    axis: int  # feature axis of the per-step arrays (see layout.feature_axis)
    tuning: Tuning  # the platform's tuning, fixed when the layer is traced
    residuals: type  # the NamedTuple of per-step arrays the step stores for the backward pass, by field
    step: Callable  # (rec, b_x, b_h, carry, zx_t, ok, keep) -> (carry', (k_t [.., G], residuals_t) or None)
    back: Callable  # (rec_t, dcarry, dy_t, k_t, residuals_t) -> (dcarry', dzx_t, G wide)
    finish: Callable  # (dzx, residuals) -> dzh, G wide over all steps; dzx itself when the two are equal


class LSTMResiduals(NamedTuple):
    a: Array  # d c' / d h' through h' = o tanh(c'): o (1 - tanh(c')^2); 0 on padded steps
    f: Array  # the forget gate, d c' / d c; 1 on padded steps, where dc passes through
    passthrough: Array | None  # 1 on padded steps, where dh passes through; None without lengths


class GRUResiduals(NamedTuple):
    z: Array  # the update gate, the direct path d h' / d h; 1 on padded steps
    r: Array  # the reset gate, which scales the recurrent side of the n block


class RNNResiduals(NamedTuple):
    passthrough: Array | None  # 1 on padded steps, where dh passes through; None without lengths


def fill(ok, a, value):
    """``a`` on real steps, ``value`` on padded ones (ok: [B, 1] or [1, B], or None)."""
    return a if ok is None else jnp.where(ok, a, jnp.full_like(a, value))


def passthrough(ok, like):
    """1 on padded steps, where the carry gradient passes through unchanged; 0 elsewhere (None without lengths)."""
    return None if ok is None else jnp.broadcast_to(jnp.where(ok, 0.0, 1.0).astype(like.dtype), like.shape)


def same(dzx, residuals):
    return dzx


@functools.cache
def lstm_kind(dtype, axis: int, tuning: Tuning) -> Kind:
    cat = functools.partial(jnp.concatenate, axis=axis)

    def step(rec, b_x, b_h, carry, zx, ok, keep):
        h, cc = carry
        out = gates.lstm(*split(zx + rec(h) + b_x, 4, axis), cc, keep)
        new = (out.h.astype(h.dtype), out.c.astype(cc.dtype))
        if not keep:
            return new, None
        k = cat(list(out.k))  # the four gates' pre-activation factors
        res = LSTMResiduals(a=fill(ok, out.a, 0.0), f=fill(ok, out.f, 1.0), passthrough=passthrough(ok, h))
        return new, (fill(ok, k, 0.0), res)

    def back(rec_t, dcarry, dy, k, res: LSTMResiduals):
        dh, dc = dcarry
        dh = dh + dy
        dc = dc + dh * res.a
        dz = cat([dc, dc, dc, dh]) * k
        dh_prev = rec_t(dz)
        if res.passthrough is not None:
            dh_prev = dh_prev + dh * res.passthrough
        return (dh_prev.astype(dh.dtype), (dc * res.f).astype(dc.dtype)), dz

    return Kind(4, dtype, axis, tuning, LSTMResiduals, step, back, same)


@functools.cache
def gru_kind(dtype, axis: int, tuning: Tuning) -> Kind:
    cat = functools.partial(jnp.concatenate, axis=axis)

    def step(rec, b_x, b_h, carry, zx, ok, keep):
        (h,) = carry
        out = gates.gru(*split(zx + b_x, 3, axis), *split(rec(h) + b_h, 3, axis), h, keep)
        new = (out.h.astype(h.dtype),)
        if not keep:
            return new, None
        # k: the input-side pre-activation factors of the r, z, n blocks (the recurrent side's n
        # block is r times the input side's). A padded step's direct path 1 passes the gradient through.
        k = fill(ok, cat(list(out.k)), 0.0)
        return new, (k, GRUResiduals(z=fill(ok, out.z, 1.0), r=fill(ok, out.r, 0.0)))

    def recurrent_side(dzx, r):
        d_r, d_z, d_n = split(dzx, 3, axis)
        return cat([d_r, d_z, d_n * r])

    def back(rec_t, dcarry, dy, k, res: GRUResiduals):
        (dh,) = dcarry
        dh = dh + dy
        dzx = cat([dh, dh, dh]) * k
        dh_prev = rec_t(recurrent_side(dzx, res.r)) + dh * res.z
        return (dh_prev.astype(dh.dtype),), dzx

    def finish(dzx, res: GRUResiduals):
        return recurrent_side(dzx, res.r)

    return Kind(3, dtype, axis, tuning, GRUResiduals, step, back, finish)


@functools.cache
def rnn_kind(dtype, activation: str, axis: int, tuning: Tuning) -> Kind:
    def step(rec, b_x, b_h, carry, zx, ok, keep):
        (h,) = carry
        h_new, k = gates.rnn(zx + rec(h) + b_x, activation, keep)
        new = (h_new.astype(h.dtype),)
        if not keep:
            return new, None
        return new, (fill(ok, k, 0.0), RNNResiduals(passthrough=passthrough(ok, h)))

    def back(rec_t, dcarry, dy, k, res: RNNResiduals):
        (dh,) = dcarry
        dh = dh + dy
        dz = dh * k
        dh_prev = rec_t(dz)
        if res.passthrough is not None:
            dh_prev = dh_prev + dh * res.passthrough
        return (dh_prev.astype(dh.dtype),), dz

    return Kind(1, dtype, axis, tuning, RNNResiduals, step, back, same)
