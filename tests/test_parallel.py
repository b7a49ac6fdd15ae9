"""The parallel path: the chunked scans, and unroll(backend="parallel") == the reference path.

Every cell with a ``LinearSpec`` is checked here against its own reference path (values and
gradients, with lengths including 0, resets inside sequences, reverse, a nonzero initial carry
and several chunk lengths), beside toy linear cells that pin down the engine itself.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import memcell
from memcell.parallel import linear_scan, log_linear_scan

D, H, T = 3, 4, 7


# ----------------------------------------------------------------------------- toy linear cells


class ToyParams(NamedTuple):
    w_x: jax.Array  # [d, 3h]


class ToyCarry(NamedTuple):
    h: jax.Array


def toy(hidden_size: int, *, log_space: bool = False, complex_carry: bool = False) -> memcell.Cell:
    """A leaky integrator with input-dependent decay: ``h_t = a(x_t) h_{t-1} + b(x_t)``, ``y = 2 Re(h) + mean(x)``.

    ``complex_carry`` rotates ``a`` by an input-dependent phase; ``log_space`` keeps ``b > 0``.
    """

    def init(key, input_size):
        return ToyParams(jax.random.normal(key, (input_size, 3 * hidden_size)) / np.sqrt(input_size))

    def initial_carry(params, batch_shape=()):
        dtype = jnp.promote_types(params.w_x.dtype, jnp.complex64 if complex_carry else jnp.float32)
        return ToyCarry(jnp.zeros(tuple(batch_shape) + (hidden_size,), dtype))

    def coefficients(params, xs):
        k_a, k_b, k_p = jnp.split(xs @ params.w_x, 3, axis=-1)
        if log_space:
            return jax.nn.log_sigmoid(k_a), -jax.nn.softplus(-k_b)
        a, b = jax.nn.sigmoid(k_a), jnp.tanh(k_b)
        if complex_carry:
            return a * jnp.exp(1j * k_p), b + 0.5j * jnp.tanh(k_p)
        return a, b

    def readout(params, hs, xs):
        return 2.0 * jnp.real(hs) + jnp.mean(xs, axis=-1, keepdims=True)

    def step(params, carry, x):
        a, b = coefficients(params, x[..., None, :])
        if log_space:
            a, b = jnp.exp(a), jnp.exp(b)
        h = a[..., 0, :] * carry.h + b[..., 0, :]
        return ToyCarry(h), readout(params, h[..., None, :], x[..., None, :])[..., 0, :]

    spec = memcell.LinearSpec(step=step, coefficients=coefficients, readout=readout, log_space=log_space)
    return memcell.Cell(init, initial_carry, step, spec)


TOYS = {
    "toy": functools.partial(toy),
    "toy_log": functools.partial(toy, log_space=True),
    "toy_complex": functools.partial(toy, complex_carry=True),
}


def _modern():
    """The library's own LinearSpec cells, as far as they exist."""
    found = {}
    for name in ("mingru", "minlstm", "lru", "rglru"):
        factory = getattr(memcell, name, None)
        if factory is not None:
            found[name] = factory
            if name in ("mingru", "minlstm"):
                found[name + "_log"] = functools.partial(factory, log_space=True)
    return found


CELLS = {**TOYS, **_modern()}


def setup(name, dtype=jnp.float32, seed=0):
    cell = CELLS[name](H)
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = cell.init(k1, D)
    # random values in every param (zeros or ones at init would hide a bias or a gate bug)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(k2, len(leaves))
    params = jax.tree.unflatten(tree, [(x + 0.3 * jax.random.normal(k, x.shape)).astype(dtype) for k, x in zip(keys, leaves)])
    return cell, params


def inputs(cell, params, dtype, seed=1):
    kx, kc = jax.random.split(jax.random.key(seed))
    xs = jax.random.normal(kx, (3, T, D), dtype)
    carry0 = jax.tree.map(lambda c: c + (0.5 + 0.2 * jax.random.normal(kc, c.shape)).astype(c.dtype),
                          cell.initial_carry(params, (3,)))
    lengths = jnp.array([T, 4, 0])
    resets = jnp.zeros((3, T), bool).at[0, 3].set(True).at[1, 1].set(True).at[2, 5].set(True)
    return xs, carry0, lengths, resets


