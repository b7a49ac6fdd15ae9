"""What a ``torch.nn.RNN``/``LSTM``/``GRU`` module is besides its weights, and the memcell layer that mirrors it.

``TorchSpec`` names the module; ``torch_layer`` builds the memcell stack that computes what it
computes and remembers its spec; ``infer_spec`` reads the spec a layer's params imply.
"""

import weakref
from typing import Any, NamedTuple

import jax.numpy as jnp

from memcell import scan
from memcell._checks import check_float_dtype, check_positive_int
from memcell.cells import GRUParams, LSTMParams, RNNParams, gru, lstm, rnn
from memcell.convert._arrays import check_flag
from memcell.types import Cell, Layer

TORCH_MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")
N_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
TORCH_CLASS = {"lstm": "torch.nn.LSTM", "gru": "torch.nn.GRU", "rnn_tanh": "torch.nn.RNN", "rnn_relu": "torch.nn.RNN"}


class TorchSpec(NamedTuple):
    """What a ``torch.nn.RNN``/``LSTM``/``GRU`` module is, besides its weights.

    ``torch_kwargs()`` gives the constructor arguments, so
    ``torch.nn.LSTM(**spec.torch_kwargs(), batch_first=True)`` builds the module that
    ``to_torch``'s state_dict loads into.

    Example:
      >>> from memcell import convert
      >>> convert.TorchSpec("rnn_relu", 3, 8, 2, True).torch_kwargs()["nonlinearity"]
      'relu'
    """

    mode: str  # one of TORCH_MODES
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    bias: bool = True
    proj_size: int = 0  # torch.nn.LSTM's projection of h (0: none); memcell.lstm(..., proj_size=...)

    def torch_kwargs(self) -> dict:
        """Keyword arguments of the torch module's constructor (``batch_first`` is yours to add)."""
        kw = dict(
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            bias=self.bias,
        )
        if self.mode.startswith("rnn_"):
            kw["nonlinearity"] = self.mode[4:]
        if self.proj_size:  # only torch.nn.LSTM takes it
            kw["proj_size"] = self.proj_size
        return kw


# Layers built here know what torch module they mirror; a Layer is a NamedTuple of functions,
# so the spec is kept beside it, keyed (weakly) on its apply function.
_SPECS: "weakref.WeakKeyDictionary[Any, TorchSpec]" = weakref.WeakKeyDictionary()


def remember_spec(layer: Layer, spec: TorchSpec) -> None:
    _SPECS[layer.apply] = spec


def known_spec(layer: Layer) -> TorchSpec | None:
    """The spec of a layer built by ``torch_layer`` or ``from_torch``; None for any other layer."""
    return _SPECS.get(layer.apply)


def check_mode(mode) -> str:
    if not isinstance(mode, str) or mode not in TORCH_MODES:
        raise ValueError(f"mode must be one of {list(TORCH_MODES)}, got {mode!r}")
    return mode


def cell_for(mode: str, hidden_size: int, param_dtype, proj_size: int = 0) -> Cell:
    """The memcell cell of a torch mode (``proj_size``: the LSTM's projection, 0 for none)."""
    # PyTorch's init distribution, U(-1/sqrt(h), 1/sqrt(h)), for the kernels of fresh layers
    # (the LSTM's projection w_hr too: memcell draws it with recurrent_init).
    kw = dict(kernel_init="uniform", recurrent_init="uniform", param_dtype=param_dtype)
    if mode == "lstm":
        return lstm(hidden_size, proj_size=proj_size, **kw)
    if mode == "gru":
        return gru(hidden_size, reset_after=True, **kw)
    return rnn(hidden_size, activation=mode[4:], **kw)


def torch_layer(
    mode: str,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    param_dtype=jnp.float32,
    proj_size: int = 0,
) -> Layer:
    """The memcell ``Layer`` that computes what ``torch.nn.<mode>`` computes (``batch_first=True``).

    A ``memcell.stack`` of ``num_layers`` entries, each a cell or, with ``bidirectional``, a
    ``memcell.bidirectional`` pair whose outputs are concatenated (forward first), as PyTorch
    does. ``to_torch`` knows the structure of a layer built here without probing it. Fresh
    params use PyTorch's uniform kernel init; biases start as memcell's (zero, LSTM forget
    gate 1.0).

    Args:
      mode: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
      hidden_size: hidden units per direction.
      num_layers: stacked layers.
      bidirectional: two directions per layer.
      param_dtype: dtype of fresh params.
      proj_size: ``torch.nn.LSTM``'s ``proj_size`` (``mode="lstm"`` only): each layer's
        ``h`` and outputs are projected to this many units (``memcell.lstm(..., proj_size=...)``);
        0 (the default) for none.

    Returns:
      A ``Layer``; ``apply(params, xs, carry=None, *, lengths=None) -> (carries, ys)`` with
      ``carries`` a tuple with one entry per layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from memcell import convert
      >>> layer = convert.torch_layer("gru", 8, num_layers=2, bidirectional=True)
      >>> params = layer.init(jax.random.key(0), input_size=3)
      >>> carries, ys = layer.apply(params, jnp.ones((4, 5, 3)))
      >>> ys.shape
      (4, 5, 16)
    """
    check_mode(mode)
    hidden_size = check_positive_int("hidden_size", hidden_size)
    num_layers = check_positive_int("num_layers", num_layers)
    bidirectional = check_flag("bidirectional", bidirectional)
    param_dtype = check_float_dtype("param_dtype", param_dtype)
    proj_size = check_torch_proj_size(proj_size, mode, hidden_size)
    cell = cell_for(mode, hidden_size, param_dtype, proj_size)
    entries = [scan.bidirectional(cell, cell, merge="concat") if bidirectional else cell for _ in range(num_layers)]
    lyr = scan.stack(entries)
    # input_size is fixed by init; the spec keeps -1 until params say otherwise.
    remember_spec(lyr, TorchSpec(mode, -1, hidden_size, num_layers, bidirectional, proj_size=proj_size))
    return lyr


