"""memcell.train: the pure steps, the optimizer's non-finite handling, fit's logging,
evaluation, early stopping, checkpoints (resume == uninterrupted, bad checkpoints) and
vmapped models (== separate runs)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import memcell
from memcell import tasks, train

# ----------------------------------------------------------------------------- a small problem

TASK = tasks.adding(8, n_test=64)
MODEL = tasks.sequence_model(memcell.gru(8), 1, "last")
LOSS = tasks.loss_fn(TASK, MODEL)
EVAL = tasks.eval_fn(TASK, MODEL)
SAMPLE = lambda key: TASK.sample(key, 16)
INIT = lambda k: MODEL.init(k, 2)
# One optimizer and one step function for most tests: fit caches its compilation per step function.
TX = train.optimizer(1e-2)
STEP = train.make_train_step(LOSS, TX)


def _tree_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
    )


def _state(seed=0):
    return TX, train.init_state(seed, INIT, TX)


# ----------------------------------------------------------------------------- optimizer and steps


def test_train_step_decreases_loss_and_reports_metrics():
    tx, state = _state()
    step = jax.jit(train.make_train_step(LOSS, tx))
    batch = SAMPLE(jax.random.key(1))
    first = None
    for _ in range(30):
        state, m = step(state, batch)
        first = m["loss"] if first is None else first
    assert set(m) >= {"loss", "grad_norm", "skipped", "mse"}
    assert float(m["loss"]) < 0.5 * float(first)
    assert int(state.step) == 30 and float(m["skipped"]) == 0.0


def test_nonfinite_gradient_skips_update_and_is_counted():
    tx, state = _state()
    step = jax.jit(train.make_train_step(LOSS, tx))
    good = SAMPLE(jax.random.key(1))
    bad = dict(good, ys=good["ys"].at[0, 0].set(jnp.nan))
    state1, m = step(state, bad)
    assert float(m["skipped"]) == 1.0
    assert _tree_equal(state1.params, state.params)  # params untouched, not NaN
    assert int(state1.step) == 1
    state2, m2 = step(state1, good)
    assert float(m2["skipped"]) == 0.0
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state2.params))
    assert not _tree_equal(state2.params, state1.params)


def test_clipping_bounds_the_update():
    # SGD with lr 1 and clip 0.5: the update's global norm is at most 0.5 whatever the gradient.
    tx = train.optimizer(1.0, name="sgd", clip_norm=0.5)
    state = train.init_state(0, INIT, tx)
    big = lambda p, b, k: (1e6 * LOSS(p, b, k)[0], {})
    new, m = train.make_train_step(big, tx)(state, SAMPLE(jax.random.key(2)))
    delta = optax.tree.norm(jax.tree.map(lambda a, b: a - b, new.params, state.params))
    assert float(m["grad_norm"]) > 1e3
    assert float(delta) == pytest.approx(0.5, rel=1e-4)


def test_schedule_warmup_and_decay():
    tx = train.optimizer(1.0, name="sgd", clip_norm=None, warmup_steps=4, decay_steps=8)
    state = train.init_state(0, lambda k: jnp.zeros(()), tx)
    lin = lambda p, b, k: (p * 1.0, {})  # gradient 1, so each update is -lr(t)
    step = jax.jit(train.make_train_step(lin, tx))
    deltas = []
    for _ in range(9):
        new, _ = step(state, None)
        deltas.append(float(state.params - new.params))
        state = new
    np.testing.assert_allclose(deltas[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    # cosine from the end of warmup (step 4) to 0 at step 8
    np.testing.assert_allclose(deltas[4:], [1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4)), 0.0],
                               rtol=1e-5, atol=1e-7)


def test_optimizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="name must be one of"):
        train.optimizer(1e-3, name="adamax")
    with pytest.raises(ValueError, match="learning_rate must be a positive"):
        train.optimizer(-1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        train.optimizer(1e-3, clip_norm=0.0)
    with pytest.raises(ValueError, match="decay_steps must exceed warmup_steps=10"):
        train.optimizer(1e-3, warmup_steps=10, decay_steps=5)
    with pytest.raises(TypeError, match="opt_state must come from memcell.train.optimizer"):
        train.learning_rate(optax.adam(1e-3).init(jnp.zeros(2)))


def test_eval_step_and_evaluate_weight_by_batch_size():
    _, state = _state()
    ev = train.make_eval_step(LOSS)
    test = jax.tree.map(jnp.asarray, TASK.test)
    whole = ev(state.params, test)
    parts = [jax.tree.map(lambda x: x[:40], test), jax.tree.map(lambda x: x[40:], test)]
    avg = train.evaluate(ev, state.params, parts)
    assert avg["loss"] == pytest.approx(float(whole["loss"]), rel=1e-5)
    with pytest.raises(ValueError, match="at least one batch"):
        train.evaluate(ev, state.params, [])


def test_summarize():
    s = train.summarize([1.0, 2.0, 3.0])
    assert s == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert train.summarize([4.0])["std"] == 0.0


# ----------------------------------------------------------------------------- fit


def test_fit_logs_every_step_and_evaluates(tmp_path):
    tx, state = _state()
    log = tmp_path / "m.jsonl"
    res = train.fit(STEP, state, SAMPLE, steps=30, eval_fn=EVAL, eval_every=10,
                    log_path=log, progress=False, steps_per_call=10)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    tr = [r for r in rows if r["split"] == "train"]
    ev = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in tr] == list(range(1, 31))
    assert [r["step"] for r in ev] == [10, 20, 30] == [h["step"] for h in res.history]
    assert all(np.isfinite(r["loss"]) for r in tr)
    assert res.stop_reason == "steps" and int(res.state.step) == 30


def test_fit_chunking_does_not_change_the_result():
    tx, state = _state()
    step = STEP
    a = train.fit(step, state, SAMPLE, steps=20, progress=False, steps_per_call=20).state
    b = train.fit(step, state, SAMPLE, steps=20, progress=False, steps_per_call=10).state
    np.testing.assert_allclose(jax.tree.leaves(a.params)[0], jax.tree.leaves(b.params)[0], rtol=1e-6, atol=1e-7)


def test_fit_progress_bar_runs(capsys):
    tx, state = _state()
    train.fit(STEP, state, SAMPLE, steps=20, progress=True, steps_per_call=10)
    assert "20/20" in capsys.readouterr().err


def test_early_stopping_target_and_patience():
    tx, state = _state()
    step = STEP
    hit = train.fit(step, state, SAMPLE, steps=2000, eval_fn=EVAL, eval_every=10, progress=False,
                    early_stopping=train.EarlyStopping("loss", "min", target=0.15))
    assert hit.stop_reason == "target" and hit.solved_step is not None
    assert int(hit.state.step) == hit.solved_step < 2000
    assert hit.history[-1]["loss"] <= 0.15
    # An unreachable target with patience 1 stops at the first evaluation that does not improve.
    never = train.fit(step, state, SAMPLE, steps=2000, eval_fn=EVAL, eval_every=10, progress=False,
                      early_stopping=train.EarlyStopping("loss", "min", target=-1.0, patience=1))
    assert never.stop_reason == "patience" and never.solved_step is None
    losses = [h["loss"] for h in never.history]
    assert losses[-1] >= min(losses[:-1]) and int(never.state.step) < 2000


def test_fit_stops_a_diverged_run():
    tx, state = _state()
    nan_loss = lambda p, b, k: (LOSS(p, b, k)[0] * jnp.nan, {})
    res = train.fit(train.make_train_step(nan_loss, tx), state, SAMPLE, steps=500, progress=False,
                    max_nonfinite=20, steps_per_call=10)
    assert res.stop_reason == "diverged" and res.skipped_steps == 20
    assert _tree_equal(res.state.params, state.params)


def test_fit_rejects_bad_arguments(tmp_path):
    tx, state = _state()
    step = STEP
    with pytest.raises(ValueError, match="steps must be a non-negative int, got -1"):
        train.fit(step, state, SAMPLE, steps=-1)
    with pytest.raises(ValueError, match="eval_every > 0 needs an eval_fn"):
        train.fit(step, state, SAMPLE, steps=5, eval_every=2)
    with pytest.raises(ValueError, match="early_stopping needs an eval_fn"):
        train.fit(step, state, SAMPLE, steps=5, early_stopping=train.EarlyStopping(target=0.1))
    with pytest.raises(ValueError, match="needs a target or a patience"):
        train.fit(step, state, SAMPLE, steps=5, eval_fn=EVAL, early_stopping=train.EarlyStopping())
    with pytest.raises(ValueError, match="checkpoint_every > 0 needs a checkpoint_dir"):
        train.fit(step, state, SAMPLE, steps=5, checkpoint_every=2)
    with pytest.raises(TypeError, match="state must be a memcell.train.TrainState"):
        train.fit(step, tuple(state), SAMPLE, steps=5)
    with pytest.raises(ValueError, match="early_stopping.metric 'acc' is not among"):
        train.fit(step, state, SAMPLE, steps=10, eval_fn=EVAL, eval_every=10, progress=False,
                  early_stopping=train.EarlyStopping("acc", target=0.1))


# ----------------------------------------------------------------------------- checkpoints


def _resumable_run(tmp_path, name, steps, resume, config=None):
    tx, state = _state()
    return train.fit(STEP, state, SAMPLE, steps=steps, eval_fn=EVAL, eval_every=10,
                     checkpoint_dir=tmp_path / name, checkpoint_every=10, resume=resume, config=config,
                     log_path=tmp_path / f"{name}.jsonl", progress=False, steps_per_call=10)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    full = _resumable_run(tmp_path, "full", 40, resume=False)
    part = _resumable_run(tmp_path, "split", 20, resume=False)  # "killed" after 20 steps
    # The killed run had also logged steps past its last checkpoint: resume must drop them.
    with open(tmp_path / "split.jsonl", "a") as f:
        f.write(json.dumps({"step": 21, "split": "train", "loss": 123.0}) + "\n")
    assert not _tree_equal(part.state.params, full.state.params)
    resumed = _resumable_run(tmp_path, "split", 40, resume=True)
    assert _tree_equal(resumed.state.params, full.state.params)
    assert _tree_equal(resumed.state.opt_state, full.state.opt_state)
    assert int(resumed.state.step) == 40
    assert np.array_equal(jax.random.key_data(resumed.state.key), jax.random.key_data(full.state.key))
    assert resumed.history == full.history
    assert (tmp_path / "split.jsonl").read_text() == (tmp_path / "full.jsonl").read_text()


def test_existing_checkpoints_need_resume(tmp_path):
    _resumable_run(tmp_path, "c", 10, resume=False)
    with pytest.raises(ValueError, match="already holds checkpoints.*resume=True"):
        _resumable_run(tmp_path, "c", 20, resume=False)


def test_mismatched_checkpoint_names_the_file(tmp_path):
    _resumable_run(tmp_path, "m", 10, resume=False)
    tx = train.optimizer(1e-2)
    other = tasks.sequence_model(memcell.gru(9), 1, "last")  # another hidden size
    state = train.init_state(0, lambda k: other.init(k, 2), tx)
    step = train.make_train_step(tasks.loss_fn(TASK, other), tx)
    with pytest.raises(ValueError, match=r"checkpoint .*m/10 does not match this run's state"):
        train.fit(step, state, SAMPLE, steps=20, checkpoint_dir=tmp_path / "m", resume=True, progress=False)


def test_changed_config_is_refused(tmp_path):
    _resumable_run(tmp_path, "cfg", 10, resume=False, config={"lr": 0.01, "cell": "gru"})
    with pytest.raises(ValueError, match=r"different configuration: lr: checkpoint 0.01, now 0.02"):
        _resumable_run(tmp_path, "cfg", 20, resume=True, config={"lr": 0.02, "cell": "gru"})


def test_corrupted_checkpoint_names_the_file(tmp_path):
    _resumable_run(tmp_path, "bad", 10, resume=False)
    step_dir = tmp_path / "bad" / "10"
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert files
    for p in files:  # garble every file of the checkpoint
        p.write_bytes(b"\x00garbage" * 3)
    with pytest.raises(ValueError, match=r"checkpoint .*bad/10 is corrupted or unreadable"):
        _resumable_run(tmp_path, "bad", 20, resume=True)


# ----------------------------------------------------------------------------- vmapped models


def test_vmapped_seeds_equal_separate_runs():
    tx, step = TX, STEP
    seeds = [3, 4, 5]
    together = train.fit(step, train.init_states(seeds, INIT, tx), SAMPLE, steps=20, eval_fn=EVAL,
                         eval_every=20, progress=False, steps_per_call=10)
    for i, s in enumerate(seeds):
        alone = train.fit(step, train.init_state(s, INIT, tx), SAMPLE, steps=20, eval_fn=EVAL, eval_every=20,
                          progress=False, steps_per_call=10)
        for a, b in zip(jax.tree.leaves(together.state.params), jax.tree.leaves(alone.state.params)):
            np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=2e-6)
        assert together.history[-1]["loss"][i] == pytest.approx(alone.history[-1]["loss"], rel=1e-4)
    # and the seeds really are different models
    w = jax.tree.leaves(together.state.params)[0]
    assert not np.allclose(w[0], w[1])


def test_vmapped_learning_rates_equal_separate_runs():
    # A small least-squares problem: what is tested is that each vmapped model keeps its own rate.
    def loss(w, batch, key):
        x, y = batch
        return jnp.mean((x @ w - y) ** 2), {}

    def sample(key):
        x = jax.random.normal(key, (16, 3))
        return x, x @ jnp.array([1.0, -2.0, 0.5])

    init = lambda k: jax.random.normal(k, (3,))
    lrs = [1e-3, 3e-2]
    tx = train.optimizer(1e-3)
    together = train.fit(train.make_train_step(loss, tx), train.init_states([0, 0], init, tx, learning_rates=lrs),
                         sample, steps=10, progress=False, steps_per_call=10)
    np.testing.assert_allclose(train.learning_rate(together.state.opt_state), lrs, rtol=1e-6)
    ws = []
    for i, lr in enumerate(lrs):
        tx_i = train.optimizer(lr)
        alone = train.fit(train.make_train_step(loss, tx_i), train.init_state(0, init, tx_i), sample, steps=10,
                          progress=False, steps_per_call=10)
        np.testing.assert_allclose(together.state.params[i], alone.state.params, rtol=1e-5, atol=1e-6)
        ws.append(alone.state.params)
    assert not np.allclose(ws[0], ws[1])  # the rates made a difference


def test_init_states_rejects_bad_arguments():
    tx = train.optimizer(1e-3)
    with pytest.raises(ValueError, match=r"learning_rates must hold one value a model \(2\), got shape \(3,\)"):
        train.init_states([0, 1], INIT, tx, learning_rates=[1e-3, 1e-3, 1e-3])
    with pytest.raises(ValueError, match="learning_rates must be positive"):
        train.init_states([0, 1], INIT, tx, learning_rates=[1e-3, -1.0])
    with pytest.raises(TypeError, match="keys\\[1\\] must be a jax.random.key or an int seed"):
        train.init_states([0, "a"], INIT, tx)
    with pytest.raises(TypeError, match="opt_state must come from memcell.train.optimizer"):
        train.init_states([0, 1], INIT, optax.adam(1e-3), learning_rates=[1e-3, 1e-2])
