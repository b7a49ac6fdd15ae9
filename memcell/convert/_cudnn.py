"""memcell LSTM layers to and from cuDNN's flat weight array (the layout of ``jax.experimental.rnn``).

cuDNN's multi-layer LSTM is ``torch.nn.LSTM``'s (same equations, gate order ``i, f, g, o``, two
biases, bidirectional outputs concatenated forward first), so a layer is recognised as
``to_torch`` recognises it (``torch_spec``), and only the packing differs.
"""

import jax
import numpy as np
from jax.experimental import rnn as jax_rnn

from memcell import cudnn
from memcell._checks import check_positive_int
from memcell.convert._arrays import check_flag, to_numpy
from memcell.convert._spec import TorchSpec, layers_of, remember_spec, torch_layer
from memcell.convert._to_torch import torch_spec
from memcell.types import DirectionPair
from memcell.types import Array, Layer


def to_cudnn(layer: Layer, params, *, check: bool = True) -> Array:
    """Packs a memcell LSTM layer's params into cuDNN's flat weight array.

    The layout is ``jax.experimental.rnn``'s (see ``memcell.cudnn.pack``): every pseudo-layer's
    ``W_ih`` and ``W_hh`` (layer 0 forward, layer 0 backward, layer 1 forward, ...), then every
    pseudo-layer's ``b_ih`` and ``b_hh``. memcell's one bias goes into ``b_ih`` and zeros into
    ``b_hh`` (cuDNN adds them), so ``from_cudnn`` gives back the same params exactly.

    What is needed besides the weights: the number of layers, whether they are bidirectional
    and the sizes (read off the params: a ``LSTMParams``, a ``DirectionPair`` of them, or a
    stack's tuple of either), and that the layer computes cuDNN's equations, which params do
    not tell (an LSTM without input activation, a ``"sum"`` merge, a residual stack have the
    same params). A layer from ``from_cudnn``, ``from_torch`` or ``torch_layer`` is known; any
    other is run once on a probe input and compared with the equations (``check=True``).

    Args:
      layer: ``memcell.layer(memcell.lstm(h))``, ``memcell.bidirectional(...)`` of two default
        LSTMs with ``merge="concat"``, or a ``memcell.stack`` of either.
      params: its params.
      check: probe a layer not built by ``memcell.convert`` (see ``torch_spec``).

    Returns:
      A 1-D array (the params' dtype; cuDNN takes float32) of
      ``jax.experimental.rnn.get_num_params_in_lstm(input_size, hidden_size, num_layers,
      bidirectional)`` entries.

    Raises:
      ValueError: for a GRU or RNN, an LSTM with options cuDNN lacks (peepholes, layer norm,
        gate ablations, no input/output activation, a projection), or a layer that does not compute cuDNN's
        equations; TypeError for params that are not LSTM params.

    Example:
      >>> import jax, memcell
      >>> from memcell import convert
      >>> layer = memcell.bidirectional(memcell.lstm(4), memcell.lstm(4))   # probed once: no spec
      >>> params = layer.init(jax.random.key(0), input_size=3)
      >>> weights = convert.to_cudnn(layer, params)
      >>> weights.shape   # per direction 4h * (d + h) weights and two 4h biases
      (288,)
      >>> _, back = convert.from_cudnn(weights, 3, 4, num_layers=1, bidirectional=True)
      >>> bool((back[0].backward.w_h == params.backward.w_h).all())
      True
    """
    spec = torch_spec(layer, params, check=check)
    if spec.mode != "lstm":
        raise ValueError(f"to_cudnn packs LSTM layers only (cuDNN's LSTM in jax.experimental.rnn), got a {spec.mode}")
    if spec.proj_size:
        raise ValueError(
            f"to_cudnn: jax.experimental.rnn's LSTM has no projection, but the layer has proj_size={spec.proj_size} "
            f"(params with w_hr)"
        )
    entries = layers_of(params)
    return cudnn.pack([p for entry in entries for p in (entry if spec.bidirectional else (entry,))])


def from_cudnn(
    weights, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False
) -> tuple[Layer, tuple]:
    """Reads cuDNN's flat LSTM weights (``jax.experimental.rnn``'s layout) into a memcell layer and params.

    The sizes are not in the array, so they are arguments, as for ``jax.experimental.rnn.lstm``.
    The two biases of each gate are summed into memcell's one ``b``: ``from_cudnn(to_cudnn(...))``
    is exact, and ``to_cudnn(from_cudnn(w))`` is ``w`` exactly where ``w``'s ``b_hh`` are zero
    (as ``to_cudnn`` writes them), else ``w`` with each ``b_ih + b_hh`` in ``b_ih`` (the same LSTM).

    Args:
      weights: a 1-D floating array (JAX or NumPy) of
        ``jax.experimental.rnn.get_num_params_in_lstm(...)`` entries.
      input_size, hidden_size: features of the input and hidden units per direction.
      num_layers: stacked layers.
      bidirectional: two directions per layer (pseudo-layers forward, backward, in each layer).

    Returns:
      ``(layer, params)``: a ``memcell.stack`` of ``num_layers`` entries, each a default
      ``memcell.lstm`` or a ``"concat"`` ``memcell.bidirectional`` pair of them, and its params,
      a tuple of ``LSTMParams`` or ``DirectionPair``s of them, in the weights' dtype.
      ``layer.apply(params, xs, lengths=lengths)`` computes what ``jax.experimental.rnn.lstm``
      computes with zero initial carries.

    Raises:
      ValueError: weights of another size than the sizes imply (both are named), or not 1-D.
      TypeError: weights that are not a floating array.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.experimental import rnn
      >>> from memcell import convert
      >>> weights = rnn.init_lstm_weight(jax.random.key(0), 3, 4, num_layers=1, bidirectional=False)
      >>> layer, params = convert.from_cudnn(weights, 3, 4, num_layers=1, bidirectional=False)
      >>> params[0].w_x.shape, params[0].w_h.shape
      ((3, 16), (4, 16))
      >>> carries, ys = layer.apply(params, jnp.ones((2, 5, 3)))
      >>> ys.shape
      (2, 5, 4)
    """
    input_size = check_positive_int("input_size", input_size)
    hidden_size = check_positive_int("hidden_size", hidden_size)
    num_layers = check_positive_int("num_layers", num_layers)
    bidirectional = check_flag("bidirectional", bidirectional)
    arr = to_numpy("weights", weights)
    n = jax_rnn.get_num_params_in_lstm(input_size, hidden_size, num_layers, bidirectional)
    sizes = (f"input_size={input_size}, hidden_size={hidden_size}, num_layers={num_layers}, "
             f"bidirectional={bidirectional}")
    if arr.ndim != 1:
        raise ValueError(f"weights must be a 1-D array of {n} entries (cuDNN's flat layout for {sizes}), "
                         f"got shape {tuple(arr.shape)}")
    if arr.shape[0] != n:
        raise ValueError(f"weights must have {n} entries for {sizes} "
                         f"(jax.experimental.rnn.get_num_params_in_lstm), got {arr.shape[0]}")
    directions = cudnn.unpack(weights if isinstance(weights, jax.Array) else arr, input_size, hidden_size,
                              num_layers, bidirectional)
    if bidirectional:
        params = tuple(DirectionPair(directions[2 * i], directions[2 * i + 1]) for i in range(num_layers))
    else:
        params = tuple(directions)
    lyr = torch_layer("lstm", hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                      param_dtype=np.dtype(arr.dtype))
    remember_spec(lyr, TorchSpec("lstm", input_size, hidden_size, num_layers, bidirectional))
    return lyr, params
