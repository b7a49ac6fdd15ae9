"""minGRU and minLSTM, both modes: equations against NumPy, shapes, vmap, jit, lengths, resets,
reverse, gradients, dtypes, the declared linear recurrence against the step, log-space numerics."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import memcell
from memcell.types import LinearSpec

CONFIGS = {
    "mingru": (memcell.mingru, False),
    "mingru_log": (memcell.mingru, True),
    "minlstm": (memcell.minlstm, False),
    "minlstm_log": (memcell.minlstm, True),
}
H, D = 4, 3
names = pytest.mark.parametrize("name", list(CONFIGS))


def make(name, hidden=H, **kw):
    factory, log_space = CONFIGS[name]
    return factory(hidden, log_space=log_space, **kw)


# Random values come from NumPy and results are checked in NumPy: every jax op on a new shape
# compiles, and on this shared CPU those compiles were most of this file's time.


def setup(name, seed=0, dtype=jnp.float32, **kw):
    """The cell and N(0, 1) params (init draws small values; wider ones reach both branches of g)."""
    cell = make(name, param_dtype=dtype, **kw)
    shapes = jax.eval_shape(lambda k: cell.init(k, D), jax.random.key(0))  # traced, not run
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), dtype), shapes)
    return cell, params


def rand(shape, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def close(a, b, tol=1e-5):
    chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


def positive_carry(cell, params, batch_shape=(), seed=11):
    """A nonzero initial carry; positive, so that it is a valid start of the log-space recurrence too."""
    h = 0.2 + np.random.default_rng(seed).uniform(size=tuple(batch_shape) + (H,))
    return type(cell.initial_carry(params))(jnp.asarray(h, params.w_x.dtype))


# --------------------------------------------------------------------------- NumPy reference


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_step(name, p, h, x):
    """The paper's equations, written again in float64 NumPy, for one step."""
    factory, log_space = CONFIGS[name]
    w, b = np.asarray(p.w_x, np.float64), np.asarray(p.b, np.float64)
    blocks = np.split(x @ w + b, 2 if factory is memcell.mingru else 3, axis=-1)
    g = lambda v: np.where(v >= 0, v + 0.5, _sig(v))
    h_tilde = g(blocks[-1]) if log_space else blocks[-1]
    if factory is memcell.mingru:
        z = _sig(blocks[0])
        return (1 - z) * h + z * h_tilde
    f, i = _sig(blocks[0]), _sig(blocks[1])
    return f / (f + i) * h + i / (f + i) * h_tilde


def np_unroll(name, p, xs, h0):
    h, ys = np.asarray(h0, np.float64), []
    for t in range(xs.shape[-2]):
        h = np_step(name, p, h, np.asarray(xs[..., t, :], np.float64))
        ys.append(h)
    return h, np.stack(ys, -2) if ys else np.zeros(xs.shape[:-1] + h.shape[-1:])


