"""memcell: recurrent cells as pure JAX functions.

A cell is three pure functions, ``Cell(init, initial_carry, step)``; ``unroll`` runs one over a
sequence with ``jax.lax.scan``; ``layer``, ``bidirectional`` and ``stack`` compose sequence layers.

The front door holds the factories, the sequence functions, the contract types and the
subpackages. Each cell's own Params, Carry and Spec types live in ``memcell.cells`` (for example
``memcell.cells.LSTMCarry``), beside the table of cells ``memcell.cells.CELLS``.
"""

from memcell.cells import (
    gated_deltanet,
    gru,
    irnn,
    lru,
    lstm,
    mamba,
    mingru,
    minlstm,
    mlstm,
    rglru,
    rnn,
    slstm,
)
from memcell.scan import bidirectional, layer, stack, unroll
from memcell.streaming import Stream, stream
from memcell.types import BACKENDS, Backend, Cell, CellSpec, DirectionPair, Layer, LayerSpec, LinearSpec

# Modules that build on the core, reached as memcell.jacobian.*, memcell.train.* and so on.
# The Flax wrappers (memcell.linen, memcell.nnx) are imported explicitly, so that
# `import memcell` does not import flax.
from memcell import cells, convert, cudnn, fused, jacobian, pallas, parallel, paths, regularize, tasks, train  # noqa: E402
from memcell import export  # noqa: E402  (after tasks, which it reads; onnx and jax2onnx load lazily)

__version__ = "0.1.0"

__all__ = [
    # the contract
    "BACKENDS", "Backend", "Cell", "CellSpec", "DirectionPair", "Layer", "LayerSpec", "LinearSpec",
    # the cells (memcell.cells.CELLS holds them by name)
    "gated_deltanet", "gru", "irnn", "lru", "lstm", "mamba", "mingru", "minlstm", "mlstm", "rglru", "rnn", "slstm",
    # over a sequence
    "Stream", "bidirectional", "layer", "stack", "stream", "unroll",
    # subpackages
    "cells", "convert", "cudnn", "export", "fused", "jacobian", "pallas", "parallel", "paths", "regularize",
    "tasks", "train",
]
