"""memcell.linen: memcell cells inside flax.linen (nn.RNN, nn.Bidirectional), Recurrent, serialization, training."""

import doctest
import functools

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import serialization

import memcell
import memcell.linen as ml
from memcell import convert
from user_cells import leaky_cell

D, H, B, T = 3, 5, 3, 7
XS = jax.random.normal(jax.random.key(0), (B, T, D))
LENGTHS = jnp.array([7, 2, 5])
VALID = (jnp.arange(T) < LENGTHS[:, None])[..., None]

# (flax module, the pure memcell cell it runs, carry memcell -> flax)
CELLS = {
    "LSTM": (ml.LSTM(H), memcell.lstm(H), lambda c: (c.c, c.h)),
    "LSTM_proj": (ml.LSTM(H, proj_size=2), memcell.lstm(H, proj_size=2), lambda c: (c.c, c.h)),  # h: [2], c: [H]
    "GRU": (ml.GRU(H), memcell.gru(H), lambda c: c.h),
    "RNN": (ml.RNN(H, activation="relu"), memcell.rnn(H, activation="relu"), lambda c: c.h),
    "Cell_peephole": (
        ml.Cell(functools.partial(memcell.lstm, peephole=True), H),
        memcell.lstm(H, peephole=True),
        lambda c: c,
    ),
    # the linear-recurrence cells: one-field carries exposed as the bare array; the LRU's is complex
    # and its outputs have D (the input's) units; the RG-LRU projects D != H inputs with w_in
    "MinGRU_log": (ml.MinGRU(H, log_space=True), memcell.mingru(H, log_space=True), lambda c: c.h),
    "MinLSTM": (ml.MinLSTM(H), memcell.minlstm(H), lambda c: c.h),
    "LRU": (ml.LRU(H, r_min=0.5, max_phase=1.0), memcell.lru(H, r_min=0.5, max_phase=1.0), lambda c: c.x),
    "RGLRU": (ml.RGLRU(H, c_scale=4.0), memcell.rglru(H, c_scale=4.0), lambda c: c.h),
    # the xLSTM cells keep memcell's NamedTuple carry (several states, no Flax layout to mimic)
    "SLSTM": (ml.SLSTM(4, num_heads=2), memcell.slstm(4, num_heads=2), lambda c: c),
    "MLSTM": (ml.MLSTM(4, num_heads=2), memcell.mlstm(4, num_heads=2), lambda c: c),
}


def _randomize(tree, seed=1):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([a + 0.2 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


def _close(a, b, tol=1e-6):
    chex.assert_trees_all_close(a, b, rtol=0, atol=tol)


# Three of the linear-recurrence wrappers with the slow checks (tests/test_nnx.py runs every cell's
# one step here too, and test_inside_nn_rnn_with_seq_lengths covers the LRU and RG-LRU wrappers' steps).
_STEP_SLOW = {"MinLSTM", "RGLRU", "LRU"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _STEP_SLOW else n for n in CELLS])
def test_one_step_equals_pure_step_bit_for_bit(name):
    mod, cell, to_flax_carry = CELLS[name]
    assert mod.memcell_cell().spec == cell.spec  # the options reach the factory
    x = XS[:, 0]
    carry = mod.initialize_carry(jax.random.key(1), x.shape)
    variables = _randomize(mod.init(jax.random.key(2), carry, x))
    params = ml.memcell_params(mod, variables["params"], D)
    assert jax.tree.structure(params) == jax.tree.structure(cell.init(jax.random.key(0), D))
    mc = _randomize(cell.initial_carry(params, (B,)), 3)
    new_f, y_f = mod.apply(variables, to_flax_carry(mc), x)
    new_m, y_m = cell.step(params, mc, x)
    chex.assert_trees_all_equal((new_f, y_f), (to_flax_carry(new_m), y_m))


# These run the wrapper path of a cell kept in make test (MinGRU_log's, SLSTM's) and pass the step
# test above bit for bit; their nn.RNN runs go to make test-slow to keep make test in budget.
_RNN_SLOW = {"MinLSTM", "MLSTM", "SLSTM"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _RNN_SLOW else n for n in CELLS])
def test_inside_nn_rnn_with_seq_lengths(name):
    mod, cell, to_flax_carry = CELLS[name]
    model = nn.RNN(mod, return_carry=True)
    variables = _randomize(model.init(jax.random.key(0), XS))
    carry_f, ys_f = model.apply(variables, XS, seq_lengths=LENGTHS)
    params = ml.memcell_params(mod, variables["params"]["cell"], D)
    carry_m, ys_m = memcell.unroll(cell, params, XS, lengths=LENGTHS)
    # nn.RNN leaves whatever it computed in the padding; memcell zeroes it: compare real steps.
    _close(jnp.where(VALID, ys_f, 0.0), ys_m)
    _close(carry_f, to_flax_carry(carry_m))


