"""Tests of memcell.jacobian: every function against brute force (jax.jacrev of the unrolled map),
an analytic linear RNN, and the vanishing-gradient story measured on fixed seeds."""

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import memcell
from memcell import jacobian as J
from memcell.types import Cell

T, D, H = 6, 2, 3


# ----------------------------------------------------------------------------- helpers


class LinearCarry(NamedTuple):
    h: jnp.ndarray


def linear_cell(u: np.ndarray, d: int = 1) -> Cell:
    """A user-defined linear RNN, h' = h U + x W, written as three pure functions: for it
    d h_T / d h_{T-k} = (U^k)^T exactly."""
    n = u.shape[0]

    def init(key, input_size):
        return {"u": jnp.asarray(u), "w": jax.random.normal(key, (input_size, n), jnp.asarray(u).dtype)}

    def initial_carry(params, batch_shape=()):
        return LinearCarry(jnp.zeros(tuple(batch_shape) + (n,), params["u"].dtype))

    def step(params, carry, x):
        h = carry.h @ params["u"] + x @ params["w"]
        return LinearCarry(h), h

    return Cell(init, initial_carry, step)


def dict_carry_cell(n: int) -> Cell:
    """A user cell whose carry is a dict with the hidden output under "out" and a second leaf."""

    def init(key, input_size):
        k1, k2 = jax.random.split(key)
        return {"w": jax.random.normal(k1, (input_size, n)), "u": jax.random.normal(k2, (n, n)) / math.sqrt(n)}

    def initial_carry(params, batch_shape=()):
        z = jnp.zeros(tuple(batch_shape) + (n,), params["u"].dtype)
        return {"out": z, "acc": z}

    def step(params, carry, x):
        out = jnp.tanh(carry["out"] @ params["u"] + x @ params["w"] + 0.5 * carry["acc"])
        acc = 0.8 * carry["acc"] + 0.1 * out
        return {"out": out, "acc": acc}, out

    return Cell(init, initial_carry, step)


