"""The diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` as a Pallas kernel, forward and backward.

The recurrence behind every ``LinearSpec`` cell (minGRU, minLSTM, LRU, RG-LRU, a user's). Each
grid program owns ``channel_block`` channels of one sequence and runs the whole time loop over
them with the carry in registers: a step loads one row of ``a`` and ``b`` and stores one row of
``h``, so the arrays are read once and nothing but the loop is sequential. Complex recurrences
(the LRU) run as pairs of reals.

Padded steps (``valid`` False) keep the carry; a reset restarts it from ``h0`` before the step.
The backward pass is the same recurrence run backwards on the gradients, in a second kernel:
``g_t = dL/dh_t + a_{t+1} g_{t+1}``, ``dL/da_t = g_t h_{t-1}``, ``dL/db_t = g_t``, with the
gradient reaching a reset step's carry sent to ``h0`` instead. It reads ``a`` and the forward
pass's ``h`` and writes ``da`` and ``db`` in the same pass. First order only (``custom_vjp``).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from memcell.pallas import _blocks
from memcell.pallas.tuning import Tuning, for_platform
from memcell.types import Array

__all__ = ["linear_scan"]

F32 = jnp.float32


class _Config(NamedTuple):  # static: what a kernel is compiled for
    channel_block: int
    tuning: Tuning
    platform: str
    b_dtype: object  # the dtype of b's gradient


# Values are tuples of parts: (re,) for a real recurrence, (re, im) for a complex one.
def _mul(x, y):
    if len(x) == 1:
        return (x[0] * y[0],)
    (xr, xi), (yr, yi) = x, y
    return (xr * yr - xi * yi, xr * yi + xi * yr)


def _conj(x):
    return x if len(x) == 1 else (x[0], -x[1])


def _add(x, y):
    return tuple(u + v for u, v in zip(x, y))


def _row(refs, t):
    return tuple(r[t, :].astype(F32) for r in refs)


def _split(refs, counts):
    out, i = [], 0
    for c in counts:
        out.append(refs[i:i + c])
        i += c
    return out


def _forward_kernel(n: int, T: int, unroll: int, has_ok: bool, has_rs: bool, *refs):
    a, b, h0, flags, hs, h_last = _split(refs, (n, n, n, has_ok + has_rs, n, n))
    ok = flags[0] if has_ok else None
    rs = flags[-1] if has_rs else None
    start = tuple(r[...].astype(F32) for r in h0)

    def step(t, h):
        if rs is not None:  # a reset restarts from the initial carry before the step
            h = _blocks.where(rs[t], start, h)
        new = _add(_mul(_row(a, t), h), _row(b, t))
        if ok is not None:  # past the length the carry stays
            new = _blocks.where(ok[t], new, h)
        for r, v in zip(hs, new):
            r[t, :] = v
        return new

    h = _blocks.time_loop(T, unroll, step, start)
    for r, v in zip(h_last, h):
        r[...] = v


def _backward_kernel(n: int, T: int, unroll: int, has_ok: bool, has_rs: bool, *refs):
    a, hs, h0, dhs, dh_last, flags, da, db, dh0 = _split(refs, (n, n, n, n, n, has_ok + has_rs, n, n, n))
    ok = flags[0] if has_ok else None
    rs = flags[-1] if has_rs else None
    start = tuple(r[...].astype(F32) for r in h0)
    zero = tuple(jnp.zeros_like(s) for s in start)

    def step(t, state):
        g, g0 = state
        g = _add(g, _row(dhs, t))
        prev = _row(hs, jnp.maximum(t - 1, 0))
        h_in = _blocks.where(t == 0, start, prev)  # the carry step t read
        if rs is not None:
            h_in = _blocks.where(rs[t], start, h_in)
        d_a, d_b, g_in = _mul(_conj(h_in), g), g, _mul(_conj(_row(a, t)), g)
        if ok is not None:  # a padded step passes the gradient through and has no coefficients
            d_a, d_b, g_in = _blocks.where(ok[t], d_a, zero), _blocks.where(ok[t], d_b, zero), _blocks.where(ok[t], g_in, g)
        for refs_, vals in ((da, d_a), (db, d_b)):
            for r, v in zip(refs_, vals):
                r[t, :] = v.astype(r.dtype)
        if rs is not None:  # the carry a reset step read was h0: its gradient goes there
            g0 = _add(g0, _blocks.where(rs[t], g_in, zero))
            g_in = _blocks.where(rs[t], zero, g_in)
        return g_in, g0

    g, g0 = _blocks.time_loop(T, unroll, step, (tuple(r[...].astype(F32) for r in dh_last), zero), reverse=True)
    for r, v in zip(dh0, _add(g, g0)):
        r[...] = v


def _specs(T: int, C: int, counts):
    seq = pl.BlockSpec((None, T, C), lambda i, j: (i, 0, j))
    vec = pl.BlockSpec((None, C), lambda i, j: (i, j))
    flag = pl.BlockSpec((None, T), lambda i, j: (i, 0))
    return [s for s, c in zip((seq, vec, flag), counts) for _ in range(c)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg: _Config, a: tuple, b: tuple, h0: tuple, ok, rs):
    return _forward(cfg, a, b, h0, ok, rs)


def _flags(ok, rs):
    return [f for f in (ok, rs) if f is not None]


def _tuning(cfg: _Config) -> Tuning:
    # A program's work is one row of channel_block values a step: more warps than 32-lane rows idle.
    return cfg.tuning._replace(num_warps=min(cfg.tuning.num_warps, max(1, cfg.channel_block // 32)))


def _forward(cfg: _Config, a, b, h0, ok, rs):
    n = len(a)
    B, T, Hp = a[0].shape
    C = cfg.channel_block
    flags = _flags(ok, rs)
    kernel = functools.partial(_forward_kernel, n, T, cfg.tuning.unroll, ok is not None, rs is not None)
    out_shape = [jax.ShapeDtypeStruct((B, T, Hp), F32)] * n + [jax.ShapeDtypeStruct((B, Hp), F32)] * n
    outs = _blocks.call(
        kernel, name="memcell_linear_scan", grid=(B, Hp // C), platform=cfg.platform, tuning=_tuning(cfg),
        in_specs=_specs(T, C, (2 * n, n, len(flags))), out_specs=_specs(T, C, (n, n, 0)), out_shape=out_shape,
    )(*a, *b, *h0, *flags)
    return tuple(outs[:n]), tuple(outs[n:])


def _scan_fwd(cfg, a, b, h0, ok, rs):
    hs, h_last = _forward(cfg, a, b, h0, ok, rs)
    return (hs, h_last), (a, hs, h0, ok, rs)


def _scan_bwd(cfg, res, cotangents):
    a, hs, h0, ok, rs = res
    dhs, dh_last = cotangents
    n = len(a)
    B, T, Hp = a[0].shape
    C = cfg.channel_block
    flags = _flags(ok, rs)
    kernel = functools.partial(_backward_kernel, n, T, cfg.tuning.unroll, ok is not None, rs is not None)
    out_shape = ([jax.ShapeDtypeStruct((B, T, Hp), x.dtype) for x in a]
                 + [jax.ShapeDtypeStruct((B, T, Hp), cfg.b_dtype)] * n
                 + [jax.ShapeDtypeStruct((B, Hp), x.dtype) for x in h0])
    outs = _blocks.call(
        kernel, name="memcell_linear_scan_backward", grid=(B, Hp // C), platform=cfg.platform, tuning=_tuning(cfg),
        in_specs=_specs(T, C, (n, 0, 0)) + _specs(T, C, (n, n, 0)) + _specs(T, C, (n, n, len(flags))),
        out_specs=_specs(T, C, (2 * n, n, 0)), out_shape=out_shape,
    )(*a, *hs, *h0, *(x.astype(F32) for x in dhs), *(x.astype(F32) for x in dh_last), *flags)
    return tuple(outs[:n]), tuple(outs[n:2 * n]), tuple(outs[2 * n:]), None, None


_scan.defvjp(_scan_fwd, _scan_bwd)


def linear_scan(a: Array, b: Array, h0: Array, *, valid: Array | None = None, resets: Array | None = None,
                tuning: Tuning | None = None, platform: str | None = None) -> tuple[Array, Array]:
    """``h_t = a_t * h_{t-1} + b_t`` over time, in a Pallas kernel; ``(hs, h_last)``.

    Args:
      a, b: ``[B, T, H]`` coefficients, float32 or bfloat16 (complex64 for a complex recurrence).
      h0: ``[B, H]`` the initial carry, float32 (complex64).
      valid: ``[B, T]`` bool or None: where False the step leaves the carry as it is.
      resets: ``[B, T]`` bool or None: where True the carry restarts from ``h0`` before the step.
      tuning: block sizes (default: ``memcell.pallas.tuning.for_platform(platform)``).
      platform: ``"gpu"`` lowers through Triton, ``"cpu"`` interprets (default: JAX's backend).

    Returns:
      ``hs: [B, T, H]`` the carry after every step and ``h_last: [B, H]`` the final carry, in the
      carry's dtype (float32 or wider; complex64 for a complex recurrence).

    Example:
      >>> import jax.numpy as jnp
      >>> from memcell.pallas import linear_scan
      >>> hs, h_last = linear_scan(jnp.full((1, 3, 2), 0.5), jnp.ones((1, 3, 2)), jnp.zeros((1, 2)))
      >>> hs[0, :, 0].tolist()
      [1.0, 1.5, 1.75]
    """
    platform = jax.default_backend() if platform is None else platform
    tuning = for_platform(platform) if tuning is None else tuning
    is_complex = any(jnp.iscomplexobj(x) for x in (a, b, h0))
    out_dtype = jnp.result_type(h0, jnp.float32, *((jnp.complex64,) if is_complex else ()))
    parts = (lambda x: (jnp.real(x), jnp.imag(x))) if is_complex else (lambda x: (x,))
    B, T, H = a.shape
    C = min(tuning.channel_block, _blocks.next_pow2(H))
    Hp = _blocks.round_up(H, C)
    pad = lambda xs, dtype=None: tuple(_blocks.pad_to(x if dtype is None else x.astype(dtype), -1, Hp) for x in xs)
    flag = lambda f: None if f is None else jnp.broadcast_to(f, (B, T)).astype(F32)
    cfg = _Config(C, tuning, platform, jnp.real(b).dtype)
    hs, h_last = _scan(cfg, pad(parts(a)), pad(parts(b)), pad(parts(h0), F32), flag(valid), flag(resets))
    join = (lambda p: jax.lax.complex(p[0], p[1])) if is_complex else (lambda p: p[0])
    return join(hs)[..., :H].astype(out_dtype), join(h_last)[..., :H].astype(out_dtype)
