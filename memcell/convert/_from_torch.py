"""PyTorch ``nn.RNN``/``LSTM``/``GRU`` state_dicts into memcell: parse the keys, infer the sizes, build the params.

Each stage checks what it reads and names the key: a key that is not a weight, a missing
key, a shape that does not fit the sizes read off ``weight_hh_l0`` and ``weight_ih_l0``.
"""

import re
from typing import Any, Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np

from memcell.cells import GRUParams, LSTMParams, RNNParams
from memcell.convert._arrays import check_mapping, check_str, expect_shape, to_numpy
from memcell.convert._spec import N_GATES, TorchSpec, check_mode, remember_spec, torch_layer
from memcell.types import DirectionPair
from memcell.types import Layer

_TORCH_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")

# {(layer index, reverse?): {"weight_ih" | "weight_hh" | "bias_ih" | "bias_hh" | "weight_hr": array}}
Weights = dict[tuple[int, bool], dict[str, np.ndarray]]


class _Sizes(NamedTuple):
    """What a torch module's keys and shapes say about it."""

    num_layers: int
    bidirectional: bool
    hidden_size: int
    input_size: int
    bias: bool
    dtype: np.dtype
    proj_size: int = 0  # torch.nn.LSTM's projection (weight_hr_l*), 0 for none


def select_prefix(state_dict, prefix: str) -> dict:
    """The entries of a torch state_dict whose names start with ``prefix``, the prefix removed."""
    check_mapping("state_dict", state_dict, "a mapping of names to arrays")
    check_str("prefix", prefix)
    bad = [k for k in state_dict if not isinstance(k, str)]
    if bad:
        k = bad[0]
        raise TypeError(f"state_dict keys must be str (torch parameter names), got {k!r} ({type(k).__name__})")
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def parse_keys(sd: Mapping[str, Any], *, mode: str, prefix: str) -> Weights:
    """Groups a torch module's weights by (layer, direction); refuses keys that are not its weights."""
    found: Weights = {}
    unexpected = []
    for key, value in sd.items():
        m = _TORCH_KEY.match(key)
        if m is None:
            unexpected.append(prefix + key)
            continue
        kind, layer_idx, rev = m.group(1), int(m.group(2)), m.group(3) is not None
        if kind == "weight_hr" and mode != "lstm":  # only torch.nn.LSTM has a projection (proj_size)
            unexpected.append(prefix + key)
            continue
        found.setdefault((layer_idx, rev), {})[kind] = to_numpy(prefix + key, value)
    if unexpected:
        raise ValueError(
            f"state_dict has keys that are not weights of a torch {mode} module: {sorted(unexpected)} "
            f"(use prefix= to select one module of a larger model)"
        )
    return found


def _missing(key: str, expected: tuple, mode: str, hidden_size, present) -> ValueError:
    return ValueError(
        f"state_dict is missing the key {key!r} (expected shape {expected} for a {mode} of "
        f"hidden_size={hidden_size}); present: {sorted(present)}"
    )


def infer_sizes(found: Weights, *, mode: str, prefix: str, present) -> _Sizes:
    """Layers and directions from the keys, the hidden size from ``weight_hh_l0`` (and the LSTM's
    ``proj_size`` from ``weight_hr_l0``), the input size from ``weight_ih_l0``.

    Everything else is checked against these (``check_direction``).
    """
    n_gates = N_GATES[mode]
    k0 = prefix + "weight_hh_l0"
    first = found.get((0, False), {})
    if "weight_hh" not in first:
        raise ValueError(f"state_dict is missing the key {k0!r} (present: {sorted(present)})")
    w_hh0 = first["weight_hh"]
    P = _proj_size(found, w_hh0, prefix)
    # With a projection, weight_hh reads the p projected units: [4h, p]; else it is [g * h, h].
    fits = w_hh0.ndim == 2 and w_hh0.shape[1] >= 1 and w_hh0.shape[0] >= n_gates and not w_hh0.shape[0] % n_gates
    if not fits or (not P and w_hh0.shape[0] != n_gates * w_hh0.shape[1]):
        raise ValueError(
            f"{k0} must have shape [{n_gates} * hidden_size, {'proj_size' if P else 'hidden_size'}] "
            f"for mode={mode!r}, got shape {tuple(w_hh0.shape)}"
        )
    H = w_hh0.shape[0] // n_gates if P else w_hh0.shape[1]
    if P:
        expect_shape(prefix + "weight_hr_l0", first["weight_hr"], (P, H), "[proj_size, hidden_size]")
        if not P < H:
            raise ValueError(f"{prefix}weight_hr_l0 must project to fewer units than hidden_size={H} "
                             f"(torch's proj_size < hidden_size), got shape {tuple(first['weight_hr'].shape)}")
    if "weight_ih" not in first:
        raise _missing(prefix + "weight_ih_l0", (n_gates * H, "input_size"), mode, H, present)
    w_ih0 = first["weight_ih"]
    if w_ih0.ndim != 2 or w_ih0.shape[1] < 1:
        raise ValueError(
            f"{prefix}weight_ih_l0 must have shape [{n_gates} * hidden_size, input features] = "
            f"({n_gates * H}, input_size), got shape {tuple(w_ih0.shape)}"
        )
    return _Sizes(
        num_layers=1 + max(k[0] for k in found),
        bidirectional=any(rev for _, rev in found),
        hidden_size=H,
        input_size=w_ih0.shape[1],
        bias="bias_ih" in first or "bias_hh" in first,
        dtype=w_hh0.dtype,
        proj_size=P,
    )


