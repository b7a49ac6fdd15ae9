"""memcell.mamba against a NumPy reference of the paper's equations; its parallel form against its
step (values and gradients, a nonzero initial carry, lengths with 0, resets, reverse, several chunk
lengths); its init, bfloat16, the fixed-Delta option; and the jacobian toolkit on its conv and matrix carry."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import memcell
from memcell.jacobian import gradient_norms_through_time, state_jacobians

H, N, K, D = 4, 3, 3, 2  # hidden, state, conv, input: E = 2 H = 8 channels
CONFIGS = {
    "default": dict(state_size=N, conv_size=K),
    "fixed_dt": dict(state_size=N, conv_size=K, dt_rank=0),
    "conv1": dict(state_size=N, conv_size=1, dt_rank=2),
}
CELLS = {name: memcell.mamba(H, **kw) for name, kw in CONFIGS.items()}
CELL = CELLS["default"]


def normal(seed, shape, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def setup(name="default", seed=0, dtype=jnp.float32):
    """The cell and random params of its init's shapes (the init's own values are tested apart)."""
    cell = CELLS[name] if dtype == jnp.float32 else memcell.mamba(H, **CONFIGS[name], param_dtype=dtype)
    shapes = jax.eval_shape(lambda k: cell.init(k, D), jax.random.key(0))
    leaves, tree = jax.tree.flatten(shapes)
    return cell, jax.tree.unflatten(tree, [0.5 * normal(seed * 100 + j, x.shape, dtype) for j, x in enumerate(leaves)])


def random_carry(cell, params, batch_shape, seed=3):
    shapes = jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params)
    return jax.tree.map(lambda x: 0.5 * normal(seed, x.shape, x.dtype), shapes)


@functools.cache
def run(name):
    return jax.jit(functools.partial(memcell.unroll, CELLS[name]))


# --------------------------------------------------------------------------- the NumPy reference


def _silu(a):
    return a / (1 + np.exp(-a))


def np_mamba(p, xs, conv, h):
    """The paper's equations over ``xs: [B, T, d]`` in float64, one step at a time.

    Returns ``ys``, the final ``(conv, h)`` and every step's ``A_bar`` ``[B, T, e, n]``."""
    p = type(p)(*(np.asarray(a, np.float64) for a in p))
    conv, h = np.asarray(conv, np.float64), np.asarray(h, np.float64)
    E, R = p.d.size, p.w_dt.shape[0]
    n = p.a_log.shape[1]
    ys, a_bars = [], []
    for t in range(xs.shape[1]):
        xz = xs[:, t] @ p.w_x
        x, z = xz[:, :E], xz[:, E:]
        window = np.concatenate([conv, x[:, None]], axis=1)  # [B, k, e]
        xc = _silu((window * p.conv_w).sum(1) + p.conv_b)
        conv = window[:, 1:]
        dbc = xc @ p.w_ssm
        d_low, B, C = dbc[:, :R], dbc[:, R : R + n], dbc[:, R + n :]
        delta = np.logaddexp(0.0, d_low @ p.w_dt + p.b_dt)  # softplus
        A = -np.exp(p.a_log)
        A_bar = np.exp(delta[..., None] * A)
        B_bar = (A_bar - 1) / A * B[:, None, :]  # ZOH, diagonal: (Delta A)^-1 (exp(Delta A) - I) Delta B
        h = A_bar * h + B_bar * xc[..., None]
        y = (h * C[:, None, :]).sum(-1) + p.d * xc
        ys.append((y * _silu(z)) @ p.w_out)
        a_bars.append(A_bar)
    return np.stack(ys, 1), (conv, h), np.stack(a_bars, 1)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_the_papers_equations(name):
    cell, params = setup(name, seed=1)
    xs = normal(2, (2, 6, D))
    carry0 = random_carry(cell, params, (2,))
    carry, ys = run(name)(params, xs, carry0)
    want_ys, (want_conv, want_h), _ = np_mamba(params, np.asarray(xs, np.float64), *carry0)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(carry.conv, want_conv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry.h, want_h, rtol=1e-4, atol=1e-5)
    assert carry.conv.shape == (2, CONFIGS[name]["conv_size"] - 1, 2 * H)


