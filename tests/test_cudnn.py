"""cuDNN: convert.to_cudnn / from_cudnn against jax.experimental.rnn, and backend="cudnn" dispatch.

No GPU runs these tests: the packing is checked through ``jax.experimental.rnn.unpack_lstm_weights``
and ``lstm_ref`` (JAX's reference of cuDNN's LSTM on the same flat weights), and the backend path is
run with its one cuDNN call (``memcell.cudnn._kernel``) replaced by ``lstm_ref`` and the platform
check told it is on a GPU, so everything around the cuDNN call is tested; the call itself is not.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

import memcell
from memcell import convert
from memcell import cudnn as mcudnn

D, H, T = 3, 4, 6
TOL = 1e-5  # float32: the same equations in another order of operations


def _random_params(layer, seed, d=D):
    """Params of ``layer``'s structure, all entries random (biases too: memcell's init zeroes most).

    Shapes come from ``jax.eval_shape`` and values from NumPy, so nothing is compiled here.
    """
    shapes = jax.eval_shape(lambda: layer.init(jax.random.key(0), d))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), shapes)


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(100 + seed).normal(size=shape), jnp.float32)


def _lstm_ref(weights, xs, lengths, num_layers, bidirectional, h0=None, c0=None, d=D):
    n = num_layers * (2 if bidirectional else 1)
    zeros = jnp.zeros((n, xs.shape[0], H), jnp.float32)
    W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, d, H, num_layers, bidirectional)
    return rnn.lstm_ref(xs, zeros if h0 is None else h0, zeros if c0 is None else c0, W_ih, W_hh, b_ih, b_hh,
                        jnp.asarray(lengths, jnp.int32), d, H, num_layers, 0.0, bidirectional)


def _final_hc(carries, bidirectional):
    """memcell's stack carries as cuDNN's h_n, c_n: [pseudo-layers, B, H]."""
    flat = [c for entry in carries for c in (entry if bidirectional else (entry,))]
    return jnp.stack([c.h for c in flat]), jnp.stack([c.c for c in flat])


STRUCTURES = {
    "1 layer": (lambda: memcell.stack([memcell.lstm(H)]), 1, False),
    "2 layers bidirectional": (
        lambda: memcell.stack([memcell.bidirectional(memcell.lstm(H), memcell.lstm(H))] * 2), 2, True),
}


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("name", STRUCTURES)
def test_packed_weights_give_lstm_ref_the_outputs_of_memcell(name):
    make, num_layers, bi = STRUCTURES[name]
    layer = make()
    params = _random_params(layer, 0)
    xs = _normal(1, (3, T, D))
    lengths = jnp.array([T, 4, 1])
    weights = convert.to_cudnn(layer, params)
    assert weights.shape == (rnn.get_num_params_in_lstm(D, H, num_layers, bi),)
    ys_ref, h_n, c_n = _lstm_ref(weights, xs, lengths, num_layers, bi)
    carries, ys = jax.jit(layer.apply)(params, xs, lengths=lengths)
    h, c = _final_hc(carries, bi)
    assert float(jnp.max(jnp.abs(ys - ys_ref))) < TOL
    assert float(jnp.max(jnp.abs(h - h_n))) < TOL and float(jnp.max(jnp.abs(c - c_n))) < TOL
    # lstm_ref zeroes padded outputs, as memcell does
    assert float(jnp.abs(ys[2, 1:]).max()) == 0.0


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
def test_lone_layer_and_lone_bidirectional_pack_like_a_one_layer_stack():
    cell = memcell.lstm(H)
    p = _random_params(memcell.layer(cell), 0)
    chex.assert_trees_all_equal(convert.to_cudnn(memcell.layer(cell), p), convert.to_cudnn(memcell.stack([cell]), (p,)))
    bi = memcell.bidirectional(cell, cell)
    pb = _random_params(bi, 1)
    w = convert.to_cudnn(bi, pb)
    chex.assert_trees_all_equal(w, convert.to_cudnn(memcell.stack([bi]), (pb,)))
    _, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, D, H, 1, True)
    np.testing.assert_array_equal(W_hh[1], pb.backward.w_h.T)  # pseudo-layer 1 is the backward direction
    np.testing.assert_array_equal(b_ih[0], pb.forward.b)
    np.testing.assert_array_equal(b_hh[0], np.zeros(4 * H))


@pytest.mark.parametrize("name", STRUCTURES)
def test_round_trips_are_exact(name):
    make, num_layers, bi = STRUCTURES[name]
    layer = make()
    params = _random_params(layer, 2)
    weights = convert.to_cudnn(layer, params)
    back_layer, back = convert.from_cudnn(weights, D, H, num_layers, bi)
    chex.assert_trees_all_equal(back, params)  # structure, shapes, dtypes and values
    chex.assert_trees_all_equal(convert.to_cudnn(back_layer, back), weights)
    # cuDNN's own weights (both biases nonzero): the weights are kept, the two biases summed
    w = 0.5 * _normal(3, (rnn.get_num_params_in_lstm(D, H, num_layers, bi),))
    lyr, p = convert.from_cudnn(w, D, H, num_layers, bi)
    W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, D, H, num_layers, bi)
    W_ih2, W_hh2, b_ih2, b_hh2 = rnn.unpack_lstm_weights(convert.to_cudnn(lyr, p), D, H, num_layers, bi)
    for i in W_ih:
        np.testing.assert_array_equal(W_ih2[i], W_ih[i])
        np.testing.assert_array_equal(W_hh2[i], W_hh[i])
        np.testing.assert_array_equal(b_ih2[i], b_ih[i] + b_hh[i])
        np.testing.assert_array_equal(b_hh2[i], np.zeros(4 * H))
    # from_cudnn's layer on such weights equals lstm_ref: docs/coming_from_flax_pytorch.md's example checks it


REFUSED = {
    "gru": (lambda: memcell.stack([memcell.gru(H)]), "to_cudnn packs LSTM layers only"),
    "peephole": (lambda: memcell.layer(memcell.lstm(H, peephole=True)), "peepholes has no torch.nn.LSTM"),
    "layer norm": (lambda: memcell.layer(memcell.lstm(H, layer_norm=True)), "layer-normalised"),
    "no forget gate": (lambda: memcell.layer(memcell.lstm(H, forget_gate=False)), "4 gate blocks"),
    # same params as the default LSTM: only the probe can tell
    "no input activation": (lambda: memcell.layer(memcell.lstm(H, input_activation=False)), "does not compute"),
    "sum merge": (lambda: memcell.bidirectional(memcell.lstm(H), memcell.lstm(H), merge="sum"), "does not compute"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_to_cudnn_refuses_what_cudnn_does_not_compute(case):
    make, message = REFUSED[case]
    layer = make()
    with pytest.raises(ValueError, match=message):
        convert.to_cudnn(layer, _random_params(layer, 0))


def test_from_cudnn_names_bad_arguments():
    n = rnn.get_num_params_in_lstm(D, H, 2, True)
    w = jnp.zeros((n,))
    with pytest.raises(ValueError, match=rf"weights must have {n} entries for input_size=3, hidden_size=4, "
                                         rf"num_layers=2, bidirectional=True .*got {n - 1}"):
        convert.from_cudnn(w[:-1], D, H, 2, True)
    with pytest.raises(ValueError, match=r"weights must have \d+ entries .*bidirectional=False.*got " + str(n)):
        convert.from_cudnn(w, D, H, 2, False)  # the right size for another structure
    with pytest.raises(ValueError, match=r"weights must be a 1-D array of \d+ entries .*got shape \(2, 5\)"):
        convert.from_cudnn(jnp.zeros((2, 5)), D, H)
    with pytest.raises(TypeError, match="weights must be a floating-point array, got dtype int32"):
        convert.from_cudnn(np.zeros(n, np.int32), D, H, 2, True)
    with pytest.raises(ValueError, match="hidden_size must be a positive int, got 0"):
        convert.from_cudnn(w, D, 0, 2, True)
    with pytest.raises(TypeError, match="bidirectional must be a bool, got 1"):
        convert.from_cudnn(w, D, H, 2, 1)


# ----------------------------------------------------------------------------- backend="cudnn"


def test_off_gpu_cudnn_raises_and_auto_never_picks_it(monkeypatch):
    monkeypatch.setattr(mcudnn, "_kernel", lambda *a, **k: pytest.fail("the cuDNN kernel ran off a GPU"))
    monkeypatch.setattr(mcudnn, "_platform", lambda: "cpu")
    cell = memcell.lstm(H)
    params = _random_params(memcell.layer(cell), 0)
    xs = _normal(1, (2, T, D))
    with pytest.raises(ValueError, match=r"cuDNN needs a GPU: jax.default_backend\(\) is 'cpu'"):
        memcell.unroll(cell, params, xs, backend="cudnn")
    with pytest.raises(ValueError, match="cuDNN needs a GPU"):
        memcell.layer(cell, backend="cudnn").apply(params, xs)
    chex.assert_trees_all_equal(memcell.unroll(cell, params, xs, backend="auto"),
                                memcell.unroll(cell, params, xs, backend="fused"))
    assert not (memcell.paths.why_not("cudnn", cell, params, xs) is None)


@pytest.fixture
def on_gpu(monkeypatch):
    """Tells memcell.cudnn it is on a GPU and runs lstm_ref where cuDNN would run; records the calls."""
    calls = []

    def fake(x, h_0, c_0, weights, seq_lengths, *, input_size, hidden_size, num_layers, bidirectional):
        if not isinstance(seq_lengths, jax.core.Tracer):
            assert int(seq_lengths.min()) >= 1, "a length of 0 reached cuDNN (jax#17966)"
        calls.append(x.shape)
        W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
        return rnn.lstm_ref(x, h_0, c_0, W_ih, W_hh, b_ih, b_hh, seq_lengths, input_size, hidden_size,
                            num_layers, 0.0, bidirectional)

    monkeypatch.setattr(mcudnn, "_platform", lambda: "gpu")
    monkeypatch.setattr(mcudnn, "_kernel", fake)
    return calls


@pytest.mark.parametrize("reverse", [pytest.param(False, marks=pytest.mark.slow), True])
def test_cudnn_path_matches_reference_values_and_gradients(on_gpu, reverse):
    cell = memcell.lstm(H)
    params = _random_params(memcell.layer(cell), 0)
    xs = _normal(1, (2, 3, T, D))  # two batch axes
    lengths = jnp.array([[T, 2, 0], [1, 5, T]])  # a 0 among them: cuDNN never sees it
    carry = memcell.cells.LSTMCarry(*_normal(2, (2, 2, 3, H)))

    def loss(backend):
        def f(p, x, c):
            c, ys = memcell.unroll(cell, p, x, c, lengths=lengths, reverse=reverse, backend=backend)
            return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(c.h ** 2) - jnp.sum(jnp.sin(c.c)), (c, ys)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(params, xs, carry)

    (_, out_c), grads_c = loss("cudnn")
    assert len(on_gpu) == 1 and on_gpu[0] == (6, T, D)  # one kernel call, the batch axes flattened
    (_, out_r), grads_r = loss("reference")
    chex.assert_trees_all_close(out_c, out_r, atol=TOL, rtol=TOL)
    chex.assert_trees_all_close(grads_c, grads_r, atol=TOL, rtol=TOL)
    chex.assert_trees_all_equal(out_c[0].h[0, 2], carry.h[0, 2])  # length 0: the initial carry
    assert float(jnp.abs(out_c[1][0, 2]).max()) == 0.0 and float(jnp.abs(grads_c[1][0, 2]).max()) == 0.0


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
def test_cudnn_path_under_jit_unbatched_and_in_layers(on_gpu):
    cell = memcell.lstm(H)
    params = _random_params(memcell.layer(cell), 0)
    xs = _normal(1, (T, D))
    run = jax.jit(lambda p, x, n: memcell.unroll(cell, p, x, lengths=n, backend="cudnn"))
    chex.assert_trees_all_close(run(params, xs, jnp.array(4)), memcell.unroll(cell, params, xs, lengths=4),
                                atol=TOL, rtol=TOL)
    # a 2-layer bidirectional stack built with backend="cudnn" equals the reference and lstm_ref
    bi = memcell.bidirectional(cell, cell, backend="cudnn")
    fast = memcell.stack([bi, bi])
    slow = memcell.stack([memcell.bidirectional(cell, cell)] * 2)
    p2 = _random_params(slow, 3)
    xb = _normal(4, (3, T, D))
    lengths = jnp.array([T, 3, 0])
    on_gpu.clear()
    out = jax.jit(fast.apply)(p2, xb, lengths=lengths)
    assert len(on_gpu) == 4  # one call per direction and layer
    chex.assert_trees_all_close(out, jax.jit(slow.apply)(p2, xb, lengths=lengths), atol=TOL, rtol=TOL)


UNSUPPORTED = {
    "gru": (lambda: memcell.gru(H), {}, "this cell has a GRUSpec"),
    "peephole": (lambda: memcell.lstm(H, peephole=True), {}, "this one sets peephole"),
    "bfloat16 compute": (lambda: memcell.lstm(H, dtype=jnp.bfloat16), {}, "dtype=bfloat16"),
    "bfloat16 params": (lambda: memcell.lstm(H, param_dtype=jnp.bfloat16), {}, "float32 params only, got bfloat16"),
    "resets": (lambda: memcell.lstm(H), {"resets": jnp.array([0, 0, 1, 0, 0, 0], bool)}, "resets"),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_what_cudnn_cannot_run_raises_with_cudnn_and_runs_fused_with_auto(on_gpu, case):
    make, kw, reason = UNSUPPORTED[case]
    cell = make()
    params = _random_params(memcell.layer(cell), 0)
    xs = _normal(1, (2, T, D))
    with pytest.raises(ValueError, match=f"backend='cudnn' cannot run this unroll: .*{reason}"):
        memcell.unroll(cell, params, xs, backend="cudnn", **kw)
    auto = memcell.unroll(cell, params, xs, backend="auto", **kw)
    assert not on_gpu
    fused_ok = (memcell.paths.why_not("fused", cell, **kw) is None)
    chex.assert_trees_all_equal(auto, memcell.unroll(cell, params, xs, backend="fused" if fused_ok else "reference",
                                                     **kw))


def test_auto_runs_cudnn_on_a_gpu(on_gpu):
    cell = memcell.lstm(H)
    params = _random_params(memcell.layer(cell), 0)
    xs = _normal(1, (2, T, D))
    chex.assert_trees_all_equal(memcell.unroll(cell, params, xs, backend="auto"),
                                memcell.unroll(cell, params, xs, backend="cudnn"))
    assert len(on_gpu) == 2
    assert (memcell.paths.why_not("cudnn", cell, params, xs) is None)
    assert memcell.paths.why_not("cudnn", cell, params, xs.astype(jnp.bfloat16)).endswith("got xs of dtype bfloat16")


@pytest.mark.slow  # make test budget: in make test-slow (the property is also checked by a cheaper test, or for one more cell)
def test_under_vmap_cudnn_refuses_and_auto_runs_fused(on_gpu):
    """cuDNN's primitive has no batching rule: under jax.vmap the fused path runs instead."""
    cell = memcell.lstm(H)
    params = _random_params(memcell.layer(cell), 0)
    xs = _normal(1, (2, T, D))
    run = lambda backend: jax.vmap(lambda x: memcell.unroll(cell, params, x, backend=backend))(xs)
    with pytest.raises(ValueError, match="no batching rule, so it cannot run under jax.vmap"):
        run("cudnn")
    chex.assert_trees_all_equal(run("auto"), run("fused"))
    assert not on_gpu


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU: runs the real cuDNN call")
@pytest.mark.parametrize("reverse", [False, True])
def test_real_cudnn_matches_reference_on_a_gpu(reverse):
    """The one test of the cuDNN call itself; it runs only where a GPU is (none was when this was written)."""
    cell = memcell.lstm(H)
    params = _random_params(memcell.layer(cell), 0)
    xs = _normal(1, (3, T, D))
    lengths = jnp.array([T, 2, 0])

    def loss(backend):
        def f(p, x):
            c, ys = memcell.unroll(cell, p, x, lengths=lengths, reverse=reverse, backend=backend)
            return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(c.h ** 2) - jnp.sum(jnp.sin(c.c)), (c, ys)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(params, xs)

    with jax.default_matmul_precision("highest"):  # no TF32, so float32 tolerances hold
        got, want = loss("cudnn"), loss("reference")
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
