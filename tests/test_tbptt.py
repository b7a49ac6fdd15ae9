"""Truncated BPTT over long streams (memcell.train.make_stream_train_step, the char_lm streams,
``train_task(tbptt=True)``, ``memcell train --tbptt``): window-to-window carries equal one long
unroll's, no gradient crosses a window boundary, the rows' positions advance, stop before a
document and wrap, a resumed run is bit-identical, and the CLI flag works or exits 2."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_helpers import run_main as _main

import memcell
from memcell import tasks, train

V = 5  # vocabulary of the synthetic streams


def _streams(n: int, starts=(), seed: int = 0) -> tasks.TokenStreams:
    tokens = np.random.default_rng(seed).integers(0, V, n).astype(np.int32)
    empty = np.zeros((0,), np.int32)
    return tasks.TokenStreams(train=tokens, train_starts=np.asarray(starts, np.int32), valid_xs=tokens[:-1],
                              valid_ys=tokens[1:], valid_starts=empty)


def _task(streams) -> tasks.Task:
    """A token task around ``streams`` with char_lm's loss (masked by the windows' lengths)."""
    lm = tasks.char_lm(length=4, max_valid_chars=50)
    return lm._replace(input_size=V, output_size=V, stream=streams)


def _model(backend="reference"):
    return tasks.sequence_model([memcell.lstm(4), memcell.gru(3)], V, "all", backend=backend)


def test_window_carries_equal_one_long_unroll():
    """Windows run one after another, each from the carry the last one ended with (on the fused
    path, as backend="auto" trains), give the carries of one reference unroll over the rows'
    whole streams at every window boundary (a 2-layer stack: its carry is a tuple). Row 0 has a
    document starting at 6: its second window is cut there, the third restarts the carry, as
    the reference's ``resets`` do from the initial carry."""
    B, L, W = 2, 4, 3
    streams = _streams(B * (L * W + 1))._replace(train_starts=np.array([6], np.int32))
    task, model = _task(streams), _model("auto")
    params = model.init(jax.random.key(0), V)
    sample, cursor = tasks.stream_sampler(streams, B, L)
    loss = jax.jit(tasks.stream_loss_fn(task, model))
    # Any carry at the start: the first window of each row restarts from the initial one.
    carry = jax.tree.map(lambda x: x + 0.3, model.layers.apply(params.rnn, jnp.zeros((B, 0, V)))[0])
    carries, ends, end = [], [], np.zeros(B, np.int32)
    for w in range(W):
        batch, cursor = sample(None, cursor)
        _, (carry, _) = loss(params, carry, batch, None)
        end = end + np.asarray(batch["lengths"])
        carries.append(carry)
        ends.append(end)
    np.testing.assert_array_equal(np.stack(ends), [[4, 4], [6, 8], [10, 12]])  # row 0 cut before 6
    rows = streams.train[: B * (L * W + 1)].reshape(B, L * W + 1)[:, :-1]
    xs = jax.nn.one_hot(rows, V)
    resets = np.zeros(rows.shape, bool)
    resets[0, 6] = True
    apply = jax.jit(lambda p, xs, n: _model().layers.apply(p, xs, lengths=n, resets=resets))
    for w in range(W):  # the long unroll's carry after each window (the reference path; lengths: one compile)
        want, _ = apply(params.rnn, xs, jnp.asarray(ends[w]))
        np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in jax.tree.leaves(carries[w])]),
                                   np.concatenate([np.ravel(x) for x in jax.tree.leaves(want)]), rtol=1e-5, atol=1e-6)


def test_gradient_stops_at_the_window_boundary():
    """Window 2's loss, after a stream step over window 1 with params p1, does not depend on p1:
    the carry crosses the boundary as data. The same composition without the stream step does."""
    B, L = 2, 4
    streams = _streams(B * (2 * L + 1), seed=1)
    task, model = _task(streams), tasks.sequence_model(memcell.lstm(4), V, "all")
    p1 = model.init(jax.random.key(1), V)
    p2 = model.init(jax.random.key(2), V)
    sample, cursor = tasks.stream_sampler(streams, B, L)
    b1, cursor = sample(None, cursor)
    b2, _ = sample(None, cursor)
    assert not bool(jnp.any(b2["reset"]))  # window 2 continues window 1's carry
    loss = tasks.stream_loss_fn(task, model)
    tx = train.optimizer(1e-2)
    carry0 = model.layers.apply(p1.rnn, jnp.zeros((B, 0, V)))[0]
    state = train.init_state(0, lambda k: p1, tx)._replace(stream=train.StreamState(cursor, carry0))
    step = train.make_stream_train_step(loss, tx)

    def through_step(p):
        s, _ = step(state._replace(params=p), b1)
        return loss(p2, s.stream.carry, b2, None)[0]

    def through_carry(p):  # the carry handed on without the stream step's stop_gradient
        carry = loss(p, carry0, b1, None)[1][0]
        return loss(p2, carry, b2, None)[0]

    g = jax.jit(jax.grad(through_step))(p1)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(g))
    g_open = jax.jit(jax.grad(through_carry))(p1)
    assert any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(g_open.rnn))


