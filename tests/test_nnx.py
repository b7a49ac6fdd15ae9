"""memcell.nnx: memcell cells inside flax.nnx (nnx.RNN, nnx.Bidirectional), Recurrent, jit/grad, state, training,
and the Flax drop-ins against Flax's own nnx cells (arguments, sharding metadata, dtypes, integer inputs)."""

import doctest

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import memcell
import memcell.linen as ml
import memcell.nnx as mn
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


# (module maker, the pure cell it must run): drop-ins, an option, a user's cell, and the table's cells by name
MAKERS = {
    "LSTM": lambda rngs: (mn.LSTM(D, H, rngs=rngs), memcell.lstm(H)),
    "LSTM_proj": lambda rngs: (mn.LSTM(D, H, proj_size=2, rngs=rngs), memcell.lstm(H, proj_size=2)),
    "GRU": lambda rngs: (mn.GRU(D, H, rngs=rngs), memcell.gru(H)),
    "RNN_relu": lambda rngs: (mn.RNN(D, H, activation_fn=jax.nn.relu, rngs=rngs), memcell.rnn(H, activation="relu")),
    "Cell_layer_norm": lambda rngs: (mn.Cell("lstm", D, H, options={"layer_norm": True}, rngs=rngs),
                                     memcell.lstm(H, layer_norm=True)),
    "user": lambda rngs: (mn.Cell(leaky_cell, D, H, rngs=rngs), leaky_cell(H)),
    **{f"table_{name}": (lambda rngs, name=name: (mn.Cell(name, D, H, rngs=rngs), CELLS[name](H))) for name in CELLS},
}
# make test budget: tests/test_linen.py runs these cells' nn.RNN in make test; nnx.RNN's runs here go to test-slow
_RNN_SLOW = {"table_lstm", "table_lru", "table_mingru", "table_minlstm", "table_mlstm", "table_slstm", "table_rglru",
             "table_irnn", "table_rnn", "table_gru"}


def _randomize(module, seed=1):
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noise = [a + 0.2 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    nnx.update(module, treedef.unflatten(noise))
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


# make test budget: table cells whose carry layout another case here has (a one-field h, the LSTM's
# (c, h), several fields) run in make test-slow; a new cell of the table runs in make test.
_STEP_SLOW = {"table_rnn", "table_irnn", "table_lstm", "table_gru", "table_mingru", "table_minlstm", "table_rglru",
              "table_slstm"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _STEP_SLOW else n for n in MAKERS])
def test_one_step_equals_pure_step_bit_for_bit(name):
    mod, cell = MAKERS[name](nnx.Rngs(0))
    mod = _randomize(mod)
    params = mod.memcell_params()
    assert mod.cell.spec == cell.spec
    assert jax.tree.structure(params) == jax.tree.structure(cell.init(jax.random.key(0), D))
    mc = jax.tree.map(lambda a: a + 0.5, cell.initial_carry(params, (B,)))
    new_f, y_f = mod(flax_carry(mc), XS[:, 0])
    new_m, y_m = cell.step(params, mc, XS[:, 0])
    chex.assert_trees_all_equal((new_f, y_f), (flax_carry(new_m), y_m))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _RNN_SLOW else n for n in MAKERS])
def test_inside_nnx_rnn_with_seq_lengths(name):
    mod, cell = MAKERS[name](nnx.Rngs(0))
    mod = _randomize(mod)
    carry_f, ys_f = nnx.RNN(mod, return_carry=True)(XS, seq_lengths=LENGTHS)
    carry_m, ys_m = memcell.unroll(cell, mod.memcell_params(), XS, lengths=LENGTHS)
    _close(jnp.where(VALID, ys_f, 0.0), ys_m)  # nnx.RNN leaves its own values in the padding
    _close(carry_f, flax_carry(carry_m))


