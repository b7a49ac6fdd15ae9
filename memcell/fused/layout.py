"""How the fused path lays out its arrays: the two layouts, blocks of steps, batch groups, matmuls.

Everything works on one flattened batch axis, in one of two layouts with time as axis 1:
batch-major, xs [B, T, D], zx [B, T, G], per-step arrays [B, h]; or feature-major (large h, see
``memcell.fused.tuning``), xs [D, T, B], zx [G, T, B], per-step arrays [h, B]. The cells' steps
only name the feature axis (``axis``: -1 batch-major, 0 feature-major).

Public so that benchmarks can time the recurrent matmul exactly as the fused path runs it.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from memcell import _numerics
from memcell.fused.tuning import Tuning, for_platform
from memcell.types import Array


def feature_axis(H: int, tuning: Tuning | None = None) -> int:
    """The feature axis of the per-step arrays at hidden size ``H``: -1 batch-major ([B, h]), 0 feature-major ([h, B]).

    Args:
      H: the hidden size.
      tuning: the thresholds (None: those of ``jax.default_backend()``).
    """
    tuning = for_platform() if tuning is None else tuning
    threshold = tuning.feature_major_from_h
    return 0 if threshold is not None and H >= threshold else -1


def mm(a: Array, b: Array, dtype) -> Array:
    """``a @ b`` in ``dtype`` (None: the inputs'), accumulated in float32 or wider (the core's ``linear``)."""
    return _numerics.linear(a, b, dtype)


def cast(dtype, *arrays) -> tuple:
    return arrays if dtype is None else tuple(a.astype(dtype) for a in arrays)


def transposed_copy(w: Array, dtype) -> Array:
    """``w^T`` in ``dtype`` (None: its own), behind an optimization barrier so XLA materialises it once
    instead of folding the transpose into the matmuls that read it (slower on XLA:CPU)."""
    return jax.lax.optimization_barrier(jnp.transpose(w if dtype is None else w.astype(dtype)))


def recurrent_matmul(w_h: Array, dtype, *, transposed: bool, axis: int) -> Callable:
    """The per-step ``h -> h U`` (or ``dz -> dz U^T`` when ``transposed``) in the layout of ``axis``.

    Batch-major: ``h @ U`` and ``dz @ U^T``; feature-major: ``U^T @ h`` and ``U @ dz`` (per-step
    arrays [h, B]). A transposed copy of ``U`` sits behind an optimization barrier, so XLA
    computes it once, outside the scan, instead of folding the transpose into every step.
    """
    to = (lambda a: a) if dtype is None else (lambda a: a.astype(dtype))
    acc = _numerics.accumulation_dtype(w_h)
    dims = (((1,), (0,)), ((), ()))
    # batch-major backward or feature-major forward read U^T
    w = transposed_copy(w_h, dtype) if transposed != (axis == 0) else to(w_h)
    if axis == 0:
        return lambda a: jax.lax.dot_general(w, to(a), dims, preferred_element_type=acc)
    return lambda a: jax.lax.dot_general(to(a), w, dims, preferred_element_type=acc)


def split(a: Array, n: int, axis: int) -> list[Array]:
    """``a`` cut into ``n`` equal blocks along ``axis`` (the gate blocks of a [.., n h] array)."""
    H = a.shape[axis] // n
    return [jax.lax.slice_in_dim(a, k * H, (k + 1) * H, axis=axis) for k in range(n)]


def to_layout(axis: int, a: Array | None) -> Array | None:
    """A batch-major [B, T, .] or [B, .] array in the layout of ``axis`` (feature-major: reversed axes)."""
    return a if a is None or axis != 0 else jnp.transpose(a)


def step_mask(axis: int, mask):
    """mask [B, T] as [B, T, 1] (batch-major) or [1, T, B] (feature-major): a step's slice broadcasts."""
    return None if mask is None else to_layout(axis, mask[..., None])


# ----------------------------------------------------------------------------- blocks of steps


def blocks(T: int, tuning: Tuning):
    """``(k, n, read)``: k steps per scan iteration (the largest divisor of T up to
    ``tuning.scan_unroll``), n iterations, ``read(a, j)`` = block j of a [., T, .] (None stays None)."""
    k = max(d for d in range(1, min(tuning.scan_unroll, T) + 1) if T % d == 0)
    return k, T // k, lambda a, j: None if a is None else jax.lax.dynamic_slice_in_dim(a, j * k, k, 1)


def write(buf: Array, j, k: int, items: list) -> Array:
    """``buf`` [., T, .] with block j replaced by the k per-step arrays ``items`` (in place)."""
    return jax.lax.dynamic_update_slice_in_dim(buf, jnp.stack(items, 1).astype(buf.dtype), j * k, 1)


def per_step(a, T: int) -> Array:
    """A zero [., T, .] buffer for T steps of the per-step array ``a`` [., .] (or its shape): time as axis 1."""
    return jnp.zeros((a.shape[0], T) + tuple(a.shape[1:]), a.dtype)


# ----------------------------------------------------------------------------- batch groups


class Groups(NamedTuple):
    """The batch cut into ``n`` independent groups along its axis in the layout (see ``groups``)."""

    n: int
    split: Callable  # array -> list of n arrays
    join: Callable  # list of n arrays -> array

    def split_tree(self, tree) -> list:
        """A pytree of per-step arrays -> one pytree per group (None leaves stay None)."""
        leaves, treedef = jax.tree.flatten(tree)
        parts = [self.split(a) for a in leaves]
        return [treedef.unflatten([p[g] for p in parts]) for g in range(self.n)]

    def join_trees(self, trees: list):
        """One pytree per group -> the whole batch's pytree."""
        return jax.tree.map(lambda *parts: self.join(list(parts)), *trees)

    def pack(self, leaves: tuple) -> tuple:
        """A carry (tuple of arrays) -> one carry per group."""
        return tuple(tuple(c) for c in self.split_tree(tuple(leaves)))

    def unpack(self, groups: tuple) -> tuple:
        """One carry per group -> the whole batch's carry."""
        return tuple(self.join_trees(list(groups)))


def groups(B: int, H: int, axis: int, tuning: Tuning) -> Groups:
    """Two groups for a batch-major batch of at least ``tuning.groups_min_b`` rows from
    ``tuning.groups_from_h`` units on, else one.

    The groups' recurrences share nothing, so XLA:CPU runs their small per-step matmuls and gate
    kernels side by side on two cores instead of one after another.
    """
    on = tuning.groups_from_h is not None and H >= tuning.groups_from_h and B >= tuning.groups_min_b
    P = 2 if axis != 0 and on else 1
    bax = 0 if axis != 0 else -1
    bounds = [0, B - B // 2, B] if P == 2 else [0, B]
    cut = lambda a: [jax.lax.slice_in_dim(a, lo, hi, axis=bax % a.ndim) for lo, hi in zip(bounds, bounds[1:])]
    join = lambda parts: parts[0] if P == 1 else jnp.concatenate(parts, bax)
    return Groups(P, cut, join)
