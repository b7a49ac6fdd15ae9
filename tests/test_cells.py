"""Cells: shapes, broadcasting, known values against NumPy, gradients, dtypes, inits, bad input."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import memcell

# --------------------------------------------------------------------------- configurations
# Every cell and every option the factories offer; each test below runs on all of them.

CONFIGS = {
    "rnn_tanh": (memcell.rnn, dict()),
    "rnn_relu_identity": (memcell.rnn, dict(activation="relu", recurrent_init="identity", recurrent_scale=0.5)),
    "lstm": (memcell.lstm, dict()),
    "lstm_forget_bias0": (memcell.lstm, dict(forget_bias=0.0)),
    "lstm_chrono": (memcell.lstm, dict(init="chrono", max_timescale=50)),
    "lstm_peephole": (memcell.lstm, dict(peephole=True)),
    "lstm_cifg": (memcell.lstm, dict(cifg=True, peephole=True)),
    "lstm_layer_norm": (memcell.lstm, dict(layer_norm=True, peephole=True)),
    "lstm_NIG": (memcell.lstm, dict(input_gate=False)),
    "lstm_NFG": (memcell.lstm, dict(forget_gate=False)),
    "lstm_NOG": (memcell.lstm, dict(output_gate=False)),
    "lstm_NIAF": (memcell.lstm, dict(input_activation=False)),
    "lstm_NOAF": (memcell.lstm, dict(output_activation=False)),
    "lstm_proj": (memcell.lstm, dict(proj_size=3)),
    "lstm_proj_peephole_ln": (memcell.lstm, dict(proj_size=2, peephole=True, layer_norm=True, cifg=True)),
    "gru": (memcell.gru, dict()),
    "gru_reset_before": (memcell.gru, dict(reset_after=False)),
}
H, D = 5, 3


def out_size(name):
    """The size of the outputs and of the carry's ``h``: the projection's with ``proj_size``, else H."""
    return CONFIGS[name][1].get("proj_size") or H


def make(name, hidden=H, **extra):
    factory, kw = CONFIGS[name]
    return factory(hidden, **kw, **extra)


def randomize(params, key, scale=0.5):
    """Random values in every param (zeros and ones at init would hide peephole/LN/bias bugs)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    )


def setup(name, seed=0, dtype=jnp.float32, **extra):
    cell = make(name, param_dtype=dtype, **extra)
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = randomize(cell.init(k1, D), k2)
    return cell, params


# Option combinations whose known values (NumPy reference) are checked in make test and whose
# other cell tests, which their single options already pass, run with the slow checks.
_COMBINATIONS = {"lstm_proj_peephole_ln"}
# Variants that differ from the LSTM only in their init values run the same step on the random
# params of `setup`: their shape/vmap/jit/unroll checks run with the slow checks (their init is
# tested in make test by the init tests).
_INIT_ONLY = {"lstm_forget_bias0", "lstm_chrono"}
names = pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _COMBINATIONS | _INIT_ONLY else n for n in CONFIGS]
)


# --------------------------------------------------------------------------- NumPy reference


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _ln(z, n, scale, bias=None, eps=1e-5):
    zz = z.reshape(z.shape[:-1] + (n, -1))
    zz = (zz - zz.mean(-1, keepdims=True)) / np.sqrt(zz.var(-1, keepdims=True) + eps)
    out = zz.reshape(z.shape) * scale
    return out if bias is None else out + bias


