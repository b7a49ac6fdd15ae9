"""The fair real-data protocol (experiments/fair_data.py): validation splits cut from the
training data, the learning-rate sweep's choice on validation, and the test split read once."""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from memcell import tasks
from memcell.tasks.digits import load_digits

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "experiments"))
import fair_data


def _rows(x):
    return {r.tobytes() for r in np.asarray(x).reshape(len(x), -1)}


def test_digits_validation_comes_from_training_and_never_from_test():
    x_tr, _, x_te, _ = load_digits()
    valid = tasks.digits(valid_fraction=0.2, split="valid")
    test = tasks.digits(valid_fraction=0.2)
    assert valid.info["n_test"] == round(0.2 * len(x_tr)) and valid.info["n_train"] + valid.info["n_test"] == len(x_tr)
    v = _rows(valid.test["xs"][..., 0])
    assert v <= _rows(x_tr)
    np.testing.assert_array_equal(test.test["xs"][..., 0], x_te)  # the test split is untouched
    # what the sampler draws (the fitting part) holds no validation image
    drawn = _rows(jax.device_get(valid.sample(jax.random.key(0), 4000)["xs"])[..., 0])
    rows = [r.tobytes() for r in x_tr]
    duplicated = {r for r in rows if rows.count(r) > 1}  # the same image twice in the data
    assert len(drawn) > 1000 and not (drawn & v) - duplicated


def test_vowels_and_sunspots_validation_splits():
    v = tasks.japanese_vowels(valid_fraction=0.2, split="valid")
    t = tasks.japanese_vowels(valid_fraction=0.2)
    assert (v.info["n_test"], v.info["n_train"], t.info["n_test"]) == (54, 216, 370)
    s_v = tasks.sunspots(valid_fraction=0.2, split="valid")
    s_t = tasks.sunspots(valid_fraction=0.2)
    fit_end = int(s_v.info["train_years"].split("-")[1])
    lo, hi = map(int, s_v.info["test_target_years"].split("-"))
    assert fit_end + 1 == lo and hi < int(s_t.info["test_target_years"].split("-")[0])
    with pytest.raises(ValueError, match="split='valid' needs a validation split"):
        tasks.sunspots(split="valid")
    with pytest.raises(ValueError, match="valid_fraction must lie in"):
        tasks.digits(valid_fraction=1.5)


@pytest.mark.slow  # ~12 s of CPU (compiling the vmapped sweep); tests/test_train_selection.py checks the pieces fast
def test_sweep_keeps_best_validation_params_and_chooses_the_best_lr():
    task = tasks.make("adding", length=6)
    task = task._replace(test=jax.tree.map(lambda x: x[:64], task.test))
    model = fair_data.build_model("rnn", 4, task, 1, "reference")
    sw = fair_data.sweep(task, model, lrs=(1e-5, 3e-2), seeds=[0, 1], steps=40, batch_size=16, eval_every=10,
                         patience=100, clip_norm=1.0)
    k = sw["choice"].index
    assert k == int(np.argmin(sw["best_loss"].mean(1)))
    assert k == 1 and sw["choice"].learning_rate == 3e-2  # a rate of 1e-5 barely moves in 40 steps
    # the kept params are each model's best-validation ones, not its last
    losses = np.asarray(jax.vmap(tasks.eval_fn(task, model))(sw["best_params"])["loss"]).reshape(2, 2)
    np.testing.assert_allclose(losses, sw["best_loss"], rtol=1e-5)
    seen = np.asarray([h["loss"] for h in sw["history"]]).reshape(-1, 2, 2)
    np.testing.assert_allclose(sw["best_loss"], seen.min(0), rtol=1e-6)


@pytest.mark.slow
def test_quick_run_tunes_on_validation_and_reads_the_test_split_once(tmp_path, monkeypatch):
    calls = []
    real = fair_data.evaluate_test
    monkeypatch.setattr(fair_data, "evaluate_test", lambda *a: calls.append(a[0].info["split"]) or real(*a))
    fair_data.main(fair_data.Config(quick=True, out=str(tmp_path)))
    assert calls == ["test", "test"]  # once per cell, on the test split
    result = json.loads((tmp_path / "fair_data" / "tasks" / "vowels.json").read_text())
    lstm = result["runs"]["lstm 64"]
    by_lr = {float(lr): s["mean"] for lr, s in lstm["valid_loss_by_lr"].items()}
    assert lstm["chosen_lr"] == min(by_lr, key=by_lr.get)
    assert lstm["test"]["accuracy"]["mean"] > 0.8 > result["test_baselines"]["majority"]["accuracy"]
    assert (tmp_path / "fair_data" / "report.md").exists() and (tmp_path / "fair_data" / "gradient_flow.png").exists()


@pytest.mark.slow  # ~30 s: three evaluations of the whole held-out text
def test_char_lm_keeps_each_models_best_selection_params_and_reports_the_rest(tmp_path):
    import char_lm

    # lr 2 overshoots, so the models' best evaluations are not all their last (asserted below): keeping the
    # last params instead of the best would fail
    cfg = char_lm.Config(hidden=8, layers=2, steps=8, eval_every=2, warmup=1, lrs=(2.0,), seeds=2,
                         out=str(tmp_path))
    r = char_lm.main(cfg)
    sel = np.array([h["select_bpc"] for h in r["history"]])  # [evaluations, models], lr-major
    means = sel.min(0).reshape(len(cfg.lrs), 2).mean(1)
    k = int(np.argmin(means))
    assert r["chosen_lr"] == cfg.lrs[k]
    assert any(int(np.argmin(sel[:, k * 2 + j])) < len(sel) - 1 for j in range(2)), sel
    for j in range(2):
        i = int(np.argmin(sel[:, k * 2 + j]))
        assert r["best_step"][j] == r["history"][i]["step"]
        assert r["select_bpc"][j] == pytest.approx(sel[i, k * 2 + j], rel=1e-6)
        # the report part read at the kept params is what that evaluation measured there
        assert r["report_bpc"][j] == pytest.approx(r["history"][i]["report_bpc"][k * 2 + j], rel=1e-5)
        assert r["valid_bpc"][j] == pytest.approx(r["history"][i]["valid_bpc"][k * 2 + j], rel=1e-5)
    saved = json.loads((tmp_path / "char_lm" / "results.json").read_text())
    assert saved["select_by_lr"][str(cfg.lrs[k])] == pytest.approx(r["select_bpc"])
    assert (tmp_path / "char_lm" / "curves.png").stat().st_size > 0