def check_torch_proj_size(proj_size, mode: str, hidden_size: int) -> int:
    """torch's rule: an int in ``[0, hidden_size)``, and only an LSTM has a projection."""
    if isinstance(proj_size, bool) or not isinstance(proj_size, int) or not 0 <= proj_size < hidden_size:
        raise ValueError(f"proj_size must be an int in [0, hidden_size={hidden_size}), got {proj_size!r}")
    if proj_size and mode != "lstm":
        raise ValueError(f"proj_size is only supported for mode='lstm' (as in torch), got mode={mode!r}")
    return proj_size


# ----------------------------------------------------------------------------- spec from params


def layers_of(params) -> tuple:
    """Per-layer params: a stack's tuple, or a lone layer's params as a 1-tuple."""
    if isinstance(params, tuple) and not hasattr(params, "_fields"):
        return params
    return (params,)


def _mode_of(where: str, p) -> tuple[str, int, int]:
    """``(mode, hidden_size, proj_size)`` of one cell's params (``rnn_tanh`` for any Elman RNN), refusing what torch lacks."""
    if isinstance(p, LSTMParams):
        if p.p_i is not None or p.p_f is not None or p.p_o is not None:
            raise ValueError(f"{where}: an LSTM with peepholes has no torch.nn.LSTM equivalent")
        if p.norm is not None:
            raise ValueError(f"{where}: a layer-normalised LSTM has no torch.nn.LSTM equivalent")
        m = "lstm"
    elif isinstance(p, GRUParams):
        m = "gru"
    elif isinstance(p, RNNParams):
        m = "rnn_tanh"
    else:
        raise TypeError(
            f"{where} must be LSTMParams, GRUParams or RNNParams (or DirectionPairs of them), got {type(p).__name__}"
        )
    for field in ("w_x", "w_h"):
        shape = getattr(getattr(p, field), "shape", None)
        if shape is None or len(shape) != 2:
            raise ValueError(f"{where}.{field} must be a 2-D array, got {getattr(p, field)!r:.80}")
    w_hr = getattr(p, "w_hr", None)  # the LSTM's projection [h, p]: then w_h reads p units
    if w_hr is not None and (len(getattr(w_hr, "shape", ())) != 2 or not 0 < w_hr.shape[1] < w_hr.shape[0]):
        raise ValueError(f"{where}.w_hr must have shape [hidden_size, proj_size < hidden_size], got {w_hr!r:.80}")
    h, proj = (p.w_h.shape[0], 0) if w_hr is None else w_hr.shape
    if p.w_h.shape != (proj or h, N_GATES[m] * h) or p.w_x.shape[1] != N_GATES[m] * h:
        raise ValueError(
            f"{where}: w_x and w_h must have {N_GATES[m]} gate blocks of {h} units for torch's {m}, "
            f"got shapes {tuple(p.w_x.shape)} and {tuple(p.w_h.shape)} (an LSTM variant without a "
            f"gate has no torch equivalent)"
        )
    return m, int(h), int(proj)


def infer_spec(params) -> TorchSpec:
    """The torch module the params' structure fits; ``rnn_tanh`` vs ``rnn_relu`` is left to the probe."""
    layers = layers_of(params)
    if not layers:
        raise ValueError("params must hold at least one layer, got an empty tuple")
    lone = layers[0] is params  # one layer's params, not a stack's tuple: errors say "params", not "params[0]"
    is_bi = isinstance(layers[0], scan.DirectionPair)
    mode = H = P = input_size = None
    for li, entry in enumerate(layers):
        if isinstance(entry, scan.DirectionPair) != is_bi:
            raise ValueError(
                f"params[{li}] is {'not ' if is_bi else ''}a DirectionPair while params[0] "
                f"{'is' if is_bi else 'is not'}: torch modules are bidirectional in every layer or none"
            )
        for direction, p in zip(("forward", "backward"), entry) if is_bi else (("", entry),):
            where = ("params" if lone else f"params[{li}]") + (f".{direction}" if direction else "")
            m, h, proj = _mode_of(where, p)
            if mode is None:
                mode, H, P, input_size = m, h, proj, p.w_x.shape[0]
            elif m != mode or h != H or proj != P:
                raise ValueError(
                    f"{where} is a {m} of {h} units{_projected(proj)} but params[0] is a {mode} of {H}"
                    f"{_projected(P)}: torch layers are all alike"
                )
            d_expected = input_size if li == 0 else (P or H) * (2 if is_bi else 1)
            if p.w_x.shape[0] != d_expected:
                raise ValueError(f"{where}.w_x must have {d_expected} input rows, got shape {tuple(p.w_x.shape)}")
    return TorchSpec(mode, int(input_size), int(H), len(layers), is_bi, proj_size=int(P))


def _projected(proj: int) -> str:
    return f" projected to {proj}" if proj else ""
