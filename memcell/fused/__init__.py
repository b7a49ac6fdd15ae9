"""Fused sequence layers with hand-written backpropagation through time (the fast path).

``memcell.fused.lstm``, ``.gru`` and ``.rnn`` compute what ``memcell.unroll`` computes for the
default cell of the same name, with the same params and shapes, organised the way cuDNN
organises it:

- the input projection ``xs @ W`` for all ``T`` steps is one large matmul before the scan,
  so only the recurrent matmul ``h @ U`` and the gate nonlinearities run per step;
- the backward pass is a ``jax.custom_vjp``: a reverse scan carries only what the
  recurrence needs (``dz @ U^T`` and the memory-cell path) and emits the pre-activation
  gradients ``dz`` of every step; the weight, bias and input gradients are then a few large
  matmuls over all steps instead of ``T`` small ones inside the scan.

The reference path (``memcell.unroll`` over ``cell.step``) stays the definition: every
function here is tested equal to it, values and gradients. The custom VJP is first order
only (no jvp, no second derivatives): jacobian studies and higher-order checks use the
reference path.

Options these functions do not implement (peepholes, layer norm, gate ablations, GRU
``reset_after=False``, packed-sequence resets) raise a ``ValueError`` here, and make
``memcell.unroll(..., backend="auto")`` fall back to the reference path (``memcell.fused.why_not(cell)``
says why). ``remat`` runs the whole
kernel on checkpointed blocks of steps (``"sqrt"``, an int k; per-step remat is blocks of one step).

The package, one module a concern: ``tuning`` (the per-platform constants), ``layout`` (layouts,
blocks of steps, batch groups, the recurrent matmul), ``kinds`` (each cell's step and backward
pieces), ``_kernel`` (the forward scan and the custom VJP), ``path`` (the fused path of
``memcell.paths``: which cells it runs, on a framed sequence) and ``layers`` (the public layers:
``memcell.unroll`` of the default cell on this path). This module only re-exports.
"""

from memcell.fused.layers import gru, lstm, rnn
from memcell.fused.path import why_not

__all__ = ["gru", "lstm", "rnn", "why_not"]
