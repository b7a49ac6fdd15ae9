"""Variational dropout, zoneout and the learnt initial carry (memcell.layer options, memcell.regularize)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import memcell
from memcell.regularize import LearntCarry

D, H, T = 3, 6, 8
KEY0 = jax.random.key(0)
FACTORIES = {"rnn": memcell.rnn, "lstm": memcell.lstm, "gru": memcell.gru}


def layer(cell, **options):
    """memcell.layer with a jitted apply (one compilation instead of one per operation)."""
    lyr = memcell.layer(cell, **options)
    return lyr._replace(apply=jax.jit(lyr.apply))


def setup(kind, scale=1.0, seed=0):
    cell = FACTORIES[kind](H)
    params = cell.init(jax.random.key(seed), D)
    params = jax.tree.map(lambda p: scale * (p + 0.3 * jax.random.normal(jax.random.key(seed + 1), p.shape)), params)
    return cell, params


def rand(shape, seed=1, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape)


def close(a, b, tol=1e-5):
    chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


def _gru_numpy(params, h, x, m, reset_after):
    """A GRU step in NumPy with ``h * m`` entering the recurrent matmuls only (not ``z * h``)."""
    p = jax.tree.map(np.asarray, params)
    sig = lambda v: 1 / (1 + np.exp(-v))
    xr, xz, xn = np.split(x @ p.w_x + p.b_x, 3, -1)
    hr, hz, hn = np.split((h * m) @ p.w_h + p.b_h, 3, -1)
    r, z = sig(xr + hr), sig(xz + hz)
    if reset_after:
        n = np.tanh(xn + r * hn)
    else:
        n = np.tanh(xn + (r * h * m) @ p.w_h[:, 2 * H:] + p.b_h[2 * H:])
    return (1 - z) * n + z * h


# ----------------------------------------------------------------------------- recurrent dropout


@pytest.mark.parametrize("kind", ["lstm", "gru", *(pytest.param(k, marks=pytest.mark.slow) for k in ("rnn", "gru_cho"))])
def test_recurrent_dropout_is_one_mask_for_all_steps(kind):
    """The w_h rows that get no gradient are the dropped units; one mask on h at every step
    (inferred from them) reproduces the layer's outputs from a step-by-step reference."""
    rate = 0.5
    if kind == "gru_cho":
        cell = memcell.gru(H, reset_after=False)
        params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(1), p.shape), cell.init(KEY0, D))
    else:
        cell, params = setup(kind)
    lyr = layer(cell, recurrent_dropout=rate)
    xs, key = rand((T, D)), jax.random.key(3)
    ys, vjp = jax.vjp(lambda p: lyr.apply(p, xs, key=key)[1], params)
    (g,) = vjp(jnp.ones_like(ys))
    kept = np.abs(np.asarray(g.w_h)).sum(-1) > 0  # [H]
    assert 0 < kept.sum() < H  # this key drops some units and keeps others
    m = kept / (1 - rate)
    h, carry, ref = np.zeros(H), cell.initial_carry(params), []
    for t in range(T):
        if kind.startswith("gru"):
            h = _gru_numpy(params, h, np.asarray(xs[t]), m, reset_after=kind == "gru")
            ref.append(h)
        else:
            carry, y = cell.step(params, carry._replace(h=carry.h * m), xs[t])
            carry = carry._replace(h=y)
            ref.append(y)
    close(ys, jnp.asarray(np.stack(ref), jnp.float32))
    # keys matter: the same key gives the same masks, another key others (the call here and the
    # traced one under jax.vjp are two programs: equal to float32 rounding, not bit for bit)
    np.testing.assert_allclose(lyr.apply(params, xs, key=key)[1], ys, rtol=1e-6, atol=1e-6)
    assert not np.allclose(lyr.apply(params, xs, key=jax.random.key(4))[1], ys)


