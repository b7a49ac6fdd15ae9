"""The memcell command line: a run end to end, a killed run resumed bit-identically, and
bad input exiting with code 2 and a message."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_helpers import run_main as _run_main

from memcell import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]




# ----------------------------------------------------------------------------- bad input, exit 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--task", "nope"], "invalid choice: 'nope'"),
        (["train", "--task", "adding", "--cell", "lstmx"], "invalid choice: 'lstmx'"),
        (["train", "--task", "adding", "--bogus", "1"], "unrecognized arguments: --bogus"),
        (["train", "--task", "adding", "--length", "0"], "--length: expected a positive integer, got 0"),
        (["train", "--task", "adding", "--length", "abc"], "--length: expected a positive integer, got 'abc'"),
        (["train", "--task", "adding", "--length", "1"], "--length must be >= 2 for adding, got 1"),
        (["train", "--task", "temporal_order", "--length", "5"], "--length must be >= 11 for temporal_order"),
        (["train", "--task", "digits", "--length", "10"], "has its length fixed by the data"),
        (["train", "--task", "adding", "--lr", "-1"], "--lr: expected a positive"),
        (["train", "--task", "adding", "--seeds", "2", "--lr", "1e-3", "1e-2", "1e-1"], "--lr takes one value or one per seed (2), got 3"),
        (["train", "--task", "adding", "--cell", "gru", "--forget-bias", "2"], "apply to --cell lstm, not 'gru'"),
        (["train", "--task", "adding", "--resume"], "--resume needs --out"),
        (["train", "--task", "adding", "--stop-at-solved"], "--stop-at-solved needs --eval-every"),
        (["train", "--task", "adding", "--sample-chars", "10"], "--sample-chars only applies to --task char_lm"),
        (["train", "--task", "char_lm", "--top-k", "0"], "--top-k must be >= 1, got 0"),
        (["train", "--task", "char_lm", "--length", "100000"],
         "--length: length must be at most 93992 for this corpus (a window of length + 1 characters must fit"),
        (["train", "--task", "adding", "--layers", "2", "--gradient-flow"], "--gradient-flow needs a single recurrent layer"),
        (["train", "--task", "adding", "--cell", "mlstm", "--hidden", "4", "--gradient-flow"],
         "--gradient-flow cannot measure --cell mlstm"),
        (["train", "--task", "adding", "--backend", "fast"], "invalid choice: 'fast'"),
        (["train", "--task", "adding", "--layer-norm", "--backend", "fused"],
         "--backend fused cannot run this cell: the fused LSTM implements the default cell only"),
        (["train", "--task", "adding", "--backend", "parallel"],
         "--backend parallel cannot run this cell: no parallel path for a cell with a LSTMSpec"),
        (["train", "--task", "adding", "--backend", "cudnn"], "--backend cudnn cannot run this cell: "),
        (["train", "--task", "adding", "--cell", "gru", "--proj-size", "4"], "--proj-size apply to --cell lstm, not 'gru'"),
        (["train", "--task", "adding", "--hidden", "8", "--proj-size", "8"], "--proj-size must be < --hidden (8), got 8"),
        (["train", "--task", "adding", "--zoneout", "1.5"], "--zoneout: expected a rate in [0, 1), got 1.5"),
        (["train", "--task", "adding", "--cell", "mingru", "--recurrent-dropout", "0.2"],
         "recurrent_dropout needs a cell whose step is known to read h through its recurrent matmul"),
        (["train", "--task", "adding", "--zoneout", "0.1", "--gradient-flow"], "--gradient-flow measures a bare cell"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv, message, capsys):
    code, _, err = _run_main(argv, capsys)
    assert code == 2
    assert message in err


def test_unwritable_output_directory_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = _run_main(["train", "--task", "adding", "--out", str(blocker / "run")], capsys)
    assert code == 2 and "is not a writable directory" in err and str(blocker / "run") in err


def test_resume_from_a_directory_without_checkpoints_exits_2(tmp_path, capsys):
    code, _, err = _run_main(["train", "--task", "adding", "--out", str(tmp_path), "--resume"], capsys)
    assert code == 2 and "holds no checkpoints" in err


# ----------------------------------------------------------------------------- runs

SMALL = ["--task", "adding", "--length", "10", "--cell", "gru", "--hidden", "16", "--seeds", "2",
         "--batch-size", "16", "--lr", "1e-2", "--no-progress", "--steps-per-call", "20"]


def test_train_writes_report_and_mismatched_resume_exits_2(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = _run_main(["train", *SMALL, "--steps", "40", "--eval-every", "20", "--out", str(out),
                                 "--gradient-flow"], capsys)
    assert code == 0
    assert "| seed" in stdout and "mean baseline" in stdout and "beats the mean baseline" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 40 and report["seeds"] == [0, 1] and len(report["final"]["mse"]) == 2
    assert report["baselines"]["mean"]["mse"] == pytest.approx(1 / 6, abs=0.03)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["split"] == "train"] == list(range(1, 41))
    evals = [r for r in lines if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [20, 40] and all(len(r["grad_flow_log10"]) == 2 for r in evals)
    config = (out / "config.json").read_text()
    # the same directory again without --resume (here with another hidden size): refused, and
    # nothing overwritten, config.json included (a later resume or memcell flow reads it)
    bad = [a if a != "16" else "17" for a in SMALL]
    code, _, err = _run_main(["train", *bad, "--steps", "60", "--out", str(out)], capsys)
    assert code == 2 and "already holds checkpoints" in err
    assert (out / "config.json").read_text() == config
    # resuming with another hidden size: refused, naming the checkpoint and the change
    code, _, err = _run_main(["train", *bad, "--steps", "60", "--out", str(out), "--resume"], capsys)
    assert code == 2 and "different configuration" in err and "hidden: checkpoint 16, now 17" in err
    assert str(out / "checkpoints" / "40") in err
    assert (out / "config.json").read_text() == config  # the refused resume left the run's config


@pytest.mark.slow  # 22 s; test_fused checks the auto dispatch, test_cli's bad-input cases the flag
def test_backend_auto_trains_like_the_reference(tmp_path, capsys, monkeypatch):
    """``--backend auto`` runs the GRU on the fused path: the same run, up to float32 rounding."""
    from memcell.fused import path as fused_path  # the fused path builds its GRU kernel with gru_kind

    calls = {"reference": 0, "auto": 0}
    real_gru = fused_path.gru_kind
    finals = {}
    for backend in ("reference", "auto"):
        # Count calls of the fused GRU: whether the fused path ran is observed, not inferred from
        # rounding (the two paths can round alike on some CPUs).
        monkeypatch.setattr(fused_path, "gru_kind", lambda *a, _b=backend, **k: calls.__setitem__(_b, calls[_b] + 1) or real_gru(*a, **k))
        out = tmp_path / backend
        code, _, _ = _run_main(["train", *SMALL, "--steps", "20", "--backend", backend, "--out", str(out)], capsys)
        assert code == 0
        assert json.loads((out / "config.json").read_text())["backend"] == backend
        finals[backend] = json.loads((out / "report.json").read_text())["final"]["mse"]
    assert finals["auto"] == pytest.approx(finals["reference"], rel=1e-3)
    assert calls["reference"] == 0 and calls["auto"] > 0


@pytest.mark.slow  # 14 s (the LRU's compile); test_practitioner_options_train_and_are_recorded runs the CLI
def test_a_modern_cell_trains_on_the_parallel_path(tmp_path, capsys):
    """The LRU (complex carry, output of the input's width) through the whole CLI on backend parallel."""
    out = tmp_path / "lru"
    code, stdout, _ = _run_main(["train", *SMALL, "--cell", "lru", "--steps", "10", "--backend", "parallel",
                                 "--out", str(out)], capsys)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert np.all(np.isfinite(report["final"]["mse"])) and json.loads((out / "config.json").read_text())["cell"] == "lru"


@pytest.mark.slow  # 13 s; the options themselves are tested in test_regularize, their flag checks in test_bad_input_exits_2
def test_practitioner_options_train_and_are_recorded(tmp_path, capsys):
    """A projected LSTM with recurrent dropout, zoneout and a learnt initial carry, through the CLI."""
    out = tmp_path / "lstmp"
    code, _, _ = _run_main(["train", *SMALL, "--cell", "lstm", "--proj-size", "8", "--recurrent-dropout", "0.2",
                            "--zoneout", "0.1", "--learn-initial-carry", "--steps", "10", "--out", str(out)], capsys)
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["proj_size"], config["recurrent_dropout"], config["zoneout"], config["learn_initial_carry"]) == (
        8, 0.2, 0.1, True)
    assert np.all(np.isfinite(json.loads((out / "report.json").read_text())["final"]["mse"]))


