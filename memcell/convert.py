"""Weights between memcell, PyTorch and Flax: plain arrays in, plain arrays out.

Neither PyTorch nor Flax is imported here: PyTorch ``state_dict()``s come in as mappings of arrays
(NumPy arrays, or CPU tensors, which NumPy reads), Flax params as nested dicts of arrays, and
what goes out is NumPy (to PyTorch and Flax) or JAX (to memcell).

Conventions, once:

- **Layout.** memcell stores weights input-major, ``z = x @ w_x``; PyTorch stores them
  output-major, ``z = x @ weight_ih.T``; Flax stores ``kernel`` input-major like memcell.
- **Gate order.** The LSTM's blocks are ``i, f, g, o`` in all three; the GRU's are ``r, z, n``.
- **Biases.** PyTorch has two biases, ``bias_ih`` and ``bias_hh``. The LSTM and the Elman RNN
  only ever use their sum, so memcell keeps one ``b = bias_ih + bias_hh``, and ``to_torch``
  writes ``b`` into ``bias_ih`` and zeros into ``bias_hh``: memcell -> torch -> memcell is exact.
  The GRU needs both, because ``b_hn`` sits inside ``r * (h U_n + b_hn)``; memcell's
  ``GRUParams`` keeps ``b_x`` and ``b_h`` as PyTorch does.
- **Structure.** ``from_torch`` returns a ``memcell.stack`` with one entry per torch layer,
  each a ``memcell.bidirectional`` layer (params ``DirectionPair``) where the module was
  bidirectional, else a plain cell.
"""

import re
import weakref
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from memcell.cells import GRUCarry, GRUParams, LSTMCarry, LSTMParams, RNNCarry, RNNParams, gru, lstm, rnn
from memcell.cells._common import check_positive_int
from memcell.scan import DirectionPair, stack
from memcell.scan import bidirectional as _bidirectional  # `bidirectional` is an argument name below
from memcell.types import Array, Cell, Layer, PyTree

__all__ = [
    "TORCH_MODES",
    "TorchSpec",
    "from_dict",
    "from_flax",
    "from_torch",
    "from_torch_carry",
    "from_torch_cell",
    "to_dict",
    "to_flax",
    "to_torch",
    "to_torch_carry",
    "to_torch_cell",
    "torch_layer",
    "torch_spec",
]

TORCH_MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")
_N_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
_TORCH_CLASS = {"lstm": "torch.nn.LSTM", "gru": "torch.nn.GRU", "rnn_tanh": "torch.nn.RNN", "rnn_relu": "torch.nn.RNN"}


class TorchSpec(NamedTuple):
    """What a ``torch.nn.RNN``/``LSTM``/``GRU`` module is, besides its weights.

    ``torch_kwargs()`` gives the constructor arguments, so
    ``torch.nn.LSTM(**spec.torch_kwargs(), batch_first=True)`` builds the module that
    ``to_torch``'s state_dict loads into.
    """

    mode: str  # one of TORCH_MODES
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    bias: bool = True

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
        return kw


# Layers built here know what torch module they mirror; a Layer is a NamedTuple of functions,
# so the spec is kept beside it, keyed (weakly) on its apply function.
_SPECS: "weakref.WeakKeyDictionary[Any, TorchSpec]" = weakref.WeakKeyDictionary()


def _check_mode(mode) -> str:
    if mode not in TORCH_MODES:
        raise ValueError(f"mode must be one of {list(TORCH_MODES)}, got {mode!r}")
    return mode


def _cell_for(mode: str, hidden_size: int, param_dtype) -> Cell:
    # PyTorch's init distribution, U(-1/sqrt(h), 1/sqrt(h)), for the kernels of fresh layers.
    kw = dict(kernel_init="uniform", recurrent_init="uniform", param_dtype=param_dtype)
    if mode == "lstm":
        return lstm(hidden_size, **kw)
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
    _check_mode(mode)
    hidden_size = check_positive_int("hidden_size", hidden_size)
    num_layers = check_positive_int("num_layers", num_layers)
    if not isinstance(bidirectional, (bool, np.bool_)):
        raise TypeError(f"bidirectional must be a bool, got {bidirectional!r}")
    cell = _cell_for(mode, hidden_size, param_dtype)
    entries = [_bidirectional_layer(cell) if bidirectional else cell for _ in range(num_layers)]
    lyr = stack(entries)
    # input_size is fixed by init; the spec keeps -1 until params say otherwise.
    _SPECS[lyr.apply] = TorchSpec(mode, -1, hidden_size, num_layers, bool(bidirectional))
    return lyr


def _bidirectional_layer(cell: Cell) -> Layer:
    return _bidirectional(cell, cell, merge="concat")


# ----------------------------------------------------------------------------- array helpers


