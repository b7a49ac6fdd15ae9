"""PyTorch ``nn.RNNCell``/``LSTMCell``/``GRUCell`` state_dicts both ways.

A torch cell's keys are a one-layer module's without the ``_l0`` suffix, so both directions go through the
module converters.
"""

from typing import Any, Mapping

import numpy as np

from memcell.convert._arrays import check_flag
from memcell.convert._from_torch import from_torch, select_prefix
from memcell.convert._spec import cell_for, check_mode
from memcell.convert._to_torch import to_torch
from memcell.types import DirectionPair
from memcell.scan import layer as as_layer
from memcell.types import Cell, PyTree

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
    check_mode(mode)
    sd = select_prefix(state_dict, prefix)
    if not sd:
        keys = sorted(map(str, state_dict))[:8]
        raise ValueError(f"state_dict has no keys under prefix {prefix!r}; its first keys: {keys}")
    unexpected = sorted(prefix + k for k in sd if k not in _CELL_KEYS)
    if unexpected:
        raise ValueError(
            f"state_dict has keys that are not weights of a torch {mode} cell: {unexpected} "
            f"(expected {list(_CELL_KEYS)}; for nn.LSTM/GRU/RNN modules use from_torch)"
        )
    # A cell's keys are a one-layer module's without the "_l0" suffix; errors name the cell's keys.
    try:
        _, params = from_torch({prefix + k + "_l0": v for k, v in sd.items()}, mode=mode, prefix=prefix)
    except ValueError as e:
        raise ValueError(str(e).replace("_l0", "")) from None
    return cell_for(mode, params[0].w_h.shape[0], params[0].w_h.dtype), params[0]


def to_torch_cell(cell: Cell, params, *, check: bool = True) -> dict[str, np.ndarray]:
    """Writes a memcell cell's params as a ``torch.nn.RNNCell``/``LSTMCell``/``GRUCell`` ``state_dict``.

    Args:
      cell: the memcell ``Cell``; with ``check`` it is probed as in ``torch_spec``, so a cell
        that computes something else (``reset_after=False``, ...) is refused.
      params: its params.
      check: run the probe.

    Returns:
      A dict of NumPy arrays with the keys ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``.

    Example:
      >>> import jax, memcell
      >>> from memcell import convert
      >>> cell = memcell.gru(4)
      >>> sd = convert.to_torch_cell(cell, cell.init(jax.random.key(0), 3))
      >>> sorted(sd), sd["weight_ih"].shape
      (['bias_hh', 'bias_ih', 'weight_hh', 'weight_ih'], (12, 3))
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a memcell.Cell, got {type(cell).__name__}")
    if isinstance(params, tuple) and not hasattr(params, "_fields") or isinstance(params, DirectionPair):
        raise TypeError(f"params must be the params of one cell, got {type(params).__name__}")
    check = check_flag("check", check)
    if getattr(params, "w_hr", None) is not None:
        raise ValueError(
            f"torch.nn.LSTMCell has no projection, but params.w_hr is set (shape {tuple(params.w_hr.shape)}, "
            f"an LSTM with proj_size); use to_torch for a torch.nn.LSTM(proj_size=...)"
        )
    sd = to_torch(as_layer(cell), params, check=check)
    return {k[: -len("_l0")]: v for k, v in sd.items()}