@names
def test_step_matches_numpy_reference(name):
    cell, params = setup(name, seed=1)
    xs = rand((2, 6, D), seed=2)
    h0 = positive_carry(cell, params, (2,))
    carry, ys = memcell.unroll(cell, params, xs, h0)
    h_ref, ys_ref = np_unroll(name, params, xs, h0.h)
    np.testing.assert_allclose(ys, ys_ref, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(carry.h, h_ref, rtol=2e-5, atol=2e-5)
    if CONFIGS[name][1]:
        assert float(ys.min()) > 0  # g keeps h positive from a positive start


# --------------------------------------------------------------------------- shapes, vmap, jit, loop


@names
def test_shapes_unbatched_and_batched(name):
    cell, params = setup(name)
    assert params.w_x.shape == (D, H * (2 if "gru" in name else 3)) and params.b.shape == (params.w_x.shape[1],)
    carry = cell.initial_carry(params)
    new, y = cell.step(params, carry, np.ones((D,), np.float32))
    chex.assert_shape(y, (H,))
    chex.assert_trees_all_equal_shapes_and_dtypes(new, carry)
    carry = cell.initial_carry(params, (2, 5))
    new, y = cell.step(params, carry, np.ones((2, 5, D), np.float32))
    chex.assert_shape([y, new.h], (2, 5, H))
    chex.assert_type([y, new.h], jnp.float32)
    assert len(jax.tree.leaves(new)) == 1  # the one-leaf carry LinearSpec asks for


# The two modes share every line of the step but g, so the unroll machinery (vmap, jit, lengths,
# resets, reverse) runs on one cell of each mode: minGRU linear and minLSTM log-space.
pairs = pytest.mark.parametrize("name", ["mingru", "minlstm_log"])


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@pairs
def test_vmap_equals_broadcasting(name):
    cell, params = setup(name)
    xs = rand((3, 5, D), seed=3)
    close(memcell.unroll(cell, params, xs), jax.vmap(lambda x: memcell.unroll(cell, params, x))(xs), 1e-6)


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@pairs
def test_jit_equals_eager(name):
    cell, params = setup(name)
    xs = rand((2, 5, D), seed=4)
    with jax.disable_jit():
        eager = memcell.unroll(cell, params, xs)
    close(jax.jit(lambda p, x: memcell.unroll(cell, p, x))(params, xs), eager)


@pairs
def test_unroll_equals_python_loop(name):
    cell, params = setup(name)
    xs = rand((2, 6, D), seed=5)
    carry, ys = cell.initial_carry(params, (2,)), []
    for t in range(xs.shape[1]):
        carry, y = cell.step(params, carry, xs[:, t])
        ys.append(y)
    close(memcell.unroll(cell, params, xs), (carry, np.stack(ys, 1)), 1e-6)


# --------------------------------------------------------------------------- lengths, resets, reverse (as in test_scan)
# Compared with the NumPy recurrence run on the truncated, flipped or cut sequences: the same
# checks as test_scan's, without compiling a scan for every piece.


def _np_segments(name, params, seq, h0, starts, reverse):
    """The NumPy recurrence run on each segment of ``seq`` (cut before every start) on its own, from ``h0``."""
    bounds = list(starts) + [seq.shape[-2]]
    ys, finals = [], []
    for a, b in itertools.pairwise(bounds):
        piece = seq[..., a:b, :][..., ::-1, :] if reverse else seq[..., a:b, :]
        h, y = np_unroll(name, params, piece, h0)
        ys.append(y[..., ::-1, :] if reverse else y)
        finals.append(h)
    return (finals[0] if reverse else finals[-1]), np.concatenate(ys, -2)


@pairs
@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_and_resets_match_separate_segments(name, reverse):
    """Lengths (0 included) and resets together: every sequence is its real steps cut at its resets,
    each piece run alone from the initial carry (read backwards with reverse); padding gives zeros."""
    cell, params = setup(name)
    xs = rand((3, 7, D), seed=6)
    h0 = positive_carry(cell, params)
    lengths = [7, 4, 0]
    resets = np.zeros((3, 7), bool)
    resets[0, [2, 5]] = True
    resets[1, 1] = True
    resets[1, 5] = True  # in the padding: no effect
    carry, ys = memcell.unroll(cell, params, xs, h0, lengths=np.array(lengths), resets=resets, reverse=reverse)
    ys, h_final = np.asarray(ys), np.asarray(carry.h)
    for b, L in enumerate(lengths):
        assert np.abs(ys[b, L:]).max(initial=0.0) == 0.0
        if L == 0:  # nothing read: the initial carry comes back
            np.testing.assert_array_equal(h_final[b], h0.h)
            continue
        starts = [0] + [t for t in range(1, L) if resets[b, t]]
        h_ref, ys_ref = _np_segments(name, params, xs[b, :L], np.asarray(h0.h), starts, reverse)
        np.testing.assert_allclose(ys[b, :L], ys_ref, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(h_final[b], h_ref, rtol=2e-5, atol=2e-5)


# --------------------------------------------------------------------------- gradients, dtypes


# The linear-space step is the log-space one without g (same ops otherwise): its order-2 checks
# run with the slow checks (`make test-slow`), to keep `make test` in its budget.
@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if not CONFIGS[n][1] else n for n in CONFIGS]
)
def test_check_grads_float64_order2(name):
    """Two steps from a nonzero carry (the step is the reference; unroll only scans it), eagerly:
    order-2 checks of a jitted scan cost several times more to compile here."""
    with jax.enable_x64(True):
        cell, params = setup(name, dtype=jnp.float64, seed=8)
        xs = jnp.asarray(rand((2, D), seed=9, dtype=np.float64))
        h0 = positive_carry(cell, params)

        def f(params, xs, h0):
            carry = h0
            for t in range(xs.shape[0]):
                carry, y = cell.step(params, carry, xs[t])
            return jnp.sum(y**2) + jnp.sum(jnp.sin(carry.h))

        check_grads(f, (params, xs, h0), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5, eps=1e-5)


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@pytest.mark.parametrize("name", ["minlstm_log"])  # the dtype handling (_pre_activations) is shared by all four
def test_bfloat16_compute_has_float32_carry_and_stays_close(name):
    cell32, params = setup(name)
    cell16 = make(name, dtype=jnp.bfloat16)
    xs = rand((2, 6, D), seed=10)
    carry16, ys16 = memcell.unroll(cell16, params, xs)
    _, ys32 = memcell.unroll(cell32, params, xs)
    assert ys16.dtype == jnp.float32 and carry16.h.dtype == jnp.float32
    err = np.abs(np.asarray(ys16) - np.asarray(ys32)).max()
    assert 0 < err < 0.05  # bf16 rounding is visible but small
    a, b = cell16.spec.coefficients(params, xs)
    assert a.dtype == b.dtype == jnp.float32
    # bfloat16 params too: still a float32 carry and float32 coefficients
    cell = make(name, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    p16 = cell.init(jax.random.key(0), D)
    assert p16.w_x.dtype == p16.b.dtype == jnp.bfloat16
    carry, ys = memcell.unroll(cell, p16, jnp.asarray(xs, jnp.bfloat16))
    assert ys.dtype == carry.h.dtype == jnp.float32 and np.isfinite(np.asarray(ys)).all()
    assert cell.spec.coefficients(p16, xs)[0].dtype == jnp.float32


# --------------------------------------------------------------------------- the declared linear recurrence


@names
def test_spec_declares_the_steps_recurrence(name):
    """A loop over the declared coefficients, then the readout, is the reference unroll (nonzero h0)."""
    factory, log_space = CONFIGS[name]
    cell, params = setup(name, seed=12)
    spec = cell.spec
    assert isinstance(spec, LinearSpec) and spec.describes(cell) and spec.log_space is log_space
    assert type(spec) is (memcell.cells.MinGRUSpec if factory is memcell.mingru else memcell.cells.MinLSTMSpec)
    assert (memcell.paths.why_not("parallel", cell) is None)  # backend="auto" runs these cells on the parallel path
    xs = rand((2, 6, D), seed=13)
    h0 = positive_carry(cell, params, (2,))
    carry, ys = memcell.unroll(cell, params, xs, h0)
    a, b = spec.coefficients(params, xs)
    chex.assert_shape([a, b], (2, 6, H))
    chex.assert_type([a, b], jnp.float32)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    h, hs = np.asarray(h0.h, np.float64), []
    for t in range(xs.shape[1]):
        if log_space:
            h = np.exp(np.logaddexp(a[:, t] + np.log(h), b[:, t]))
        else:
            h = a[:, t] * h + b[:, t]
        hs.append(h)
    hs = np.stack(hs, 1)
    np.testing.assert_allclose(spec.readout(params, hs, xs), ys, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hs[:, -1], carry.h, rtol=1e-5, atol=1e-6)
    if log_space:  # positive terms, and a < 1: the carry decays towards the candidates
        assert (a < 0).all() and np.isfinite(b).all()
    else:
        assert ((a > 0) & (a < 1)).all()


@pytest.mark.parametrize("name", ["mingru_log", "minlstm_log"])
def test_log_coefficients_stay_finite_with_finite_gradients_at_extremes(name):
    """Pre-activations of +-300 and of exactly -0.5 (where log(x + 0.5) has an infinite slope):
    log a, log b and their gradients stay finite (no log of a negative number, of zero or of an
    underflowed sigmoid leaks through the discarded branch of a where)."""
    cell, params = setup(name)
    xs = np.array([[[300.0, 0, 0], [-300.0, 0, 0], [0.5, 0, 0], [-0.5, 0, 0]]], np.float32)  # [1, 4, D]
    w_x = np.asarray(params.w_x).copy()
    w_x[0] = np.where(np.arange(w_x.shape[1]) % 2 == 0, 1.0, -1.0)  # every block sees +-x[0], bias 0
    params = params._replace(w_x=jnp.asarray(w_x), b=jnp.zeros_like(params.b))
    loss = lambda p: sum(jnp.sum(v) for v in cell.spec.coefficients(p, xs))
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value)) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    _, ys = memcell.unroll(cell, params, xs)
    assert np.isfinite(np.asarray(ys)).all()


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_decay_keeps_its_relative_precision_when_the_gate_opens(name):
    """d h' / d h = a: with the gate wide open (k = 30) a = 9.4e-14, which float32 holds to its
    relative precision only if a is not formed as 1 - sigmoid(k) (that gives exactly 0); and
    minLSTM's f' = f / (f + i) stays 1/2 when both gates underflow."""
    cell, params = setup(name)
    n_gates = 1 if "gru" in name else 2
    b = np.zeros(params.b.shape, np.float32)
    b[:H] = -30.0 if n_gates == 2 else 30.0  # minGRU: z open; minLSTM: f shut ...
    b[H : n_gates * H] = 30.0  # ... and i open
    params = params._replace(w_x=jnp.zeros_like(params.w_x), b=jnp.asarray(b))
    carry = cell.initial_carry(params)
    _, da = jax.jvp(lambda h: cell.step(params, type(carry)(h), np.zeros(D, np.float32))[1], (carry.h,), (jnp.ones(H),))
    s = 1 / (1 + np.exp(30.0))  # sigmoid(-30) in float64
    expected = s if n_gates == 1 else s / (s + 1 / (1 + np.exp(-30.0)))
    np.testing.assert_allclose(da, np.full(H, expected), rtol=1e-5)
    if n_gates == 2:  # both gates shut (k = -120): f and i underflow float32, f / (f + i) would be 0/0
        params = params._replace(b=params.b.at[: 2 * H].set(-120.0))
        _, da = jax.jvp(lambda h: cell.step(params, type(carry)(h), np.zeros(D, np.float32))[1], (carry.h,), (jnp.ones(H),))
        np.testing.assert_allclose(da, np.full(H, 0.5), rtol=1e-6)


