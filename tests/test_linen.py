"""memcell.linen: memcell cells inside flax.linen (nn.RNN, nn.Bidirectional), Recurrent, serialization, training,
and the Flax drop-ins against Flax's own cells (arguments, dtypes, integer and complex inputs)."""

import doctest

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
from memcell.cells import CELLS
from user_cells import leaky_cell

D, H, B, T = 3, 5, 3, 7
XS = jax.random.normal(jax.random.key(0), (B, T, D))
LENGTHS = jnp.array([7, 2, 5])
VALID = (jnp.arange(T) < LENGTHS[:, None])[..., None]


def flax_carry(carry):
    """Flax's carry convention, restated: a one-field carry is that array, the LSTM's (h, c) is (c, h)."""
    fields = getattr(carry, "_fields", ())
    if len(fields) == 1:
        return carry[0]
    return (carry.c, carry.h) if set(fields) == {"h", "c"} else carry


# (flax module, the pure memcell cell it must run): the drop-ins, an option, a user's cell, and every
# cell of the table by name (a new cell in memcell.cells.CELLS is tested here without a line of test code)
MODULES = {
    "LSTM": lambda: (ml.LSTM(H), memcell.lstm(H)),
    "LSTM_proj": lambda: (ml.LSTM(H, proj_size=2), memcell.lstm(H, proj_size=2)),  # h: [2], c: [H]
    "GRU": lambda: (ml.GRU(H), memcell.gru(H)),
    "RNN_relu": lambda: (ml.RNN(H, activation_fn=jax.nn.relu), memcell.rnn(H, activation="relu")),
    "Cell_peephole": lambda: (ml.Cell("lstm", H, {"peephole": True}), memcell.lstm(H, peephole=True)),
    "user": lambda: (ml.Cell("user_cells:leaky_cell", H), leaky_cell(H)),
    **{f"table_{name}": (lambda name=name: (ml.Cell(name, H), CELLS[name](H))) for name in CELLS},
}
# make test budget: the nn.RNN run of these goes to make test-slow (their step is checked bit for bit in
# make test, and nn.RNN's scan over a cell is cell-independent; the other cells cover it)
_RNN_SLOW = {"table_irnn", "table_minlstm", "table_mlstm", "table_slstm", "table_rglru", "table_rnn", "table_gru"}


def _randomize(tree, seed=1):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([a + 0.2 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


def _close(a, b, tol=1e-6):
    chex.assert_trees_all_close(a, b, rtol=0, atol=tol)


# make test budget: table cells whose carry layout another case here has (a one-field h, the LSTM's
# (c, h), several fields) run in make test-slow; a new cell of the table runs in make test.
_STEP_SLOW = {"table_rnn", "table_irnn", "table_lstm", "table_gru", "table_mingru", "table_minlstm", "table_rglru",
              "table_slstm"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _STEP_SLOW else n for n in MODULES])
def test_one_step_equals_pure_step_bit_for_bit(name):
    mod, cell = MODULES[name]()
    assert mod.memcell_cell().spec == cell.spec  # the options reach the factory
    x = XS[:, 0]
    carry = mod.initialize_carry(jax.random.key(1), x.shape)
    variables = _randomize(mod.init(jax.random.key(2), carry, x))
    params = ml.memcell_params(mod, variables["params"], D)
    assert jax.tree.structure(params) == jax.tree.structure(cell.init(jax.random.key(0), D))
    mc = _randomize(cell.initial_carry(params, (B,)), 3)
    assert jax.tree.structure(carry) == jax.tree.structure(flax_carry(mc))  # Flax's carry layout
    new_f, y_f = mod.apply(variables, flax_carry(mc), x)
    new_m, y_m = cell.step(params, mc, x)
    chex.assert_trees_all_equal((new_f, y_f), (flax_carry(new_m), y_m))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _RNN_SLOW else n for n in MODULES])