@pytest.mark.parametrize("name", ["LSTM"])
def test_nn_rnn_reverse_keep_order(name):
    mod, cell, to_flax_carry = CELLS[name]
    model = nn.RNN(mod, return_carry=True, reverse=True, keep_order=True)
    variables = _randomize(model.init(jax.random.key(0), XS))
    carry_f, ys_f = model.apply(variables, XS, seq_lengths=LENGTHS)
    params = ml.memcell_params(mod, variables["params"]["cell"], D)
    carry_m, ys_m = memcell.unroll(cell, params, XS, lengths=LENGTHS, reverse=True)
    _close(jnp.where(VALID, ys_f, 0.0), ys_m)
    _close(carry_f, to_flax_carry(carry_m))


def test_inside_nn_bidirectional_with_seq_lengths():
    model = nn.Bidirectional(nn.RNN(ml.LSTM(H)), nn.RNN(ml.LSTM(H)), return_carry=True)
    variables = _randomize(model.init(jax.random.key(0), XS))
    (cf, cb), ys_f = model.apply(variables, XS, seq_lengths=LENGTHS)
    p = variables["params"]
    pair = memcell.DirectionPair(
        ml.memcell_params(ml.LSTM(H), p["forward_rnn"]["cell"], D),
        ml.memcell_params(ml.LSTM(H), p["backward_rnn"]["cell"], D),
    )
    carry_m, ys_m = memcell.bidirectional(memcell.lstm(H), memcell.lstm(H)).apply(pair, XS, lengths=LENGTHS)
    assert ys_f.shape == (B, T, 2 * H)
    _close(jnp.where(VALID, ys_f, 0.0), ys_m)
    _close(cf, (carry_m.forward.c, carry_m.forward.h))
    _close(cb, (carry_m.backward.c, carry_m.backward.h))


def test_drop_in_for_optimized_lstm_cell():
    """The same model code with nn.OptimizedLSTMCell or memcell.linen.LSTM: same outputs on the same weights."""

    class Model(nn.Module):
        cell_type: type

        @nn.compact
        def __call__(self, xs, lengths):
            return nn.Dense(2)(nn.RNN(self.cell_type(H, name="lstm"))(xs, seq_lengths=lengths))

    flax_model, mem_model = Model(nn.OptimizedLSTMCell), Model(ml.LSTM)
    v_flax = _randomize(flax_model.init(jax.random.key(0), XS, LENGTHS))
    mem_cell = convert.to_dict(convert.from_flax(v_flax["params"]["lstm"])[1])
    v_mem = {"params": dict(v_flax["params"], lstm=mem_cell)}
    assert jax.tree.structure(v_mem) == jax.tree.structure(mem_model.init(jax.random.key(0), XS, LENGTHS))
    out_f = flax_model.apply(v_flax, XS, LENGTHS)
    out_m = mem_model.apply(v_mem, XS, LENGTHS)
    _close(jnp.where(VALID, out_f, 0.0), jnp.where(VALID, out_m, 0.0), 1e-6)


def test_any_contract_cell_with_dict_params():
    mod = ml.Cell(leaky_cell, H)
    model = nn.RNN(mod, return_carry=True)
    variables = model.init(jax.random.key(0), XS)
    assert set(variables["params"]["cell"]) == {"w", "a"}
    carry_f, ys_f = model.apply(variables, XS)
    params = ml.memcell_params(mod, variables["params"]["cell"], D)
    carry_m, ys_m = memcell.unroll(leaky_cell(H), params, XS)
    _close(ys_f, ys_m)
    _close(carry_f, carry_m)


def test_jit_vmap_grad():
    mod, cell, _ = CELLS["LSTM"]
    model = nn.RNN(mod)
    variables = _randomize(model.init(jax.random.key(0), XS))
    eager = model.apply(variables, XS)
    _close(jax.jit(model.apply)(variables, XS), eager)
    per_example = jax.vmap(lambda x: model.apply(variables, x))(XS)  # unbatched [T, D] each
    _close(per_example, eager)

    def loss_flax(v):
        return jnp.sum(model.apply(v, XS) ** 2)

    def loss_pure(p):
        return jnp.sum(memcell.unroll(cell, p, XS)[1] ** 2)

    g_flax = jax.grad(loss_flax)(variables)["params"]["cell"]
    g_pure = jax.grad(loss_pure)(ml.memcell_params(mod, variables["params"]["cell"], D))
    _close(convert.from_dict(g_flax, g_pure), g_pure, 1e-5)
    assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(g_pure))


