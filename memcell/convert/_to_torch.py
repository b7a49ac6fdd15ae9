"""memcell layers into PyTorch ``nn.RNN``/``LSTM``/``GRU`` state_dicts, after telling which module they are."""

import numpy as np

from memcell.convert._arrays import check_flag
from memcell.convert._probe import probe
from memcell.convert._spec import TorchSpec, infer_spec, known_spec, layers_of
from memcell.types import Layer


def _describe(s: TorchSpec) -> str:
    return (
        f"{s.num_layers} layer(s) of a {'bidirectional ' if s.bidirectional else ''}"
        f"{'rnn' if s.mode.startswith('rnn') else s.mode} with hidden_size={s.hidden_size}"
        + (f" and proj_size={s.proj_size}" if s.proj_size else "")
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

    Example:
      >>> import jax, memcell
      >>> from memcell import convert
      >>> cell = memcell.rnn(4, activation="relu")
      >>> convert.torch_spec(memcell.layer(cell), cell.init(jax.random.key(0), 3))
      TorchSpec(mode='rnn_relu', input_size=3, hidden_size=4, num_layers=1, bidirectional=False, bias=True, proj_size=0)
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"layer must be a memcell.Layer, got {type(layer).__name__}")
    check = check_flag("check", check)
    inferred = infer_spec(params)
    known = known_spec(layer)
    if known is not None:
        if _describe(known) != _describe(inferred):
            raise ValueError(
                f"params do not fit the layer: the layer is {_describe(known)}, the params {_describe(inferred)}"
            )
        return known._replace(input_size=inferred.input_size)
    if not check:
        if inferred.mode.startswith("rnn"):
            raise ValueError("an Elman RNN's nonlinearity is not in its params: use check=True to probe it")
        return inferred
    modes = ("rnn_tanh", "rnn_relu") if inferred.mode.startswith("rnn") else (inferred.mode,)
    return inferred._replace(mode=probe(layer.apply, params, inferred, modes))


def _direction_weights(p, spec: TorchSpec, sfx: str, where: str) -> dict[str, np.ndarray]:
    """One direction of one layer in torch's keys and layout."""
    # Fresh, writable C-order copies: torch.from_numpy shares memory and warns on read-only arrays.
    out = {
        "weight_ih" + sfx: np.array(np.asarray(p.w_x).T, order="C"),
        "weight_hh" + sfx: np.array(np.asarray(p.w_h).T, order="C"),
    }
    if spec.mode == "gru":
        b_ih, b_hh = np.asarray(p.b_x), np.asarray(p.b_h)
    else:  # one bias in memcell: all of it in bias_ih, zeros in bias_hh (torch adds them)
        b_ih = np.asarray(p.b)
        b_hh = np.zeros_like(b_ih)
    if spec.bias:
        out["bias_ih" + sfx], out["bias_hh" + sfx] = np.array(b_ih), np.array(b_hh)
    elif np.any(b_ih) or np.any(b_hh):
        raise ValueError(f"the layer came from a torch module with bias=False but {where} has nonzero biases")
    if spec.proj_size:  # torch's h = weight_hr @ (o * tanh(c)); memcell's h = (o * tanh(c)) @ w_hr
        out["weight_hr" + sfx] = np.array(np.asarray(p.w_hr).T, order="C")
    return out


def to_torch(layer: Layer, params, *, check: bool = True) -> dict[str, np.ndarray]:
    """Writes a memcell layer's params as a ``torch.nn.RNN``/``LSTM``/``GRU`` ``state_dict``.

    The keys and their order are PyTorch's; an LSTM with ``proj_size`` gets ``weight_hr_l{k}``
    as ``torch.nn.LSTM(proj_size=...)`` has it. The LSTM's and RNN's single bias goes into
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
    for li, entry in enumerate(layers_of(params)):
        for rev, p in enumerate(entry if spec.bidirectional else (entry,)):
            sfx = f"_l{li}" + ("_reverse" if rev else "")
            out.update(_direction_weights(p, spec, sfx, f"params[{li}]"))
    return out
