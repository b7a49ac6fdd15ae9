"""Remat policies of memcell.unroll: per step, sqrt(T) and blocks of k steps, reference and fused paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import memcell
from memcell import fused

B, D, H, T = 2, 3, 5, 11  # T = 11: a prime, so sqrt (k = 3) and k = 4 leave a tail block
POLICIES = ["step", "sqrt", 4, 30]  # 30 > T: one block of all steps

CELLS = {"lstm": memcell.lstm(H), "gru": memcell.gru(H)}


def _params(cell, key=0):
    params = cell.init(jax.random.key(key), D)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(key + 1), len(leaves))
    return jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


def _loss(cell, xs, **kw):
    """Reads every output and every leaf of the final carry, with weights, so no gradient term hides."""
    w = jnp.linspace(0.5, 1.5, xs.shape[-2])[:, None]

    def loss(params, carry=None):
        c, ys = memcell.unroll(cell, params, xs, carry, **kw)
        return jnp.sum(w * ys ** 2) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(c))

    return loss


def _vg(loss, **kw):
    """jit(value_and_grad): one compile a policy, instead of eager dispatch of every op of the scans."""
    return jax.jit(jax.value_and_grad(loss, **kw))


def _assert_close(a, b, tol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_sqrt_blocks_equal_the_plain_reference_on_both_paths():
    """The make-test check: T = 11 in sqrt blocks (3 + 3 + 3 + a tail of 2), with lengths, an initial
    carry and reverse at once; values and gradients w.r.t. the params and the initial carry."""
    cell = CELLS["lstm"]
    params = _params(cell)
    xs = jax.random.normal(jax.random.key(2), (B, T, D))
    carry = jax.tree.map(lambda a: a + 0.2, cell.initial_carry(params, (B,)))
    kw = dict(reverse=True, lengths=jnp.array([7, T]))
    want = _vg(_loss(cell, xs, **kw), argnums=(0, 1))(params, carry)
    for path in ("reference", "fused"):
        got = _vg(_loss(cell, xs, remat="sqrt", backend=path, **kw), argnums=(0, 1))(params, carry)
        _assert_close(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["reference", "fused"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_every_policy_equals_the_plain_reference(path, name):
    """Values and gradients (params and initial carry), with lengths, an initial carry and reverse."""
    cell = CELLS[name]
    params = _params(cell)
    xs = jax.random.normal(jax.random.key(2), (B, T, D))
    carry = jax.tree.map(lambda a: a + 0.2, cell.initial_carry(params, (B,)))
    for kw in (dict(lengths=jnp.array([T, 6])), dict(reverse=True, lengths=jnp.array([4, T])), dict(reverse=True)):
        want = _vg(_loss(cell, xs, **kw), argnums=(0, 1))(params, carry)
        for remat in POLICIES:
            got = _vg(_loss(cell, xs, remat=remat, backend=path, **kw), argnums=(0, 1))(params, carry)
            _assert_close(got, want)


@pytest.mark.slow
def test_policies_with_resets_and_batch_axes_on_the_reference_path():
    cell = CELLS["lstm"]
    params = _params(cell)
    xs = jax.random.normal(jax.random.key(3), (2, B, T, D))  # two batch axes
    resets = jnp.zeros((2, B, T), bool).at[0, :, 4].set(True).at[1, 1, 8].set(True)
    for kw in (dict(resets=resets), dict(resets=resets, reverse=True, lengths=jnp.array([[T, 7], [3, 9]]))):
        want = _vg(_loss(cell, xs, **kw))(params)
        for remat in ("sqrt", 4):
            _assert_close(_vg(_loss(cell, xs, remat=remat, **kw))(params), want)


@pytest.mark.slow
def test_check_grads_float64_blocked_reference_order2_and_fused_order1():
    with jax.enable_x64(True):
        cell = memcell.lstm(4)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), _params(cell))
        xs = jax.random.normal(jax.random.key(4), (2, 7, D), jnp.float64)
        lengths = jnp.array([7, 5])
        ref = lambda p, x: memcell.unroll(cell, p, x, lengths=lengths, remat=3)[1]  # blocks 3 + 3 + 1
        check_grads(ref, (params, xs), order=2, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-5)
        fus = lambda p, x: memcell.unroll(cell, p, x, lengths=lengths, remat="sqrt", backend="fused")[1]
        check_grads(fus, (params, xs), order=1, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-5)


@pytest.mark.slow
def test_bidirectional_layer_with_sqrt_remat_on_every_backend():
    lyr = memcell.bidirectional(memcell.lstm(H), memcell.lstm(H))
    params = lyr.init(jax.random.key(5), D)
    xs = jax.random.normal(jax.random.key(6), (B, T, D))
    lengths = jnp.array([T, 5])

    def loss(lyr):
        return lambda p: jnp.sum(lyr.apply(p, xs, lengths=lengths)[1] ** 2)

    want = jax.value_and_grad(loss(lyr))(params)
    for backend in ("reference", "fused"):
        got = memcell.bidirectional(memcell.lstm(H), memcell.lstm(H), remat="sqrt", backend=backend)
        _assert_close(jax.value_and_grad(loss(got))(params), want)
    lyr_k = memcell.layer(memcell.gru(H), reverse=True, remat=2, backend="auto")
    p = lyr_k.init(jax.random.key(7), D)
    _assert_close(lyr_k.apply(p, xs, lengths=lengths), memcell.layer(memcell.gru(H), reverse=True).apply(p, xs, lengths=lengths))


def _temp_bytes(cell, T, **kw):
    params = cell.init(jax.random.key(0), 8)
    xs = jax.ShapeDtypeStruct((4, T, 8), jnp.float32)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(memcell.unroll(cell, p, x, **kw)[0].h ** 2)))
    return grad.lower(params, xs).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("path", ["reference", pytest.param("fused", marks=pytest.mark.slow)])
def test_sqrt_policy_keeps_a_fraction_of_the_memory(path):
    """Compiled, not run: at T = 400 the sqrt policy (20 blocks of 20) needs far less temp memory than none."""
    cell = memcell.lstm(16)
    none, sqrt = (_temp_bytes(cell, 400, backend=path, remat=r) for r in (False, "sqrt"))
    assert sqrt < 0.35 * none, (sqrt, none)


def test_auto_runs_the_fused_path_with_remat_policies():
    cell = memcell.lstm(H)
    params, xs = _params(cell), jnp.ones((B, T, D))
    for remat in (True, "sqrt"):
        assert (memcell.paths.why_not("fused", cell, remat=remat) is None) and memcell.paths.why_not("fused", cell, remat=remat) is None
        jaxpr = str(jax.make_jaxpr(lambda p: memcell.unroll(cell, p, xs, remat=remat, backend="auto"))(params))
        assert "custom_vjp" in jaxpr and ("checkpoint" in jaxpr or "remat" in jaxpr), remat
    # a linear-carry cell: the parallel path refuses remat, auto falls back to the reference
    mingru = memcell.mingru(H)
    p = mingru.init(jax.random.key(0), D)
    assert "parallel path" in memcell.paths.why_not("parallel", mingru, remat="sqrt")
    _assert_close(memcell.unroll(mingru, p, xs, remat="sqrt", backend="auto"), memcell.unroll(mingru, p, xs))


BAD = [
    ("cube", ValueError, "remat must be a bool, 'step', 'sqrt' or a positive int .*, got str 'cube'"),
    (0, ValueError, "remat must be .* positive int .*, got 0"),
    (-3, ValueError, "got -3"),
    (2.5, TypeError, "remat must be .*, got 2.5"),
    (None, TypeError, "remat must be .*, got NoneType None"),
]


@pytest.mark.parametrize("value, error, match", BAD)
def test_bad_remat_values_are_refused_by_name(value, error, match):
    cell = memcell.lstm(4)
    params, xs = cell.init(jax.random.key(0), D), jnp.ones((T, D))
    with pytest.raises(error, match=match):
        memcell.unroll(cell, params, xs, remat=value)
    with pytest.raises(error, match=match):
        fused.lstm(params, xs, remat=value)
    with pytest.raises(error, match=match):
        memcell.layer(cell, remat=value)
    with pytest.raises(error, match=match):
        memcell.bidirectional(cell, cell, remat=value)


def test_parallel_backend_refuses_remat_naming_it():
    cell = memcell.mingru(4)
    params, xs = cell.init(jax.random.key(0), D), jnp.ones((T, D))
    with pytest.raises(ValueError, match=r"backend='parallel' cannot run this unroll: remat='sqrt' is not implemented"):
        memcell.unroll(cell, params, xs, remat="sqrt", backend="parallel")


def test_zero_steps_and_one_step_with_blocks():
    cell = memcell.lstm(4)
    params = cell.init(jax.random.key(0), D)
    for backend in ("reference", "fused"):
        for T_ in (0, 1):
            xs = jnp.ones((B, T_, D))
            got = memcell.unroll(cell, params, xs, remat="sqrt", backend=backend)
            _assert_close(got, memcell.unroll(cell, params, xs))
            assert got[1].shape == (B, T_, 4)
