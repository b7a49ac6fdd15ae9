"""Pallas kernels for the recurrences: ``backend="pallas"``.

- ``linear_scan``: the diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` (real or complex)
  behind every ``LinearSpec`` cell, time loop in the kernel, channels across the grid;
- ``memcell.pallas.recurrent``: the LSTM, GRU (``reset_after=True``) and tanh/ReLU RNN recurrences,
  recurrent weights in the kernel, the batch across the grid;
- ``memcell.pallas.path``: the path the frame runs (``why_not``, ``run``);
- ``memcell.pallas.tuning``: block sizes per platform, and where ``backend="auto"`` may run the path.

Both kernels have a hand-written backward pass (``jax.custom_vjp``, first order). On a GPU they
lower through Triton; on a CPU they run in Pallas interpret mode, which checks them (``make test``)
and is not meant to be fast. How they work and their limits: docs/kernels.md.
"""

from memcell.pallas import path, recurrent, tuning
from memcell.pallas.linear import linear_scan

__all__ = ["linear_scan", "path", "recurrent", "tuning"]
