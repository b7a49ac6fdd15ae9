"""memcell.nnx: memcell cells inside flax.nnx (nnx.RNN, nnx.Bidirectional), jit/grad, state, training."""

import doctest
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import memcell
import memcell.nnx as mn
from memcell import convert
from user_cells import leaky_cell

D, H, B, T = 3, 5, 3, 7
XS = jax.random.normal(jax.random.key(0), (B, T, D))
LENGTHS = jnp.array([7, 2, 5])
VALID = (jnp.arange(T) < LENGTHS[:, None])[..., None]

MAKERS = {
    "LSTM": (lambda rngs: mn.LSTM(D, H, rngs=rngs), lambda c: (c.c, c.h)),
    "LSTM_proj": (lambda rngs: mn.LSTM(D, H, proj_size=2, rngs=rngs), lambda c: (c.c, c.h)),  # h: [2], c: [H]
    "GRU": (lambda rngs: mn.GRU(D, H, rngs=rngs), lambda c: c.h),
    "RNN": (lambda rngs: mn.RNN(D, H, activation="relu", rngs=rngs), lambda c: c.h),
    "Cell_layer_norm": (
        lambda rngs: mn.Cell(functools.partial(memcell.lstm, layer_norm=True), D, H, rngs=rngs),
        lambda c: c,
    ),
    # the linear-recurrence cells: one-field carries exposed as the bare array (the LRU's complex)
    "MinGRU": (lambda rngs: mn.MinGRU(D, H, rngs=rngs), lambda c: c.h),
    "MinLSTM_log": (lambda rngs: mn.MinLSTM(D, H, log_space=True, rngs=rngs), lambda c: c.h),
    "LRU": (lambda rngs: mn.LRU(D, H, r_min=0.5, max_phase=1.0, rngs=rngs), lambda c: c.x),
    "RGLRU": (lambda rngs: mn.RGLRU(D, H, c_scale=4.0, rngs=rngs), lambda c: c.h),
    # the xLSTM cells keep memcell's NamedTuple carry
    "SLSTM": (lambda rngs: mn.SLSTM(D, 4, num_heads=2, rngs=rngs), lambda c: c),
    "MLSTM": (lambda rngs: mn.MLSTM(D, 4, num_heads=2, rngs=rngs), lambda c: c),
}
# the pure cells the new modules must run (their options reach the factory: same spec, same step)
PURE = {
    "MinGRU": memcell.mingru(H),
    "MinLSTM_log": memcell.minlstm(H, log_space=True),
    "LRU": memcell.lru(H, r_min=0.5, max_phase=1.0),
    "RGLRU": memcell.rglru(H, c_scale=4.0),
    "SLSTM": memcell.slstm(4, num_heads=2),
    "MLSTM": memcell.mlstm(4, num_heads=2),
}


def _randomize(module, seed=1):
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(module, treedef.unflatten([a + 0.2 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)]))
    return module


def _close(a, b, tol=1e-6):
    chex.assert_trees_all_close(a, b, rtol=0, atol=tol)


def test_base_class_and_param_layout():
    cell = mn.LSTM(D, H, rngs=nnx.Rngs(0))
    assert isinstance(cell, nnx.RNNCellBase) and cell.num_feature_axes == 1
    pure = nnx.to_pure_dict(nnx.state(cell, nnx.Param))
    assert set(pure) == {"w_x", "w_h", "b"}
    chex.assert_shape([pure["w_x"], pure["w_h"], pure["b"]], [(D, 4 * H), (H, 4 * H), (4 * H,)])
    # the forget-gate block starts at memcell's forget bias, 1.0
    np.testing.assert_array_equal(np.asarray(cell.memcell_params().b[H : 2 * H]), np.ones(H))