def test_inside_nn_rnn_with_seq_lengths(name):
    mod, cell = MODULES[name]()
    model = nn.RNN(mod, return_carry=True)
    variables = _randomize(model.init(jax.random.key(0), XS))
    carry_f, ys_f = model.apply(variables, XS, seq_lengths=LENGTHS)
    params = ml.memcell_params(mod, variables["params"]["cell"], D)
    carry_m, ys_m = memcell.unroll(cell, params, XS, lengths=LENGTHS)
    # nn.RNN leaves whatever it computed in the padding; memcell zeroes it: compare real steps.
    _close(jnp.where(VALID, ys_f, 0.0), ys_m)
    _close(carry_f, flax_carry(carry_m))


def test_nn_rnn_reverse_keep_order():
    mod, cell = MODULES["LSTM"]()
    model = nn.RNN(mod, return_carry=True, reverse=True, keep_order=True)
    variables = _randomize(model.init(jax.random.key(0), XS))
    carry_f, ys_f = model.apply(variables, XS, seq_lengths=LENGTHS)
    params = ml.memcell_params(mod, variables["params"]["cell"], D)
    carry_m, ys_m = memcell.unroll(cell, params, XS, lengths=LENGTHS, reverse=True)
    _close(jnp.where(VALID, ys_f, 0.0), ys_m)
    _close(carry_f, flax_carry(carry_m))


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


def test_users_cell_in_a_flax_model_by_factory_and_by_name():
    """A user's own cell (tests/user_cells.py) inside a linen model, given as a factory or as 'module:factory'."""

    class Model(nn.Module):
        cell: object

        @nn.compact
        def __call__(self, xs):
            return nn.Dense(2)(nn.RNN(ml.Cell(self.cell, H, name="rnn"))(xs)[:, -1])

    by_name, by_factory = Model("user_cells:leaky_cell"), Model(leaky_cell)
    variables = by_name.init(jax.random.key(0), XS)
    assert set(variables["params"]["rnn"]) == {"w", "a"}  # the user's own dict params
    chex.assert_trees_all_equal(by_name.apply(variables, XS), by_factory.apply(variables, XS))
    params = {"w": variables["params"]["rnn"]["w"], "a": variables["params"]["rnn"]["a"]}
    ys = memcell.unroll(leaky_cell(H), params, XS)[1][:, -1]
    dense = variables["params"]["Dense_0"]
    _close(by_name.apply(variables, XS), ys @ dense["kernel"] + dense["bias"])
    grads = jax.grad(lambda v: jnp.sum(by_name.apply(v, XS) ** 2))(variables)["params"]["rnn"]
    assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))
    # and as a whole sequence module
    rec = ml.Recurrent("user_cells:leaky_cell", H, num_layers=2)
    v = rec.init(jax.random.key(0), XS)
    _close(rec.apply(v, XS)[1], memcell.stack([leaky_cell(H)] * 2).apply(ml.memcell_params(rec, v["params"], D), XS)[1])


def test_jit_vmap_grad():
    mod, cell = MODULES["LSTM"]()
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
    model = ml.Recurrent("lstm", H, {"layer_norm": True}, bidirectional=True)
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
    by_name = ml.Recurrent("gru", H, num_layers=2, bidirectional=True, merge="sum")
    variables = _randomize(model.init(jax.random.key(0), XS))
    assert set(variables["params"]) == {"layer_0", "layer_1"}
    assert set(variables["params"]["layer_0"]) == {"forward", "backward"}
    carry_f, ys_f = model.apply(variables, XS, lengths=LENGTHS)
    lyr = memcell.stack([memcell.bidirectional(cell, cell, merge="sum")] * 2)
    params = ml.memcell_params(model, variables["params"], D)
    carry_m, ys_m = lyr.apply(params, XS, lengths=LENGTHS)
    chex.assert_trees_all_equal((carry_f, ys_f), (carry_m, ys_m))
    chex.assert_trees_all_equal(by_name.apply(variables, XS, lengths=LENGTHS), (carry_m, ys_m))
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
    cell = memcell.lru(H)
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
    carry = ml.Cell(memcell.lstm, H, carry_layout=None).initialize_carry(jax.random.key(0), (2, D))
    assert isinstance(carry, memcell.cells.LSTMCarry) and carry.h.shape == (2, H)
    swapped = ml.Cell("lstm", H, carry_layout=("h", "c")).initialize_carry(jax.random.key(0), (2, D))
    assert isinstance(swapped, tuple) and not isinstance(swapped, memcell.cells.LSTMCarry) and len(swapped) == 2
    assert isinstance(ml.Cell("slstm", H).initialize_carry(jax.random.key(0), (2, D)), memcell.cells.SLSTMCarry)
    assert ml.LSTM(H).num_feature_axes == 1
    ones = ml.LSTM(H, carry_init=nn.initializers.ones).initialize_carry(jax.random.key(0), (2, D))
    assert all(bool(jnp.all(a == 1)) for a in ones)
    rand = ml.RNN(H, carry_init=nn.initializers.normal(1.0)).initialize_carry(jax.random.key(0), (2, D))
    assert float(jnp.std(rand)) > 0.1


