"""unroll and the sequence layers: lengths, resets, reverse, causality, remat, layers, bad input."""

import jax
import chex
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memcell

D, H = 3, 4
KEY0 = jax.random.key(0)
FACTORIES = {"rnn": memcell.rnn, "lstm": memcell.lstm, "gru": memcell.gru}
kinds = pytest.mark.parametrize("kind", list(FACTORIES))


def setup(kind, seed=0, hidden=H, input_size=D):
    cell = FACTORIES[kind](hidden)
    params = cell.init(jax.random.key(seed), input_size)
    # Non-zero biases, so a zero input does not give a zero output (padding bugs would hide).
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(seed + 1), p.shape), params)
    return cell, params


def rand(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def close(a, b, tol=1e-5):
    chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)  # same tree structure, shapes and values


# --------------------------------------------------------------------------- reverse, causality


@kinds
def test_reverse_is_unroll_of_flipped_sequence(kind):
    cell, params = setup(kind)
    xs = rand((2, 6, D))
    carry_r, ys_r = memcell.unroll(cell, params, xs, reverse=True)
    carry_f, ys_f = memcell.unroll(cell, params, xs[:, ::-1])
    close(ys_r, ys_f[:, ::-1])
    close(carry_r, carry_f)


@kinds
@pytest.mark.parametrize("reverse", [False, True])
def test_causality(kind, reverse):
    """d ys[t] / d xs[s] is zero for every s after t (before t when reading backwards)."""
    cell, params = setup(kind)
    xs = rand((5, D))
    jac = jax.jacrev(lambda x: memcell.unroll(cell, params, x, reverse=reverse)[1])(xs)  # [T, H, T, D]
    block = np.abs(np.asarray(jac)).sum(axis=(1, 3))  # [t, s]
    allowed = np.triu(np.ones_like(block, bool)) if reverse else np.tril(np.ones_like(block, bool))
    assert block[~allowed].max() == 0.0
    assert block[allowed].min() > 0.0  # and everything allowed does reach the output


# --------------------------------------------------------------------------- lengths


@kinds
def test_lengths_match_truncated_sequences(kind):
    cell, params = setup(kind)
    T = 7
    xs = rand((4, T, D))
    lengths = jnp.array([7, 3, 1, 0])
    carry, ys = memcell.unroll(cell, params, xs, lengths=lengths)
    for b, L in enumerate(lengths.tolist()):
        c_b, ys_b = memcell.unroll(cell, params, xs[b, :L])
        close(ys[b, :L], ys_b)
        assert float(jnp.abs(ys[b, L:]).max(initial=0.0)) == 0.0
        close(jax.tree.map(lambda c: c[b], carry), c_b)
    # a length of 0 gives back the initial carry
    close(jax.tree.map(lambda c: c[3], carry), cell.initial_carry(params))


@kinds
def test_padding_has_no_effect_on_values_or_gradients(kind):
    cell, params = setup(kind)
    xs = rand((2, 6, D))
    lengths = jnp.array([6, 2])
    garbage = xs.at[1, 2:].set(jnp.nan)  # padding full of NaN must not leak anywhere

    def loss(params, xs):
        carry, ys = memcell.unroll(cell, params, xs, lengths=lengths)
        return jnp.sum(ys**2) + jnp.sum(jax.tree.leaves(carry)[0] ** 2)

    v1, (gp1, gx1) = jax.value_and_grad(loss, argnums=(0, 1))(params, xs)
    v2, (gp2, gx2) = jax.value_and_grad(loss, argnums=(0, 1))(params, garbage)
    close(v1, v2)
    close(gp1, gp2)
    assert float(jnp.abs(gx1[1, 2:]).max()) == 0.0
    assert bool(jnp.all(jnp.isfinite(gx2)))
    close(gx1, gx2)