def jitter(params, key, scale=0.3):
    """Random perturbation of every param leaf, so that zero-initialised peepholes and biases matter."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [a + scale * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


CELLS = {
    "rnn_tanh": lambda: memcell.rnn(H, recurrent_scale=0.9),
    "rnn_relu": lambda: memcell.rnn(H, activation="relu"),
    "lstm": lambda: memcell.lstm(H),
    "lstm_peephole_ln": lambda: memcell.lstm(H, peephole=True, layer_norm=True),
    "lstm_nfg": lambda: memcell.lstm(H, forget_gate=False),
    "lstm_cifg": lambda: memcell.lstm(H, **memcell.cells.LSTM_VARIANTS["CIFG"]),
    "gru": lambda: memcell.gru(H),
    "gru_cho": lambda: memcell.gru(H, reset_after=False),
    "linear_user_cell": lambda: linear_cell(np.linalg.qr(np.random.default_rng(0).normal(size=(H, H)))[0] * 0.8),
}


def setup(name, key=0):
    cell = CELLS[name]()
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    params = jitter(cell.init(k1, D), k2)
    xs = jax.random.normal(k3, (2, T, D))
    return cell, params, xs


def carries(cell, params, xs, carry0):
    out, c = [], carry0
    for t in range(xs.shape[0]):
        c, _ = cell.step(params, c, xs[t])
        out.append(c)
    return out


def np_norm(m, norm):
    m = np.asarray(m, np.float64).reshape(m.shape[0], -1)
    return np.linalg.norm(m, 2 if norm == "spectral" else "fro")


def accessors(carry, hidden):
    if isinstance(carry, dict):
        return (lambda c: c[hidden]), (lambda c, h: {**c, hidden: h})
    return (lambda c: getattr(c, hidden)), (lambda c, h: c._replace(**{hidden: h}))


def perturbed_unroll(cell, params, xs, carry0, deltas, hidden="h"):
    """The unrolled map, a plain Python loop independent of memcell.jacobian, with ``deltas[t]``
    added to the hidden part of the carry after step t. Returns h_0 .. h_{T-1}."""
    get, put = accessors(carry0, hidden)
    c, hs = carry0, []
    for t in range(xs.shape[0]):
        c, _ = cell.step(params, c, xs[t])
        c = put(c, get(c) + deltas[t])
        hs.append(get(c))
    return jnp.stack(hs)


def brute_jacobians(cell, params, xs, carry0, hidden="h"):
    """By jax.jacrev of the unrolled map, with respect to perturbations of every h_t and to xs:
    ``d h_T / d h_{T-k}`` by lag k = 0 .. T-1 and ``d h_T / d x_t`` by input step, for ``xs: [B, T, D]``."""
    Tn = xs.shape[-2]
    n = accessors(carry0, hidden)[0](carry0).size
    f = lambda d, xs_: perturbed_unroll(cell, params, xs_, carry0, d, hidden)[-1]
    jac = jax.jit(jax.vmap(jax.jacrev(f, argnums=(0, 1)), in_axes=(None, 0)))
    jd, jx = (np.asarray(a) for a in jac(jnp.zeros((Tn, n)), xs))  # [B, n, T, n], [B, n, T, D]
    by_lag = [[jd[b, :, Tn - 1 - k, :] for k in range(Tn)] for b in range(xs.shape[0])]
    by_input = [[jx[b, :, t, :] for t in range(Tn)] for b in range(xs.shape[0])]
    return by_lag, by_input


# ----------------------------------------------------------------------------- against brute force


# make test: a tanh RNN, the LSTM, the peephole-LN LSTM, the GRU and the user cell; the other
# variants (the same jacobian code on other steps) with the slow checks.
_BRUTE_FAST = {"rnn_tanh", "lstm", "lstm_peephole_ln", "gru", "linear_user_cell"}


@pytest.mark.parametrize("index, name", [(i, n) if n in _BRUTE_FAST else pytest.param(i, n, marks=pytest.mark.slow)
                                         for i, n in enumerate(sorted(CELLS))])
def test_gradient_and_input_norms_match_brute_force(index, name):
    cell, params, xs_b = setup(name)
    norm = ("spectral", "frobenius")[index % 2]  # both norms, on alternate cells (compile time)
    lag_norms = np.asarray(J.gradient_norms_through_time(cell, params, xs_b, norm=norm))
    input_norms = np.asarray(J.input_gradient_norms(cell, params, xs_b, norm=norm))
    assert lag_norms.shape == input_norms.shape == (2, T)
    by_lag, by_input = brute_jacobians(cell, params, xs_b, cell.initial_carry(params))
    for b in range(2):
        np.testing.assert_allclose(lag_norms[b], [np_norm(m, norm) for m in by_lag[b]], rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(input_norms[b], [np_norm(m, norm) for m in by_input[b]], rtol=2e-4, atol=1e-6)
    assert lag_norms[0, 0] == pytest.approx(1.0 if norm == "spectral" else math.sqrt(H), rel=1e-6)  # lag 0: identity


# The peephole + layer-norm LSTM (9 s) runs with the slow checks; the GRU keeps the brute-force check here.
@pytest.mark.parametrize("name", [pytest.param("lstm_peephole_ln", marks=pytest.mark.slow), "gru"])
def test_spectra_and_state_jacobians_match_brute_force(name):
    cell, params, xs_b = setup(name, key=1)
    xs = xs_b[0]
    carry0 = cell.initial_carry(params)
    spectra = np.asarray(J.singular_value_spectra(cell, params, xs_b))
    assert spectra.shape == (2, T, H)
    by_lag, _ = brute_jacobians(cell, params, xs_b, carry0)
    want = [np.linalg.svd(m, compute_uv=False) for m in by_lag[0]]
    np.testing.assert_allclose(spectra[0], np.stack(want), rtol=2e-4, atol=1e-6)
    assert np.all(np.diff(spectra, axis=-1) <= 1e-6)  # descending

    jac = J.state_jacobians(cell, params, xs_b)
    flat = J.state_jacobians(cell, params, xs_b, flat=True)
    n = sum(a.size for a in jax.tree.leaves(carry0))
    assert flat.shape == (2, T, n, n)
    cs = [carry0] + carries(cell, params, xs, carry0)
    # Brute force: jacrev of a one-step memcell.unroll from c_{t-1}.
    one_step = jax.jit(jax.jacrev(lambda c, x: memcell.unroll(cell, params, x[None], c)[0]))
    for t in range(T):
        got_t = jax.tree.map(lambda a: a[0, t], jac)
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6), got_t, one_step(cs[t], xs[t]))
    # The flat Jacobian's h rows and columns are the h.h block (h is the first leaf of every memcell carry).
    np.testing.assert_allclose(flat[..., :H, :H], jac.h.h, rtol=1e-5, atol=1e-7)
    # The norm of the product of full step Jacobians bounds the h-path gradient from above, lag by lag.
    full = np.asarray(J.product_norms(flat))
    hpath = np.asarray(J.gradient_norms_through_time(cell, params, xs_b))
    assert np.all(hpath <= full * (1 + 1e-4) + 1e-6)


@pytest.mark.parametrize("name", ["lstm_cifg", "gru_cho", "linear_user_cell"])
def test_loss_gradient_norms_match_brute_force(name):
    cell, params, xs_b = setup(name, key=2)
    target = jax.random.normal(jax.random.key(9), (T, H))
    loss_fn = lambda ys: jnp.sum(jnp.sin(ys) * target) + jnp.sum(ys[..., -1, :] ** 2)
    got = np.asarray(J.loss_gradient_norms(cell, params, xs_b, loss_fn))
    assert got.shape == (2, T)
    carry0 = cell.initial_carry(params)
    for b in range(2):
        # Brute force: the gradient of the loss with respect to a perturbation of each h_t (y_t = h_t here).
        L = lambda d: loss_fn(perturbed_unroll(cell, params, xs_b[b], carry0, d))
        want = np.linalg.norm(jax.grad(L)(jnp.zeros((T, H))), axis=-1)
        np.testing.assert_allclose(got[b], want, rtol=2e-4, atol=1e-6)


def test_unroll_with_probes_zero_probes_is_unroll_and_probe_reaches_outputs():
    cell, params, xs = setup("lstm", key=3)
    c_ref, ys_ref = memcell.unroll(cell, params, xs)
    c, ys = J.unroll_with_probes(cell, params, xs, jnp.zeros((2, T, H)))
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), c, c_ref)
    probes = jnp.zeros((2, T, H)).at[:, 2].set(1.0)
    _, ys_p = J.unroll_with_probes(cell, params, xs, probes)
    np.testing.assert_allclose(ys_p[:, :2], ys_ref[:, :2], rtol=1e-6)  # causal
    np.testing.assert_allclose(ys_p[:, 2], ys_ref[:, 2] + 1.0, rtol=1e-6)  # the probe is in the output


def test_user_cell_with_dict_carry_and_named_hidden():
    n = 3
    cell = dict_carry_cell(n)
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (T, D))
    carry0 = cell.initial_carry(params)
    got = J.gradient_norms_through_time(cell, params, xs, hidden="out")
    by_lag, _ = brute_jacobians(cell, params, xs[None], carry0, hidden="out")
    np.testing.assert_allclose(got, [np_norm(m, "spectral") for m in by_lag[0]], rtol=2e-4, atol=1e-6)
    # The leaf index names the same leaf (dict leaves flatten in key order: acc, out).
    np.testing.assert_allclose(J.gradient_norms_through_time(cell, params, xs, hidden=1), got, rtol=1e-6)
    with pytest.raises(ValueError, match=r"hidden='h' names no leaf.*\['acc'\].*\['out'\]"):
        J.gradient_norms_through_time(cell, params, xs)


# ----------------------------------------------------------------------------- the analytic linear RNN


def test_linear_rnn_is_exact_in_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        n, Tn = 5, 40
        u = rng.normal(size=(n, n)) / math.sqrt(n)
        cell = linear_cell(u.astype(np.float64))
        params = cell.init(jax.random.key(0), 2)
        xs = jnp.asarray(rng.normal(size=(Tn, 2)))
        powers = [np.linalg.matrix_power(u, k) for k in range(Tn)]
        for norm, ord_ in (("spectral", 2), ("frobenius", "fro")):
            got = np.asarray(J.gradient_norms_through_time(cell, params, xs, norm=norm))
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, [np.linalg.norm(p, ord_) for p in powers], rtol=1e-10)
        spectra = np.asarray(J.singular_value_spectra(cell, params, xs))
        # Singular values far below the top one are only known to eps * top, as for any SVD.
        np.testing.assert_allclose(spectra, [np.linalg.svd(p, compute_uv=False) for p in powers], rtol=1e-9, atol=1e-13)
        # d h_T / d x_t = W U^(T-1-t) (transposed), exactly.
        w = np.asarray(params["w"])
        got_in = np.asarray(J.input_gradient_norms(cell, params, xs))
        np.testing.assert_allclose(got_in, [np.linalg.norm(w @ powers[Tn - 1 - t], 2) for t in range(Tn)], rtol=1e-10)
        # Step Jacobians are U^T (rows: outputs) at every step, and their products give the same norms.
        jac = J.state_jacobians(cell, params, xs)
        np.testing.assert_allclose(jac.h.h, np.broadcast_to(u.T, (Tn, n, n)), rtol=1e-12)
        np.testing.assert_allclose(J.product_norms(jac.h.h), J.gradient_norms_through_time(cell, params, xs), rtol=1e-10)


def _backward_products(js):
    """By hand: [I, J_{T-1}, J_{T-1} J_{T-2}, ..., J_{T-1} ... J_1] (the chain rule's order)."""
    out, P = [], np.eye(js.shape[-1])
    for J_t in js[::-1]:
        out.append(P)
        P = P @ J_t
    return out


@pytest.mark.parametrize("norm, ord_", [("spectral", 2), ("frobenius", "fro")])
def test_product_norms_of_non_commuting_jacobians_match_products_by_hand(norm, ord_):
    # A different random matrix at every step, so the order of the product matters (the linear
    # RNN's U^k and diagonal Jacobians commute, and a product taken in the wrong order passes them).
    rng = np.random.default_rng(4)
    js = rng.normal(size=(3, 12, 4, 4)) / 2  # [b, T, n, n]
    assert not np.allclose(js[0, 0] @ js[0, 1], js[0, 1] @ js[0, 0])
    want = np.array([[np.linalg.norm(P, ord_) for P in _backward_products(j)] for j in js])
    with jax.enable_x64(True):
        f = lambda j: J.product_norms(j, norm=norm)
        for g in (f, jax.jit(f)):
            got = g(jnp.asarray(js))
            chex.assert_shape(got, (3, 12))
            chex.assert_type(got, jnp.float64)
            np.testing.assert_allclose(got, want, rtol=1e-12)
            np.testing.assert_allclose(J.product_norms(jnp.asarray(js), norm=norm, log=True), np.log(want), rtol=1e-12)
    # float32, scaled by 100 at every step: the plain products overflow float32 (100^12 * ...),
    # the rescaled log-norms still match the float64 products by hand
    big = (100 * js).astype(np.float32)
    want_big = np.array([[np.log(np.linalg.norm(P, ord_)) for P in _backward_products(j.astype(np.float64))] for j in big])
    np.testing.assert_allclose(J.product_norms(jnp.asarray(big), norm=norm, log=True), want_big, rtol=1e-5, atol=1e-5)
    # the product in the wrong order, J_{T-k} ... J_{T-1}, has other norms: the test above can tell
    wrong = [np.linalg.norm(np.linalg.multi_dot([np.eye(4), *js[0, 12 - k :]]), ord_) for k in range(2, 12)]
    assert not np.allclose(wrong, want[0, 2:], rtol=1e-3)


def test_product_norms_of_tanh_rnn_jacobians_match_products_by_hand():
    # The state Jacobians of a real cell, diag(1 - h_t^2) U^T, change every step and do not commute.
    cell, params, xs_b = setup("rnn_tanh", key=5)
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        xs64 = jnp.asarray(xs_b, jnp.float64)
        js = np.asarray(J.state_jacobians(cell, params64, xs64).h.h)  # [b, T, H, H]
        want = np.array([[np.linalg.norm(P, 2) for P in _backward_products(j)] for j in js])
        np.testing.assert_allclose(J.product_norms(jnp.asarray(js)), want, rtol=1e-12)
        np.testing.assert_allclose(J.gradient_norms_through_time(cell, params64, xs64), want, rtol=1e-10)


RADIUS_CELL = linear_cell(np.eye(16, dtype=np.float32))  # one cell: U lives in params, so one compile serves all radii


@jax.jit
def radius_measurements(params, xs):
    log_g = J.gradient_norms_through_time(RADIUS_CELL, params, xs, log=True)
    plain = J.gradient_norms_through_time(RADIUS_CELL, params, xs)
    return log_g, plain, J.decay_rate(log_g, log=True), J.lyapunov_exponent(RADIUS_CELL, params, xs)


@pytest.mark.parametrize("radius", [0.5, 0.9, 1.0, 1.5])
def test_linear_rnn_known_radius_gives_known_decay_rate(radius):
    """U = radius * Q (Q orthogonal): every singular value of U^k is radius^k, so the fitted rate,
    the Lyapunov exponent and the log-norms are exactly log(radius), far past float32's range."""
    n, Tn = 16, 1000
    q = np.linalg.qr(np.random.default_rng(2).normal(size=(n, n)))[0]
    params = {**RADIUS_CELL.init(jax.random.key(0), 1), "u": jnp.asarray(radius * q, jnp.float32)}
    xs = jax.random.normal(jax.random.key(1), (Tn, 1))
    log_g, plain, rate, lyap = radius_measurements(params, xs)
    np.testing.assert_allclose(log_g, np.arange(Tn) * math.log(radius), rtol=1e-4, atol=1e-3)
    assert float(rate) == pytest.approx(math.log(radius), rel=1e-4, abs=1e-6)
    assert float(lyap) == pytest.approx(math.log(radius), rel=1e-4, abs=1e-6)
    if radius == 0.5:  # the plain norms underflow (0.5**999 ~ 1e-301), the log ones do not
        assert float(plain[-1]) == 0.0
        assert np.all(np.isfinite(log_g))


def test_lyapunov_of_diagonal_linear_rnn_is_the_largest_log_eigenvalue():
    cell = linear_cell(np.diag([0.3, 0.7, 0.95]).astype(np.float32))
    params = cell.init(jax.random.key(0), 1)
    xs = jnp.zeros((2, 400, 1))
    got = J.lyapunov_exponent(cell, params, xs, transient=100)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, math.log(0.95), rtol=1e-4)


