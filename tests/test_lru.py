"""LRU and RG-LRU: NumPy references, shapes, vmap/jit/loop, lengths/resets/reverse, gradients,
dtypes, inits, the LinearSpec against the step, the jacobian toolkit on a complex carry, bad input."""

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import memcell
from memcell.jacobian import (
    decay_rate,
    gradient_norms_through_time,
    input_gradient_norms,
    loss_gradient_norms,
    lyapunov_exponent,
    singular_value_spectra,
    state_jacobians,
)

H, D = 4, 3
CONFIGS = {  # name: (factory, options, input size)
    "lru": (memcell.lru, {"r_min": 0.4, "r_max": 0.95, "max_phase": math.pi}, D),
    "rglru": (memcell.rglru, {}, H),  # the paper's cell reads inputs of the hidden width
    "rglru_proj": (memcell.rglru, {}, D),  # another width: projected by w_in (input_projection=None)
}
names = pytest.mark.parametrize("name", list(CONFIGS))


def cells(*fast):
    """All configs, those not in ``fast`` marked slow (``make test-slow``): keeps ``make test`` in budget."""
    return pytest.mark.parametrize("name", [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in CONFIGS])


def setup(name, seed=0, dtype=jnp.float32, **extra):
    factory, kw, d = CONFIGS[name]
    cell = factory(H, **kw, param_dtype=dtype, **extra)
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = cell.init(k1, d)
    # Random values in every param: zero gate biases would hide a swapped r/i block.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(k2, len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    return cell, params, d


def random_carry(cell, params, batch_shape, key):
    """A nonzero carry of the cell's structure and dtypes (complex for the LRU)."""
    zero = cell.initial_carry(params, batch_shape)

    def draw(a):
        if jnp.iscomplexobj(a):
            re_, im_ = jax.random.normal(key, (2,) + a.shape)
            return (0.5 * (re_ + 1j * im_)).astype(a.dtype)
        return (0.5 * jax.random.normal(key, a.shape)).astype(a.dtype)

    return jax.tree.map(draw, zero)


# --------------------------------------------------------------------------- NumPy reference


def np_step(name, p, h, u):
    """One step of each cell, written again in NumPy (float64) from the papers' equations."""
    p = {k: (None if v is None else np.asarray(v, np.float64)) for k, v in p._asdict().items()}
    if name == "lru":
        lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
        B, C = p["b_re"] + 1j * p["b_im"], p["c_re"] + 1j * p["c_im"]
        h = lam * h + np.exp(p["gamma_log"]) * (u @ B)
        return h, (h @ C).real + p["d"] * u
    x = u if p["w_in"] is None else u @ p["w_in"]
    z = 1 / (1 + np.exp(-(x @ p["w_gates"] + p["b_gates"])))
    r, i = z[..., :H], z[..., H:]
    a = np.exp(-8.0 * np.log1p(np.exp(p["lam"])) * r)
    h = a * h + np.sqrt(1 - a**2) * (i * x)
    return h, h


