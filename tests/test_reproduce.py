"""experiments/reproduce.py: the command line, a tiny run end to end, and (slow) the key findings
of two quick reproductions at fixed seeds."""

import json
import pathlib
import sys

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


def test_bad_arguments_name_the_argument_and_the_value():
    with pytest.raises(SystemExit, match=r"--only must name reproductions among .*got \['nope'\]"):
        reproduce.main(["--only", "adding_chrono,nope"])
    with pytest.raises(SystemExit, match="--steps must be a positive int, got 0"):
        reproduce.main(["--only", "adding_chrono", "--steps", "0"])
    with pytest.raises(ValueError, match="name must be one of .*got 'adding'"):
        reproduce.run("adding")
    with pytest.raises(ValueError, match="seeds must be a positive int, got -1"):
        reproduce.run("adding_chrono", seeds=-1)
    with pytest.raises(SystemExit, match="--lengths must be comma-separated ints, got '750,x'"):
        reproduce.main(["--only", "adding_chrono", "--lengths", "750,x"])
    with pytest.raises(SystemExit, match="--eval-every must be a positive int, got 0"):
        reproduce.main(["--only", "adding_chrono", "--eval-every", "0"])
    with pytest.raises(ValueError, match=r"lengths must be positive ints, got \(750, 0\)"):
        reproduce.run("adding_chrono", lengths=(750, 0))
    with pytest.raises(ValueError, match="lengths cannot be overridden for 'greff_variants'"):
        reproduce.run("greff_variants", lengths=(50,))
    with pytest.raises(ValueError, match=r"cells must be a subset of 'adding_arjovsky'.s cells, \['rnn', 'irnn', "
                                         r"'lstm'\], got \['gru'\]"):
        reproduce.run("adding_arjovsky", cells=("gru",))


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
    saved = json.loads((tmp_path / "adding_chrono" / "results.json").read_text())
    assert saved["protocol"]["lengths"] == [5] and saved["protocol"]["cells"] == ["lstm"]


@pytest.mark.slow
def test_quick_adding_chrono_beats_the_baseline_and_the_default_init(tmp_path):
    runs = reproduce.run("adding_chrono", quick=True, out=tmp_path)["runs"]
    chrono, default = runs["lstm_chrono/T=60"], runs["lstm/T=60"]
    assert chrono["n_beat"] == 1 and chrono["mean"] < 0.5 * min(chrono["baselines"].values())
    assert chrono["mean"] < default["mean"]
    flow = json.loads((tmp_path / "adding_chrono" / "results.json").read_text())["flow"]
    assert set(flow) == {f"{c}/{phase}" for c in ("lstm_chrono", "lstm") for phase in ("init", "trained")}
    assert (tmp_path / "adding_chrono" / "flow.png").stat().st_size > 0


@pytest.mark.slow
def test_quick_adding_arjovsky_lstm_solves_short_tanh_rnn_fails_longer(tmp_path):
    runs = reproduce.run("adding_arjovsky", quick=True, out=tmp_path)["runs"]
    assert runs["lstm/T=10"]["n_beat"] == 1 and runs["lstm/T=10"]["mean"] < 0.02
    assert runs["rnn/T=60"]["n_beat"] == 0  # at (or above) the 0.167 baseline
