"""memcell params as nested dicts and back: how the Flax wrappers store them (Flax, Orbax and optax masks see dicts)."""

from typing import Mapping

import numpy as np

from memcell.convert._arrays import check_str
from memcell.types import PyTree


def to_dict(params) -> PyTree:
    """Params as nested dicts: each NamedTuple becomes a dict of its fields, ``None`` fields dropped.

    Tuples and lists become ``{"layer_0": ..., "layer_1": ...}``; dicts keep their keys, which
    must be str (Flax's and Orbax's paths are). ``from_dict`` reverses it.

    Example:
      >>> import jax, memcell
      >>> from memcell import convert
      >>> params = memcell.lstm(4).init(jax.random.key(0), 3)
      >>> sorted(convert.to_dict(params)), sorted(convert.to_dict((params, params)))
      (['b', 'w_h', 'w_x'], ['layer_0', 'layer_1'])
    """
    if hasattr(params, "_fields"):
        return {f: to_dict(v) for f, v in zip(params._fields, params) if v is not None}
    if isinstance(params, (tuple, list)):
        return {f"layer_{i}": to_dict(v) for i, v in enumerate(params)}
    if isinstance(params, Mapping):
        bad = [k for k in params if not isinstance(k, str)]
        if bad:
            raise TypeError(f"params dict keys must be str, got {bad[0]!r} ({type(bad[0]).__name__})")
        return {k: to_dict(v) for k, v in params.items()}
    return params


def _as_mapping(tree, path: str) -> Mapping:
    if not isinstance(tree, Mapping):
        raise TypeError(f"{path} must be a dict, got {type(tree).__name__}")
    return tree


def _from_namedtuple(tree, template, path: str):
    tree = _as_mapping(tree, path)
    vals = {}
    for f, t in zip(template._fields, template):
        if t is None:
            if f in tree and tree[f] is not None:
                raise ValueError(f"{path}/{f} is present but the cell has no {f!r}")
            vals[f] = None
        else:
            if f not in tree:
                raise ValueError(f"{path} is missing the key {f!r} (found {sorted(tree)})")
            vals[f] = from_dict(tree[f], t, path=f"{path}/{f}")
    extra = set(tree) - set(template._fields)
    if extra:
        raise ValueError(f"{path} has unexpected keys {sorted(extra)} (expected {list(template._fields)})")
    return type(template)(**vals)


def from_dict(tree, template, *, path: str = "params") -> PyTree:
    """Rebuilds params shaped like ``template`` from the nested dicts of ``to_dict``.

    Args:
      tree: nested dicts of arrays.
      template: params of the right structure (e.g. ``jax.eval_shape(cell.init, key, d)``);
        leaf shapes, where it has them, are checked.
      path: the name used in error messages.

    Returns:
      The params, with ``tree``'s arrays as leaves.

    Example:
      >>> import jax, memcell
      >>> from memcell import convert
      >>> params = memcell.gru(4).init(jax.random.key(0), 3)
      >>> type(convert.from_dict(convert.to_dict(params), params)).__name__
      'GRUParams'
    """
    check_str("path", path)
    if hasattr(template, "_fields"):
        return _from_namedtuple(tree, template, path)
    if isinstance(template, (tuple, list)):
        tree = _as_mapping(tree, path)
        names = [f"layer_{i}" for i in range(len(template))]
        if set(tree) != set(names):
            raise ValueError(f"{path} must have the keys {names}, got {sorted(tree)}")
        return tuple(from_dict(tree[n], t, path=f"{path}/{n}") for n, t in zip(names, template))
    if isinstance(template, Mapping):
        tree = _as_mapping(tree, path)
        missing, extra = sorted(set(template) - set(tree)), sorted(set(tree) - set(template))
        if missing or extra:
            raise ValueError(f"{path} must have the keys {sorted(template)}, got {sorted(tree)}")
        return {k: from_dict(tree[k], t, path=f"{path}/{k}") for k, t in template.items()}
    shape = getattr(template, "shape", None)
    if shape is not None and tuple(np.shape(tree)) != tuple(shape):
        raise ValueError(f"{path} must have shape {tuple(shape)}, got shape {tuple(np.shape(tree))}")
    return tree