@cells("lru", "rglru_proj")
def test_step_matches_numpy_reference(name):
    cell, params, d = setup(name, seed=1)
    xs = np.asarray(jax.random.normal(jax.random.key(2), (2, 6, d)))
    c0 = random_carry(cell, params, (2,), jax.random.key(3))
    carry, ys = memcell.unroll(cell, params, jnp.asarray(xs), c0)
    h = np.asarray(jax.tree.leaves(c0)[0]).astype(np.complex128 if name == "lru" else np.float64)
    ref = []
    for t in range(xs.shape[1]):
        h, y = np_step(name, params, h, xs[:, t])
        ref.append(y)
    np.testing.assert_allclose(ys, np.stack(ref, 1), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(jax.tree.leaves(carry)[0], h, rtol=2e-5, atol=2e-5)


# --------------------------------------------------------------------------- shapes, vmap, jit, loop


@names
def test_shapes_and_dtypes_unbatched_and_batched(name):
    cell, params, d = setup(name)
    out = d if name == "lru" else H  # the LRU's output has the input's width
    carry_dtype = jnp.complex64 if name == "lru" else jnp.float32
    for batch in [(), (2, 3)]:
        carry = cell.initial_carry(params, batch)
        new, y = cell.step(params, carry, jnp.ones(batch + (d,)))
        chex.assert_shape(y, batch + (out,))
        chex.assert_trees_all_equal_shapes_and_dtypes(new, carry)
        chex.assert_tree_shape_suffix(new, batch + (H,))
        chex.assert_type(jax.tree.leaves(new), carry_dtype)
        chex.assert_type(y, jnp.float32)


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@cells("lru")
def test_vmap_equals_broadcasting(name):
    cell, params, d = setup(name)
    xs = jax.random.normal(jax.random.key(3), (3, 4, d))
    batched = memcell.unroll(cell, params, xs)
    mapped = jax.vmap(lambda x: memcell.unroll(cell, params, x))(xs)
    chex.assert_trees_all_close(batched, mapped, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@cells("lru")
def test_jit_equals_eager(name):
    cell, params, d = setup(name)
    xs = jax.random.normal(jax.random.key(4), (2, 5, d))
    with jax.disable_jit():
        eager = memcell.unroll(cell, params, xs)
    jitted = jax.jit(lambda p, x: memcell.unroll(cell, p, x))(params, xs)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@cells("lru")
def test_unroll_equals_python_loop_and_is_causal(name):
    cell, params, d = setup(name)
    xs = jax.random.normal(jax.random.key(5), (2, 6, d))
    carry = cell.initial_carry(params, (2,))
    ys = []
    for t in range(xs.shape[1]):
        carry, y = cell.step(params, carry, xs[:, t])
        ys.append(y)
    chex.assert_trees_all_close(memcell.unroll(cell, params, xs), (carry, jnp.stack(ys, 1)), rtol=1e-5, atol=1e-6)
    # Causality: ys[t] depends on xs[:t+1] only, and on xs[t] itself.
    jac = jax.jacrev(lambda x: memcell.unroll(cell, params, x)[1])(xs[0])  # [T, out, T, d]
    for t in range(xs.shape[1]):
        assert float(jnp.abs(jac[t, :, t + 1 :]).max(initial=0.0)) == 0.0
        assert float(jnp.abs(jac[t, :, t]).max()) > 0.0


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@cells("lru")
def test_lengths_resets_and_reverse(name):
    cell, params, d = setup(name)
    xs = jax.random.normal(jax.random.key(6), (3, 6, d))
    c0 = random_carry(cell, params, (3,), jax.random.key(7))
    full = memcell.unroll(cell, params, xs, c0)
    two = memcell.unroll(cell, params, xs[:, :2], c0)
    # Lengths (0 included): the final carry is each sequence's own last one, padding outputs are 0.
    carry, ys = memcell.unroll(cell, params, xs, c0, lengths=jnp.array([6, 2, 0]))
    pick = lambda tree, b: jax.tree.map(lambda a: a[b], tree)
    chex.assert_trees_all_close([pick(carry, b) for b in range(3)], [pick(full[0], 0), pick(two[0], 1), pick(c0, 2)],
                                rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ys[0], full[1][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ys[1, :2], two[1][1], rtol=1e-6, atol=1e-6)
    assert bool((ys[1, 2:] == 0).all()) and bool((ys[2] == 0).all())
    # Resets: from a flagged step on, the sequence restarts from the initial carry (a segment reset).
    resets = jnp.zeros((6,), bool).at[4].set(True)
    _, ys_r = memcell.unroll(cell, params, xs, c0, resets=resets)
    _, ys_seg = memcell.unroll(cell, params, xs[:, 4:], c0)
    np.testing.assert_allclose(ys_r[:, 4:], ys_seg, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ys_r[:, :4], full[1][:, :4], rtol=1e-6, atol=1e-6)
    # Reverse: reading backwards is reading the flipped sequence, outputs aligned with the inputs.
    carry_rev, ys_rev = memcell.unroll(cell, params, xs[:, ::-1], c0, reverse=True)
    chex.assert_trees_all_close((carry_rev, ys_rev[:, ::-1]), full, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- gradients and dtypes


@cells()  # ~45 s each on the shared machine (as the GRU's), so all three run with `make test-slow`
def test_check_grads_float64_order2(name):
    with jax.enable_x64(True):
        cell, params, d = setup(name, dtype=jnp.float64, seed=8)
        xs = jax.random.normal(jax.random.key(9), (3, d), jnp.float64)
        c0 = random_carry(cell, params, (), jax.random.key(10))
        assert jax.tree.leaves(c0)[0].dtype == (jnp.complex128 if name == "lru" else jnp.float64)

        @jax.jit
        def f(params, xs):
            carry, ys = memcell.unroll(cell, params, xs, c0)
            h = jax.tree.leaves(carry)[0]
            return jnp.sum(ys**2) + jnp.sum(jnp.sin(jnp.real(h))) + jnp.sum(jnp.cos(jnp.imag(h)))

        check_grads(f, (params, xs), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5, eps=1e-5)


@cells("lru", "rglru_proj")
def test_bfloat16_compute_keeps_float32_carry_and_stays_close(name):
    _, params, d = setup(name)
    factory, kw, _ = CONFIGS[name]
    xs = jax.random.normal(jax.random.key(11), (2, 8, d))
    carry16, ys16 = memcell.unroll(factory(H, **kw, dtype=jnp.bfloat16), params, xs)
    _, ys32 = memcell.unroll(factory(H, **kw), params, xs)
    assert ys16.dtype == jnp.float32
    assert jax.tree.leaves(carry16)[0].dtype == (jnp.complex64 if name == "lru" else jnp.float32)
    err = float(jnp.max(jnp.abs(ys16 - ys32)))
    assert 0 < err < 0.05  # bf16 rounding is visible but small


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@cells("lru", "rglru")
def test_bfloat16_params_keep_float32_carry(name):
    factory, kw, d = CONFIGS[name]
    cell = factory(H, **kw, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    params = cell.init(jax.random.key(0), d)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    carry, ys = memcell.unroll(cell, params, jnp.ones((4, d), jnp.bfloat16))
    assert ys.dtype == jnp.float32
    assert jax.tree.leaves(carry)[0].dtype == (jnp.complex64 if name == "lru" else jnp.float32)
    assert bool(jnp.all(jnp.isfinite(ys)))


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
def test_rglru_gradient_is_finite_where_a_rounds_to_one():
    # r = sigmoid(-200) = 0 in float32, so log a = 0 and 1 - a^2 = 0: the exact derivative of the
    # sqrt is inf there (inf * 0 = nan); the bounded one (recurrentgemma's) keeps it finite.
    cell = memcell.rglru(H)
    params = cell.init(jax.random.key(0), H)
    params = params._replace(b_gates=params.b_gates.at[:H].set(-200.0))
    g = jax.grad(lambda p: memcell.unroll(cell, p, jnp.ones((5, H)))[1].sum())(params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))


# --------------------------------------------------------------------------- inits


def _ks_uniform(samples, lo, hi):
    """The Kolmogorov-Smirnov distance between the samples and U(lo, hi)."""
    x = np.sort(np.asarray(samples, np.float64))
    cdf = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    n = len(x)
    return max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))


@pytest.mark.parametrize("r_min, r_max, max_phase", [(0.4, 0.95, math.pi / 10), (0.0, 1.0, 2 * math.pi)])
def test_lru_ring_init(r_min, r_max, max_phase):
    # The paper's ring: |lambda|^2 ~ U[r_min^2, r_max^2) (uniform in area), arg ~ U[0, max_phase),
    # gamma = sqrt(1 - |lambda|^2), B ~ N(0, 1/(2d)), C ~ N(0, 1/h). A draw uniform in |lambda|
    # rather than in area, or a phase range of 2 pi, fails the KS tests.
    n, d = 2000, 2
    params = memcell.lru(n, r_min=r_min, r_max=r_max, max_phase=max_phase).init(jax.random.key(1), d)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    mod, phase = np.exp(-np.exp(p.nu_log)), np.exp(p.theta_log)
    assert mod.min() >= r_min * (1 - 1e-6) and mod.max() < r_max
    assert phase.min() >= 0 and phase.max() <= max_phase * (1 + 1e-6)
    ks_crit = 1.95 / np.sqrt(n)  # the KS critical value at p = 0.001
    assert _ks_uniform(mod**2, r_min**2, r_max**2) < ks_crit
    assert _ks_uniform(phase, 0.0, max_phase) < ks_crit
    np.testing.assert_allclose(np.exp(p.gamma_log), np.sqrt(1 - mod**2), rtol=1e-4)
    assert np.std(p.b_re) == pytest.approx(1 / np.sqrt(2 * d), rel=0.05)
    assert np.std(p.c_im) == pytest.approx(1 / np.sqrt(n), rel=0.05)
    assert not np.array_equal(p.b_re, p.b_im)


def test_rglru_input_projection_exists_where_asked_or_where_the_widths_differ():
    shapes = lambda cell, d: jax.tree.map(jnp.shape, cell.init(jax.random.key(0), d).w_in)
    assert shapes(memcell.rglru(4), 4) is None and shapes(memcell.rglru(4, input_projection=False), 4) is None
    assert shapes(memcell.rglru(4), 3) == (3, 4) and shapes(memcell.rglru(4, input_projection=True), 4) == (4, 4)


def test_rglru_init_draws_a_to_the_c_uniform():
    # Griffin: Lambda is set so that a^c = exp(-c softplus(Lambda)) (the decay at r = 1) is
    # uniform in [0.9, 0.999]; recurrentgemma's ring on a itself would fail the KS test.
    n = 2000
    params = memcell.rglru(n).init(jax.random.key(2), n)
    a_c = np.exp(-8.0 * np.log1p(np.exp(np.asarray(params.lam, np.float64))))
    assert a_c.min() >= 0.9 * (1 - 1e-6) and a_c.max() <= 0.999 * (1 + 1e-6)
    assert _ks_uniform(a_c, 0.9, 0.999) < 1.95 / np.sqrt(n)
    np.testing.assert_array_equal(params.b_gates, 0.0)


# --------------------------------------------------------------------------- the LinearSpec


@names
def test_spec_coefficients_and_readout_match_the_step(name):
    cell, params, d = setup(name, seed=12)
    spec = cell.spec
    assert isinstance(spec, memcell.types.LinearSpec) and spec.describes(cell) and not spec.log_space
    xs = jax.random.normal(jax.random.key(13), (2, 5, d))
    c0 = random_carry(cell, params, (2,), jax.random.key(14))
    a, b = spec.coefficients(params, xs)
    h0 = jax.tree.leaves(c0)[0]
    chex.assert_shape([a, b], (2, 5, H))
    chex.assert_type([a, b], h0.dtype)
    h, hs = h0, []
    for t in range(xs.shape[1]):
        h = a[:, t] * h + b[:, t]
        hs.append(h)
    hs = jnp.stack(hs, 1)
    carry, ys = memcell.unroll(cell, params, xs, c0)
    np.testing.assert_allclose(hs[:, -1], jax.tree.leaves(carry)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spec.readout(params, hs, xs), ys, rtol=1e-5, atol=1e-6)


# tests/test_parallel.py checks the LRU forwards in make test; this fuller check runs with the slow ones
@cells()
@pytest.mark.parametrize("reverse", [False, True])
def test_parallel_path_equals_reference_values_and_gradients(name, reverse):
    # memcell.parallel's chunked scan over the spec's coefficients (chunks of 3 over T=7, so the
    # scan crosses chunk boundaries) against lax.scan over the step: lengths with a 0, resets,
    # each direction and a nonzero (complex, for the LRU) initial carry, values and gradients.
    cell, params, d = setup(name, seed=15)
    assert (memcell.paths.why_not("parallel", cell) is None)
    xs = jax.random.normal(jax.random.key(16), (3, 7, d))
    c0 = random_carry(cell, params, (3,), jax.random.key(17))
    kw = {"lengths": jnp.array([7, 4, 0]), "resets": jnp.zeros((3, 7), bool).at[0, 2].set(True).at[1, 1].set(True)}

    def run(parallel, p, x, c):
        go = (lambda *a, **k: memcell.paths.run(*a, chunk_size=3, **k, backend="parallel")) if parallel else memcell.unroll
        return go(cell, p, x, c, reverse=reverse, **kw)

    chex.assert_trees_all_close(run(True, params, xs, c0), run(False, params, xs, c0), rtol=1e-5, atol=1e-5)

    def loss(parallel, p, x, c):
        carry, ys = run(parallel, p, x, c)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.abs(jax.tree.leaves(carry)[0]) ** 2)

    grads = [jax.grad(loss, argnums=(1, 2, 3))(par, params, xs, c0) for par in (True, False)]
    chex.assert_trees_all_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(grads[1][1]).max()) > 0  # the inputs do reach the loss


