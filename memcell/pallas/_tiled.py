"""The LSTM / GRU / RNN kernels for hidden sizes above one tile: the hidden units in tiles of ``tile``.

On a GPU a matmul's weight operand is staged in shared memory: ``[h, h]`` at once fits up to about
h = 128 in float32 (227 KiB on an H100), so larger hidden sizes run tile by tile. A step computes
the gate blocks of one tile of hidden units at a time, each a loop over tiles of the contraction
(``[batch_block, tile] x [tile, tile]``, weights read from L2); the carry goes through memory
between steps (the h of the previous step is its output row; the LSTM's cell, and in the backward
pass the carry's gradient, sit in a two-slot buffer by step parity), with a barrier between steps
(and, backward, between the gate gradients and the matmul that reads them). Same results as the
resident kernels (``memcell.pallas._resident``), which keep the whole carry in registers.
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from memcell.pallas import _blocks
from memcell.pallas._gated import DOT, DOT_T, F32, KINDS, Config, backward_refs, flagged, forward_refs, mm


def _barrier(cfg: Config):
    # Interpret mode runs a program's steps in order: nothing to wait for.
    return (lambda: None) if cfg.interpret else pltriton.debug_barrier


def _parity(t):
    # lax.rem, not %: jnp's remainder fixes signs with boolean arithmetic the Triton lowering rejects (t >= 0 here).
    return jax.lax.rem(jnp.asarray(t, jnp.int32), jnp.int32(2))


def _fresh(r, t):
    """Where step t reads the initial carry: step 0, and a reset."""
    first = t == 0
    return first if r.rs is None else jnp.logical_or(first, r.rs[:, t, :] > 0)


def forward_kernel(cfg: Config, keep: bool, has_ok: bool, has_rs: bool, *refs):
    kind = KINDS[cfg.kind]
    lstm = kind.n_carry == 2
    r = forward_refs(kind, keep, has_ok, has_rs, lstm, refs)
    G, (B, T, Hp), C = kind.n_gates, (r.zx.shape[0], r.zx.shape[1], r.zx.shape[-1]), cfg.tile
    n = Hp // C
    barrier = _barrier(cfg)

    def h_in(t, cols):  # the h step t reads
        return jnp.where(_fresh(r, t), r.c0[0][:, cols], r.hs[:, jnp.maximum(t - 1, 0), cols])

    def c_in(t, cols):  # the LSTM's cell step t reads: the other parity's slot
        return jnp.where(_fresh(r, t), r.c0[1][:, cols], r.scratch[:, _parity(t + 1), cols])

    def recurrent(t, g, cols):  # gate block g's h U for the hidden units cols, over tiles of h
        def tile(i, acc):
            rows = pl.ds(i * C, C)
            return acc + mm(cfg, h_in(t, rows), r.w[g, rows, cols], DOT)

        acc = jax.lax.fori_loop(0, n, tile, jnp.zeros((B, C), F32))
        return acc if r.bh is None else acc + r.bh[g, cols][None, :]

    def step(t, dummy):
        barrier()  # the previous step's rows are written

        def tile(j, dummy):  # the hidden units of tile j (a loop, not unrolled: the code stays one tile long)
            cols = pl.ds(j * C, C)
            old = (h_in(t, cols),) + ((c_in(t, cols),) if lstm else ())
            zh = [recurrent(t, g, cols) for g in range(G)]
            new, k, res = kind.step([r.zx[:, t, g, cols] for g in range(G)], zh, old, keep)
            if r.ok is not None:  # past the length the carry stays
                new = flagged(r.ok[:, t, :], new, old)
            r.hs[:, t, cols] = new[0]
            if lstm:
                r.scratch[:, _parity(t), cols] = new[1]
            if keep:
                for g in range(G):
                    r.k[:, t, g, cols] = k[g]
                for ref, v in zip(r.res, res):
                    ref[:, t, cols] = v
            return dummy

        return jax.lax.fori_loop(0, n, tile, dummy)

    _blocks.time_loop(T, cfg.tuning.unroll, step, jnp.zeros((), F32))
    barrier()
    for j in range(n):
        cols = pl.ds(j * C, C)
        r.last[0][:, cols] = r.hs[:, T - 1, cols]
        if lstm:
            r.last[1][:, cols] = r.scratch[:, (T - 1) % 2, cols]


def backward_kernel(cfg: Config, has_ok: bool, has_rs: bool, *refs):
    kind = KINDS[cfg.kind]
    nc = kind.n_carry
    r = backward_refs(kind, has_ok, has_rs, True, refs)
    G, (B, T, Hp), C = kind.n_gates, (r.k.shape[0], r.k.shape[1], r.k.shape[-1]), cfg.tile
    n = Hp // C
    barrier = _barrier(cfg)
    # scratch [b, parity, slot, h]: slots 0 .. nc-1 the carry's gradient, nc .. 2nc-1 what resets sent to carry0.

    def d_prev(t, s, cols):  # the gradient of carry array s after step t (the step after it left it)
        return jnp.where(t == T - 1, r.d_last[s][:, cols], r.scratch[:, _parity(t + 1), s, cols])

    def d0_prev(t, s, cols):
        return jnp.where(t == T - 1, jnp.zeros((B, C), F32), r.scratch[:, _parity(t + 1), nc + s, cols])

    def pieces(t, cols):  # the step's gate gradients and direct carry gradients on the hidden units cols
        d = (d_prev(t, 0, cols) + r.dys[:, t, cols],) + tuple(d_prev(t, s, cols) for s in range(1, nc))
        dz, dzh, direct = kind.back(d, [r.k[:, t, g, cols] for g in range(G)], [x[:, t, cols] for x in r.res])
        return d, dz, dzh, direct

    def send(t, s, cols, d_in, d):  # padding, resets, and the slot write of carry array s
        if r.ok is not None:
            d_in = jnp.where(r.ok[:, t, :] > 0, d_in, d)
        d0 = d0_prev(t, s, cols)
        if r.rs is not None:
            rs = r.rs[:, t, :] > 0
            d0, d_in = d0 + jnp.where(rs, d_in, jnp.zeros_like(d_in)), jnp.where(rs, jnp.zeros_like(d_in), d_in)
        r.scratch[:, _parity(t), s, cols] = d_in
        r.scratch[:, _parity(t), nc + s, cols] = d0

    def dzh_rows(t, g, cols):  # the recurrent side of gate block g's gradient, as written
        return r.dn[:, t, cols] if (r.dn is not None and g == 2) else r.dz[:, t, g, cols]

    def gates_tile(t, j, dummy):  # the gate gradients, and the carry gradients that bypass the matmul
        cols = pl.ds(j * C, C)
        d, dz, dzh, direct = pieces(t, cols)
        ok = None if r.ok is None else r.ok[:, t, :] > 0
        for g in range(G):
            r.dz[:, t, g, cols] = dz[g] if ok is None else jnp.where(ok, dz[g], jnp.zeros_like(dz[g]))
        if r.dn is not None:
            r.dn[:, t, cols] = dzh[2] if ok is None else jnp.where(ok, dzh[2], jnp.zeros_like(dzh[2]))
        for s in range(1, nc):
            send(t, s, cols, direct[s], d[s])
        return dummy

    def h_tile(t, i, dummy):  # the h gradient on tile i: the sum over gate blocks of dzh U^T, over tiles
        rows = pl.ds(i * C, C)

        def tile(j, acc):
            cols = pl.ds(j * C, C)
            for g in range(G):
                acc = acc + mm(cfg, dzh_rows(t, g, cols), r.w[g, rows, cols], DOT_T)
            return acc

        dh_in = jax.lax.fori_loop(0, n, tile, jnp.zeros((B, C), F32))
        d, _, _, direct = pieces(t, rows)
        send(t, 0, rows, dh_in if direct[0] is None else dh_in + direct[0], d[0])
        return dummy

    def step(t, dummy):
        barrier()  # the next step's carry gradients are written
        dummy = jax.lax.fori_loop(0, n, lambda j, x: gates_tile(t, j, x), dummy)
        barrier()  # every gate gradient of the step is written
        return jax.lax.fori_loop(0, n, lambda i, x: h_tile(t, i, x), dummy)

    _blocks.time_loop(T, cfg.tuning.unroll, step, jnp.zeros((), F32), reverse=True)
    barrier()
    for s in range(nc):
        for j in range(n):
            cols = pl.ds(j * C, C)
            r.d0[s][:, cols] = r.scratch[:, 0, s, cols] + r.scratch[:, 0, nc + s, cols]