def _loss(backend, chunk_size, cell, reverse, params, xs, carry0, lengths, resets):
    kw = dict(lengths=lengths, resets=resets, reverse=reverse, backend=backend)
    if backend == "parallel":
        carry, ys = memcell.paths.run(cell, params, xs, carry0, chunk_size=chunk_size, **kw)
    else:
        carry, ys = memcell.unroll(cell, params, xs, carry0, **kw)
    w = jnp.cos(jnp.arange(ys.size).reshape(ys.shape))  # a loss that weighs every output differently
    return jnp.sum(ys * w) + sum(jnp.sum(jnp.abs(c) ** 2) for c in jax.tree.leaves(carry)), (carry, ys)


# ----------------------------------------------------------------------------- parallel == reference


def _cases():
    """The toys run every direction and chunking in make test. The library's cells run in test-slow:
    tests/test_contract.py checks every cell of the table on the parallel path against a per-sequence
    oracle (values, and gradients against the reference) in make test."""
    for name in CELLS:
        for reverse in (False, True):
            slow = name not in TOYS
            yield pytest.param(name, reverse, marks=[pytest.mark.slow] if slow else [], id=f"{name}-{reverse}")


@pytest.mark.parametrize("name, reverse", list(_cases()))
def test_parallel_equals_reference_values_and_gradients_float32(name, reverse, request):
    cell, params = setup(name)
    xs, carry0, lengths, resets = inputs(cell, params, jnp.float32)
    ref = jax.jit(jax.value_and_grad(functools.partial(_loss, "reference", None, cell, reverse), argnums=(0, 1, 2), has_aux=True))
    (l_ref, (c_ref, y_ref)), g_ref = ref(params, xs, carry0, lengths, resets)
    chunks = (None, 3) if name in TOYS or request.node.get_closest_marker("slow") else (None,)
    for chunk in chunks:  # one chunk (CPU's choice), several chunks with a ragged last one
        par = jax.jit(jax.value_and_grad(functools.partial(_loss, "parallel", chunk, cell, reverse), argnums=(0, 1, 2), has_aux=True))
        (l_par, (c_par, y_par)), g_par = par(params, xs, carry0, lengths, resets)
        np.testing.assert_allclose(y_par, y_ref, rtol=1e-5, atol=1e-5, err_msg=f"ys, chunk {chunk}")
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), c_par, c_ref)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_par, g_ref)
    assert bool(jnp.all(y_ref[2] == 0)) and bool(jnp.all(y_ref[1, 4:] == 0))  # the padding stays zero
    jax.tree.map(lambda c, c0: np.testing.assert_array_equal(c[2], c0[2]), c_ref, carry0)  # length 0: carry0


@pytest.mark.slow  # make test budget: the float32 test checks the same cases at 1e-5
@pytest.mark.parametrize("name", list(TOYS))
def test_parallel_equals_reference_float64_tight(name):
    with jax.enable_x64(True):
        cell, params = setup(name, jnp.float64)
        xs, carry0, lengths, resets = inputs(cell, params, jnp.float64)
        for reverse in (False, True):
            args = (params, xs, carry0, lengths, resets)
            (_, (c_ref, y_ref)), g_ref = jax.jit(jax.value_and_grad(
                functools.partial(_loss, "reference", None, cell, reverse), argnums=(0, 1, 2), has_aux=True))(*args)
            (_, (c_par, y_par)), g_par = jax.jit(jax.value_and_grad(
                functools.partial(_loss, "parallel", 3, cell, reverse), argnums=(0, 1, 2), has_aux=True))(*args)
            np.testing.assert_allclose(y_par, y_ref, rtol=1e-12, atol=1e-12)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12), (c_par, g_par), (c_ref, g_ref))


def test_parallel_path_has_second_derivatives():
    with jax.enable_x64(True):
        cell, params = setup("toy", jnp.float64)
        xs = jax.random.normal(jax.random.key(3), (5, D), jnp.float64)
        f = jax.jit(lambda p, x: memcell.paths.run(cell, p, x, chunk_size=2, backend="parallel")[1])
        check_grads(f, (params, xs), order=2, modes=["rev"])


