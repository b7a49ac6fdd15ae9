"""What the LSTM / GRU / RNN kernels share: each recurrence's step per gate block, the static
configuration a kernel is compiled for, and the kernels' reference lists, named."""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from memcell import _gates as gates
from memcell.pallas.tuning import Tuning

F32 = jnp.float32
DOT = (((1,), (0,)), ((), ()))  # h [b, k] x U [k, n]
DOT_T = (((1,), (1,)), ((), ()))  # dz [b, n] x U[k, n]^T


class Kind(NamedTuple):
    """One recurrence, per gate block."""

    n_gates: int
    n_carry: int  # carry arrays (h first)
    n_res: int  # per-step residual arrays the backward step reads
    has_bh: bool  # a recurrent-side bias (the GRU's, inside r * (h U_n + b_hn))
    # (x [G] input sides, zh [G] recurrent sides, carry, keep) -> (carry', k [G] factors, residuals)
    step: Callable
    # (d carry, k [G], residuals) -> (dz [G] input side, dzh [G] recurrent side, direct: the carry's
    # gradient that bypasses the recurrent matmul, per carry array, None for zero)
    back: Callable


def _lstm_step(x, zh, carry, keep):
    h, c = carry
    out = gates.lstm(*(x[g] + zh[g] for g in range(4)), c, keep)
    return (out.h, out.c), out.k, (out.a, out.f) if keep else None


def _lstm_back(d, k, res):
    dh, dc = d
    a, f = res
    dc = dc + dh * a
    dz = [dc * k[0], dc * k[1], dc * k[2], dh * k[3]]
    return dz, dz, (None, dc * f)


def _gru_step(x, zh, carry, keep):
    (h,) = carry
    out = gates.gru(*x, *zh, h, keep)
    return (out.h,), out.k, (out.z, out.r) if keep else None


def _gru_back(d, k, res):
    (dh,) = d
    z, r = res
    dz = [dh * k[0], dh * k[1], dh * k[2]]
    return dz, [dz[0], dz[1], dz[2] * r], (dh * z,)  # the recurrent n block is r times the input side's


def _rnn_kind(activation: str) -> Kind:
    def step(x, zh, carry, keep):
        h, k = gates.rnn(x[0] + zh[0], activation, keep)
        return (h,), (k,), ()

    def back(d, k, res):
        dz = [d[0] * k[0]]
        return dz, dz, (None,)

    return Kind(1, 1, 0, False, step, back)


KINDS = {
    "lstm": Kind(4, 2, 2, False, _lstm_step, _lstm_back),
    "gru": Kind(3, 1, 2, True, _gru_step, _gru_back),
    "tanh": _rnn_kind("tanh"),
    "relu": _rnn_kind("relu"),
}


class Config(NamedTuple):  # static: what a kernel is compiled for
    kind: str  # a key of KINDS
    dtype: object  # the recurrent matmul's dtype
    batch_block: int
    tile: int | None  # hidden units a tile in tiled mode; None: the whole carry in registers
    tuning: Tuning
    platform: str

    @property
    def interpret(self) -> bool:
        return self.platform == "cpu"


def mm(cfg: Config, a, w, dims):
    """A step's matmul in the recurrent dtype, accumulated in float32."""
    return jax.lax.dot_general(a.astype(cfg.dtype), w, dims, preferred_element_type=F32)


def flagged(flag, new, old):
    """``new`` where the step's flag (0/1, broadcastable) is set, else ``old``; tuples elementwise."""
    return tuple(o if n is None else jnp.where(flag > 0, n, o) for n, o in zip(new, old))


class ForwardRefs(NamedTuple):
    zx: object
    w: object
    bh: object
    c0: tuple
    ok: object
    rs: object
    hs: object
    last: tuple
    k: object
    res: tuple
    scratch: object  # tiled LSTM: the cell c of the last two steps, [b, 2, h]


def forward_refs(kind: Kind, keep: bool, has_ok: bool, has_rs: bool, scratch: bool, refs) -> ForwardRefs:
    it = iter(refs)
    take = lambda n: tuple(next(it) for _ in range(n))
    zx, w = take(2)
    bh = next(it) if kind.has_bh else None
    c0 = take(kind.n_carry)
    ok = next(it) if has_ok else None
    rs = next(it) if has_rs else None
    hs, last = next(it), take(kind.n_carry)
    k, res = (next(it), take(kind.n_res)) if keep else (None, ())
    return ForwardRefs(zx, w, bh, c0, ok, rs, hs, last, k, res, next(it) if scratch else None)


class BackwardRefs(NamedTuple):
    k: object
    res: tuple
    dys: object
    w: object
    d_last: tuple
    ok: object
    rs: object
    dz: object
    d0: tuple
    dn: object  # the GRU: the recurrent side of the n block's gradient
    scratch: object  # tiled: the carry's gradient and its reset part, of the last two steps, [b, 2, 2 n_carry, h]


def backward_refs(kind: Kind, has_ok: bool, has_rs: bool, scratch: bool, refs) -> BackwardRefs:
    it = iter(refs)
    take = lambda n: tuple(next(it) for _ in range(n))
    k, res, (dys, w) = next(it), take(kind.n_res), take(2)
    d_last = take(kind.n_carry)
    ok = next(it) if has_ok else None
    rs = next(it) if has_rs else None
    dz, d0 = next(it), take(kind.n_carry)
    dn = next(it) if kind.has_bh else None
    return BackwardRefs(k, res, dys, w, d_last, ok, rs, dz, d0, dn, next(it) if scratch else None)