def test_the_stream_step_writes_the_windows_last_carry_back():
    """The stream train step hands the next window the carry the loss ended this one with (the
    carry as data): computed from the params before the update, not the carry it started from."""
    B, L = 2, 4
    streams = _streams(B * (2 * L + 1), seed=2)
    task, model = _task(streams), tasks.sequence_model(memcell.lstm(4), V, "all")
    params = model.init(jax.random.key(3), V)
    sample, cursor = tasks.stream_sampler(streams, B, L)
    batch, cursor = sample(None, cursor)
    loss, tx = tasks.stream_loss_fn(task, model), train.optimizer(1e-2)
    carry0 = jax.tree.map(lambda x: x + 0.1, model.layers.apply(params.rnn, jnp.zeros((B, 0, V)))[0])
    state = train.init_state(0, lambda k: params, tx)._replace(stream=train.StreamState(cursor, carry0))
    after, _ = jax.jit(train.make_stream_train_step(loss, tx))(state, batch)
    want = loss(params, carry0, batch, None)[1][0]
    for got, w, c0 in zip(jax.tree.leaves(after.stream.carry), jax.tree.leaves(want), jax.tree.leaves(carry0)):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, c0)
    np.testing.assert_array_equal(after.stream.cursor, cursor)


def test_stream_evaluation_weights_each_document_by_its_tokens():
    """Three validation documents of 3, 10 and 7 tokens, each read from the initial carry: the
    metrics are the means over all 20 tokens (per-document means weighted by their lengths),
    computed here token by token from the model's logits."""
    tokens = np.random.default_rng(4).integers(0, V, 21).astype(np.int32)
    streams = tasks.TokenStreams(train=tokens, train_starts=np.zeros(0, np.int32), valid_xs=tokens[:-1],
                                 valid_ys=tokens[1:], valid_starts=np.array([3, 13], np.int32))
    task, model = _task(streams), tasks.sequence_model(memcell.gru(4), V, "all")
    params = model.init(jax.random.key(5), V)
    got = jax.jit(tasks.stream_eval_fn(task, model))(params)
    nll, hit = [], []
    for lo, hi in [(0, 3), (3, 13), (13, 20)]:
        logits = np.asarray(model.apply(params, jax.nn.one_hot(streams.valid_xs[None, lo:hi], V))[0], np.float64)
        logp = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
        ys = streams.valid_ys[lo:hi]
        nll.append(-logp[np.arange(hi - lo), ys])
        hit.append(np.argmax(logits, -1) == ys)
    xent = np.concatenate(nll).mean()
    np.testing.assert_allclose(got["xent"], xent, rtol=1e-5)
    np.testing.assert_allclose(got["bpc"], xent / np.log(2), rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"], np.concatenate(hit).mean(), rtol=1e-5)
    # the documents' plain mean is another number: the test tells the two apart
    assert abs(np.mean([x.mean() for x in nll]) - xent) > 1e-3


def test_positions_advance_stop_before_documents_and_wrap():
    """Two rows of 11 tokens (0..10 and 11..21), windows of 4, documents starting at 6 and 11.
    Row 0: [0,4) reset, [4,6) cut before the document at 6, [6,10) reset there, then wraps.
    Row 1 starts with a document: [11,15) reset, [15,19), [19,21) at its end, then wraps."""
    streams = tasks.TokenStreams(train=np.arange(23, dtype=np.int32), train_starts=np.array([6, 11], np.int32),
                                 valid_xs=np.zeros(1, np.int32), valid_ys=np.zeros(1, np.int32),
                                 valid_starts=np.zeros(0, np.int32))
    sample, cursor = tasks.stream_sampler(streams, 2, 4)
    expected = [  # (window starts, lengths, resets, cursor after) per row
        ((0, 11), (4, 4), (True, True), (4, 4)),
        ((4, 15), (2, 4), (False, False), (6, 8)),
        ((6, 19), (4, 2), (True, False), (0, 0)),
        ((0, 11), (4, 4), (True, True), (4, 4)),
    ]
    for starts, lengths, resets, after in expected:
        batch, cursor = sample(None, cursor)
        np.testing.assert_array_equal(batch["lengths"], lengths)
        np.testing.assert_array_equal(batch["reset"], resets)
        np.testing.assert_array_equal(cursor, after)
        for r in range(2):
            n = lengths[r]
            np.testing.assert_array_equal(batch["xs"][r, :n], np.arange(starts[r], starts[r] + n))
            np.testing.assert_array_equal(batch["ys"][r, :n], np.arange(starts[r] + 1, starts[r] + n + 1))


def test_char_lm_streams_match_its_splits():
    task = tasks.char_lm(length=50, max_valid_chars=500)
    s = task.stream
    assert task.info["n_documents"] == 7  # the seven plays
    text = tasks.char_lm.__globals__["CORPUS"].read_text()
    for d in s.train_starts:  # each document starts at a play's title
        assert text[d - 3 : d] == "\n\n\n" and text[d:].split("\n")[2] == "by William Shakespeare"
    np.testing.assert_array_equal(s.valid_xs, task.test["xs"].reshape(-1))
    np.testing.assert_array_equal(s.valid_ys, task.test["ys"].reshape(-1))
    np.testing.assert_array_equal(s.valid_xs[1:], s.valid_ys[:-1])
    with pytest.raises(ValueError, match=r"batch_size=100000 rows .* fewer than a window of length=50"):
        tasks.stream_sampler(s, 100_000, 50)


@pytest.fixture(scope="module")
def resumable():
    """The pieces of a truncated-BPTT run on char_lm (one model: train_task's test runs vmapped
    seeds), built once so that ``fit``'s compilation cache serves every run of the resume test."""
    task = tasks.char_lm(length=6, max_valid_chars=60)
    model = tasks.sequence_model(memcell.lstm(4), task.output_size, "all")
    tx = train.optimizer(1e-2)
    state = train.init_state(0, lambda k: model.init(k, task.input_size), tx)
    sample, cursor = tasks.stream_sampler(task.stream, 3, 6)
    carry = model.layers.apply(state.params.rnn, jnp.zeros((3, 0, task.input_size)))[0]
    states = state._replace(stream=train.StreamState(cursor, carry))
    step = train.make_stream_train_step(tasks.stream_loss_fn(task, model), tx)
    return states, step, sample


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, resumable):
    states, step, sample = resumable

    def run(name, steps, resume=False):
        return train.fit(step, states, sample, steps=steps, checkpoint_dir=tmp_path / name, resume=resume, log_path=tmp_path / f"{name}.jsonl",
                         progress=False, steps_per_call=2)

    full = run("full", 6)
    part = run("split", 4)  # "killed" after its checkpoint at step 4
    resumed = run("split", 6, resume=True)
    a, b = full.state, resumed.state
    assert not np.array_equal(part.state.stream.cursor, a.stream.cursor)
    np.testing.assert_array_equal(a.stream.cursor, 6 * 6)  # 6 windows of 6, none cut
    for x, y in zip(jax.tree.leaves((a.params, a.opt_state, a.stream)), jax.tree.leaves((b.params, b.opt_state, b.stream))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert (tmp_path / "full.jsonl").read_text() == (tmp_path / "split.jsonl").read_text()


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="tbptt needs a task with long streams .* got task 'adding'"):
        no_streams = tasks.char_lm(length=4, max_valid_chars=50)._replace(name="adding", stream=None)
        tasks.train_task(no_streams, tasks.sequence_model(memcell.lstm(4), 1, "all"), steps=1, tbptt=True)
    tx = train.optimizer(1e-2)
    step = train.make_stream_train_step(lambda p, c, b, k: (jnp.sum(p), (c, {})), tx)
    with pytest.raises(TypeError, match="needs state.stream to be a memcell.train.StreamState, got NoneType"):
        step(train.init_state(0, lambda k: jnp.zeros(2), tx), None)
    bad = train.make_stream_train_step(lambda p, c, b, k: (jnp.sum(p), {}), tx)
    state = train.init_state(0, lambda k: jnp.zeros(2), tx)._replace(stream=train.StreamState(0, jnp.zeros(2)))
    with pytest.raises(TypeError, match=r"loss_fn must return \(loss, \(carry, metrics\)\)"):
        bad(state, None)