# --------------------------------------------------------------------------- the jacobian toolkit on a complex carry


def _lru_with_moduli(moduli, phases, d=2):
    cell = memcell.lru(len(moduli))
    params = cell.init(jax.random.key(0), d)
    return cell, params._replace(
        nu_log=jnp.log(-jnp.log(jnp.asarray(moduli, jnp.float32))),
        theta_log=jnp.log(jnp.asarray(phases, jnp.float32)),
    )


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
def test_jacobian_toolkit_on_lru_measures_max_modulus():
    # x' = lambda x + ...: d x_T / d x_{T-k} = diag(lambda^k), whose norm (as a real map of
    # (Re x, Im x)) is max |lambda|^k, whatever the phases and inputs.
    moduli, phases = [0.9, 0.6, 0.3], [0.5, 2.0, 3.0]
    cell, params = _lru_with_moduli(moduli, phases)
    xs = jax.random.normal(jax.random.key(1), (16, 2))
    g = gradient_norms_through_time(cell, params, xs, log=True)
    k = np.arange(16)
    np.testing.assert_allclose(g, k * np.log(0.9), atol=1e-4)
    np.testing.assert_allclose(decay_rate(g, log=True), np.log(0.9), rtol=1e-4)
    frob = gradient_norms_through_time(cell, params, xs, norm="frobenius")  # sqrt(2 sum |lambda|^2k)
    np.testing.assert_allclose(frob[:5], np.sqrt(2 * (np.asarray(moduli)[:, None] ** (2 * k[:5])).sum(0)), rtol=1e-5)
    # Lyapunov: the top modulus, once the tangent vector has aligned with its unit.
    lyap = lyapunov_exponent(cell, params, xs, transient=10)  # (0.6/0.9)^10: aligned
    np.testing.assert_allclose(lyap, np.log(0.9), atol=1e-3)
    # Step Jacobians: real 2x2 blocks per unit; the flat one's singular values are the moduli, twice.
    jac = state_jacobians(cell, params, xs[:4])
    chex.assert_shape(jac.x.x, (4, 3, 2, 3, 2))
    flat = state_jacobians(cell, params, xs[:4], flat=True)
    sv = np.linalg.svd(np.asarray(flat[0]), compute_uv=False)
    np.testing.assert_allclose(np.sort(sv), np.sort(np.repeat(moduli, 2)), rtol=1e-5)
    spectra = singular_value_spectra(cell, params, xs[:6])
    np.testing.assert_allclose(spectra[2], np.repeat(np.asarray(moduli) ** 2, 2), rtol=1e-5)
    # The rest runs and gives finite values.
    assert bool(jnp.all(jnp.isfinite(input_gradient_norms(cell, params, xs))))


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
def test_loss_gradient_norms_on_lru_are_those_of_the_real_and_imaginary_parts():
    cell, params = _lru_with_moduli([0.9, 0.5], [0.3, 1.0])
    xs = jax.random.normal(jax.random.key(2), (4, 2))
    loss_fn = lambda ys: jnp.sum(ys**2)
    got = loss_gradient_norms(cell, params, xs, loss_fn)

    # By hand: probes on Re x and Im x, both real, through the step and the LRU's readout.
    def loss(p_re, p_im):
        x, ys = cell.initial_carry(params).x, []
        for t in range(xs.shape[0]):
            (x,), _ = cell.step(params, memcell.cells.LRUCarry(x), xs[t])
            x = x + jax.lax.complex(p_re[t], p_im[t])
            ys.append(cell.spec.readout(params, x, xs[t]))
        return loss_fn(jnp.stack(ys))

    zeros = jnp.zeros((4, 2))
    g_re, g_im = jax.grad(loss, argnums=(0, 1))(zeros, zeros)
    np.testing.assert_allclose(got, np.sqrt((g_re**2 + g_im**2).sum(-1)), rtol=1e-5)
    assert float(got[-1]) > 0  # the probe reaches the last output through the readout


