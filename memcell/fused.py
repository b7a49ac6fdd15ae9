"""Fused sequence layers with hand-written backpropagation through time (the fast path).

``memcell.fused.lstm``, ``.gru`` and ``.rnn`` compute what ``memcell.unroll`` computes for the
default cell of the same name, with the same params and shapes, organised the way cuDNN
organises it:

- the input projection ``xs @ W`` for all ``T`` steps is one large matmul before the scan,
  so only the recurrent matmul ``h @ U`` and the gate nonlinearities run per step;
- the backward pass is a ``jax.custom_vjp``: a reverse scan carries only what the
  recurrence needs (``dz @ U^T`` and the memory-cell path) and emits the pre-activation
  gradients ``dz`` of every step; the weight, bias and input gradients are then a few large
  matmuls over all steps instead of ``T`` small ones inside the scan.

The reference path (``memcell.unroll`` over ``cell.step``) stays the definition: every
function here is tested equal to it, values and gradients. The custom VJP is first order
only (no jvp, no second derivatives): jacobian studies and higher-order checks use the
reference path.

Options these functions do not implement (peepholes, layer norm, gate ablations, GRU
``reset_after=False``, packed-sequence resets, remat) raise a ``ValueError`` here, and make
``memcell.unroll(..., backend="auto")`` fall back to the reference path.
"""

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from memcell import _checks, _numerics
from memcell._sequence import flat_batch_size, reverse_within
from memcell.cells import GRUCarry, GRUParams, GRUSpec, LSTMCarry, LSTMParams, LSTMSpec, RNNCarry, RNNParams, RNNSpec
from memcell.types import BACKENDS, Array, Cell, Lengths, Outputs, PyTree, Sequence

__all__ = ["BACKENDS", "gru", "lstm", "rnn", "supports", "unroll", "why_not"]

# Steps per scan iteration (unrolled, see _forward): amortises XLA:CPU's while-loop overhead.
# Measured on the 2-core CPU: 8 was slower than 4 at B = 16, H = 128 (16.5 against 12.9 ms a
# training step).
_SCAN_UNROLL = 4

# From this hidden size on, the algorithm runs feature-major: per-step arrays are [h, B] instead
# of [B, h], and the recurrent matmuls put the weight on the left (``U^T h^T`` forward, ``U dz^T``
# backward). XLA:CPU's kernel is much faster for that operand shape when 4h is large next to B:
# a loop of the recurrent matmuls alone measured, batch-major (the faster of its two weight
# layouts) against feature-major, at B = 16, H = 1024 173 against 294 GFLOP/s forward and 132
# against 276 backward; at B = 64, H = 512 293 against 347 forward; at B = 32, H = 256 221
# against 186 (slower); at B = 16, H = 128 171 against 159. Training steps: B = 16, H = 1024
# 216.5 against 286.7 ms; B = 64, H = 512 within 3%. The transposes into and out of the layout
# cost one pass over xs, ys and dxs.
_FEATURE_MAJOR_FROM_H = 512


# From this hidden size on (batch-major only, batches of at least _GROUPS_MIN_B), each scan step
# runs the batch as two independent halves. Training step, P = 2 against one group, T = 64,
# D = 128: H = 256 0.82x the time at B = 16, 0.84x at 32, 0.92x at 64, 0.95x at 128; H = 384
# 0.93x to 1.00x; H = 128 0.95x to 1.03x (not used there). Feature-major it was slower
# (B = 16, H = 1024: 275 against 235 ms).
_GROUPS_FROM_H = 256
_GROUPS_MIN_B = 16


def _mm(a: Array, b: Array, dtype) -> Array:
    """``a @ b`` in ``dtype`` (None: the inputs'), accumulated in float32 or wider (the core's ``linear``)."""
    return _numerics.linear(a, b, dtype)


def _axis(H: int) -> int:
    """The feature axis of the per-step arrays: -1 batch-major ([B, h]), 0 feature-major ([h, B])."""
    return 0 if H >= _FEATURE_MAJOR_FROM_H else -1


def _transposed(w: Array, dtype) -> Array:
    """``w^T`` in ``dtype`` (None: its own), behind an optimization barrier so XLA materialises it once
    instead of folding the transpose into the matmuls that read it (slower on XLA:CPU)."""
    return jax.lax.optimization_barrier(jnp.transpose(w if dtype is None else w.astype(dtype)))