# --------------------------------------------------------------------------- log-space numerics, long sequences


@pytest.mark.parametrize("name", ["mingru_log", "minlstm_log"])
def test_long_strongly_decaying_sequence_matches_float64(name):
    """T = 2000 steps whose decay a = 1 - z (or f') reaches 1e-13: products of a underflow float32
    within a few steps, and sums of log a stay in range. The float32 step stays finite and
    matches the float64 NumPy recurrence, and so does the parallel path."""
    T = 2000
    cell, params = setup(name, seed=14)
    n_gates = 1 if "gru" in name else 2
    # Gate biases: unit 0 decays hard (k ~ 30), unit 3 barely (k ~ -12); inputs move them by +-3.
    b = np.asarray(params.b).copy()
    b[: n_gates * H] = np.tile([30.0, 8.0, 1.0, -12.0], n_gates)
    if n_gates == 2:  # minLSTM: a hard decay needs f small and i large
        b[:H] *= -1.0
    params = params._replace(b=jnp.asarray(b))
    xs = rand((T, D), seed=15)
    h0 = positive_carry(cell, params)
    carry, ys = memcell.unroll(cell, params, xs, h0)
    ys = np.asarray(ys)
    assert np.isfinite(ys).all() and (ys > 0).all()
    h_ref, ys_ref = np_unroll(name, params, xs, h0.h)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry.h, h_ref, rtol=1e-5, atol=1e-6)
    # The parallel path scans the declared log coefficients: as close to float64 as the step.
    carry_p, ys_p = memcell.unroll(cell, params, xs, h0, backend="parallel")
    np.testing.assert_allclose(ys_p, ys_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry_p.h, h_ref, rtol=1e-5, atol=1e-6)
    log_a, log_b = (np.asarray(v) for v in cell.spec.coefficients(params, xs))  # float32
    assert log_a[:, 0].max() < -20  # the hard-decaying unit: a < 2e-9 at every step
    assert np.prod(np.exp(log_a[:5, 0])) == 0.0  # its product underflows float32 in 5 steps
    assert np.isfinite(log_a.sum(axis=0)).all() and np.isfinite(log_b).all()  # the sum of logs does not


