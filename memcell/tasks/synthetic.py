"""The classic long-term-dependency problems: adding, copy memory, temporal order; selective copying and
multi-query associative recall (mqar).

Every generator is a pure JAX function of a key, so batches are drawn inside the jit-compiled
train step; the test set is drawn once from a fixed key that training never uses, and each
baseline is computed from a separate sample of training data, then scored on the test set.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from memcell.tasks._base import Task, classification_loss, cross_entropy

__all__ = ["adding", "copy_memory", "mqar", "selective_copy", "temporal_order"]

# Test sets and baseline-fitting samples come from this fixed key, folded with the task's
# seed; training draws its keys from the run's key, so the streams never coincide by design.
_TEST = 0x7E57


def _test_and_fit(draw, base, n_test: int, n_fit: int = 10_000):
    """The test set and a separate training sample to fit the baseline on, in one jit call.

    The two come from one batch drawn with the fixed test key and are disjoint rows of it;
    training batches come from keys derived from the run's key.
    """
    both = jax.device_get(draw(jax.random.fold_in(base, _TEST), n_test + n_fit))
    return jax.tree.map(lambda x: x[:n_test], both), jax.tree.map(lambda x: x[n_test:], both)


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- adding


def _adding_sample(T: int):
    half = T // 2

    def sample(key, batch_size: int) -> dict:
        kv, k1, k2 = jax.random.split(key, 3)
        values = jax.random.uniform(kv, (batch_size, T))
        # One marker in the first half, one in the second (Arjovsky et al. 2016).
        p1 = jax.random.randint(k1, (batch_size,), 0, half)
        p2 = jax.random.randint(k2, (batch_size,), half, T)
        t = jnp.arange(T)
        markers = ((t == p1[:, None]) | (t == p2[:, None])).astype(jnp.float32)
        xs = jnp.stack([values, markers], axis=-1)
        ys = (values * markers).sum(-1, keepdims=True)
        return {"xs": xs, "ys": ys}

    return sample


def _mse_loss(outputs, batch):
    mse = jnp.mean(jnp.square(outputs.astype(jnp.float32) - batch["ys"]))
    return mse, {"mse": mse}


def adding(length: int = 100, *, n_test: int = 1000, seed: int = 0) -> Task:
    """The adding problem (Hochreiter and Schmidhuber 1997; the protocol of Le et al. 2015 and
    Arjovsky et al. 2016).

    Each step holds a value ``U(0, 1)`` and a marker; exactly two steps are marked, one in the
    first half of the sequence and one in the second. The target is the sum of the two marked
    values, read after the last step. Metric: MSE. Baseline: always predicting the mean target
    (its MSE is the target variance, 1/6 ~ 0.167), fitted on training data. Solved: test MSE
    below 0.01.

    Args:
      length: ``T``, the sequence length (>= 2).
      n_test: test sequences.
      seed: selects the test set.

    Returns:
      A ``Task`` with ``xs: [b, T, 2]`` (value, marker), ``ys: [b, 1]``.

    Example:
      >>> import jax
      >>> from memcell.tasks import adding
      >>> task = adding(50)
      >>> batch = task.sample(jax.random.key(0), 8)
      >>> batch["xs"].shape, batch["ys"].shape, round(task.baselines["mean"]["mse"], 2)
      ((8, 50, 2), (8, 1), 0.17)
    """
    T = _check_int("length", length, 2)
    n_test = _check_int("n_test", n_test, 1)
    sample = _adding_sample(T)
    draw = jax.jit(sample, static_argnums=1)  # eager generation dispatches op by op: slow
    base = jax.random.fold_in(jax.random.key(seed), T)
    test, fit = _test_and_fit(draw, base, n_test)
    mean = float(np.mean(fit["ys"]))
    baseline = float(np.mean((test["ys"] - mean) ** 2))
    return Task(
        name="adding", input_size=2, output_size=1, readout="last", sample=sample, test=test,
        loss=_mse_loss, metric="mse", mode="min",
        baselines={"mean": {"mse": baseline, "loss": baseline}},
        solved=0.01,
        info={"length": T, "n_test": n_test, "predict_mean": mean,
              "protocol": "two marked U(0,1) values, one in each half; target their sum; solved: MSE < 0.01"},
    )


# ----------------------------------------------------------------------------- copy memory

_COPY_SYMBOLS, _COPY_LEN = 8, 10
_BLANK, _DELIM = 0, _COPY_SYMBOLS + 1


def _copy_sample(T: int):
    n = T + 2 * _COPY_LEN

    def sample(key, batch_size: int) -> dict:
        seq = jax.random.randint(key, (batch_size, _COPY_LEN), 1, _COPY_SYMBOLS + 1)
        blanks = jnp.zeros((batch_size, T - 1), jnp.int32)
        delim = jnp.full((batch_size, 1), _DELIM, jnp.int32)
        tail = jnp.zeros((batch_size, _COPY_LEN), jnp.int32)
        xs = jnp.concatenate([seq, blanks, delim, tail], axis=1)
        ys = jnp.concatenate([jnp.zeros((batch_size, T + _COPY_LEN), jnp.int32), seq], axis=1)
        assert xs.shape[1] == n and ys.shape[1] == n
        return {"xs": xs, "ys": ys}

    return sample


def _copy_loss(outputs, batch):
    xent, acc = cross_entropy(outputs, batch["ys"])
    # Accuracy on the 10 recalled symbols only: the blanks are trivial.
    _, recall = cross_entropy(outputs[:, -_COPY_LEN:], batch["ys"][:, -_COPY_LEN:])
    return xent, {"xent": xent, "accuracy": acc, "recall_accuracy": recall}


def copy_memory(length: int = 100, *, n_test: int = 1000, seed: int = 0) -> Task:
    """The copy memory problem (Arjovsky et al. 2016).

    Input, ``T + 20`` tokens: 10 symbols drawn from ``{1..8}``, ``T - 1`` blanks (0), a delimiter
    (9), then 10 blanks. Target: blanks for the first ``T + 10`` steps, then the 10 symbols.
    Metric: cross-entropy (nats) over all steps. Baseline: the best memoryless predictor, the
    per-position distribution of targets estimated on training data; its loss is about
    ``10 log 8 / (T + 20)``. Solved (our threshold): cross-entropy below 1% of that baseline.

    Args:
      length: ``T``, the lag (>= 1).
      n_test: test sequences.
      seed: selects the test set.

    Returns:
      A ``Task`` with token inputs ``xs: [b, T + 20]`` (10 classes) and ``ys: [b, T + 20]``.
    """
    T = _check_int("length", length, 1)
    n_test = _check_int("n_test", n_test, 1)
    sample = _copy_sample(T)
    draw = jax.jit(sample, static_argnums=1)  # eager generation dispatches op by op: slow
    base = jax.random.fold_in(jax.random.key(seed + 1), T)
    test, fit = _test_and_fit(draw, base, n_test)
    n_cls = _COPY_SYMBOLS + 2
    counts = np.stack([np.bincount(col, minlength=n_cls) for col in fit["ys"].T]).astype(np.float64)
    probs = (counts + 1e-3) / (counts + 1e-3).sum(-1, keepdims=True)  # [T+20, classes]
    nll = -np.log(probs[np.arange(test["ys"].shape[1]), test["ys"]])
    baseline = float(nll.mean())
    return Task(
        name="copy", input_size=n_cls, output_size=n_cls, readout="all", sample=sample, test=test,
        loss=_copy_loss, metric="xent", mode="min",
        baselines={"memoryless": {"xent": baseline, "loss": baseline}},
        solved=0.01 * baseline,
        info={"length": T, "n_test": n_test, "formula_baseline": _COPY_LEN * math.log(_COPY_SYMBOLS) / (T + 2 * _COPY_LEN),
              "protocol": "10 symbols of 8, lag T, recall after a delimiter; solved: xent < 1% of the memoryless baseline"},
    )


# ----------------------------------------------------------------------------- selective copying

def _selective_sample(T: int, symbols: int, count: int):
    n = T + count
    mark = symbols + 1  # the "recall now" token; 0 is noise

    def sample(key, batch_size: int) -> dict:
        kp, kd = jax.random.split(key)
        # `count` distinct positions in the first T steps, in order: a random permutation's first ones, sorted.
        pos = jnp.sort(jnp.argsort(jax.random.uniform(kp, (batch_size, T)), axis=1)[:, :count], axis=1)
        data = jax.random.randint(kd, (batch_size, count), 1, symbols + 1)
        rows = jnp.arange(batch_size)[:, None]
        context = jnp.zeros((batch_size, T), jnp.int32).at[rows, pos].set(data)
        marks = jnp.full((batch_size, count), mark, jnp.int32)
        xs = jnp.concatenate([context, marks], axis=1)
        ys = jnp.concatenate([jnp.zeros((batch_size, T), jnp.int32), data], axis=1)
        assert xs.shape[1] == n and ys.shape[1] == n
        return {"xs": xs, "ys": ys}

    return sample


def _selective_loss(count: int):
    def loss(outputs, batch):
        # Only the recall steps are scored: the context steps have nothing to predict.
        xent, acc = cross_entropy(outputs[:, -count:], batch["ys"][:, -count:])
        return xent, {"xent": xent, "accuracy": acc}

    return loss


def selective_copy(length: int = 256, *, num_tokens: int = 16, vocab_size: int = 16, n_test: int = 1000,
                   seed: int = 0) -> Task:
    """Selective copying (Gu and Dao 2023, the Mamba paper's task; used by Feng et al. 2024).

    Input, ``T + n`` tokens (``n = num_tokens``): a context of ``T`` steps of noise (token 0) with
    ``n`` data tokens (drawn from ``{1..V}``, ``V = vocab_size``) at ``n`` random distinct
    positions, then ``n`` recall markers (``V + 1``). Target, at the ``n`` marker steps: the data
    tokens in the order they appeared. Unlike copy memory, the data's positions vary, so the model
    must select what to store by content (an input-dependent gate), not count steps. Metric: recall
    accuracy over the marker steps (loss: their mean cross-entropy). Baseline: the best memoryless
    predictor, each recall step's most frequent target on training data (about ``1/V``). Solved:
    accuracy >= 0.99. The paper's setting is ``n = V = 16`` (the defaults) with ``T = 4096``.

    Args:
      length: ``T``, the context length (>= ``num_tokens``).
      num_tokens: ``n``, the data tokens to remember and recall (>= 1).
      vocab_size: ``V``, the data symbols (>= 2).
      n_test: test sequences.
      seed: selects the test set.

    Returns:
      A ``Task`` with token inputs ``xs: [b, T + n]`` (``V + 2`` classes) and ``ys: [b, T + n]``
      (``V`` output classes + noise: ``V + 1`` outputs).

    Example:
      >>> import jax
      >>> from memcell.tasks import selective_copy
      >>> task = selective_copy(32)
      >>> batch = task.sample(jax.random.key(0), 4)
      >>> batch["xs"].shape, int((batch["xs"][:, :32] > 0).sum(1)[0])
      ((4, 48), 16)
    """
    n = _check_int("num_tokens", num_tokens, 1)
    V = _check_int("vocab_size", vocab_size, 2)
    T = _check_int("length", length, n)
    n_test = _check_int("n_test", n_test, 1)
    sample = _selective_sample(T, V, n)
    draw = jax.jit(sample, static_argnums=1)  # eager generation dispatches op by op: slow
    base = jax.random.key(seed + 3)
    if (n, V) != (16, 16):  # another task: other test draws (the paper's setting keeps its recorded ones)
        base = jax.random.fold_in(base, 1000 * n + V)
    test, fit = _test_and_fit(draw, jax.random.fold_in(base, T), n_test)
    n_out = V + 1
    recall_fit, recall_test = fit["ys"][:, -n:], test["ys"][:, -n:]
    counts = np.stack([np.bincount(col, minlength=n_out) for col in recall_fit.T]).astype(np.float64)
    majority = counts.argmax(-1)  # [n]
    acc = float(np.mean(recall_test == majority[None]))
    probs = (counts + 1e-3) / (counts + 1e-3).sum(-1, keepdims=True)
    xent = float(-np.log(probs[np.arange(n), recall_test]).mean())
    return Task(
        name="selective_copy", input_size=V + 2, output_size=n_out, readout="all", sample=sample, test=test,
        loss=_selective_loss(n), metric="accuracy", mode="max",
        baselines={"memoryless": {"accuracy": acc, "xent": xent, "loss": xent}},
        solved=0.99,
        info={"length": T, "n_test": n_test, "symbols": V, "to_recall": n,
              "protocol": f"{n} of {V} symbols at random positions among T noise steps, recalled in order after "
                          f"{n} markers; metric: recall accuracy; solved: >= 0.99"},
    )


# ----------------------------------------------------------------------------- multi-query associative recall


def _mqar_sample(T: int, vocab: int, pairs: int, power_a: float):
    half = vocab // 2
    space = (T - 2 * pairs) // 2  # the query slots: every other step after the context
    log_p = (power_a - 1.0) * jnp.log(jnp.arange(1, space + 1, dtype=jnp.float32))  # power law over gaps

    def sample(key, batch_size: int) -> dict:
        kk, kv, kg = jax.random.split(key, 3)
        # Distinct keys from 1..half-1 and distinct values from half..vocab-1: the first `pairs` of a random order.
        keys = 1 + jnp.argsort(jax.random.uniform(kk, (batch_size, half - 1)), axis=1)[:, :pairs]
        values = half + jnp.argsort(jax.random.uniform(kv, (batch_size, vocab - half)), axis=1)[:, :pairs]
        # Distinct gaps drawn with probabilities p ~ gap^(a - 1) without replacement (Gumbel top-k,
        # the same law as drawing one at a time, as the Zoology code does with numpy).
        gumbel = jax.random.gumbel(kg, (batch_size, space))
        gaps = jax.lax.top_k(log_p + gumbel, pairs)[1]  # [b, pairs]: key j is asked gaps[j] slots in
        rows = jnp.arange(batch_size)[:, None]
        context = jnp.stack([keys, values], axis=-1).reshape(batch_size, 2 * pairs)
        queries = jnp.zeros((batch_size, T - 2 * pairs), jnp.int32).at[rows, 2 * gaps].set(keys)
        answers = jnp.zeros((batch_size, T - 2 * pairs), jnp.int32).at[rows, 2 * gaps].set(values)
        xs = jnp.concatenate([context, queries], axis=1)
        ys = jnp.concatenate([jnp.zeros((batch_size, 2 * pairs), jnp.int32), answers], axis=1)
        return {"xs": xs, "ys": ys}  # ys is 0 wherever nothing is asked (values are >= half > 0)

    return sample


def _mqar_loss(outputs, batch):
    # Only the query steps are scored (ys > 0 there): the model answers with the value stored under the key.
    xent, acc = cross_entropy(outputs, batch["ys"], mask=batch["ys"] > 0)
    return xent, {"xent": xent, "accuracy": acc}


def _check_power(power_a):
    ok = isinstance(power_a, (int, float, np.integer, np.floating)) and not isinstance(power_a, bool)
    if not (ok and 0 < power_a <= 1):
        raise ValueError(f"power_a must be a number in (0, 1], got {power_a!r}")
    return float(power_a)


def mqar(length: int = 64, *, vocab_size: int = 64, num_pairs: int = 8, power_a: float = 0.01, n_test: int = 1000,
         seed: int = 0) -> Task:
    """Multi-query associative recall (Arora et al. 2023, "Zoology: Measuring and Improving Recall
    in Efficient Language Models", section 3; its ``multiquery_ar`` generator).

    Input, ``T`` tokens: ``num_pairs`` key-value pairs ``k_1 v_1 ... k_P v_P`` (distinct keys from
    ``1 .. V/2 - 1``, distinct values from ``V/2 .. V - 1``), then ``T - 2P`` steps of noise (token 0)
    in which every key appears once more, at an even offset, as a query. The query positions
    follow the paper's power law: key ``j`` is asked ``2 g_j`` steps after the context, the gaps
    ``g_j`` distinct and drawn with probability proportional to ``g^(a - 1)`` (``a = power_a``; 1:
    uniform), so most queries come soon after the context, and a few far. Target, at each query
    step: the value stored with that key (Zoology fills the noise with random tokens by default;
    here it is token 0, the variant its docstring shows). The pairs change with every sequence, so
    the model must store them as they come and look them up by content. Metric: accuracy over the
    query steps (loss: their mean cross-entropy). Baseline, "memoryless": the best predictor that
    sees only the current token, the most frequent value for each query key on training data (the
    values are drawn uniformly, so about ``2 / V``). Solved: accuracy >= 0.99.

    Args:
      length: ``T``, the sequence length: even, and at least ``4 * num_pairs``.
      vocab_size: ``V``, the vocabulary (inputs and outputs), even, with ``V/2 - 1 >= num_pairs``
        keys and ``V/2 >= num_pairs`` values.
      num_pairs: ``P``, key-value pairs (and queries) a sequence (>= 1).
      power_a: the power law's ``a``, in ``(0, 1]`` (the paper's 0.01).
      n_test: test sequences.
      seed: selects the test set.

    Returns:
      A ``Task`` with token inputs ``xs: [b, T]`` (``V`` classes) and ``ys: [b, T]`` (0 where no
      query is asked, else the value).

    Example:
      >>> import jax
      >>> from memcell.tasks import mqar
      >>> task = mqar(16, vocab_size=16, num_pairs=4)
      >>> batch = task.sample(jax.random.key(0), 2)
      >>> batch["xs"].shape, int((batch["ys"][0] > 0).sum()), task.metric
      ((2, 16), 4, 'accuracy')
    """
    P = _check_int("num_pairs", num_pairs, 1)
    V = _check_int("vocab_size", vocab_size, 2 * P + 2)
    if V % 2:
        raise ValueError(f"vocab_size must be even (keys and values take half each), got {V}")
    T = _check_int("length", length, 4 * P)
    if T % 2:
        raise ValueError(f"length must be even (queries sit at even offsets after the context), got {T}")
    a = _check_power(power_a)
    n_test = _check_int("n_test", n_test, 1)
    sample = _mqar_sample(T, V, P, a)
    draw = jax.jit(sample, static_argnums=1)  # eager generation dispatches op by op: slow
    base = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed + 4), T), V * 1000 + P)
    test, fit = _test_and_fit(draw, base, n_test)
    baseline = _mqar_memoryless(fit, test, V)
    return Task(
        name="mqar", input_size=V, output_size=V, readout="all", sample=sample, test=test,
        loss=_mqar_loss, metric="accuracy", mode="max",
        baselines={"memoryless": baseline},
        solved=0.99,
        info={"length": T, "n_test": n_test, "vocab_size": V, "num_pairs": P, "power_a": a,
              "protocol": f"{P} key-value pairs of a vocabulary of {V}, then each key queried once in {T - 2 * P} "
                          "steps of noise (power-law gaps); metric: accuracy at the query steps; solved: >= 0.99"},
    )


def _mqar_memoryless(fit: dict, test: dict, V: int) -> dict:
    """Accuracy and cross-entropy on ``test`` of the best predictor from the current token alone,
    fitted on ``fit``: each query key's most frequent value (and its smoothed frequencies)."""
    asked = fit["ys"] > 0
    counts = np.zeros((V, V))
    np.add.at(counts, (fit["xs"][asked], fit["ys"][asked]), 1.0)
    t_asked = test["ys"] > 0
    k, v = test["xs"][t_asked], test["ys"][t_asked]
    acc = float(np.mean(counts[k].argmax(-1) == v))
    probs = (counts + 1e-3) / (counts + 1e-3).sum(-1, keepdims=True)
    xent = float(-np.log(probs[k, v]).mean())
    return {"accuracy": acc, "xent": xent, "loss": xent}


# ----------------------------------------------------------------------------- temporal order

# Symbols: distractors a, b, c, d; the relevant X, Y; start B and end E.
_A, _X, _Y, _B, _E = 0, 4, 5, 6, 7
_ORDER_SYMBOLS = 8


def _order_layout(T: int) -> tuple[int, tuple[int, int], tuple[int, int]]:
    lo = int(round(T * 10 / 11))  # lengths vary in [lo, T]: 100 to 110 for T = 110
    return lo, (int(round(0.1 * lo)), int(round(0.2 * lo))), (int(round(0.5 * lo)), int(round(0.6 * lo)))


def _order_sample(T: int):
    lo, (a1, b1), (a2, b2) = _order_layout(T)

    def sample(key, batch_size: int) -> dict:
        kl, kd, k1, k2, ks = jax.random.split(key, 5)
        lengths = jax.random.randint(kl, (batch_size,), lo, T + 1)
        seq = jax.random.randint(kd, (batch_size, T), _A, _A + 4)
        t1 = jax.random.randint(k1, (batch_size,), a1, b1 + 1)
        t2 = jax.random.randint(k2, (batch_size,), a2, b2 + 1)
        which = jax.random.bernoulli(ks, 0.5, (batch_size, 2)).astype(jnp.int32)  # 0: X, 1: Y
        t = jnp.arange(T)
        seq = jnp.where(t == t1[:, None], _X + which[:, :1], seq)
        seq = jnp.where(t == t2[:, None], _X + which[:, 1:], seq)
        seq = jnp.where(t == 0, _B, seq)
        seq = jnp.where(t == lengths[:, None] - 1, _E, seq)
        seq = jnp.where(t < lengths[:, None], seq, 0)  # padding; unroll never reads it
        return {"xs": seq, "ys": 2 * which[:, 0] + which[:, 1], "lengths": lengths}

    return sample


def temporal_order(length: int = 110, *, n_test: int = 1000, seed: int = 0) -> Task:
    """The temporal order problem (Hochreiter and Schmidhuber 1997, task 6a).

    A sequence of ``L`` tokens, ``L`` uniform in ``[round(10 T / 11), T]`` (100 to 110 for the
    paper's ``T = 110``): ``B`` first, ``E`` last, distractors ``a, b, c, d`` elsewhere except
    at two steps ``t1`` in ``[0.1, 0.2]`` and ``t2`` in ``[0.5, 0.6]`` of the shortest length,
    which hold ``X`` or ``Y``. The class is the order: ``XX, XY, YX, YY``. Lengths vary and go
    through ``lengths``. Metric: accuracy. Baseline: the majority class of training data
    (chance, ~0.25). Solved (our threshold): accuracy >= 0.99.

    Args:
      length: ``T``, the longest sequence (>= 11).
      n_test: test sequences.
      seed: selects the test set.

    Returns:
      A ``Task`` with token inputs ``xs: [b, T]`` (8 symbols), ``ys: [b]`` in ``0..3`` and
      ``lengths: [b]``.
    """
    T = _check_int("length", length, 11)
    n_test = _check_int("n_test", n_test, 1)
    sample = _order_sample(T)
    draw = jax.jit(sample, static_argnums=1)  # eager generation dispatches op by op: slow
    base = jax.random.fold_in(jax.random.key(seed + 2), T)
    test, fit = _test_and_fit(draw, base, n_test)
    majority = int(np.bincount(fit["ys"], minlength=4).argmax())
    baseline = float(np.mean(test["ys"] == majority))
    lo, r1, r2 = _order_layout(T)
    return Task(
        name="temporal_order", input_size=_ORDER_SYMBOLS, output_size=4, readout="last", sample=sample, test=test,
        loss=classification_loss, metric="accuracy", mode="max",
        baselines={"majority": {"accuracy": baseline}},
        solved=0.99,
        info={"length": T, "min_length": lo, "t1_range": r1, "t2_range": r2, "n_test": n_test,
              "symbols": "a b c d X Y B E", "classes": "XX XY YX YY",
              "protocol": "classify the order of X/Y at two distant steps; solved: accuracy >= 0.99"},
    )