def test_inside_nnx_bidirectional_with_seq_lengths():
    rngs = nnx.Rngs(0)
    fwd, bwd = _randomize(mn.GRU(D, H, rngs=rngs), 1), _randomize(mn.GRU(D, H, rngs=rngs), 2)
    (cf, cb), ys_f = nnx.Bidirectional(nnx.RNN(fwd), nnx.RNN(bwd), return_carry=True)(XS, seq_lengths=LENGTHS)
    pair = memcell.DirectionPair(fwd.memcell_params(), bwd.memcell_params())
    carry_m, ys_m = memcell.bidirectional(memcell.gru(H), memcell.gru(H)).apply(pair, XS, lengths=LENGTHS)
    _close(jnp.where(VALID, ys_f, 0.0), ys_m)
    _close((cf, cb), (carry_m.forward.h, carry_m.backward.h))


def test_users_cell_in_an_nnx_model():
    """A user's own cell (tests/user_cells.py) inside an nnx model, by 'module:factory', with its dict params."""

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.rnn = nnx.RNN(mn.Cell("user_cells:leaky_cell", D, H, rngs=rngs))
            self.out = nnx.Linear(H, 2, rngs=rngs)

        def __call__(self, xs):
            return self.out(self.rnn(xs)[:, -1])

    model = Model(nnx.Rngs(0))
    assert set(nnx.to_pure_dict(nnx.state(model.rnn.cell, nnx.Param))) == {"w", "a"}
    ys = memcell.unroll(leaky_cell(H), model.rnn.cell.memcell_params(), XS)[1][:, -1]
    _close(model(XS), model.out(ys))
    grads = nnx.grad(lambda m: jnp.sum(m(XS) ** 2))(model)
    assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(nnx.to_pure_dict(grads)["rnn"]))
    rec = mn.Recurrent(leaky_cell, D, H, num_layers=2, rngs=nnx.Rngs(0))
    _close(rec(XS)[1], memcell.stack([leaky_cell(H)] * 2).apply(rec.memcell_params(), XS)[1])


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
    make = lambda seed: mn.Cell("lstm", D, H, options={"peephole": True}, rngs=nnx.Rngs(seed))
    mod = _randomize(make(0))
    expected = nnx.RNN(mod)(XS)
    graphdef, state = nnx.split(mod)
    np.testing.assert_array_equal(nnx.RNN(nnx.merge(graphdef, state))(XS), expected)
    pure = nnx.to_pure_dict(nnx.state(mod, nnx.Param))
    assert set(pure) == {"w_x", "w_h", "b", "p_i", "p_f", "p_o"}
    fresh = make(5)
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
    assert isinstance(mn.Cell(memcell.gru, D, H, carry_layout=None, rngs=nnx.Rngs(0)).initialize_carry((D,)),
                      memcell.cells.GRUCarry)


def test_recurrent_equals_linen_recurrent_and_memcell_stack():
    """nnx's Recurrent is linen's: the same options, params and outputs."""
    opts = dict(num_layers=2, bidirectional=True, merge="sum")
    model = _randomize(mn.Recurrent("gru", D, H, rngs=nnx.Rngs(0), **opts))
    assert set(nnx.to_pure_dict(nnx.state(model, nnx.Param))) == {"layer_0", "layer_1"}
    params = model.memcell_params()
    lyr = memcell.stack([memcell.bidirectional(memcell.gru(H), memcell.gru(H), merge="sum")] * 2)
    expected = lyr.apply(params, XS, lengths=LENGTHS)
    chex.assert_trees_all_equal(model(XS, lengths=LENGTHS), expected)
    linen = ml.Recurrent("gru", H, **opts)
    chex.assert_trees_all_equal(linen.apply({"params": convert.to_dict(params)}, XS, lengths=LENGTHS), expected)


def test_recurrent_dropout_modes_and_learnt_carry():
    model = mn.Recurrent("lstm", D, H, input_dropout=0.5, learn_initial_carry=True, rngs=nnx.Rngs(0, dropout=1))
    assert set(nnx.to_pure_dict(nnx.state(model, nnx.Param))["layer_0"]) == {"params", "carry"}
    train_a, train_b = model(XS)[1], model(XS)[1]  # training by default, as nnx.Dropout: a new mask a call
    assert not np.allclose(train_a, train_b)
    model.eval()
    ev = model(XS)[1]
    lyr = memcell.stack([memcell.layer(memcell.lstm(H), dropout=0.5, learn_initial_carry=True)])
    chex.assert_trees_all_equal(ev, lyr.apply(model.memcell_params(), XS)[1])
    np.testing.assert_array_equal(model(XS, deterministic=False, rngs=nnx.Rngs(dropout=3))[1],
                                  model(XS, deterministic=False, rngs=nnx.Rngs(dropout=3))[1])
    grads = nnx.grad(lambda m: jnp.sum(m(XS)[1] ** 2))(model)
    assert float(jnp.abs(nnx.to_pure_dict(grads)["layer_0"]["carry"]["c"]).sum()) > 0


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