def test_decay_rate_fits_slope_and_skips_underflow():
    k = jnp.arange(100.0)
    norms = jnp.stack([jnp.exp(-0.2 * k), 3.0 * jnp.exp(0.05 * k)])
    np.testing.assert_allclose(J.decay_rate(norms), [-0.2, 0.05], rtol=1e-4)
    np.testing.assert_allclose(J.decay_rate(jnp.log(norms), log=True), [-0.2, 0.05], rtol=1e-4)
    underflow = jnp.where(k < 50, jnp.exp(-0.3 * k), 0.0)  # log 0 = -inf is left out of the fit
    assert float(J.decay_rate(underflow)) == pytest.approx(-0.3, rel=1e-4)
    assert float(J.decay_rate(norms[0], start=10, stop=20)) == pytest.approx(-0.2, rel=1e-4)
    assert np.isnan(float(J.decay_rate(jnp.zeros(10))))


# ----------------------------------------------------------------------------- jit, vmap, dtypes


def test_jit_and_vmap_over_seeds_match_eager_loop():
    cell = memcell.lstm(H, forget_bias=1.0)
    keys = jax.random.split(jax.random.key(0), 3)
    params = jax.vmap(lambda k: cell.init(k, D))(keys)
    xs = jax.random.normal(jax.random.key(1), (T, D))
    fns = {
        "grad": lambda p: J.gradient_norms_through_time(cell, p, xs, log=True),
        "lyap": lambda p: J.lyapunov_exponent(cell, p, xs),
        "cellpath": lambda p: J.product_norms(J.state_jacobians(cell, p, xs).c.c),
        "loss": lambda p: J.loss_gradient_norms(cell, p, xs, lambda ys: jnp.sum(ys**2)),
    }
    for name, fn in fns.items():
        batched = jax.vmap(fn)(params)
        one = jax.jit(fn)
        loop = np.stack([one(jax.tree.map(lambda a, i=i: a[i], params)) for i in range(3)])
        np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-7, err_msg=name)
    # jit == eager
    p0 = jax.tree.map(lambda a: a[0], params)
    np.testing.assert_allclose(jax.jit(fns["grad"])(p0), fns["grad"](p0), rtol=1e-6)


