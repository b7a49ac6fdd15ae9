"""minGRU and minLSTM, both modes: equations against NumPy, shapes, vmap, jit, lengths, resets,
reverse, gradients, dtypes, the declared linear recurrence against the step, log-space numerics."""

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


def setup(name, seed=0, dtype=jnp.float32, scale=1.0, **kw):
    """The cell and random params (init draws small values; wider ones reach both branches of g)."""
    cell = make(name, param_dtype=dtype, **kw)
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = cell.init(k1, D)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(k2, len(leaves))
    params = jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    return cell, params


def rand(shape, seed=1, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def close(a, b, tol=1e-5):
    chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


def positive_carry(cell, params, batch_shape=(), seed=11):
    """A nonzero initial carry; positive, so that it is a valid start of the log-space recurrence too."""
    h = cell.initial_carry(params, batch_shape).h
    return type(cell.initial_carry(params))(h + 0.2 + jax.random.uniform(jax.random.key(seed), h.shape))


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
    new, y = cell.step(params, carry, jnp.ones((D,)))
    chex.assert_shape(y, (H,))
    chex.assert_trees_all_equal_shapes_and_dtypes(new, carry)
    carry = cell.initial_carry(params, (2, 5))
    new, y = cell.step(params, carry, jnp.ones((2, 5, D)))
    chex.assert_shape([y, new.h], (2, 5, H))
    chex.assert_type([y, new.h], jnp.float32)
    assert len(jax.tree.leaves(new)) == 1  # the one-leaf carry LinearSpec asks for


@names
def test_vmap_equals_broadcasting(name):
    cell, params = setup(name)
    xs = rand((3, 5, D), seed=3)
    close(memcell.unroll(cell, params, xs), jax.vmap(lambda x: memcell.unroll(cell, params, x))(xs), 1e-6)


@names
def test_jit_equals_eager(name):
    cell, params = setup(name)
    xs = rand((2, 5, D), seed=4)
    with jax.disable_jit():
        eager = memcell.unroll(cell, params, xs)
    close(jax.jit(lambda p, x: memcell.unroll(cell, p, x))(params, xs), eager)


@names
def test_unroll_equals_python_loop(name):
    cell, params = setup(name)
    xs = rand((2, 6, D), seed=5)
    carry, ys = cell.initial_carry(params, (2,)), []
    for t in range(xs.shape[1]):
        carry, y = cell.step(params, carry, xs[:, t])
        ys.append(y)
    close(memcell.unroll(cell, params, xs), (carry, jnp.stack(ys, 1)), 1e-6)


# --------------------------------------------------------------------------- lengths, resets, reverse (as in test_scan)
# Compared with the NumPy recurrence run on the truncated, flipped or cut sequences: the same
# checks as test_scan's, without compiling a scan for every piece.


def _np_segments(name, params, seq, h0, starts, reverse):
    """The NumPy recurrence run on each segment of ``seq`` (cut before every start) on its own, from ``h0``."""
    bounds = list(starts) + [seq.shape[-2]]
    ys, finals = [], []
    for a, b in zip(bounds, bounds[1:]):
        piece = seq[..., a:b, :][..., ::-1, :] if reverse else seq[..., a:b, :]
        h, y = np_unroll(name, params, piece, h0)
        ys.append(y[..., ::-1, :] if reverse else y)
        finals.append(h)
    return (finals[0] if reverse else finals[-1]), np.concatenate(ys, -2)


@names
@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_and_resets_match_separate_segments(name, reverse):
    """Lengths (0 included) and resets together: every sequence is its real steps cut at its resets,
    each piece run alone from the initial carry (read backwards with reverse); padding gives zeros."""
    cell, params = setup(name)
    xs = np.asarray(rand((3, 7, D), seed=6))
    h0 = positive_carry(cell, params)
    lengths = [7, 4, 0]
    resets = np.zeros((3, 7), bool)
    resets[0, [2, 5]] = True
    resets[1, 1] = True
    resets[1, 5] = True  # in the padding: no effect
    carry, ys = memcell.unroll(cell, params, xs, h0, lengths=jnp.array(lengths), resets=resets, reverse=reverse)
    for b, L in enumerate(lengths):
        assert float(jnp.abs(ys[b, L:]).max(initial=0.0)) == 0.0
        if L == 0:  # nothing read: the initial carry comes back
            np.testing.assert_allclose(carry.h[b], h0.h, rtol=0, atol=0)
            continue
        starts = [0] + [t for t in range(1, L) if resets[b, t]]
        h_ref, ys_ref = _np_segments(name, params, xs[b, :L], np.asarray(h0.h), starts, reverse)
        np.testing.assert_allclose(ys[b, :L], ys_ref, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(carry.h[b], h_ref, rtol=2e-5, atol=2e-5)


# --------------------------------------------------------------------------- gradients, dtypes


# The linear-space step is the log-space one without g (same ops otherwise): its order-2 checks
# run with the slow checks (`make test-slow`), to keep `make test` in its budget.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if not CONFIGS[n][1] else n for n in CONFIGS]
)
def test_check_grads_float64_order2(name):
    """Two steps from a nonzero carry (the step is the reference; unroll only scans it), eagerly:
    order-2 checks of a jitted scan cost several times more to compile here."""
    with jax.enable_x64(True):
        cell, params = setup(name, dtype=jnp.float64, seed=8)
        xs = rand((2, D), seed=9, dtype=jnp.float64)
        h0 = positive_carry(cell, params)

        def f(params, xs, h0):
            carry = h0
            for t in range(xs.shape[0]):
                carry, y = cell.step(params, carry, xs[t])
            return jnp.sum(y**2) + jnp.sum(jnp.sin(carry.h))

        check_grads(f, (params, xs, h0), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5, eps=1e-5)


@pytest.mark.parametrize("name", ["mingru", "minlstm_log"])  # the dtype handling is shared by all four
def test_bfloat16_compute_has_float32_carry_and_stays_close(name):
    cell32, params = setup(name)
    cell16 = make(name, dtype=jnp.bfloat16)
    xs = rand((2, 6, D), seed=10)
    carry16, ys16 = memcell.unroll(cell16, params, xs)
    _, ys32 = memcell.unroll(cell32, params, xs)
    assert ys16.dtype == jnp.float32 and carry16.h.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(ys16 - ys32)))
    assert 0 < err < 0.05  # bf16 rounding is visible but small
    a, b = cell16.spec.coefficients(params, xs)
    assert a.dtype == b.dtype == jnp.float32
    # bfloat16 params too: still a float32 carry and float32 coefficients
    cell = make(name, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    p16 = cell.init(jax.random.key(0), D)
    assert p16.w_x.dtype == p16.b.dtype == jnp.bfloat16
    carry, ys = memcell.unroll(cell, p16, xs.astype(jnp.bfloat16))
    assert ys.dtype == carry.h.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(ys)))
    assert cell.spec.coefficients(p16, xs)[0].dtype == jnp.float32