# ----------------------------------------------------------------------------- the drop-ins against Flax's cells


def test_sharding_metadata_reaches_the_params_as_flax_does():
    """kernel_metadata, recurrent_kernel_metadata and bias_metadata annotate and place memcell's params as Flax's."""
    meta = dict(kernel_metadata={"out_sharding": (None, "model")},
                recurrent_kernel_metadata={"out_sharding": ("model", None)}, bias_metadata={"out_sharding": ("model",)})
    # Flax places annotated params eagerly, so it wants a mesh, for its cells and ours (Auto axes: in nnx.RNN, with
    # Explicit ones, Flax's LSTMCell and memcell's alike leave a sharded carry that the scan refuses)
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    with jax.set_mesh(mesh):
        ours, theirs = mn.GRU(D, H, rngs=nnx.Rngs(0), **meta), nnx.GRUCell(D, H, rngs=nnx.Rngs(0), **meta)
        spec = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(ours, nnx.Param)))
        flax_spec = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(theirs, nnx.Param)))
        assert spec["w_x"] == flax_spec["dense_i"]["kernel"] == jax.P(None, "model")
        assert spec["w_h"] == flax_spec["dense_h"]["kernel"] == jax.P("model", None)
        assert spec["b_x"] == spec["b_h"] == flax_spec["dense_i"]["bias"] == jax.P("model")
        assert ours.w_x.sharding.spec == theirs.dense_i.kernel.sharding.spec == jax.P(None, "model")
        proj = mn.LSTM(D, H, proj_size=2, rngs=nnx.Rngs(0), **meta)
        assert proj.w_hr.sharding.spec == jax.P("model", None) and proj.b.sharding.spec == jax.P("model")
        generic = mn.Cell("mingru", D, H, param_metadata={"w_x": {"out_sharding": (None, "model")}}, rngs=nnx.Rngs(0))
        assert generic.w_x.sharding.spec == jax.P(None, "model") and "out_sharding" not in generic.b.get_metadata()
        # Flax's partitioned initialisers (nnx.with_partitioning) annotate the params they draw, as in Flax's cells
        boxed = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("model", None))
        ours = mn.LSTM(D, H, kernel_init=boxed, rngs=nnx.Rngs(0))
        theirs = nnx.LSTMCell(D, H, kernel_init=boxed, rngs=nnx.Rngs(0))
        assert ours.w_x.sharding.spec == theirs.ii.kernel.sharding.spec == jax.P("model", None)
        assert "out_sharding" not in ours.w_h.get_metadata()
        ys = nnx.jit(lambda m, x: nnx.RNN(m)(x))(mn.LSTM(D, H, rngs=nnx.Rngs(0), **meta), XS)
    _close(ys, nnx.RNN(mn.LSTM(D, H, rngs=nnx.Rngs(0)))(XS))