def test_init_is_the_papers():
    p = memcell.mamba(32, state_size=5, conv_size=4, expand=2).init(jax.random.key(0), 3)
    E, R = 64, 2  # dt_rank "auto": ceil(32 / 16)
    assert p.w_x.shape == (3, 2 * E) and p.conv_w.shape == (4, E) and p.w_ssm.shape == (E, R + 10)
    assert p.w_dt.shape == (R, E) and p.w_out.shape == (E, 32)
    np.testing.assert_allclose(p.a_log, np.log(np.broadcast_to(np.arange(1, 6), (E, 5))), rtol=1e-6)  # S4D-real
    np.testing.assert_array_equal(p.d, 1.0)
    delta = np.log1p(np.exp(np.asarray(p.b_dt, np.float64)))  # softplus(b_dt): the initial step sizes
    assert delta.min() >= 1e-3 * (1 - 1e-5) and delta.max() <= 0.1 * (1 + 1e-5) and delta.std() > 0
    assert np.abs(p.w_dt).max() <= 1 / np.sqrt(R) and np.abs(p.w_x).max() <= 1 / np.sqrt(3)
    assert memcell.mamba(32, dt_rank=0).init(jax.random.key(0), 3).w_dt.shape == (0, E)


def test_fixed_delta_makes_the_decay_input_independent():
    # The SSM block of the step Jacobian is diag(A_bar_t): with dt_rank=0 it is exp(softplus(b_dt) A) at
    # every step; with a selective Delta it changes with the input.
    xs = 3.0 * normal(5, (4, D))
    for name, fixed in (("fixed_dt", True), ("default", False)):
        cell, params = setup(name, seed=4)
        jac = state_jacobians(cell, params, xs, carry=random_carry(cell, params, ()))
        diag = jnp.einsum("tenen->ten", jac.h.h.reshape(4, 2 * H, N, 2 * H, N))
        _, _, a_bar = np_mamba(params, np.asarray(xs, np.float64)[None], *random_carry(cell, params, (1,)))
        np.testing.assert_allclose(diag, a_bar[0], rtol=1e-5, atol=1e-6)
        off = jac.h.h.reshape(4, 2 * H * N, 2 * H * N) * (1 - np.eye(2 * H * N))
        assert float(jnp.abs(off).max()) == 0.0  # diagonal: each state unit keeps only itself
        if fixed:
            want = np.exp(np.logaddexp(0.0, np.asarray(params.b_dt, np.float64))[:, None] * -np.exp(np.asarray(params.a_log, np.float64)))
            np.testing.assert_allclose(diag, np.broadcast_to(want, diag.shape), rtol=1e-5)
        else:
            assert float(jnp.abs(diag[1:] - diag[:-1]).max()) > 1e-3


def test_jacobian_toolkit_on_the_conv_and_matrix_carry():
    cell, params = setup(seed=6)
    xs = normal(7, (2, 5, D))
    carry0 = random_carry(cell, params, (2,))
    # d h_T / d h_{T-k} = prod diag(A_bar): its spectral norm is the largest product.
    _, _, a_bar = np_mamba(params, np.asarray(xs, np.float64), *carry0)
    prods = np.cumprod(a_bar[:, ::-1], axis=1)  # [B, k, e, n]: A_bar_T ... A_bar_{T-k+1}
    want = np.concatenate([np.ones((2, 1)), prods.max(axis=(2, 3))[:, :-1]], axis=1)
    got = gradient_norms_through_time(cell, params, xs, carry=carry0)  # hidden="h", the [e, n] state
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # The window only shifts: d conv_T / d conv_{T-k} has norm 1 for k < K - 1 and 0 after.
    got = gradient_norms_through_time(cell, params, xs, carry=carry0, hidden="conv")
    np.testing.assert_allclose(got, np.broadcast_to([1, 1, 0, 0, 0], (2, 5)), atol=1e-7)


# --------------------------------------------------------------------------- parallel == reference