# --------------------------------------------------------------------------- the declared linear recurrence


@names
def test_spec_declares_the_steps_recurrence(name):
    """A loop over the declared coefficients, then the readout, is the reference unroll (nonzero h0)."""
    factory, log_space = CONFIGS[name]
    cell, params = setup(name, seed=12)
    spec = cell.spec
    assert isinstance(spec, LinearSpec) and spec.describes(cell) and spec.log_space is log_space
    assert type(spec) is (memcell.MinGRUSpec if factory is memcell.mingru else memcell.MinLSTMSpec)
    xs = rand((2, 6, D), seed=13)
    h0 = positive_carry(cell, params, (2,))
    carry, ys = memcell.unroll(cell, params, xs, h0)
    a, b = spec.coefficients(params, xs)
    chex.assert_shape([a, b], (2, 6, H))
    h, hs = h0.h, []
    for t in range(xs.shape[1]):
        if log_space:
            h = jnp.exp(jnp.logaddexp(a[:, t] + jnp.log(h), b[:, t]))
        else:
            h = a[:, t] * h + b[:, t]
        hs.append(h)
    hs = jnp.stack(hs, 1)
    close(spec.readout(params, hs, xs), ys)
    close(hs[:, -1], carry.h)
    if log_space:  # positive terms, and a < 1: the carry decays towards the candidates
        assert bool(jnp.all(a < 0)) and bool(jnp.all(jnp.isfinite(b)))
    else:
        assert bool(jnp.all((a > 0) & (a < 1)))