def test_serialization_round_trip_flax_and_orbax(tmp_path):
    model = ml.Recurrent(memcell.lstm(H, layer_norm=True), bidirectional=True)
    variables = _randomize(model.init(jax.random.key(0), XS))
    expected = model.apply(variables, XS, lengths=LENGTHS)[1]
    # flax.serialization (msgpack), restored into a fresh init as the target
    blob = serialization.to_bytes(variables)
    restored = serialization.from_bytes(model.init(jax.random.key(9), XS), blob)
    np.testing.assert_array_equal(model.apply(restored, XS, lengths=LENGTHS)[1], expected)
    # orbax, restored without a target: the params are plain dicts, so they come back as they went
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "ckpt", variables)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "ckpt")
    np.testing.assert_array_equal(model.apply(restored, XS, lengths=LENGTHS)[1], expected)
    ckpt.close()


def test_recurrent_equals_memcell_stack():
    cell = memcell.gru(H)
    model = ml.Recurrent(cell, num_layers=2, bidirectional=True, merge="sum")
    variables = _randomize(model.init(jax.random.key(0), XS))
    assert set(variables["params"]) == {"layer_0", "layer_1"}
    assert set(variables["params"]["layer_0"]) == {"forward", "backward"}
    carry_f, ys_f = model.apply(variables, XS, lengths=LENGTHS)
    lyr = memcell.stack([memcell.bidirectional(cell, cell, merge="sum")] * 2)
    params = ml.memcell_params(model, variables["params"], D)
    carry_m, ys_m = lyr.apply(params, XS, lengths=LENGTHS)
    chex.assert_trees_all_equal((carry_f, ys_f), (carry_m, ys_m))
    chex.assert_shape(ys_f, (B, T, H))
    assert bool(jnp.all(ys_f[1, 2:] == 0))  # memcell zeroes the padding


def test_recurrent_backend_auto_matches_the_reference():
    """``Recurrent(backend="auto")`` runs the fused path: same values and gradients, same params."""
    model = ml.Recurrent(memcell.lstm(H), num_layers=2, bidirectional=True)
    fast = ml.Recurrent(memcell.lstm(H), num_layers=2, bidirectional=True, backend="auto")
    variables = _randomize(model.init(jax.random.key(0), XS))
    loss = lambda m: jax.jit(jax.value_and_grad(lambda v: jnp.sum(m.apply(v, XS, lengths=LENGTHS)[1] ** 2)))
    (l_ref, g_ref), (l_fast, g_fast) = loss(model)(variables), loss(fast)(variables)
    np.testing.assert_allclose(l_fast, l_ref, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda v: fast.apply(v, XS)[1])(variables))
    assert "custom_vjp" in jaxpr
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'gpu'"):
        ml.Recurrent(memcell.lstm(H), backend="gpu").init(jax.random.key(0), XS)


def test_recurrent_runs_the_linear_cells_on_the_parallel_path():
    """``Recurrent(cell, backend="parallel")`` equals the reference path on the same params, complex LRU included."""
    # the dispatch is cell-independent (tests/test_parallel.py covers the cells): one cell here, the complex one
    for cell in (memcell.lru(H),):
        ref, par = ml.Recurrent(cell), ml.Recurrent(cell, backend="parallel")
        variables = _randomize(ref.init(jax.random.key(0), XS))
        carry0 = _randomize(cell.initial_carry(ml.memcell_params(ref, variables["params"], D)[0], (B,)), 2)
        out_ref = ref.apply(variables, XS, (carry0,), lengths=LENGTHS)
        out_par = par.apply(variables, XS, (carry0,), lengths=LENGTHS)
        _close(out_par, out_ref, 1e-5)
    # the option reaches memcell's parallel dispatch, which refuses a cell that is not linear in its carry
    with pytest.raises(ValueError, match="backend='parallel' cannot run this unroll"):
        ml.Recurrent(memcell.gru(H), backend="parallel").init(jax.random.key(0), XS)