def np_step(name, p, carry, x):
    """The equations of each cell, written again in NumPy from the papers, for one step."""
    p = jax.tree.map(np.asarray, p)
    factory, kw = CONFIGS[name]
    if factory is memcell.rnn:
        act = np.tanh if kw.get("activation", "tanh") == "tanh" else (lambda v: np.maximum(v, 0))
        h = act(x @ p.w_x + carry[0] @ p.w_h + p.b)
        return (h,), h
    if factory is memcell.gru:
        h = carry[0]
        gx = x @ p.w_x + p.b_x
        xr, xz, xn = np.split(gx, 3, -1)
        if kw.get("reset_after", True):
            hr, hz, hn = np.split(h @ p.w_h + p.b_h, 3, -1)
            r, z = _sig(xr + hr), _sig(xz + hz)
            n = np.tanh(xn + r * hn)
        else:
            Hh = h.shape[-1]
            hr, hz = np.split(h @ p.w_h[:, : 2 * Hh] + p.b_h[: 2 * Hh], 2, -1)
            r, z = _sig(xr + hr), _sig(xz + hz)
            n = np.tanh(xn + (r * h) @ p.w_h[:, 2 * Hh :] + p.b_h[2 * Hh :])
        h = (1 - z) * n + z * h
        return (h,), h
    h, c = carry
    cifg = kw.get("cifg", False)
    gates = [g for g, on in [("i", kw.get("input_gate", True) and not cifg), ("f", kw.get("forget_gate", True)),
                             ("g", True), ("o", kw.get("output_gate", True))] if on]
    zx, zh = x @ p.w_x, h @ p.w_h
    if kw.get("layer_norm"):
        zx, zh = _ln(zx, len(gates), p.norm.x_scale), _ln(zh, len(gates), p.norm.h_scale)
    z = dict(zip(gates, np.split(zx + zh + p.b, len(gates), -1)))
    peep = kw.get("peephole", False)
    f = _sig(z["f"] + (p.p_f * c if peep else 0)) if "f" in z else 1.0
    if cifg:
        i = 1 - f
    else:
        i = _sig(z["i"] + (p.p_i * c if peep else 0)) if "i" in z else 1.0
    g = np.tanh(z["g"]) if kw.get("input_activation", True) else z["g"]
    c = f * c + i * g
    o = _sig(z["o"] + (p.p_o * c if peep else 0)) if "o" in z else 1.0
    c_out = _ln(c, 1, p.norm.c_scale, p.norm.c_bias) if kw.get("layer_norm") else c
    h = o * (np.tanh(c_out) if kw.get("output_activation", True) else c_out)
    if kw.get("proj_size"):  # LSTMP (Sak et al. 2014): the output, and the h read next step, projected
        h = h @ p.w_hr
    return (h, c), h


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_matches_numpy_reference(name):
    cell, params = setup(name, seed=1)
    xs = np.asarray(jax.random.normal(jax.random.key(2), (4, 6, D)))
    carry, ys = memcell.unroll(cell, params, jnp.asarray(xs))
    ref = tuple(np.zeros(leaf.shape) for leaf in jax.tree.leaves(cell.initial_carry(params, (4,))))
    ref_ys = []
    for t in range(xs.shape[1]):
        ref, y = np_step(name, params, ref, xs[:, t])
        ref_ys.append(y)
    np.testing.assert_allclose(ys, np.stack(ref_ys, 1), rtol=2e-5, atol=2e-5)
    for got, want in zip(jax.tree.leaves(carry), ref):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


# --------------------------------------------------------------------------- shapes, vmap, jit


@names
def test_shapes_unbatched_and_batched(name):
    cell, params = setup(name)
    carry = cell.initial_carry(params)
    x = jnp.ones((D,))
    new, y = cell.step(params, carry, x)
    chex.assert_shape(y, (out_size(name),))
    chex.assert_trees_all_equal_shapes_and_dtypes(new, carry)
    carry = cell.initial_carry(params, (2, 7))
    new, y = cell.step(params, carry, jnp.ones((2, 7, D)))
    chex.assert_shape(y, (2, 7, out_size(name)))
    chex.assert_trees_all_equal_shapes_and_dtypes(new, carry)
    chex.assert_shape(new.h, (2, 7, out_size(name)))  # the projected h with proj_size
    if hasattr(new, "c"):
        chex.assert_shape(new.c, (2, 7, H))  # the LSTM's memory cell keeps all H units
    chex.assert_type([y, *jax.tree.leaves(new)], jnp.float32)


