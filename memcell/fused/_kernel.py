"""The fused kernel: a forward scan and a hand-written backward pass, bound by ``jax.custom_vjp``.

Forward: zx = xs W for all steps in one matmul; the scan runs only h U, the bias and the gates.
When differentiating, each step also emits its coefficients (see ``kinds``): ``k`` is written over
zx's own buffer block by block once a block has been read, so the forward pass allocates no second
[B, T, G] array; the residuals go to one per-step buffer per named field.

Backward: the reverse scan is a few multiply-adds and one ``dz U^T`` a step, and writes each
step's pre-activation gradient (G wide) over that step's coefficients, in place. After the scan,
dW = [xs, h_prev]^T dz over all B * T rows at once, as cuDNN does, instead of T small matmuls
inside the scan. The custom VJP takes and returns batch-major arrays in either layout.
"""

import functools

import jax
import jax.numpy as jnp

from memcell import _numerics
from memcell._remat import blocked_scan
from memcell.fused.kinds import Kind
from memcell.fused.layout import (blocks, cast, groups, mm, per_step, recurrent_matmul, step_mask, to_layout,
                                  transposed_copy, write)
from memcell.types import Array


def _project(kind: Kind, w_x, b_x, b_h, xs):
    """xs [B, T, D] -> (xs, zx = xs W, b_x, b_h), all in the kind's layout.

    One matmul over all B * T rows; the bias is added inside the step (a separate pass over the
    [B, T, G] array costs as much as the matmul on CPU).
    """
    B, T, D = xs.shape
    ax, dtype = kind.axis, kind.dtype
    if ax != 0:
        return xs, mm(xs.reshape(B * T, D), w_x, dtype).reshape(B, T, -1), b_x, b_h
    xs = to_layout(ax, xs)  # [D, T, B]
    zx = mm(transposed_copy(w_x, dtype), xs.reshape(D, T * B), dtype).reshape(-1, T, B)
    return xs, zx, b_x[:, None], None if b_h is None else b_h[:, None]


def _forward_step(kind: Kind, rec, b_x, b_h, mask, grp, k: int, n: int, read, keep: bool):
    """The scan body of ``forward``: k steps on each batch group, their outputs written block j."""

    def step(state, j):
        carries, buf, hs, res_buf, current = state
        carries = list(carries)
        oks = read(mask, j)
        h_out, coefs, residuals = [], [], []
        for i in range(k):
            zs = grp.split(current[:, i])
            okg = [None] * grp.n if oks is None else grp.split(oks[:, i])
            kg, rg = [], []
            for g, ok in enumerate(okg):
                new, coef = kind.step(rec, b_x, b_h, carries[g], zs[g], ok, keep)
                carries[g] = new if ok is None else tuple(jnp.where(ok, a, b) for a, b in zip(new, carries[g]))
                if keep:
                    kg.append(coef[0])
                    rg.append(coef[1])
            h_out.append(grp.join([c[0] for c in carries]))
            if keep:
                coefs.append(grp.join(kg))
                residuals.append(grp.join_trees(rg))
        hs = write(hs, j, k, h_out)
        if keep:
            buf = write(buf, j, k, coefs)
            res_buf = jax.tree.map(lambda b, *items: write(b, j, k, list(items)), res_buf, *residuals)
        return (tuple(carries), buf, hs, res_buf, read(buf, jnp.minimum(j + 1, n - 1))), None

    return step