@pytest.mark.parametrize("platform, runs", [("cpu", False), ("gpu", True)])
def test_auto_follows_the_measured_platform_choice(monkeypatch, platform, runs):
    """On CPU the diagonal cells measured faster on the reference (memcell.parallel.tuning), so
    "auto" runs it there; on other platforms "auto" runs the parallel path."""
    import memcell.parallel.path as dispatch

    cell, params = setup("toy")
    xs = jax.random.normal(jax.random.key(2), (T, D))
    calls = []
    real = memcell.parallel.linear_scan
    monkeypatch.setattr(dispatch, "linear_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(memcell.parallel.tuning.jax, "default_backend", lambda: platform)
    _, ys = memcell.unroll(cell, params, xs, backend="auto")
    assert bool(calls) == runs
    assert memcell.parallel.tuning.auto_runs_parallel(cell.spec) == runs
    np.testing.assert_allclose(ys, memcell.unroll(cell, params, xs)[1], rtol=1e-6, atol=1e-6)
    lstm = memcell.lstm(H)
    assert memcell.paths.why_not("parallel", lstm) is not None and (memcell.paths.why_not("fused", lstm) is None)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: memcell.lstm(H), "carry update is not linear"),
        (lambda: toy(H)._replace(step=lambda p, c, x: toy(H).step(p, c, x)), "made for another step function"),
        (lambda: memcell.Cell(*toy(H)[:3]), "declares no parallel path"),
    ],
)
def test_parallel_refuses_what_it_cannot_run_and_says_why(make, match):
    cell = make()
    params = cell.init(jax.random.key(0), D)
    xs = jnp.ones((T, D))
    with pytest.raises(ValueError, match=match):
        memcell.unroll(cell, params, xs, backend="parallel")
    # "auto" falls back and gives the reference path's answer
    np.testing.assert_allclose(memcell.unroll(cell, params, xs, backend="auto")[1], memcell.unroll(cell, params, xs)[1], rtol=1e-5, atol=1e-6)


def test_parallel_refuses_remat_and_bad_chunk_size():
    cell, params = setup("toy")
    xs = jnp.ones((T, D))
    with pytest.raises(ValueError, match="remat='step' is not implemented by the parallel path"):
        memcell.unroll(cell, params, xs, remat=True, backend="parallel")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        memcell.paths.run(cell, params, xs, chunk_size=0, backend="parallel")


def test_zero_steps_return_the_initial_carry():
    cell, params = setup("toy")
    carry0 = ToyCarry(jnp.full((H,), 0.7))
    carry, ys = memcell.unroll(cell, params, jnp.ones((0, D)), carry0, backend="parallel")
    np.testing.assert_array_equal(carry.h, carry0.h)
    assert ys.shape == (0, H)


# ----------------------------------------------------------------------------- the scans themselves


def _loop(a, b, h0):
    h, out = h0, []
    for t in range(a.shape[0]):
        h = a[t] * h + b[t]
        out.append(h)
    return np.stack(out)


@pytest.mark.parametrize("steps, chunk", [(1, None), (10, None), (10, 3), (10, 10), (10, 64), (17, 4)])
def test_linear_scan_equals_a_loop(steps, chunk):
    rng = np.random.default_rng(steps)
    a, b, h0 = rng.uniform(0, 1, (steps, 5)), rng.normal(size=(steps, 5)), rng.normal(size=5)
    out = linear_scan(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(h0, jnp.float32), axis=0,
                      chunk_size=chunk)
    np.testing.assert_allclose(out, _loop(a, b, h0), rtol=1e-5, atol=1e-6)


def test_log_linear_scan_keeps_precision_where_h_underflows():
    """10,000 steps of a strong decay (a = e^-5, b = e^-200 * ...) : h is ~e^-200, 0 in float32; log h is exact."""
    steps = 10_000
    rng = np.random.default_rng(0)
    la = np.full((steps, 2), -5.0)
    lb = -200.0 + rng.normal(size=(steps, 2))
    out = log_linear_scan(jnp.asarray(la, jnp.float32), jnp.asarray(lb, jnp.float32), axis=0)
    # float64 reference in log space: log h_t = logaddexp(la_t + log h_{t-1}, lb_t)
    ref, lh = [], -np.inf
    for t in range(steps):
        lh = np.logaddexp(la[t] + lh, lb[t])
        ref.append(lh)
    np.testing.assert_allclose(out, np.stack(ref), rtol=1e-6)
    assert np.all(np.exp(np.asarray(out, np.float32)) == 0)  # in linear space float32 would hold only zeros
