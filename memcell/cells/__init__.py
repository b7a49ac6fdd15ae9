"""Cell factories, their params/carry NamedTuples and specs, and the one table of built-in cells (``CELLS``)."""

from memcell.cells.gru import GRUCarry, GRUParams, GRUSpec, gru
from memcell.cells.lru import LRUCarry, LRUParams, LRUSpec, lru
from memcell.cells.lstm import LSTM_VARIANTS, LSTMCarry, LSTMNorm, LSTMParams, LSTMSpec, lstm
from memcell.cells.minrnn import (
    MinGRUCarry,
    MinGRUParams,
    MinGRUSpec,
    MinLSTMCarry,
    MinLSTMParams,
    MinLSTMSpec,
    mingru,
    minlstm,
)
from memcell.cells.rglru import RGLRUCarry, RGLRUParams, RGLRUSpec, rglru
from memcell.cells.rnn import RNNCarry, RNNParams, RNNSpec, irnn, rnn
from memcell.cells.xlstm import (
    MLSTMCarry,
    MLSTMGates,
    MLSTMParams,
    MLSTMSpec,
    SLSTMCarry,
    SLSTMParams,
    SLSTMSpec,
    mlstm,
    slstm,
)
from memcell.cells.mamba import MambaCarry, MambaParams, MambaSpec, mamba
from memcell.cells.gated_deltanet import GatedDeltaNetCarry, GatedDeltaNetParams, GatedDeltaNetSpec, gated_deltanet
from memcell.cells._table import CELLS, Factory, factory_name, resolve
from memcell.types import Cell, CellSpec

__all__ = [
    "CELLS",
    "Cell",
    "Factory",
    "factory_name",
    "irnn",
    "resolve",
    "CellSpec",
    "GRUCarry",
    "GRUParams",
    "GRUSpec",
    "LSTMCarry",
    "LSTMNorm",
    "LSTMParams",
    "LSTMSpec",
    "LSTM_VARIANTS",
    "MLSTMCarry",
    "MLSTMGates",
    "MLSTMParams",
    "MLSTMSpec",
    "MinGRUCarry",
    "MinGRUParams",
    "MinGRUSpec",
    "MinLSTMCarry",
    "MinLSTMParams",
    "MinLSTMSpec",
    "RNNCarry",
    "RNNParams",
    "RNNSpec",
    "SLSTMCarry",
    "SLSTMParams",
    "SLSTMSpec",
    "LRUCarry",
    "LRUParams",
    "LRUSpec",
    "RGLRUCarry",
    "RGLRUParams",
    "RGLRUSpec",
    "gru",
    "lru",
    "rglru",
    "lstm",
    "mingru",
    "minlstm",
    "mlstm",
    "rnn",
    "slstm",
    "MambaCarry", "MambaParams", "MambaSpec", "mamba",
    "GatedDeltaNetCarry", "GatedDeltaNetParams", "GatedDeltaNetSpec", "gated_deltanet",
]