def test_fit_names_a_sampler_of_the_wrong_kind():
    """A state holding a StreamState needs sample(key, cursor) -> (batch, cursor), a state without one
    sample(key) -> batch: the other kind is a TypeError naming it, before anything compiles."""
    tx = train.optimizer(1e-2)
    step = train.make_stream_train_step(lambda p, c, b, k: (jnp.sum(p * b), (c, {})), tx)
    state = train.init_state(0, lambda k: jnp.zeros(2), tx)
    streaming = state._replace(stream=train.StreamState(jnp.zeros(3, jnp.int32), jnp.zeros(2)))
    fit = lambda s, sample: train.fit(step, s, sample, steps=1, progress=False)
    with pytest.raises(TypeError, match=r"sample must be sample\(key, cursor\) -> \(batch, cursor\) for a state "
                                        r"holding a StreamState \(truncated BPTT\); calling it with \(key, cursor\) "
                                        r"failed: .*positional argument"):
        fit(streaming, lambda key: jnp.ones(2))
    with pytest.raises(TypeError, match=r"sample must be sample\(key\) -> batch for a state without a stream"):
        fit(state, lambda key, cursor: (jnp.ones(2), cursor))
    with pytest.raises(TypeError, match=r"sample\(key, cursor\) must return \(batch, cursor\)"):
        fit(streaming, lambda key, cursor: jnp.ones(2))
    with pytest.raises(ValueError, match=r"must return a cursor of the form it was given \(\(3,\), 'int32'\), got "
                                         r"\(\(\), 'int32'\)"):
        fit(streaming, lambda key, cursor: (jnp.ones(2), cursor[0]))
    stacked = train.init_states([0, 1], lambda k: jnp.zeros(2), tx)  # vmapped models: one cursor a model
    stacked = stacked._replace(stream=train.StreamState(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 2))))
    assert int(fit(stacked, lambda key, cursor: (jnp.ones(2), cursor + 1)).state.stream.cursor[1, 0]) == 1