@pytest.mark.parametrize("name", ["mingru_log", "minlstm_log"])
def test_log_coefficients_stay_finite_with_finite_gradients_at_extremes(name):
    """Pre-activations of +-300: log a, log b and their gradients stay finite (no log of a negative
    number or of an underflowed sigmoid leaks through the discarded branch of a where)."""
    cell, params = setup(name)
    xs = jnp.array([[[300.0, 0, 0], [-300.0, 0, 0], [0.0, 0, 0]]])  # [1, 3, D]
    params = params._replace(w_x=params.w_x.at[0].set(jnp.where(jnp.arange(params.w_x.shape[1]) % 2 == 0, 1.0, -1.0)))
    loss = lambda p: sum(jnp.sum(v) for v in cell.spec.coefficients(p, xs))
    value, grads = jax.value_and_grad(loss)(params)
    assert bool(jnp.isfinite(value)) and all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    carry, ys = memcell.unroll(cell, params, xs)
    assert bool(jnp.all(jnp.isfinite(ys)))


# --------------------------------------------------------------------------- log-space numerics, long sequences


@pytest.mark.parametrize("name", ["mingru_log", "minlstm_log"])
def test_long_strongly_decaying_sequence_matches_float64(name):
    """T = 2000 steps whose decay a = 1 - z (or f') reaches 1e-13: products of a underflow float32
    within a few steps, and sums of log a stay in range. The float32 step stays finite and
    matches the float64 NumPy recurrence."""
    T = 2000
    cell, params = setup(name, seed=14)
    n_gates = 1 if "gru" in name else 2
    # Gate biases: unit 0 decays hard (k ~ 30), unit 3 barely (k ~ -12); inputs move them by +-3.
    gate_b = jnp.tile(jnp.array([30.0, 8.0, 1.0, -12.0]), n_gates)
    if n_gates == 2:  # minLSTM: a hard decay needs f small and i large
        gate_b = gate_b.at[:H].multiply(-1.0)
    params = params._replace(b=params.b.at[: n_gates * H].set(gate_b))
    xs = rand((T, D), seed=15)
    h0 = positive_carry(cell, params)
    carry, ys = memcell.unroll(cell, params, xs, h0)
    assert bool(jnp.all(jnp.isfinite(ys))) and bool(jnp.all(ys > 0))
    h_ref, ys_ref = np_unroll(name, params, xs, h0.h)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry.h, h_ref, rtol=1e-5, atol=1e-6)
    log_a, log_b = cell.spec.coefficients(params, xs)
    assert float(log_a[:, 0].max()) < -20  # the hard-decaying unit: a < 2e-9 at every step
    assert float(jnp.prod(jnp.exp(log_a[:5, 0]))) == 0.0  # its product underflows float32 in 5 steps
    assert bool(jnp.all(jnp.isfinite(jnp.sum(log_a, axis=0))))  # the sum of logs does not
    assert bool(jnp.all(jnp.isfinite(log_b)))


# --------------------------------------------------------------------------- analysis, init, bad input


@pytest.mark.parametrize("name", ["mingru", "minlstm_log"])
def test_jacobian_flow_is_the_product_of_the_decays(name):
    """d h_T / d h_{T-k} is diag(a_T ... a_{T-k+1}): its spectral norm is the largest product over units."""
    cell, params = setup(name, seed=16)
    xs = rand((8, D), seed=17)
    log_norms = memcell.jacobian.gradient_norms_through_time(cell, params, xs, log=True)
    a, _ = cell.spec.coefficients(params, xs)
    log_a = a if CONFIGS[name][1] else jnp.log(a)
    suffix = jnp.concatenate([jnp.zeros((1, H)), jnp.cumsum(log_a[::-1], axis=0)[:-1]])  # lag k: sum of the last k
    chex.assert_shape(log_norms, (8,))
    close(log_norms, suffix.max(axis=1), 1e-4)


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
    assert float(jnp.abs(q.w_x).max()) == 0.0 and float(jnp.abs(q.b).max()) > 0


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
            lambda: memcell.unroll(memcell.mingru(4), memcell.minlstm(4).init(jax.random.key(0), D), jnp.ones((3, D))),
            TypeError,
            "params do not belong to this cell",
        ),
    ],
)
def test_bad_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()
