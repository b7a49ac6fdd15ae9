"""Seeing a run: the learning-curve PNG every ``memcell train --out`` run writes, ``memcell flow
RUN_DIR`` (gradient norm against lag, initial vs trained params), and the pieces behind them
(``memcell.plot``, ``tasks.gradient_norms_by_lag``, ``train.load_checkpoint``)."""

import contextlib
import inspect
import io
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_helpers import run_main as _main

import memcell
from memcell import cli, plot, tasks, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# One tiny run serves every check: 2 seeds of an LSTM with 8 units on adding with T = 8.
TINY = ["train", "--task", "adding", "--length", "8", "--cell", "lstm", "--hidden", "8", "--seeds", "2",
        "--batch-size", "16", "--lr", "1e-2", "--steps", "20", "--eval-every", "10", "--steps-per-call", "10",
        "--no-progress"]




def _recording_init_states(calls):
    real = train.init_states

    def wrapper(*args, **kwargs):
        states = real(*args, **kwargs)
        calls.append(states)
        return states

    return wrapper


def _recording(real, titles):
    def wrapper(*args, **kwargs):
        titles.append(kwargs.get("title"))
        return real(*args, **kwargs)

    return wrapper


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny run, the table its flow printed, and the initial states ``train`` and ``flow`` each made."""
    out = tmp_path_factory.mktemp("run")
    calls, printed = [], io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(train, "init_states", _recording_init_states(calls))
        mp.setattr(plot, "learning_curves", _recording(plot.learning_curves, LEARNING_CURVES_TITLES))
        assert cli.main([*TINY, "--out", str(out)]) == 0
        assert cli.main(["flow", str(out), "--sequences", "16"]) == 0
    assert len(calls) == 2, "train and flow should each make the initial states once"
    return out, calls, printed.getvalue()


LEARNING_CURVES_TITLES = []  # the titles the run fixture's train drew its learning curves with


def test_flow_names_its_files_by_what_they_measure_and_titles_say_the_run(run, tmp_path, capsys):
    # `--wrt input` after the default (`hidden` for this LSTM) writes its own pair, keeping the first
    out, *_ = run
    moved = _copy_run(out, tmp_path / "run")
    shutil.copy(out / "flow_hidden.json", moved / "flow_hidden.json")
    before = (moved / "flow_hidden.json").read_text()
    titles = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plot, "gradient_flow", _recording(plot.gradient_flow, titles))
        code, stdout, err = _main(["flow", str(moved), "--wrt", "input", "--sequences", "4"], capsys)
    assert code == 0, err
    assert (moved / "flow_hidden.json").read_text() == before
    assert json.loads((moved / "flow_input.json").read_text())["wrt"] == "input"
    assert (moved / "flow_input.png").read_bytes()[:8] == PNG_MAGIC and not (moved / "flow.json").exists()
    assert titles == ["adding (T = 8), lstm, 1 layer of 8 units, lr 0.01\n||dL/dx_t|| of the loss against lag"]


# ----------------------------------------------------------------------------- learning curves


def test_train_writes_learning_curves_beside_the_report_and_links_them(run):
    out, *_ = run
    png = out / "learning_curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert "![learning curves](learning_curves.png)" in (out / "report.md").read_text()
    logs = plot.read_metrics(out / "metrics.jsonl")
    assert logs["train"]["step"].tolist() == list(range(1, 21)) and logs["train"]["loss"].shape == (20, 2)
    assert logs["eval"]["step"].tolist() == [10, 20] and logs["eval"]["mse"].shape == (2, 2)
    assert np.all(np.isfinite(logs["train"]["loss"]))


def test_the_learning_curves_title_says_the_layers_the_learning_rate_and_t(run):
    assert LEARNING_CURVES_TITLES == ["adding (T = 8), lstm, 1 layer of 8 units, lr 0.01"]


def test_learning_curves_and_read_metrics_refuse_what_is_not_a_log(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a metrics.jsonl log"):
        plot.learning_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1.0}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2: expected a JSON object with 'step' and 'split'"):
        plot.read_metrics(tmp_path / "metrics.jsonl")


def test_a_single_model_log_plots_too(tmp_path):
    # fit's log of one model holds numbers, not one-element lists; no report.json, no evaluation
    rows = [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot.read_metrics(tmp_path / "metrics.jsonl")["train"]["loss"].shape == (10, 1)
    png = plot.learning_curves(tmp_path, path=tmp_path / "curves.png")
    assert png == tmp_path / "curves.png" and png.read_bytes()[:8] == PNG_MAGIC


# ----------------------------------------------------------------------------- memcell flow


def test_flow_writes_finite_numbers_that_training_changed(run, capsys):
    out, *_ = run
    assert (out / "flow_hidden.png").read_bytes()[:8] == PNG_MAGIC
    flow = json.loads((out / "flow_hidden.json").read_text())
    assert flow["seeds"] == [0, 1] and flow["wrt"] == "hidden" and flow["lags"] == 8 and flow["sequences"] == 16
    assert flow["initial"]["step"] == 0 and flow["trained"]["step"] == 20
    for which in ("initial", "trained"):
        norms = np.asarray(flow[which]["norms"])
        assert norms.shape == (2, 8) and np.all(np.isfinite(norms)) and np.all(norms > 0)
        assert np.all(np.isfinite(flow[which]["decay_rate"]))
        assert flow[which]["norm_at_max_lag"] == norms[:, -1].tolist()
        # the rate is decay_rate's least-squares fit of the logs over lags 1..7
        fit = [np.polyfit(np.arange(1, 8), np.log(g[1:]), 1)[0] for g in norms]
        np.testing.assert_allclose(flow[which]["decay_rate"], fit, rtol=1e-4)
    assert not np.allclose(flow["initial"]["norms"], flow["trained"]["norms"], rtol=1e-3)
    assert flow["initial"]["decay_rate"] != flow["trained"]["decay_rate"]
    assert "least-squares slope of ln(norm) against lag" in flow["fit"]


def test_flow_starts_from_the_params_train_started_from(run):
    _, (made_by_train, made_by_flow), _ = run
    for a, b in zip(jax.tree.leaves(made_by_train.params), jax.tree.leaves(made_by_flow.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Started(Exception):
    """Stops a command where it has its initial states, so nothing trains."""


def _stop_with(calls, position):
    def stop(*args, **kwargs):
        calls.append(args[position])
        raise _Started

    return stop


def _arrays(states):
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(states)]


@pytest.mark.parametrize("argv", [
    ["--task", "adding", "--length", "4", "--cell", "gru", "--hidden", "4", "--seeds", "2", "--lr", "1e-2", "3e-3",
     "--clip", "0", "--warmup", "2", "--decay", "--optimizer", "sgd"],
    ["--task", "char_lm", "--tbptt", "--length", "6", "--hidden", "4", "--batch-size", "3", "--seed-offset", "5"],
], ids=["adding-two-rates-no-clip", "char_lm-tbptt"])
def test_flow_rebuilds_the_whole_state_train_task_starts_from(argv, tmp_path, monkeypatch):
    # train_task's states as fit receives them, and flow's as load_checkpoint receives them: params,
    # optimizer state (per-seed rates, no clipping), keys and, for truncated BPTT, the streams.
    calls = []
    monkeypatch.setattr(train, "fit", _stop_with(calls, 1))
    monkeypatch.setattr(train, "load_checkpoint", _stop_with(calls, 1))
    with pytest.raises(_Started):
        cli.main(["train", *argv, "--steps", "7", "--no-progress", "--out", str(tmp_path)])
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(_Started):
        cli.main(["flow", str(tmp_path)])
    by_train, by_flow = calls
    assert jax.tree.structure(by_flow) == jax.tree.structure(by_train)
    for a, b in zip(_arrays(by_train), _arrays(by_flow)):
        np.testing.assert_array_equal(a, b)
    if "--tbptt" in argv:
        assert by_flow.stream.cursor.shape == (1, 3)
    else:
        assert by_flow.stream is None
        np.testing.assert_allclose(train.learning_rate(by_flow.opt_state), [1e-2, 3e-3], rtol=1e-6)


def test_initial_states_takes_train_tasks_arguments_and_defaults():
    # tasks.initial_states(task, model, **kw) starts where train_task(task, model, **kw) starts
    start = inspect.signature(tasks.initial_states).parameters
    run = inspect.signature(tasks.train_task).parameters
    assert [(n, p.kind, p.default) for n, p in start.items()] == [(n, run[n].kind, run[n].default) for n in start]


def test_flow_prints_a_table_of_both_seeds(run):
    out, _, printed = run
    printed = printed[printed.index("||dL/dh_t|| at lag k"):]  # after the train run's own table
    assert "| seed | rate initial | rate trained (step 20) | norm at lag 7 initial | trained" in printed
    flow = json.loads((out / "flow_hidden.json").read_text())
    for i, seed in enumerate((0, 1)):
        row = next(r for r in printed.splitlines() if r.startswith(f"| {seed} "))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1]) == pytest.approx(flow["initial"]["decay_rate"][i], rel=1e-3)
        assert float(cells[4]) == pytest.approx(flow["trained"]["norm_at_max_lag"][i], rel=1e-3)
    assert f"wrote {out / 'flow_hidden.png'} and {out / 'flow_hidden.json'}" in printed


def _copy_run(out, dest):
    shutil.copytree(out, dest, ignore=shutil.ignore_patterns("flow_*"))
    return dest


def test_flow_errors_exit_2_with_a_message(run, tmp_path, capsys):
    out, *_ = run
    cases = []
    cases.append((tmp_path / "missing", "is not a directory"))
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", "is not a memcell run: it holds no config.json"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model": "resnet"}')
    cases.append((tmp_path / "other", "is not the config of a memcell train run"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    cases.append((tmp_path / "bad", "is not readable JSON"))
    (tmp_path / "killed").mkdir()
    shutil.copy(out / "config.json", tmp_path / "killed" / "config.json")
    cases.append((tmp_path / "killed", "holds no checkpoint"))
    (tmp_path / "no_ckpt").mkdir()
    shutil.copy(out / "config.json", tmp_path / "no_ckpt" / "config.json")
    (tmp_path / "no_ckpt" / "checkpoints").mkdir()
    cases.append((tmp_path / "no_ckpt", "holds no checkpoint"))
    config = json.loads((out / "config.json").read_text())
    for i, (key, value, message) in enumerate([  # wrong-typed values, as a hand-edited config.json may hold
        ("hidden", "eight", "holds a value train refuses: argument --hidden: expected a positive integer, got 'eight'"),
        ("lr", ["fast"], "holds a value train refuses: argument --lr: expected a positive number, got 'fast'"),
        ("layers", [2], "'layers' holds [2], not a value of --layers"),
        ("tbptt", "yes", "'tbptt' must be true or false, got 'yes'"),
    ]):
        (tmp_path / f"typed{i}" / "checkpoints").mkdir(parents=True)
        (tmp_path / f"typed{i}" / "config.json").write_text(json.dumps({**config, key: value}))
        cases.append((tmp_path / f"typed{i}", message))
    for run_dir, message in cases:
        code, _, err = _main(["flow", str(run_dir)], capsys)
        assert code == 2 and message in err and str(run_dir) in err, (run_dir, err)
    code, _, err = _main(["flow", str(out), "--sequences", "0"], capsys)
    assert code == 2 and "--sequences: expected a positive integer, got 0" in err


@pytest.mark.slow  # 5-15 s: builds the model again; test_load_checkpoint_restores_and_refuses_another_config checks the rule
def test_flow_refuses_a_config_that_does_not_match_the_checkpoint(run, tmp_path, capsys):
    out, *_ = run
    moved = _copy_run(out, tmp_path / "edited")
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "hidden": 9}))
    code, _, err = _main(["flow", str(moved)], capsys)
    assert code == 2 and "different configuration" in err and "hidden: checkpoint 8, now 9" in err


# ----------------------------------------------------------------------------- the measurement


def _ragged_task():
    """Four sequences of lengths 6, 3, 4, 5 (padded to 6), one label each."""
    xs = np.asarray(jax.random.normal(jax.random.key(3), (4, 6, 2)), np.float32)
    test = {"xs": xs, "ys": np.array([0, 1, 1, 0]), "lengths": np.array([6, 3, 4, 5])}
    return tasks.Task("ragged", 2, 2, "last", None, test, tasks.classification_loss, "accuracy", "max", {}, None, {})


def test_lags_count_back_from_each_sequences_own_last_step():
    task = _ragged_task()
    model = tasks.sequence_model(memcell.rnn(4), 2, "last")
    params = model.init(jax.random.key(0), 2)
    got = jax.jit(lambda p: tasks.gradient_norms_by_lag(task, model, p, wrt="input"))(params)  # jit: 4x faster here
    test = jax.tree.map(jnp.asarray, task.test)
    dx = jax.jit(jax.grad(lambda x: task.loss(model.apply(params, x, lengths=test["lengths"]), test)[0]))(test["xs"])
    g = np.linalg.norm(np.asarray(dx), axis=-1)  # [4, 6]
    lengths = task.test["lengths"]
    # median length 4.5: lags 0..3, each the mean over the sequences that reach it
    want = [np.mean([g[i, n - 1 - k] for i, n in enumerate(lengths) if n > k]) for k in range(4)]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    assert np.all(g[1, 3:] == 0)  # padding gets no gradient: nothing past the readout counts


def test_last_output_only_differentiates_the_last_steps_loss_alone():
    # copy scores every step; with last_output_only the gradient at lag k is that of the last
    # output's loss term, k steps before it (no sum over the k + 1 last outputs' losses)
    task = tasks.copy_memory(2, n_test=3)
    model = tasks.sequence_model(memcell.rnn(4), task.output_size, task.readout)
    params = model.init(jax.random.key(0), task.input_size)
    got = tasks.gradient_norms_by_lag(task, model, params, wrt="input", last_output_only=True)
    xs, ys = tasks.features(task, task.test["xs"]), jnp.asarray(task.test["ys"])
    n, T = ys.shape

    def last_term(x):  # the last step's share of the task's mean cross-entropy over all n * T outputs
        logp = jax.nn.log_softmax(model.apply(params, x)[:, -1])
        return -jnp.take_along_axis(logp, ys[:, -1:], axis=-1).sum() / (n * T)

    want = np.linalg.norm(np.asarray(jax.grad(last_term)(xs)), axis=-1).mean(0)[::-1]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-12)
    summed = tasks.gradient_norms_by_lag(task, model, params, wrt="input")
    assert not np.allclose(np.asarray(summed)[1:], want[1:], rtol=1e-3)  # the default sums the later losses in
    with pytest.raises(TypeError, match="last_output_only must be a bool, got str"):
        tasks.gradient_norms_by_lag(task, model, params, last_output_only="yes")


def test_gradient_norms_by_lag_refuses_bad_arguments():
    task = _ragged_task()
    stack = tasks.sequence_model([memcell.gru(4), memcell.gru(4)], 2, "last")
    params = None  # every argument is checked before the params are used
    with pytest.raises(ValueError, match="wrt='hidden' needs a sequence_model built from a single Cell"):
        tasks.gradient_norms_by_lag(task, stack, params)
    with pytest.raises(ValueError, match="wrt must be one of \\['hidden', 'input'\\], got 'outputs'"):
        tasks.gradient_norms_by_lag(task, stack, params, wrt="outputs")
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        tasks.gradient_norms_by_lag(task, stack, params, n=0, wrt="input")


def test_load_checkpoint_restores_and_refuses_another_config(tmp_path):
    tx = train.optimizer(0.1)
    state = train.init_state(0, lambda k: jnp.zeros(2), tx)
    loss = lambda w, batch, key: (jnp.sum((w - batch) ** 2), {})
    result = train.fit(train.make_train_step(loss, tx), state, lambda key: jnp.ones(2), steps=3, progress=False,
                       checkpoint_dir=tmp_path, config={"lr": 0.1})
    restored = train.load_checkpoint(tmp_path, state, config={"lr": 0.1})
    assert int(restored.step) == 3
    np.testing.assert_array_equal(np.asarray(restored.params), np.asarray(result.state.params))
    with pytest.raises(ValueError, match="different configuration: lr: checkpoint 0.1, now 0.2"):
        train.load_checkpoint(tmp_path, state, config={"lr": 0.2})


def test_load_checkpoint_refuses_a_missing_or_empty_directory(tmp_path):
    state = train.init_state(0, lambda k: jnp.zeros(2), train.optimizer(1e-3))
    with pytest.raises(FileNotFoundError, match="checkpoint_dir .*nope' is not a directory"):
        train.load_checkpoint(tmp_path / "nope", state)
    assert not (tmp_path / "nope").exists()  # looking does not create it
    with pytest.raises(ValueError, match="holds no checkpoint"):
        train.load_checkpoint(tmp_path, state)


def test_gradient_flow_plot_refuses_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"must both have shape \[seeds, K\], got \(1, 5\) and \(1, 4\)"):
        plot.gradient_flow(tmp_path / "f.png", [np.ones(5)], [np.ones(4)])


# ----------------------------------------------------------------------------- slow: other cells


@pytest.mark.slow  # a training run a cell (~15 s each on 2 CPU cores)
@pytest.mark.parametrize("extra, wrt", [
    pytest.param(["--cell", "mingru"], "hidden", id="mingru"),
    pytest.param(["--cell", "mlstm"], "input", id="mlstm"),  # its carry (C, n, m) has no hidden part
    pytest.param(["--cell", "rnn", "--layers", "2"], "input", id="rnn-2-layers"),
    pytest.param(["--cell", "lru", "--seeds", "3"], "hidden", id="lru-3-seeds"),
])
def test_flow_on_modern_cells_stacks_and_more_seeds(extra, wrt, tmp_path, capsys):
    argv = [a for a in TINY if a not in ("--cell", "lstm")]
    argv = argv + extra if "--seeds" not in extra else [*argv[:argv.index("--seeds")], *argv[argv.index("--seeds") + 2:], *extra]
    assert _main([*argv, "--out", str(tmp_path / "run")], capsys)[0] == 0
    code, stdout, err = _main(["flow", str(tmp_path / "run"), "--out", str(tmp_path / "flow")], capsys)
    assert code == 0, err
    assert not (tmp_path / "run" / f"flow_{wrt}.json").exists() and (tmp_path / "flow" / f"flow_{wrt}.png").exists()
    flow = json.loads((tmp_path / "flow" / f"flow_{wrt}.json").read_text())
    n = int(extra[extra.index("--seeds") + 1]) if "--seeds" in extra else 2
    assert flow["wrt"] == wrt and len(flow["seeds"]) == n
    for which in ("initial", "trained"):
        assert np.asarray(flow[which]["norms"]).shape == (n, 8)
        assert all(math.isfinite(r) for r in flow[which]["decay_rate"])
    assert not np.allclose(flow["initial"]["norms"], flow["trained"]["norms"], rtol=1e-3)
