"""memcell.gated_deltanet against a NumPy reference of the paper's equations; its chunkwise form
against the recurrence (the core alone at several chunk lengths and strong decays, and through
unroll: values and gradients with a nonzero carry, lengths with 0, resets, reverse); its init,
bfloat16, and the jacobian toolkit on its matrix memory."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import memcell
from memcell.cells._delta_chunks import chunkwise
from memcell.jacobian import gradient_norms_through_time, state_jacobians

H, HEADS, D = 6, 2, 3  # hidden 6 = 2 heads of dk = dv = 3
CELL = memcell.gated_deltanet(H, num_heads=HEADS, conv_size=3)


def normal(seed, shape, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def setup(seed=0, dtype=jnp.float32, cell=CELL):
    """Random params of the init's shapes (the init's own values are tested apart)."""
    shapes = jax.eval_shape(lambda k: cell.init(k, D), jax.random.key(0))
    leaves, tree = jax.tree.flatten(shapes)
    return jax.tree.unflatten(tree, [0.5 * normal(seed * 100 + j, x.shape, dtype) for j, x in enumerate(leaves)])


def random_carry(params, batch_shape, seed=3, cell=CELL):
    shapes = jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params)
    return jax.tree.map(lambda x: 0.5 * normal(seed, x.shape, x.dtype), shapes)


run = jax.jit(functools.partial(memcell.unroll, CELL))

# --------------------------------------------------------------------------- the NumPy reference


def _silu(a):
    return a / (1 + np.exp(-a))


def np_gated_deltanet(p, xs, conv, S, heads=HEADS):
    """The paper's equations over ``xs: [B, T, d]`` in float64: ``S_t = S_{t-1} (alpha (I - beta k k^T))
    + beta v k^T`` with explicit matrices. Returns ``ys``, the final ``(conv, S)`` and each step's
    ``(alpha, beta, k)``."""
    p = type(p)(*(np.asarray(a, np.float64) for a in p))
    conv, S = np.asarray(conv, np.float64), np.asarray(S, np.float64)
    dk = S.shape[-1]
    inner = heads * dk
    ys, gates = [], []
    for t in range(xs.shape[1]):
        z = xs[:, t] @ p.w_x
        window = np.concatenate([conv, z[:, None, : 3 * inner]], axis=1)
        qkv = _silu((window * p.conv_w).sum(1))
        conv = window[:, 1:]
        q, k, v = (qkv[:, j * inner : (j + 1) * inner].reshape(-1, heads, dk) for j in range(3))
        q = q / np.sqrt((q**2).sum(-1, keepdims=True) + 1e-6) / np.sqrt(dk)
        k = k / np.sqrt((k**2).sum(-1, keepdims=True) + 1e-6)
        g = z[:, 3 * inner : 4 * inner]
        a, b = z[:, 4 * inner : 4 * inner + heads], z[:, 4 * inner + heads :]
        alpha = np.exp(-np.exp(p.a_log) * np.logaddexp(0.0, a + p.dt_bias))
        beta = 1 / (1 + np.exp(-b))
        transition = alpha[..., None, None] * (np.eye(dk) - beta[..., None, None] * np.einsum("bhi,bhj->bhij", k, k))
        S = S @ transition + beta[..., None, None] * np.einsum("bhv,bhk->bhvk", v, k)
        o = np.einsum("bhvk,bhk->bhv", S, q)
        o = o / np.sqrt((o**2).mean(-1, keepdims=True) + 1e-5) * p.norm
        ys.append((o.reshape(-1, inner) * _silu(g)) @ p.w_out)
        gates.append((alpha, beta, k))
    return np.stack(ys, 1), (conv, S), gates


def test_matches_the_papers_equations():
    params = setup(seed=1)
    xs = normal(2, (2, 6, D))
    carry0 = random_carry(params, (2,))
    carry, ys = run(params, xs, carry0)
    want_ys, (want_conv, want_S), _ = np_gated_deltanet(params, np.asarray(xs, np.float64), *carry0)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(carry.conv, want_conv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry.S, want_S, rtol=1e-4, atol=1e-5)


def test_the_delta_rule_replaces_what_a_key_holds():
    # One head, alpha = 1 (no decay), beta = 1: writing v under a unit key k replaces the value S k
    # exactly, whatever was there (S k = v afterwards), and leaves directions orthogonal to k alone.
    rng = np.random.default_rng(4)
    dk, T = 4, 3
    k = rng.normal(size=(1, T, 1, dk))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.normal(size=(1, T, 1, dk))
    S0 = rng.normal(size=(1, 1, dk, dk))
    f = jax.jit(lambda k, v, S0: chunkwise(k, k, v, jnp.zeros((1, T, 1)), jnp.ones((1, T, 1)), S0, None, 2))
    S, _ = f(*(jnp.asarray(a, jnp.float32) for a in (k, v, S0)))
    np.testing.assert_allclose(np.asarray(S)[0, 0] @ k[0, -1, 0], v[0, -1, 0], rtol=1e-5, atol=1e-5)


def _np_core(q, k, v, log_alpha, beta, S0, resets):
    """The recurrence of ``chunkwise`` step by step, float64."""
    q, k, v, la, beta, S0 = (np.asarray(a, np.float64) for a in (q, k, v, log_alpha, beta, S0))
    S, outs = S0.copy(), []
    for t in range(q.shape[1]):
        if resets is not None:
            S = np.where(np.asarray(resets)[:, t, None, None, None], S0, S)
        Sk = np.einsum("bhvk,bhk->bhv", S, k[:, t])
        a, b = np.exp(la[:, t])[..., None, None], beta[:, t][..., None, None]
        S = a * S + b * (v[:, t] - a[..., 0] * Sk)[..., None] * k[:, t][..., None, :]
        outs.append(np.einsum("bhvk,bhk->bhv", S, q[:, t]))
    return S, np.stack(outs, 1)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 16])
def test_chunkwise_core_equals_the_recurrence(chunk_size):
    # 11 steps: chunks with a padded tail; strong decays (log alpha down to -30) and resets inside chunks.
    rng = np.random.default_rng(5)
    B, T, Hh, dk, dv = 2, 11, 2, 3, 4
    k = rng.normal(size=(B, T, Hh, dk))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q, v = rng.normal(size=(B, T, Hh, dk)), rng.normal(size=(B, T, Hh, dv))
    log_alpha = -np.exp(rng.normal(size=(B, T, Hh)) * 2)
    beta = rng.uniform(size=(B, T, Hh))
    S0 = rng.normal(size=(B, Hh, dv, dk))
    resets = np.zeros((B, T), bool)
    resets[0, [2, 5, 6]] = resets[1, 0] = True
    f = jax.jit(chunkwise, static_argnums=7)
    S, o = f(*(jnp.asarray(a, jnp.float32) for a in (q, k, v, log_alpha, beta, S0)), jnp.asarray(resets), chunk_size)
    want_S, want_o = _np_core(q, k, v, log_alpha, beta, S0, resets)
    np.testing.assert_allclose(o, want_o, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(S, want_S, rtol=1e-4, atol=1e-5)


def test_init_is_the_papers_codes():
    p = memcell.gated_deltanet(8, num_heads=2).init(jax.random.key(0), 5)
    assert p.w_x.shape == (5, 4 * 8 + 4) and p.conv_w.shape == (4, 24) and p.w_out.shape == (8, 8)
    A = np.exp(np.asarray(p.a_log))
    assert p.a_log.shape == (2,) and np.all((A >= 1e-4) & (A <= 16))
    step = np.log1p(np.exp(np.asarray(p.dt_bias, np.float64)))
    assert np.all((step >= 1e-3 * (1 - 1e-5)) & (step <= 0.1 * (1 + 1e-5)))
    np.testing.assert_array_equal(p.norm, np.ones(4))
    assert np.abs(p.w_x).max() <= 1 / np.sqrt(5)
    assert memcell.gated_deltanet(6, num_heads=4, head_dim=2).init(jax.random.key(0), 1).w_out.shape == (8, 6)


def test_jacobian_toolkit_on_the_matrix_memory():
    params = setup(seed=6)
    xs = normal(7, (5, D))
    carry0 = random_carry(params, ())
    _, _, gates = np_gated_deltanet(params, np.asarray(xs, np.float64)[None], *jax.tree.map(lambda a: a[None], carry0))
    # d S_t / d S_{t-1}: S -> S alpha (I - beta k k^T), head by head: [v, k] <- [v', k'] is delta_vv' P[k', k].
    P = [a[0][..., None, None] * (np.eye(3) - b[0][..., None, None] * np.einsum("hi,hj->hij", k[0], k[0]))
         for a, b, k in gates]
    jac = state_jacobians(CELL, params, xs, carry=carry0)
    for t in range(5):
        for h in range(HEADS):
            block = np.asarray(jac.S.S[t, h, :, :, h])  # [v, k, v', k']
            np.testing.assert_allclose(block, np.einsum("vw,jk->vkwj", np.eye(3), P[t][h]), rtol=1e-4, atol=1e-6)
    # ||d S_T / d S_{T-k}||: the right product P_{T-k+1} ... P_T, block-diagonal over heads and value rows.
    want = [1.0]
    for lag in range(1, 5):
        prod = [functools.reduce(np.matmul, [P[t][h] for t in range(5 - lag, 5)]) for h in range(HEADS)]
        want.append(max(np.linalg.norm(m, 2) for m in prod))
    np.testing.assert_allclose(gradient_norms_through_time(CELL, params, xs, carry=carry0, hidden="S"), want, rtol=1e-4)


# --------------------------------------------------------------------------- parallel == reference


def _case(T=9):
    params = setup(seed=8)
    xs = normal(9, (3, T, D))
    carry0 = random_carry(params, (3,))
    lengths = jnp.array([T, T // 2, 0])
    resets = np.zeros((3, T), bool)
    resets[0, 2] = resets[0, T - 1] = resets[1, 1] = resets[2, 0] = True
    return params, xs, carry0, lengths, jnp.asarray(resets)


@pytest.mark.parametrize("reverse", [False, True])
def test_parallel_equals_reference_values_and_gradients(reverse):
    params, xs, carry0, lengths, resets = _case()
    w = normal(10, (3, 9, H))

    def grads(run):
        def f(params, xs, carry0):
            carry, ys = run(params, xs, carry0)
            return jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(leaf)) for leaf in carry), (carry, ys)

        return jax.jit(jax.grad(f, argnums=(0, 1, 2), has_aux=True))(params, xs, carry0)

    kw = dict(lengths=lengths, resets=resets, reverse=reverse)
    g_ref, out_ref = grads(lambda p, x, c: memcell.unroll(CELL, p, x, c, **kw))
    # chunks of 4 steps (CPU's default is one chunk of T): the scan across chunks is exercised too
    g_par, out_par = grads(lambda p, x, c: memcell.paths.run(CELL, p, x, c, backend="parallel", chunk_size=4, **kw))
    chex.assert_trees_all_close(out_par, out_ref, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(g_par, g_ref, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(g_par[1][2]).max()) == 0.0  # a length-0 sequence's inputs get no gradient
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[2], out_par[0]), jax.tree.map(lambda a: a[2], carry0))


def test_bfloat16_compute_has_float32_carry_and_stays_close():
    params = setup(seed=11)
    cell16 = memcell.gated_deltanet(H, num_heads=HEADS, conv_size=3, dtype=jnp.bfloat16)
    params16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    xs = normal(12, (2, 6, D))
    for backend in ("reference", "parallel"):
        carry16, ys16 = memcell.unroll(cell16, params16, xs.astype(jnp.bfloat16), backend=backend)
        assert ys16.dtype == jnp.float32 and all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(carry16))
        err = float(jnp.max(jnp.abs(ys16 - run(params, xs)[1])))
        assert 0 < err < 0.1, (backend, err)


def test_spec_declares_its_parallel_form_for_its_own_step_only():
    spec = CELL.spec
    assert isinstance(spec, memcell.cells.GatedDeltaNetSpec) and spec.parallel is not None
    assert (spec.num_heads, spec.head_dim, spec.conv_size) == (HEADS, 3, 3)
    assert memcell.paths.why_not("parallel", CELL) is None
    assert memcell.paths.why_not("parallel", CELL._replace(step=lambda p, c, x: CELL.step(p, c, x))) is not None
    assert memcell.cells.resolve("gated_deltanet") is memcell.gated_deltanet


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: memcell.gated_deltanet(0), "hidden_size must be a positive int, got 0"),
        (lambda: memcell.gated_deltanet(6, num_heads=4),
         "num_heads must divide hidden_size when head_dim is None, got num_heads=4 and hidden_size=6"),
        (lambda: memcell.gated_deltanet(6, head_dim=0), "head_dim must be a positive int, got 0"),
        (lambda: memcell.gated_deltanet(6, conv_size=0), "conv_size must be a positive int, got 0"),
        (lambda: memcell.gated_deltanet(4).init(jax.random.key(0), 0), "input_size must be a positive int, got 0"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.slow  # order 2 in float64 compiles for a minute on a shared CPU
@pytest.mark.parametrize("backend", ["reference", "parallel"])
def test_check_grads_float64(backend):
    with jax.enable_x64(True):
        cell = memcell.gated_deltanet(4, num_heads=2, conv_size=2, param_dtype=jnp.float64)
        params = setup(seed=13, dtype=jnp.float64, cell=cell)
        xs = normal(14, (2, 4, D), np.float64)
        carry0 = random_carry(params, (2,), cell=cell)
        lengths, resets = jnp.array([4, 2]), jnp.array([[False, False, True, False], [False] * 4])

        @jax.jit
        def f(params, xs, carry0):
            kw = dict(lengths=lengths, resets=resets)
            run = (memcell.unroll(cell, params, xs, carry0, **kw) if backend == "reference"
                   else memcell.paths.run(cell, params, xs, carry0, backend="parallel", chunk_size=2, **kw))
            carry, ys = run
            return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(leaf)) for leaf in carry)

        check_grads(f, (params, xs, carry0), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5, eps=1e-5)
