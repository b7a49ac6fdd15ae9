"""memcell.train: the pure steps, the optimizer's non-finite handling, fit's logging,
evaluation, early stopping, checkpoints (resume == uninterrupted, bad checkpoints) and
vmapped models (== separate runs)."""

import json
import os
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
    err = capsys.readouterr().err
    # the line says how far the run is, how long it took and how long it has left
    assert "20/20 steps" in err and " elapsed, " in err and " left, " in err


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


_RESUME_DAMAGED = """
import sys
import memcell
from memcell import tasks, train
task = tasks.adding(8, n_test=64)
model = tasks.sequence_model(memcell.gru(8), 1, "last")
tx = train.optimizer(1e-2)
step = train.make_train_step(tasks.loss_fn(task, model), tx)
states = train.init_states([0, 1], lambda k: model.init(k, 2), tx)
for path in sys.argv[1:]:
    try:
        train.fit(step, states, lambda key: task.sample(key, 16), steps=20, checkpoint_dir=path, resume=True,
                  progress=False)
    except ValueError as e:
        print(e)
"""


def test_a_damaged_checkpoint_is_refused_with_nothing_left_reading(tmp_path):
    """A byte flipped in each data file of the state's store. The refusal names the checkpoint, and
    no read of the store goes on after it: those reads (orbax's, finishing after its event loop
    closed) printed dozens of "RuntimeError: Event loop is closed" tracebacks under the message.
    Resumed in a new process, as the CLI does: within one process the reads come from its cache."""
    import subprocess
    import sys

    import shutil

    train.fit(STEP, train.init_states([0, 1], INIT, TX), SAMPLE, steps=10, checkpoint_dir=tmp_path / "run",
              progress=False)
    data = sorted((tmp_path / "run" / "10" / "state" / "d").iterdir())
    assert data
    for p in data:
        b = bytearray(p.read_bytes())
        b[5] ^= 0xFF
        p.write_bytes(bytes(b))
    # Whether a stray read outlived orbax's loop was a race (about half the time): four copies,
    # each read afresh, made it show nearly always.
    copies = [tmp_path / f"copy{i}" for i in range(4)]
    for c in copies:
        shutil.copytree(tmp_path / "run", c)
    root = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _RESUME_DAMAGED, *map(str, copies)], cwd=root, timeout=300,
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    for c in copies:
        assert f"checkpoint {c / '10'} is corrupted or unreadable" in done.stdout, done.stdout
    assert "Event loop is closed" not in done.stderr, done.stderr[-2000:]


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


# ----------------------------------------------------------------------------- early stopping, one decision at a time


def test_early_stopping_update_judges_each_model():
    rule = train.EarlyStopping("acc", "max", target=0.9, patience=2)
    p = rule.init(n_models=2)
    p, done = rule.update(p, {"acc": [0.5, 0.95]}, step=10)
    assert not done and p.best == (0.5, 0.95) and p.solved_step == (None, 10) and p.meets_target == (False, True)
    # model 1 drifts off the target: it keeps the run going, and keeps its first solved step
    p, done = rule.update(p, {"acc": [0.6, 0.85]}, step=20)
    assert not done and p.meets_target == (False, False) and p.solved_step == (None, 10) and p.bad_evals == (0, 1)
    p, done = rule.update(p, {"acc": [0.6, 0.92]}, step=30)  # model 0 no better (1 bad), model 1 meets it again
    assert not done and p.bad_evals == (1, 2)
    p, done = rule.update(p, {"acc": [0.55, 0.91]}, step=40)  # model 0 out of patience, model 1 on target
    assert done and p.bad_evals == (2, 3) and p.best == (0.6, 0.95)


def test_early_stopping_rejects_bad_fields():
    for rule, err, msg in [
        (train.EarlyStopping("loss", "mn", target=0.1), ValueError, r"early_stopping.mode must be one of \['max', 'min'\], got 'mn'"),
        (train.EarlyStopping("loss", patience=0), ValueError, "early_stopping.patience must be a positive int, got 0"),
        (train.EarlyStopping("loss", patience=2.0), ValueError, "early_stopping.patience must be a positive int, got 2.0"),
        (train.EarlyStopping("loss", target="0.1"), ValueError, "early_stopping.target must be a finite real number, got '0.1'"),
        (train.EarlyStopping("loss", target=float("nan")), ValueError, "early_stopping.target must be a finite real number, got nan"),
        (train.EarlyStopping(3, target=0.1), TypeError, "early_stopping.metric must be a str .*got 3"),
        (train.EarlyStopping(), ValueError, "early_stopping needs a target or a patience, got neither"),
    ]:
        with pytest.raises(err, match=msg):
            rule.check()
    with pytest.raises(ValueError, match="n_models must be a positive int, got 0"):
        train.EarlyStopping(target=0.1).init(0)