def test_learn_initial_carry_inside_nn_rnn():
    """The linen cells learn their initial carry as nnx's do: a param ``carry0`` that nn.RNN starts from."""
    model = nn.RNN(ml.LSTM(H, learn_initial_carry=True), return_carry=True)
    variables = model.init(jax.random.key(0), XS)
    carry0 = variables["params"]["cell"]["carry0"]
    assert set(carry0) == {"h", "c"} and carry0["h"].shape == (H,)
    carry0 = {"h": jnp.arange(H) / H, "c": jnp.ones(H)}
    variables = {"params": {"cell": dict(variables["params"]["cell"], carry0=carry0)}}
    params = ml.memcell_params(ml.LSTM(H), variables["params"]["cell"], D)
    start = memcell.cells.LSTMCarry(h=jnp.broadcast_to(jnp.arange(H) / H, (B, H)), c=jnp.ones((B, H)))
    carry_m, ys_m = memcell.unroll(memcell.lstm(H), params, XS, start, lengths=LENGTHS)
    carry_f, ys_f = model.apply(variables, XS, seq_lengths=LENGTHS)
    _close(jnp.where(VALID, ys_f, 0.0), ys_m)
    _close(carry_f, (carry_m.c, carry_m.h))
    grads = jax.grad(lambda v: jnp.sum(model.apply(v, XS)[1] ** 2))(variables)["params"]["cell"]["carry0"]
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match="carry_init must be None"):
        nn.RNN(ml.GRU(H, learn_initial_carry=True, carry_init=nn.initializers.ones)).init(jax.random.key(0), XS)


# ----------------------------------------------------------------------------- the drop-ins against Flax's cells


def _flax_and_memcell_step(flax_cell, mem_cell, convert_to, x, carry=None):
    """One step of Flax's cell and of memcell's drop-in on the same weights (Flax's, converted)."""
    carry = flax_cell.initialize_carry(jax.random.key(1), x.shape) if carry is None else carry
    v_flax = _randomize(flax_cell.init(jax.random.key(0), carry, x.real))
    v_mem = {"params": convert.to_dict(convert_to(v_flax["params"]))}
    return flax_cell.apply(v_flax, carry, x), mem_cell.apply(v_mem, carry, x)