def test_recurrent_list_of_cells_residual_dropout():
    model = ml.Recurrent([memcell.lstm(4), memcell.rnn(4)], residual=True, dropout=0.5)
    xs = jax.random.normal(jax.random.key(0), (2, 6, 4))
    variables = model.init(jax.random.key(0), xs)
    assert set(variables["params"]["layer_1"]) == {"w_x", "w_h", "b"}
    apply = jax.jit(model.apply, static_argnames="deterministic")
    det1 = apply(variables, xs)[1]
    det2 = apply(variables, xs, deterministic=True)[1]
    np.testing.assert_array_equal(det1, det2)
    drop_a = apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(1)})[1]
    drop_b = apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(2)})[1]
    assert not np.allclose(drop_a, det1) and not np.allclose(drop_a, drop_b)


def identity_cell():
    """A cell whose output is its input, so a stack of them shows exactly what dropout did between layers."""

    def init(key, input_size):
        return {"unused": jnp.zeros((input_size,))}

    def initial_carry(params, batch_shape=()):
        return jnp.zeros(tuple(batch_shape) + params["unused"].shape)

    def step(params, carry, x):
        return carry, x

    return memcell.Cell(init, initial_carry, step)


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.75])
def test_recurrent_dropout_keeps_1_minus_p_and_scales_by_1_over_1_minus_p(rate):
    """Between two identity layers, ys = dropout(xs): the statistics of the mask and the scale, exactly."""
    model = ml.Recurrent(identity_cell(), num_layers=2, dropout=rate)
    xs = jax.random.uniform(jax.random.key(0), (8, 50, 100), minval=0.5, maxval=1.5)  # nonzero: 0 marks a drop
    variables = model.init(jax.random.key(1), xs)
    apply = jax.jit(model.apply, static_argnames="deterministic")
    chex.assert_trees_all_equal(apply(variables, xs)[1], xs)  # deterministic: nothing dropped, nothing scaled
    ys = np.asarray(apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(2)})[1])
    again = apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(2)})[1]
    chex.assert_trees_all_equal(again, ys)  # the mask is a function of the key
    kept = ys != 0
    n = kept.size
    # The kept count is Binomial(n, 1 - p): 5 standard deviations (n = 40,000) is a failure rate below 1e-6.
    assert abs(kept.sum() - n * (1 - rate)) < 5 * np.sqrt(n * rate * (1 - rate)), kept.mean()
    # No time step or feature is dropped or kept as a block: each unit has its own draw.
    for axis in (0, 1, 2):
        other = tuple(a for a in (0, 1, 2) if a != axis)
        assert 0 < kept.mean(axis=other).min() and kept.mean(axis=other).max() < 1
    # Kept values are the inputs scaled by 1 / (1 - p): bit for bit where 1 - p is a power of two; else to
    # one float32 rounding, as XLA may divide by 1 - p or multiply by its rounded reciprocal.
    scaled = (np.asarray(xs) / np.float32(1.0 - rate))[kept]
    if np.log2(1.0 - rate).is_integer():
        np.testing.assert_array_equal(ys[kept], scaled)
    else:
        np.testing.assert_allclose(ys[kept], scaled, rtol=np.finfo(np.float32).eps, atol=0)
    # A second key draws an independent mask: the two agree on a (1 - p)^2 + p^2 fraction of units.
    other_key = np.asarray(apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(3)})[1]) != 0
    agree = np.mean(kept == other_key)
    expected = (1 - rate) ** 2 + rate**2
    assert abs(agree - expected) < 5 * np.sqrt(expected * (1 - expected) / n), (agree, expected)


def test_initialize_carry_shapes_dtypes_and_carry_init():
    assert ml.LSTM(H).initialize_carry(jax.random.key(0), (2, 4, D))[0].shape == (2, 4, H)
    c, h = ml.LSTM(H, param_dtype=jnp.bfloat16).initialize_carry(jax.random.key(0), (2, D))
    assert c.dtype == h.dtype == jnp.float32  # memcell keeps the carry in float32 for bf16 params
    assert ml.GRU(H).initialize_carry(jax.random.key(0), (D,)).shape == (H,)
    carry = ml.Cell(memcell.lstm, H).initialize_carry(jax.random.key(0), (2, D))
    assert isinstance(carry, memcell.LSTMCarry) and carry.h.shape == (2, H)
    assert ml.LSTM(H).num_feature_axes == 1
    ones = ml.LSTM(H, carry_init=nn.initializers.ones).initialize_carry(jax.random.key(0), (2, D))
    assert all(bool(jnp.all(a == 1)) for a in ones)
    rand = ml.RNN(H, carry_init=nn.initializers.normal(1.0)).initialize_carry(jax.random.key(0), (2, D))
    assert float(jnp.std(rand)) > 0.1


