"""experiments/reproduce.py: the command line, a tiny run end to end, and (slow) the key findings
of two quick reproductions at fixed seeds."""

import dataclasses
import json
import pathlib
import re
import sys

import numpy as np
import pytest

EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import reproduce


def test_list_names_every_reproduction_with_its_budget(capsys):
    assert reproduce.main(["--list"]) == {}
    text = capsys.readouterr().out
    for name in ("adding_arjovsky", "adding_chrono", "irnn_le", "copy_arjovsky", "greff_variants"):
        assert f"{name}: " in text
    assert "lengths=(100, 400)" in text and "hidden=128" in text and "batch_size=20" in text


def _exits_2(capsys, argv, message):
    """``main(argv)`` exits with code 2 before anything runs, and its message matches ``message``."""
    with pytest.raises(SystemExit) as e:
        reproduce.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert re.search(message, err), err


def test_bad_arguments_name_the_argument_and_the_value(capsys):
    _exits_2(capsys, ["--only", "adding_chrono,nope"], r"--only must name reproductions among .*got \['nope'\]")
    _exits_2(capsys, ["--only", "adding_chrono", "--steps", "0"], "--steps must be a positive int, got 0")
    _exits_2(capsys, ["--only", "adding_chrono", "--lengths", "750,x"], "--lengths must be comma-separated ints, got '750,x'")
    _exits_2(capsys, ["--only", "adding_chrono", "--eval-every", "0"], "--eval-every must be a positive int, got 0")
    with pytest.raises(ValueError, match="name must be one of .*got 'adding'"):
        reproduce.run("adding")
    with pytest.raises(ValueError, match="seeds must be a positive int, got -1"):
        reproduce.run("adding_chrono", seeds=-1)
    with pytest.raises(ValueError, match=r"lengths must be positive ints, got \(750, 0\)"):
        reproduce.run("adding_chrono", lengths=(750, 0))
    with pytest.raises(ValueError, match="lengths cannot be overridden for 'greff_variants'"):
        reproduce.run("greff_variants", lengths=(50,))
    with pytest.raises(ValueError, match=r"cells must be a subset of 'adding_arjovsky'.s cells, \['rnn', 'irnn', "
                                         r"'lstm'\], got \['gru'\]"):
        reproduce.run("adding_arjovsky", cells=("gru",))


def test_lengths_and_cells_the_protocol_cannot_run_exit_2_naming_the_argument(capsys):
    """Each of these was a traceback: the arguments are now checked, for every reproduction asked
    for, before anything trains (exit 2, the argument named)."""
    _exits_2(capsys, ["--only", "adding_chrono", "--lengths", "0"], r"--lengths must be positive ints, got \(0,\)")
    _exits_2(capsys, ["--only", "adding_arjovsky", "--lengths", "1"],
             "--lengths hold 1, a length adding_arjovsky refuses: task 'adding': length must be an int >= 2, got 1")
    _exits_2(capsys, ["--only", "adding_chrono", "--lengths", "2"],
             "--lengths hold 2, where cell 'lstm_chrono' cannot be built: init='chrono' needs max_timescale > 2")
    _exits_2(capsys, ["--only", "adding_arjovsky", "--cells", "gru"],
             r"--cells must be a subset of 'adding_arjovsky'.s cells, \['rnn', 'irnn', 'lstm'\], got \['gru'\]")
    _exits_2(capsys, ["--only", "greff_variants", "--lengths", "50"], "--lengths cannot be overridden for 'greff_variants'")
    _exits_2(capsys, ["--only", "greff_variants", "--cells", "lstm"], "--cells must be a subset of 'greff_variants'")
    # every reproduction is checked before the first runs: a bad length for the last fails at once
    _exits_2(capsys, ["--lengths", "1"], r"--lengths hold 1, .* \(for 'adding_arjovsky'\)")


