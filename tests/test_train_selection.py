"""Choosing among trained models: ``fit(..., keep_best=KeepBest(...))`` keeps each vmapped model's
best-validation params and their step, and ``choose_learning_rate`` picks a sweep's rate on validation."""

import jax.numpy as jnp
import numpy as np
import pytest

from memcell import train

STEPS = 10


def _climb(learning_rates):
    """Models whose param climbs by its learning rate a step (SGD on loss -p), so p_t = lr * t exactly."""
    tx = train.optimizer(1.0, name="sgd", clip_norm=None)
    step = train.make_train_step(lambda p, batch, key: (-p, {}), tx)
    if learning_rates is None:
        return step, train.init_state(0, lambda k: jnp.zeros(()), tx)
    states = train.init_states(list(range(len(learning_rates))), lambda k: jnp.zeros(()), tx,
                               learning_rates=learning_rates)
    return step, states


def _two_dips(p):
    """A validation metric with a dip to 0 at p = 3 and a deeper one, -1, at p = 8."""
    return {"loss": jnp.minimum((p - 3.0) ** 2, (p - 8.0) ** 2 - 1.0)}


def _fit(states, step, **kw):
    return train.fit(step, states, lambda key: jnp.zeros(()), steps=STEPS, eval_fn=_two_dips, eval_every=1,
                     progress=False, **kw)


def test_keep_best_keeps_each_models_best_params_and_step():
    step, states = _climb([0.5, 1.0])  # p = t/2 and p = t: the first dip at steps 6 and 3
    r = _fit(states, step, keep_best=train.KeepBest("loss", "min"))
    assert r.stop_reason == "steps" and r.state.params.tolist() == [5.0, 10.0]  # trained on to the end
    # without patience every evaluation counts: the second model's deeper dip at step 8 wins
    assert r.best_step == [6, 8] and r.best_params.tolist() == [3.0, 8.0] and r.best_value == [0.0, -1.0]
    # the kept params are what the evaluation at that step measured
    for i, s in enumerate(r.best_step):
        assert r.history[s - 1]["loss"][i] == r.best_value[i]


def test_a_model_out_of_patience_keeps_its_best_and_the_run_stops_when_all_are():
    step, states = _climb([0.5, 1.0])
    r = _fit(states, step, keep_best=train.KeepBest("loss", "min", patience=2))
    # the second model is done at step 5 (two evaluations past its best at 3); its deeper dip at
    # step 8 comes after, so it does not count. The first is done at step 8, and the run stops there.
    assert r.best_step == [6, 3] and r.best_params.tolist() == [3.0, 3.0]
    assert r.stop_reason == "patience" and r.history[-1]["step"] == 8
    assert r.history[7]["loss"][1] == -1.0  # it was evaluated, and better, at step 8


def test_keep_best_of_one_model_and_max_mode():
    step, state = _climb(None)  # lr 1: p = t
    r = _fit(state, step, keep_best=train.KeepBest("loss", "max"))
    # the metric at p = 1..10: 4, 1, 0, 1, 4, 0, -1, 0, 3, 3: the largest is the first
    assert r.best_step == 1 and float(r.best_params) == 1.0 and r.best_value == pytest.approx(4.0)
    assert r.best_params.shape == () and train.fit(step, state, lambda k: jnp.zeros(()), steps=2,
                                                   progress=False).best_params is None


def test_a_non_finite_evaluation_is_never_the_best():
    step, states = _climb([1.0, 1.0])
    nan_after_2 = lambda p: {"loss": jnp.where(p > 2.0, jnp.nan, -p)}  # best -2 at step 2, then NaN
    r = train.fit(step, states, lambda key: jnp.zeros(()), steps=5, eval_fn=nan_after_2, eval_every=1,
                  progress=False, keep_best=train.KeepBest())
    assert r.best_step == [2, 2] and r.best_params.tolist() == [2.0, 2.0]
    always_nan = lambda p: {"loss": jnp.nan * p}
    r = train.fit(step, states, lambda key: jnp.zeros(()), steps=2, eval_fn=always_nan, eval_every=1,
                  progress=False, keep_best=train.KeepBest())
    assert r.best_step == [None, None] and r.best_value == [None, None] and r.best_params.tolist() == [0.0, 0.0]