@pytest.mark.parametrize("flax_type, mem_type", [(nn.LSTMCell, ml.LSTM), (nn.GRUCell, ml.GRU), (nn.SimpleCell, ml.RNN)])
def test_flax_arguments_gate_fn_activation_fn_bias_init(flax_type, mem_type):
    """Flax's gate_fn, activation_fn and bias_init mean what they mean for Flax's own cells."""
    fns = dict(activation_fn=jax.nn.elu) if flax_type is nn.SimpleCell else dict(gate_fn=jax.nn.relu,
                                                                                 activation_fn=jax.nn.elu)
    kw = dict(fns, bias_init=nn.initializers.constant(0.3))
    x = jax.random.normal(jax.random.key(5), (B, D))
    to_memcell = lambda p: convert.from_flax(p)[1]
    (c_f, y_f), (c_m, y_m) = _flax_and_memcell_step(flax_type(H, **kw), mem_type(H, **kw), to_memcell, x)
    _close((c_f, y_f), (c_m, y_m), 1e-6)
    other = mem_type(H, **fns).memcell_cell()  # other functions: no fast path runs them, and each says why
    assert memcell.paths.why_not("fused", other) is not None and memcell.paths.why_not("cudnn", other) is not None
    assert "user's function" in memcell.paths.why_not("fused", other) or "sets" in memcell.paths.why_not("fused", other)
    assert memcell.paths.why_not("fused", mem_type(H).memcell_cell()) is None  # Flax's defaults: the fast path stays
    # bias_init draws the biases Flax's cells have, as Flax does (for the LSTM the forget gate's too)
    mem = mem_type(H, bias_init=nn.initializers.constant(0.3))
    carry = mem.initialize_carry(jax.random.key(0), x.shape)
    params = ml.memcell_params(mem, mem.init(jax.random.key(0), carry, x)["params"], D)
    flax_params = flax_type(H, bias_init=nn.initializers.constant(0.3)).init(jax.random.key(0), carry, x)["params"]
    flax_biases = {k: v["bias"] for k, v in flax_params.items() if "bias" in v}
    mem_biases = {k: v["bias"] for k, v in convert.to_flax(mem.memcell_cell(), params).items() if "bias" in v}
    chex.assert_trees_all_equal(mem_biases, flax_biases)


def test_partitioned_initialisers_box_the_params_as_flax_does():
    """nn.with_partitioning's initialisers (linen's way to annotate params for model parallelism) box memcell's
    params with the same logical axes as Flax's cells' params; apply unboxes them."""
    part = lambda names: nn.with_partitioning(nn.initializers.lecun_normal(), names)  # noqa: E731
    kw = dict(kernel_init=part((None, "model")), recurrent_kernel_init=part(("model", None)))
    ours, theirs = nn.RNN(ml.GRU(H, **kw)), nn.RNN(nn.GRUCell(H, **kw))
    v, v_flax = ours.init(jax.random.key(0), XS), theirs.init(jax.random.key(0), XS)
    spec, flax_spec = nn.get_partition_spec(v)["params"]["cell"], nn.get_partition_spec(v_flax)["params"]["cell"]
    assert spec["w_x"] == flax_spec["ir"]["kernel"] == jax.P(None, "model")
    assert spec["w_h"] == flax_spec["hr"]["kernel"] == jax.P("model", None)
    assert not isinstance(v["params"]["cell"]["b_x"], nn.Partitioned)  # a plain bias stays plain
    plain = nn.RNN(ml.GRU(H))
    _close(ours.apply(v, XS), plain.apply(nn.meta.unbox(v), XS))
    c = ml.Cell("mingru", H, {"kernel_init": part((None, "model"))})
    assert isinstance(c.init(jax.random.key(0), jnp.zeros((B, H)), XS[:, 0])["params"]["w_x"], nn.Partitioned)


def test_lstm_forget_bias_with_bias_init():
    x = XS[:, 0]
    mod = ml.LSTM(H, bias_init=nn.initializers.zeros, forget_bias=2.0)
    b = mod.init(jax.random.key(0), mod.initialize_carry(jax.random.key(0), x.shape), x)["params"]["b"]
    np.testing.assert_array_equal(b, np.r_[np.zeros(H), 2 * np.ones(H), np.zeros(2 * H)])
    with pytest.raises(ValueError, match="bias_init cannot be set with init='chrono'"):
        memcell.lstm(H, init="chrono", max_timescale=10.0, bias_init="zeros")