@kinds
def test_reverse_with_lengths_starts_at_each_sequences_last_step(kind):
    cell, params = setup(kind)
    xs = rand((3, 6, D))
    lengths = jnp.array([6, 4, 0])
    carry, ys = memcell.unroll(cell, params, xs, lengths=lengths, reverse=True)
    for b, L in enumerate(lengths.tolist()):
        c_b, ys_b = memcell.unroll(cell, params, xs[b, :L][::-1])
        close(ys[b, :L], ys_b[::-1])
        assert float(jnp.abs(ys[b, L:]).max(initial=0.0)) == 0.0
        close(jax.tree.map(lambda c: c[b], carry), c_b)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 3),
    T=st.integers(1, 6),
    reverse=st.booleans(),
    data=st.data(),
)
def test_lengths_property(batch, T, reverse, data):
    cell, params = setup("lstm", hidden=3, input_size=2)
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=batch, max_size=batch)))
    xs = rand((batch, T, 2), seed=int(lengths.sum()) + T)
    carry, ys = memcell.unroll(cell, params, xs, lengths=jnp.asarray(lengths), reverse=reverse)
    for b, L in enumerate(lengths):
        c_b, ys_b = memcell.unroll(cell, params, xs[b, :L], reverse=reverse)
        close(ys[b, :L], ys_b)
        close(jax.tree.map(lambda c: c[b], carry), c_b)


def test_lengths_with_several_batch_axes():
    cell, params = setup("gru")
    xs = rand((2, 3, 5, D))
    lengths = jnp.array([[5, 1, 3], [0, 2, 4]])
    carry, ys = memcell.unroll(cell, params, xs, lengths=lengths)
    c_ref, ys_ref = memcell.unroll(cell, params, xs[1, 2, :4])
    close(ys[1, 2, :4], ys_ref)
    close(carry.h[1, 2], c_ref.h)


# --------------------------------------------------------------------------- resets


def _segments(resets):
    starts = [0] + [t for t in range(1, len(resets)) if resets[t]]
    return list(zip(starts, starts[1:] + [len(resets)]))


@kinds
@pytest.mark.parametrize("reverse", [False, True])
def test_resets_equal_separate_segments(kind, reverse):
    cell, params = setup(kind)
    xs = rand((2, 8, D))
    resets = np.array([0, 0, 0, 1, 0, 1, 0, 0], bool)
    h0 = jax.tree.map(lambda c: c + 0.5, cell.initial_carry(params, (2,)))
    carry, ys = memcell.unroll(cell, params, xs, h0, resets=jnp.asarray(resets), reverse=reverse)
    finals = []
    for a, b in _segments(resets):
        c_seg, ys_seg = memcell.unroll(cell, params, xs[:, a:b], h0, reverse=reverse)
        close(ys[:, a:b], ys_seg)
        finals.append(c_seg)
    close(carry, finals[0] if reverse else finals[-1])  # the segment read last


def test_per_sequence_resets_with_lengths():
    cell, params = setup("lstm")
    xs = rand((2, 6, D))
    resets = jnp.array([[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0]], bool)
    lengths = jnp.array([6, 4])  # the second sequence's reset lies in its padding
    for reverse in (False, True):
        _, ys = memcell.unroll(cell, params, xs, resets=resets, lengths=lengths, reverse=reverse)
        _, a = memcell.unroll(cell, params, xs[0, :2], reverse=reverse)
        _, b = memcell.unroll(cell, params, xs[0, 2:], reverse=reverse)
        close(ys[0], jnp.concatenate([a, b]))
        _, c = memcell.unroll(cell, params, xs[1, :4], reverse=reverse)
        close(ys[1, :4], c)


# --------------------------------------------------------------------------- carry, remat, unroll, retracing


