"""xLSTM cells (sLSTM, mLSTM) against NumPy references of the paper's equations, and mLSTM's chunkwise
parallel form against the recurrent step (values and gradients, lengths, resets, odd chunk sizes)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import memcell
from memcell.parallel import mlstm as parallel_mlstm

H, HEADS, D = 8, 2, 3
CONFIGS = {
    "slstm": (memcell.slstm, dict(num_heads=HEADS)),
    "slstm_exp": (memcell.slstm, dict(num_heads=HEADS, forget_gate="exp")),
    "mlstm": (memcell.mlstm, dict(num_heads=HEADS)),
}
# One cell object per configuration, and one jitted unroll of each: tests that unroll the same
# shapes share its compilation (compiling is most of these tests' time).
CELLS = {name: factory(H, **kw) for name, (factory, kw) in CONFIGS.items()}
MLSTM = CELLS["mlstm"]


@functools.cache
def run(name):
    """``memcell.unroll`` of ``CELLS[name]``, jitted once for the module."""
    return jax.jit(functools.partial(memcell.unroll, CELLS[name]))


cells = pytest.mark.parametrize("name", ["slstm", "mlstm"])
all_configs = pytest.mark.parametrize("name", list(CONFIGS))


# Test data is drawn with NumPy: eager jax.random calls compile a kernel for every new shape.


def normal(seed, shape, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def setup(name, seed=0, dtype=jnp.float32, hidden=H, scale=0.5):
    """The cell and random params of the shapes its init makes (random biases and gains too)."""
    factory, kw = CONFIGS[name]
    cell = CELLS[name] if hidden == H and dtype == jnp.float32 else factory(hidden, **kw, param_dtype=dtype)
    shapes = jax.eval_shape(lambda k: cell.init(k, D), jax.random.key(0))
    leaves, tree = jax.tree.flatten(shapes)
    return cell, jax.tree.unflatten(tree, [scale * normal(seed * 100 + j, x.shape, dtype) for j, x in enumerate(leaves)])


def random_carry(cell, params, batch_shape, seed=3):
    """A nonzero initial carry (positive normaliser for the sLSTM, whose h = c / n)."""
    shapes = jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params)
    carry = type(shapes)(*(0.5 * normal(seed * 100 + j, x.shape, x.dtype) for j, x in enumerate(shapes)))
    return carry._replace(n=jnp.abs(carry.n) + 0.5) if isinstance(carry, memcell.cells.SLSTMCarry) else carry


# --------------------------------------------------------------------------- NumPy references


def _log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def _block_diagonal(w_h, heads):
    """The dense ``[h, 4h]`` recurrent matrix (gate-major columns) the per-head blocks stand for."""
    dh = w_h.shape[1]
    U = np.zeros((heads * dh, 4 * heads * dh))
    for j in range(heads):
        for g in range(4):
            U[j * dh : (j + 1) * dh, g * heads * dh + j * dh : g * heads * dh + (j + 1) * dh] = w_h[j][:, g * dh : (g + 1) * dh]
    return U


def np_slstm(p, xs, heads, forget_gate, stabilised):
    """sLSTM over ``xs: [B, T, d]`` in float64: the paper's equations, plain or stabilised.

    Returns ``ys`` and the carry ``(c, n, m, h)`` (plain: ``m = 0`` and ``c``, ``n`` unscaled)."""
    w_x, w_h, b = (np.asarray(a, np.float64) for a in p)
    U = _block_diagonal(w_h, heads)
    B, T = xs.shape[:2]
    Hh = b.size // 4
    c, n, m, h = (np.zeros((B, Hh)) for _ in range(4))
    ys = []
    for t in range(T):
        zi, zf, zz, zo = np.split(xs[:, t] @ w_x + h @ U + b, 4, -1)
        log_f = _log_sigmoid(zf) if forget_gate == "sigmoid" else zf
        if stabilised:
            fresh = n == 0  # nothing stored yet: m' = log i (and f' = 0, it multiplies zeros)
            m_new = np.where(fresh, zi, np.maximum(log_f + m, zi))
            i, f, m = np.exp(zi - m_new), np.where(fresh, 0.0, np.exp(np.minimum(log_f + m - m_new, 0))), m_new
        else:
            i, f = np.exp(zi), np.exp(log_f)
        c = f * c + i * np.tanh(zz)
        n = f * n + i
        h = 1 / (1 + np.exp(-zo)) * c / n
        ys.append(h)
    return np.stack(ys, 1), (c, n, m, h)


def np_mlstm(p, xs, heads, stabilised):
    """mLSTM over ``xs: [B, T, d]`` in float64, in the paper's orientation ``C: [dv, dk]``,
    ``C_t = f C + i v k^T``, ``h~ = C q / max(|n^T q|, 1)``; stabilised with ``m`` where asked.

    Returns ``ys`` and the carry ``(C [B, heads, dv, dk], n, m)``."""
    w_x, b = (np.asarray(a, np.float64) for a in p)
    B, T = xs.shape[:2]
    Hh = (b.size - 2 * heads) // 4
    dk = Hh // heads
    C, n, m = np.zeros((B, heads, dk, dk)), np.zeros((B, heads, dk)), np.zeros((B, heads))
    ys = []
    for t in range(T):
        z = xs[:, t] @ w_x + b
        q, k, v, o = (z[:, j * Hh : (j + 1) * Hh].reshape(B, heads, dk) for j in range(4))
        k = k / np.sqrt(dk)
        zi, zf = z[:, 4 * Hh : 4 * Hh + heads], z[:, 4 * Hh + heads :]
        if stabilised:
            m_new = np.maximum(_log_sigmoid(zf) + m, zi)
            i, f, m = np.exp(zi - m_new), np.exp(_log_sigmoid(zf) + m - m_new), m_new
            floor = np.exp(-m)
        else:
            i, f, floor = np.exp(zi), np.exp(_log_sigmoid(zf)), 1.0
        C = f[..., None, None] * C + i[..., None, None] * np.einsum("bhv,bhk->bhvk", v, k)
        n = f[..., None] * n + i[..., None] * k
        h_tilde = np.einsum("bhvk,bhk->bhv", C, q) / np.maximum(np.abs(np.einsum("bhk,bhk->bh", n, q)), floor)[..., None]
        ys.append((1 / (1 + np.exp(-o.reshape(B, Hh)))) * h_tilde.reshape(B, Hh))
    return np.stack(ys, 1), (C, n, m)


def np_reference(name, params, xs, stabilised):
    factory, kw = CONFIGS[name]
    if factory is memcell.slstm:
        return np_slstm(params, xs, HEADS, kw.get("forget_gate", "sigmoid"), stabilised)
    return np_mlstm(params, xs, HEADS, stabilised)


@all_configs
def test_matches_the_papers_unstabilised_equations(name):
    # The stabilised carry is the paper's, scaled by exp(-m): c exp(m), n exp(m) (and C exp(m),
    # transposed to the paper's [dv, dk]) are the plain states, and the outputs are the same.
    _, params = setup(name, seed=1)
    xs = np.asarray(normal(2, (2, 6, D)), np.float64)
    carry, ys = run(name)(params, jnp.asarray(xs, jnp.float32))
    ref_ys, ref = np_reference(name, params, xs, stabilised=False)
    np.testing.assert_allclose(ys, ref_ys, rtol=2e-5, atol=2e-5)
    scale = np.exp(np.asarray(carry.m, np.float64))
    if name.startswith("slstm"):
        np.testing.assert_allclose(carry.c * scale, ref[0], rtol=5e-5)
        np.testing.assert_allclose(carry.n * scale, ref[1], rtol=5e-5)
        np.testing.assert_allclose(carry.h, ref[3], rtol=2e-5, atol=2e-5)
    else:
        np.testing.assert_allclose(carry.C * scale[..., None, None], np.swapaxes(ref[0], -1, -2), rtol=5e-5, atol=1e-6)
        np.testing.assert_allclose(carry.n * scale[..., None], ref[1], rtol=5e-5, atol=1e-6)


@all_configs
def test_huge_preactivations_do_not_overflow(name):
    # Inputs scaled by 1e4 put log i far beyond float32's exp range (exp(89) = inf): the
    # stabilised step stays finite and equals a float64 NumPy reference of the stabilised
    # equations. Float32 spaces numbers near 1e4 by 1e-3, so the exponents (and so the
    # weights of each step) carry relative errors of that size: hence the tolerance.
    cell, params = setup(name, seed=4)
    xs = 1e4 * np.asarray(normal(5, (2, 6, D)), np.float64)
    carry, ys = run(name)(params, jnp.asarray(xs, jnp.float32))
    with np.errstate(over="ignore"):  # exp(-zo) -> inf is a sigmoid of 0, exp(-m) -> inf a zero output
        ref_ys, ref = np_reference(name, params, xs, stabilised=True)
    w_i = np.asarray(params.w_x, np.float64)[:, : H] if name.startswith("slstm") else np.asarray(params.w_x)[:, 4 * H : 4 * H + HEADS]
    assert np.abs(xs @ w_i).max() > 1000  # the naive exp(log i) would overflow
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in (ys, *carry))
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(carry.m, ref[2], rtol=1e-5)  # m is a sum of log gates: float32 close
    if name == "mlstm":  # exp(-m) overflowed here once (m < -88), and its infinite floor made NaN gradients
        grads = jax.grad(lambda p, x: jnp.sum(memcell.unroll(cell, p, x)[1]), argnums=(0, 1))(params, jnp.asarray(xs, jnp.float32))
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


# --------------------------------------------------------------------------- shapes, vmap, jit, loop


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@cells
def test_shapes_unbatched_and_batched(name):
    cell, params = setup(name)
    step = lambda carry, x: jax.eval_shape(cell.step, params, carry, x)  # shapes and dtypes, nothing computed
    carry = cell.initial_carry(params)
    new, y = step(carry, jnp.ones((D,)))
    chex.assert_shape(y, (H,))
    chex.assert_trees_all_equal_shapes_and_dtypes(new, carry)
    carry = cell.initial_carry(params, (2, 3))
    new, y = step(carry, jnp.ones((2, 3, D)))
    chex.assert_shape(y, (2, 3, H))
    chex.assert_trees_all_equal_shapes_and_dtypes(new, carry)
    chex.assert_type([y, *jax.tree.leaves(new)], jnp.float32)
    if name == "mlstm":
        chex.assert_shape([new.C, new.n, new.m], [(2, 3, HEADS, H // HEADS, H // HEADS), (2, 3, HEADS, H // HEADS), (2, 3, HEADS)])
    else:
        chex.assert_shape(list(new), [(2, 3, H)] * 4)


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@cells
def test_vmap_equals_broadcasting(name):
    cell, params = setup(name)
    xs = normal(3, (2, 6, D))
    chex.assert_trees_all_close(
        run(name)(params, xs), jax.vmap(lambda x: memcell.unroll(cell, params, x))(xs), rtol=1e-6, atol=1e-6
    )


@pytest.mark.slow  # op-by-op eager unrolls; the other tests already run the jitted and the eager unroll
@cells
def test_jit_equals_eager(name):
    cell, params = setup(name)
    xs = normal(4, (2, 6, D))
    with jax.disable_jit():
        eager = memcell.unroll(cell, params, xs)
    chex.assert_trees_all_close(run(name)(params, xs), eager, rtol=1e-5, atol=1e-6)


@cells
def test_unroll_equals_python_loop(name):
    cell, params = setup(name)
    xs = normal(5, (2, 6, D))
    carry0 = random_carry(cell, params, (2,))
    carry, ys, step = carry0, [], jax.jit(cell.step)  # jitted: one compile, not one an op
    for t in range(xs.shape[1]):
        carry, y = step(params, carry, xs[:, t])
        ys.append(y)
    chex.assert_trees_all_close(run(name)(params, xs, carry0), (carry, jnp.stack(ys, 1)), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- gradients, dtypes, jacobian


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
@pytest.mark.parametrize("order, modes", [(1, ("rev",)), pytest.param(2, ("fwd", "rev"), marks=pytest.mark.slow)])
@cells
def test_check_grads_float64(name, order, modes):
    # The max in m and |.| in the mLSTM's denominator are kinks; random draws sit away from them,
    # where both are smooth, so order 2 is well defined at the checked point. Order 2 compiles
    # for about a minute on a shared CPU, so it runs with the slow checks (`make test-slow`).
    with jax.enable_x64(True):
        cell, params = setup(name, dtype=jnp.float64, seed=6, hidden=4)
        xs = normal(7, (3, D), np.float64)

        @jax.jit
        def f(params, xs):
            carry, ys = memcell.unroll(cell, params, xs)
            return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(carry))

        check_grads(f, (params, xs), order=order, modes=modes, atol=1e-5, rtol=1e-5, eps=1e-5)


@cells
def test_bfloat16_compute_has_float32_carry_and_stays_close(name):
    _, params = setup(name)
    factory, kw = CONFIGS[name]
    cell16 = factory(H, **kw, dtype=jnp.bfloat16)
    params16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    xs = normal(8, (2, 6, D))
    carry16, ys16 = memcell.unroll(cell16, params16, xs.astype(jnp.bfloat16))
    _, ys32 = run(name)(params, xs)
    assert ys16.dtype == jnp.float32 and all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(carry16))
    err = float(jnp.max(jnp.abs(ys16 - ys32)))
    assert 0 < err < 0.1  # bf16 rounding of params, inputs and matmuls is visible but small


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
def test_jacobian_runs_on_each_cell():
    xs = normal(9, (5, D))
    for name, hidden in (("slstm", "h"), ("mlstm", "n")):  # the mLSTM's carry has no h: its normaliser
        cell, params = setup(name)
        norms = memcell.jacobian.gradient_norms_through_time(cell, params, xs, hidden=hidden)
        assert norms.shape[-1] == 5 and bool(jnp.all(jnp.isfinite(norms))), name


# --------------------------------------------------------------------------- options and bad input


def test_params_layout_and_forget_bias():
    zeros = dict(kernel_init="zeros")  # the weights' own inits are jax's; zeros skip compiling them
    p = memcell.slstm(8, num_heads=4, forget_bias=(1.0, 4.0), recurrent_init="zeros", **zeros).init(jax.random.key(0), 3)
    assert p.w_x.shape == (3, 32) and p.w_h.shape == (4, 2, 8) and p.b.shape == (32,)  # no dense h x 4h
    np.testing.assert_allclose(p.b[8:16], np.linspace(1.0, 4.0, 8), rtol=1e-6)
    np.testing.assert_array_equal(np.r_[p.b[:8], p.b[16:]], 0.0)
    p = memcell.mlstm(8, num_heads=2, **zeros).init(jax.random.key(0), 3)
    assert p.w_x.shape == (3, 4 * 8 + 2 * 2) and p.b.shape == (36,)
    np.testing.assert_allclose(p.b[-2:], [3.0, 6.0])  # forget biases of the two heads


def test_spec_describes_only_its_own_step():
    cell = memcell.mlstm(8, num_heads=2)
    assert isinstance(cell.spec, memcell.cells.MLSTMSpec) and cell.spec.num_heads == 2 and cell.spec.describes(cell)
    assert not cell.spec.describes(cell._replace(step=lambda p, c, x: cell.step(p, c, x)))
    assert memcell.slstm(4, forget_gate="exp").spec.forget_gate == "exp"


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: memcell.slstm(6, num_heads=4), ValueError, "num_heads must divide hidden_size, got num_heads=4 and hidden_size=6"),
        (lambda: memcell.mlstm(10, num_heads=3), ValueError, "num_heads must divide hidden_size, got num_heads=3 and hidden_size=10"),
        (lambda: memcell.mlstm(8, num_heads=0), ValueError, "num_heads must be a positive int, got 0"),
        (lambda: memcell.slstm(0), ValueError, "hidden_size must be a positive int, got 0"),
        (lambda: memcell.slstm(4, forget_gate="tanh"), ValueError, r"forget_gate must be one of \['exp', 'sigmoid'\], got 'tanh'"),
        (lambda: memcell.mlstm(4, forget_bias=(1.0,)), ValueError, r"forget_bias must be a float or a pair of floats \(first, last\), got \(1.0,\)"),
        (lambda: memcell.mlstm(4, dtype=jnp.int8), TypeError, "dtype must be a floating dtype, got int8"),
        (lambda: memcell.slstm(4).init(jax.random.key(0), 0), ValueError, "input_size must be a positive int, got 0"),
        (lambda: parallel_mlstm.chunkwise(None, None, None, None, chunk_size=0), ValueError, "chunk_size must be a positive int, got 0"),
    ],
)
def test_bad_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()


# --------------------------------------------------------------------------- mLSTM chunkwise == recurrent


@jax.jit
def reference_unroll(params, xs, carry0, lengths, resets):
    return memcell.unroll(MLSTM, params, xs, carry0, lengths=lengths, resets=resets)


@functools.partial(jax.jit, static_argnums=(0, 6))
def chunkwise_like_unroll(cell, params, xs, carry0, lengths, resets, chunk_size):
    """What the caller does around ``chunkwise``: zero padded inputs and outputs."""
    valid = None if lengths is None else jnp.arange(xs.shape[-2]) < lengths[..., None]
    if valid is not None:
        xs = jnp.where(valid[..., None], xs, 0.0)
    carry, ys = parallel_mlstm.chunkwise(cell.spec, params, xs, carry0, valid, resets, chunk_size=chunk_size)
    return carry, (ys if valid is None else jnp.where(valid[..., None], ys, 0.0))


def _case(T, dtype=jnp.float32):
    """A batch of 3 with lengths T, about T/2 and 0, resets inside the first two, a nonzero carry."""
    cell, params = MLSTM, setup("mlstm", seed=10, dtype=dtype)[1]
    xs = normal(11, (3, T, D), dtype)
    carry0 = random_carry(cell, params, (3,))
    lengths = jnp.array([T, (T + 1) // 2, 0])
    resets = np.zeros((3, T), bool)
    resets[0, T // 3] = resets[0, T - 1] = resets[1, T // 4] = resets[2, 0] = True
    return cell, params, xs, carry0, lengths, jnp.asarray(resets)


# T not a multiple of the chunk (11 = 2 * 4 + 3; unbatched: 8 = 2 * 4), one chunk longer than T, T = 1
@pytest.mark.parametrize("T, chunk_size", [(11, 4), (1, 64)])
def test_chunkwise_equals_recurrent_float32(T, chunk_size):
    cell, params, xs, carry0, lengths, resets = _case(T)
    want = reference_unroll(params, xs, carry0, lengths, resets)
    got = chunkwise_like_unroll(cell, params, xs, carry0, lengths, resets, chunk_size)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    if T > 1:  # unbatched, without lengths and resets
        one = jax.tree.map(lambda a: a[0], carry0)
        got = jax.jit(lambda p, x, c: parallel_mlstm.chunkwise(cell.spec, p, x, c, chunk_size=4))(params, xs[0, :8], one)
        chex.assert_trees_all_close(got, run("mlstm")(params, xs[0, :8], one), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # make test keeps float32 at 1e-5; this recompiles both paths in float64
def test_chunkwise_equals_recurrent_float64_tightly():
    with jax.enable_x64(True):
        cell, params, xs, carry0, lengths, resets = _case(11, jnp.float64)
        want = reference_unroll(params, xs, carry0, lengths, resets)
        got = chunkwise_like_unroll(cell, params, xs, carry0, lengths, resets, 4)
        assert got[1].dtype == jnp.float64
        chex.assert_trees_all_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.slow  # the parallel-backend test below checks gradients (reverse included) in make test
def test_chunkwise_gradients_equal_recurrent():
    cell, params, xs, carry0, lengths, resets = _case(10)
    w = normal(12, (3, 10, H))

    def loss(run):
        def f(params, xs, carry0):
            carry, ys = run(params, xs, carry0)
            return jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(leaf)) for leaf in carry)

        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))(params, xs, carry0)

    want = loss(lambda p, x, c: memcell.unroll(cell, p, x, c, lengths=lengths, resets=resets))
    got = loss(lambda p, x, c: chunkwise_like_unroll(cell, p, x, c, lengths, resets, 4))
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(got[1][2]).max()) == 0.0  # a length-0 sequence's inputs get no gradient


@pytest.mark.slow
def test_chunkwise_equals_recurrent_at_huge_preactivations():
    # log gates of size 1e4 beside the large negative stand-in for log 0 used at padded steps
    cell, params, xs, carry0, lengths, resets = _case(11)
    xs = 1e4 * xs
    want = reference_unroll(params, xs, carry0, lengths, resets)
    got = chunkwise_like_unroll(cell, params, xs, carry0, lengths, resets, 4)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(got))
    chex.assert_trees_all_close(got, want, rtol=1e-3, atol=1e-3)


def test_parallel_backend_equals_reference_values_and_gradients():
    # memcell.unroll(backend="parallel") runs the chunkwise form; the dispatch reverses and masks.
    cell, params, xs, carry0, lengths, resets = _case(11)
    w = normal(13, (3, 11, H))

    def grads(backend):
        def f(params, xs, carry0):
            carry, ys = memcell.unroll(cell, params, xs, carry0, lengths=lengths, resets=resets, reverse=True,
                                       backend=backend)
            return jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(leaf)) for leaf in carry), (carry, ys)

        return jax.jit(jax.grad(f, argnums=(0, 1, 2), has_aux=True))(params, xs, carry0)

    (g_par, out_par), (g_ref, out_ref) = grads("parallel"), grads("reference")
    chex.assert_trees_all_close(out_par, out_ref, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(g_par, g_ref, rtol=1e-4, atol=1e-5)
    assert (memcell.paths.why_not("parallel", cell) is None) and not (memcell.paths.why_not("parallel", CELLS["slstm"]) is None)