def test_evaluation_is_deterministic_and_the_plain_cell():
    cell, params = setup("lstm")
    xs = rand((2, T, D))
    plain = memcell.unroll(cell, params, xs)
    drop = layer(cell, dropout=0.3, recurrent_dropout=0.4)
    chex.assert_trees_all_equal(drop.apply(params, xs), plain)  # inverted scaling: no rescale needed
    zone = layer(cell, zoneout=0.3)
    a, b = zone.apply(params, xs), zone.apply(params, xs)
    chex.assert_trees_all_equal(a, b)
    carry, ref = cell.initial_carry(params, (2,)), []
    for t in range(T):
        new, _ = cell.step(params, carry, xs[:, t])
        carry = jax.tree.map(lambda o, n: 0.3 * o + 0.7 * n, carry, new)  # the expectation
        ref.append(carry.h)
    close(a, (carry, jnp.stack(ref, 1)))


@pytest.mark.slow
def test_keys_matter():
    cell, params = setup("gru")
    xs = rand((2, T, D))
    lyr = layer(cell, dropout=0.3, recurrent_dropout=0.3, zoneout=0.3)
    a = lyr.apply(params, xs, key=jax.random.key(1))[1]
    chex.assert_trees_all_equal(a, lyr.apply(params, xs, key=jax.random.key(1))[1])
    assert not np.allclose(a, lyr.apply(params, xs, key=jax.random.key(2))[1])
    assert not np.allclose(a, lyr.apply(params, xs)[1])


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
def test_input_dropout_gradients_flow_only_through_kept_inputs():
    """One input mask a sequence: the w_x rows of dropped features get no gradient, for every step."""
    cell = memcell.lstm(H)
    lyr = layer(cell, dropout=0.5)
    xs = rand((T, D + 3), 2)
    params = cell.init(jax.random.key(0), D + 3)
    g, gx = jax.grad(lambda p, x: lyr.apply(p, x, key=jax.random.key(5))[1].sum(), argnums=(0, 1))(params, xs)
    rows = np.abs(np.asarray(g.w_x)).sum(-1)
    assert (rows == 0).any() and (rows > 0).any()
    reach = np.abs(np.asarray(gx)).sum(0)  # per input feature, over all steps
    np.testing.assert_array_equal(reach > 0, rows > 0)


# ----------------------------------------------------------------------------- zoneout


def test_zoneout_one_step_mean_over_keys_is_the_expectation():
    """For one step, E[d * c_{t-1} + (1 - d) * c_t] = p c_{t-1} + (1 - p) c_t exactly: the mean
    over 2000 keys is within 5 standard errors of the evaluation output, for h and c."""
    cell, params = setup("lstm")
    rate, n = 0.3, 2000
    lyr = layer(cell, zoneout=rate)
    carry0 = memcell.cells.LSTMCarry(h=rand((H,), 6), c=2 * rand((H,), 7))
    x = rand((1, D), 8)
    run = lambda k: lyr.apply(params, x, carry0, key=k)[0]
    samples = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), n))
    expected = lyr.apply(params, x, carry0)[0]
    for s, e in zip(samples, expected):
        mean, se = s.mean(0), s.std(0) / np.sqrt(n)
        assert np.all(np.abs(mean - e) <= 5 * se + 1e-6)
    # and each sample is either the old or the new value, unit by unit
    new, _ = cell.step(params, carry0, x[0])
    for s, old, cur in zip(samples, carry0, new):
        assert np.all(np.isclose(s, old, atol=1e-6) | np.isclose(s, cur, atol=1e-6))


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
def test_zoneout_gradients_flow_only_through_updated_units():
    """A unit that kept its previous value at a step passes no gradient to that step's input."""
    cell, params = setup("lstm")
    lyr = layer(cell, zoneout=0.5)
    carry0 = memcell.cells.LSTMCarry(h=rand((H,), 6), c=rand((H,), 7))
    x = rand((1, D), 8)
    for seed in range(20):  # a key whose mask keeps some units and updates others
        key = jax.random.key(seed)
        _, ys = lyr.apply(params, x, carry0, key=key)
        kept_old = np.asarray(ys[0]) == np.asarray(carry0.h)
        if kept_old.any() and (~kept_old).any():
            break
    assert kept_old.any() and (~kept_old).any()
    jac = np.asarray(jax.jacrev(lambda v: lyr.apply(params, v, carry0, key=key)[1][0])(x))  # [H, 1, D]
    reach = np.abs(jac).sum(axis=(1, 2))
    assert np.all(reach[kept_old] == 0) and np.all(reach[~kept_old] > 0)


