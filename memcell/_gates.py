"""The gate math of the default LSTM, the GRU (``reset_after=True``) and the Elman RNN, per gate block,
shared by the fast paths that run these cells without their step: ``memcell.fused`` (XLA, gate
blocks cut from one array) and ``memcell.pallas`` (a kernel, gate blocks loaded one by one).

Each function takes the gate blocks' pre-activations and returns the new carry and, when
differentiating, the factors of the step's own derivative that do not depend on the incoming
gradient (see ``memcell.fused.kinds``), so the backward pass is a few multiply-adds and the
recurrent matmul a step. The cells' own steps (``memcell.cells``) stay the definition; these are
checked against them by every fast path's tests.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from memcell.types import Array


class LSTMStep(NamedTuple):
    h: Array  # o tanh(c')
    c: Array  # f c + i g
    k: tuple | None  # d c' / d(pre-activations of i, f, g) and d h' / d(pre-activation of o)
    a: Array | None  # d h' / d c' = o (1 - tanh(c')^2)
    f: Array | None  # the forget gate, d c' / d c


def lstm(i: Array, f: Array, g: Array, o: Array, c: Array, keep: bool) -> LSTMStep:
    """One default LSTM step from its four pre-activation blocks (bias included) and the cell ``c``."""
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    h = o * tc
    if not keep:
        return LSTMStep(h, c_new, None, None, None)
    k = (g * i * (1.0 - i), c * f * (1.0 - f), i * (1.0 - g * g), tc * o * (1.0 - o))
    return LSTMStep(h, c_new, k, o * (1.0 - tc * tc), f)


class GRUStep(NamedTuple):
    h: Array  # (1 - z) n + z h
    k: tuple | None  # d h' / d(input-side pre-activations of r, z, n)
    z: Array | None  # the update gate, the direct path d h' / d h
    r: Array | None  # the reset gate: the recurrent side of the n block is r times the input side


def gru(xr: Array, xz: Array, xn: Array, hr: Array, hz: Array, hn: Array, h: Array, keep: bool) -> GRUStep:
    """One GRU step (``reset_after=True``) from the input side ``x W + b_x`` and the recurrent side
    ``h U + b_h`` of the r, z, n blocks."""
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h_new = (1.0 - z) * n + z * h
    if not keep:
        return GRUStep(h_new, None, None, None)
    kn = (1.0 - z) * (1.0 - n * n)  # d h' / d (pre-activation of n)
    kr = kn * hn * r * (1.0 - r)
    kz = (h - n) * z * (1.0 - z)
    return GRUStep(h_new, (kr, kz, kn), z, r)


def rnn(z: Array, activation: str, keep: bool) -> tuple[Array, Array | None]:
    """One Elman step from its pre-activation: ``(h', d h' / d z)`` (the factor None unless ``keep``)."""
    if activation == "tanh":
        h = jnp.tanh(z)
        return h, (1.0 - h * h) if keep else None
    h = jax.nn.relu(z)
    # relu'(z) is 0 at z = 0, as jax.nn.relu's gradient.
    return h, (h > 0).astype(h.dtype) if keep else None
