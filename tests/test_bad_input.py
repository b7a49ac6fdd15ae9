"""Bad input to the core entry points raises a ValueError/TypeError naming the argument, before tracing.

Params that belong to another cell (another size, another kind), non-bool flags and flags of
the wrong kind, on unroll, layer, bidirectional, stack, the fused path and the jacobian toolkit.
The train, tasks and convert entry points have their checks in their own test files.
"""

import jax
import jax.numpy as jnp
import pytest

import memcell
from memcell import fused
from memcell import jacobian as J

D, T = 3, 6


@pytest.fixture(scope="module")
def lstm8():
    return memcell.lstm(8).init(jax.random.key(0), D)


XS = jnp.ones((2, T, D))

# (name, call(cell, params, xs)): every entry point that unrolls a cell with given params
ENTRY_POINTS = {
    "unroll": lambda cell, p, xs: memcell.unroll(cell, p, xs),
    "unroll auto": lambda cell, p, xs: memcell.unroll(cell, p, xs, backend="auto"),
    "unroll fused": lambda cell, p, xs: memcell.unroll(cell, p, xs, backend="fused"),
    "layer": lambda cell, p, xs: memcell.layer(cell).apply(p, xs),
    "layer auto": lambda cell, p, xs: memcell.layer(cell, backend="auto").apply(p, xs),
    "bidirectional": lambda cell, p, xs: memcell.bidirectional(cell, cell).apply(
        memcell.DirectionPair(p, p), xs
    ),
    "stack": lambda cell, p, xs: memcell.stack([cell]).apply((p,), xs),
    "gradient_norms_through_time": lambda cell, p, xs: J.gradient_norms_through_time(cell, p, xs[0]),
    "input_gradient_norms": lambda cell, p, xs: J.input_gradient_norms(cell, p, xs[0]),
    "singular_value_spectra": lambda cell, p, xs: J.singular_value_spectra(cell, p, xs[0]),
    "state_jacobians": lambda cell, p, xs: J.state_jacobians(cell, p, xs[0]),
    "lyapunov_exponent": lambda cell, p, xs: J.lyapunov_exponent(cell, p, xs[0]),
    "unroll_with_probes": lambda cell, p, xs: J.unroll_with_probes(cell, p, xs[0], jnp.zeros((T, 9))),
    "loss_gradient_norms": lambda cell, p, xs: J.loss_gradient_norms(cell, p, xs[0], jnp.sum),
}


@pytest.mark.parametrize("call", ENTRY_POINTS.values(), ids=ENTRY_POINTS)
def test_params_of_another_size_are_refused(call, lstm8):
    """``memcell.lstm(9)`` with an 8-unit LSTM's params used to run with 8 units and no error."""
    with pytest.raises(ValueError, match=r"params do not belong to this cell: for input_size=3 the cell "
                                         r"expects LSTMParams\(.*\(9, 36\).*got LSTMParams\(.*\(8, 32\)"):
        call(memcell.lstm(9), lstm8, XS)


@pytest.mark.parametrize("call", ENTRY_POINTS.values(), ids=ENTRY_POINTS)
def test_params_of_another_cell_are_refused(call, lstm8):
    """``memcell.gru(8)`` with LSTM params used to fail deep inside with an AttributeError."""
    with pytest.raises(TypeError, match=r"params do not belong to this cell.*expects GRUParams.*got LSTMParams"):
        call(memcell.gru(8), lstm8, XS)


def test_the_params_check_is_abstract_and_cached(lstm8):
    """It traces ``cell.init`` once per (init, input size), computing nothing."""
    cell = memcell.lstm(8)
    memcell.unroll(cell, lstm8, XS)
    from memcell import _checks

    before = _checks._expected_params.cache_info().hits
    memcell.unroll(cell, lstm8, XS)
    assert _checks._expected_params.cache_info().hits == before + 1