@pytest.mark.slow  # 7 s; tasks.sample_text is tested in test_tasks, the flag checks in test_bad_input_exits_2
def test_char_lm_prints_a_sample(capsys):
    code, stdout, _ = _run_main(["train", "--task", "char_lm", "--length", "20", "--hidden", "16", "--steps", "20",
                                 "--steps-per-call", "20", "--no-progress", "--sample-chars", "30",
                                 "--prompt", "ROMEO", "--temperature", "0.5", "--top-k", "5"], capsys)
    assert code == 0
    assert "bigram baseline" in stdout and "unigram baseline" in stdout
    sample = stdout.split("(temperature 0.5):\n", 1)[1]
    assert sample.startswith("ROMEO") and len(sample.rstrip("\n")) >= 5 + 30 - sample.count("\n")


def test_tasks_lists_every_task(capsys):
    code, stdout, _ = _run_main(["tasks"], capsys)
    assert code == 0
    for name in cli.TASK_NAMES:
        assert f"{name}: metric" in stdout


def _cli(*args, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "memcell", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_multi_host_start_without_the_other_processes_gives_up_with_exit_2():
    """Process 0 of 2 with no process 1: it says what it waits for and for how long, then exits 2
    (JAX alone would wait 300 s silently and then abort the process)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    proc = _cli("train", "--task", "adding", "--steps", "1", "--no-progress", "--coordinator", f"localhost:{port}",
                "--num-processes", "2", "--process-id", "0", "--coordinator-timeout", "2")
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2, err[-3000:]
    assert (f"memcell: process 0 of 2 is joining the multi-host run at the coordinator localhost:{port} and waits "
            "until every process has connected (at most 2 s: --coordinator-timeout)") in err
    assert (f"memcell: error: --coordinator-timeout: process 0 of 2 waited 2 s at the coordinator localhost:{port} "
            "and not every process connected") in err


@pytest.mark.slow  # 27 s end to end; memcell.train's own bit-identical resume test runs in make test
def test_killed_run_resumes_bit_identical(tmp_path):
    """A run is SIGKILLed after its first checkpoint, resumed with --resume, and must end with
    the same metrics log and report as a run that was never interrupted."""
    args = ["train", "--task", "adding", "--length", "60", "--cell", "lstm", "--hidden", "64", "--seeds", "2",
            "--batch-size", "64", "--steps", "300", "--checkpoint-every", "100", "--eval-every", "100",
            "--steps-per-call", "10", "--no-progress", "--json"]
    killed_dir, full_dir = tmp_path / "killed", tmp_path / "full"
    proc = _cli(*args, "--out", str(killed_dir))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (killed_dir / "checkpoints" / "100").is_dir():
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    report_path = killed_dir / "report.json"
    assert not report_path.exists()

    resumed = _cli(*args, "--out", str(killed_dir), "--resume")
    full = _cli(*args, "--out", str(full_dir))
    r_out, r_err = resumed.communicate(timeout=300)
    f_out, f_err = full.communicate(timeout=300)
    assert resumed.returncode == 0, r_err[-3000:]
    assert full.returncode == 0, f_err[-3000:]
    r, f = json.loads(r_out), json.loads(f_out)
    assert r["final"] == f["final"] and r["steps"] == f["steps"] == 300
    assert (killed_dir / "metrics.jsonl").read_text() == (full_dir / "metrics.jsonl").read_text()