def test_bfloat16_params_inside_nn_rnn():
    model = nn.RNN(ml.LSTM(H, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16), return_carry=True)
    variables = model.init(jax.random.key(0), XS)
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(variables))
    (c, h), ys = model.apply(variables, XS)
    assert c.dtype == jnp.float32 and ys.shape == (B, T, H)
    params = ml.memcell_params(ml.LSTM(H), variables["params"]["cell"], D)
    ref = memcell.unroll(memcell.lstm(H), jax.tree.map(lambda a: a.astype(jnp.float32), params), XS)[1]
    _close(ys, ref, 3e-2)


def test_small_flax_model_trains_with_optax():
    """Embedding -> memcell LSTM -> Dense learns to recall the first token of a sequence."""

    class Model(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(4, 8)(tokens)
            ys = nn.RNN(ml.LSTM(16))(x)
            return nn.Dense(4)(ys[:, -1])

    def batch(key):
        return jax.random.randint(key, (64, 6), 0, 4)

    model = Model()
    params = model.init(jax.random.key(0), batch(jax.random.key(1)))["params"]
    opt = optax.adam(3e-2)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, key):
        tokens = batch(key)

        def loss_fn(p):
            logits = model.apply({"params": p}, tokens)
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 0]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(60):
        params, opt_state, loss = step(params, opt_state, jax.random.key(100 + i))
        losses.append(float(loss))
    tokens = batch(jax.random.key(7))
    acc = float(jnp.mean(jnp.argmax(model.apply({"params": params}, tokens), -1) == tokens[:, 0]))
    assert losses[0] > 1.2 and np.mean(losses[-10:]) < 0.2, (losses[0], losses[-10:])
    assert acc > 0.95


def test_bad_input():
    mod = ml.LSTM(H)
    x = jnp.ones((2, D))
    carry = mod.initialize_carry(jax.random.key(0), x.shape)
    variables = mod.init(jax.random.key(0), carry, x)
    with pytest.raises(TypeError, match="inputs must be a floating-point array, got dtype int32"):
        mod.apply(variables, carry, jnp.ones((2, D), jnp.int32))
    with pytest.raises(TypeError, match=r"carry must be the pair \(c, h\)"):
        mod.apply(variables, carry[0], x)
    with pytest.raises(flax.errors.ScopeParamShapeError, match="w_x"):
        mod.apply(variables, carry, jnp.ones((2, D + 1)))  # params were made for D features
    with pytest.raises(ValueError, match="input_shape must be"):
        mod.initialize_carry(jax.random.key(0), ())
    with pytest.raises(TypeError, match="carry must be the hidden-state array"):
        ml.GRU(H).apply({"params": {}}, (carry,), x)
    generic = ml.Cell(memcell.lstm, H)
    with pytest.raises(TypeError, match="carry must have the structure of initialize_carry's carry"):
        generic.init(jax.random.key(0), carry, x)  # Flax's (c, h) pair given to memcell's LSTMCarry cell
    with pytest.raises(TypeError, match="cell_factory must return a memcell.Cell"):
        ml.Cell(lambda h: h, H).initialize_carry(jax.random.key(0), (2, D))
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        ml.LSTM(0).initialize_carry(jax.random.key(0), (2, D))
    with pytest.raises(ValueError, match="merge must be one of"):
        ml.Recurrent(memcell.lstm(H), merge="max").init(jax.random.key(0), XS)
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        ml.Recurrent(memcell.lstm(H), num_layers=0).init(jax.random.key(0), XS)
    with pytest.raises(ValueError, match="num_layers=3 contradicts the 2 cells"):
        ml.Recurrent([memcell.lstm(H)] * 2, num_layers=3).init(jax.random.key(0), XS)
    with pytest.raises(ValueError, match=r"xs must have shape \[..., T, D\]"):
        ml.Recurrent(memcell.lstm(H)).init(jax.random.key(0), jnp.ones((D,)))
    with pytest.raises(TypeError, match="module must be a memcell.linen cell or Recurrent"):
        ml.memcell_params(nn.Dense(3), {}, D)
    # the new cells' options reach their factories, whose checks name them
    with pytest.raises(ValueError, match="r_min must be below r_max, got r_min=0.9 and r_max=0.5"):
        ml.LRU(H, r_min=0.9, r_max=0.5).initialize_carry(jax.random.key(0), (2, D))
    with pytest.raises(ValueError, match="input_size must equal hidden_size=5 with input_projection=False"):
        ml.RGLRU(H, input_projection=False).init(jax.random.key(0), jnp.zeros((2, H)), x)


def test_docstring_examples():
    failures, tried = doctest.testmod(ml, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