def test_explicit_carry_and_float64_and_bfloat16_params():
    cell = memcell.gru(H)
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (T, D))
    carry = memcell.cells.GRUCarry(jnp.full((H,), 0.5))
    got = J.gradient_norms_through_time(cell, params, xs, carry=carry)
    want = [np_norm(m, "spectral") for m in brute_jacobians(cell, params, xs[None], carry)[0][0]]
    np.testing.assert_allclose(got, want, rtol=2e-4)
    assert got.dtype == jnp.float32
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        got64 = J.gradient_norms_through_time(cell, p64, xs.astype(jnp.float64), carry=carry)
        assert got64.dtype == jnp.float64
        np.testing.assert_allclose(got64, want, rtol=1e-5)
    # bfloat16 params and inputs (a regression: the norms once ran a bfloat16 SVD, which LAPACK lacks):
    # the same as float32 on the same rounded values, since bfloat16 products accumulate in float32.
    lstm = memcell.lstm(H, param_dtype=jnp.bfloat16)
    p_bf16 = lstm.init(jax.random.key(0), D)
    xs_bf16 = xs.astype(jnp.bfloat16)
    p_f32 = jax.tree.map(lambda a: a.astype(jnp.float32), p_bf16)
    low = J.input_gradient_norms(lstm, p_bf16, xs_bf16)
    ref = J.input_gradient_norms(lstm, p_f32, xs_bf16.astype(jnp.float32))
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, ref, rtol=1e-2, atol=1e-5)
    jac_bf16 = J.state_jacobians(lstm, p_f32, xs).c.c.astype(jnp.bfloat16)
    assert J.product_norms(jac_bf16).dtype == jnp.float32


