"""Cell factories and their params/carry NamedTuples."""

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
from memcell.cells.rnn import RNNCarry, RNNParams, RNNSpec, rnn
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
from memcell.types import Cell, CellSpec

__all__ = [
    "Cell",
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
]