# --------------------------------------------------------------------------- bad input


def test_lru_refuses_complex_inputs_naming_them():
    cell = memcell.lru(H)
    params = cell.init(jax.random.key(0), D)
    xs = jnp.ones((5, D), jnp.complex64)
    with pytest.raises(TypeError, match=re.escape("x (the step's input) must be a real floating-point array, got dtype complex64")):
        cell.step(params, cell.initial_carry(params), xs[0])
    with pytest.raises(TypeError, match="xs must be a real floating-point array, got dtype complex64"):
        cell.spec.coefficients(params, xs)
    with pytest.raises(TypeError, match="xs must be a floating-point array, got dtype complex64"):
        memcell.unroll(cell, params, xs)
    with pytest.raises(TypeError, match="x \\(the step's input\\)"):  # under jit too: the dtype is static
        jax.jit(cell.step)(params, cell.initial_carry(params), xs[0])


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: memcell.lru(4, r_min=0.9, r_max=0.9), ValueError, "r_min must be below r_max, got r_min=0.9 and r_max=0.9"),
        (lambda: memcell.lru(4, r_min=0.95, r_max=0.5), ValueError, "r_min must be below r_max"),
        (lambda: memcell.lru(4, r_max=1.01), ValueError, re.escape("r_max must lie in (0, 1], got 1.01")),
        (lambda: memcell.lru(4, r_min=-0.1), ValueError, re.escape("r_min must lie in [0, 1), got -0.1")),
        (lambda: memcell.lru(4, r_min=1.0), ValueError, re.escape("r_min must lie in [0, 1), got 1.0")),
        (lambda: memcell.lru(4, max_phase=0.0), ValueError, "max_phase must be a finite number > 0 \\(radians\\), got 0.0"),
        (lambda: memcell.lru(4, max_phase=-1), ValueError, "max_phase must be a finite number > 0"),
        (lambda: memcell.lru(4, max_phase=math.inf), ValueError, "max_phase must be a finite number > 0"),
        (lambda: memcell.lru(0), ValueError, "hidden_size must be a positive int, got 0"),
        (lambda: memcell.lru(4, param_dtype=jnp.complex64), TypeError, "param_dtype must be a floating dtype"),
        (lambda: memcell.rglru(4, r_min=0.0), ValueError, re.escape("r_min must lie in (0, 1), got 0.0")),
        (lambda: memcell.rglru(4, r_max=1.0), ValueError, re.escape("r_max must lie in (0, 1), got 1.0")),
        (lambda: memcell.rglru(4, r_min=0.99, r_max=0.9), ValueError, "r_min must be below r_max"),
        (lambda: memcell.rglru(4, c_scale=0), ValueError, re.escape("c_scale must lie in (0, inf), got 0")),
        (lambda: memcell.rglru(4, input_projection=1), TypeError, "input_projection must be a bool"),
        (lambda: memcell.rglru(4, input_projection=False).init(jax.random.key(0), 3), ValueError,
         re.escape("input_size must equal hidden_size=4 with input_projection=False (the RG-LRU gates its input "
                   "elementwise, i * x), got 3")),
    ],
)
def test_bad_factory_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()