def test_bare_array_carry_is_its_own_hidden_part():
    cell = Cell(
        lambda key, d: {"w": jax.random.normal(key, (d, 3))},
        lambda params, batch_shape=(): jnp.zeros(tuple(batch_shape) + (3,)),
        lambda params, c, x: (jnp.tanh(0.5 * c + x @ params["w"]),) * 2,
    )
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (T, D))
    got = np.asarray(J.gradient_norms_through_time(cell, params, xs, norm="frobenius"))
    # h_T = tanh(0.5 h_{T-1} + ...): each step multiplies by 0.5 diag(tanh'), at most 0.5 in norm.
    assert got[0] == pytest.approx(math.sqrt(3)) and np.all(got[1:] <= math.sqrt(3) * 0.5 ** np.arange(1, T) + 1e-6)
    with pytest.raises(ValueError, match=r"hidden='y' names no leaf.*<the carry itself>"):
        J.gradient_norms_through_time(cell, params, xs, hidden="y")


# ----------------------------------------------------------------------------- bad input


def test_bad_arguments_raise_clear_errors():
    cell = memcell.lstm(H)
    params = cell.init(jax.random.key(0), D)
    xs = jnp.ones((T, D))
    with pytest.raises(TypeError, match="cell must be a memcell.Cell, got tuple"):
        J.gradient_norms_through_time((1, 2, 3), params, xs)
    with pytest.raises(ValueError, match=r"norm must be one of \['spectral', 'frobenius'\], got 'l1'"):
        J.gradient_norms_through_time(cell, params, xs, norm="l1")
    with pytest.raises(ValueError, match=r"xs must have 2 features.*got shape \(6, 3\)"):
        J.input_gradient_norms(cell, params, jnp.ones((T, 3)))
    with pytest.raises(ValueError, match=r"xs must have shape \[\.\.\., T, D\].*got shape \(6,\)"):
        J.gradient_norms_through_time(cell, params, jnp.ones((T,)))
    with pytest.raises(TypeError, match="xs must be a floating-point array, got dtype int32"):
        J.gradient_norms_through_time(cell, params, jnp.ones((T, D), jnp.int32))
    with pytest.raises(ValueError, match=r"xs must hold at least one time step, got shape \(0, 2\)"):
        J.gradient_norms_through_time(cell, params, jnp.ones((0, D)))
    with pytest.raises(ValueError, match="carry must have the structure"):
        J.gradient_norms_through_time(cell, params, xs, carry=memcell.cells.GRUCarry(jnp.zeros(H)))
    with pytest.raises(ValueError, match=r"carry leaves must have shape \(3,\).*got shape \(4,\)"):
        J.gradient_norms_through_time(cell, params, xs, carry=memcell.cells.LSTMCarry(jnp.zeros(4), jnp.zeros(4)))
    with pytest.raises(ValueError, match="hidden='y' names no leaf"):
        J.gradient_norms_through_time(cell, params, xs, hidden="y")
    with pytest.raises(ValueError, match="hidden must index one of the carry's 2 leaves, got 5"):
        J.gradient_norms_through_time(cell, params, xs, hidden=5)
    with pytest.raises(TypeError, match="hidden must be a carry field name"):
        J.gradient_norms_through_time(cell, params, xs, hidden=1.5)
    with pytest.raises(TypeError, match="log must be a bool, got str 'yes'"):
        J.gradient_norms_through_time(cell, params, xs, log="yes")
    with pytest.raises(TypeError, match="flat must be a bool"):
        J.state_jacobians(cell, params, xs, flat=1)
    with pytest.raises(ValueError, match=r"jacobians must have shape \[\.\.\., T, n, n\].*got shape \(5, 3, 4\)"):
        J.product_norms(jnp.ones((5, 3, 4)))
    with pytest.raises(TypeError, match="jacobians must be a floating-point array, got dtype int32"):
        J.product_norms(jnp.ones((5, 3, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"transient must lie in \[0, T-1=5\].*got 6"):
        J.lyapunov_exponent(cell, params, xs, transient=6)
    with pytest.raises(TypeError, match="transient must be an int"):
        J.lyapunov_exponent(cell, params, xs, transient=1.0)
    with pytest.raises(ValueError, match=r"start and stop must satisfy.*T=10, got 5 and 6"):
        J.decay_rate(jnp.ones(10), start=5, stop=6)
    with pytest.raises(TypeError, match="norms must be a floating-point array, got dtype int32"):
        J.decay_rate(jnp.ones(10, jnp.int32))
    with pytest.raises(ValueError, match=r"probes must have shape \(6, 3\).*got shape \(6, 4\)"):
        J.unroll_with_probes(cell, params, xs, jnp.zeros((T, 4)))
    with pytest.raises(TypeError, match="probes must be a floating-point array"):
        J.unroll_with_probes(cell, params, xs, jnp.zeros((T, H), jnp.int32))
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        J.loss_gradient_norms(cell, params, xs, "mse")
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar, got shape \(6, 3\)"):
        J.loss_gradient_norms(cell, params, xs, lambda ys: ys)


# ----------------------------------------------------------------------------- the story, measured on fixed seeds

STORY_T, STORY_H = 200, 32


def story_inputs():
    return jax.random.normal(jax.random.key(1), (STORY_T, 1))


def test_tanh_rnn_vanishes_geometrically_at_a_rate_set_by_its_recurrent_weights():
    xs = story_inputs()
    rates = {}
    for radius in (0.5, 0.9, 1.0):
        cell = memcell.rnn(STORY_H, recurrent_scale=radius)
        params = cell.init(jax.random.key(0), 1)
        log_g = np.asarray(J.gradient_norms_through_time(cell, params, xs, log=True))
        # ||d h_T / d h_{T-k}|| <= ||U||^k = radius^k, since tanh' <= 1 (U is radius * orthogonal).
        assert np.all(log_g <= np.arange(STORY_T) * math.log(radius) + 1e-4)
        rates[radius] = float(J.decay_rate(log_g, log=True))
        lyap = float(J.lyapunov_exponent(cell, params, xs, transient=20))
        assert lyap == pytest.approx(rates[radius], rel=0.1)  # two measurements of one rate
        if radius == 0.9:
            assert log_g[100] - log_g[1] < math.log(1e-6)  # orders of magnitude lost over 100 steps
    assert rates[0.5] < rates[0.9] < rates[1.0] < 0


def lstm_forget_gates(cell, params, xs):
    """log f_t along the trajectory, from the LSTM equations (gate blocks i, f, g, o), independent
    of memcell.jacobian."""
    _, ys = memcell.unroll(cell, params, xs)
    h_prev = jnp.concatenate([jnp.zeros((1, STORY_H)), ys[:-1]])
    z = xs @ params.w_x + h_prev @ params.w_h + params.b
    return np.asarray(jax.nn.log_sigmoid(z[:, STORY_H : 2 * STORY_H]), np.float64)


STORY_LSTMS = {
    "forget_bias_0": dict(forget_bias=0.0),
    "forget_bias_5": dict(forget_bias=5.0),
    "chrono_1000": dict(init="chrono", max_timescale=1000),
}


@pytest.mark.parametrize("name", sorted(STORY_LSTMS))
def test_lstm_cell_path_decays_at_the_rate_its_forget_gates_set(name):
    xs = story_inputs()
    cell = memcell.lstm(STORY_H, **STORY_LSTMS[name])
    params = cell.init(jax.random.key(0), 1)
    log_cell = np.asarray(J.product_norms(J.state_jacobians(cell, params, xs).c.c, log=True))
    log_f = lstm_forget_gates(cell, params, xs)
    # d c_T / d c_{T-k} along the cell path is prod diag(f): its spectral norm is the largest unit's product.
    envelope = np.max(np.cumsum(log_f[::-1], axis=0), axis=1)  # envelope[k-1]: lag k
    np.testing.assert_allclose(log_cell[1:], envelope[:-1], rtol=1e-4, atol=1e-3)
    # The fitted rate matches the mean of log f (of the unit that keeps the most) along the trajectory.
    rate = float(J.decay_rate(log_cell, log=True))
    mean_log_f = float(np.max(log_f[1:].mean(axis=0)))
    assert rate == pytest.approx(mean_log_f, rel=0.15)

    log_h = np.asarray(J.gradient_norms_through_time(cell, params, xs, log=True))
    if name == "forget_bias_0":  # f ~ 0.5: both paths lose more than 10 orders of magnitude by lag 100
        assert log_cell[100] < math.log(1e-10) and log_h[100] < math.log(1e-10)
    else:  # f near 1: the memory cell keeps the gradient at lag 100
        assert log_cell[100] > math.log(0.5)
        assert log_h[100] > math.log(1e-3)


def test_docstring_examples():
    import doctest

    import importlib
    import pkgutil

    # memcell.jacobian is a package: its examples live in the submodules that define the functions
    results = [doctest.testmod(importlib.import_module(f"memcell.jacobian.{m.name}"), optionflags=doctest.ELLIPSIS)
               for m in pkgutil.iter_modules(J.__path__)]
    assert sum(r.attempted for r in results) >= 6 and sum(r.failed for r in results) == 0


def test_carry_gates_are_the_lstm_forget_gates_and_the_linear_cells_coefficients():
    xs = story_inputs()[:40]
    for options in STORY_LSTMS.values():
        cell = memcell.lstm(STORY_H, **options)
        params = cell.init(jax.random.key(0), 1)
        log_f = np.log(np.asarray(J.carry_gates(cell, params, xs), np.float64))
        np.testing.assert_allclose(log_f, lstm_forget_gates(cell, params, xs), rtol=1e-4, atol=1e-6)
    nfg = memcell.lstm(4, forget_gate=False)
    assert np.all(np.asarray(J.carry_gates(nfg, nfg.init(jax.random.key(0), 1), xs)) == 1.0)
    # a LinearSpec cell's gate on its own past is its coefficient a_t, batched over sequences
    xs2 = jax.random.normal(jax.random.key(3), (2, 9, 3))
    for name, factory in memcell.cells.CELLS.items():
        cell = factory(4)
        if not isinstance(cell.spec, memcell.LinearSpec):
            continue
        params = cell.init(jax.random.key(0), 3)
        a, _ = cell.spec.coefficients(params, xs2)
        a = jnp.exp(a) if cell.spec.log_space else a
        np.testing.assert_allclose(np.asarray(J.carry_gates(cell, params, xs2, field="h")), np.asarray(a),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match=r"field='z' names no leaf of the carry, whose leaves are \['.h', '.c'\]"):
        J.carry_gates(nfg, nfg.init(jax.random.key(0), 1), xs, field="z")


# ----------------------------------------------------------------------------- slow science checks


def load_experiment():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "vanishing_gradients.py"
    spec = importlib.util.spec_from_file_location("vanishing_gradients", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_lstm_trained_on_adding_problem_keeps_the_gradient_at_lag_100(tmp_path):
    """The demo's story for one cell, through the demo's own code (``run_cell``, on memcell.train.fit)."""
    from memcell import tasks

    vg = load_experiment()
    cfg = vg.Config(train_steps=400, train_len=50)
    cell, _ = vg.make_cell("lstm_fb0", cfg)
    xs = jnp.asarray(tasks.adding(201, n_test=4, seed=cfg.seed).test["xs"])
    train_task = tasks.adding(cfg.train_len, n_test=cfg.batch_size, seed=cfg.seed)
    (tmp_path / "logs").mkdir()
    res = vg.run_cell("lstm_fb0", cell, 0, train_task, xs, cfg, tmp_path)
    assert res["final_mse"] < 0.3 * vg.BASELINE_MSE  # it learned the task
    assert res["init"]["log_norms"][100] < math.log(1e-10)  # forget bias 0 at init: gone by lag 100
    assert res["trained"]["log_norms"][100] > math.log(1e-4)  # after training: kept within 1e-4 at lag 100
    # dL/dh at the first step of the sequence (the largest lag) grew by orders of magnitude with training.
    assert res["profiles"]["last"][-1] > 1e3 * res["profiles"]["first"][-1]
    # The cell path after training still decays at the rate of its forget gates.
    trained = res["trained"]
    assert trained["cell_path_rate"] == pytest.approx(trained["mean_log_f_best_unit"], rel=0.15)


@pytest.mark.slow
def test_lags_up_to_1000():
    xs = jax.random.normal(jax.random.key(1), (1001, 1))
    rnn = memcell.rnn(STORY_H, recurrent_scale=0.9)
    log_rnn = J.gradient_norms_through_time(rnn, rnn.init(jax.random.key(0), 1), xs, log=True)
    assert np.all(np.isfinite(log_rnn)) and float(log_rnn[1000]) < math.log(1e-100)
    chrono = memcell.lstm(STORY_H, init="chrono", max_timescale=1000)
    p = chrono.init(jax.random.key(0), 1)
    log_lstm = J.gradient_norms_through_time(chrono, p, xs, log=True)
    assert float(log_lstm[1000]) > math.log(1e-6)
    log_cell = J.product_norms(J.state_jacobians(chrono, p, xs).c.c, log=True)
    assert float(log_cell[1000]) > math.log(0.1)  # the slowest forget gate: 1 - 1/999 a step


@pytest.mark.slow
def test_experiment_end_to_end_small(tmp_path):
    vg = load_experiment()
    cfg = vg.Config(
        eval_len=151, eval_seqs=2, train_steps=30, cells="rnn_0.9,lstm_chrono", out_dir=str(tmp_path), docs_dir=""
    )
    results = vg.main(cfg)
    rnn, lstm = results["rnn_0.9"], results["lstm_chrono"]
    assert len(rnn["init"]["log_norms"]) == 151
    assert rnn["init"]["rate"] < -0.1 < lstm["init"]["rate"] < 0.01
    assert lstm["init"]["cell_path_rate"] == pytest.approx(lstm["init"]["mean_log_f_best_unit"], rel=0.15)
    import json

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"]["rnn_0.9"]["init"]["rate"] == pytest.approx(rnn["init"]["rate"])
    assert f"{rnn['init']['rate']:+.4f}" in (tmp_path / "report.md").read_text()