@pytest.mark.slow
def test_training_mean_over_keys_matches_evaluation_for_a_sequence():
    """Dropout, recurrent dropout and zoneout together: the mean output over 1000 keys is within
    statistical error (plus a small allowance: the gates are not linear) of evaluation mode."""
    cell, params = setup("lstm", scale=0.3)
    n = 1000
    lyr = layer(cell, dropout=0.2, recurrent_dropout=0.2, zoneout={"c": 0.3, "h": 0.1})
    xs = rand((5, D), 9, scale=0.5)
    samples = jax.jit(jax.vmap(lambda k: lyr.apply(params, xs, key=k)[1]))(jax.random.split(jax.random.key(0), n))
    ev = np.asarray(lyr.apply(params, xs)[1])
    mean, se = samples.mean(0), samples.std(0) / np.sqrt(n)
    err = np.abs(mean - ev)
    assert np.all(err <= 5 * se + 0.01), float((err - 5 * se).max())
    # the test can fail: evaluation without zoneout's expectation is far outside it
    wrong = np.asarray(memcell.layer(cell).apply(params, xs)[1])
    assert np.any(np.abs(mean - wrong) > 5 * se + 0.01)


@pytest.mark.slow
def test_zoneout_with_lengths_keeps_padding_out():
    cell, params = setup("gru")
    lyr = layer(cell, zoneout=0.4, recurrent_dropout=0.3)
    xs, lengths, key = rand((2, T, D)), jnp.array([T, 3]), jax.random.key(2)
    carry, ys = lyr.apply(params, xs, lengths=lengths, key=key)
    assert np.all(np.asarray(ys[1, 3:]) == 0)
    # the last real step's carry: equal up to rounding (the program computes the value twice, and
    # the tests' XLA optimisation level 0 rounds the two alike only most of the time)
    np.testing.assert_allclose(carry.h[1], ys[1, 2], rtol=1e-6, atol=1e-7)
    assert not np.allclose(carry.h[1], ys[1, 1], rtol=1e-3)


def test_zoneout_draws_a_fresh_mask_every_step():
    """Over a sequence, each unit at each step holds its previous value or the step's new one, and
    which it holds is drawn anew at every step (one mask reused for all steps fails here). The
    make-test version of the slow mean-over-keys and gradient tests."""
    cell, params = setup("gru")
    B, T_ = 4, 6
    xs = rand((B, T_, D), 5)
    _, ys = layer(cell, zoneout=0.5).apply(params, xs, key=jax.random.key(6))
    carry, kept = cell.initial_carry(params, (B,)), []
    for t in range(T_):
        new, _ = cell.step(params, carry, xs[:, t])
        y = np.asarray(ys[:, t])
        old_here, new_here = np.isclose(y, carry.h, atol=1e-6), np.isclose(y, new.h, atol=1e-6)
        assert np.all(old_here | new_here), t  # nothing in between
        kept.append(old_here & ~new_here)
        carry = memcell.cells.GRUCarry(jnp.asarray(y))
    kept = np.stack(kept)  # [T, B, H]
    assert 0.3 < kept.mean() < 0.7, kept.mean()
    assert not any(np.array_equal(kept[0], k) for k in kept[1:])  # a fresh mask each step


def _true(carry, field):
    """A log-scaled carry field's true value ``field * exp(m)`` (m broadcast over the field's trailing axes)."""
    v, m = np.asarray(getattr(carry, field), np.float64), np.asarray(carry.m, np.float64)
    return v * np.exp(m).reshape(m.shape + (1,) * (v.ndim - m.ndim))