# --------------------------------------------------------------------------- analysis, init, bad input


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@pytest.mark.parametrize("name", ["minlstm_log"])
def test_jacobian_flow_is_the_product_of_the_decays(name):
    """d h_T / d h_{T-k} is diag(a_T ... a_{T-k+1}): its spectral norm is the largest product over units."""
    cell, params = setup(name, seed=16)
    xs = rand((8, D), seed=17)
    log_norms = memcell.jacobian.gradient_norms_through_time(cell, params, xs, log=True)
    a = np.asarray(cell.spec.coefficients(params, xs)[0], np.float64)
    log_a = a if CONFIGS[name][1] else np.log(a)
    suffix = np.concatenate([np.zeros((1, H)), np.cumsum(log_a[::-1], axis=0)[:-1]])  # lag k: sum of the last k
    chex.assert_shape(log_norms, (8,))
    np.testing.assert_allclose(log_norms, suffix.max(axis=1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("factory, blocks", [(memcell.mingru, 2), (memcell.minlstm, 3)])
def test_init_is_nn_linears(factory, blocks):
    d, h = 16, 64
    p = factory(h).init(jax.random.key(0), d)
    assert p.w_x.shape == (d, blocks * h) and p.b.shape == (blocks * h,) and p.w_x.dtype == jnp.float32
    bound = 1 / np.sqrt(d)
    for x in (p.w_x, p.b):  # U(-1/sqrt(d), 1/sqrt(d)): the range is filled, the variance is bound^2 / 3
        x = np.asarray(x)
        assert np.abs(x).max() <= bound and np.abs(x).max() > 0.9 * bound
        assert x.var() == pytest.approx(bound**2 / 3, rel=0.25)
    q = factory(h, kernel_init="zeros").init(jax.random.key(0), d)
    assert np.abs(np.asarray(q.w_x)).max() == 0.0 and np.abs(np.asarray(q.b)).max() > 0


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: memcell.mingru(0), ValueError, "hidden_size must be a positive int, got 0"),
        (lambda: memcell.minlstm(2.5), ValueError, "hidden_size must be a positive int, got 2.5"),
        (lambda: memcell.mingru(4, log_space="yes"), TypeError, "log_space must be a bool, got str 'yes'"),
        (lambda: memcell.minlstm(4, log_space=1), TypeError, "log_space must be a bool, got 1"),
        (lambda: memcell.mingru(4, kernel_init="he"), ValueError, r"kernel_init must be one of \['fan_in_uniform'"),
        (lambda: memcell.minlstm(4, param_dtype=jnp.int32), TypeError, "param_dtype must be a floating dtype"),
        (lambda: memcell.mingru(4, dtype="complex64"), TypeError, "dtype must be a floating dtype"),
        (lambda: memcell.minlstm(4).init(jax.random.key(0), 0), ValueError, "input_size must be a positive int, got 0"),
        (
            lambda: memcell.unroll(memcell.mingru(4), memcell.minlstm(4).init(jax.random.key(0), D), np.ones((3, D))),
            TypeError,
            "params do not belong to this cell",
        ),
    ],
)
def test_bad_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()