@names
def test_vmap_equals_broadcasting(name):
    cell, params = setup(name)
    xs = jax.random.normal(jax.random.key(3), (3, 4, D))
    carry_b, ys_b = memcell.unroll(cell, params, xs)
    carry_v, ys_v = jax.vmap(lambda x: memcell.unroll(cell, params, x))(xs)
    chex.assert_trees_all_close((carry_b, ys_b), (carry_v, ys_v), rtol=1e-6, atol=1e-6)


@names
def test_jit_equals_eager(name):
    cell, params = setup(name)
    xs = jax.random.normal(jax.random.key(4), (2, 5, D))
    with jax.disable_jit():
        eager = memcell.unroll(cell, params, xs)
    jitted = jax.jit(lambda p, x: memcell.unroll(cell, p, x))(params, xs)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-6)  # carry and ys, same structure


@names
def test_unroll_equals_python_loop(name):
    cell, params = setup(name)
    xs = jax.random.normal(jax.random.key(5), (2, 6, D))
    carry = cell.initial_carry(params, (2,))
    ys = []
    for t in range(xs.shape[1]):
        carry, y = cell.step(params, carry, xs[:, t])
        ys.append(y)
    final, ys_scan = memcell.unroll(cell, params, xs)
    chex.assert_trees_all_close((final, ys_scan), (carry, jnp.stack(ys, 1)), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- gradients


@pytest.mark.slow  # float64 check_grads of order 2 is test-slow's (issue 21.6); make test checks the gradients
@pytest.mark.parametrize("name", list(CONFIGS))  # of every path against the reference (tests/test_contract.py)
def test_check_grads_float64_order2(name):
    with jax.enable_x64(True):
        cell, params = setup(name, dtype=jnp.float64, seed=6)
        xs = jax.random.normal(jax.random.key(7), (3, D), jnp.float64)

        @jax.jit
        def f(params, xs):
            carry, ys = memcell.unroll(cell, params, xs)
            return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(carry))

        # A small step: LN(h U) at h = 0 has variance ~0, where rsqrt curves sharply, so wider
        # finite differences are off by their own truncation error (float64 keeps 1e-5 exact enough).
        check_grads(f, (params, xs), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5, eps=1e-5)


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("name", ["rnn_tanh", "lstm", "lstm_layer_norm", "lstm_proj", "gru"])
def test_bfloat16_compute_has_float32_carry_and_stays_close(name):
    cell32, params = setup(name)
    cell16 = make(name, dtype=jnp.bfloat16)
    xs = jax.random.normal(jax.random.key(8), (2, 8, D))
    carry16, ys16 = memcell.unroll(cell16, params, xs)
    _, ys32 = memcell.unroll(cell32, params, xs)
    assert ys16.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(carry16))
    err = float(jnp.max(jnp.abs(ys16 - ys32)))
    assert 0 < err < 0.05  # bf16 rounding is visible but small


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_bfloat16_params_keep_float32_carry(name):
    cell = make(name, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    params = cell.init(jax.random.key(0), D)
    assert params.w_x.dtype == jnp.bfloat16
    carry, ys = memcell.unroll(cell, params, jnp.ones((4, D), jnp.bfloat16))
    assert ys.dtype == jnp.float32 and all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(carry))
    assert bool(jnp.all(jnp.isfinite(ys)))


# --------------------------------------------------------------------------- inits


def test_lstm_param_layout_and_forget_bias():
    p = memcell.lstm(4).init(jax.random.key(0), 3)
    assert p.w_x.shape == (3, 16) and p.w_h.shape == (4, 16) and p.b.shape == (16,)
    np.testing.assert_array_equal(p.b, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])  # i, f, g, o
    assert p.p_i is None and p.norm is None
    p0 = memcell.lstm(4, forget_bias=0.0).init(jax.random.key(0), 3)
    np.testing.assert_array_equal(p0.b, np.zeros(16))