@pytest.mark.parametrize("name", ["slstm", "mlstm"])
def test_zoneout_keeps_a_log_scaled_carry_whole(name):
    """The xLSTM cells store c and n scaled by exp(-m). In training a unit of m (an sLSTM unit,
    an mLSTM head) keeps or updates its c, n and m together; at evaluation the expectation is
    taken on the true values c * exp(m). Field by field, scales of two steps met (issue 20 S3)."""
    from memcell import tasks

    cell = tasks.make_cell(name, 8)  # the cells the CLI builds (4 heads)
    params = cell.init(KEY0, D)
    B, rate = 6, 0.5
    carry0, _ = memcell.unroll(cell, params, rand((B, 5, D), 2, scale=3.0))  # stabilisers differ by unit
    x = rand((B, 1, D), 3, scale=3.0)
    new, _ = cell.step(params, carry0, x[:, 0])
    scaled = [f for f in carry0._fields if f not in ("m", "h")]
    lyr = layer(cell, zoneout=rate)
    got = lyr.apply(params, x, carry0, key=jax.random.key(4))[0]
    unit = lambda a: np.asarray(a).reshape(carry0.m.shape + (-1,))  # each unit of m with what it scales
    same = lambda a, b: np.all(np.isclose(unit(a), unit(b), rtol=1e-5, atol=1e-7), -1)
    old = np.all([same(getattr(got, f), getattr(carry0, f)) for f in scaled + ["m"]], 0)
    upd = np.all([same(getattr(got, f), getattr(new, f)) for f in scaled + ["m"]], 0)
    assert np.all(old | upd)  # never c of one step with m of another
    assert old.any() and upd.any()
    ev = lyr.apply(params, x, carry0)[0]
    for f in scaled:
        np.testing.assert_allclose(_true(ev, f), rate * _true(carry0, f) + (1 - rate) * _true(new, f), rtol=1e-4,
                                   atol=1e-6)


def test_zoneout_on_the_slstm_from_the_cli_keeps_h_within_its_range():
    """``memcell train --cell slstm --zoneout 0.5``'s layer: the sLSTM keeps |h| <= 1 (h = o c / n
    with |c| <= n), in training and evaluation; with c, n and m zoned apart it reached 2.4."""
    from memcell.cli._parser import build_parser
    from memcell.cli._train import build

    args = build_parser().parse_args(["train", "--task", "adding", "--cell", "slstm", "--hidden", "8",
                                      "--zoneout", "0.5"])
    task, model = build(args)
    params = model.init(KEY0, task.input_size)
    xs = rand((16, 30, task.input_size), 1, scale=3.0)
    apply = jax.jit(model.layers.apply)
    for key in (jax.random.key(2), None):
        _, ys = apply(params.rnn, xs, key=key)
        assert float(jnp.max(jnp.abs(ys))) <= 1.0
    with pytest.raises(ValueError, match=r"zoneout must give the carry fields \['m', 'c', 'n'\] one rate: c, n are "
                                         r"stored scaled by exp\(-m\), so a unit keeps or updates them together"):
        memcell.layer(memcell.slstm(8, num_heads=4), zoneout={"c": 0.5}).apply(params.rnn, xs)
    per_field = layer(memcell.slstm(8, num_heads=4), zoneout={"c": 0.3, "n": 0.3, "m": 0.3, "h": 0.1})
    chex.assert_tree_all_finite(per_field.apply(params.rnn, xs, key=jax.random.key(3)))


# ----------------------------------------------------------------------------- backends and bad input


def test_fused_backend_refuses_the_options_that_change_the_step():
    cell = memcell.lstm(H)
    with pytest.raises(ValueError, match="backend='fused' cannot run zoneout=0.2"):
        memcell.layer(cell, backend="fused", zoneout=0.2)
    with pytest.raises(ValueError, match="backend='fused' cannot run recurrent_dropout=0.2"):
        memcell.layer(cell, backend="fused", recurrent_dropout=0.2)


