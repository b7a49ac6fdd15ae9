"""experiments/: the shared config parser, and the vanishing-gradients script end to end on a tiny config."""

import dataclasses
import json
import pathlib
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import _common  # noqa: E402
import vanishing_gradients as vg  # noqa: E402


def test_vanishing_gradients_uses_the_shared_config_parser():
    cfg = _common.parse_config(vg.Config, ["--hidden-size", "8", "--cells", "rnn_0.9,gru", "--learning_rate", "0.01",
                                           "--docs-dir", ""])
    assert cfg == dataclasses.replace(vg.Config(), hidden_size=8, cells="rnn_0.9,gru", learning_rate=0.01, docs_dir="")
    with pytest.raises(SystemExit, match="unknown option '--hidden'"):
        _common.parse_config(vg.Config, ["--hidden", "8"])
    with pytest.raises(SystemExit, match="cannot read 'x' as <class 'int'>"):
        _common.parse_config(vg.Config, ["--train-steps", "x"])


def test_vanishing_gradients_runs_on_the_library(tmp_path):
    cfg = vg.Config(hidden_size=4, eval_len=61, eval_seqs=2, train_len=10, train_steps=20, batch_size=8,
                    cells="lstm_fb1", out_dir=str(tmp_path / "out"), docs_dir=str(tmp_path / "docs"))
    results = vg.main(cfg)
    out = tmp_path / "out"
    for name in ("init", "trained", "loss_profile"):
        assert (out / "figures" / f"vanishing_gradients_{name}.png").stat().st_size > 0
        assert (tmp_path / "docs" / "figures" / f"vanishing_gradients_{name}.png").exists()
    report = (out / "report.md").read_text()
    assert report == (tmp_path / "docs" / "vanishing_gradients.md").read_text()
    for section in ("# Vanishing gradients through time", "## The toolkit: `memcell.jacobian`", "## The experiment",
                    "| cell | phase | rate/step |", "Ranked by how well they keep the gradient at init"):
        assert section in report
    # training went through memcell.train.fit: its JSONL log has one line a step
    rows = [json.loads(x) for x in (out / "logs" / "lstm_fb1.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 21))
    assert results["lstm_fb1"]["final_mse"] == pytest.approx(sum(r["loss"] for r in rows[-20:]) / 20)
    assert results["lstm_fb1"]["profiles"]["first"].shape == (10,)
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"] == dataclasses.asdict(cfg) and set(saved["results"]) == {"lstm_fb1"}