def test_lstm_proj_layout_init_and_proj_size_0_is_no_projection():
    plain = memcell.lstm(6).init(jax.random.key(0), 3)
    proj = memcell.lstm(6, proj_size=2).init(jax.random.key(0), 3)
    assert proj.w_x.shape == (3, 24) and proj.w_h.shape == (2, 24) and proj.w_hr.shape == (6, 2)
    assert plain.w_hr is None
    chex.assert_trees_all_equal((proj.w_x, proj.b), (plain.w_x, plain.b))  # w_hr draws from a key of its own
    np.testing.assert_allclose(proj.w_hr.T @ proj.w_hr, np.eye(2), atol=1e-5)  # orthogonal: orthonormal columns
    zero = memcell.lstm(6, proj_size=0)  # torch's "no projection"
    chex.assert_trees_all_equal(zero.init(jax.random.key(0), 3), plain)
    assert zero.spec == memcell.lstm(6).spec and zero.spec.proj_size is None
    carry = memcell.lstm(6, proj_size=2).initial_carry(proj, (4,))
    assert carry.h.shape == (4, 2) and carry.c.shape == (4, 6)
    with pytest.raises(TypeError, match=r"params do not belong to this cell.*\.w_hr: \(6, 2\)"):
        memcell.unroll(memcell.lstm(6, proj_size=2), plain, jnp.ones((5, 3)))


@pytest.mark.parametrize(
    "kw, blocks",
    [(dict(input_gate=False), 3), (dict(forget_gate=False), 3), (dict(output_gate=False), 3),
     (dict(cifg=True), 3), (dict(input_gate=False, output_gate=False), 2), (dict(input_activation=False), 4)],
)
def test_lstm_variants_allocate_only_their_gates(kw, blocks):
    p = memcell.lstm(4, **kw).init(jax.random.key(0), 3)
    assert p.w_x.shape == (3, 4 * blocks) and p.w_h.shape == (4, 4 * blocks) and p.b.shape == (4 * blocks,)


def test_greff_variants_all_build_and_run():
    for variant, kw in memcell.cells.LSTM_VARIANTS.items():
        cell = memcell.lstm(4, **kw)
        params = cell.init(jax.random.key(0), 2)
        _, ys = memcell.unroll(cell, params, jnp.ones((3, 2)))
        assert ys.shape == (3, 4), variant
        has_peepholes = any(p is not None for p in (params.p_i, params.p_f, params.p_o))
        assert has_peepholes == kw.get("peephole", False), variant


def _ks_uniform(samples, lo, hi):
    """The Kolmogorov-Smirnov distance between the samples and U(lo, hi)."""
    x = np.sort(np.asarray(samples, np.float64))
    cdf = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    n = len(x)
    return max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))


@pytest.mark.parametrize("T", [4, 100])
def test_chrono_init_draws_timescales_uniform_on_1_to_max_minus_1(T):
    # Tallec and Ollivier 2018: b_f = log u, u ~ U(1, T - 1), and b_i = -b_f. Over many units
    # exp(b_f) is that uniform: its range, mean and whole distribution (KS) are checked
    # against the exact values, so a range of U(1, T) or U(0, T - 1) fails.
    h, n_keys = 1000, 16  # 16 000 units; zero weights keep the inits cheap
    cell = memcell.lstm(h, init="chrono", max_timescale=T, kernel_init="zeros", recurrent_init="zeros")
    b = np.stack([np.asarray(cell.init(jax.random.key(k), 1).b) for k in range(n_keys)])  # [keys, 4h]: i f g o
    b_i, b_f = b[:, :h], b[:, h : 2 * h]
    np.testing.assert_array_equal(b_i, -b_f)
    np.testing.assert_array_equal(b[:, 2 * h :], 0.0)  # g and o biases untouched
    assert not np.array_equal(b_f[0], b_f[1])  # each key its own timescales
    u = np.exp(b_f.astype(np.float64)).reshape(-1)
    n = u.size
    lo, hi = 1.0, T - 1.0
    width = hi - lo
    assert u.min() >= lo * (1 - 1e-6) and u.max() <= hi * (1 + 1e-6)
    # n draws leave gaps of about width / n at either end
    assert u.min() < lo + 10 * width / n and u.max() > hi - 10 * width / n
    assert u.mean() == pytest.approx((lo + hi) / 2, abs=5 * width / np.sqrt(12 * n))
    assert _ks_uniform(u, lo, hi) < 1.95 / np.sqrt(n)  # the KS critical value at p = 0.001


