"""Argument checks shared by every public entry point.

Shapes and dtypes are static even under jit, so these run before anything is traced and turn a
bad argument into a message naming it, the expected and the actual value, instead of an error
from inside XLA. Each check returns the value it accepted (converted where it says so).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from memcell.types import BACKENDS, Array, Cell, PyTree


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def as_array(x):
    """``x`` itself if it is array-like with a shape and dtype (jax, numpy, tracers), else ``np.asarray(x)``."""
    return x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)


# ----------------------------------------------------------------------------- plain values


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_choice(name: str, value, choices) -> None:
    if isinstance(value, (list, dict, set)) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def check_bool(name: str, value) -> bool:
    """Flags are bools: ``reverse="yes"`` or ``remat=1`` is refused rather than read as truthy."""
    if not isinstance(value, (bool, np.bool_)):
        shown = repr(value) if type(value) in (int, float) else f"{type(value).__name__} {value!r}"
        raise TypeError(f"{name} must be a bool, got {shown}")
    return bool(value)


def check_remat(value, name: str = "remat") -> bool | str | int:
    """A remat policy: ``False`` (none), ``True`` or ``"step"`` (every step, returned as ``"step"``),
    ``"sqrt"`` (blocks of round(sqrt(T)) steps) or a positive int k (blocks of k steps)."""
    if isinstance(value, (bool, np.bool_)):
        return "step" if value else False
    if isinstance(value, str) and value in ("step", "sqrt"):
        return value
    if isinstance(value, (int, np.integer)) and value >= 1:
        return int(value)
    shown = repr(value) if type(value) in (int, float) else f"{type(value).__name__} {value!r}"
    error = ValueError if isinstance(value, (str, int, np.integer)) else TypeError
    raise error(f"{name} must be a bool, 'step', 'sqrt' or a positive int (steps a checkpointed block), got {shown}")


def remat_block(policy, T: int) -> int | None:
    """The steps a checkpointed block under ``policy`` (``check_remat``'s value) for ``T`` steps;
    None for no remat, per-step remat or no steps. Never more than T (at least 1)."""
    if policy is False or policy == "step" or T == 0:
        return None
    k = max(1, round(T ** 0.5)) if policy == "sqrt" else policy
    return max(1, min(k, T))


def check_float_dtype(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError as e:
        raise TypeError(f"{name} must be a floating dtype, got {value!r}") from e
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating dtype, got {dtype}")
    return dtype


def check_backend(backend, choices=BACKENDS) -> str:
    if not isinstance(backend, str) or backend not in choices:
        raise ValueError(f"backend must be one of {sorted(choices)}, got {backend!r}")
    return backend


def check_unroll(value) -> int | bool:
    """``jax.lax.scan``'s ``unroll``: a positive int, or a bool (True: the whole loop)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return check_positive_int("unroll", value)


def check_cell(cell, name: str = "cell") -> Cell:
    if not isinstance(cell, Cell):
        raise TypeError(f"{name} must be a memcell.Cell, got {type(cell).__name__}")
    return cell


# ----------------------------------------------------------------------------- sequences


def check_xs(xs, params) -> Array:
    xs = as_array(xs)
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"xs must be a floating-point array, got dtype {xs.dtype}")
    if xs.ndim < 2:
        raise ValueError(f"xs must have shape [..., T, D] (time, then features), got shape {tuple(xs.shape)}")
    d = _input_size(params)
    if d is not None and xs.shape[-1] != d:
        raise ValueError(
            f"xs must have {d} features on its last axis (the params' input_size), "
            f"got shape {tuple(xs.shape)} with {xs.shape[-1]}"
        )
    return jnp.asarray(xs)


def _input_size(params) -> int | None:
    """The input size the params expect, for the built-in cells (they all have ``w_x: [d, ...]``)."""
    w_x = getattr(params, "w_x", None)
    shape = getattr(w_x, "shape", None)
    return shape[0] if shape is not None and len(shape) == 2 else None