@pytest.mark.parametrize("name", list(MAKERS))
def test_one_step_equals_pure_step_bit_for_bit(name):
    make, to_flax_carry = MAKERS[name]
    mod = _randomize(make(nnx.Rngs(0)))
    params = mod.memcell_params()
    cell = PURE.get(name, mod.cell)
    assert mod.cell.spec == cell.spec
    mc = jax.tree.map(lambda a: a + 0.5, cell.initial_carry(params, (B,)))
    new_f, y_f = mod(to_flax_carry(mc), XS[:, 0])
    new_m, y_m = cell.step(params, mc, XS[:, 0])
    chex.assert_trees_all_equal((new_f, y_f), (to_flax_carry(new_m), y_m))


@pytest.mark.parametrize("name", list(MAKERS))
def test_inside_nnx_rnn_with_seq_lengths(name):
    make, to_flax_carry = MAKERS[name]
    mod = _randomize(make(nnx.Rngs(0)))
    carry_f, ys_f = nnx.RNN(mod, return_carry=True)(XS, seq_lengths=LENGTHS)
    carry_m, ys_m = memcell.unroll(mod.cell, mod.memcell_params(), XS, lengths=LENGTHS)
    _close(jnp.where(VALID, ys_f, 0.0), ys_m)  # nnx.RNN leaves its own values in the padding
    _close(carry_f, to_flax_carry(carry_m))


def test_inside_nnx_bidirectional_with_seq_lengths():
    rngs = nnx.Rngs(0)
    fwd, bwd = _randomize(mn.GRU(D, H, rngs=rngs), 1), _randomize(mn.GRU(D, H, rngs=rngs), 2)
    (cf, cb), ys_f = nnx.Bidirectional(nnx.RNN(fwd), nnx.RNN(bwd), return_carry=True)(XS, seq_lengths=LENGTHS)
    pair = memcell.DirectionPair(fwd.memcell_params(), bwd.memcell_params())
    carry_m, ys_m = memcell.bidirectional(memcell.gru(H), memcell.gru(H)).apply(pair, XS, lengths=LENGTHS)
    _close(jnp.where(VALID, ys_f, 0.0), ys_m)
    _close((cf, cb), (carry_m.forward.h, carry_m.backward.h))


def test_any_contract_cell_with_dict_params():
    mod = mn.Cell(leaky_cell, D, H, rngs=nnx.Rngs(0))
    assert set(nnx.to_pure_dict(nnx.state(mod, nnx.Param))) == {"w", "a"}
    carry_f, ys_f = nnx.RNN(mod, return_carry=True)(XS)
    carry_m, ys_m = memcell.unroll(leaky_cell(H), mod.memcell_params(), XS)
    _close(ys_f, ys_m)
    _close(carry_f, carry_m)


def test_jit_and_grad_match_the_pure_functions():
    mod = _randomize(mn.LSTM(D, H, rngs=nnx.Rngs(0)))
    model = nnx.RNN(mod)

    @nnx.jit
    def forward(model, xs):
        return model(xs)

    _close(forward(model, XS), model(XS))
    grads = nnx.grad(lambda m: jnp.sum(m(XS) ** 2))(model)
    g_pure = jax.grad(lambda p: jnp.sum(memcell.unroll(mod.cell, p, XS)[1] ** 2))(mod.memcell_params())
    g_nnx = nnx.to_pure_dict(grads)["cell"]
    _close(convert.from_dict(g_nnx, g_pure), g_pure, 1e-5)
    assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(g_pure))


def test_state_round_trip_split_merge_and_pure_dict():
    mod = _randomize(mn.Cell(functools.partial(memcell.lstm, peephole=True), D, H, rngs=nnx.Rngs(0)))
    expected = nnx.RNN(mod)(XS)
    graphdef, state = nnx.split(mod)
    np.testing.assert_array_equal(nnx.RNN(nnx.merge(graphdef, state))(XS), expected)
    pure = nnx.to_pure_dict(nnx.state(mod, nnx.Param))
    assert set(pure) == {"w_x", "w_h", "b", "p_i", "p_f", "p_o"}
    fresh = mn.Cell(functools.partial(memcell.lstm, peephole=True), D, H, rngs=nnx.Rngs(5))
    nnx.update(fresh, pure)
    np.testing.assert_array_equal(nnx.RNN(fresh)(XS), expected)