@kinds
def test_initial_carry_is_used_and_broadcast(kind):
    cell, params = setup(kind)
    xs = rand((3, 4, D))
    c0 = jax.tree.map(lambda c: c + 1.0, cell.initial_carry(params))  # unbatched: broadcast to the batch
    carry, ys = memcell.unroll(cell, params, xs, c0)
    _, ys0 = memcell.unroll(cell, params, xs)
    _, ys_one = memcell.unroll(cell, params, xs[1], c0)
    close(ys[1], ys_one)
    # the first step starts from c0 itself (not from zeros), in every row
    close(ys[:, 0], cell.step(params, c0, xs[:, 0])[1])
    close(carry, jax.vmap(lambda x: memcell.unroll(cell, params, x, c0)[0])(xs))
    assert float(jnp.abs(ys - ys0).max()) > 1e-3


# The LSTM here; the GRU and RNN with the slow checks (tests/test_remat.py checks every remat policy on both paths).
@pytest.mark.parametrize("kind", [k if k == "lstm" else pytest.param(k, marks=pytest.mark.slow) for k in FACTORIES])
def test_remat_and_unroll_change_nothing(kind):
    cell, params = setup(kind)
    xs = rand((2, 9, D))

    def loss(params, **kw):
        return jnp.sum(memcell.unroll(cell, params, xs, lengths=jnp.array([9, 5]), **kw)[1] ** 2)

    v, g = jax.value_and_grad(loss)(params)
    for kw in (dict(remat=True), dict(unroll=4), dict(unroll=True)):
        v2, g2 = jax.value_and_grad(lambda p: loss(p, **kw))(params)
        close(v, v2)
        close(g, g2)


def test_no_retracing_on_second_call():
    traces = []
    base = memcell.lstm(H)

    def step(params, carry, x):
        traces.append(1)  # runs only while tracing
        return base.step(params, carry, x)

    cell = memcell.Cell(base.init, base.initial_carry, step)
    params = cell.init(jax.random.key(0), D)
    f = jax.jit(lambda p, x, L: memcell.unroll(cell, p, x, lengths=L))
    f(params, rand((2, 5, D)), jnp.array([5, 3]))
    n = len(traces)
    f(params, rand((2, 5, D), seed=9), jnp.array([2, 4]))
    assert n >= 1 and len(traces) == n


def test_custom_cell_works_with_unroll():
    """A cell is just three functions: a leaky integrator, written here, unrolls like the others."""
    cell = memcell.Cell(
        init=lambda key, d: {"a": jnp.full((d,), 0.5)},
        initial_carry=lambda p, batch_shape=(): jnp.zeros(tuple(batch_shape) + p["a"].shape),
        step=lambda p, c, x: (p["a"] * c + x, p["a"] * c + x),
    )
    params = cell.init(None, 2)
    carry, ys = memcell.unroll(cell, params, jnp.ones((3, 2)))
    np.testing.assert_allclose(ys[:, 0], [1.0, 1.5, 1.75])


# --------------------------------------------------------------------------- layers


def test_layer_is_unroll():
    cell, params = setup("gru")
    lyr = memcell.layer(cell)
    xs = rand((2, 5, D))
    close(lyr.apply(params, xs, lengths=jnp.array([5, 2])), memcell.unroll(cell, params, xs, lengths=jnp.array([5, 2])))
    assert jax.tree.structure(lyr.init(jax.random.key(0), D)) == jax.tree.structure(params)


@pytest.mark.parametrize("merge", ["concat", "sum", "mean", "mul"])
def test_bidirectional_is_padding_aware(merge):
    fwd, bwd = memcell.lstm(H), memcell.gru(H)
    bi = memcell.bidirectional(fwd, bwd, merge=merge)
    params = bi.init(jax.random.key(0), D)
    xs = rand((2, 6, D))
    lengths = jnp.array([6, 3])
    carry, ys = bi.apply(params, xs, lengths=lengths)
    assert ys.shape == (2, 6, 2 * H if merge == "concat" else H)
    b, L = 1, 3
    cf, yf = memcell.unroll(fwd, params.forward, xs[b, :L])
    cb, yb = memcell.unroll(bwd, params.backward, xs[b, :L][::-1])
    yb = yb[::-1]
    want = {"concat": jnp.concatenate([yf, yb], -1), "sum": yf + yb, "mean": (yf + yb) / 2, "mul": yf * yb}[merge]
    close(ys[b, :L], want)
    assert float(jnp.abs(ys[b, L:]).max()) == 0.0
    close(jax.tree.map(lambda c: c[b], carry.forward), cf)
    close(jax.tree.map(lambda c: c[b], carry.backward), cb)