@pytest.mark.parametrize("init", ["orthogonal", "identity"])
@pytest.mark.parametrize("scale", [0.5, 0.9, 1.5])
def test_recurrent_scale_sets_spectral_radius(init, scale):
    p = memcell.rnn(32, recurrent_init=init, recurrent_scale=scale).init(jax.random.key(1), 3)
    radius = np.max(np.abs(np.linalg.eigvals(np.asarray(p.w_h, np.float64))))
    np.testing.assert_allclose(radius, scale, rtol=1e-4)


def test_identity_relu_rnn_is_irnn():
    p = memcell.rnn(6, activation="relu", recurrent_init="identity").init(jax.random.key(0), 2)
    np.testing.assert_array_equal(p.w_h, np.eye(6))


def test_initial_carry_batch_shapes():
    cell = memcell.lstm(3)
    params = cell.init(jax.random.key(0), 2)
    carry = cell.initial_carry(params, (4, 5))
    assert carry.h.shape == (4, 5, 3) and carry.c.shape == (4, 5, 3)
    assert carry.h.dtype == jnp.float32 and float(jnp.abs(carry.c).sum()) == 0.0


def test_user_initializer_callable_is_used():
    p = memcell.gru(4, kernel_init=jax.nn.initializers.ones).init(jax.random.key(0), 2)
    np.testing.assert_array_equal(p.w_x, np.ones((2, 12)))


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: memcell.rnn(0), ValueError, "hidden_size must be a positive int, got 0"),
        (lambda: memcell.lstm(2.5), ValueError, "hidden_size must be a positive int, got 2.5"),
        (lambda: memcell.rnn(4, activation="sigmoid"), ValueError, "activation must be one of"),
        (lambda: memcell.rnn(4, recurrent_init="eye"), ValueError, "recurrent_init must be one of"),
        (lambda: memcell.lstm(4, init="chrono"), ValueError, "max_timescale > 2"),
        (lambda: memcell.lstm(4, init="chrono", max_timescale=10, forget_bias=1.0), ValueError, "forget_bias"),
        (lambda: memcell.lstm(4, max_timescale=10), ValueError, "only used with init='chrono'"),
        (lambda: memcell.lstm(4, cifg=True, forget_gate=False), ValueError, "cifg"),
        (lambda: memcell.lstm(4, init="he"), ValueError, "init must be one of"),
        (lambda: memcell.lstm(4, proj_size=4), ValueError,
         r"proj_size must be None, 0 \(no projection\) or an int in \[1, hidden_size=4\) .*got 4"),
        (lambda: memcell.lstm(4, proj_size=-1), ValueError, "proj_size must be None, 0 .*got -1"),
        (lambda: memcell.lstm(4, proj_size=2.0), ValueError, "proj_size must be None, 0 .*got 2.0"),
        (lambda: memcell.gru(4, param_dtype=jnp.int32), TypeError, "param_dtype must be a floating dtype"),
        (lambda: memcell.gru(4, dtype="complex"), TypeError, "dtype must be a floating dtype"),
        (lambda: memcell.lstm(4).init(jax.random.key(0), 0), ValueError, "input_size must be a positive int"),
    ],
)
def test_bad_factory_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()