def _proj_size(found: Weights, w_hh0: np.ndarray, prefix: str) -> int:
    """The LSTM's ``proj_size``: ``weight_hh_l0``'s columns when there is a ``weight_hr_l0``, else 0."""
    has = sorted(f"{prefix}weight_hr_l{li}{'_reverse' if rev else ''}" for (li, rev), w in found.items() if "weight_hr" in w)
    if not has:
        return 0
    if "weight_hr" not in found.get((0, False), {}):
        raise ValueError(f"state_dict has {has[0]} but no {prefix}weight_hr_l0: a projection in some layers only")
    return int(w_hh0.shape[1]) if w_hh0.ndim == 2 else 0


def check_direction(w: dict, sfx: str, layer_idx: int, sizes: _Sizes, *, mode: str, prefix: str, present) -> None:
    """Refuses a missing key or a shape that does not fit ``sizes`` in one direction of one layer."""
    n_gates, H, P = N_GATES[mode], sizes.hidden_size, sizes.proj_size
    G = n_gates * H
    d_in = sizes.input_size if layer_idx == 0 else (P or H) * (2 if sizes.bidirectional else 1)
    shapes = {"weight_ih": (G, d_in), "weight_hh": (G, P or H), "bias_ih": (G,), "bias_hh": (G,), "weight_hr": (P, H)}
    kinds = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if sizes.bias else ()) + (("weight_hr",) if P else ())
    for kind in kinds:
        if kind not in w:
            raise _missing(prefix + kind + sfx, shapes[kind], mode, H, present)
    if not sizes.bias and {"bias_ih", "bias_hh"} & set(w):
        raise ValueError(f"state_dict has {prefix}bias_ih{sfx} but no {prefix}bias_ih_l0: biases in some layers only")
    what = {
        "weight_ih": f"[{n_gates} * hidden_size, input features]",
        "weight_hh": f"[{n_gates} * hidden_size, {'proj_size' if P else 'hidden_size'}]",
        "bias_ih": f"[{n_gates} * hidden_size]",
        "bias_hh": f"[{n_gates} * hidden_size]",
        "weight_hr": "[proj_size, hidden_size]",
    }
    for kind in shapes:
        if kind in w:
            expect_shape(prefix + kind + sfx, w[kind], shapes[kind], what[kind])


def build_params(w: dict, sizes: _Sizes, mode: str):
    """memcell params of one direction of one layer: weights transposed to input-major, biases as memcell keeps them."""
    G = N_GATES[mode] * sizes.hidden_size
    as_jnp = lambda a: jnp.asarray(a.astype(sizes.dtype))  # noqa: E731
    zeros = np.zeros((G,), sizes.dtype)
    w_x, w_h = as_jnp(w["weight_ih"].T), as_jnp(w["weight_hh"].T)
    b_ih, b_hh = as_jnp(w.get("bias_ih", zeros)), as_jnp(w.get("bias_hh", zeros))
    if mode == "gru":
        return GRUParams(w_x, w_h, b_ih, b_hh)
    if mode == "lstm":  # torch adds its two biases; memcell keeps their sum
        w_hr = as_jnp(w["weight_hr"].T) if sizes.proj_size else None  # torch's [p, h], memcell's [h, p]
        return LSTMParams(w_x, w_h, b_ih + b_hh, w_hr=w_hr)
    return RNNParams(w_x, w_h, b_ih + b_hh)


def from_torch(state_dict: Mapping[str, Any], *, mode: str, prefix: str = "") -> tuple[Layer, tuple]:
    """Reads a ``torch.nn.RNN``/``LSTM``/``GRU`` ``state_dict()`` into a memcell layer and its params.

    ``layer.apply(params, xs, lengths=lengths)`` on ``xs: [B, T, D]`` gives the outputs and
    final carries of the torch module called with ``batch_first=True`` (and, with lengths,
    on a ``pack_padded_sequence``, whose padded outputs are zeros as in memcell). The final
    carries are a tuple with one entry per layer; ``to_torch_carry`` turns them into
    PyTorch's ``h_n`` (and ``c_n``). An LSTM built with ``proj_size`` (keys ``weight_hr_l*``)
    becomes a stack of ``memcell.lstm(hidden_size, proj_size=...)`` cells: outputs and
    ``h`` of ``proj_size`` units, ``c`` of ``hidden_size``, as in torch.

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
      ValueError: on a missing or unexpected key, or a shape that does not fit.
      TypeError: on a state_dict that is not a mapping of str to floating arrays.

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
    check_mode(mode)
    sd = select_prefix(state_dict, prefix)
    if not sd:
        keys = sorted(map(str, state_dict))[:8]
        raise ValueError(f"state_dict has no keys under prefix {prefix!r}; its first keys: {keys}")
    present = [prefix + k for k in sd]
    found = parse_keys(sd, mode=mode, prefix=prefix)
    sizes = infer_sizes(found, mode=mode, prefix=prefix, present=present)
    params = []
    for li in range(sizes.num_layers):
        dirs = []
        for rev in (False, True) if sizes.bidirectional else (False,):
            sfx = f"_l{li}" + ("_reverse" if rev else "")
            w = found.get((li, rev), {})
            check_direction(w, sfx, li, sizes, mode=mode, prefix=prefix, present=present)
            dirs.append(build_params(w, sizes, mode))
        params.append(DirectionPair(*dirs) if sizes.bidirectional else dirs[0])
    H, L, bi, P = sizes.hidden_size, sizes.num_layers, sizes.bidirectional, sizes.proj_size
    lyr = torch_layer(mode, H, num_layers=L, bidirectional=bi, param_dtype=sizes.dtype, proj_size=P)
    remember_spec(lyr, TorchSpec(mode, int(sizes.input_size), H, L, bi, bool(sizes.bias), proj_size=P))
    return lyr, tuple(params)