def test_keep_best_refuses_what_it_cannot_do(tmp_path):
    step, states = _climb([1.0])
    sample = lambda key: jnp.zeros(())
    with pytest.raises(TypeError, match="keep_best must be a memcell.train.KeepBest, got str"):
        train.fit(step, states, sample, steps=2, eval_fn=_two_dips, keep_best="loss", progress=False)
    with pytest.raises(ValueError, match="keep_best needs an eval_fn"):
        train.fit(step, states, sample, steps=2, keep_best=train.KeepBest(), progress=False)
    with pytest.raises(ValueError, match=r"keep_best.mode must be one of .*got 'lowest'"):
        train.fit(step, states, sample, steps=2, eval_fn=_two_dips, keep_best=train.KeepBest("loss", "lowest"),
                  progress=False)
    with pytest.raises(ValueError, match="keep_best.patience"):
        train.KeepBest(patience=0).check()
    with pytest.raises(ValueError, match=r"keep_best.metric 'acc' is not among the evaluation metrics \['loss'\]"):
        train.fit(step, states, sample, steps=2, eval_fn=_two_dips, eval_every=1, keep_best=train.KeepBest("acc"),
                  progress=False)
    train.fit(step, states, sample, steps=2, eval_fn=_two_dips, checkpoint_dir=tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="keep_best cannot resume the run in .*checkpoints hold the current params"):
        train.fit(step, states, sample, steps=4, eval_fn=_two_dips, checkpoint_dir=tmp_path / "c", resume=True,
                  keep_best=train.KeepBest(), progress=False)


def test_choose_learning_rate_takes_the_best_mean_over_seeds_and_sinks_diverged_seeds():
    valid = np.array([[0.5, 0.7, 0.6], [0.4, 0.9, 0.8], [0.6, 0.5, 0.4]])  # [lr, seed]: means 0.6, 0.7, 0.5
    lrs = [1e-3, 3e-3, 1e-2]
    c = train.choose_learning_rate(valid, lrs)
    assert (c.learning_rate, c.index, c.models.tolist()) == (1e-2, 2, [6, 7, 8])  # not the best seed's rate (3e-3)
    assert c.means == pytest.approx({1e-3: 0.6, 3e-3: 0.7, 1e-2: 0.5})
    assert train.choose_learning_rate(valid.reshape(-1), lrs, mode="max").index == 1  # flat, lr-major
    assert train.choose_learning_rate([np.nan, 1.0, 2.0, 2.0], [1e-3, 1e-2]).index == 1
    assert train.choose_learning_rate([0.99, np.nan, 0.5, 0.6], [1e-3, 1e-2], mode="max").index == 1
    assert train.choose_learning_rate([1.0, 1.0], [1e-3, 1e-2]).index == 0  # a tie: the rate listed first
    stacked = {"w": jnp.arange(9.0)}
    assert c.take(stacked)["w"].tolist() == [6.0, 7.0, 8.0]


def test_sweep_models_and_choice_reject_bad_arguments():
    assert train.sweep_models([0.1, 0.2, 0.3], [5]) == ([5, 5, 5], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"learning_rates must be one or more positive finite numbers, got \[\]"):
        train.sweep_models([], [0])
    with pytest.raises(ValueError, match="seeds must hold at least one seed"):
        train.sweep_models([1e-3], [])
    with pytest.raises(ValueError, match=r"values must hold one value a model, lr-major: \[2 \* seeds\] .*got shape \(3,\)"):
        train.choose_learning_rate([1.0, 2.0, 3.0], [1e-3, 1e-2])
    with pytest.raises(ValueError, match="mode must be one of"):
        train.choose_learning_rate([1.0], [1e-3], mode="best")
    with pytest.raises(TypeError, match="learning_rates must be a sequence of numbers"):
        train.choose_learning_rate([1.0], ["fast"])


def test_keep_best_with_a_sweep_chooses_on_the_kept_values():
    """The two together, as the experiments use them: train a sweep, keep the best, choose the rate."""
    lrs, seeds = [0.7, 1.0], [0, 1]
    model_seeds, model_lrs = train.sweep_models(lrs, seeds)
    tx = train.optimizer(1.0, name="sgd", clip_norm=None)
    step = train.make_train_step(lambda p, batch, key: (-p, {}), tx)
    states = train.init_states(model_seeds, lambda k: jnp.zeros(()), tx, learning_rates=model_lrs)
    r = _fit(states, step, keep_best=train.KeepBest("loss", "min", patience=2))
    assert r.best_step == [4, 4, 3, 3]  # p = 2.8 (loss 0.04) at rate 0.7; p = 3 (loss 0) at rate 1
    choice = train.choose_learning_rate(r.best_value, lrs)
    assert choice.learning_rate == 1.0 and choice.means == pytest.approx({0.7: 0.04, 1.0: 0.0}, abs=1e-6)
    assert choice.take(r.best_params).tolist() == [3.0, 3.0]