def _case(T=9):
    cell, params = setup(seed=8)
    xs = normal(9, (3, T, D))
    carry0 = random_carry(cell, params, (3,))
    lengths = jnp.array([T, T // 2, 0])
    resets = np.zeros((3, T), bool)
    resets[0, 2] = resets[0, T - 1] = resets[1, 1] = resets[2, 0] = True
    return cell, params, xs, carry0, lengths, jnp.asarray(resets)


@pytest.mark.parametrize("reverse", [False, True])
def test_parallel_equals_reference_values_and_gradients(reverse):
    cell, params, xs, carry0, lengths, resets = _case()
    w = normal(10, (3, 9, H))

    def grads(run):
        def f(params, xs, carry0):
            carry, ys = run(params, xs, carry0)
            return jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(leaf)) for leaf in carry), (carry, ys)

        return jax.jit(jax.grad(f, argnums=(0, 1, 2), has_aux=True))(params, xs, carry0)

    kw = dict(lengths=lengths, resets=resets, reverse=reverse)
    g_ref, out_ref = grads(lambda p, x, c: memcell.unroll(cell, p, x, c, **kw))
    g_par, out_par = grads(lambda p, x, c: memcell.unroll(cell, p, x, c, backend="parallel", **kw))
    chex.assert_trees_all_close(out_par, out_ref, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(g_par, g_ref, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(g_par[1][2]).max()) == 0.0  # a length-0 sequence's inputs get no gradient
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[2], out_par[0]), jax.tree.map(lambda a: a[2], carry0))


@pytest.mark.parametrize("chunk_size", [4])  # 9 steps: two chunks and a padded one
def test_parallel_chunked_scan_equals_reference(chunk_size):
    # The chunk length only matters to the diagonal scan (one chunk on CPU by default).
    cell, params, xs, carry0, lengths, resets = _case()
    want = memcell.unroll(cell, params, xs, carry0, lengths=lengths, resets=resets)
    got = memcell.paths.run(cell, params, xs, carry0, lengths=lengths, resets=resets, backend="parallel", chunk_size=chunk_size)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_has_float32_carry_and_stays_close():
    _, params = setup(seed=11)
    cell16 = memcell.mamba(H, **CONFIGS["default"], dtype=jnp.bfloat16)
    params16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    xs = normal(12, (2, 6, D))
    for backend in ("reference", "parallel"):
        carry16, ys16 = memcell.unroll(cell16, params16, xs.astype(jnp.bfloat16), backend=backend)
        assert ys16.dtype == jnp.float32 and all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(carry16))
        err = float(jnp.max(jnp.abs(ys16 - run("default")(params, xs)[1])))
        assert 0 < err < 0.1, (backend, err)  # bf16 rounding of params, inputs and matmuls: visible, small


def test_spec_declares_its_parallel_form_for_its_own_step_only():
    assert isinstance(CELL.spec, memcell.cells.MambaSpec) and CELL.spec.parallel is not None
    assert (CELL.spec.state_size, CELL.spec.conv_size, CELL.spec.expand, CELL.spec.dt_rank) == (N, K, 2, 1)
    assert memcell.paths.why_not("parallel", CELL) is None
    wrapped = CELL._replace(step=lambda p, c, x: CELL.step(p, c, x))
    assert memcell.paths.why_not("parallel", wrapped) is not None
    assert memcell.cells.resolve("mamba") is memcell.mamba


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: memcell.mamba(0), "hidden_size must be a positive int, got 0"),
        (lambda: memcell.mamba(4, state_size=0), "state_size must be a positive int, got 0"),
        (lambda: memcell.mamba(4, conv_size=-1), "conv_size must be a positive int, got -1"),
        (lambda: memcell.mamba(4, expand=1.5), "expand must be a positive int, got 1.5"),
        (lambda: memcell.mamba(4, dt_rank=-2), "dt_rank must be None or an int >= 0, got -2"),
        (lambda: memcell.mamba(4).init(jax.random.key(0), 0), "input_size must be a positive int, got 0"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.slow  # order 2 in float64 compiles for a minute on a shared CPU
@pytest.mark.parametrize("backend", ["reference", "parallel"])
def test_check_grads_float64(backend):
    with jax.enable_x64(True):
        cell, params = setup(seed=13, dtype=jnp.float64)
        xs = normal(14, (2, 4, D), np.float64)
        carry0 = random_carry(cell, params, (2,))
        lengths, resets = jnp.array([4, 2]), jnp.array([[False, False, True, False], [False] * 4])

        @jax.jit
        def f(params, xs, carry0):
            carry, ys = memcell.unroll(cell, params, xs, carry0, lengths=lengths, resets=resets, backend=backend)
            return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(leaf)) for leaf in carry)

        check_grads(f, (params, xs, carry0), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5, eps=1e-5)
