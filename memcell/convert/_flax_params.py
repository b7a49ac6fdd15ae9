"""Flax RNN cell params (``flax.linen`` and ``flax.nnx``) both ways, as nested dicts; Flax is not imported.

Flax's cells split the gates into one ``Dense`` each (linen ``ii``/``hi``/..., nnx ``LSTMCell``)
or fuse them (``dense_i``/``dense_h`` in nnx); which cell it was is told by the keys.
"""

from typing import Mapping

import jax.numpy as jnp
import numpy as np

from memcell.cells import GRUParams, LSTMParams, RNNParams, gru, lstm, rnn
from memcell.convert._arrays import check_flag, expect_shape, to_numpy
from memcell.convert._probe import probe
from memcell.convert._spec import infer_spec
from memcell.types import DirectionPair
from memcell.scan import layer as as_layer
from memcell.types import Cell, PyTree

_LSTM_GATES = ("i", "f", "g", "o")
_GRU_GATES = ("r", "z", "n")
_FLAX_APIS = ("linen", "nnx")


def _get(tree: Mapping, path: tuple[str, ...], shape: tuple | None = None) -> np.ndarray:
    """The array at ``path`` (e.g. ``("ii", "kernel")``), checked against ``shape``; errors name the path."""
    node = tree
    for i, k in enumerate(path):
        if not isinstance(node, Mapping) or k not in node:
            have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise ValueError(f"flax params are missing the key {'/'.join(path[: i + 1])!r} (found {have})")
        node = node[k]
    name = "/".join(path)
    if hasattr(node, "get_value"):  # an nnx Variable left in the tree
        node = node.get_value()
    arr = to_numpy(name, node)
    if shape is not None:
        expect_shape(name, arr, shape, "as the other weights imply")
    return arr


def _sizes(p: Mapping, h_name: str, i_name: str) -> tuple[int, int]:
    """``(input_size, hidden_size)`` read off one input and one recurrent kernel."""
    k_h, k_i = _get(p, (h_name, "kernel")), _get(p, (i_name, "kernel"))
    if k_h.ndim != 2 or k_i.ndim != 2:
        raise ValueError(
            f"{h_name}/kernel and {i_name}/kernel must be 2-D, got shapes {tuple(k_h.shape)} and {tuple(k_i.shape)}"
        )
    return k_i.shape[0], k_h.shape[0]


def _read_split_lstm(p: Mapping) -> tuple[Cell, LSTMParams]:
    """linen ``LSTMCell``/``OptimizedLSTMCell`` and nnx ``LSTMCell``: one Dense a gate, bias on the ``h*`` ones."""
    f_name = "if" if "if" in p else "if_"  # nnx renames "if", a keyword
    D, H = _sizes(p, "hi", "ii")
    i_names = {g: f_name if g == "f" else "i" + g for g in _LSTM_GATES}
    w_x = np.concatenate([_get(p, (i_names[g], "kernel"), (D, H)) for g in _LSTM_GATES], -1)
    w_h = np.concatenate([_get(p, ("h" + g, "kernel"), (H, H)) for g in _LSTM_GATES], -1)
    b = np.concatenate([_get(p, ("h" + g, "bias"), (H,)) for g in _LSTM_GATES], -1)
    return lstm(H, param_dtype=w_x.dtype), LSTMParams(jnp.asarray(w_x), jnp.asarray(w_h), jnp.asarray(b))


def _read_split_gru(p: Mapping) -> tuple[Cell, GRUParams]:
    """linen ``GRUCell``: biases on the input Dense layers, and ``b_hn`` on ``hn``."""
    D, H = _sizes(p, "hr", "ir")
    w_x = np.concatenate([_get(p, ("i" + g, "kernel"), (D, H)) for g in _GRU_GATES], -1)
    b_x = np.concatenate([_get(p, ("i" + g, "bias"), (H,)) for g in _GRU_GATES], -1)
    w_h = np.concatenate([_get(p, ("h" + g, "kernel"), (H, H)) for g in _GRU_GATES], -1)
    b_hn = _get(p, ("hn", "bias"), (H,))
    b_h = np.concatenate([np.zeros(2 * H, b_hn.dtype), b_hn])
    return gru(H, param_dtype=w_x.dtype), GRUParams(*(jnp.asarray(a) for a in (w_x, w_h, b_x, b_h)))


def _read_simple(p: Mapping) -> tuple[Cell, RNNParams]:
    """linen ``SimpleCell``: ``i`` (with the bias) and ``h``."""
    D, H = _sizes(p, "h", "i")
    w_x = _get(p, ("i", "kernel"), (D, H))
    w_h, b = _get(p, ("h", "kernel"), (H, H)), _get(p, ("i", "bias"), (H,))
    return rnn(H, param_dtype=w_x.dtype), RNNParams(jnp.asarray(w_x), jnp.asarray(w_h), jnp.asarray(b))