@pytest.mark.parametrize("flax_type, mem_type", [(nn.GRUCell, ml.GRU), (nn.SimpleCell, ml.RNN), (nn.LSTMCell, ml.LSTM)])
def test_complex_inputs_as_flax(flax_type, mem_type):
    """Flax's cells take complex inputs (the step, and nn.RNN from a complex carry): so do the drop-ins."""
    x = (jax.random.normal(jax.random.key(5), (B, D)) + 1j * jax.random.normal(jax.random.key(6), (B, D)))
    (c_f, y_f), (c_m, y_m) = _flax_and_memcell_step(flax_type(H), mem_type(H), lambda p: convert.from_flax(p)[1], x)
    assert y_m.dtype == y_f.dtype == jnp.complex64
    _close((c_f, y_f), (c_m, y_m), 1e-6)
    # a whole sequence in nn.RNN, started from a complex carry (from a real one Flax's scan refuses it too)
    xs = jnp.stack([x] * 4, axis=1)
    model = nn.RNN(mem_type(H))
    variables = model.init(jax.random.key(0), xs.real)
    carry = jax.tree.map(lambda a: a.astype(jnp.complex64), mem_type(H).initialize_carry(jax.random.key(0), x.shape))
    ys = model.apply(variables, xs, initial_carry=carry)
    assert ys.dtype == jnp.complex64 and float(jnp.abs(ys.imag).max()) > 0
    with pytest.raises(TypeError, match="inputs must be a real array, got dtype complex64"):
        nn.RNN(ml.Cell("mingru", H)).init(jax.random.key(0), xs)


