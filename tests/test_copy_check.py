"""The copy task and its loss, line by line against the protocol of Arjovsky et al. 2016 as Tallec and
Ollivier 2018 restate it (the check asked for by the open copy disagreement in docs/reproductions.md).

Their words: input sequences of T + 20 characters; the first 10 drawn uniformly from the first 8
letters; then T - 1 dummy characters, a signal character, and 10 dummy characters. The target:
T + 10 dummy characters, then the first 10 characters of the input. The loss: cross-entropy at every
step, averaged over the T + 20 steps, whose memoryless baseline is 10 log 8 / (T + 20). memcell
writes the dummy as 0, the letters as 1..8 and the signal as 9.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memcell import tasks


def their_layout(symbols: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """The input and target of one sequence, built from the description above (dummy 0, signal 9)."""
    dummy, signal = 0, 9
    x = np.concatenate([symbols, np.full(T - 1, dummy), [signal], np.full(10, dummy)])
    y = np.concatenate([np.full(T + 10, dummy), symbols])
    return x, y


@pytest.mark.parametrize("T", [1, 7, 500])
def test_sequences_are_the_papers(T):
    task = tasks.copy_memory(T, n_test=4)
    b = jax.tree.map(np.asarray, task.sample(jax.random.key(T), 256))
    assert b["xs"].shape == b["ys"].shape == (256, T + 20)
    symbols = b["xs"][:, :10]
    assert symbols.min() >= 1 and symbols.max() <= 8 and len(np.unique(symbols)) == 8  # uniform over 8 letters
    for x, y, s in zip(b["xs"], b["ys"], symbols):
        want_x, want_y = their_layout(s, T)
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(y, want_y)
    counts = np.bincount(symbols.ravel(), minlength=9)[1:]
    assert counts.min() > 0.8 * counts.mean()  # no letter favoured (2560 draws)


def test_loss_is_the_mean_over_all_steps_and_the_memoryless_baseline_is_10_log_8_over_T_plus_20():
    T = 50
    task = tasks.copy_memory(T, n_test=500)
    batch = jax.tree.map(jnp.asarray, task.sample(jax.random.key(1), 64))
    # The best memoryless predictor: the dummy with certainty for T + 10 steps, then uniform over the 8 letters.
    memoryless = np.full((T + 20, 10), -1e9, np.float32)
    memoryless[: T + 10, 0] = 0.0
    memoryless[T + 10 :, 1:9] = 0.0
    loss, metrics = task.loss(jnp.broadcast_to(memoryless, (64, T + 20, 10)), batch)
    assert float(loss) == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-6)
    assert float(metrics["xent"]) == float(loss)
    assert task.info["formula_baseline"] == pytest.approx(10 * math.log(8) / (T + 20))
    assert task.baselines["memoryless"]["xent"] == pytest.approx(10 * math.log(8) / (T + 20), rel=0.01)
    # A predictor that recalls the letters has zero loss and full recall accuracy.
    perfect = 40.0 * jax.nn.one_hot(batch["ys"], 10)
    loss, metrics = task.loss(perfect, batch)
    assert float(loss) < 1e-6 and float(metrics["recall_accuracy"]) == 1.0