def _np(name: str, value) -> np.ndarray:
    """A NumPy array from an array-like (NumPy, JAX, a CPU torch tensor), naming ``name`` on failure."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor: no import needed
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - re-raised with the key's name
        raise TypeError(f"{name} must be an array, got {type(value).__name__}") from e
    if not np.issubdtype(arr.dtype, np.floating) and arr.dtype.name != "bfloat16":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    return arr


def _expect_shape(name: str, arr: np.ndarray, shape: tuple, what: str) -> None:
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), got shape {tuple(arr.shape)}")


# ----------------------------------------------------------------------------- PyTorch

_TORCH_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


def _under_prefix(state_dict, prefix: str) -> dict:
    """The entries of a torch state_dict whose names start with ``prefix``, the prefix removed."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    return {k[len(prefix) :]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith(prefix)}


def from_torch(state_dict: Mapping[str, Any], *, mode: str, prefix: str = "") -> tuple[Layer, tuple]:
    """Reads a ``torch.nn.RNN``/``LSTM``/``GRU`` ``state_dict()`` into a memcell layer and its params.

    ``layer.apply(params, xs, lengths=lengths)`` on ``xs: [B, T, D]`` gives the outputs and
    final carries of the torch module called with ``batch_first=True`` (and, with lengths,
    on a ``pack_padded_sequence``, whose padded outputs are zeros as in memcell). The final
    carries are a tuple with one entry per layer; ``to_torch_carry`` turns them into
    PyTorch's ``h_n`` (and ``c_n``).

    Args:
      state_dict: a mapping from PyTorch's keys (``weight_ih_l0``, ``bias_hh_l1_reverse``,
        ...) to arrays: NumPy arrays or CPU tensors. A module built with ``bias=False``
        (no bias keys) gives zero biases.
      mode: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"`` (the ``nonlinearity`` of
        ``nn.RNN``, which its state_dict does not record).
      prefix: read only the keys under this prefix, e.g. ``"encoder.rnn."`` in a whole
        model's state_dict.

    Returns:
      ``(layer, params)``: a ``torch_layer`` and a tuple of per-layer params (``LSTMParams``,
      ``GRUParams``, ``RNNParams``, or ``DirectionPair``s of them), in the state_dict's dtype.

    Raises:
      ValueError: on a missing or unexpected key, a shape that does not fit, or an LSTM with
        ``proj_size > 0`` (memcell's LSTM has no projection).

    Example:
      >>> import numpy as np, jax.numpy as jnp
      >>> from memcell import convert
      >>> rng = np.random.default_rng(0)
      >>> sd = {"weight_ih_l0": rng.normal(size=(12, 3)), "weight_hh_l0": rng.normal(size=(12, 4)),
      ...       "bias_ih_l0": rng.normal(size=12), "bias_hh_l0": rng.normal(size=12)}
      >>> layer, params = convert.from_torch({k: v.astype(np.float32) for k, v in sd.items()}, mode="gru")
      >>> carries, ys = layer.apply(params, jnp.ones((2, 5, 3)))
      >>> ys.shape, carries[0].h.shape
      ((2, 5, 4), (2, 4))
    """
    _check_mode(mode)
    sd = _under_prefix(state_dict, prefix)
    if not sd:
        keys = sorted(map(str, state_dict))[:8]
        raise ValueError(f"state_dict has no keys under prefix {prefix!r}; its first keys: {keys}")
    found: dict[tuple[int, bool], dict[str, np.ndarray]] = {}
    unexpected = []
    for key, value in sd.items():
        m = _TORCH_KEY.match(key)
        if m is None:
            unexpected.append(prefix + key)
            continue
        kind, layer_idx, rev = m.group(1), int(m.group(2)), m.group(3) is not None
        if kind == "weight_hr":
            raise ValueError(
                f"{prefix + key}: torch.nn.LSTM with proj_size > 0 is not supported (memcell's LSTM has "
                f"no output projection); got a projection of shape {tuple(np.shape(value))}"
            )
        found.setdefault((layer_idx, rev), {})[kind] = _np(prefix + key, value)
    if unexpected:
        raise ValueError(
            f"state_dict has keys that are not weights of a torch {mode} module: {sorted(unexpected)} "
            f"(use prefix= to select one module of a larger model)"
        )
    num_layers = 1 + max(k[0] for k in found)
    is_bi = any(rev for _, rev in found)
    n_gates = _N_GATES[mode]
    # The hidden size is read off weight_hh_l0; everything else is checked against it.
    k0 = prefix + "weight_hh_l0"
    if (0, False) not in found or "weight_hh" not in found[(0, False)]:
        raise ValueError(f"state_dict is missing the key {k0!r} (present: {sorted(prefix + k for k in sd)})")
    w_hh0 = found[(0, False)]["weight_hh"]
    if w_hh0.ndim != 2 or w_hh0.shape[0] != n_gates * w_hh0.shape[1]:
        raise ValueError(
            f"{k0} must have shape [{n_gates} * hidden_size, hidden_size] for mode={mode!r}, "
            f"got shape {tuple(w_hh0.shape)}"
        )
    H = w_hh0.shape[1]
    G = n_gates * H
    with_bias = "bias_ih" in found[(0, False)] or "bias_hh" in found[(0, False)]
    dtype = w_hh0.dtype
    input_size = None
    params = []
    for li in range(num_layers):
        dirs = []
        for rev in (False, True) if is_bi else (False,):
            sfx = f"_l{li}" + ("_reverse" if rev else "")
            w = found.get((li, rev), {})
            d_in = ("input_size" if input_size is None else input_size) if li == 0 else H * (2 if is_bi else 1)
            shapes = {"weight_ih": (G, d_in), "weight_hh": (G, H), "bias_ih": (G,), "bias_hh": (G,)}
            for kind in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if with_bias else ()):
                if kind not in w:
                    have = sorted(prefix + k for k in sd)
                    raise ValueError(
                        f"state_dict is missing the key {prefix + kind + sfx!r} (expected shape "
                        f"{shapes[kind]} for a {mode} of hidden_size={H}); present: {have}"
                    )
            if not with_bias and {"bias_ih", "bias_hh"} & set(w):
                raise ValueError(
                    f"state_dict has {prefix}bias_ih{sfx} but no {prefix}bias_ih_l0: biases in some layers only"
                )
            w_ih = w["weight_ih"]
            d = w_ih.shape[1] if w_ih.ndim == 2 else -1
            if li == 0:
                input_size = input_size if input_size is not None else d
                d_expected = input_size
            else:
                d_expected = H * (2 if is_bi else 1)
            what = f"[{n_gates} * hidden_size, input features]"
            _expect_shape(prefix + "weight_ih" + sfx, w_ih, (G, d_expected), what)
            _expect_shape(prefix + "weight_hh" + sfx, w["weight_hh"], (G, H), f"[{n_gates} * hidden_size, hidden_size]")
            if with_bias:
                b_ih, b_hh = w["bias_ih"], w["bias_hh"]
                _expect_shape(prefix + "bias_ih" + sfx, b_ih, (G,), f"[{n_gates} * hidden_size]")
                _expect_shape(prefix + "bias_hh" + sfx, b_hh, (G,), f"[{n_gates} * hidden_size]")
            else:
                b_ih = b_hh = np.zeros((G,), dtype)
            w_x, w_h = jnp.asarray(w_ih.T.astype(dtype)), jnp.asarray(w["weight_hh"].T.astype(dtype))
            if mode == "gru":
                p = GRUParams(w_x, w_h, jnp.asarray(b_ih.astype(dtype)), jnp.asarray(b_hh.astype(dtype)))
            elif mode == "lstm":
                p = LSTMParams(w_x, w_h, jnp.asarray(b_ih.astype(dtype)) + jnp.asarray(b_hh.astype(dtype)))
            else:
                p = RNNParams(w_x, w_h, jnp.asarray(b_ih.astype(dtype)) + jnp.asarray(b_hh.astype(dtype)))
            dirs.append(p)
        params.append(DirectionPair(*dirs) if is_bi else dirs[0])
    lyr = torch_layer(mode, H, num_layers=num_layers, bidirectional=is_bi, param_dtype=dtype)
    _SPECS[lyr.apply] = TorchSpec(mode, int(input_size), H, num_layers, is_bi, bool(with_bias))
    return lyr, tuple(params)


