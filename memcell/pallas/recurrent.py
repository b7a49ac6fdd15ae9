"""The LSTM, GRU (``reset_after=True``) and Elman RNN recurrences as Pallas kernels, forward and backward.

Outside the kernel, one XLA matmul projects the inputs of all steps at once (``zx = xs W + b``,
differentiated by JAX). The kernel runs the time loop: each grid program owns ``batch_block``
sequences and all hidden units. Up to ``tuning.tile`` hidden units (``memcell.pallas._resident``)
it keeps the carry in registers and a step does one ``[batch_block, h] x [h, h]`` matmul per gate
block against the recurrent weights (loaded once before the loop when they fit
``tuning.resident_bytes``, else read each step); above it (``memcell.pallas._tiled``) a step runs
tile by tile, the carry passing through memory between steps, since a GPU stages a matmul's
weights in shared memory, which holds ``[h, h]`` at once only for small h. Then the gate math of
``memcell._gates``, the same as the fused path's.

When differentiating, the forward kernel also writes each step's derivative factors over zx's own
buffer (the gate blocks' ``k``) and the kind's residuals (the LSTM's ``a`` and ``f``, the GRU's
``z`` and ``r``). The backward kernel runs time backwards with the carry's gradient in registers,
one matmul by ``U^T`` per gate block a step, and writes every step's pre-activation gradient over
those factors; after it, one matmul ``h_in^T dz`` over all (batch, time) rows gives the recurrent
weights' gradient, and JAX's own transpose of the projection the input weights' and the inputs'.

Layouts are batch-major, as the frame gives them: ``zx [B, T, G, h]`` (the projection's own
layout, gate blocks on their own axis so a kernel loads one block at a time), carries ``[B, h]``,
outputs ``[B, T, h]``. ``h`` is padded to a power of two (at least 16, Triton's smallest matmul),
or to whole tiles when tiled, and ``B`` to whole batch blocks; the padding is cut off after the
call, and padded hidden units stay zero (their weights are zero), so they never reach a real one.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from memcell.pallas import _blocks, _resident, _tiled
from memcell.pallas._gated import F32, KINDS, Config
from memcell.pallas.tuning import Tuning

__all__ = ["recurrence"]


def _specs(cfg: Config, T: int, G: int, Hp: int):
    Bb = cfg.batch_block
    return dict(
        gates=pl.BlockSpec((Bb, T, G, Hp), lambda i: (i, 0, 0, 0)),
        seq=pl.BlockSpec((Bb, T, Hp), lambda i: (i, 0, 0)),
        carry=pl.BlockSpec((Bb, Hp), lambda i: (i, 0)),
        flag=pl.BlockSpec((Bb, T, 1), lambda i: (i, 0, 0)),
        w=pl.BlockSpec((G, Hp, Hp), lambda i: (0, 0, 0)),
        bh=pl.BlockSpec((G, Hp), lambda i: (0, 0)),
        cells=pl.BlockSpec((Bb, 2, Hp), lambda i: (i, 0, 0)),  # tiled LSTM forward: the cell, by step parity
    )


def _kernels(cfg: Config):
    return _resident if cfg.tile is None else _tiled


def _forward(cfg: Config, zx, w, bh, carry0, ok, rs, keep: bool):
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
    if cfg.tile is not None and kind.n_carry == 2:  # the tiled LSTM's cell between steps
        out_shape.append(jax.ShapeDtypeStruct((B, 2, Hp), F32))
        out_specs.append(s["cells"])
    ins = [zx, w] + ([bh] if kind.has_bh else []) + list(carry0) + flags
    in_specs = ([s["gates"], s["w"]] + ([s["bh"]] if kind.has_bh else []) + [s["carry"]] * kind.n_carry
                + [s["flag"]] * len(flags))
    kernel = functools.partial(_kernels(cfg).forward_kernel, cfg, keep, ok is not None, rs is not None)
    outs = _blocks.call(kernel, name=f"memcell_{cfg.kind}_forward", grid=(B // cfg.batch_block,), in_specs=in_specs,
                        out_specs=out_specs, out_shape=out_shape, platform=cfg.platform, tuning=cfg.tuning,
                        aliases={0: 1 + kind.n_carry} if keep else None)(*ins)
    hs, last = outs[0], tuple(outs[1:1 + kind.n_carry])
    return hs, last, (tuple(outs[1 + kind.n_carry:2 + kind.n_carry + kind.n_res]) if keep else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recur(cfg: Config, zx, w, bh, carry0, ok, rs):
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
    if cfg.tile is not None:  # the carry's gradient and its reset part between steps, by step parity
        slots = 2 * kind.n_carry
        out_shape.append(jax.ShapeDtypeStruct((B, 2, slots, Hp), F32))
        out_specs.append(pl.BlockSpec((cfg.batch_block, 2, slots, Hp), lambda i: (i, 0, 0, 0)))
    ins = [k, *res, dhs.astype(F32), w, *(d.astype(F32) for d in d_last), *flags]
    in_specs = ([s["gates"]] + [s["seq"]] * (kind.n_res + 1) + [s["w"]] + [s["carry"]] * kind.n_carry
                + [s["flag"]] * len(flags))
    kernel = functools.partial(_kernels(cfg).backward_kernel, cfg, ok is not None, rs is not None)
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
        dn = outs[1 + kind.n_carry]
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
    # Whole: a power of two, at least 16 (Triton's smallest matmul dimension); tiled: whole tiles.
    Hp = max(16, _blocks.next_pow2(H))
    tile = None if Hp <= tuning.tile else tuning.tile
    Hp = Hp if tile is None else _blocks.round_up(H, tile)
    Bb = max(16, min(tuning.batch_block, _blocks.next_pow2(B)))
    Bp = _blocks.round_up(B, Bb)
    dtype = jnp.result_type(F32, w_h) if dtype is None else jnp.dtype(dtype)
    w = jnp.transpose(w_h.reshape(H, G, H), (1, 0, 2)).astype(dtype)  # [G, h, h]: U of each gate block
    w = _blocks.pad_to(_blocks.pad_to(w, 1, Hp), 2, Hp)
    zx = _blocks.pad_to(_blocks.pad_to(zx.astype(F32), 0, Bp), 3, Hp)
    bh = None if b_h is None else _blocks.pad_to(b_h.reshape(G, H).astype(F32), 1, Hp)
    carry0 = tuple(_blocks.pad_to(_blocks.pad_to(c.astype(F32), 0, Bp), 1, Hp) for c in carry0)
    flag = lambda f: None if f is None else _blocks.pad_to(jnp.broadcast_to(f, (B, T)).astype(F32), 0, Bp)[..., None]
    cfg = Config(kind, dtype, Bb, tile, tuning, platform)
    hs, last = _recur(cfg, zx, w, bh, carry0, flag(valid), flag(resets))
    return hs[:B, :, :H], tuple(c[:B, :H] for c in last)
