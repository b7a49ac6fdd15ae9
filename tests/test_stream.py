"""memcell.stream: a stack run step by step or chunk by chunk equals unrolling it at once; sample_text on it."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import memcell
from memcell import tasks

D, H, T = 3, 5, 9


def close(a, b, tol=1e-5):
    chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def model():
    # a stack with a learnt initial carry in its second layer, so init_carry must find it
    stack = memcell.stack([memcell.lstm(H), memcell.layer(memcell.gru(H), learn_initial_carry=True)], residual=True)
    params = stack.init(jax.random.key(0), D)
    params = (params[0], params[1]._replace(carry=memcell.cells.GRUCarry(jnp.linspace(-0.5, 0.5, H))))
    return stack, params


def test_step_by_step_and_chunks_equal_unrolling_at_once(model):
    stack, params = model
    s = memcell.stream(stack, D)
    xs = jax.random.normal(jax.random.key(1), (2, T, D))
    carry_all, ys_all = stack.apply(params, xs)
    step = jax.jit(s.step)
    carry, ys = s.init_carry(params, (2,)), []
    for t in range(T):
        carry, y = step(params, carry, xs[:, t])
        ys.append(y)
    close((carry, jnp.stack(ys, 1)), (carry_all, ys_all))
    carry, parts = s.init_carry(params, (2,)), []
    for lo, hi in [(0, 4), (4, 5), (5, T)]:  # uneven chunks
        carry, y = s.feed(params, carry, xs[:, lo:hi])
        parts.append(y)
    close((carry, jnp.concatenate(parts, 1)), (carry_all, ys_all))
    # the learnt carry is where the stream starts (a zero start would not match)
    assert np.allclose(s.init_carry(params, (2,))[1].h, jnp.linspace(-0.5, 0.5, H))


def test_stream_refuses_bidirectional_layers_and_bad_input():
    bi = memcell.stack([memcell.lstm(4), memcell.bidirectional(memcell.lstm(4), memcell.lstm(4))])
    params = bi.init(jax.random.key(0), D)
    with pytest.raises(ValueError, match=r"cannot run a bidirectional layer \(layer 1 of the stack is one\)"):
        memcell.stream(bi, D).init_carry(params)
    one = memcell.bidirectional(memcell.gru(4), memcell.gru(4))
    with pytest.raises(ValueError, match=r"cannot run a bidirectional layer \(the layer is one\)"):
        memcell.stream(one, D).init_carry(one.init(jax.random.key(0), D))
    s = memcell.stream(memcell.rnn(4), D)
    p = memcell.rnn(4).init(jax.random.key(0), D)
    with pytest.raises(ValueError, match=r"x must have shape \[\*b, 3\] \(one step\), got \(2, 4\)"):
        s.step(p, s.init_carry(p, (2,)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"xs must have shape \[\*b, t, 3\] \(a chunk of steps\), got \(3,\)"):
        s.feed(p, s.init_carry(p), jnp.ones((3,)))
    with pytest.raises(TypeError, match="layer must be a memcell.Cell or memcell.Layer, got str"):
        memcell.stream("lstm", D)
    with pytest.raises(ValueError, match="input_size must be a positive int, got 0"):
        memcell.stream(memcell.rnn(4), 0)


def test_stream_refuses_reverse_layers_by_name():
    """A reverse layer reads each sequence from its end: streamed forwards it gave other outputs
    than layer.apply (up to 0.40 apart), so it is refused, alone or in a stack, naming the layer."""
    rev = memcell.layer(memcell.lstm(4), reverse=True)
    with pytest.raises(ValueError, match=r"cannot run a reverse layer \(the layer reads its sequence backwards"):
        memcell.stream(rev, D)
    with pytest.raises(ValueError, match=r"cannot run a reverse layer \(layer 1 of the stack reads its sequence"):
        memcell.stream(memcell.stack([memcell.gru(4), rev]), D)
    # the layers memcell makes declare it (Layer.spec); a user's layer without a spec is probed
    user = memcell.Layer(rev.init, rev.apply)
    assert user.spec is None
    with pytest.raises(ValueError, match=r"cannot run a reverse layer \(the layer reads its sequence backwards"):
        memcell.stream(user, D)
    with pytest.raises(ValueError, match=r"cannot run a reverse layer \(layer 1 of the stack reads its sequence"):
        memcell.stream(memcell.stack([memcell.gru(4), user]), D)
    fwd = memcell.layer(memcell.lstm(4))
    memcell.stream(memcell.Layer(fwd.init, fwd.apply), D)  # a forward user layer passes the probe


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("to be or not to be, that is the question\n" * 20)
    task = tasks.char_lm(10, corpus=path)
    model = tasks.sequence_model([memcell.lstm(8), memcell.gru(8)], task.output_size, "all")
    return task, model, model.init(jax.random.key(0), task.input_size)


def test_top_k_1_is_greedy_and_greedy_follows_the_model(lm):
    task, model, params = lm
    vocab = task.info["vocab"]
    g = tasks.sample_text(task, model, params, jax.random.key(1), prompt="to be", length=12, temperature=0.0)
    for seed in (1, 2):
        k1 = tasks.sample_text(task, model, params, jax.random.key(seed), prompt="to be", length=12, top_k=1)
        assert k1 == g
    # every greedy character is the argmax of the whole model applied to everything before it
    ids = jnp.asarray([vocab.index(c) for c in "to be" + g])
    logits = model.apply(params, jax.nn.one_hot(ids, task.input_size))
    assert "".join(vocab[int(i)] for i in jnp.argmax(logits[4:-1], -1)) == g
    # top_k restricts the draw: with top_k=2 each character is one of the two most likely there
    s2 = tasks.sample_text(task, model, params, jax.random.key(3), prompt="to be", length=12, top_k=2,
                           temperature=5.0)
    ids = jnp.asarray([vocab.index(c) for c in "to be" + s2])
    logits = model.apply(params, jax.nn.one_hot(ids, task.input_size))[4:-1]
    top2 = np.argsort(-np.asarray(logits), -1)[:, :2]
    assert all(vocab.index(c) in row for c, row in zip(s2, top2))
    assert s2 != g  # hot enough that it does not just repeat the greedy text


def test_sampling_options_are_checked(lm):
    task, model, params = lm
    V = len(task.info["vocab"])
    key = jax.random.key(0)
    for bad in (-1.0, float("inf"), float("nan"), "1", None):
        with pytest.raises(ValueError, match="temperature must be"):
            tasks.sample_text(task, model, params, key, temperature=bad)
    for bad in (0, V + 1, 2.0, True):
        with pytest.raises(ValueError, match=rf"top_k must be None or an int in \[1, {V}\] \(the vocabulary size\), got"):
            tasks.sample_text(task, model, params, key, top_k=bad)
    last = tasks.sequence_model(memcell.lstm(8), task.output_size, "last")
    with pytest.raises(ValueError, match="model must have readout='all'"):
        tasks.sample_text(task, last, last.init(key, task.input_size), key)