def _layers_of(params) -> tuple:
    """Per-layer params: a stack's tuple, or a lone layer's params as a 1-tuple."""
    if isinstance(params, tuple) and not hasattr(params, "_fields"):
        return params
    return (params,)


def _infer_spec(params) -> TorchSpec:
    """The torch module the params' structure fits; ``rnn_tanh`` vs ``rnn_relu`` is left to the probe."""
    layers = _layers_of(params)
    if not layers:
        raise ValueError("params must hold at least one layer, got an empty tuple")
    is_bi = isinstance(layers[0], DirectionPair)
    mode = H = input_size = None
    for li, entry in enumerate(layers):
        if isinstance(entry, DirectionPair) != is_bi:
            raise ValueError(
                f"params[{li}] is {'not ' if is_bi else ''}a DirectionPair while params[0] "
                f"{'is' if is_bi else 'is not'}: torch modules are bidirectional in every layer or none"
            )
        for direction, p in zip(("forward", "backward"), entry) if is_bi else (("", entry),):
            where = f"params[{li}]" + (f".{direction}" if direction else "")
            if isinstance(p, LSTMParams):
                m = "lstm"
                if p.p_i is not None or p.p_f is not None or p.p_o is not None:
                    raise ValueError(f"{where}: an LSTM with peepholes has no torch.nn.LSTM equivalent")
                if p.norm is not None:
                    raise ValueError(f"{where}: a layer-normalised LSTM has no torch.nn.LSTM equivalent")
            elif isinstance(p, GRUParams):
                m = "gru"
            elif isinstance(p, RNNParams):
                m = "rnn_tanh"
            else:
                raise TypeError(
                    f"{where} must be LSTMParams, GRUParams or RNNParams (or DirectionPairs of them), "
                    f"got {type(p).__name__}"
                )
            h = p.w_h.shape[0]
            if p.w_h.shape != (h, _N_GATES[m] * h) or p.w_x.shape[1] != _N_GATES[m] * h:
                raise ValueError(
                    f"{where}: w_x and w_h must have {_N_GATES[m]} gate blocks of {h} units for torch's {m}, "
                    f"got shapes {tuple(p.w_x.shape)} and {tuple(p.w_h.shape)} (an LSTM variant without a "
                    f"gate has no torch equivalent)"
                )
            if mode is None:
                mode, H, input_size = m, h, p.w_x.shape[0]
            elif m != mode or h != H:
                raise ValueError(
                    f"{where} is a {m} of {h} units but params[0] is a {mode} of {H}: torch layers are all alike"
                )
            d_expected = input_size if li == 0 else H * (2 if is_bi else 1)
            if p.w_x.shape[0] != d_expected:
                raise ValueError(f"{where}.w_x must have {d_expected} input rows, got shape {tuple(p.w_x.shape)}")
    return TorchSpec(mode, int(input_size), int(H), len(layers), is_bi)


