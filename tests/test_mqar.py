"""The multi-query associative recall task (memcell.tasks.mqar): its sequences, loss, baseline and bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import memcell
from memcell import tasks

T, V, P = 24, 20, 4


@pytest.fixture(scope="module")
def task():
    return tasks.make("mqar", T, vocab_size=V, num_pairs=P, n_test=400)


def test_every_key_is_asked_once_after_the_context_and_answered_with_its_value(task):
    batch = jax.tree.map(np.asarray, task.sample(jax.random.key(1), 200))
    xs, ys = batch["xs"], batch["ys"]
    assert xs.shape == ys.shape == (200, T)
    for x, y in zip(xs, ys):
        keys, values = x[0 : 2 * P : 2], x[1 : 2 * P : 2]
        assert len(set(keys)) == P and len(set(values)) == P  # distinct keys, distinct values
        assert keys.min() >= 1 and keys.max() < V // 2 and values.min() >= V // 2 and values.max() < V
        asked = np.nonzero(y)[0]
        assert len(asked) == P and np.all(asked >= 2 * P) and np.all((asked - 2 * P) % 2 == 0)
        assert sorted(x[asked]) == sorted(keys)  # each key once, as a query
        stored = dict(zip(keys, values))
        assert all(stored[k] == v for k, v in zip(x[asked], y[asked]))
        noise = np.setdiff1d(np.arange(2 * P, T), asked)
        assert np.all(x[noise] == 0) and np.all(y[: 2 * P] == 0)


def test_query_gaps_follow_the_power_law():
    # a = 0.01: p(gap) ~ gap^-0.99, so the first slot is asked far more often than the last; a = 1: uniform.
    def slot_counts(a):
        t = tasks.mqar(40, vocab_size=64, num_pairs=2, power_a=a, n_test=1)
        ys = np.asarray(t.sample(jax.random.key(2), 4000)["ys"])[:, 4:]
        return np.bincount(np.nonzero(ys)[1] // 2, minlength=18)

    skewed, uniform = slot_counts(0.01), slot_counts(1.0)
    assert skewed[0] > 4 * skewed[-1]
    assert uniform.min() > 0.7 * uniform.max()


def test_loss_scores_only_the_queries(task):
    batch = jax.tree.map(jnp.asarray, task.sample(jax.random.key(3), 16))
    perfect = 30.0 * jax.nn.one_hot(batch["ys"], V)  # right at the queries; "0" elsewhere, never scored
    perfect = perfect.at[..., 1].add(jnp.where(batch["ys"] == 0, 60.0, 0.0))  # wrong wherever nothing is asked
    loss, metrics = task.loss(perfect, batch)
    assert float(metrics["accuracy"]) == 1.0 and float(loss) < 1e-6


def test_memoryless_baseline_is_computed_from_data_near_chance(task):
    base = task.baselines["memoryless"]
    assert set(base) == {"accuracy", "xent", "loss"}
    chance = 1 / (V // 2)  # values are uniform over V/2 tokens, whatever the key
    assert abs(base["accuracy"] - chance) < 0.04 and abs(base["xent"] - np.log(V // 2)) < 0.1
    assert task.solved == 0.99 and task.metric == "accuracy" and task.mode == "max" and task.readout == "all"
    assert task.info["num_pairs"] == P and task.info["vocab_size"] == V


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(length=23), "length must be even"),
        (dict(length=12), "length must be an int >= 16, got 12"),
        (dict(num_pairs=0), "num_pairs must be an int >= 1, got 0"),
        (dict(vocab_size=9), "vocab_size must be an int >= 10, got 9"),
        (dict(vocab_size=21), "vocab_size must be even"),
        (dict(power_a=0.0), r"power_a must be a number in \(0, 1\], got 0.0"),
        (dict(power_a=True), r"power_a must be a number in \(0, 1\], got True"),
        (dict(n_test=0), "n_test must be an int >= 1, got 0"),
    ],
)
def test_bad_arguments_are_named(kw, match):
    args = dict(length=T, vocab_size=V, num_pairs=P) | kw
    with pytest.raises(ValueError, match=match):
        tasks.mqar(**args)


def test_train_task_runs_on_it():
    task = tasks.mqar(16, vocab_size=12, num_pairs=2, n_test=64)
    model = tasks.sequence_model(memcell.gru(8), task.output_size, task.readout)
    report = tasks.train_task(task, model, steps=20, batch_size=8)
    assert report.steps == 20 and np.isfinite(report.final["xent"]).all()
