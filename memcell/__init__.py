"""memcell: recurrent cells as pure JAX functions.

A cell is three pure functions, ``Cell(init, initial_carry, step)``; ``unroll`` runs one over a
sequence with ``jax.lax.scan``; ``layer``, ``bidirectional`` and ``stack`` compose sequence layers.
"""

from memcell import convert, fused, jacobian
from memcell.cells import (
    LSTM_VARIANTS,
    GRUCarry,
    GRUParams,
    LSTMCarry,
    LSTMNorm,
    LSTMParams,
    RNNCarry,
    RNNParams,
    gru,
    lstm,
    rnn,
)
from memcell.scan import DirectionPair, bidirectional, layer, stack, unroll
from memcell.types import Cell, Layer

__version__ = "0.1.0"

__all__ = [
    "Cell",
    "DirectionPair",
    "GRUCarry",
    "GRUParams",
    "LSTMCarry",
    "LSTMNorm",
    "LSTMParams",
    "LSTM_VARIANTS",
    "Layer",
    "RNNCarry",
    "RNNParams",
    "bidirectional",
    "convert",
    "fused",
    "gru",
    "jacobian",
    "layer",
    "lstm",
    "rnn",
    "stack",
    "unroll",
]