# ----------------------------------------------------------------------------- bad input to every public entry point


def test_optimizer_rejects_bad_types_and_ranges():
    cases = [
        (dict(learning_rate=True), "learning_rate must be a positive finite number, got True"),
        (dict(learning_rate=float("inf")), "learning_rate must be a positive finite number, got inf"),
        (dict(learning_rate="0.1"), "learning_rate must be a positive finite number, got '0.1'"),
        (dict(clip_norm="1"), "clip_norm must be a positive finite number or None, got '1'"),
        (dict(warmup_steps=-1), "warmup_steps must be a non-negative int, got -1"),
        (dict(warmup_steps=2.5), "warmup_steps must be a non-negative int, got 2.5"),
        (dict(decay_steps=10.0), "decay_steps must be a non-negative int, got 10.0"),
        (dict(name="sgd", momentum=1.5), r"momentum must lie in \[0, 1\), got 1.5"),
        (dict(name="adam", momentum=0.9), "momentum applies to name='sgd' or 'rmsprop' only, got momentum=0.9 with name='adam'"),
        (dict(name="adamw", weight_decay=-1e-4), r"weight_decay must lie in \[0, inf\), got -0.0001"),
        (dict(name="adam", weight_decay=1e-4), "weight_decay applies to name='adamw' only, got weight_decay=0.0001"),
        (dict(name=None), r"name must be one of \['adam', 'adamw', 'rmsprop', 'sgd'\], got None"),
    ]
    for kw, msg in cases:
        kw = {"learning_rate": 1e-3, **kw}
        with pytest.raises(ValueError, match=msg):
            train.optimizer(kw.pop("learning_rate"), **kw)
    # the options that do apply are accepted
    train.optimizer(1e-2, name="sgd", momentum=0.9)
    train.optimizer(np.float32(1e-2), name="adamw", weight_decay=1e-4, warmup_steps=np.int64(3), decay_steps=10)


def test_init_state_and_init_states_reject_bad_arguments():
    with pytest.raises(TypeError, match="key must be a jax.random.key or an int seed, got str"):
        train.init_state("0", INIT, TX)
    with pytest.raises(TypeError, match="key must be a jax.random.key or an int seed, got dtype float32 shape \\(2,\\)"):
        train.init_state(jnp.zeros(2), INIT, TX)
    with pytest.raises(ValueError, match=r"key must be a single key \(shape \(\)\), got shape \(2,\); use init_states"):
        train.init_state(jax.random.split(jax.random.key(0)), INIT, TX)
    with pytest.raises(TypeError, match="init_params must be a function key -> params, got int 3"):
        train.init_state(0, 3, TX)
    with pytest.raises(TypeError, match=r"tx must be an optax.GradientTransformation \(with init and update\), got str"):
        train.init_state(0, INIT, "adam")
    with pytest.raises(ValueError, match="keys must hold at least one key or int seed, got an empty sequence"):
        train.init_states([], INIT, TX)
    with pytest.raises(ValueError, match=r"keys must be a 1-d array of at least one key, got shape \(\)"):
        train.init_states(jax.random.key(0), INIT, TX)
    with pytest.raises(TypeError, match="learning_rates must be numbers, got \\['a', 'b'\\]"):
        train.init_states([0, 1], INIT, TX, learning_rates=["a", "b"])
    with pytest.raises(TypeError, match="learning_rates must be a sequence of 2 numbers \\(or None\\), got float"):
        train.init_states([0, 1], INIT, TX, learning_rates=1e-3)
    with pytest.raises(TypeError, match="init_params must be a function"):
        train.init_states([0, 1], None, TX)