def test_params_under_vmap_and_in_float64_still_pass(lstm8):
    """The check compares structure and shapes, not dtypes, and sees per-example shapes under vmap."""
    cell = memcell.lstm(8)
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), lstm8)
    ys = jax.vmap(lambda p: memcell.unroll(cell, p, XS)[1])(stacked)
    assert ys.shape == (2, 2, T, 8)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), lstm8)
        assert memcell.unroll(cell, p64, XS.astype(jnp.float64))[1].dtype == jnp.float64


FLAGS = [
    (lambda p: memcell.unroll(memcell.lstm(8), p, XS, reverse="yes"), "reverse must be a bool, got str 'yes'"),
    (lambda p: memcell.unroll(memcell.lstm(8), p, XS, reverse=1), "reverse must be a bool, got 1"),
    (lambda p: memcell.unroll(memcell.lstm(8), p, XS, remat="no"), "remat must be a bool, 'step', 'sqrt' or a positive int .*, got str 'no'"),
    (lambda p: memcell.unroll(memcell.lstm(8), p, XS, unroll=0), "unroll must be a positive int, got 0"),
    (lambda p: memcell.unroll(memcell.lstm(8), p, XS, unroll="4"), "unroll must be a positive int, got '4'"),
    (lambda p: memcell.unroll(memcell.lstm(8), p, XS, backend="fast"), "backend must be one of"),
    (lambda p: memcell.unroll(memcell.lstm(8), p, XS, backend=["auto"]), "backend must be one of"),
    (lambda p: memcell.layer(memcell.lstm(8), reverse="yes"), "reverse must be a bool"),
    (lambda p: memcell.layer(memcell.lstm(8), remat=None), "remat must be a bool, .*, got NoneType None"),
    (lambda p: memcell.layer((1, 2, 3)), "cell must be a memcell.Cell, got tuple"),
    (lambda p: memcell.bidirectional(memcell.lstm(8), memcell.lstm(8), remat="x"), "remat must be a bool"),
    (lambda p: memcell.bidirectional(memcell.lstm(8), "lstm"), "backward must be a memcell.Cell, got str"),
    (lambda p: memcell.stack([memcell.lstm(8)], residual="yes"), "residual must be a bool"),
    (lambda p: memcell.stack([memcell.lstm(8)], dropout="0.5"), r"dropout must lie in \[0, 1\), got '0.5'"),
    (lambda p: memcell.stack([memcell.lstm(8)], dropout=-0.1), r"dropout must lie in \[0, 1\)"),
    (lambda p: fused.lstm(p, XS, reverse="yes"), "reverse must be a bool"),
    (lambda p: memcell.paths.which(memcell.lstm(8), p, XS, backend="fast"), "backend must be one of"),
    (lambda p: memcell.lstm(8, peephole="yes"), "peephole must be a bool, got str 'yes'"),
    (lambda p: memcell.lstm(8, forget_gate=0), "forget_gate must be a bool, got 0"),
    (lambda p: memcell.lstm(8, layer_norm=None), "layer_norm must be a bool"),
    (lambda p: memcell.gru(8, reset_after="false"), "reset_after must be a bool, got str 'false'"),
    (lambda p: J.gradient_norms_through_time(memcell.lstm(8), p, XS[0], log="yes"), "log must be a bool"),
    (lambda p: J.state_jacobians(memcell.lstm(8), p, XS[0], flat=1), "flat must be a bool"),
]


@pytest.mark.parametrize("call, match", FLAGS)
def test_flags_of_the_wrong_kind_are_refused(call, match, lstm8):
    with pytest.raises((TypeError, ValueError), match=match):
        call(lstm8)


def test_true_bools_from_numpy_are_accepted(lstm8):
    import numpy as np

    ys = memcell.unroll(memcell.lstm(8), lstm8, XS, reverse=np.bool_(True))[1]
    assert ys.shape == (2, T, 8)