def test_integer_inputs_are_promoted_as_flax_does():
    """Integer inputs are promoted to the computation dtype, as Flax promotes them, in the cells and Recurrent."""
    ints = jnp.tile(jnp.arange(T), (B, 1))[..., None].repeat(D, -1)  # as Flax's own nnx tests feed them
    for module in (nn.RNN(ml.LSTM(H), reverse=True, keep_order=True), nn.RNN(ml.GRU(H)), ml.Recurrent("rnn", H)):
        variables = module.init(jax.random.key(0), ints)
        kw = {"lengths" if isinstance(module, ml.Recurrent) else "seq_lengths": LENGTHS}
        out_int = module.apply(variables, ints, **kw)
        out_float = module.apply(variables, ints.astype(jnp.float32), **kw)
        chex.assert_trees_all_equal(out_int, out_float)
    flax_out = nn.RNN(nn.GRUCell(H)).init_with_output(jax.random.key(0), ints)[0]
    assert flax_out.dtype == out_int[1].dtype == jnp.float32


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_outputs_in_the_computation_dtype_carry_float32(dtype):
    """With dtype/param_dtype bf16 or fp16 the outputs come back in that dtype, as Flax's; the carry stays float32."""
    model = nn.RNN(ml.LSTM(H, param_dtype=dtype, dtype=dtype), return_carry=True)
    variables = model.init(jax.random.key(0), XS.astype(dtype))
    assert all(a.dtype == dtype for a in jax.tree.leaves(variables))
    (c, h), ys = model.apply(variables, XS.astype(dtype))
    assert ys.dtype == dtype and c.dtype == h.dtype == jnp.float32  # tests/test_nnx.py compares with Flax's
    params = ml.memcell_params(ml.LSTM(H), variables["params"]["cell"], D)
    ref = memcell.unroll(memcell.lstm(H), jax.tree.map(lambda a: a.astype(jnp.float32), params), XS)[1]
    _close(ys.astype(jnp.float32), ref, 3e-2)
    # the pure cell keeps float32 outputs (its carry); float32 params with dtype=bf16 give bf16 outputs
    assert memcell.unroll(memcell.lstm(H, dtype=dtype), params, XS)[1].dtype == jnp.float32
    mixed = ml.Recurrent("gru", H, {"dtype": dtype})
    assert mixed.apply(mixed.init(jax.random.key(0), XS), XS)[1].dtype == dtype


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
    with pytest.raises(TypeError, match="inputs must be a numeric array, got dtype <U1"):
        mod.apply(variables, carry, np.array([["a"] * D]))
    with pytest.raises(TypeError, match=r"carry must be the tuple \(c, h\) that initialize_carry returns"):
        mod.apply(variables, carry[0], x)
    with pytest.raises(flax.errors.ScopeParamShapeError, match="w_x"):
        mod.apply(variables, carry, jnp.ones((2, D + 1)))  # params were made for D features
    with pytest.raises(ValueError, match="input_shape must be"):
        mod.initialize_carry(jax.random.key(0), ())
    with pytest.raises(TypeError, match="carry must be the array h that initialize_carry returns"):
        ml.GRU(H).apply({"params": {}}, (carry,), x)
    generic = ml.Cell(memcell.lstm, H, carry_layout=None)
    with pytest.raises(TypeError, match="carry must have the structure of initialize_carry's carry"):
        generic.init(jax.random.key(0), carry, x)  # Flax's (c, h) pair given to memcell's LSTMCarry cell
    with pytest.raises(ValueError, match=r"carry_layout must be 'flax', None or an order of the carry fields"):
        ml.Cell("lstm", H, carry_layout=("h",)).initialize_carry(jax.random.key(0), (2, D))
    with pytest.raises(TypeError, match="must build a memcell.Cell, its factory returned int"):
        ml.Cell(lambda h: h, H).initialize_carry(jax.random.key(0), (2, D))
    with pytest.raises(ValueError, match="cell must be one of .* or a 'module:factory' string, got 'lstmm'"):
        ml.Cell("lstmm", H).initialize_carry(jax.random.key(0), (2, D))
    with pytest.raises(ValueError, match="the hidden size .* must be given to build cell 'gru'"):
        ml.Cell("gru").initialize_carry(jax.random.key(0), (2, D))
    with pytest.raises(ValueError, match="a built memcell.Cell takes no hidden size or options"):
        ml.Cell(memcell.gru(H), H).initialize_carry(jax.random.key(0), (2, D))
    with pytest.raises(TypeError, match="options must be a mapping"):
        ml.Cell("gru", H, options=[1]).initialize_carry(jax.random.key(0), (2, D))
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        ml.LSTM(0).initialize_carry(jax.random.key(0), (2, D))
    with pytest.raises(ValueError, match=r"gate_fn must be one of \['sigmoid'\], got 'relu'"):
        ml.GRU(H, gate_fn="relu").initialize_carry(jax.random.key(0), (2, D))
    with pytest.raises(ValueError, match="merge must be one of"):
        ml.Recurrent(memcell.lstm(H), bidirectional=True, merge="max").init(jax.random.key(0), XS)
    with pytest.raises(ValueError, match="merge='sum' merges the two directions: it needs bidirectional=True"):
        ml.Recurrent(memcell.lstm(H), merge="sum").init(jax.random.key(0), XS)
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        ml.Recurrent(memcell.lstm(H), num_layers=0).init(jax.random.key(0), XS)
    with pytest.raises(ValueError, match="num_layers=3 contradicts the 2 cells"):
        ml.Recurrent([memcell.lstm(H)] * 2, num_layers=3).init(jax.random.key(0), XS)
    with pytest.raises(ValueError, match=r"xs must have shape \[..., T, D\]"):
        ml.Recurrent(memcell.lstm(H)).init(jax.random.key(0), jnp.ones((D,)))
    with pytest.raises(TypeError, match="module must be a memcell.linen cell or Recurrent"):
        ml.memcell_params(nn.Dense(3), {}, D)
    # the cells' options reach their factories, whose checks name them
    with pytest.raises(ValueError, match="r_min must be below r_max, got r_min=0.9 and r_max=0.5"):
        ml.Cell("lru", H, {"r_min": 0.9, "r_max": 0.5}).initialize_carry(jax.random.key(0), (2, D))
    with pytest.raises(ValueError, match="input_size must equal hidden_size=5 with input_projection=False"):
        ml.Cell("rglru", H, {"input_projection": False}).init(jax.random.key(0), jnp.zeros((2, H)), x)


@pytest.mark.slow  # a repeat: tests/test_docs.py runs every public module's examples in make test
def test_docstring_examples():
    failures, tried = doctest.testmod(ml, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
