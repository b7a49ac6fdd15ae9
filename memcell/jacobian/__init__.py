"""Jacobians through time: how far back a cell's gradient reaches, measured with ``jax.vjp``.

The vanishing-gradient problem (Hochreiter 1991, Bengio et al. 1994, Pascanu et al. 2013) in
numbers, for any ``Cell``. Notation: ``c_t`` is the carry after step ``t`` of ``xs`` (0-based,
``c_{-1}`` the initial carry), ``h_t`` its hidden part, and ``J_t = d c_t / d c_{t-1}`` the
step Jacobian at ``(c_{t-1}, x_t)``. The gradient that reaches ``h`` from ``k`` steps later is
the product ``d h_{T-1} / d h_{T-1-k} = P_h J_{T-1} ... J_{T-k} E_h``: its norm shrinks
geometrically in ``k`` for a contracting plain RNN, while the LSTM's memory cell carries it
along ``d c_t / d c_{t-1} = diag(f_t)``, at a rate its forget gates set.

The hidden part of a carry. A carry is any pytree; the "h-part" is found by name: the leaf
that is the carry's field (NamedTuple field or dict key) called ``hidden`` (default ``"h"``,
the field every memcell cell uses for its hidden output). With the default, a carry with a
single leaf (a bare array, or a one-field NamedTuple) is its own hidden part. ``hidden`` may also be an int, the
index of the leaf in ``jax.tree.leaves(carry)``. Derivatives "with respect to ``h_t``" perturb
that leaf of ``c_t`` and hold the other leaves (the LSTM's ``c``) fixed at that step; later
steps propagate the perturbation through every part of the carry.

Everything here takes ``xs: [*b, T, D]`` like ``memcell.unroll`` (leading batch axes, or use
``jax.vmap``), works under ``jit`` and ``vmap`` (over sequences or over params, e.g. seeds), in
float32 and float64. All lags are computed in one reverse scan of batched vjps, with the running
product rescaled at every step and its log-scale kept apart, so ``log=True`` gives exact log-norms
where the norms themselves would underflow (radius 0.5 over 1000 steps is 1e-301) or overflow.
"""

from memcell.jacobian.flow import (
    gradient_norms_through_time,
    input_gradient_norms,
    singular_value_spectra,
)
from memcell.jacobian.probes import loss_gradient_norms, unroll_with_probes
from memcell.jacobian.steps import product_norms, state_jacobians
from memcell.jacobian.summaries import decay_rate, lyapunov_exponent

__all__ = [
    "decay_rate",
    "gradient_norms_through_time",
    "input_gradient_norms",
    "loss_gradient_norms",
    "lyapunov_exponent",
    "product_norms",
    "singular_value_spectra",
    "state_jacobians",
    "unroll_with_probes",
]