# NumPy (float64) reference of the equations torch, Flax and memcell share, used to probe a layer.
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _ref_step(mode: str, p, h, c, x):
    f64 = lambda a: np.asarray(a, np.float64)
    if mode == "lstm":
        z = x @ f64(p.w_x) + h @ f64(p.w_h) + f64(p.b)
        i, f, g, o = np.split(z, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        return _sigmoid(o) * np.tanh(c), c
    if mode == "gru":
        xr, xz, xn = np.split(x @ f64(p.w_x) + f64(p.b_x), 3, axis=-1)
        hr, hz, hn = np.split(h @ f64(p.w_h) + f64(p.b_h), 3, axis=-1)
        r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        return (1.0 - z) * n + z * h, c
    z = x @ f64(p.w_x) + h @ f64(p.w_h) + f64(p.b)
    return (np.tanh(z) if mode == "rnn_tanh" else np.maximum(z, 0.0)), c


def _ref_layer(mode: str, params, xs: np.ndarray) -> np.ndarray:
    """Outputs ``[B, T, H * dirs]`` of a torch-like stack, in float64."""
    ys = xs
    for entry in _layers_of(params):
        outs = []
        is_pair = isinstance(entry, DirectionPair)
        for direction, p in (("f", entry.forward), ("b", entry.backward)) if is_pair else (("f", entry),):
            H = p.w_h.shape[0]
            h = np.zeros(ys.shape[:-2] + (H,))
            c = np.zeros_like(h)
            steps = range(ys.shape[-2]) if direction == "f" else reversed(range(ys.shape[-2]))
            out = np.zeros(ys.shape[:-1] + (H,))
            for t in steps:
                h, c = _ref_step(mode, p, h, c, ys[..., t, :])
                out[..., t, :] = h
            outs.append(out)
        ys = np.concatenate(outs, axis=-1)
    return ys


def _probe_tolerance(params) -> float:
    dtypes = {np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)}
    return 5e-2 if min(dtypes) < 4 else 1e-4


def _probe(apply, params, spec: TorchSpec, modes) -> str:
    """Runs the layer on a fixed random input and returns the first mode whose equations it computes."""
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(2, 5, spec.input_size))
    dtype = jax.tree.leaves(params)[0].dtype
    # Full float32 matmuls (not TF32 on GPUs), so the tolerance below measures the equations only.
    with jax.default_matmul_precision("highest"):
        _, ys = apply(params, jnp.asarray(xs, dtype))
    ys = np.asarray(jnp.asarray(ys, jnp.float32), np.float64)
    tol = _probe_tolerance(params)
    errs = {}
    for mode in modes:
        ref = _ref_layer(mode, params, xs)
        if ys.shape == ref.shape:
            errs[mode] = float(np.max(np.abs(ys - ref)) / (1.0 + np.max(np.abs(ref))))
            if errs[mode] <= tol:
                return mode
        else:
            errs[mode] = f"output shape {ys.shape} instead of {ref.shape}"
    raise ValueError(
        f"the layer does not compute what {_TORCH_CLASS[modes[0]]} computes with these params "
        f"(relative error on a probe input: {errs}); layers that differ are e.g. a GRU with "
        f"reset_after=False, an LSTM without input/output activation, a bidirectional merge other "
        f"than 'concat', or a residual stack. Build the layer with memcell.convert.torch_layer."
    )


