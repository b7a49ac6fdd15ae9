"""PyTorch's recurrent state (``h_0``/``h_n`` and the LSTM's ``c``) as the per-layer carries of a torch-like stack."""

import jax.numpy as jnp

from memcell.cells import GRUCarry, LSTMCarry, RNNCarry
from memcell.convert._arrays import check_flag, to_numpy
from memcell.convert._spec import check_mode, layers_of
from memcell.types import DirectionPair
from memcell.types import Array


def to_torch_carry(carries) -> Array | tuple[Array, Array]:
    """Final carries of a torch-like stack as PyTorch's ``h_n`` (GRU, RNN) or ``(h_n, c_n)`` (LSTM).

    Args:
      carries: what ``layer.apply`` returns first: a tuple with one entry per layer, each a
        carry or a ``DirectionPair`` of carries.

    Returns:
      ``h_n: [num_layers * num_directions, *b, H]`` (layer-major, forward before backward, as
      in PyTorch), and ``c_n`` alike for the LSTM (an LSTM with ``proj_size`` has ``h_n`` of
      ``proj_size`` units and ``c_n`` of ``H``, as in PyTorch).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from memcell import convert
      >>> layer = convert.torch_layer("lstm", 4, num_layers=2, bidirectional=True)
      >>> carries, _ = layer.apply(layer.init(jax.random.key(0), 3), jnp.ones((5, 6, 3)))
      >>> h_n, c_n = convert.to_torch_carry(carries)
      >>> h_n.shape
      (4, 5, 4)
    """
    flat = []
    for entry in layers_of(carries):
        flat.extend(entry if isinstance(entry, DirectionPair) else (entry,))
    kinds = {type(c) for c in flat}
    if not flat or len(kinds) != 1 or not kinds <= {LSTMCarry, GRUCarry, RNNCarry}:
        raise TypeError(
            "carries must be the per-layer carries of an LSTM, GRU or RNN stack (LSTMCarry, GRUCarry or "
            f"RNNCarry, or DirectionPairs of them), got {sorted(k.__name__ for k in kinds)}"
        )
    shapes = {tuple(jnp.shape(c.h)) for c in flat}
    if len(shapes) != 1:
        raise ValueError(f"carries must all have the same shape (one torch module's), got h shapes {sorted(shapes)}")
    h_n = jnp.stack([c.h for c in flat])
    if isinstance(flat[0], LSTMCarry):
        return h_n, jnp.stack([c.c for c in flat])
    return h_n


def from_torch_carry(hx, *, mode: str, bidirectional: bool = False) -> tuple:
    """PyTorch's initial state (``h_0`` or ``(h_0, c_0)``) as the ``carry`` of a torch-like stack.

    Args:
      hx: ``h_0: [num_layers * num_directions, *b, H]`` (GRU, RNN) or the pair ``(h_0, c_0)``
        (LSTM; ``h_0`` with ``proj_size`` units on its last axis for a projected LSTM), as
        passed to the torch module.
      mode: the module's mode.
      bidirectional: whether it is bidirectional.

    Returns:
      A tuple with one carry (or ``DirectionPair``) per layer, for ``layer.apply(params, xs, carry)``.

    Example:
      >>> import numpy as np
      >>> from memcell import convert
      >>> carry = convert.from_torch_carry(np.zeros((4, 2, 8), np.float32), mode="gru", bidirectional=True)
      >>> len(carry), carry[0].backward.h.shape
      (2, (2, 8))
    """
    check_mode(mode)
    bidirectional = check_flag("bidirectional", bidirectional)
    if mode == "lstm":
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(f"hx must be the pair (h_0, c_0) for mode='lstm', got {type(hx).__name__}")
        h0, c0 = (jnp.asarray(to_numpy(n, a)) for n, a in zip(("h_0", "c_0"), hx))
        # With proj_size, torch's h_0 has proj_size units and c_0 hidden_size (more): only the last axis may differ.
        if h0.ndim != c0.ndim or h0.shape[:-1] != c0.shape[:-1] or h0.shape[-1:] > c0.shape[-1:]:
            raise ValueError(
                f"h_0 and c_0 must have the same shape, or h_0 fewer units on the last axis (proj_size "
                f"< hidden_size with a projection), got {tuple(h0.shape)} and {tuple(c0.shape)}"
            )
    else:
        h0 = jnp.asarray(to_numpy("h_0", hx))
    if h0.ndim < 2 or h0.shape[0] < 1:
        raise ValueError(
            f"h_0 must have shape [num_layers * num_directions, *batch, hidden_size], got shape {tuple(h0.shape)}"
        )
    n_dirs = 2 if bidirectional else 1
    if h0.shape[0] % n_dirs:
        raise ValueError(f"h_0's first axis must be num_layers * {n_dirs}, got {h0.shape[0]}")
    if mode == "lstm":
        carries = [LSTMCarry(h=h0[k], c=c0[k]) for k in range(h0.shape[0])]
    else:
        make = GRUCarry if mode == "gru" else RNNCarry
        carries = [make(h0[k]) for k in range(h0.shape[0])]
    if bidirectional:
        return tuple(DirectionPair(carries[k], carries[k + 1]) for k in range(0, len(carries), 2))
    return tuple(carries)