def _read_fused(p: Mapping) -> tuple[Cell, PyTree]:
    """nnx ``OptimizedLSTMCell``, ``GRUCell`` and ``SimpleCell``: fused ``dense_i``/``dense_h``, told apart by width."""
    k_h, k_i = _get(p, ("dense_h", "kernel")), _get(p, ("dense_i", "kernel"))
    H = k_h.shape[0] if k_h.ndim == 2 else -1
    if k_h.ndim != 2 or k_h.shape[1] not in (H, 3 * H, 4 * H):
        raise ValueError(f"dense_h/kernel must have shape [h, h], [h, 3h] or [h, 4h], got shape {tuple(k_h.shape)}")
    G = k_h.shape[1]
    if k_i.ndim != 2:
        raise ValueError(f"dense_i/kernel must have shape (input_size, {G}), got shape {tuple(k_i.shape)}")
    expect_shape("dense_i/kernel", k_i, (k_i.shape[0], G), "as dense_h/kernel implies")
    if G == 4 * H:  # nnx.OptimizedLSTMCell: input has no bias, recurrent has
        b = _get(p, ("dense_h", "bias"), (G,))
        return lstm(H, param_dtype=k_i.dtype), LSTMParams(jnp.asarray(k_i), jnp.asarray(k_h), jnp.asarray(b))
    b_x = _get(p, ("dense_i", "bias"), (G,))
    if G == 3 * H:  # nnx.GRUCell: no recurrent bias
        params = GRUParams(jnp.asarray(k_i), jnp.asarray(k_h), jnp.asarray(b_x), jnp.zeros((G,), k_i.dtype))
        return gru(H, param_dtype=k_i.dtype), params
    return rnn(H, param_dtype=k_i.dtype), RNNParams(jnp.asarray(k_i), jnp.asarray(k_h), jnp.asarray(b_x))


def _layout(keys: set):
    """Which Flax cell the top-level keys are: ``(its name, all its keys, its reader)``, or None."""
    split_lstm = {"ii", "ig", "io", "hi", "hf", "hg", "ho"}
    split_gru = {"ir", "iz", "in", "hr", "hz", "hn"}
    fused = {"dense_i", "dense_h"}
    if split_lstm <= keys and keys & {"if", "if_"}:  # "if" in linen, "if_" in nnx
        return "LSTMCell", split_lstm | {"if", "if_"}, _read_split_lstm
    if split_gru <= keys:
        return "GRUCell", split_gru, _read_split_gru
    if {"i", "h"} <= keys and not keys & fused:
        return "SimpleCell", {"i", "h"}, _read_simple
    if fused <= keys:
        return "nnx OptimizedLSTMCell, GRUCell or SimpleCell", fused, _read_fused
    return None


def from_flax(variables) -> tuple[Cell, PyTree]:
    """Reads the params of a Flax RNN cell into a memcell cell and its params.

    Reads ``flax.linen`` ``LSTMCell``, ``OptimizedLSTMCell`` (same params), ``GRUCell`` and
    ``SimpleCell``, and ``flax.nnx`` ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell`` and
    ``SimpleCell`` (pass ``nnx.state(cell, nnx.Param)``); which one is told by the keys. The
    cells must use their default ``gate_fn`` (sigmoid) and ``activation_fn`` (tanh), which are
    not in the params.

    Args:
      variables: the cell's params, with or without the outer ``{"params": ...}``.

    Returns:
      ``(cell, params)``: ``memcell.lstm``, ``memcell.gru`` or ``memcell.rnn`` and
      ``LSTMParams``/``GRUParams``/``RNNParams``; ``cell.step(params, carry, x)`` equals the
      Flax cell's ``__call__`` (with the LSTM's carry ``(c, h)`` as ``LSTMCarry(h, c)``).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from memcell import convert
      >>> fcell = nn.OptimizedLSTMCell(4)
      >>> x = jnp.ones((2, 3))
      >>> variables = fcell.init(jax.random.key(0), fcell.initialize_carry(jax.random.key(1), x.shape), x)
      >>> cell, params = convert.from_flax(variables)
      >>> params.w_x.shape
      (3, 16)
    """
    # An nnx.State is a Mapping too; its Variables are unwrapped leaf by leaf in _get.
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables (flax params) must be a nested dict of arrays, got {type(variables).__name__}")
    p = variables["params"] if set(variables) == {"params"} else variables
    if not isinstance(p, Mapping):
        raise TypeError(f"variables['params'] must be a nested dict of arrays, got {type(p).__name__}")
    layout = _layout(set(p))
    if layout is not None:
        what, expected, read = layout
        extra = sorted(map(str, set(p) - expected))
        if extra:
            raise ValueError(f"variables have keys that are not weights of a flax {what}: {extra}")
        return read(p)
    raise ValueError(
        "variables (flax params) are not those of an LSTMCell, OptimizedLSTMCell, GRUCell or SimpleCell "
        f"(linen or nnx); top-level keys: {sorted(map(str, p))}"
    )


def _write_lstm(params: LSTMParams, H: int, api: str, optimized: bool) -> dict:
    w_x, w_h, b = np.array(params.w_x), np.array(params.w_h), np.array(params.b)
    if api == "nnx" and optimized:
        return {"dense_i": {"kernel": w_x}, "dense_h": {"kernel": w_h, "bias": b}}
    f_name = "if_" if api == "nnx" else "if"
    out = {}
    for k, g in enumerate(_LSTM_GATES):
        blk = slice(k * H, (k + 1) * H)
        out[f_name if g == "f" else "i" + g] = {"kernel": w_x[:, blk]}
        out["h" + g] = {"kernel": w_h[:, blk], "bias": b[blk]}
    return out