def torch_spec(layer: Layer, params, *, check: bool = True) -> TorchSpec:
    """The torch module that ``layer`` with ``params`` is: mode, sizes, layers, directions.

    A layer from ``torch_layer`` or ``from_torch`` carries its spec. For any other layer the
    structure is read off the params and, with ``check``, the layer is run on a probe input
    and compared with the torch equations in NumPy, so a layer that only looks alike (a GRU
    with ``reset_after=False``, a ``"sum"`` merge, an ``nn.RNN`` nonlinearity) is caught
    rather than converted into wrong weights. The probe also tells ``rnn_tanh`` from
    ``rnn_relu``.

    Args:
      layer: a memcell ``Layer`` (a stack, a bidirectional layer or ``memcell.layer(cell)``).
      params: its params.
      check: run the probe for layers not built by this module.

    Returns:
      A ``TorchSpec``.
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"layer must be a memcell.Layer, got {type(layer).__name__}")
    inferred = _infer_spec(params)
    known = _SPECS.get(layer.apply)
    if known is not None:
        describe = lambda s: (  # noqa: E731
            f"{s.num_layers} layer(s) of a {'bidirectional ' if s.bidirectional else ''}"
            f"{'rnn' if s.mode.startswith('rnn') else s.mode} with hidden_size={s.hidden_size}"
        )
        if describe(known) != describe(inferred):
            raise ValueError(
                f"params do not fit the layer: the layer is {describe(known)}, the params {describe(inferred)}"
            )
        return known._replace(input_size=inferred.input_size)
    if not check:
        if inferred.mode.startswith("rnn"):
            raise ValueError("an Elman RNN's nonlinearity is not in its params: use check=True to probe it")
        return inferred
    modes = ("rnn_tanh", "rnn_relu") if inferred.mode.startswith("rnn") else (inferred.mode,)
    return inferred._replace(mode=_probe(layer.apply, params, inferred, modes))


def to_torch(layer: Layer, params, *, check: bool = True) -> dict[str, np.ndarray]:
    """Writes a memcell layer's params as a ``torch.nn.RNN``/``LSTM``/``GRU`` ``state_dict``.

    The keys and their order are PyTorch's. The LSTM's and RNN's single bias goes into
    ``bias_ih`` with zeros in ``bias_hh`` (torch adds them), so ``from_torch`` reads back the
    same params exactly. ``torch_spec(layer, params)`` gives the module to load it into.

    Args:
      layer: a memcell ``Layer`` (from ``from_torch`` or ``torch_layer``, or any stack of
        plain LSTM/GRU/RNN cells, optionally ``memcell.bidirectional`` with ``"concat"``).
      params: its params.
      check: probe layers not built by this module (see ``torch_spec``).

    Returns:
      A dict of NumPy arrays; ``module.load_state_dict({k: torch.from_numpy(v) ...})`` loads it.

    Example:
      >>> import jax
      >>> from memcell import convert
      >>> layer = convert.torch_layer("lstm", 4, num_layers=2)
      >>> params = layer.init(jax.random.key(0), input_size=3)
      >>> sd = convert.to_torch(layer, params)
      >>> list(sd)[:4], sd["weight_ih_l0"].shape
      (['weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0'], (16, 3))
      >>> _, back = convert.from_torch(sd, mode="lstm")
      >>> bool((back[1].w_h == params[1].w_h).all())
      True
    """
    spec = torch_spec(layer, params, check=check)
    out: dict[str, np.ndarray] = {}
    for li, entry in enumerate(_layers_of(params)):
        for rev, p in enumerate(entry if spec.bidirectional else (entry,)):
            sfx = f"_l{li}" + ("_reverse" if rev else "")
            # Fresh, writable C-order copies: torch.from_numpy shares memory and warns on read-only arrays.
            out["weight_ih" + sfx] = np.array(np.asarray(p.w_x).T, order="C")
            out["weight_hh" + sfx] = np.array(np.asarray(p.w_h).T, order="C")
            if spec.mode == "gru":
                b_ih, b_hh = np.asarray(p.b_x), np.asarray(p.b_h)
            else:
                b_ih = np.asarray(p.b)
                b_hh = np.zeros_like(b_ih)
            if spec.bias:
                out["bias_ih" + sfx], out["bias_hh" + sfx] = np.array(b_ih), np.array(b_hh)
            elif np.any(b_ih) or np.any(b_hh):
                raise ValueError(
                    f"the layer came from a torch module with bias=False but params[{li}] has nonzero biases"
                )
    return out


_CELL_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def from_torch_cell(state_dict: Mapping[str, Any], *, mode: str, prefix: str = "") -> tuple[Cell, PyTree]:
    """Reads a ``torch.nn.RNNCell``/``LSTMCell``/``GRUCell`` ``state_dict()`` into a memcell cell.

    Args:
      state_dict: a mapping with the keys ``weight_ih``, ``weight_hh`` and (unless the cell
        was built with ``bias=False``) ``bias_ih``, ``bias_hh``.
      mode: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
      prefix: read only the keys under this prefix.

    Returns:
      ``(cell, params)``: ``cell.step(params, carry, x)`` equals the torch cell's call (its
      LSTM state ``(h, c)`` is memcell's ``LSTMCarry(h, c)``).

    Example:
      >>> import numpy as np
      >>> from memcell import convert
      >>> sd = {"weight_ih": np.ones((12, 3), np.float32), "weight_hh": np.ones((12, 4), np.float32)}
      >>> cell, params = convert.from_torch_cell(sd, mode="gru")   # torch.nn.GRUCell(3, 4, bias=False)
      >>> params.w_x.shape
      (3, 12)
    """
    _check_mode(mode)
    sd = _under_prefix(state_dict, prefix)
    unexpected = sorted(prefix + k for k in sd if k not in _CELL_KEYS)
    if unexpected:
        raise ValueError(
            f"state_dict has keys that are not weights of a torch {mode} cell: {unexpected} "
            f"(expected {list(_CELL_KEYS)}; for nn.LSTM/GRU/RNN modules use from_torch)"
        )
    # A cell's keys are a one-layer module's without the "_l0" suffix; errors name the cell's keys.
    try:
        lyr, params = from_torch({k + "_l0": v for k, v in sd.items()}, mode=mode, prefix="")
    except ValueError as e:
        raise ValueError(str(e).replace("_l0", "")) from None
    del lyr
    return _cell_for(mode, params[0].w_h.shape[0], params[0].w_h.dtype), params[0]


def to_torch_cell(cell: Cell, params, *, check: bool = True) -> dict[str, np.ndarray]:
    """Writes a memcell cell's params as a ``torch.nn.RNNCell``/``LSTMCell``/``GRUCell`` ``state_dict``.

    Args:
      cell: the memcell ``Cell``; with ``check`` it is probed as in ``torch_spec``, so a cell
        that computes something else (``reset_after=False``, ...) is refused.
      params: its params.
      check: run the probe.

    Returns:
      A dict of NumPy arrays with the keys ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a memcell.Cell, got {type(cell).__name__}")
    if isinstance(params, tuple) and not hasattr(params, "_fields") or isinstance(params, DirectionPair):
        raise TypeError(f"params must be the params of one cell, got {type(params).__name__}")
    from memcell.scan import layer as as_layer

    sd = to_torch(as_layer(cell), params, check=check)
    return {k[: -len("_l0")]: v for k, v in sd.items()}