def test_flax_arguments_and_int_inputs_as_in_flax_own_nnx_tests():
    """What Flax's own nnx recurrent tests pass: custom gate/activation functions, int inputs with reverse,
    keep_order and seq_lengths, and bfloat16/float16 cells whose outputs come back in that dtype."""
    x = jnp.ones((1, 3))
    cell = mn.LSTM(3, 4, gate_fn=jax.nn.relu, activation_fn=jax.nn.elu, rngs=nnx.Rngs(0))
    _, y = cell(cell.initialize_carry(x.shape, nnx.Rngs(0)), x)
    p = cell.memcell_params()
    i, f, g, o = jnp.split(x @ p.w_x + p.b, 4, axis=-1)  # from a zero carry: c = relu(i) elu(g)
    _close(y, jax.nn.relu(o) * jax.nn.elu(jax.nn.relu(i) * jax.nn.elu(g)))
    ints = jnp.concatenate([jnp.tile(jnp.arange(5), (2, 1)).reshape(2, 5, 1)] * 3, axis=-1)
    lstm = mn.LSTM(3, 4, rngs=nnx.Rngs(5))
    for kw in (dict(reverse=True), dict(reverse=True, keep_order=True), dict(return_carry=True)):
        rnn = nnx.RNN(lstm, **kw)
        chex.assert_trees_all_equal(rnn(ints, seq_lengths=jnp.array([3, 5])),
                                    rnn(ints.astype(jnp.float32), seq_lengths=jnp.array([3, 5])))
    for dtype in (jnp.bfloat16, jnp.float16):
        ours = nnx.RNN(mn.LSTM(3, 4, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(8)), return_carry=True)
        theirs = nnx.RNN(nnx.LSTMCell(3, 4, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(8)))
        (c, h), ys = ours(jnp.ones((2, 5, 3), dtype))
        assert ys.dtype == theirs(jnp.ones((2, 5, 3), dtype)).dtype == dtype
        assert c.dtype == h.dtype == jnp.float32  # memcell's carry stays float32
    gru = mn.GRU(3, 4, rngs=nnx.Rngs(0))
    z = jnp.ones((2, 3)) * (1 + 1j)
    carry, y = gru(gru.initialize_carry(z.shape), z)
    assert y.dtype == carry.dtype == jnp.complex64
    with pytest.raises(TypeError, match="inputs must be a real array, got dtype complex64"):
        mn.Cell("rnn", 3, 4, rngs=nnx.Rngs(0))(jnp.zeros((2, 4)), z)


def test_bad_input():
    cell = mn.LSTM(D, H, rngs=nnx.Rngs(0))
    carry = cell.initialize_carry((2, D))
    with pytest.raises(ValueError, match=r"inputs must have 3 features \(in_features\).*got shape \(2, 4\)"):
        cell(carry, jnp.ones((2, D + 1)))
    with pytest.raises(TypeError, match="inputs must be an array, got list"):
        cell(carry, [[1.0] * D])
    with pytest.raises(TypeError, match=r"carry must be the tuple \(c, h\) that initialize_carry returns"):
        cell(carry[0], jnp.ones((2, D)))
    with pytest.raises(TypeError, match="carry must be the array h that initialize_carry returns"):
        mn.GRU(D, H, rngs=nnx.Rngs(0))((carry,), jnp.ones((2, D)))
    with pytest.raises(TypeError, match="carry must have the structure of initialize_carry's carry"):
        mn.Cell(memcell.lstm, D, H, carry_layout=None, rngs=nnx.Rngs(0))(carry, jnp.ones((2, D)))
    with pytest.raises(ValueError, match="in_features must be a positive int, got 0"):
        mn.GRU(0, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        mn.RNN(D, -1, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="rngs must be an nnx.Rngs"):
        mn.LSTM(D, H, rngs=0)
    with pytest.raises(TypeError, match="must build a memcell.Cell, its factory returned NoneType"):
        mn.Cell(lambda h: None, D, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_shape must be"):
        cell.initialize_carry((2, 0))
    with pytest.raises(ValueError, match="carry_init must be None"):
        mn.GRU(D, 4, learn_initial_carry=True, carry_init=jax.nn.initializers.ones, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="unexpected option 'layers'; the sequence options are"):
        mn.Recurrent("gru", D, H, layers=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="zoneout is available for one-directional layers only"):
        mn.Recurrent("gru", D, H, bidirectional=True, zoneout=0.1, rngs=nnx.Rngs(0))
    # the cells' options reach their factories, whose checks name them
    with pytest.raises(ValueError, match="r_min must be below r_max, got r_min=0.9 and r_max=0.5"):
        mn.Cell("lru", D, H, options={"r_min": 0.9, "r_max": 0.5}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_size must equal hidden_size=5 with input_projection=False"):
        mn.Cell("rglru", D, H, options={"input_projection": False}, rngs=nnx.Rngs(0))


@pytest.mark.slow  # a repeat: tests/test_docs.py runs every public module's examples in make test
def test_docstring_examples():
    failures, tried = doctest.testmod(mn, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
