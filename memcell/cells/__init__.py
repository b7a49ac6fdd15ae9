"""Cell factories and their params/carry NamedTuples."""

from memcell.cells.gru import GRUCarry, GRUParams, gru
from memcell.cells.lstm import LSTM_VARIANTS, LSTMCarry, LSTMNorm, LSTMParams, lstm
from memcell.cells.rnn import RNNCarry, RNNParams, rnn
from memcell.types import Cell

__all__ = [
    "Cell",
    "GRUCarry",
    "GRUParams",
    "LSTMCarry",
    "LSTMNorm",
    "LSTMParams",
    "LSTM_VARIANTS",
    "RNNCarry",
    "RNNParams",
    "gru",
    "lstm",
    "rnn",
]