def _write_gru(params: GRUParams, H: int, api: str) -> dict:
    w_x, w_h, b_x, b_h = (np.array(a) for a in (params.w_x, params.w_h, params.b_x, params.b_h))
    # Only the sums b_xr + b_hr and b_xz + b_hz matter: Flax keeps them on the input Dense layers.
    b_in = b_x.copy()
    b_in[: 2 * H] += b_h[: 2 * H]
    if api == "nnx":
        if np.any(b_h[2 * H :]):
            raise ValueError(
                "nnx.GRUCell has no recurrent bias b_hn (inside r * (h U_n + b_hn)), but params.b_h[2h:] "
                f"is nonzero (max |b_hn| = {np.max(np.abs(b_h[2 * H:])):.3g}); use api='linen'"
            )
        return {"dense_i": {"kernel": w_x, "bias": b_in}, "dense_h": {"kernel": w_h}}
    out = {}
    for k, g in enumerate(_GRU_GATES):
        blk = slice(k * H, (k + 1) * H)
        out["i" + g] = {"kernel": w_x[:, blk], "bias": b_in[blk]}
        out["h" + g] = {"kernel": w_h[:, blk]}
    out["hn"]["bias"] = b_h[2 * H :].copy()
    return out


def _write_simple(params: RNNParams, api: str) -> dict:
    w_x, w_h, b = np.array(params.w_x), np.array(params.w_h), np.array(params.b)
    if api == "nnx":
        return {"dense_i": {"kernel": w_x, "bias": b}, "dense_h": {"kernel": w_h}}
    return {"i": {"kernel": w_x, "bias": b}, "h": {"kernel": w_h}}


def to_flax(cell: Cell, params, *, api: str = "linen", optimized: bool = False, check: bool = True) -> dict:
    """Writes a memcell cell's params as the params of the matching Flax cell.

    ``LSTMParams`` go to ``LSTMCell``/``OptimizedLSTMCell``, ``GRUParams`` to ``GRUCell``,
    ``RNNParams`` to ``SimpleCell``. Flax's LSTM has one bias (on the ``h*`` Dense layers),
    like memcell's; its GRU has ``b_hr`` and ``b_hz`` folded into the input biases (only
    their sums matter) and ``b_hn`` kept. ``nnx.GRUCell`` has no ``b_hn`` at all, so a nonzero
    one is an error there.

    Args:
      cell: the memcell ``Cell``; with ``check`` it is run on a probe input and compared with
        Flax's equations, so a cell that differs (``reset_after=False``, ``activation="relu"``,
        an LSTM variant) is refused rather than converted into wrong weights.
      params: its params.
      api: ``"linen"`` (``{"ii": {"kernel": ...}, ...}``, to be wrapped as
        ``{"params": ...}``) or ``"nnx"`` (a pure dict for ``nnx.update(cell, ...)``).
      optimized: with ``api="nnx"``, the layout of ``nnx.OptimizedLSTMCell`` (fused
        ``dense_i``/``dense_h``) instead of ``nnx.LSTMCell``. linen's two LSTM cells share one layout.
      check: run the probe.

    Returns:
      A nested dict of NumPy arrays.

    Example:
      >>> import jax, memcell
      >>> from memcell import convert
      >>> cell = memcell.gru(4)
      >>> flax_params = convert.to_flax(cell, cell.init(jax.random.key(0), 3))
      >>> sorted(flax_params), flax_params["hn"]["bias"].shape
      (['hn', 'hr', 'hz', 'in', 'ir', 'iz'], (4,))
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a memcell.Cell, got {type(cell).__name__}")
    if not isinstance(api, str) or api not in _FLAX_APIS:
        raise ValueError(f"api must be one of {list(_FLAX_APIS)}, got {api!r}")
    optimized, check = check_flag("optimized", optimized), check_flag("check", check)
    spec = infer_spec(params)  # checks the single cell's structure (no peepholes, 4/3/1 blocks)
    if isinstance(params, DirectionPair) or isinstance(params, tuple) and not hasattr(params, "_fields"):
        raise TypeError(f"params must be the params of one cell, got {type(params).__name__}")
    if spec.proj_size:
        raise ValueError(
            f"Flax's LSTM cells have no projection, but params.w_hr is set (an LSTM with "
            f"proj_size={spec.proj_size}); memcell.linen.LSTM and memcell.nnx.LSTM take proj_size"
        )
    if check:
        modes = ("rnn_tanh",) if spec.mode.startswith("rnn") else (spec.mode,)
        probe(as_layer(cell).apply, params, spec, modes)
    if spec.mode == "lstm":
        return _write_lstm(params, spec.hidden_size, api, optimized)
    if spec.mode == "gru":
        return _write_gru(params, spec.hidden_size, api)
    return _write_simple(params, api)