def _recurrent_matmul(w_h: Array, dtype, *, transposed: bool, axis: int) -> Callable:
    """The per-step ``h -> h U`` (or ``dz -> dz U^T`` when ``transposed``) in the layout of ``axis``.

    Batch-major: ``h @ U`` and ``dz @ U^T``; feature-major: ``U^T @ h`` and ``U @ dz`` (per-step
    arrays [h, B]). A transposed copy of ``U`` sits behind an optimization barrier, so XLA
    computes it once, outside the scan, instead of folding the transpose into every step.
    """
    cast = (lambda a: a) if dtype is None else (lambda a: a.astype(dtype))
    acc = _numerics.accumulation_dtype(w_h)
    dims = (((1,), (0,)), ((), ()))
    # batch-major backward or feature-major forward read U^T
    w = _transposed(w_h, dtype) if transposed != (axis == 0) else cast(w_h)
    if axis == 0:
        return lambda a: jax.lax.dot_general(w, cast(a), dims, preferred_element_type=acc)
    return lambda a: jax.lax.dot_general(cast(a), w, dims, preferred_element_type=acc)


# ----------------------------------------------------------------------------- the algorithm
# Everything works on one flattened batch axis, in one of two layouts with time as axis 1:
# batch-major, xs [B, T, D], zx [B, T, G], per-step arrays [B, h]; or feature-major (large h,
# see _FEATURE_MAJOR_FROM_H), xs [D, T, B], zx [G, T, B], per-step arrays [h, B]. The custom VJP
# takes and returns batch-major arrays either way; the cells' steps below only name the
# feature axis. Batch-major, nothing is transposed and the weight gradients read xs as given.
#
# Forward: zx = xs W for all steps in one matmul; the scan runs only h U, the bias and the gates.
# When differentiating, each step also computes the factors of its own derivative that do not
# depend on the incoming gradient ("coefficients"), from values the step has at hand, so
# nothing is recomputed later. The first coefficient array is G wide, as zx, and is written
# over zx's own buffer block by block once a block has been read: the forward pass allocates
# no second [B, T, G] array. The rest (a few h wide) go to a buffer of their own.
#
# Backward: the reverse scan is a few multiply-adds and one ``dz U^T`` a step, and writes each
# step's pre-activation gradient (G wide) over that step's coefficients, in place. Padded steps
# (lengths) are folded into the coefficients: they make the step the identity on the carry
# gradient and emit zero. After the scan, dW = [xs, h_prev]^T dz over all B * T rows at once,
# as cuDNN does, instead of T small matmuls inside the scan.


class _Kind(NamedTuple):
    """One cell kind in one layout: its forward step and the pieces of its backward pass."""

    n_gates: int
    dtype: object  # matmul computation dtype (None: the inputs')
    axis: int  # feature axis of the per-step arrays (see _axis)
    step: Callable  # (rec, b_x, b_h, carry, zx_t, ok, keep) -> (carry', (k_t [.., G], rest_t or None) or None)
    back: Callable  # (rec_t, dcarry, dy_t, (k_t, rest_t)) -> (dcarry', dzx_t, G wide)
    finish: Callable  # (dzx, rest) -> dzh, G wide over all steps; dzx itself when the two are equal


def _split(a: Array, n: int, axis: int) -> list[Array]:
    H = a.shape[axis] // n
    return [jax.lax.slice_in_dim(a, k * H, (k + 1) * H, axis=axis) for k in range(n)]


def _fill(ok, a, value):
    """``a`` on real steps, ``value`` on padded ones (ok: [B, 1] or [1, B], or None)."""
    return a if ok is None else jnp.where(ok, a, jnp.full_like(a, value))


def _passthrough(ok, like):
    """1 on padded steps, where the carry gradient passes through unchanged; 0 elsewhere."""
    return jnp.broadcast_to(jnp.where(ok, 0.0, 1.0).astype(like.dtype), like.shape)


def _same(dzx, rest):
    return dzx