def test_with_stream_takes_the_samplers_first_cursor_or_makes_it():
    task, model = _task(_streams(40)), tasks.sequence_model(memcell.rnn(3), V, "all")
    states = train.init_states([0, 1], lambda k: model.init(k, V), train.optimizer(1e-2))
    _, cursor = tasks.stream_sampler(task.stream, 3, 4)
    made, given = tasks.with_stream(task, model, states, 3), tasks.with_stream(task, model, states, 3, cursor=cursor + 1)
    np.testing.assert_array_equal(made.stream.cursor, np.zeros((2, 3)))
    np.testing.assert_array_equal(given.stream.cursor, np.ones((2, 3)))  # the cursor given, one a model
    for a, b in zip(jax.tree.leaves(made.stream.carry), jax.tree.leaves(given.stream.carry)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"cursor must have shape \(batch_size,\) = \(3,\), got \(2,\)"):
        tasks.with_stream(task, model, states, 3, cursor=jnp.zeros(2, jnp.int32))


def test_cli_tbptt_refuses_a_task_without_streams(capsys):
    code, _, err = _main(["train", "--task", "adding", "--tbptt", "--steps", "1"], capsys)
    assert code == 2 and "--tbptt only applies to --task char_lm" in err, err


@pytest.mark.slow  # 6-12 s (make test budget); make test checks fit with a stream in the resume test
def test_train_task_tbptt_evaluates_the_whole_validation_stream():
    """train_task(tbptt=True) with 2 vmapped seeds: the rows' cursors advance a window a step and
    the reported bpc is the stream evaluation's (carry kept)."""
    task = tasks.char_lm(length=6, max_valid_chars=60)
    model = tasks.sequence_model(memcell.lstm(4), task.output_size, "all")
    result = tasks.train_task(task, model, seeds=[0, 1], steps=2, batch_size=2, learning_rate=1e-2, tbptt=True)
    state = result.state
    np.testing.assert_array_equal(state.stream.cursor, 2 * 6)
    assert jax.tree.leaves(state.stream.carry)[0].shape == (2, 2, 4)  # [seeds, rows, hidden]
    stream = jax.jit(jax.vmap(tasks.stream_eval_fn(task, model)))(state.params)
    np.testing.assert_allclose(result.final["bpc"], stream["bpc"], rtol=1e-6)


@pytest.mark.slow  # 10-25 s: the evaluation reads the whole validation stream (94k steps)
def test_cli_tbptt_trains_char_lm_and_resume_checks_the_flag(tmp_path, capsys):
    argv = ["train", "--task", "char_lm", "--tbptt", "--length", "8", "--hidden", "4", "--batch-size", "2",
            "--steps", "2", "--no-progress", "--json", "--out", str(tmp_path)]
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["steps"] == 2 and np.isfinite(report["final"]["bpc"][0])
    assert json.loads((tmp_path / "config.json").read_text())["tbptt"] is True
    # resuming without the flag is another run: refused, naming the difference
    code, _, err = _main([a for a in argv if a != "--tbptt"][:-2] + ["--steps", "4", "--out", str(tmp_path),
                                                                      "--resume"], capsys)
    assert code == 2 and "tbptt" in err, err
    # memcell flow rebuilds the run's initial state with its streams (tasks.with_stream) and measures it
    code, out, err = _main(["flow", str(tmp_path), "--sequences", "2"], capsys)
    assert code == 0, err
    flow = json.loads((tmp_path / "flow_hidden.json").read_text())
    assert flow["trained"]["step"] == 2 and np.all(np.isfinite(flow["initial"]["decay_rate"]))