def check_lengths(lengths, batch_shape: tuple, T: int) -> Array | None:
    if lengths is None:
        return None
    lengths = as_array(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must be an integer array, got dtype {lengths.dtype}")
    if tuple(lengths.shape) != batch_shape:
        raise ValueError(
            f"lengths must have shape {batch_shape} (the batch axes of xs), got shape {tuple(lengths.shape)}"
        )
    if is_concrete(lengths) and lengths.size:
        # np.asarray first: np.min on a jax.Array dispatches to jnp.min, which is traced
        # (and cannot be turned into an int) when this runs inside a jit trace.
        host = np.asarray(lengths)
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi > T:
            raise ValueError(f"lengths must lie in [0, T={T}] (T = xs.shape[-2]), got min {lo} and max {hi}")
    return jnp.asarray(lengths)


def check_resets(resets, batch_shape: tuple, T: int) -> Array | None:
    if resets is None:
        return None
    resets = as_array(resets)
    if not (resets.dtype == jnp.bool_ or jnp.issubdtype(resets.dtype, jnp.integer)):
        raise TypeError(f"resets must be a boolean (or 0/1 integer) array, got dtype {resets.dtype}")
    if tuple(resets.shape) not in {(T,), batch_shape + (T,)}:
        raise ValueError(f"resets must have shape ({T},) or {batch_shape + (T,)}, got shape {tuple(resets.shape)}")
    return jnp.broadcast_to(jnp.asarray(resets) != 0, batch_shape + (T,))


def check_carry(cell: Cell, params, carry, batch_shape: tuple) -> PyTree:
    """The initial carry: ``cell.initial_carry`` when None, else ``carry`` broadcast to the batch axes."""
    if carry is None:
        return cell.initial_carry(params, batch_shape)
    expected = jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params)
    if jax.tree.structure(carry) != jax.tree.structure(expected):
        raise ValueError(
            f"carry must have the structure of cell.initial_carry: {jax.tree.structure(expected)}, "
            f"got {jax.tree.structure(carry)}"
        )

    def fit(c, e):
        c = as_array(c)
        try:
            return jnp.broadcast_to(jnp.asarray(c, e.dtype), e.shape)
        except ValueError:
            raise ValueError(
                f"carry leaves must have shape {e.shape} (batch axes of xs, then the carry's own), "
                f"got shape {tuple(c.shape)}"
            ) from None

    return jax.tree.map(fit, carry, expected)


# ----------------------------------------------------------------------------- params against the cell


@functools.lru_cache(maxsize=256)
def _expected_params(init, input_size: int):
    """The params ``init`` makes for ``input_size``, as shapes (traced, not computed); None if it cannot say."""
    try:
        return jax.eval_shape(lambda k: init(k, input_size), jax.random.key(0))
    except Exception:  # a user's init may not trace abstractly; the step then reports what it finds
        return None


def _describe(tree) -> str:
    """``TypeName(field=(shape), ...)`` for a params pytree: what an error message shows of it."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    shapes = ", ".join(f"{jax.tree_util.keystr(path)}: {tuple(getattr(x, 'shape', ()))}" for path, x in leaves)
    return f"{type(tree).__name__}({shapes})"


def check_params(cell: Cell, params, input_size: int) -> None:
    """Refuses params that ``cell.init(key, input_size)`` would not make (another cell's, another size's).

    Compares the pytree structure and every leaf's shape against the cell's own init, traced
    abstractly (nothing is computed) and cached per ``(cell.init, input_size)``. Dtypes are not
    compared: params are often cast (float64 gradient checks, bfloat16 training).
    """
    init = getattr(cell, "init", None)
    expected = _expected_params(init, int(input_size)) if callable(init) else None
    if expected is None:
        return
    same_structure = jax.tree.structure(params) == jax.tree.structure(expected)
    if same_structure:
        shapes = [tuple(getattr(x, "shape", np.shape(x))) for x in jax.tree.leaves(params)]
        if shapes == [tuple(e.shape) for e in jax.tree.leaves(expected)]:
            return
    msg = (
        f"params do not belong to this cell: for input_size={input_size} the cell expects "
        f"{_describe(expected)}, got {_describe(params)}"
    )
    raise (ValueError if same_structure else TypeError)(msg)


def check_in(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    """A real number in an interval; the message shows the interval with its open and closed ends."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return float(value)