def forward(kind: Kind, w_x, w_h, b_x, b_h, xs, carry0, mask, keep: bool):
    """xs: [B, T, D] -> (final carry, ys [B, T, H], what the backward pass needs or None).

    The scan reads each block of ``k`` steps of zx one iteration ahead, into its carry: XLA:CPU
    would otherwise fuse the per-step ``dynamic-slice`` into the elementwise kernels that consume
    it, and those fused kernels run several times slower than the same arithmetic on a plain
    buffer (measured: a forward scan over precomputed gate inputs took 1.6x the reference's
    time). When differentiating, the block is read after the previous one's coefficients were
    written over zx, so the read depends on the write and XLA updates zx in place instead of
    copying it.
    """
    B, T, _ = xs.shape
    ax = kind.axis
    xs, zx, b_x, b_h = _project(kind, w_x, b_x, b_h, xs)
    carry0 = tuple(to_layout(ax, a) for a in carry0)
    mask = step_mask(ax, mask)
    rec = recurrent_matmul(w_h, kind.dtype, transposed=False, axis=ax)
    k, n, read = blocks(T, kind.tuning)
    res_buf = None
    if keep:  # one buffer per residual field, shaped from tracing one step
        ok0 = None if mask is None else mask[:, 0]
        shapes = jax.eval_shape(lambda *a: kind.step(rec, b_x, b_h, *a, True), carry0, zx[:, 0], ok0)[1][1]
        assert isinstance(shapes, kind.residuals), (type(shapes), kind.residuals)  # the fields the kind declares
        res_buf = jax.tree.map(lambda s: per_step(s, T), shapes)
    grp = groups(B, w_h.shape[0], ax, kind.tuning)
    step = _forward_step(kind, rec, b_x, b_h, mask, grp, k, n, read, keep)
    state = (grp.pack(carry0), zx, per_step(carry0[0], T), res_buf, read(zx, 0))
    (carries, coef, hs, res_buf, _), _ = jax.lax.scan(step, state, jnp.arange(n))
    carry = grp.unpack(carries)
    ys = hs if mask is None else jnp.where(mask, hs, jnp.zeros_like(hs))
    carry, ys = tuple(to_layout(ax, a) for a in carry), to_layout(ax, ys)
    if not keep:
        return carry, ys, None
    # The h entering step t is the one left by step t - 1 (padding passes it through).
    h_prev = jnp.concatenate([carry0[0][:, None], hs[:, :-1]], 1)
    return carry, ys, (xs, h_prev, coef, res_buf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused(kind: Kind, w_x, w_h, b_x, b_h, xs, carry0, mask):
    """``(final carry, ys)`` of ``kind`` over xs [B, T, D] (batch-major), carry0 a tuple of [B, H],
    mask [B, T] or None; differentiable (first order) in everything but ``kind`` and ``mask``."""
    carry, ys, _ = forward(kind, w_x, w_h, b_x, b_h, xs, carry0, mask, keep=False)
    return carry, ys


def _fused_fwd(kind, w_x, w_h, b_x, b_h, xs, carry0, mask):
    carry, ys, saved = forward(kind, w_x, w_h, b_x, b_h, xs, carry0, mask, keep=True)
    return (carry, ys), (w_x, w_h, b_x, b_h, carry0, mask, saved)


def _steps_dot(a: Array, b: Array, axis: int, dtype) -> Array:
    """``a^T b`` summed over all (batch, time) positions: [B, T, m], [B, T, n] (or [m, T, B],
    [n, T, B] feature-major) -> [m, n], without a transpose copy."""
    if axis == 0:
        a, b, contract = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), 1
    else:
        a, b, contract = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), 0
    acc = _numerics.accumulation_dtype(a, b)
    a, b = cast(dtype, a, b)
    return jax.lax.dot_general(a, b, (((contract,), (contract,)), ((), ())), preferred_element_type=acc)


def _backward_step(kind: Kind, rec_t, grp, k: int, read, dys, residuals):
    """The reverse scan body of ``backward``: k steps of each group, their dz written over block j."""

    def step(state, j):
        dcarries, buf, (coefs, dy, res) = state
        dcarries = list(dcarries)
        out = [None] * k
        for i in reversed(range(k)):
            dyg, kg = grp.split(dy[:, i]), grp.split(coefs[:, i])
            rg = grp.split_tree(jax.tree.map(lambda a, i=i: a[:, i], res))
            og = [None] * grp.n
            for g in range(grp.n):
                dcarries[g], og[g] = kind.back(rec_t, dcarries[g], dyg[g], kg[g], rg[g])
            out[i] = grp.join(og)
        buf = write(buf, j, k, out)
        # Read the next block from the updated buffer: the read then depends on the write, and
        # XLA updates the buffer in place instead of copying all of it to protect the read.
        j = jnp.maximum(j - 1, 0)
        return (tuple(dcarries), buf, (read(buf, j), read(dys, j), jax.tree.map(lambda a: read(a, j), residuals))), None

    return step


