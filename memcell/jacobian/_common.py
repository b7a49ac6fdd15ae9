"""What the jacobian modules share: argument checks, the hidden part of a carry, the trajectory."""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from memcell._checks import (
    as_array,
    check_bool,
    check_carry,
    check_cell,
    check_params,
    check_xs,
)
from memcell.types import Array, Cell, PyTree

__all__ = ["NORMS", "as_array", "check_bool", "check_norm", "hidden_index", "leaf", "log_norm", "over_batch",
           "prepare", "real_view", "replace_leaf", "trajectory"]

NORMS = ("spectral", "frobenius")


def check_norm(norm) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")


def prepare(cell, params, xs, carry) -> tuple[Array, tuple, PyTree]:
    check_cell(cell)
    xs = check_xs(xs, params)
    check_params(cell, params, xs.shape[-1])
    if xs.shape[-2] < 1:
        raise ValueError(f"xs must hold at least one time step, got shape {tuple(xs.shape)}")
    batch_shape = tuple(xs.shape[:-2])
    return xs, batch_shape, check_carry(cell, params, carry, batch_shape)


def _is_complex(a) -> bool:
    return jnp.issubdtype(a.dtype, jnp.complexfloating)


def real_view(cell, params, carry0: PyTree) -> tuple[Cell, PyTree]:
    """The cell and initial carry with every complex carry leaf seen as a real one.

    A complex leaf ``z: [..., n]`` becomes ``stack([Re z, Im z], -1): [..., n, 2]``, so that
    derivatives are those of the step as a map of real vectors (``C^n`` as ``R^{2n}``), whatever
    the step's holomorphy. A cell without complex leaves is returned as it is.
    """
    example = jax.eval_shape(lambda p: cell.initial_carry(p, ()), params)
    dtypes = [a.dtype for a in jax.tree.leaves(example)]
    if not any(jnp.issubdtype(d, jnp.complexfloating) for d in dtypes):
        return cell, carry0

    def to_real(tree):
        return jax.tree.map(lambda a: jnp.stack([jnp.real(a), jnp.imag(a)], -1) if _is_complex(a) else a, tree)

    def to_complex(tree):
        leaves, treedef = jax.tree.flatten(tree)
        back = [
            jax.lax.complex(a[..., 0], a[..., 1]).astype(d) if jnp.issubdtype(d, jnp.complexfloating) else a
            for a, d in zip(leaves, dtypes)
        ]
        return jax.tree.unflatten(treedef, back)

    def initial_carry(p, batch_shape=()):
        return to_real(cell.initial_carry(p, batch_shape))

    def step(p, c, x):
        new, y = cell.step(p, to_complex(c), x)
        return to_real(new), y

    return Cell(cell.init, initial_carry, step), to_real(carry0)


def hidden_index(cell, params, hidden, name: str = "hidden") -> int:
    """The index, in ``jax.tree.leaves(carry)``, of the carry's hidden part (see the module doc), or
    of the field that ``name`` (the argument, for the errors) names."""
    example = jax.eval_shape(lambda p: cell.initial_carry(p, ()), params)
    leaves = jax.tree_util.tree_flatten_with_path(example)[0]
    if isinstance(hidden, (bool, np.bool_)) or not isinstance(hidden, (str, int, np.integer)):
        raise TypeError(f"{name} must be a carry field name (str) or a leaf index (int), got {hidden!r}")
    if isinstance(hidden, (int, np.integer)):
        if not 0 <= hidden < len(leaves):
            raise ValueError(f"{name} must index one of the carry's {len(leaves)} leaves, got {hidden}")
        return int(hidden)
    for i, (path, _) in enumerate(leaves):
        if len(path) == 1 and getattr(path[0], "name", getattr(path[0], "key", None)) == hidden:
            return i
    if len(leaves) == 1 and hidden == "h":  # only the default falls back; a name the user gave must exist
        return 0
    names = [jax.tree_util.keystr(path) or "<the carry itself>" for path, _ in leaves]
    raise ValueError(
        f"{name}={hidden!r} names no leaf of the carry, whose leaves are {names}; pass {name}= as the "
        f"field name or the leaf index of the carry's {'hidden output' if name == 'hidden' else 'field'}"
    )


def leaf(tree: PyTree, i: int) -> Array:
    return jax.tree.leaves(tree)[i]


def replace_leaf(tree: PyTree, i: int, value: Array) -> PyTree:
    leaves, treedef = jax.tree.flatten(tree)
    leaves[i] = value
    return jax.tree.unflatten(treedef, leaves)


def over_batch(fn: Callable, batch_shape: tuple, xs: Array, carry: PyTree):
    """Applies the one-sequence ``fn(xs, carry)`` to every sequence of the batch axes."""
    if not batch_shape:
        return fn(xs, carry)
    n = math.prod(batch_shape)
    flat = lambda a: a.reshape((n,) + a.shape[len(batch_shape) :])
    out = jax.vmap(fn)(flat(xs), jax.tree.map(flat, carry))
    return jax.tree.map(lambda a: a.reshape(batch_shape + a.shape[1:]), out)




def trajectory(cell, params, xs: Array, carry0: PyTree) -> PyTree:
    """The carries entering each step: ``prev[t] = c_{t-1}``, stacked on a leading time axis."""

    def body(c, x):
        new, _ = cell.step(params, c, x)
        return new, c

    return jax.lax.scan(body, carry0, xs)[1]


def log_norm(m: Array, norm: str) -> Array:
    # Norms in float32 at least: bfloat16 loses digits, and LAPACK has no bfloat16 SVD.
    m = m.reshape(m.shape[0], -1).astype(jnp.promote_types(m.dtype, jnp.float32))
    if norm == "spectral":
        return jnp.log(jnp.linalg.svd(m, compute_uv=False)[0])
    return jnp.log(jnp.sqrt(jnp.sum(jnp.square(m))))
