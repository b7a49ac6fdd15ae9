"""experiments/: scripts over the library (none imports another, none runs its own optimiser
loop), the shared config parser and provenance, and the vanishing-gradients demo end to end on a
tiny config: it writes into results/ only, and its series have a colour each."""

import ast
import dataclasses
import json
import os
import pathlib
import re
import sys

import numpy as np
import pytest

EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import _common  # noqa: E402
import vanishing_gradients as vg  # noqa: E402

SCRIPTS = sorted(p for p in EXPERIMENTS.glob("*.py") if p.name != "_common.py")


def _imported_modules(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_experiment_imports_another_only_common():
    own = {p.stem for p in EXPERIMENTS.glob("*.py")}
    assert len(SCRIPTS) >= 7
    for path in SCRIPTS:
        assert _imported_modules(path) & own <= {"_common"}, path.name
    assert not _imported_modules(EXPERIMENTS / "_common.py") & own


def test_no_experiment_runs_its_own_optimiser_loop():
    """Training goes through ``memcell.train.fit`` (or ``tasks.train_task``, built on it): no script
    applies an optimiser's updates, takes a loss's value and gradient together, or scans a train step
    itself. (An optax transformation may be built and handed to the library, and a gradient taken
    to measure it, as copy_chrono_check's diagnosis does.)"""
    for path in [*SCRIPTS, EXPERIMENTS / "_common.py"]:
        source = path.read_text()
        for banned in ("value_and_grad", "apply_updates", "apply_gradients", ".update(grads", "tx.update("):
            assert banned not in source, (path.name, banned)
        tree = ast.parse(source)
        defs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "scan":
                body = defs[node.args[0].id]  # the scanned function, which must train nothing
                assert "step" not in ast.unparse(body), (path.name, ast.unparse(body))


def test_vanishing_gradients_uses_the_shared_config_parser():
    cfg = _common.parse_config(vg.Config, ["--hidden-size", "8", "--cells", "rnn_0.9,gru", "--learning_rate", "0.01",
                                           "--docs-dir", "docs"])
    assert cfg == dataclasses.replace(vg.Config(), hidden_size=8, cells="rnn_0.9,gru", learning_rate=0.01,
                                      docs_dir="docs")
    with pytest.raises(SystemExit, match="unknown option '--hidden'"):
        _common.parse_config(vg.Config, ["--hidden", "8"])
    with pytest.raises(SystemExit, match="cannot read 'x' as <class 'int'>"):
        _common.parse_config(vg.Config, ["--train-steps", "x"])


def test_provenance_names_the_command_and_the_commit():
    prov = _common.provenance([str(EXPERIMENTS / "long_dependency.py"), "--task", "copy", "--lengths", "10,20"])
    assert prov["command"] == "python experiments/long_dependency.py --task copy --lengths 10,20"
    assert prov["commit"] and " " not in prov["commit"]  # a git describe, -dirty with local changes
    assert _common.provenance_line(prov).startswith("Command: `python experiments/long_dependency.py --task copy")


def test_the_demo_writes_into_results_only_and_the_docs_refresh_is_separate(tmp_path, monkeypatch):
    """``make demo`` (the default Config) rewrote the tracked docs/vanishing_gradients.md; now it
    writes under its out_dir only, and ``copy_to_docs`` (``--docs-dir docs``, ``make demo-docs``)
    refreshes the page."""
    docs = tmp_path / "docs"
    (docs / "figures").mkdir(parents=True)
    (docs / "vanishing_gradients.md").write_text("the recorded page\n")
    monkeypatch.chdir(tmp_path)  # where a relative docs/ would be written
    cfg = dataclasses.replace(vg.Config(), hidden_size=4, eval_len=61, eval_seqs=2, train_len=10, train_steps=20,
                              batch_size=8, cells="lstm_fb1", out_dir=str(tmp_path / "out"))
    results = vg.main(cfg)
    assert (docs / "vanishing_gradients.md").read_text() == "the recorded page\n"
    assert list((docs / "figures").iterdir()) == []
    out = tmp_path / "out"
    for name in ("init", "trained", "loss_profile"):
        assert (out / "figures" / f"vanishing_gradients_{name}.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    for section in ("# Vanishing gradients through time", "## The toolkit: `memcell.jacobian`", "## The experiment",
                    "| cell | phase | rate/step |", "Ranked by how well they keep the gradient at init",
                    "Command: `python ", "; commit `"):
        assert section in report
    vg.copy_to_docs(out, docs)  # the explicit refresh
    assert (docs / "vanishing_gradients.md").read_text() == report
    assert sorted(p.name for p in (docs / "figures").iterdir()) == [
        f"vanishing_gradients_{n}.png" for n in ("init", "loss_profile", "trained")]
    # training went through memcell.train.fit: its JSONL log has one line a step
    rows = [json.loads(x) for x in (out / "logs" / "lstm_fb1.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 21))
    assert results["lstm_fb1"]["final_mse"] == pytest.approx(sum(r["loss"] for r in rows[-20:]) / 20)
    assert results["lstm_fb1"]["profiles"]["first"].shape == (10,)  # by lag, 0 .. T-1
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"] == dataclasses.asdict(cfg) and set(saved["results"]) == {"lstm_fb1"}


def test_the_demo_draws_each_of_its_12_cells_in_a_colour_of_its_own(tmp_path, monkeypatch):
    """Issue 25: 12 series shared 10 colours (the radius-0.9 RNN and the sLSTM were both orange)."""
    import matplotlib.figure

    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    cfg = vg.Config()
    names = cfg.cells.split(",")
    assert len(names) == 12
    labels = {n: vg.make_cell(n, cfg)[1] for n in names}
    lags = np.arange(50.0)
    results = {n: {"init": {"log_norms": -0.01 * (i + 1) * lags, "rate": -0.01 * (i + 1)},
                   "profiles": {"first": np.exp(-lags), "last": np.exp(-lags / 2)}} for i, n in enumerate(names)}
    vg.plot(results, "init", labels, tmp_path / "init.png", cfg)
    vg.plot_loss_profiles(results, labels, tmp_path / "profile.png", cfg)
    for fig in drawn:
        for ax in fig.axes:
            lines = ax.get_lines()
            assert len(lines) == 12
            assert len({tuple(np.round(matplotlib.colors.to_rgba(line.get_color()), 4)) for line in lines}) == 12
            dashed = {line.get_label().split(":")[0] for line in lines if line.get_linestyle() == "--"}
            assert dashed == {labels[n] for n in names if n.startswith("rnn")}  # the tanh RNNs, as the text says
    assert len(drawn) == 2


# ----------------------------------------------------------------------------- recorded tables in docs/

DOCS = EXPERIMENTS.parent / "docs"
# A recorded table sits between these markers, with its command and machine in the first and its
# commit in the text; "unknown" where the page did not say which machine recorded it.
RECORDED = re.compile(r"<!-- recorded: (?P<command>[^>|]*?) \| machine: (?P<machine>[^>]*?) -->\n(?P<body>.*?)"
                      r"<!-- end -->", re.S)
# The recorded commands cheap enough to rerun in test-slow (2-3 minutes each on 2 cores, the sweep 6-11).
CHEAP = (
    "python experiments/long_dependency.py --task copy --lengths 10,20 --seeds 2",
    "python experiments/long_dependency.py",
    "python experiments/reproduce.py --only irnn_le",
)


def recorded_tables() -> dict:
    """``{command: (page, machine, body)}`` of every recorded block of the results pages."""
    found = {}
    for page in ("tasks.md", "reproductions.md", "vanishing_gradients.md", "selectivity.md"):
        text = (DOCS / page).read_text()
        assert text.count("<!-- recorded:") == len(RECORDED.findall(text)), f"{page}: a malformed recorded marker"
        for m in RECORDED.finditer(text):
            found.setdefault(m["command"], (page, m["machine"], m["body"]))
    return found


def _table(text: str, drop=("wall s",)) -> list[list[str]]:
    """The first markdown table of ``text``, as rows of cells, without the columns named in ``drop``."""
    rows, started = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            started = True
        elif started:
            break
    keep = [i for i, name in enumerate(rows[0]) if name not in drop] if rows else []
    return [[r[i] for i in keep if i < len(r)] for r in rows]


def test_every_recorded_table_names_its_command_and_commit():
    tables = recorded_tables()
    assert len(tables) >= 10 and set(CHEAP) <= set(tables)
    for command, (page, machine, body) in tables.items():
        assert command.startswith(("python experiments/", "memcell ")), (page, command)
        assert re.search(r"commit `[0-9a-f]{7,}`", body), (page, command)
        assert _table(body), (page, command)
        assert machine == "unknown" or "; jax " in machine, (page, command, machine)


@pytest.mark.slow
@pytest.mark.parametrize("command", CHEAP)
def test_a_cheap_recorded_table_still_comes_out_of_its_command(command, tmp_path):
    """Reruns a recorded command and compares its table with the page's (wall times aside): a
    table that no longer reproduces fails here, naming its command."""
    import shlex
    import subprocess

    page, machine, body = recorded_tables()[command]
    if machine != _common.machine():  # training is chaotic: float rounding that differs between CPUs grows
        pytest.skip(f"{command!r} was recorded on {machine}; this is {_common.machine()}")
    argv = shlex.split(command)
    # As a user runs it: without the XLA flag tests/conftest.py sets for the test process (backend
    # optimisation level 0 rounds otherwise, and these chaotic runs then give other tables).
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_backend_optimization_level"))
    subprocess.run([sys.executable, *argv[1:], "--out", str(tmp_path)], cwd=EXPERIMENTS.parent, check=True,
                   capture_output=True, env=env)
    (report,) = tmp_path.rglob("report.md")
    assert _table(report.read_text()) == _table(body), f"{page}: the table of `{command}` no longer reproduces"


@pytest.mark.slow  # 76 s on the 2-core machine
def test_the_selectivity_study_runs_in_its_quick_mode(tmp_path):
    """experiments/selectivity.py end to end at its quick budget (one task, two cells, the Mamba
    ablation, the gate probes): its report, results and figures are written (the script imported a
    helper the experiments' rewrite had removed, and nothing ran it)."""
    import selectivity

    results = selectivity.main(["--quick", "true", "--tasks", "selective_copy", "--cells", "lstm,mamba",
                                "--sweep-cells", "", "--out", str(tmp_path)])
    assert {"curves.png", "gates.png", "report.md", "results.json"} <= {p.name for p in tmp_path.iterdir()}
    runs = json.loads((tmp_path / "results.json").read_text())["results"]["selective_copy"]["runs"]
    assert {"lstm", "mamba", "mamba_fixed_dt"} <= set(runs)
    assert all(r["provenance"]["command"].startswith("python experiments/selectivity.py --quick true") for r in runs.values())
    assert re.search(r"Command: `python experiments/selectivity.py .*`; commit `[0-9a-f]{7,}",
                     (tmp_path / "report.md").read_text())
    assert all(0.0 <= v <= 1.0 for r in runs.values() for v in r["test"]["accuracy"])
    assert results is not None


def test_the_selectivity_conv_wrapper_feeds_the_cell_its_convolved_input():
    """``mlstm_conv`` (the mLSTM behind Mamba's short convolution) is the mLSTM run on ``silu(conv(x))``,
    written out here tap by tap, with the last three inputs as the window and the mLSTM's memory alone
    counted as state."""
    import jax
    import jax.numpy as jnp
    import selectivity

    import memcell

    cell = memcell.mlstm(8, num_heads=2)
    wrapped = selectivity.with_short_conv(cell, 3)
    params = wrapped.init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (2, 6, 3))
    carry, ys = memcell.unroll(wrapped, params, xs)
    padded = jnp.concatenate([jnp.zeros((2, 3, 3)), xs], axis=1)
    us = sum(params.conv_w[j] * padded[:, j : j + 6] for j in range(4))  # taps oldest first
    inner, want = memcell.unroll(cell, params.inner, jax.nn.silu(us))
    np.testing.assert_allclose(ys, want, atol=1e-6)
    np.testing.assert_allclose(carry.conv, xs[:, -3:], atol=0)
    np.testing.assert_allclose(carry.inner.C, inner.C, atol=1e-6)
    with pytest.raises(ValueError, match="input_size: expected 3"):
        wrapped.init(jax.random.key(0), 4)

    class Task:  # what state_size reads of a task
        input_size, output_size, readout = 32, 32, "all"

    model = selectivity.build("mlstm_conv", 48, Task)
    assert selectivity.state_size(model, Task) == {"all": 628 + 3 * 32, "memory": 628}