@pytest.mark.slow
def test_auto_falls_back_and_fused_runs_input_dropout():
    cell, params = setup("lstm")
    xs, key = rand((2, T, D)), jax.random.key(4)
    auto = layer(cell, backend="auto", zoneout=0.2).apply(params, xs, key=key)
    chex.assert_trees_all_equal(auto, layer(cell, zoneout=0.2).apply(params, xs, key=key))
    # input dropout leaves the cell as it is, so the fused path runs it, with the same values
    fused = layer(cell, backend="fused", dropout=0.3).apply(params, xs, key=key)
    close(fused, layer(cell, dropout=0.3).apply(params, xs, key=key))


def test_bad_rates_and_cells():
    cell = memcell.lstm(H)
    for name, value, pattern in [
        ("dropout", 1.0, r"dropout must lie in \[0, 1\), got 1.0"),
        ("dropout", -0.1, r"dropout must lie in \[0, 1\), got -0.1"),
        ("recurrent_dropout", 1.5, r"recurrent_dropout must lie in \[0, 1\), got 1.5"),
        ("zoneout", 1.0, r"zoneout must lie in \[0, 1\), got 1.0"),
        ("zoneout", "0.1", r"zoneout must lie in \[0, 1\), got '0.1'"),
        ("zoneout", {"c": 2.0}, r"zoneout\['c'\] must lie in \[0, 1\), got 2.0"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            memcell.layer(cell, **{name: value})
    lyr = layer(cell, zoneout={"q": 0.1})
    params = lyr.init(jax.random.key(0), D)
    with pytest.raises(ValueError, match=r"zoneout names fields \['q'\] that the carry has not; its fields are \['h', 'c'\]"):
        lyr.apply(params, rand((T, D)))
    wrapped = memcell.Cell(cell.init, cell.initial_carry, lambda p, c, x: cell.step(p, c, x), cell.spec)
    with pytest.raises(ValueError, match="recurrent_dropout needs a cell whose step is known.*got a cell with spec LSTMSpec"):
        memcell.layer(wrapped, recurrent_dropout=0.1)
    with pytest.raises(TypeError, match="learn_initial_carry must be a bool, got 1"):
        memcell.layer(cell, learn_initial_carry=1)


# ----------------------------------------------------------------------------- learnt initial carry


def test_learnt_initial_carry_is_a_param_broadcast_over_the_batch():
    cell = memcell.lstm(H)
    lyr = layer(cell, learn_initial_carry=True)
    params = lyr.init(jax.random.key(0), D)
    assert isinstance(params, LearntCarry)
    chex.assert_trees_all_equal(params.carry, cell.initial_carry(params.params))  # starts at the cell's
    carry0 = memcell.cells.LSTMCarry(h=rand((H,), 3), c=rand((H,), 4))
    params = params._replace(carry=carry0)
    xs = rand((2, T, D))
    expected = memcell.unroll(cell, params.params, xs, jax.tree.map(lambda a: jnp.broadcast_to(a, (2, H)), carry0))
    chex.assert_trees_all_equal(lyr.apply(params, xs), expected)
    # a carry given to apply replaces the learnt one
    chex.assert_trees_all_equal(lyr.apply(params, xs, cell.initial_carry(params.params, (2,))),
                                memcell.unroll(cell, params.params, xs))
    with pytest.raises(TypeError, match="params must be memcell.regularize.LearntCarry"):
        lyr.apply(params.params, xs)


def test_learnt_initial_carry_gets_a_gradient_and_trains():
    """An RNN must output a target at its first step from zero inputs: only the initial carry
    can make that happen once the weights are fixed. Gradient descent on the carry alone does."""
    cell = memcell.rnn(4)
    lyr = layer(cell, learn_initial_carry=True)
    params = lyr.init(jax.random.key(0), 2)
    xs, target = jnp.zeros((3, 2)), jnp.array([0.5, -0.4, 0.3, -0.2])
    loss = lambda carry: jnp.sum((lyr.apply(params._replace(carry=carry), xs)[1][0] - target) ** 2)
    g = jax.grad(loss)(params.carry)
    assert np.abs(np.asarray(g.h)).sum() > 0

    @jax.jit
    def train(carry):
        def body(c, _):
            return jax.tree.map(lambda a, b: a - 0.5 * b, c, jax.grad(loss)(c)), None
        return jax.lax.scan(body, carry, None, length=200)[0]

    before, after = float(loss(params.carry)), float(loss(train(params.carry)))
    assert after < 1e-4 * before, (before, after)


# ----------------------------------------------------------------------------- Flax wrappers


@pytest.mark.slow  # 5 s of compiling; the pure layer's tests cover the same code in make test
def test_linen_recurrent_options_are_memcell_layer_options():
    import memcell.linen

    cell = memcell.lstm(4)
    opts = dict(recurrent_dropout=0.3, zoneout={"c": 0.5}, learn_initial_carry=True)
    module = memcell.linen.Recurrent(cell, input_dropout=0.2, **opts)
    xs = rand((2, 5, D))
    variables = module.init(jax.random.key(0), xs)
    lyr = memcell.stack([memcell.layer(cell, dropout=0.2, **opts)])
    params = memcell.linen.memcell_params(module, variables["params"], D)
    assert isinstance(params[0], LearntCarry)
    ev = module.apply(variables, xs)
    chex.assert_trees_all_equal(ev, lyr.apply(params, xs))  # evaluation
    train = module.apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(7)})
    assert not np.allclose(train[1], ev[1])
    g = jax.grad(lambda v: module.apply(v, xs)[1].sum())(variables)
    assert np.abs(np.asarray(g["params"]["layer_0"]["carry"]["c"])).sum() > 0
    with pytest.raises(ValueError, match="zoneout is available for one-directional layers only"):
        memcell.linen.Recurrent(cell, bidirectional=True, zoneout=0.1).init(jax.random.key(0), xs)


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
def test_nnx_cells_learn_their_initial_carry():
    from flax import nnx

    import memcell.nnx

    cell = memcell.nnx.LSTM(D, 4, learn_initial_carry=True, rngs=nnx.Rngs(0))
    cell.carry0.h[...] = jnp.arange(4.0) / 4
    _, h = cell.initialize_carry((2, D))
    np.testing.assert_array_equal(h, np.broadcast_to(np.arange(4.0) / 4, (2, 4)))
    model = nnx.RNN(cell)
    xs = rand((2, 5, D))
    grads = nnx.grad(lambda m: (m(xs) ** 2).sum())(model)
    assert np.abs(np.asarray(grads["cell"]["carry0"]["h"][...])).sum() > 0
    with pytest.raises(ValueError, match="carry_init must be None"):
        memcell.nnx.GRU(D, 4, learn_initial_carry=True, carry_init=jax.nn.initializers.ones, rngs=nnx.Rngs(0))