def to_torch_carry(carries) -> Array | tuple[Array, Array]:
    """Final carries of a torch-like stack as PyTorch's ``h_n`` (GRU, RNN) or ``(h_n, c_n)`` (LSTM).

    Args:
      carries: what ``layer.apply`` returns first: a tuple with one entry per layer, each a
        carry or a ``DirectionPair`` of carries.

    Returns:
      ``h_n: [num_layers * num_directions, *b, H]`` (layer-major, forward before backward, as
      in PyTorch), and ``c_n`` alike for the LSTM.
    """
    flat = []
    for entry in _layers_of(carries):
        flat.extend(entry if isinstance(entry, DirectionPair) else (entry,))
    kinds = {type(c) for c in flat}
    if not flat or len(kinds) != 1 or not kinds <= {LSTMCarry, GRUCarry, RNNCarry}:
        raise TypeError(
            "carries must be the per-layer carries of an LSTM, GRU or RNN stack (LSTMCarry, GRUCarry or "
            f"RNNCarry, or DirectionPairs of them), got {sorted(k.__name__ for k in kinds)}"
        )
    h_n = jnp.stack([c.h for c in flat])
    if isinstance(flat[0], LSTMCarry):
        return h_n, jnp.stack([c.c for c in flat])
    return h_n


def from_torch_carry(hx, *, mode: str, bidirectional: bool = False) -> tuple:
    """PyTorch's initial state (``h_0`` or ``(h_0, c_0)``) as the ``carry`` of a torch-like stack.

    Args:
      hx: ``h_0: [num_layers * num_directions, *b, H]`` (GRU, RNN) or the pair ``(h_0, c_0)``
        (LSTM), as passed to the torch module.
      mode: the module's mode.
      bidirectional: whether it is bidirectional.

    Returns:
      A tuple with one carry (or ``DirectionPair``) per layer, for ``layer.apply(params, xs, carry)``.
    """
    _check_mode(mode)
    if mode == "lstm":
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(f"hx must be the pair (h_0, c_0) for mode='lstm', got {type(hx).__name__}")
        h0, c0 = (jnp.asarray(_np(n, a)) for n, a in zip(("h_0", "c_0"), hx))
        if h0.shape != c0.shape:
            raise ValueError(f"h_0 and c_0 must have the same shape, got {tuple(h0.shape)} and {tuple(c0.shape)}")
        carries = [LSTMCarry(h=h0[k], c=c0[k]) for k in range(h0.shape[0])]
    else:
        h0 = jnp.asarray(_np("h_0", hx))
        make = GRUCarry if mode == "gru" else RNNCarry
        carries = [make(h0[k]) for k in range(h0.shape[0])]
    n_dirs = 2 if bidirectional else 1
    if len(carries) % n_dirs:
        raise ValueError(f"h_0's first axis must be num_layers * {n_dirs}, got {len(carries)}")
    if bidirectional:
        return tuple(DirectionPair(carries[k], carries[k + 1]) for k in range(0, len(carries), 2))
    return tuple(carries)


