"""The LSTM / GRU / RNN kernels for hidden sizes up to one tile: the carry in registers for the whole loop.

A step is one ``[batch_block, h] x [h, h]`` matmul per gate block, from the carry held in
registers; the recurrent weights are loaded once before the loop when they fit
``tuning.resident_bytes``, else read each step. See ``memcell.pallas.recurrent``.
"""

import jax.numpy as jnp

from memcell.pallas import _blocks
from memcell.pallas._gated import DOT, DOT_T, F32, KINDS, Config, backward_refs, flagged, forward_refs, mm


def _matmuls(cfg: Config, w_ref, bh_ref, G: int, Hp: int):
    """``rec(h)`` (every gate block's recurrent side) and ``rec_t(dzh)`` (their gradient's sum)."""
    resident = G * Hp * Hp * jnp.dtype(cfg.dtype).itemsize <= cfg.tuning.resident_bytes
    held = [w_ref[g] for g in range(G)] if resident else None
    weight = (lambda g: held[g]) if resident else (lambda g: w_ref[g])
    bias = None if bh_ref is None else [bh_ref[g][None, :] for g in range(G)]

    def rec(h):
        out = [mm(cfg, h, weight(g), DOT) for g in range(G)]
        return out if bias is None else [o + b for o, b in zip(out, bias)]

    def rec_t(dzh):
        total = mm(cfg, dzh[0], weight(0), DOT_T)
        for g in range(1, G):
            total = total + mm(cfg, dzh[g], weight(g), DOT_T)
        return total

    return rec, rec_t


def forward_kernel(cfg: Config, keep: bool, has_ok: bool, has_rs: bool, *refs):
    kind = KINDS[cfg.kind]
    r = forward_refs(kind, keep, has_ok, has_rs, False, refs)
    G, (T, Hp) = kind.n_gates, (r.zx.shape[1], r.zx.shape[-1])
    rec, _ = _matmuls(cfg, r.w, r.bh, G, Hp)
    start = tuple(c[...].astype(F32) for c in r.c0)

    def step(t, carry):
        if r.rs is not None:  # a reset restarts from the initial carry before the step
            carry = flagged(r.rs[:, t, :], start, carry)
        new, k, res = kind.step([r.zx[:, t, g, :] for g in range(G)], rec(carry[0]), carry, keep)
        if r.ok is not None:  # past the length the carry stays
            new = flagged(r.ok[:, t, :], new, carry)
        r.hs[:, t, :] = new[0]
        if keep:  # over zx's own buffer, block g of step t once read
            for g in range(G):
                r.k[:, t, g, :] = k[g]
            for ref, v in zip(r.res, res):
                ref[:, t, :] = v
        return new

    carry = _blocks.time_loop(T, cfg.tuning.unroll, step, start)
    for ref, v in zip(r.last, carry):
        ref[...] = v


def backward_kernel(cfg: Config, has_ok: bool, has_rs: bool, *refs):
    kind = KINDS[cfg.kind]
    r = backward_refs(kind, has_ok, has_rs, False, refs)
    G, (T, Hp) = kind.n_gates, (r.k.shape[1], r.k.shape[-1])
    _, rec_t = _matmuls(cfg, r.w, None, G, Hp)
    zero = tuple(jnp.zeros(r.d_last[0].shape, F32) for _ in range(kind.n_carry))

    def step(t, state):
        d, d0 = state
        d = (d[0] + r.dys[:, t, :],) + d[1:]  # the step's output is its h
        dz, dzh, direct = kind.back(d, [r.k[:, t, g, :] for g in range(G)], [x[:, t, :] for x in r.res])
        dh_in = rec_t(dzh)
        d_in = (dh_in if direct[0] is None else dh_in + direct[0],) + direct[1:]
        dn = dzh[2] if r.dn is not None else None
        if r.ok is not None:  # a padded step passes the carry's gradient through and has no gates
            ok = r.ok[:, t, :]
            d_in = flagged(ok, d_in, d)
            dz = [jnp.where(ok > 0, z, jnp.zeros_like(z)) for z in dz]
            dn = None if dn is None else jnp.where(ok > 0, dn, jnp.zeros_like(dn))
        for g in range(G):
            r.dz[:, t, g, :] = dz[g]
        if dn is not None:
            r.dn[:, t, :] = dn
        if r.rs is not None:  # the carry a reset step read was the initial one: its gradient goes there
            rs = r.rs[:, t, :]
            d0 = tuple(a + jnp.where(rs > 0, b, jnp.zeros_like(b)) for a, b in zip(d0, d_in))
            d_in = flagged(rs, zero, d_in)
        return d_in, d0

    d, d0 = _blocks.time_loop(T, cfg.tuning.unroll, step, (tuple(x[...].astype(F32) for x in r.d_last), zero),
                              reverse=True)
    for ref, a, b in zip(r.d0, d, d0):
        ref[...] = a + b
