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

One concern a module: ``_spec`` (what a torch module is, ``torch_layer``), ``_from_torch``
(key parsing, size inference, param building), ``_to_torch``, ``_torch_cells``,
``_torch_carry``, ``_cudnn`` (cuDNN's flat LSTM weights), ``_flax_params``, ``_dicts`` (nested
dicts for the Flax wrappers) and ``_probe`` (checking a layer against a NumPy reference of the equations).
"""

from memcell.convert._cudnn import from_cudnn, to_cudnn
from memcell.convert._dicts import from_dict, to_dict
from memcell.convert._flax_params import from_flax, to_flax
from memcell.convert._from_torch import from_torch
from memcell.convert._spec import TORCH_MODES, TorchSpec, torch_layer
from memcell.convert._to_torch import to_torch, torch_spec
from memcell.convert._torch_carry import from_torch_carry, to_torch_carry
from memcell.convert._torch_cells import from_torch_cell, to_torch_cell

__all__ = [
    "TORCH_MODES",
    "TorchSpec",
    "from_cudnn",
    "from_dict",
    "from_flax",
    "from_torch",
    "from_torch_carry",
    "from_torch_cell",
    "to_cudnn",
    "to_dict",
    "to_flax",
    "to_torch",
    "to_torch_carry",
    "to_torch_cell",
    "torch_layer",
    "torch_spec",
]