def test_steps_reject_bad_loss_functions():
    with pytest.raises(TypeError, match="loss_fn must be a function .*got str"):
        train.make_train_step("mse", TX)
    with pytest.raises(TypeError, match="tx must be an optax.GradientTransformation .*got function"):
        train.make_train_step(LOSS, INIT)
    with pytest.raises(TypeError, match="loss_fn must be a function .*got NoneType"):
        train.make_eval_step(None)
    _, state = _state()
    batch = SAMPLE(jax.random.key(1))
    bad = {
        "returns the loss alone": (lambda p, b, k: LOSS(p, b, k)[0], TypeError, r"loss_fn must return \(loss, metrics\) with metrics a dict, got one array of shape \(\)"),
        "a list of metrics": (lambda p, b, k: (LOSS(p, b, k)[0], []), TypeError, "with metrics a dict, got metrics of type list"),
        "three outputs": (lambda p, b, k: (*LOSS(p, b, k), 0), TypeError, "loss_fn must return \\(loss, metrics\\) with metrics a dict, got a tuple of 3"),
        "a vector loss": (lambda p, b, k: (jnp.zeros(3) + LOSS(p, b, k)[0], {}), ValueError, r"loss_fn must return a scalar loss, got shape \(3,\)"),
        "an integer loss": (lambda p, b, k: (jnp.int32(1), {}), TypeError, "loss_fn must return a floating-point loss, got dtype int32"),
    }
    for fn, err, msg in bad.values():
        with pytest.raises(err, match=msg):
            train.make_train_step(fn, TX)(state, batch)
        with pytest.raises(err, match=msg):
            train.make_eval_step(fn)(state.params, batch)


def test_evaluate_and_summarize_reject_bad_arguments():
    _, state = _state()
    ev = train.make_eval_step(LOSS)
    test = jax.tree.map(jnp.asarray, TASK.test)
    with pytest.raises(TypeError, match=r"batches must be an iterable of batches \(put one batch in a list\), got dict"):
        train.evaluate(ev, state.params, test)
    with pytest.raises(TypeError, match="batches must be an iterable of batches .*got int"):
        train.evaluate(ev, state.params, 3)
    with pytest.raises(TypeError, match="eval_step must be a function .*got dict"):
        train.evaluate({}, state.params, [test])
    with pytest.raises(TypeError, match="eval_step must return a dict of metrics, got tuple"):
        train.evaluate(lambda p, b: (1.0, 2.0), state.params, [test])
    with pytest.raises(TypeError, match=r"values must be real numbers, got \['a'\]"):
        train.summarize(["a"])
    with pytest.raises(ValueError, match="values must hold at least one number, got none"):
        train.summarize([])


def test_fit_rejects_bad_values_types_and_flags(tmp_path):
    _, state = _state()
    cases = [
        (dict(steps=0), ValueError, "steps must be >= 1, got 0"),
        (dict(steps=2.5), ValueError, "steps must be a non-negative int, got 2.5"),
        (dict(steps=True), ValueError, "steps must be a non-negative int, got True"),
        (dict(eval_every=-5), ValueError, "eval_every must be a non-negative int, got -5"),
        (dict(steps_per_call=0), ValueError, "steps_per_call must be >= 1, got 0"),
        (dict(max_nonfinite=0), ValueError, "max_nonfinite must be >= 1, got 0"),
        (dict(checkpoint_every=1.0), ValueError, "checkpoint_every must be a non-negative int, got 1.0"),
        (dict(resume="yes"), TypeError, "resume must be a bool, got str 'yes'"),
        (dict(progress=1), TypeError, "progress must be a bool, got 1"),
        (dict(eval_fn="mse"), TypeError, "eval_fn must be a function params -> metrics, got str 'mse'"),
        (dict(config=[1, 2]), TypeError, r"config must be a JSON-serialisable dict \(or None\), got list"),
        (dict(config={"f": object()}), TypeError, "config must be JSON-serialisable: Object of type object"),
        (dict(log_path=3), TypeError, r"log_path must be a str or os.PathLike path \(or None\), got int 3"),
        (dict(checkpoint_dir=b"x"), TypeError, "checkpoint_dir must be a str or os.PathLike path"),
        (dict(early_stopping={"target": 0.1}, eval_fn=EVAL), TypeError, "early_stopping must be a memcell.train.EarlyStopping, got dict"),
        (dict(early_stopping=train.EarlyStopping(mode="up", target=0.1), eval_fn=EVAL), ValueError, "early_stopping.mode must be one of"),
    ]
    for kw, err, msg in cases:
        kw = {"steps": 5, "progress": False, **kw}
        with pytest.raises(err, match=msg):
            train.fit(STEP, state, SAMPLE, **kw)
    with pytest.raises(TypeError, match="train_step must be a function .*got NoneType"):
        train.fit(None, state, SAMPLE, steps=5)
    with pytest.raises(TypeError, match="sample must be a function key -> batch, got dict"):
        train.fit(STEP, state, TASK.test, steps=5)