def test_settings_name_where_a_run_writes():
    assert reproduce.resolve("adding_arjovsky")[1] == ""
    assert reproduce.resolve("adding_arjovsky", seeds=2)[1] == ""  # the recorded protocol's own value
    assert reproduce.resolve("adding_arjovsky", quick=True)[1] == "quick"
    p, settings = reproduce.resolve("adding_arjovsky", lengths=(400,), cells=("lstm",), steps=4000, eval_every=250)
    assert settings == "steps=4000-eval_every=250-lengths=400-cells=lstm"
    assert (p.lengths, p.cells, p.steps, p.eval_every) == ((400,), ("lstm",), 4000, 250)
    assert reproduce.resolve("greff_variants", quick=True, seeds=5)[1] == "quick-seeds=5"


def test_verdicts_and_the_comparison_to_vanilla():
    claim = reproduce.REPRODUCTIONS["adding_arjovsky"]["claims"]
    assert reproduce._verdict(claim["lstm"], 2, 2, 400) == "agrees"
    assert reproduce._verdict(claim["lstm"], 0, 2, 400) == "not reached (budget)"
    assert reproduce._verdict(claim["lstm"], 1, 2, 750) == "disagrees (beats it)"
    assert reproduce._verdict(claim["rnn"], 0, 2, 200) == "agrees"
    assert reproduce._verdict(claim["rnn"], 2, 2, 10) == "-"  # the claim is about T >= 100
    copy = reproduce.REPRODUCTIONS["copy_arjovsky"]["claims"]["lstm"]
    assert [reproduce._verdict(copy, 0, 1, T) for T in (100, 200)] == ["not reached (budget)", "agrees"]
    assert reproduce.compare_to_vanilla([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "min") == "worse"
    assert reproduce.compare_to_vanilla([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "max") == "better"
    assert reproduce.compare_to_vanilla([1.0, 1.5, 0.5], [1.2, 1.7, 0.7], "min") == "same"
    assert reproduce.compare_to_vanilla([1.0], [2.0], "min") == "n/a"


@pytest.mark.slow  # 12-19 s (two compiles); the slow quick runs write the same files
def test_a_tiny_run_writes_its_json_table_and_figures(tmp_path, monkeypatch):
    tiny = reproduce.Protocol("adding", (6,), ("lstm_chrono",), hidden=4, steps=4, batch_size=4, lrs=(1e-2, 1e-3),
                              seeds=2, eval_every=2, n_test=16, stop_at_solved=False, flow=False)
    spec = dict(reproduce.REPRODUCTIONS["adding_chrono"], protocol=tiny)
    monkeypatch.setitem(reproduce.REPRODUCTIONS, "adding_chrono", spec)
    result = reproduce.main(["--only", "adding_chrono", "--out", str(tmp_path)])
    out = tmp_path / "adding_chrono"
    saved = json.loads((out / "results.json").read_text())
    run = saved["runs"]["lstm_chrono/T=6"]
    assert run["steps"] == 4 and len(run["final"]) == 2 and run["lr"] in (1e-2, 1e-3)
    assert set(run["per_lr"]) == {"0.01", "0.001"} and [h["step"] for h in run["history"]] == [2, 4]
    assert run["final"] == result["adding_chrono"]["runs"]["lstm_chrono/T=6"]["final"]
    assert saved["flow"] == {}  # the flow figure is checked by the slow test (a second compile)
    report = (out / "report.md").read_text()
    assert "| lstm_chrono | 6 | solves T = 750" in report and "Where ours differs:" in report
    assert (out / "curves.png").stat().st_size > 0 and "](curves.png)" in report and not (out / "flow.png").exists()


@pytest.mark.slow  # ~8 s (one compile)
def test_lengths_cells_and_eval_every_override_the_protocol(tmp_path, monkeypatch):
    tiny = reproduce.Protocol("adding", (6, 9), ("lstm_chrono", "lstm"), hidden=4, steps=4, batch_size=4,
                              lrs=(1e-2,), seeds=1, eval_every=4, n_test=16, stop_at_solved=False, flow=False)
    monkeypatch.setitem(reproduce.REPRODUCTIONS, "adding_chrono", dict(reproduce.REPRODUCTIONS["adding_chrono"],
                                                                      protocol=tiny))
    result = reproduce.main(["--only", "adding_chrono", "--out", str(tmp_path), "--lengths", "5",
                             "--cells", "lstm", "--eval-every", "1", "--steps", "3"])
    runs = result["adding_chrono"]["runs"]
    assert list(runs) == ["lstm/T=5"] and [h["step"] for h in runs["lstm/T=5"]["history"]] == [1, 2, 3]
    saved = json.loads((tmp_path / "adding_chrono" / "steps=3-eval_every=1-lengths=5-cells=lstm" / "results.json")
                       .read_text())
    assert saved["protocol"]["lengths"] == [5] and saved["protocol"]["cells"] == ["lstm"]
    assert not (tmp_path / "adding_chrono" / "results.json").exists()  # the recorded run's place stays free


@pytest.mark.slow
def test_quick_adding_chrono_beats_the_baseline_and_the_default_init(tmp_path):
    runs = reproduce.run("adding_chrono", quick=True, out=tmp_path)["runs"]
    chrono, default = runs["lstm_chrono/T=60"], runs["lstm/T=60"]
    assert chrono["n_beat"] == 1 and chrono["mean"] < 0.5 * min(chrono["baselines"].values())
    assert chrono["mean"] < default["mean"]
    flow = json.loads((tmp_path / "adding_chrono" / "quick" / "results.json").read_text())["flow"]
    assert set(flow) == {f"{c}/{phase}" for c in ("lstm_chrono", "lstm") for phase in ("init", "trained")}
    assert (tmp_path / "adding_chrono" / "quick" / "flow.png").stat().st_size > 0


@pytest.mark.slow
def test_quick_adding_arjovsky_lstm_solves_short_tanh_rnn_fails_longer(tmp_path):
    runs = reproduce.run("adding_arjovsky", quick=True, out=tmp_path)["runs"]
    assert runs["lstm/T=10"]["n_beat"] == 1 and runs["lstm/T=10"]["mean"] < 0.02
    assert runs["rnn/T=60"]["n_beat"] == 0  # at (or above) the 0.167 baseline


def _fake_training(monkeypatch, valid_by_member, test_by_member, seen):
    """``train_task`` and ``eval_fn`` replaced: member ``i`` (lr-major) of the sweep ends with
    ``valid_by_member[i]`` on the task it trained on and scores ``test_by_member[i]`` on the test set."""
    import types

    import jax.numpy as jnp

    from memcell import tasks

    def train_task(task, model, *, seeds, **_):
        seen.setdefault("trained_on", []).append(task)
        n = len(seeds)
        assert n == len(valid_by_member)
        return types.SimpleNamespace(  # the fields of TaskResult the reproduction reads
            final={task.metric: jnp.asarray(valid_by_member, jnp.float32)}, steps=4,
            history=[{"step": 4, task.metric: list(valid_by_member)}],
            state=types.SimpleNamespace(params={"member": jnp.arange(n, dtype=jnp.float32)}))

    def eval_fn(task, model):
        seen.setdefault("evaluated_on", []).append(task)
        table = jnp.asarray(test_by_member, jnp.float32)
        return lambda params: {task.metric: table[params["member"].astype(jnp.int32)], "loss": params["member"]}

    monkeypatch.setattr(tasks, "train_task", train_task)
    monkeypatch.setattr(tasks, "eval_fn", eval_fn)


def test_the_learning_rate_is_chosen_on_validation_and_the_test_set_read_once_after(monkeypatch):
    import memcell

    seen = {}
    # lr 1e-2 (members 0, 1) is best on test, lr 1e-3 (members 2, 3) on validation; a NaN seed sinks 1e-4.
    _fake_training(monkeypatch, valid_by_member=[0.5, 0.7, 0.1, 0.2, 0.0, float("nan")],
                   test_by_member=[0.01, 0.02, 0.30, 0.40, 0.0, 0.0], seen=seen)
    from memcell import tasks

    valid, test = tasks.make("adding", 6, n_test=8, seed=reproduce.VALID_SEED), tasks.make("adding", 6, n_test=8)
    run = reproduce.train_sweep(valid, memcell.lstm(4), seeds=2, lrs=(1e-2, 1e-3, 1e-4), steps=4, batch_size=4,
                                task_test=test)
    assert run["lr"] == 1e-3  # validation's choice, not test's (1e-2) nor the NaN seed's rate
    assert run["valid"] == pytest.approx([0.1, 0.2]) and run["final"] == pytest.approx([0.30, 0.40])
    assert run["test"]["mse"] == run["final"] and run["per_lr"]["0.01"] == pytest.approx(0.6)
    assert seen["trained_on"] == [valid] and seen["evaluated_on"] == [test]


def test_greff_trains_on_a_validation_draw_and_tabulates_test(tmp_path, monkeypatch):
    seen = {}
    _fake_training(monkeypatch, valid_by_member=[0.3, 0.3, 0.1, 0.1], test_by_member=[0.01, 0.01, 0.2, 0.4],
                   seen=seen)
    g = reproduce.GreffProtocol(tasks=("adding",), variants=("vanilla", "NFG"), hidden=4, steps=4, lrs=(1e-2, 1e-3),
                                seeds=2, adding_length=6)
    assert reproduce.GreffProtocol().lrs == (3e-3, 1e-2, 3e-2)
    runs = reproduce.run_greff("greff_variants", g, tmp_path)["runs"]
    valid, test = seen["trained_on"][0].test, seen["evaluated_on"][0].test
    assert valid["xs"].shape == test["xs"].shape and not np.array_equal(valid["xs"], test["xs"])  # independent draws
    assert all(t.test is not test for t in seen["trained_on"])
    r = runs["adding/NFG"]
    assert r["lr"] == 1e-3 and r["final"] == pytest.approx([0.2, 0.4]) and r["valid"] == pytest.approx([0.1, 0.1])
    report = (tmp_path / "report.md").read_text()
    assert "| NFG | removing the forget gate hurts significantly | 0.3 ± 0.14 (lr 0.001) | same |" in report
    assert "lr chosen on validation" in report and "TEST set" in report
    saved = json.loads((tmp_path / "results.json").read_text())["runs"]["adding/vanilla"]
    assert saved["valid_mean"] == pytest.approx(0.1) and saved["mean"] == pytest.approx(0.3)


def test_a_run_with_other_settings_never_replaces_the_recorded_one(tmp_path, monkeypatch):
    """Issue 20, L2: ``--quick`` or any override wrote over the recorded run's results.json and report.md."""
    tiny = reproduce.Protocol("adding", (6,), ("lstm",), hidden=4, steps=4, batch_size=4, lrs=(1e-2, 1e-3), seeds=2,
                              eval_every=4, n_test=16, stop_at_solved=False, flow=False)
    monkeypatch.setitem(reproduce.REPRODUCTIONS, "adding_chrono", dict(
        reproduce.REPRODUCTIONS["adding_chrono"], protocol=tiny, quick=dataclasses.replace(tiny, hidden=3)))
    _fake_training(monkeypatch, valid_by_member=[0.3, 0.3, 0.1, 0.1], test_by_member=[0.01, 0.01, 0.2, 0.4], seen={})
    recorded = tmp_path / "adding_chrono"
    reproduce.main(["--only", "adding_chrono", "--out", str(tmp_path)])
    before = {f: (recorded / f).read_text() for f in ("results.json", "report.md")}
    for argv, settings in ((["--quick"], "quick"), (["--steps", "3"], "steps=3")):
        reproduce.main(["--only", "adding_chrono", "--out", str(tmp_path)] + argv)
        assert {f: (recorded / f).read_text() for f in before} == before  # untouched
        report = (recorded / settings / "report.md").read_text()
        assert f"Settings: **{settings}**, not the recorded protocol of 'adding_chrono'" in report
        saved = json.loads((recorded / settings / "results.json").read_text())
        assert saved["settings"] == settings and "command" in saved and "commit" in saved
    assert "Settings: the recorded protocol of 'adding_chrono'" in before["report.md"]
    assert json.loads(before["results.json"])["settings"] == "recorded protocol"
    # the report states the budget it ran
    assert "Budget: at most 3 updates" in (recorded / "steps=3" / "report.md").read_text()
    assert '"hidden": 3' in (recorded / "quick" / "report.md").read_text()