# ----------------------------------------------------------------------------- Flax

_LSTM_GATES = ("i", "f", "g", "o")
_GRU_GATES = ("r", "z", "n")


def _get(tree: Mapping, path: tuple[str, ...], shape: tuple | None = None):
    node = tree
    for i, k in enumerate(path):
        if not isinstance(node, Mapping) or k not in node:
            have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise ValueError(f"flax params are missing the key {'/'.join(path[: i + 1])!r} (found {have})")
        node = node[k]
    name = "/".join(path)
    if hasattr(node, "get_value"):  # an nnx Variable left in the tree
        node = node.get_value()
    arr = _np(name, node)
    if shape is not None:
        _expect_shape(name, arr, shape, "as the other weights imply")
    return arr


def _unwrap_variables(variables) -> Mapping:
    # An nnx.State is a Mapping too; its Variables are unwrapped leaf by leaf in _get.
    if not isinstance(variables, Mapping):
        raise TypeError(f"flax params must be a nested dict of arrays, got {type(variables).__name__}")
    if set(variables) == {"params"}:
        variables = variables["params"]
    return variables


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
    p = _unwrap_variables(variables)
    keys = set(p)
    if {"ii", "ig", "io", "hi", "hf", "hg", "ho"} <= keys and ({"if"} <= keys or {"if_"} <= keys):
        f_name = "if" if "if" in keys else "if_"
        H = _get(p, ("hi", "kernel")).shape[0]
        D = _get(p, ("ii", "kernel")).shape[0]
        i_names = {g: f_name if g == "f" else "i" + g for g in _LSTM_GATES}
        w_x = np.concatenate([_get(p, (i_names[g], "kernel"), (D, H)) for g in _LSTM_GATES], -1)
        w_h = np.concatenate([_get(p, ("h" + g, "kernel"), (H, H)) for g in _LSTM_GATES], -1)
        b = np.concatenate([_get(p, ("h" + g, "bias"), (H,)) for g in _LSTM_GATES], -1)
        return lstm(H, param_dtype=w_x.dtype), LSTMParams(jnp.asarray(w_x), jnp.asarray(w_h), jnp.asarray(b))
    if {"ir", "iz", "in", "hr", "hz", "hn"} <= keys:
        H = _get(p, ("hr", "kernel")).shape[0]
        D = _get(p, ("ir", "kernel")).shape[0]
        w_x = np.concatenate([_get(p, ("i" + g, "kernel"), (D, H)) for g in _GRU_GATES], -1)
        b_x = np.concatenate([_get(p, ("i" + g, "bias"), (H,)) for g in _GRU_GATES], -1)
        w_h = np.concatenate([_get(p, ("h" + g, "kernel"), (H, H)) for g in _GRU_GATES], -1)
        b_hn = _get(p, ("hn", "bias"), (H,))
        b_h = np.concatenate([np.zeros(2 * H, b_hn.dtype), b_hn])
        params = GRUParams(*(jnp.asarray(a) for a in (w_x, w_h, b_x, b_h)))
        return gru(H, param_dtype=w_x.dtype), params
    if keys >= {"i", "h"} and not keys & {"dense_i", "dense_h"}:
        H = _get(p, ("h", "kernel")).shape[0]
        D = _get(p, ("i", "kernel")).shape[0]
        w_x = _get(p, ("i", "kernel"), (D, H))
        w_h, b = _get(p, ("h", "kernel"), (H, H)), _get(p, ("i", "bias"), (H,))
        params = RNNParams(jnp.asarray(w_x), jnp.asarray(w_h), jnp.asarray(b))
        return rnn(H, param_dtype=w_x.dtype), params
    if {"dense_i", "dense_h"} <= keys:
        k_h = _get(p, ("dense_h", "kernel"))
        H = k_h.shape[0]
        k_i = _get(p, ("dense_i", "kernel"))
        if k_h.ndim != 2 or k_h.shape[1] not in (H, 3 * H, 4 * H):
            raise ValueError(f"dense_h/kernel must have shape [h, h], [h, 3h] or [h, 4h], got shape {tuple(k_h.shape)}")
        G = k_h.shape[1]
        _expect_shape("dense_i/kernel", k_i, (k_i.shape[0], G), "as dense_h/kernel implies")
        if G == 4 * H:  # nnx.OptimizedLSTMCell: input has no bias, recurrent has
            b = _get(p, ("dense_h", "bias"), (G,))
            return lstm(H, param_dtype=k_i.dtype), LSTMParams(jnp.asarray(k_i), jnp.asarray(k_h), jnp.asarray(b))
        b_x = _get(p, ("dense_i", "bias"), (G,))
        if G == 3 * H:  # nnx.GRUCell: no recurrent bias
            params = GRUParams(jnp.asarray(k_i), jnp.asarray(k_h), jnp.asarray(b_x), jnp.zeros((G,), k_i.dtype))
            return gru(H, param_dtype=k_i.dtype), params
        return rnn(H, param_dtype=k_i.dtype), RNNParams(jnp.asarray(k_i), jnp.asarray(k_h), jnp.asarray(b_x))
    raise ValueError(
        "flax params are not those of an LSTMCell, OptimizedLSTMCell, GRUCell or SimpleCell "
        f"(linen or nnx); top-level keys: {sorted(keys)}"
    )