def test_fit_rejects_malformed_states():
    _, state = _state()
    states = train.init_states([0, 1], INIT, TX)
    with pytest.raises(ValueError, match=r"state.step must be a scalar \(one model\) or \[n\] \(vmapped models\), got shape \(2, 1\)"):
        train.fit(STEP, states._replace(step=states.step[:, None]), SAMPLE, steps=5)
    with pytest.raises(TypeError, match="state.step must be an integer array, got dtype float32"):
        train.fit(STEP, state._replace(step=jnp.zeros((), jnp.float32)), SAMPLE, steps=5)
    with pytest.raises(TypeError, match="state.key must be a typed jax.random.key array, got ArrayImpl of dtype uint32"):
        train.fit(STEP, state._replace(key=jax.random.key_data(state.key)), SAMPLE, steps=5)
    with pytest.raises(ValueError, match=r"state.key must have the shape of state.step \(2,\), got shape \(\)"):
        train.fit(STEP, states._replace(key=state.key), SAMPLE, steps=5)
    bad_params = states.params._replace(b=states.params.b[0])  # one leaf without the model axis
    with pytest.raises(ValueError, match=r"state leaves must have a leading axis of n=2 models .*got shape \(1,\) at state.params.b"):
        train.fit(STEP, states._replace(params=bad_params), SAMPLE, steps=5)


def test_checkpoint_holds_the_loop_record_in_its_json_format(tmp_path):
    # The checkpoint format: the metadata holds "book" with these keys, "config" and "fingerprint".
    res = train.fit(STEP, _state()[1], SAMPLE, steps=10, eval_fn=EVAL, checkpoint_dir=tmp_path / "c",
                    progress=False, steps_per_call=10, early_stopping=train.EarlyStopping(patience=3), config={"a": 1})
    metas = [p for p in (tmp_path / "c" / "10").rglob("*") if p.is_file() and p.parent.name == "meta"]
    meta = json.loads(next(p for p in metas if p.read_text().lstrip().startswith("{") and "book" in p.read_text()).read_text())
    assert list(meta) == ["book", "config", "fingerprint"] and meta["config"] == {"a": 1}
    book = meta["book"]
    assert list(book) == ["history", "best", "bad_evals", "meets_target", "solved_step", "skipped", "nonfinite_run"]
    assert book["history"] == res.history and book["best"] == [res.history[-1]["loss"]]
    assert book["bad_evals"] == [0] and book["meets_target"] == [False] and book["solved_step"] == [None]
    assert book["skipped"] == [0] and book["nonfinite_run"] == [0]


# ----------------------------------------------------------------------------- placement


def test_one_placement_object_stands_for_the_mesh_argument():
    from memcell.train._placement import OnMesh, SingleDevice, placement_of

    assert placement_of(None) == SingleDevice() and hash(placement_of(None)) == hash(SingleDevice())
    mesh = train.make_mesh(data=1)
    assert placement_of(mesh) == OnMesh(mesh)
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh .*, got str"):
        placement_of("data=2")


def test_a_one_device_mesh_trains_like_no_mesh(tmp_path):
    # the two placements run the same loop: on a mesh of one device the run is the same, bit for bit
    tx = TX
    runs = [train.fit(STEP, train.init_states([0, 1], INIT, tx), SAMPLE, steps=4, eval_fn=EVAL, eval_every=2,
                      progress=False, steps_per_call=2, log_path=tmp_path / f"{i}.jsonl", mesh=mesh)
            for i, mesh in enumerate((None, train.make_mesh(data=1)))]
    assert _tree_equal(runs[0].state.params, runs[1].state.params)
    assert runs[0].history == runs[1].history
    assert (tmp_path / "0.jsonl").read_text() == (tmp_path / "1.jsonl").read_text()
