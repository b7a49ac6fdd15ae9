"""memcell: recurrent cells as pure JAX functions.

A cell is three pure functions, ``Cell(init, initial_carry, step)``; ``unroll`` runs one over a
sequence with ``jax.lax.scan``; ``layer``, ``bidirectional`` and ``stack`` compose sequence layers.
"""

from memcell.cells import (
    LSTM_VARIANTS,
    GRUCarry,
    GRUParams,
    GRUSpec,
    LSTMCarry,
    LSTMNorm,
    LSTMParams,
    LSTMSpec,
    MLSTMCarry,
    MLSTMGates,
    MLSTMParams,
    MLSTMSpec,
    MinGRUCarry,
    MinGRUParams,
    MinGRUSpec,
    MinLSTMCarry,
    MinLSTMParams,
    MinLSTMSpec,
    RNNCarry,
    RNNParams,
    RNNSpec,
    SLSTMCarry,
    SLSTMParams,
    SLSTMSpec,
    gru,
    lstm,
    mingru,
    minlstm,
    mlstm,
    rnn,
    slstm,
)
from memcell.cells import GatedDeltaNetCarry, GatedDeltaNetParams, GatedDeltaNetSpec, MambaCarry, MambaParams, MambaSpec, gated_deltanet, mamba
from memcell.cells import LRUCarry, LRUParams, LRUSpec, RGLRUCarry, RGLRUParams, RGLRUSpec, lru, rglru
from memcell.scan import DirectionPair, bidirectional, layer, stack, unroll
from memcell.streaming import Stream, stream
from memcell.types import BACKENDS, Backend, Cell, CellSpec, Layer, LinearSpec

# Modules that build on the core, reached as memcell.jacobian.*, memcell.train.* and so on.
# The Flax wrappers (memcell.linen, memcell.nnx) are imported explicitly, so that
# `import memcell` does not import flax.
from memcell import convert, cudnn, fused, jacobian, parallel, regularize, tasks, train  # noqa: E402  (after the core)
from memcell import export  # noqa: E402  (after tasks, which it reads; onnx and jax2onnx load lazily)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "Backend",
    "Cell",
    "CellSpec",
    "DirectionPair",
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
    "Layer",
    "LinearSpec",
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
    "Stream",
    "bidirectional",
    "convert",
    "cudnn",
    "export",
    "fused",
    "gru",
    "jacobian",
    "layer",
    "lstm",
    "mingru",
    "minlstm",
    "mlstm",
    "parallel",
    "regularize",
    "rnn",
    "slstm",
    "stack",
    "stream",
    "tasks",
    "train",
    "unroll",
    "LRUCarry",
    "LRUParams",
    "LRUSpec",
    "RGLRUCarry",
    "RGLRUParams",
    "RGLRUSpec",
    "lru",
    "rglru",
    "GatedDeltaNetCarry", "GatedDeltaNetParams", "GatedDeltaNetSpec", "MambaCarry", "MambaParams", "MambaSpec",
    "gated_deltanet", "mamba",
]
