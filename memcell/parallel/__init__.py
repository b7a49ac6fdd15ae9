"""The parallel path: cells whose carry update is linear in the carry, over all steps at once.

A cell whose carry obeys ``h_t = a_t * h_{t-1} + b_t`` (minGRU, minLSTM, LRU, RG-LRU: see
``memcell.LinearSpec``) declares how to compute ``a`` and ``b`` for every step from the inputs
alone. ``memcell.unroll(cell, params, xs, backend="parallel")`` then computes them for all steps
at once (one large matmul instead of ``T`` small ones) and runs the recurrence as a chunked scan
(``linear``): no loop over all ``T`` steps on accelerators, one elementwise loop on CPU where
that measures fastest (``tuning``). Lengths, resets, reverse and an initial carry give what the
reference path gives (the frame of ``memcell.paths`` puts them in one form); every function here is tested equal to the reference path,
values and gradients, and unlike the fused path it has derivatives of every order. The mLSTM,
whose matrix memory is also updated linearly, runs its own chunkwise form (``mlstm``).

The package, one module a concern: ``linear`` (the chunked linear and log-space scans),
``mlstm`` (the mLSTM's chunkwise form), ``tuning`` (the chunk length and what ``auto`` runs, per
platform, with the measurements) and ``path`` (the parallel path of ``memcell.paths``).
This module only re-exports.
"""

from memcell.parallel.linear import chunk_size_for, linear_scan, log_linear_scan
from memcell.parallel.path import why_not

__all__ = ["chunk_size_for", "linear_scan", "log_linear_scan", "why_not"]