def test_stack_composes_layers_with_residual_and_dropout():
    layers = [memcell.lstm(H), memcell.bidirectional(memcell.gru(H), memcell.gru(H), merge="sum"), memcell.rnn(H)]
    deep = memcell.stack(layers, residual=True, dropout=0.5)
    params = deep.init(jax.random.key(0), D)
    assert len(params) == 3
    xs = rand((2, 5, D))
    lengths = jnp.array([5, 3])
    carry, ys = deep.apply(params, xs, lengths=lengths)
    # by hand, no key: no dropout
    c0, h0 = memcell.unroll(layers[0], params[0], xs, lengths=lengths)
    c1, h1 = memcell.bidirectional(memcell.gru(H), memcell.gru(H), merge="sum").apply(params[1], h0, lengths=lengths)
    c2, h2 = memcell.unroll(layers[2], params[2], h1 + h0, lengths=lengths)
    close(ys, h2 + h1 + h0)
    close(carry, (c0, c1, c2))
    # with a key: dropout between layers, different per key, padding still zero
    _, ys_a = deep.apply(params, xs, lengths=lengths, key=jax.random.key(1))
    _, ys_b = deep.apply(params, xs, lengths=lengths, key=jax.random.key(2))
    assert float(jnp.abs(ys_a - ys).max()) > 1e-3 and float(jnp.abs(ys_a - ys_b).max()) > 1e-3
    assert float(jnp.abs(ys_a[1, 3:]).max()) == 0.0


def _identity_layer():
    """A Layer that returns its inputs, so a stack of two exposes the dropout between them."""
    return memcell.Layer(lambda key, d: (), lambda params, xs, carry=None, *, lengths=None, resets=None, key=None: (carry, xs))


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.9])
def test_stack_dropout_keeps_1_minus_rate_and_rescales_by_it(rate):
    deep = memcell.stack([_identity_layer(), _identity_layer()], dropout=rate)
    xs = 1.0 + jax.random.uniform(jax.random.key(3), (4, 50, 100))  # no zeros, so dropped == zero
    apply = lambda key: deep.apply(deep.init(KEY0, 100), xs, key=key)[1]
    for f in (apply, jax.jit(apply)):
        ys = np.asarray(f(jax.random.key(1)))
        kept = ys != 0
        # inverted dropout: kept values are xs / (1 - rate) (to an ulp: XLA may multiply by the
        # reciprocal), so E[ys] == xs
        np.testing.assert_allclose(ys[kept], (np.asarray(xs) / (1.0 - rate))[kept], rtol=3e-7, atol=0)
        # 20 000 Bernoulli(1 - rate) draws: the keep rate within 5 standard deviations
        assert kept.mean() == pytest.approx(1.0 - rate, abs=5 * np.sqrt(rate * (1 - rate) / kept.size))
    # a different key drops different units; no key drops none
    assert not np.array_equal(np.asarray(apply(jax.random.key(2))) != 0, kept)
    chex.assert_trees_all_equal(deep.apply(deep.init(KEY0, 100), xs)[1], xs)


def test_stack_residual_needs_matching_sizes():
    with pytest.raises(ValueError, match="layer 1's output size to equal its input size, got 6 and 4"):
        memcell.stack([memcell.lstm(4), memcell.lstm(6)], residual=True).init(jax.random.key(0), 3)


