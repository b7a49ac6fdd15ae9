"""selective_copy's options: fewer tokens to recall and a smaller vocabulary (the paper's 16 and 16 are the defaults)."""

import jax
import numpy as np
import pytest

from memcell import tasks


def test_fewer_tokens_and_symbols():
    task = tasks.selective_copy(20, num_tokens=5, vocab_size=6, n_test=300)
    b = jax.tree.map(np.asarray, task.sample(jax.random.key(0), 32))
    assert b["xs"].shape == (32, 25) and task.input_size == 8 and task.output_size == 7
    context, marks = b["xs"][:, :20], b["xs"][:, 20:]
    assert np.all(marks == 7) and np.all((context > 0).sum(1) == 5) and context.max() <= 6
    for x, y in zip(context, b["ys"]):
        np.testing.assert_array_equal(y[20:], x[x > 0])
    assert task.baselines["memoryless"]["accuracy"] == pytest.approx(1 / 6, abs=0.04)
    with pytest.raises(ValueError, match="length must be an int >= 5, got 4"):
        tasks.selective_copy(4, num_tokens=5)
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2, got 1"):
        tasks.selective_copy(20, vocab_size=1)