_FLAX_APIS = ("linen", "nnx")


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
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a memcell.Cell, got {type(cell).__name__}")
    if api not in _FLAX_APIS:
        raise ValueError(f"api must be one of {list(_FLAX_APIS)}, got {api!r}")
    spec = _infer_spec(params)  # checks the single cell's structure (no peepholes, 4/3/1 blocks)
    if isinstance(params, DirectionPair) or isinstance(params, tuple) and not hasattr(params, "_fields"):
        raise TypeError(f"params must be the params of one cell, got {type(params).__name__}")
    mode = spec.mode
    if check:
        from memcell.scan import layer as as_layer

        modes = ("rnn_tanh",) if mode.startswith("rnn") else (mode,)
        _probe(as_layer(cell).apply, params, spec, modes)
    H = spec.hidden_size
    a = lambda x: np.array(x)
    if mode == "lstm":
        w_x, w_h, b = a(params.w_x), a(params.w_h), a(params.b)
        if api == "nnx" and optimized:
            return {"dense_i": {"kernel": w_x}, "dense_h": {"kernel": w_h, "bias": b}}
        f_name = "if_" if api == "nnx" else "if"
        out = {}
        for k, g in enumerate(_LSTM_GATES):
            blk = slice(k * H, (k + 1) * H)
            out[f_name if g == "f" else "i" + g] = {"kernel": w_x[:, blk]}
            out["h" + g] = {"kernel": w_h[:, blk], "bias": b[blk]}
        return out
    if mode == "gru":
        w_x, w_h, b_x, b_h = a(params.w_x), a(params.w_h), a(params.b_x), a(params.b_h)
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
    w_x, w_h, b = a(params.w_x), a(params.w_h), a(params.b)
    if api == "nnx":
        return {"dense_i": {"kernel": w_x, "bias": b}, "dense_h": {"kernel": w_h}}
    return {"i": {"kernel": w_x, "bias": b}, "h": {"kernel": w_h}}


# ----------------------------------------------------------------------------- nested dicts


def to_dict(params) -> PyTree:
    """Params as nested dicts: each NamedTuple becomes a dict of its fields, ``None`` fields dropped.

    This is how the Flax wrappers store memcell params (Flax, Orbax and optax masks work on
    dicts); ``from_dict`` reverses it.
    """
    if hasattr(params, "_fields"):
        return {f: to_dict(v) for f, v in zip(params._fields, params) if v is not None}
    if isinstance(params, (tuple, list)):
        return {f"layer_{i}": to_dict(v) for i, v in enumerate(params)}
    if isinstance(params, Mapping):
        return {k: to_dict(v) for k, v in params.items()}
    return params


def from_dict(tree, template, *, path: str = "params") -> PyTree:
    """Rebuilds params shaped like ``template`` from the nested dicts of ``to_dict``.

    Args:
      tree: nested dicts of arrays.
      template: params of the right structure (e.g. ``jax.eval_shape(cell.init, key, d)``);
        leaf shapes, where it has them, are checked.
      path: the name used in error messages.

    Returns:
      The params, with ``tree``'s arrays as leaves.
    """
    if hasattr(template, "_fields"):
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
    if isinstance(template, (tuple, list)):
        tree = _as_mapping(tree, path)
        names = [f"layer_{i}" for i in range(len(template))]
        if set(tree) != set(names):
            raise ValueError(f"{path} must have the keys {names}, got {sorted(tree)}")
        return tuple(from_dict(tree[n], t, path=f"{path}/{n}") for n, t in zip(names, template))
    if isinstance(template, Mapping):
        tree = _as_mapping(tree, path)
        return {k: from_dict(tree[k], t, path=f"{path}/{k}") for k, t in template.items()}
    shape = getattr(template, "shape", None)
    if shape is not None and tuple(np.shape(tree)) != tuple(shape):
        raise ValueError(f"{path} must have shape {tuple(shape)}, got shape {tuple(np.shape(tree))}")
    return tree


def _as_mapping(tree, path: str) -> Mapping:
    if not isinstance(tree, Mapping):
        raise TypeError(f"{path} must be a dict, got {type(tree).__name__}")
    return tree