@functools.cache
def _lstm_kind(dtype, axis: int) -> _Kind:
    cat = functools.partial(jnp.concatenate, axis=axis)

    def step(rec, b_x, b_h, carry, zx, ok, keep):
        h, cc = carry
        i, f, g, o = _split(zx + rec(h) + b_x, 4, axis)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c_new = f * cc + i * g
        tc = jnp.tanh(c_new)
        new = ((o * tc).astype(h.dtype), c_new.astype(cc.dtype))
        if not keep:
            return new, None
        # k: the four gates' pre-activation factors; rest: [a = d c'/d h' through h' = o tanh(c') | f]
        k = cat([g * i * (1.0 - i), cc * f * (1.0 - f), i * (1.0 - g * g), tc * o * (1.0 - o)])
        rest = [_fill(ok, o * (1.0 - tc * tc), 0.0), _fill(ok, f, 1.0)]
        if ok is not None:
            rest.append(_passthrough(ok, h))
        return new, (_fill(ok, k, 0.0), cat(rest))

    def back(rec_t, dcarry, dy, p):
        (k, rest), (dh, dc) = p, dcarry
        a, f, *passthrough = _split(rest, rest.shape[axis] // dh.shape[axis], axis)
        dh = dh + dy
        dc = dc + dh * a
        dz = cat([dc, dc, dc, dh]) * k
        dh_prev = rec_t(dz)
        if passthrough:
            dh_prev = dh_prev + dh * passthrough[0]
        return (dh_prev.astype(dh.dtype), (dc * f).astype(dc.dtype)), dz

    return _Kind(4, dtype, axis, step, back, _same)


@functools.cache
def _gru_kind(dtype, axis: int) -> _Kind:
    cat = functools.partial(jnp.concatenate, axis=axis)

    def step(rec, b_x, b_h, carry, zx, ok, keep):
        (h,) = carry
        xr, xz, xn = _split(zx + b_x, 3, axis)
        hr, hz, hn = _split(rec(h) + b_h, 3, axis)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        new = (((1.0 - z) * n + z * h).astype(h.dtype),)
        if not keep:
            return new, None
        kn = (1.0 - z) * (1.0 - n * n)  # d h' / d (pre-activation of n)
        kr = kn * hn * r * (1.0 - r)
        kz = (h - n) * z * (1.0 - z)
        # k: the input-side pre-activation factors of the r, z, n blocks (the recurrent side's n
        # block is r times the input side's); rest: [direct path z | r]. A padded step's direct
        # path 1 passes the gradient through.
        k = _fill(ok, cat([kr, kz, kn]), 0.0)
        return new, (k, cat([_fill(ok, z, 1.0), _fill(ok, r, 0.0)]))

    def recurrent_side(dzx, r):
        d_r, d_z, d_n = _split(dzx, 3, axis)
        return cat([d_r, d_z, d_n * r])

    def back(rec_t, dcarry, dy, p):
        (k, rest), (dh,) = p, dcarry
        z, r = _split(rest, 2, axis)
        dh = dh + dy
        dzx = cat([dh, dh, dh]) * k
        dh_prev = rec_t(recurrent_side(dzx, r)) + dh * z
        return (dh_prev.astype(dh.dtype),), dzx

    def finish(dzx, rest):
        return recurrent_side(dzx, _split(rest, 2, axis)[1])

    return _Kind(3, dtype, axis, step, back, finish)


@functools.cache
def _rnn_kind(dtype, activation: str, axis: int) -> _Kind:
    act = jnp.tanh if activation == "tanh" else jax.nn.relu

    def step(rec, b_x, b_h, carry, zx, ok, keep):
        (h,) = carry
        h_new = act(zx + rec(h) + b_x)
        new = (h_new.astype(h.dtype),)
        if not keep:
            return new, None
        # relu'(z) is 0 at z = 0, as jax.nn.relu's gradient.
        k = 1.0 - h_new * h_new if activation == "tanh" else (h_new > 0).astype(h_new.dtype)
        return new, (_fill(ok, k, 0.0), None if ok is None else _passthrough(ok, h))

    def back(rec_t, dcarry, dy, p):
        (k, rest), (dh,) = p, dcarry
        dh = dh + dy
        dz = dh * k
        dh_prev = rec_t(dz)
        if rest is not None:
            dh_prev = dh_prev + dh * rest
        return (dh_prev.astype(dh.dtype),), dz

    return _Kind(1, dtype, axis, step, back, _same)


def _cast(dtype, *arrays):
    return arrays if dtype is None else tuple(a.astype(dtype) for a in arrays)


def _block_size(T: int) -> int:
    """The largest divisor of T up to ``_SCAN_UNROLL``: steps run per scan iteration."""
    return max(k for k in range(1, min(_SCAN_UNROLL, T) + 1) if T % k == 0)


def _blocks(T: int):
    """``(k, n, read)``: k steps per scan iteration, n iterations, ``read(a, j)`` = block j of a [., T, .]."""
    k = _block_size(T)
    return k, T // k, lambda a, j: None if a is None else jax.lax.dynamic_slice_in_dim(a, j * k, k, 1)


def _write(buf: Array, j, k: int, items: list) -> Array:
    """``buf`` [., T, .] with block j replaced by the k per-step arrays ``items`` (in place)."""
    return jax.lax.dynamic_update_slice_in_dim(buf, jnp.stack(items, 1).astype(buf.dtype), j * k, 1)


def _to_layout(axis: int, a: Array | None) -> Array | None:
    """A batch-major [B, T, .] or [B, .] array in the layout of ``axis`` (feature-major: reversed axes)."""
    return a if a is None or axis != 0 else jnp.transpose(a)


def _step_mask(axis: int, mask):
    """mask [B, T] as [B, T, 1] (batch-major) or [1, T, B] (feature-major): a step's slice broadcasts."""
    return None if mask is None else _to_layout(axis, mask[..., None])


class _Groups(NamedTuple):
    """The batch cut into ``n`` independent groups along its axis in the layout (see _groups)."""

    n: int
    split: Callable  # array -> list of n arrays
    join: Callable  # list of n arrays -> array

    def pack(self, leaves: tuple) -> tuple:
        """A carry (tuple of arrays) -> one carry per group."""
        parts = [self.split(a) for a in leaves]
        return tuple(tuple(p[g] for p in parts) for g in range(self.n))

    def unpack(self, groups: tuple) -> tuple:
        """One carry per group -> the whole batch's carry."""
        return tuple(self.join([grp[i] for grp in groups]) for i in range(len(groups[0])))


def _groups(B: int, H: int, axis: int) -> _Groups:
    """Two groups for a batch-major batch of at least _GROUPS_MIN_B rows from _GROUPS_FROM_H units on.

    The groups' recurrences share nothing, so XLA:CPU runs their small per-step matmuls and gate
    kernels side by side on two cores instead of one after another.
    """
    P = 2 if axis != 0 and H >= _GROUPS_FROM_H and B >= _GROUPS_MIN_B else 1
    bax = 0 if axis != 0 else -1
    bounds = [0, B - B // 2, B] if P == 2 else [0, B]
    split = lambda a: [jax.lax.slice_in_dim(a, lo, hi, axis=bax % a.ndim) for lo, hi in zip(bounds, bounds[1:])]
    join = lambda parts: parts[0] if P == 1 else jnp.concatenate(parts, bax)
    return _Groups(P, split, join)


def _forward(kind: _Kind, w_x, w_h, b_x, b_h, xs, carry0, mask, keep: bool):
    """xs: [B, T, D] -> (final carry, ys [B, T, H], what the backward pass needs or None).

    The scan reads each block of ``k`` steps of zx one iteration ahead, into its carry: XLA:CPU
    would otherwise fuse the per-step ``dynamic-slice`` into the elementwise kernels that consume
    it, and those fused kernels run several times slower than the same arithmetic on a plain
    buffer (measured: a forward scan over precomputed gate inputs took 1.6x the reference's
    time). When differentiating, the block is read after the previous one's coefficients were
    written over zx, so the read depends on the write and XLA updates zx in place instead of
    copying it.
    """
    # One matmul over all B * T rows; the bias is added inside the step (a separate pass over
    # the [B, T, G] array costs as much as the matmul on CPU).
    B, T, D = xs.shape
    ax, dtype = kind.axis, kind.dtype
    if ax == 0:
        xs = _to_layout(ax, xs)  # [D, T, B]
        zx = _mm(_transposed(w_x, dtype), xs.reshape(D, T * B), dtype).reshape(-1, T, B)
        b_x, b_h = b_x[:, None], None if b_h is None else b_h[:, None]
    else:
        zx = _mm(xs.reshape(B * T, D), w_x, dtype).reshape(B, T, -1)
    carry0 = tuple(_to_layout(ax, a) for a in carry0)
    mask = _step_mask(ax, mask)
    rec = _recurrent_matmul(w_h, dtype, transposed=False, axis=ax)
    k, n, read = _blocks(T)
    per_step = lambda a: jnp.zeros((a.shape[0], T) + a.shape[1:], a.dtype)
    rest_buf = None
    if keep:  # the rest coefficients' shape, from tracing one step
        ok0 = None if mask is None else mask[:, 0]
        rest = jax.eval_shape(lambda *a: kind.step(rec, b_x, b_h, *a, True), carry0, zx[:, 0], ok0)[1][1]
        rest_buf = None if rest is None else per_step(rest)

    grp = _groups(B, w_h.shape[0], ax)

    def step(state, j):
        carries, buf, hs, rest_buf, current = state
        carries = list(carries)
        oks = read(mask, j)
        h_out, coefs, rests = [], [], []
        for i in range(k):
            zs = grp.split(current[:, i])
            okg = [None] * grp.n if oks is None else grp.split(oks[:, i])
            cg, rg = [], []
            for g, ok in enumerate(okg):
                new, coef = kind.step(rec, b_x, b_h, carries[g], zs[g], ok, keep)
                carries[g] = new if ok is None else tuple(jnp.where(ok, a, b) for a, b in zip(new, carries[g]))
                if keep:
                    cg.append(coef[0])
                    rg.append(coef[1])
            h_out.append(grp.join([cr[0] for cr in carries]))
            if keep:
                coefs.append(grp.join(cg))
                rests.append(None if rg[0] is None else grp.join(rg))
        hs = _write(hs, j, k, h_out)
        if keep:
            buf = _write(buf, j, k, coefs)
            rest_buf = None if rest_buf is None else _write(rest_buf, j, k, rests)
        return (tuple(carries), buf, hs, rest_buf, read(buf, jnp.minimum(j + 1, n - 1))), None

    state = (grp.pack(carry0), zx, per_step(carry0[0]), rest_buf, read(zx, 0))
    (carries, coef, hs, rest_buf, _), _ = jax.lax.scan(step, state, jnp.arange(n))
    carry = grp.unpack(carries)
    ys = hs if mask is None else jnp.where(mask, hs, jnp.zeros_like(hs))
    carry, ys = tuple(_to_layout(ax, a) for a in carry), _to_layout(ax, ys)
    if not keep:
        return carry, ys, None
    # The h entering step t is the one left by step t - 1 (padding passes it through).
    h_prev = jnp.concatenate([carry0[0][:, None], hs[:, :-1]], 1)
    return carry, ys, (xs, h_prev, coef, rest_buf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(kind: _Kind, w_x, w_h, b_x, b_h, xs, carry0, mask):
    carry, ys, _ = _forward(kind, w_x, w_h, b_x, b_h, xs, carry0, mask, keep=False)
    return carry, ys


def _fused_fwd(kind, w_x, w_h, b_x, b_h, xs, carry0, mask):
    carry, ys, saved = _forward(kind, w_x, w_h, b_x, b_h, xs, carry0, mask, keep=True)
    return (carry, ys), (w_x, w_h, b_x, b_h, carry0, mask, saved)


def _steps_dot(a: Array, b: Array, axis: int, dtype) -> Array:
    """``a^T b`` summed over all (batch, time) positions: [B, T, m], [B, T, n] (or [m, T, B],
    [n, T, B] feature-major) -> [m, n], without a transpose copy."""
    if axis == 0:
        a, b, contract = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), 1
    else:
        a, b, contract = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), 0
    acc = _numerics.accumulation_dtype(a, b)
    a, b = _cast(dtype, a, b)
    return jax.lax.dot_general(a, b, (((contract,), (contract,)), ((), ())), preferred_element_type=acc)


def _fused_bwd(kind, residuals, cotangents):
    w_x, w_h, b_x, b_h, carry0, mask, (xs, h_prev, coef, rest) = residuals
    dcarry_T, dys = cotangents
    ax, dtype = kind.axis, kind.dtype
    rec_t = _recurrent_matmul(w_h, dtype, transposed=True, axis=ax)
    dys = _to_layout(ax, dys.astype(coef.dtype))
    mask = _step_mask(ax, mask)
    if mask is not None:  # padded outputs are constant zeros: their cotangents go nowhere
        dys = jnp.where(mask, dys, jnp.zeros_like(dys))
    k, n, read = _blocks(dys.shape[1])

    grp = _groups(dys.shape[0 if ax != 0 else -1], w_h.shape[0], ax)

    def step(state, j):
        dcarries, buf, (coefs, dy, rests) = state
        dcarries = list(dcarries)
        out = [None] * k
        for i in reversed(range(k)):
            dyg, kg = grp.split(dy[:, i]), grp.split(coefs[:, i])
            rg = [None] * grp.n if rests is None else grp.split(rests[:, i])
            og = [None] * grp.n
            for g in range(grp.n):
                dcarries[g], og[g] = kind.back(rec_t, dcarries[g], dyg[g], (kg[g], rg[g]))
            out[i] = grp.join(og)
        buf = _write(buf, j, k, out)
        # Read the next block from the updated buffer: the read then depends on the write, and
        # XLA updates the buffer in place instead of copying all of it to protect the read.
        j = jnp.maximum(j - 1, 0)
        return (tuple(dcarries), buf, (read(buf, j), read(dys, j), read(rest, j))), None

    dcarry_T = tuple(_to_layout(ax, a) for a in dcarry_T)
    state = (grp.pack(dcarry_T), coef, (read(coef, n - 1), read(dys, n - 1), read(rest, n - 1)))
    (dcarries, dzx, _), _ = jax.lax.scan(step, state, jnp.arange(n), reverse=True)
    dcarry_0 = grp.unpack(dcarries)
    dzh = kind.finish(dzx, rest)
    # The weight and input gradients: large matmuls over all B * T positions at once.
    D = w_x.shape[0]
    if dzx is dzh and ax != 0:  # one matmul [x, h_prev]^T dz gives both kernels' gradients
        dw = _steps_dot(jnp.concatenate([xs, h_prev], ax), dzx, ax, dtype)
        dw_x, dw_h = dw[:D], dw[D:]
    else:
        dw_x = _steps_dot(xs, dzx, ax, dtype)
        dw_h = _steps_dot(h_prev, dzh, ax, dtype)
    if ax == 0:  # dxs [D, T, B] = W_x dz, the weight on the left as in the forward projection
        G, T, B = dzx.shape
        dxs = _mm(w_x, dzx.reshape(G, T * B), dtype).reshape(D, T, B)
    else:
        dxs = _mm(dzx, _transposed(w_x, dtype), dtype)
    over_steps = (1, 2) if ax == 0 else (0, 1)
    db_x = dzx.sum(over_steps)
    db_h = None if b_h is None else dzh.sum(over_steps).astype(b_h.dtype)
    return (
        dw_x.astype(w_x.dtype),
        dw_h.astype(w_h.dtype),
        db_x.astype(b_x.dtype),
        db_h,
        _to_layout(ax, dxs).astype(xs.dtype),
        tuple(_to_layout(ax, d).astype(a.dtype) for a, d in zip(carry0, dcarry_0)),
        None,
    )


_fused.defvjp(_fused_fwd, _fused_bwd)


# ----------------------------------------------------------------------------- the layers


def _run(kind: _Kind, params, w_x, w_h, b_x, b_h, xs, carry, lengths, reverse, carry_type, initial_carry):
    """Checks the arguments like ``memcell.unroll``, flattens the batch axes and runs the kernel."""
    reverse = _checks.check_bool("reverse", reverse)
    xs = _checks.check_xs(xs, params)
    batch_shape, (T, D) = tuple(xs.shape[:-2]), xs.shape[-2:]
    lengths = _checks.check_lengths(lengths, batch_shape, T)
    shape_only = Cell(init=None, initial_carry=initial_carry, step=None)
    carry0 = _checks.check_carry(shape_only, params, carry, batch_shape)
    if not isinstance(carry0, carry_type):
        carry0 = carry_type(*carry0)
    H = w_h.shape[0]
    B = flat_batch_size(batch_shape)
    if reverse:
        xs = jnp.flip(xs, -2) if lengths is None else reverse_within(xs, lengths, axis=-2)
    flat_x = xs.reshape(B, T, D)
    flat_c = tuple(leaf.reshape(B, H) for leaf in carry0)
    mask = None
    if lengths is not None:
        valid = jnp.arange(T) < lengths.reshape(B, 1)  # [B, T]
        # Zeroing padded inputs keeps garbage (inf, nan) in padding out of the gradients.
        flat_x = jnp.where(valid[..., None], flat_x, jnp.zeros_like(flat_x))
        mask = valid
    if T == 0:  # nothing to run; the same answer as the reference's empty scan
        ys = jnp.zeros(batch_shape + (0, H), carry0[0].dtype)
        return carry0, ys
    carry_T, ys = _fused(kind, w_x, w_h, b_x, b_h, flat_x, flat_c, mask)
    ys = ys.reshape(batch_shape + (T, H))
    if reverse:
        ys = jnp.flip(ys, -2) if lengths is None else reverse_within(ys, lengths, axis=-2)
    return carry_type(*(leaf.reshape(batch_shape + (H,)) for leaf in carry_T)), ys


def _check_params(name: str, params, cls, n_gates: int, bias_fields: tuple[str, ...], extra: dict) -> int:
    """The fused layers take the default cell's params only; anything else is refused by name."""
    if not isinstance(params, cls):
        raise TypeError(f"params must be a memcell.{cls.__name__} for memcell.fused.{name}, got {type(params).__name__}")
    for field, what in extra.items():
        if getattr(params, field) is not None:
            raise ValueError(
                f"memcell.fused.{name} does not implement {what} (params.{field} is set); "
                f"use memcell.unroll, or memcell.unroll(..., backend='auto'), which falls back to it"
            )
    w_x, w_h = params.w_x, params.w_h
    if getattr(w_h, "ndim", None) != 2 or w_h.shape[1] != n_gates * w_h.shape[0]:
        raise ValueError(
            f"memcell.fused.{name} needs params.w_h of shape [h, {n_gates}h] (all {n_gates} gate blocks; "
            f"gate ablations and cifg are not implemented), got shape {getattr(w_h, 'shape', None)}"
        )
    G = w_h.shape[1]
    if getattr(w_x, "ndim", None) != 2 or w_x.shape[1] != G:
        raise ValueError(f"params.w_x must have shape [d, {G}], got shape {getattr(w_x, 'shape', None)}")
    for field in bias_fields:
        b = getattr(params, field)
        if getattr(b, "shape", None) != (G,):
            raise ValueError(f"params.{field} must have shape ({G},), got shape {getattr(b, 'shape', None)}")
    for field in ("w_x", "w_h") + bias_fields:
        dt = getattr(params, field).dtype
        if not jnp.issubdtype(dt, jnp.floating):
            raise TypeError(f"params.{field} must be a floating-point array, got dtype {dt}")
    return w_h.shape[0]


def lstm(
    params: LSTMParams,
    xs: Sequence,
    carry: LSTMCarry | None = None,
    *,
    lengths: Lengths | None = None,
    reverse: bool = False,
    dtype=None,
) -> tuple[LSTMCarry, Outputs]:
    """The LSTM over a sequence, fused: equal to ``memcell.unroll(memcell.lstm(h, dtype=dtype), ...)``.

    Supports the default LSTM (gates ``i, f, g, o``, one bias; any init or ``forget_bias``,
    since those only set the params). Peepholes, layer norm, cifg and gate or activation
    ablations raise a ``ValueError``: run those with ``memcell.unroll``.

    Args:
      params: ``LSTMParams`` of ``memcell.lstm(h)`` (``w_x: [d, 4h]``, ``w_h: [h, 4h]``, ``b: [4h]``).
      xs: ``[*b, T, D]``, batch-major (time just before features).
      carry: initial ``LSTMCarry`` (default zeros); leaves broadcast to the batch axes.
      lengths: ``[*b]`` integers in ``[0, T]``, as in ``memcell.unroll``: padded steps keep the
        carry, output zeros and get zero gradients.
      reverse: read each sequence backwards (from its own last real step with ``lengths``).
      dtype: matmul computation dtype, the factory's ``dtype`` (bfloat16 accumulates in float32;
        the carry stays float32).

    Returns:
      ``(carry, ys)``: the final ``LSTMCarry`` and ``ys: [*b, T, h]``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> from memcell import fused
      >>> cell = memcell.lstm(16)
      >>> params = cell.init(jax.random.key(0), input_size=4)
      >>> xs = jnp.ones((2, 10, 4))
      >>> carry, ys = fused.lstm(params, xs)
      >>> bool(jnp.allclose(ys, memcell.unroll(cell, params, xs)[1], atol=1e-6))
      True
      >>> grads = jax.grad(lambda p: jnp.mean(fused.lstm(p, xs)[1] ** 2))(params)
    """
    dtype = _checks.check_float_dtype("dtype", dtype, allow_none=True)
    H = _check_params("lstm", params, LSTMParams, 4, ("b",),
                      {"p_i": "peepholes", "p_f": "peepholes", "p_o": "peepholes", "norm": "layer norm"})
    init = lambda p, batch_shape=(): LSTMCarry(*(_numerics.zeros_carry(p.w_h, batch_shape),) * 2)
    return _run(_lstm_kind(dtype, _axis(H)), params, params.w_x, params.w_h, params.b, None, xs, carry, lengths, reverse,
                LSTMCarry, init)


def gru(
    params: GRUParams,
    xs: Sequence,
    carry: GRUCarry | None = None,
    *,
    lengths: Lengths | None = None,
    reverse: bool = False,
    reset_after: bool = True,
    dtype=None,
) -> tuple[GRUCarry, Outputs]:
    """The GRU over a sequence, fused: equal to ``memcell.unroll(memcell.gru(h, dtype=dtype), ...)``.

    Only ``reset_after=True`` (the default, PyTorch's and cuDNN's) is fused: its three
    recurrent blocks share one matmul. ``reset_after=False`` raises a ``ValueError``.

    Args:
      params: ``GRUParams`` (``w_x: [d, 3h]``, ``w_h: [h, 3h]``, ``b_x, b_h: [3h]``).
      xs, carry, lengths, reverse, dtype: as for ``memcell.fused.lstm``.
      reset_after: must be True; the keyword mirrors the factory's so a mismatch is refused.

    Returns:
      ``(carry, ys)``: the final ``GRUCarry`` and ``ys: [*b, T, h]``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> params = memcell.gru(8).init(jax.random.key(0), input_size=3)
      >>> carry, ys = memcell.fused.gru(params, jnp.ones((5, 6, 3)))
      >>> ys.shape
      (5, 6, 8)
    """
    if reset_after is not True:
        raise ValueError(
            f"memcell.fused.gru implements reset_after=True only, got reset_after={reset_after!r}; use memcell.unroll"
        )
    dtype = _checks.check_float_dtype("dtype", dtype, allow_none=True)
    H = _check_params("gru", params, GRUParams, 3, ("b_x", "b_h"), {})
    init = lambda p, batch_shape=(): GRUCarry(_numerics.zeros_carry(p.w_h, batch_shape))
    return _run(_gru_kind(dtype, _axis(H)), params, params.w_x, params.w_h, params.b_x, params.b_h, xs, carry, lengths,
                reverse, GRUCarry, init)


def rnn(
    params: RNNParams,
    xs: Sequence,
    carry: RNNCarry | None = None,
    *,
    lengths: Lengths | None = None,
    reverse: bool = False,
    activation: str = "tanh",
    dtype=None,
) -> tuple[RNNCarry, Outputs]:
    """The Elman RNN over a sequence, fused: equal to ``memcell.unroll(memcell.rnn(h, activation=..., dtype=...), ...)``.

    Args:
      params: ``RNNParams`` (``w_x: [d, h]``, ``w_h: [h, h]``, ``b: [h]``).
      xs, carry, lengths, reverse, dtype: as for ``memcell.fused.lstm``.
      activation: ``"tanh"`` or ``"relu"``, as the factory's.

    Returns:
      ``(carry, ys)``: the final ``RNNCarry`` and ``ys: [*b, T, h]``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> params = memcell.rnn(8, activation="relu").init(jax.random.key(0), input_size=3)
      >>> carry, ys = memcell.fused.rnn(params, jnp.ones((6, 3)), activation="relu")
      >>> ys.shape, carry.h.shape
      ((6, 8), (8,))
    """
    _checks.check_choice("activation", activation, {"tanh", "relu"})
    dtype = _checks.check_float_dtype("dtype", dtype, allow_none=True)
    H = _check_params("rnn", params, RNNParams, 1, ("b",), {})
    init = lambda p, batch_shape=(): RNNCarry(_numerics.zeros_carry(p.w_h, batch_shape))
    return _run(_rnn_kind(dtype, activation, _axis(H)), params, params.w_x, params.w_h, params.b, None, xs, carry, lengths,
                reverse, RNNCarry, init)


# ----------------------------------------------------------------------------- dispatch from unroll

_LSTM_DEFAULTS = LSTMSpec(step=None)  # the default options: the only LSTM the fused kernel implements


def _plan(cell: Cell, *, resets=None, remat: bool = False):
    """``(function, keyword args)`` that runs ``cell`` fused, or a string saying why it cannot.

    Only the cell's declared spec decides (see ``memcell.CellSpec``): a cell without one, or whose
    spec was made for another step function (a wrapped, partial or replaced step), runs the reference.
    """
    spec = getattr(cell, "spec", None) if isinstance(cell, Cell) else None
    if spec is None:
        return "the cell declares no fast path (only memcell.lstm, memcell.gru and memcell.rnn cells do)"
    if not spec.describes(cell):
        return "the cell's spec was made for another step function (its step was wrapped or replaced)"
    if resets is not None:
        return "resets (packed sequences) are not implemented by the fused path"
    if remat:
        return "remat=True is not implemented by the fused path"
    if isinstance(spec, LSTMSpec):
        off = sorted(f.name for f in dataclasses.fields(LSTMSpec)
                     if f.name not in ("step", "dtype") and getattr(spec, f.name) != getattr(_LSTM_DEFAULTS, f.name))
        if off:
            return f"the fused LSTM implements the default cell only, this one sets {', '.join(off)}"
        return lstm, dict(dtype=spec.dtype)
    if isinstance(spec, GRUSpec):
        if spec.reset_after is not True:
            return "the fused GRU implements reset_after=True only"
        return gru, dict(dtype=spec.dtype)
    if isinstance(spec, RNNSpec):
        return rnn, dict(dtype=spec.dtype, activation=spec.activation)
    return f"no fused path for a cell with a {type(spec).__name__}"


def why_not(cell: Cell, *, resets=None, remat: bool = False) -> str | None:
    """Why ``memcell.unroll(cell, ..., backend="fused")`` would refuse these options, or None if it runs."""
    plan = _plan(cell, resets=resets, remat=remat)
    return plan if isinstance(plan, str) else None


def supports(cell: Cell, *, resets=None, remat: bool = False) -> bool:
    """Whether ``memcell.unroll(cell, ..., backend="auto")`` would run the fused path for these options."""
    return not isinstance(_plan(cell, resets=resets, remat=remat), str)


def unroll(
    cell: Cell,
    params: PyTree,
    xs: Sequence,
    carry: PyTree | None = None,
    *,
    lengths: Lengths | None = None,
    resets=None,
    reverse: bool = False,
    remat: bool = False,
    backend: str = "fused",
):
    """``memcell.unroll`` on the fused path: what ``memcell.unroll(..., backend=...)`` calls.

    Args:
      cell, params, xs, carry, lengths, resets, reverse, remat: as for ``memcell.unroll``.
      backend: ``"fused"`` raises a ``ValueError`` saying why when the cell or an option has
        no fused implementation; ``"auto"`` returns None then, so the caller runs the reference.

    Returns:
      ``(carry, ys)``, or None (``backend="auto"`` only) when the fused path does not apply.
    """
    _checks.check_backend(backend, ("fused", "auto"))
    plan = _plan(cell, resets=resets, remat=remat)
    if isinstance(plan, str):
        if backend == "auto":
            return None
        raise ValueError(f"backend='fused' cannot run this unroll: {plan}; use backend='auto' or 'reference'")
    fn, kwargs = plan
    xs = _checks.check_xs(xs, params)
    _checks.check_params(cell, params, xs.shape[-1])  # the kernel would run any consistent params
    return fn(params, xs, carry, lengths=lengths, reverse=reverse, **kwargs)