def test_stack_is_jittable_and_differentiable():
    deep = memcell.stack([memcell.lstm(H), memcell.lstm(H)], dropout=0.2)
    params = deep.init(jax.random.key(0), D)

    @jax.jit
    def loss(params, xs, key):
        return jnp.mean(deep.apply(params, xs, key=key)[1] ** 2)

    g = jax.grad(loss)(params, rand((2, 4, D)), jax.random.key(3))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))
    assert float(jnp.abs(g[0].w_h).sum()) > 0.0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(xs=jnp.ones((5,))), ValueError, r"xs must have shape \[..., T, D\].*got shape \(5,\)"),
        (dict(xs=jnp.ones((5, 2))), ValueError, r"xs must have 3 features.*got shape \(5, 2\) with 2"),
        (dict(xs=jnp.ones((5, 3), jnp.int32)), TypeError, "xs must be a floating-point array, got dtype int32"),
        (dict(lengths=jnp.array([1.0, 2.0])), TypeError, "lengths must be an integer array, got dtype float32"),
        (dict(lengths=jnp.array([1, 2, 3])), ValueError, r"lengths must have shape \(2,\).*got shape \(3,\)"),
        (dict(lengths=jnp.array([1, 6])), ValueError, r"lengths must lie in \[0, T=5\].*max 6"),
        (dict(lengths=jnp.array([-1, 2])), ValueError, r"lengths must lie in \[0, T=5\].*min -1"),
        (dict(resets=jnp.ones((4,), bool)), ValueError, r"resets must have shape \(5,\) or \(2, 5\)"),
        (dict(resets=jnp.ones((5,), jnp.float32)), TypeError, "resets must be a boolean"),
        (dict(carry=jnp.zeros((2, H))), ValueError, "carry must have the structure"),
        (
            dict(carry=memcell.cells.LSTMCarry(jnp.zeros((3, H)), jnp.zeros((3, H)))),
            ValueError,
            r"carry leaves must have shape \(2, 4\).*got shape \(3, 4\)",
        ),
    ],
)
def test_bad_unroll_input(kwargs, err, match):
    cell, params = setup("lstm")
    args = dict(xs=jnp.ones((2, 5, D)))
    args.update(kwargs)
    xs = args.pop("xs")
    carry = args.pop("carry", None)
    with pytest.raises(err, match=match):
        memcell.unroll(cell, params, xs, carry, **args)


def test_bad_lengths_under_jit_still_caught_by_shape_and_dtype():
    cell, params = setup("rnn")
    f = jax.jit(lambda L: memcell.unroll(cell, params, jnp.ones((2, 5, D)), lengths=L))
    with pytest.raises(TypeError, match="lengths must be an integer array"):
        f(jnp.array([1.0, 2.0]))


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: memcell.layer("lstm"), TypeError, "cell must be a memcell.Cell, got str"),
        (lambda: memcell.bidirectional(memcell.lstm(2), None), TypeError, "backward must be a memcell.Cell"),
        (lambda: memcell.bidirectional(memcell.lstm(2), memcell.lstm(2), merge="max"), ValueError, "merge must be"),
        (lambda: memcell.stack([]), ValueError, "at least one"),
        (lambda: memcell.stack([memcell.lstm(2), 3]), TypeError, r"layers\[1\] must be"),
        (lambda: memcell.stack([memcell.lstm(2)], dropout=1.0), ValueError, r"dropout must lie in \[0, 1\)"),
    ],
)
def test_bad_layer_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()


@pytest.mark.parametrize("backend, make",
                         [("reference", memcell.lstm), ("fused", memcell.lstm), ("parallel", memcell.mingru)])
def test_traced_lengths_outside_0_T_are_clipped_not_nan(backend, make):
    """Inside jax.jit lengths cannot be checked by value: they are clipped to [0, T] on every path,
    reverse included (issue 20, S4: with reverse=True the outputs were NaN)."""
    cell = make(4)
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (2, 5, D))
    for reverse in (False, True):
        f = jax.jit(lambda L: memcell.unroll(cell, params, xs, lengths=L, reverse=reverse, backend=backend))
        got = f(jnp.array([9, -2]))
        want = memcell.unroll(cell, params, xs, lengths=jnp.array([5, 0]), reverse=reverse, backend=backend)
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(got))
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)
