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

Complex carries (``memcell.lru``). A complex carry leaf ``z`` of ``n`` units is treated as the
real vector ``(Re z, Im z)`` of ``2n`` numbers: Jacobians are those of the step as a map of real
vectors, and their norms are the norms of these real ``2n x 2n`` matrices. That is the right
measure for gradients, which flow to the real and imaginary parts of the carry (a real loss of a
complex carry is not holomorphic). For a holomorphic step, such as the LRU's ``x' = lambda * x +
...``, each singular value of the complex Jacobian appears twice in the real one, so spectral norms
equal the complex ones: for the LRU, ``||d x_T / d x_{T-k}||`` is ``max |lambda|^k`` and
``decay_rate`` gives ``log max |lambda|``. ``state_jacobians`` then returns blocks with a trailing
axis of 2 (real, imaginary) on both their output and input parts (``flat=True``: ``2n x 2n``);
``loss_gradient_norms`` takes complex probes and returns ``sqrt(sum |dL/dRe h|^2 + |dL/dIm h|^2)``.

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
from memcell.jacobian.probes import carry_gates, loss_gradient_norms, unroll_with_probes
from memcell.jacobian.steps import product_norms, state_jacobians
from memcell.jacobian.summaries import decay_rate, lyapunov_exponent

__all__ = [
    "carry_gates",
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