def _param_grads(kind: Kind, w_x, w_h, b_x, b_h, xs, h_prev, dzx, dzh):
    """(dw_x, dw_h, db_x, db_h, dxs in the layout): large matmuls over all B * T positions at once."""
    ax, dtype = kind.axis, kind.dtype
    D = w_x.shape[0]
    if dzx is dzh and ax != 0:  # one matmul [x, h_prev]^T dz gives both kernels' gradients
        dw = _steps_dot(jnp.concatenate([xs, h_prev], ax), dzx, ax, dtype)
        dw_x, dw_h = dw[:D], dw[D:]
    else:
        dw_x = _steps_dot(xs, dzx, ax, dtype)
        dw_h = _steps_dot(h_prev, dzh, ax, dtype)
    if ax == 0:  # dxs [D, T, B] = W_x dz, the weight on the left as in the forward projection
        G, T, B = dzx.shape
        dxs = mm(w_x, dzx.reshape(G, T * B), dtype).reshape(D, T, B)
    else:
        dxs = mm(dzx, transposed_copy(w_x, dtype), dtype)
    over_steps = (1, 2) if ax == 0 else (0, 1)
    db_x = dzx.sum(over_steps)
    db_h = None if b_h is None else dzh.sum(over_steps).astype(b_h.dtype)
    return dw_x.astype(w_x.dtype), dw_h.astype(w_h.dtype), db_x.astype(b_x.dtype), db_h, dxs


def _fused_bwd(kind, saved, cotangents):
    w_x, w_h, b_x, b_h, carry0, mask, (xs, h_prev, coef, residuals) = saved
    dcarry_T, dys = cotangents
    ax = kind.axis
    rec_t = recurrent_matmul(w_h, kind.dtype, transposed=True, axis=ax)
    dys = to_layout(ax, dys.astype(coef.dtype))
    mask = step_mask(ax, mask)
    if mask is not None:  # padded outputs are constant zeros: their cotangents go nowhere
        dys = jnp.where(mask, dys, jnp.zeros_like(dys))
    k, n, read = blocks(dys.shape[1], kind.tuning)
    grp = groups(dys.shape[0 if ax != 0 else -1], w_h.shape[0], ax, kind.tuning)
    step = _backward_step(kind, rec_t, grp, k, read, dys, residuals)
    dcarry_T = tuple(to_layout(ax, a) for a in dcarry_T)
    first = (read(coef, n - 1), read(dys, n - 1), jax.tree.map(lambda a: read(a, n - 1), residuals))
    (dcarries, dzx, _), _ = jax.lax.scan(step, (grp.pack(dcarry_T), coef, first), jnp.arange(n), reverse=True)
    dcarry_0 = grp.unpack(dcarries)
    dzh = kind.finish(dzx, residuals)
    dw_x, dw_h, db_x, db_h, dxs = _param_grads(kind, w_x, w_h, b_x, b_h, xs, h_prev, dzx, dzh)
    dcarry_0 = tuple(to_layout(ax, d).astype(a.dtype) for a, d in zip(carry0, dcarry_0))
    return dw_x, dw_h, db_x, db_h, to_layout(ax, dxs).astype(xs.dtype), dcarry_0, None


fused.defvjp(_fused_fwd, _fused_bwd)


def blocked(kind: Kind, w_x, w_h, b_x, b_h, xs, carry0, mask, k: int):
    """``fused`` over checkpointed blocks of k steps (a tail of T % k steps as one more block).

    Each block runs the whole fused kernel, its input projection included, on its own steps under
    ``jax.checkpoint``: the forward pass keeps only the carry at each block boundary, and the
    backward pass reruns one block's forward (with its coefficients) before that block's
    hand-written backward. Nothing [B, T, G] wide exists at once, not even the projection.
    """
    block = lambda c, inp: fused(kind, w_x, w_h, b_x, b_h, inp[0], c, inp[1])
    return blocked_scan(block, tuple(carry0), (xs, mask), xs.shape[1], k, axis=1)