def test_initialize_carry_and_carry_init():
    cell = mn.LSTM(D, H, rngs=nnx.Rngs(0))
    c, h = cell.initialize_carry((2, D))
    assert c.shape == h.shape == (2, H) and not bool(jnp.any(c))
    c, h = cell.initialize_carry((2, D), rngs=nnx.Rngs(1), carry_init=nnx.initializers.normal(1.0))
    assert float(jnp.std(c)) > 0.1 and not np.allclose(c, h)
    with pytest.raises(ValueError, match="rngs must be given"):
        cell.initialize_carry((2, D), carry_init=nnx.initializers.ones)
    assert isinstance(mn.Cell(memcell.gru, D, H, rngs=nnx.Rngs(0)).initialize_carry((D,)), memcell.GRUCarry)


def test_small_nnx_model_trains_with_optax():
    """Embedding -> memcell GRU -> Linear learns to recall the first token, with nnx.Optimizer."""

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(4, 8, rngs=rngs)
            self.rnn = nnx.RNN(mn.GRU(8, 16, rngs=rngs))
            self.out = nnx.Linear(16, 4, rngs=rngs)

        def __call__(self, tokens):
            return self.out(self.rnn(self.embed(tokens))[:, -1])

    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, tokens):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(tokens), tokens[:, 0]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, jax.random.randint(jax.random.key(i), (64, 6), 0, 4))) for i in range(60)]
    tokens = jax.random.randint(jax.random.key(999), (64, 6), 0, 4)
    acc = float(jnp.mean(jnp.argmax(model(tokens), -1) == tokens[:, 0]))
    assert losses[0] > 1.2 and np.mean(losses[-10:]) < 0.2, (losses[0], losses[-10:])
    assert acc > 0.95


def test_bad_input():
    cell = mn.LSTM(D, H, rngs=nnx.Rngs(0))
    carry = cell.initialize_carry((2, D))
    with pytest.raises(ValueError, match=r"inputs must have 3 features \(in_features\).*got shape \(2, 4\)"):
        cell(carry, jnp.ones((2, D + 1)))
    with pytest.raises(TypeError, match="inputs must be a floating-point array"):
        cell(carry, jnp.ones((2, D), jnp.int32))
    with pytest.raises(TypeError, match=r"carry must be the pair \(c, h\)"):
        cell(carry[0], jnp.ones((2, D)))
    with pytest.raises(TypeError, match="carry must be the hidden-state array"):
        mn.GRU(D, H, rngs=nnx.Rngs(0))((carry,), jnp.ones((2, D)))
    with pytest.raises(TypeError, match="carry must have the structure of initialize_carry's carry"):
        mn.Cell(memcell.lstm, D, H, rngs=nnx.Rngs(0))(carry, jnp.ones((2, D)))
    with pytest.raises(ValueError, match="in_features must be a positive int, got 0"):
        mn.GRU(0, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        mn.RNN(D, -1, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="rngs must be an nnx.Rngs"):
        mn.LSTM(D, H, rngs=0)
    with pytest.raises(TypeError, match="cell_factory must return a memcell.Cell"):
        mn.Cell(lambda h: None, D, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_shape must be"):
        cell.initialize_carry((2, 0))
    # the new cells' options reach their factories, whose checks name them
    with pytest.raises(ValueError, match="r_min must be below r_max, got r_min=0.9 and r_max=0.5"):
        mn.LRU(D, H, r_min=0.9, r_max=0.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_size must equal hidden_size=5 with input_projection=False"):
        mn.RGLRU(D, H, input_projection=False, rngs=nnx.Rngs(0))


def test_docstring_examples():
    failures, tried = doctest.testmod(mn, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