def test_recurrent_dropout_reads_the_grus_masked_step_from_its_spec():
    """The GRU's equations exist once (memcell/cells/gru.py): recurrent dropout runs the spec's
    masked_step, so a GRU with its own gate function keeps it under dropout (the copy of the
    equations regularize kept computed a sigmoid whatever the cell's gate_fn)."""
    cell = memcell.gru(4, gate_fn=jax.nn.hard_sigmoid)
    params = cell.init(jax.random.key(0), 3)
    carry = cell.initial_carry(params, (2,))._replace(h=jnp.full((2, 4), 0.3))
    x = jax.random.normal(jax.random.key(1), (2, 3))
    assert memcell.regularize.recurrent_dropout_kind(cell) == "masked_step"
    want = cell.step(params, carry, x)
    got = cell.spec.masked_step(params, carry, x, jnp.ones((2, 4)))
    assert np.allclose(got[1], want[1], atol=1e-6)
    # a zero mask removes h from the matmuls only: the update z * h still reads it
    zero = cell.spec.masked_step(params, carry, x, jnp.zeros((2, 4)))
    no_h = cell.step(params, carry._replace(h=jnp.zeros((2, 4))), x)
    assert not np.allclose(zero[1], no_h[1])
    assert memcell.regularize.recurrent_dropout_kind(memcell.lstm(4)) == "h"
