"""The LSTM, GRU (``reset_after=True``) and Elman RNN recurrences as Pallas kernels, forward and backward.

Outside the kernel, one XLA matmul projects the inputs of all steps at once (``zx = xs W + b``,
differentiated by JAX). The kernel runs the time loop: each grid program owns ``batch_block``
sequences and all hidden units, keeps the carry in registers, and a step does one
``[batch_block, h] x [h, h]`` matmul per gate block against the recurrent weights (loaded once
before the loop when they fit ``tuning.resident_bytes``, else read each step), then the gate math
of ``memcell._gates``, the same as the fused path's.

When differentiating, the forward kernel also writes each step's derivative factors over zx's own
buffer (the gate blocks' ``k``) and the kind's residuals (the LSTM's ``a`` and ``f``, the GRU's
``z`` and ``r``). The backward kernel runs time backwards with the carry's gradient in registers,
one matmul by ``U^T`` per gate block a step, and writes every step's pre-activation gradient over
those factors; after it, one matmul ``h_in^T dz`` over all (batch, time) rows gives the recurrent
weights' gradient, and JAX's own transpose of the projection the input weights' and the inputs'.

Layouts are batch-major, as the frame gives them: ``zx [B, T, G, h]`` (the projection's own
layout, gate blocks on their own axis so a kernel loads one block at a time), carries ``[B, h]``,
outputs ``[B, T, h]``. ``h`` is padded to a power of two (at least 16, Triton's smallest matmul)
and ``B`` to whole batch blocks; the padding is cut off after the call, and padded hidden units
stay zero (their weights are zero), so they never reach a real one.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from memcell import _gates as gates
from memcell.pallas import _blocks
from memcell.pallas.tuning import Tuning

__all__ = ["recurrence"]

F32 = jnp.float32
_DOT = (((1,), (0,)), ((), ()))  # h [b, h] x U [h, h]
_DOT_T = (((1,), (1,)), ((), ()))  # dz [b, h] x U^T


class _Kind(NamedTuple):
    """One recurrence, per gate block: its forward step and the pieces of its backward step."""

    n_gates: int
    n_carry: int  # carry arrays (h first)
    n_res: int  # per-step residual arrays the backward step reads
    has_bh: bool  # a recurrent-side bias (the GRU's, inside r * (h U_n + b_hn))
    # (x [G], rec(h) -> [G] pre-activations, carry, keep) -> (carry', k [G], residuals)
    step: Callable
    # (d carry, k [G], residuals, rec_t([G]) -> d h) -> (d carry_in, dz input side [G], dz recurrent n block or None)
    back: Callable


def _lstm_step(x, rec, carry, keep):
    h, c = carry
    zh = rec(h)
    out = gates.lstm(*(x[g] + zh[g] for g in range(4)), c, keep)
    return (out.h, out.c), out.k, (out.a, out.f) if keep else None


def _lstm_back(d, k, res, rec_t):
    dh, dc = d
    a, f = res
    dc = dc + dh * a
    dz = [dc * k[0], dc * k[1], dc * k[2], dh * k[3]]
    return (rec_t(dz), dc * f), dz, None


def _gru_step(x, rec, carry, keep):
    (h,) = carry
    out = gates.gru(*x, *rec(h), h, keep)
    return (out.h,), out.k, (out.z, out.r) if keep else None


def _gru_back(d, k, res, rec_t):
    (dh,) = d
    z, r = res
    dz = [dh * k[0], dh * k[1], dh * k[2]]
    dn = dz[2] * r  # the recurrent side of the n block is r times the input side's
    return (rec_t([dz[0], dz[1], dn]) + dh * z,), dz, dn


def _rnn_kind(activation: str) -> _Kind:
    def step(x, rec, carry, keep):
        h, k = gates.rnn(x[0] + rec(carry[0])[0], activation, keep)
        return (h,), (k,), ()

    def back(d, k, res, rec_t):
        dz = [d[0] * k[0]]
        return (rec_t(dz),), dz, None

    return _Kind(1, 1, 0, False, step, back)


KINDS = {
    "lstm": _Kind(4, 2, 2, False, _lstm_step, _lstm_back),
    "gru": _Kind(3, 1, 2, True, _gru_step, _gru_back),
    "tanh": _rnn_kind("tanh"),
    "relu": _rnn_kind("relu"),
}


class _Config(NamedTuple):  # static: what a kernel is compiled for
    kind: str  # a key of KINDS
    dtype: object  # the recurrent matmul's dtype
    batch_block: int
    tuning: Tuning
    platform: str


def _weights(cfg: _Config, w_ref, bh_ref, G: int, Hp: int):
    """``rec(h)`` and ``rec_t(dz)``: the recurrent matmuls of a step, weights resident when small enough."""
    resident = G * Hp * Hp * jnp.dtype(cfg.dtype).itemsize <= cfg.tuning.resident_bytes
    held = [w_ref[g] for g in range(G)] if resident else None
    weight = (lambda g: held[g]) if resident else (lambda g: w_ref[g])
    bias = [bh_ref[g][None, :] for g in range(G)] if bh_ref is not None else None
    mm = lambda a, g, dims: jax.lax.dot_general(a.astype(cfg.dtype), weight(g), dims, preferred_element_type=F32)

    def rec(h):
        out = [mm(h, g, _DOT) for g in range(G)]
        return out if bias is None else [o + b for o, b in zip(out, bias)]

    def rec_t(dz):
        total = mm(dz[0], 0, _DOT_T)
        for g in range(1, G):
            total = total + mm(dz[g], g, _DOT_T)
        return total

    return rec, rec_t


def _flags_of(refs, has_ok, has_rs):
    return (refs[0] if has_ok else None), (refs[has_ok] if has_rs else None)


def _forward_kernel(cfg: _Config, keep: bool, has_ok: bool, has_rs: bool, *refs):
    kind = KINDS[cfg.kind]
    G, C = kind.n_gates, kind.n_carry
    zx, w = refs[:2]
    bh = refs[2] if kind.has_bh else None
    i = 2 + kind.has_bh
    c0, flags = refs[i:i + C], refs[i + C:i + C + has_ok + has_rs]
    outs = refs[i + C + has_ok + has_rs:]
    hs, last = outs[0], outs[1:1 + C]
    k_out, res_out = (outs[1 + C], outs[2 + C:]) if keep else (None, ())
    ok, rs = _flags_of(flags, has_ok, has_rs)
    T, Hp = zx.shape[1], zx.shape[-1]
    rec, _ = _weights(cfg, w, bh, G, Hp)
    start = tuple(r[...].astype(F32) for r in c0)

    def step(t, carry):
        if rs is not None:  # a reset restarts from the initial carry before the step
            carry = _blocks.where(rs[:, t, :], start, carry)
        new, k, res = kind.step([zx[:, t, g, :] for g in range(G)], rec, carry, keep)
        if ok is not None:  # past the length the carry stays
            new = _blocks.where(ok[:, t, :], new, carry)
        hs[:, t, :] = new[0]
        if keep:  # over zx's own buffer, block g of step t once read
            for g in range(G):
                k_out[:, t, g, :] = k[g]
            for r, v in zip(res_out, res):
                r[:, t, :] = v
        return new

    carry = _blocks.time_loop(T, cfg.tuning.unroll, step, start)
    for r, v in zip(last, carry):
        r[...] = v


def _backward_kernel(cfg: _Config, has_ok: bool, has_rs: bool, *refs):
    kind = KINDS[cfg.kind]
    G, C, R = kind.n_gates, kind.n_carry, kind.n_res
    k, res, dys, w = refs[0], refs[1:1 + R], refs[1 + R], refs[2 + R]
    i = 3 + R
    d_last, flags = refs[i:i + C], refs[i + C:i + C + has_ok + has_rs]
    outs = refs[i + C + has_ok + has_rs:]
    dz_out, d0_out = outs[0], outs[1:1 + C]
    dn_out = outs[1 + C] if kind.has_bh else None
    ok, rs = _flags_of(flags, has_ok, has_rs)
    T, Hp = k.shape[1], k.shape[-1]
    _, rec_t = _weights(cfg, w, None, G, Hp)
    zero = tuple(jnp.zeros(d_last[0].shape, F32) for _ in range(C))

    def step(t, state):
        d, d0 = state
        d = (d[0] + dys[:, t, :],) + d[1:]  # the step's output is its h
        d_in, dz, dn = kind.back(d, [k[:, t, g, :] for g in range(G)], [r[:, t, :] for r in res], rec_t)
        if ok is not None:  # a padded step passes the carry's gradient through and has no gates
            d_in = _blocks.where(ok[:, t, :], d_in, d)
            dz = _blocks.where(ok[:, t, :], dz, [jnp.zeros_like(x) for x in dz])
            dn = None if dn is None else jnp.where(ok[:, t, :] > 0, dn, jnp.zeros_like(dn))
        for g in range(G):
            dz_out[:, t, g, :] = dz[g]
        if dn_out is not None:
            dn_out[:, t, :] = dn
        if rs is not None:  # the carry a reset step read was the initial one: its gradient goes there
            d0 = tuple(a + jnp.where(rs[:, t, :] > 0, b, jnp.zeros_like(b)) for a, b in zip(d0, d_in))
            d_in = _blocks.where(rs[:, t, :], zero, d_in)
        return d_in, d0

    d, d0 = _blocks.time_loop(T, cfg.tuning.unroll, step, (tuple(r[...].astype(F32) for r in d_last), zero),
                              reverse=True)
    for r, a, b in zip(d0_out, d, d0):
        r[...] = a + b


def _specs(cfg: _Config, T: int, G: int, Hp: int):
    Bb = cfg.batch_block
    return dict(
        gates=pl.BlockSpec((Bb, T, G, Hp), lambda i: (i, 0, 0, 0)),
        seq=pl.BlockSpec((Bb, T, Hp), lambda i: (i, 0, 0)),
        carry=pl.BlockSpec((Bb, Hp), lambda i: (i, 0)),
        flag=pl.BlockSpec((Bb, T, 1), lambda i: (i, 0, 0)),
        w=pl.BlockSpec((G, Hp, Hp), lambda i: (0, 0, 0)),
        bh=pl.BlockSpec((G, Hp), lambda i: (0, 0)),
    )


def _forward(cfg: _Config, zx, w, bh, carry0, ok, rs, keep: bool):
    kind = KINDS[cfg.kind]
    B, T, G, Hp = zx.shape
    s = _specs(cfg, T, G, Hp)
    flags = [f for f in (ok, rs) if f is not None]
    seq = jax.ShapeDtypeStruct((B, T, Hp), F32)
    vec = jax.ShapeDtypeStruct((B, Hp), F32)
    out_shape = [seq] + [vec] * kind.n_carry
    out_specs = [s["seq"]] + [s["carry"]] * kind.n_carry
    if keep:  # the factors k over zx, then the residuals
        out_shape += [jax.ShapeDtypeStruct(zx.shape, F32)] + [seq] * kind.n_res
        out_specs += [s["gates"]] + [s["seq"]] * kind.n_res
    ins = [zx, w] + ([bh] if kind.has_bh else []) + list(carry0) + flags
    in_specs = [s["gates"], s["w"]] + ([s["bh"]] if kind.has_bh else []) + [s["carry"]] * kind.n_carry + [s["flag"]] * len(flags)
    kernel = functools.partial(_forward_kernel, cfg, keep, ok is not None, rs is not None)
    outs = _blocks.call(kernel, name=f"memcell_{cfg.kind}_forward", grid=(B // cfg.batch_block,), in_specs=in_specs,
                        out_specs=out_specs, out_shape=out_shape, platform=cfg.platform, tuning=cfg.tuning,
                        aliases={0: 1 + kind.n_carry} if keep else None)(*ins)
    hs, last = outs[0], tuple(outs[1:1 + kind.n_carry])
    return hs, last, (tuple(outs[1 + kind.n_carry:]) if keep else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recur(cfg: _Config, zx, w, bh, carry0, ok, rs):
    hs, last, _ = _forward(cfg, zx, w, bh, carry0, ok, rs, keep=False)
    return hs, last


def _recur_fwd(cfg, zx, w, bh, carry0, ok, rs):
    hs, last, saved = _forward(cfg, zx, w, bh, carry0, ok, rs, keep=True)
    return (hs, last), (w, bh, carry0, ok, rs, hs, saved)


def _recur_bwd(cfg, residuals, cotangents):
    w, bh, carry0, ok, rs, hs, (k, *res) = residuals
    dhs, d_last = cotangents
    kind = KINDS[cfg.kind]
    B, T, G, Hp = k.shape
    s = _specs(cfg, T, G, Hp)
    flags = [f for f in (ok, rs) if f is not None]
    vec = jax.ShapeDtypeStruct((B, Hp), F32)
    out_shape = [jax.ShapeDtypeStruct(k.shape, F32)] + [vec] * kind.n_carry
    out_specs = [s["gates"]] + [s["carry"]] * kind.n_carry
    if kind.has_bh:
        out_shape.append(jax.ShapeDtypeStruct((B, T, Hp), F32))
        out_specs.append(s["seq"])
    ins = [k, *res, dhs.astype(F32), w, *(d.astype(F32) for d in d_last), *flags]
    in_specs = [s["gates"]] + [s["seq"]] * (kind.n_res + 1) + [s["w"]] + [s["carry"]] * kind.n_carry + [s["flag"]] * len(flags)
    kernel = functools.partial(_backward_kernel, cfg, ok is not None, rs is not None)
    outs = _blocks.call(kernel, name=f"memcell_{cfg.kind}_backward", grid=(B // cfg.batch_block,), in_specs=in_specs,
                        out_specs=out_specs, out_shape=out_shape, platform=cfg.platform, tuning=cfg.tuning,
                        aliases={0: 0})(*ins)
    dz, d0 = outs[0], tuple(outs[1:1 + kind.n_carry])
    # The h each step read: the previous step's, or the initial one at step 0 and at a reset.
    h0 = carry0[0].astype(F32)
    h_in = jnp.concatenate([h0[:, None], hs[:, :-1]], axis=1)
    if rs is not None:
        h_in = jnp.where(rs > 0, h0[:, None], h_in)
    dot = lambda a, b: jnp.einsum("btj,btgh->gjh", a, b, preferred_element_type=F32)
    if kind.has_bh:  # the recurrent side differs from the input side in the n block only
        dn = outs[-1]
        dw = jnp.concatenate([dot(h_in, dz[:, :, :2]), dot(h_in, dn[:, :, None])], axis=0)
        dbh = jnp.concatenate([dz[:, :, :2].sum((0, 1)), dn.sum((0, 1))[None]], axis=0).astype(bh.dtype)
    else:
        dw, dbh = dot(h_in, dz), None
    d0 = tuple(d.astype(c.dtype) for d, c in zip(d0, carry0))
    return dz, dw.astype(w.dtype), dbh, d0, None, None


_recur.defvjp(_recur_fwd, _recur_bwd)


def recurrence(kind: str, zx, w_h, b_h, carry0: tuple, valid, resets, *, dtype, tuning: Tuning, platform: str):
    """The kernel over projected inputs; ``(hs [B, T, h], final carry)``.

    Args:
      kind: ``"lstm"``, ``"gru"``, ``"tanh"`` or ``"relu"``.
      zx: ``[B, T, G, h]`` the input side of every step's gate blocks, biases included (float32).
      w_h: ``[h, G h]`` the recurrent weights, gate blocks along the last axis (the cells' params).
      b_h: ``[G h]`` the GRU's recurrent-side bias, or None.
      carry0: the initial carry's arrays, ``[B, h]`` each (h first).
      valid, resets: ``[B, T]`` bool or None, as the frame gives them.
      dtype: the recurrent matmul's dtype (None: that of ``h`` and ``w_h``, promoted).
      tuning, platform: block sizes; ``"gpu"`` lowers through Triton, ``"cpu"`` interprets.

    Returns:
      ``(hs, carry)``: ``hs: [B, T, h]`` the h after every step (a padded step's is the h it kept)
      and the final carry's arrays ``[B, h]``, float32; differentiable (first order) in ``zx``,
      ``w_h``, ``b_h`` and ``carry0``.
    """
    B, T, G, H = zx.shape
    Hp = max(16, _blocks.next_pow2(H))  # 16: Triton's smallest matmul dimension
    Bb = max(16, min(tuning.batch_block, _blocks.next_pow2(B)))
    Bp = _blocks.round_up(B, Bb)
    dtype = jnp.result_type(F32, w_h) if dtype is None else jnp.dtype(dtype)
    w = jnp.transpose(w_h.reshape(H, G, H), (1, 0, 2)).astype(dtype)  # [G, h, h]: U of each gate block
    w = _blocks.pad_to(_blocks.pad_to(w, 1, Hp), 2, Hp)
    zx = _blocks.pad_to(_blocks.pad_to(zx.astype(F32), 0, Bp), 3, Hp)
    bh = None if b_h is None else _blocks.pad_to(b_h.reshape(G, H).astype(F32), 1, Hp)
    carry0 = tuple(_blocks.pad_to(_blocks.pad_to(c.astype(F32), 0, Bp), 1, Hp) for c in carry0)
    flag = lambda f: None if f is None else _blocks.pad_to(jnp.broadcast_to(f, (B, T)).astype(F32), 0, Bp)[..., None]
    cfg = _Config(kind, dtype, Bb, tuning, platform)
    hs, last = _recur(cfg, zx, w, bh, carry0, flag(valid), flag(resets))
    return hs[:B, :, :H], tuple(c[:B, :H] for c in last)
