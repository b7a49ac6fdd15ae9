"""memcell.tasks: every generator and loader (shapes, labels, baselines computed from data),
the model's readout, sampling text, and a short real training run of each task beating its
baseline. Longer science runs are marked slow."""

import collections
import dataclasses
import functools
import math
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import memcell
from memcell import tasks
from memcell.tasks import vowels as vowels_module
from memcell.tasks.sunspots import load_sunspots

KEY = jax.random.key(0)
ROOT = pathlib.Path(__file__).resolve().parents[1]


@functools.cache
def default_task(name, length=None):
    """A task with its default arguments, built once for the tests that read its baselines."""
    return tasks.make(name, length)


def _np(batch):
    return jax.tree.map(np.asarray, batch)


# ----------------------------------------------------------------------------- adding


def test_adding_generator():
    task = tasks.adding(20, n_test=500)
    b = _np(task.sample(KEY, 64))
    assert b["xs"].shape == (64, 20, 2) and b["ys"].shape == (64, 1) and b["xs"].dtype == np.float32
    markers = b["xs"][..., 1]
    assert np.all(markers.sum(1) == 2)
    first, second = markers[:, :10].sum(1), markers[:, 10:].sum(1)
    assert np.all(first == 1) and np.all(second == 1)  # one marker in each half
    np.testing.assert_allclose(b["ys"][:, 0], (b["xs"][..., 0] * markers).sum(1), rtol=1e-6)
    assert np.all((b["xs"][..., 0] >= 0) & (b["xs"][..., 0] < 1))
    # seeded and deterministic
    np.testing.assert_array_equal(_np(task.sample(KEY, 64))["xs"], b["xs"])
    assert not np.array_equal(_np(task.sample(jax.random.key(1), 64))["xs"], b["xs"])
    # the baseline: the MSE of predicting the training mean, on the test set; about Var = 1/6
    ys = task.test["ys"].astype(np.float64)
    mse, m = task.baselines["mean"]["mse"], task.info["predict_mean"]
    assert mse == pytest.approx(np.mean((ys - m) ** 2), rel=1e-6)
    # The mean is fitted on 10 000 training sequences, not on the test set: it is not the test
    # mean (that would need |m - test mean| < 1e-5 by chance, odds ~1e-3 for this fixed seed)
    assert abs(m - ys.mean()) > 1e-5
    assert mse == pytest.approx(ys.var() + (m - ys.mean()) ** 2, rel=1e-5)
    assert mse == pytest.approx(1 / 6, abs=0.02)
    assert m == pytest.approx(1.0, abs=4 * np.sqrt(1 / 6 / 10_000))  # fitted on 10 000 sequences
    assert task.solved == 0.01 and task.metric == "mse" and task.mode == "min"


# ----------------------------------------------------------------------------- copy


def test_copy_generator():
    T = 30
    task = tasks.copy_memory(T, n_test=2000)
    b = _np(task.sample(KEY, 16))
    assert b["xs"].shape == (16, T + 20) == b["ys"].shape
    assert b["xs"].dtype.kind == "i"
    seq = b["xs"][:, :10]
    assert np.all((seq >= 1) & (seq <= 8))
    assert np.all(b["xs"][:, 10 : T + 9] == 0) and np.all(b["xs"][:, T + 9] == 9) and np.all(b["xs"][:, T + 10 :] == 0)
    assert np.all(b["ys"][:, : T + 10] == 0)
    np.testing.assert_array_equal(b["ys"][:, -10:], seq)  # the target recalls the symbols
    # the memoryless baseline, fitted on training data, is about 10 log 8 / (T + 20)
    base = task.baselines["memoryless"]["xent"]
    assert base == pytest.approx(10 * math.log(8) / (T + 20), rel=0.01)
    # Gibbs: no per-position distribution scores the test targets better than their own
    # per-position frequencies; only a fit on training data is strictly above that floor
    ys = task.test["ys"]
    freq = np.stack([np.bincount(col, minlength=10) for col in ys.T]) / len(ys)
    floor = -np.mean(np.log(freq[np.arange(ys.shape[1]), ys]))
    assert base > floor * (1 + 1e-4) and base == pytest.approx(floor, rel=0.01)
    assert task.info["formula_baseline"] == pytest.approx(10 * math.log(8) / (T + 20))


# ----------------------------------------------------------------------------- selective copying


def test_selective_copy_generator():
    T = 40
    task = tasks.selective_copy(T, n_test=500)
    b = _np(task.sample(KEY, 64))
    assert b["xs"].shape == (64, T + 16) == b["ys"].shape and b["xs"].dtype.kind == "i"
    context, marks = b["xs"][:, :T], b["xs"][:, T:]
    assert np.all(marks == 17) and np.all((context >= 0) & (context <= 16))
    assert np.all((context > 0).sum(1) == 16)  # 16 data tokens at distinct positions
    for row_x, row_y in zip(context, b["ys"]):  # recalled in the order they appear
        np.testing.assert_array_equal(row_y[T:], row_x[row_x > 0])
    assert np.all(b["ys"][:, :T] == 0)
    first = np.argmax(context > 0, axis=1)
    assert len(np.unique(first)) > 5  # the positions vary from sequence to sequence
    base = task.baselines["memoryless"]
    assert base["accuracy"] == pytest.approx(1 / 16, abs=0.02)  # the most frequent symbol, per recall step
    assert base["xent"] == pytest.approx(math.log(16), rel=0.02)
    assert task.metric == "accuracy" and task.mode == "max" and task.solved == 0.99
    # the loss scores the recall steps only: a perfect prediction there has zero loss whatever else
    logits = 50.0 * jax.nn.one_hot(b["ys"], 17) * (np.arange(T + 16) >= T)[None, :, None]
    loss, metrics = task.loss(jnp.asarray(logits), b)
    assert float(loss) < 1e-6 and float(metrics["accuracy"]) == 1.0
    with pytest.raises(ValueError, match="length must be an int >= 16"):
        tasks.selective_copy(8)


# ----------------------------------------------------------------------------- temporal order


def test_temporal_order_generator():
    task = tasks.temporal_order(110, n_test=2000)
    b = _np(task.sample(KEY, 256))
    assert b["xs"].shape == (256, 110) and b["ys"].shape == (256,) and b["lengths"].shape == (256,)
    assert b["lengths"].min() >= 100 and b["lengths"].max() <= 110 and len(set(b["lengths"])) > 3
    assert task.info["t1_range"] == (10, 20) and task.info["t2_range"] == (50, 60)  # the paper's protocol
    for xs, y, n in zip(b["xs"], b["ys"], b["lengths"]):
        assert xs[0] == 6 and xs[n - 1] == 7  # B first, E last
        assert np.all(xs[n:] == 0)
        where = np.flatnonzero((xs == 4) | (xs == 5))  # X or Y
        assert len(where) == 2 and 10 <= where[0] <= 20 and 50 <= where[1] <= 60
        middle = np.delete(xs[1 : n - 1], where - 1)
        assert np.all(middle <= 3)  # distractors a-d elsewhere
        assert y == 2 * (xs[where[0]] - 4) + (xs[where[1]] - 4)
    # the majority class is chosen on training data and scored on the test set: its accuracy is
    # the test frequency of one class, and at most the largest (what a fit on the test set gives)
    freq = np.bincount(task.test["ys"], minlength=4) / len(task.test["ys"])
    acc = task.baselines["majority"]["accuracy"]
    assert np.min(np.abs(freq - acc)) < 1e-9 and acc <= freq.max()
    # In this test set the most frequent class (1, 0.263) is not the training majority (0): a
    # majority fitted on the test set would score 0.263, not this seed's 0.257 (514 / 2000)
    assert acc == pytest.approx(0.257, abs=1e-12) and acc < freq.max()
    assert acc == pytest.approx(0.25, abs=0.03)


# ----------------------------------------------------------------------------- digits


def test_digits_sequential_and_permuted():
    seq, perm = tasks.digits(), tasks.digits(permuted=True)
    assert seq.test["xs"].shape == (359, 64, 1) and seq.info["n_train"] == 1438
    assert 0.0 <= seq.test["xs"].min() and seq.test["xs"].max() <= 1.0
    np.testing.assert_array_equal(seq.test["ys"], perm.test["ys"])
    # the permuted images are the same pixels in one fixed order
    assert not np.array_equal(seq.test["xs"], perm.test["xs"])
    np.testing.assert_array_equal(np.sort(seq.test["xs"], axis=1), np.sort(perm.test["xs"], axis=1))
    p2 = tasks.digits(permuted=True)
    np.testing.assert_array_equal(perm.test["xs"], p2.test["xs"])
    b = _np(seq.sample(KEY, 8))
    assert b["xs"].shape == (8, 64, 1) and b["ys"].dtype.kind == "i"
    assert seq.baselines == perm.baselines  # both baselines ignore the pixel order


def test_digits_baselines_recomputed_from_scikit_learn():
    # The split and both baselines, computed here from scikit-learn itself: the training
    # labels' majority class, and scikit-learn's 1-nearest-neighbour classifier.
    from sklearn.datasets import load_digits
    from sklearn.neighbors import KNeighborsClassifier

    d = load_digits()
    x, y = d.data / 16.0, d.target
    order = np.random.RandomState(0).permutation(len(y))
    te, tr = order[:359], order[359:]
    task = default_task("digits")
    np.testing.assert_array_equal(task.test["ys"], y[te])
    np.testing.assert_allclose(task.test["xs"][..., 0], x[te], rtol=1e-6)
    majority = collections.Counter(y[tr].tolist()).most_common(1)[0][0]
    assert task.baselines["majority"]["accuracy"] == pytest.approx(np.mean(y[te] == majority), abs=1e-12)
    nn = KNeighborsClassifier(n_neighbors=1).fit(x[tr], y[tr]).score(x[te], y[te])
    assert task.baselines["nearest_neighbour"]["accuracy"] == pytest.approx(nn, abs=1e-12)


# ----------------------------------------------------------------------------- char LM


def test_char_lm_split_windows_and_baselines():
    task = tasks.char_lm(50)
    vocab = task.info["vocab"]
    text = tasks.text.CORPUS.read_text()
    assert len(vocab) == len(set(text)) and task.input_size == task.output_size == len(vocab)
    b = _np(task.sample(KEY, 4))
    assert b["xs"].shape == (4, 50) == b["ys"].shape
    np.testing.assert_array_equal(b["xs"][:, 1:], b["ys"][:, :-1])  # next-character targets
    decoded = "".join(vocab[i] for i in b["xs"][0])
    assert decoded in text[: task.info["n_train_chars"]]
    # validation windows are the end of the text, in order
    valid = "".join(vocab[i] for i in task.test["ys"].reshape(-1))
    assert valid == text[task.info["n_train_chars"] : task.info["n_train_chars"] + len(valid)]
    assert task.info["n_train_chars"] == int(len(text) * 0.9)
    uni, bi = task.baselines["unigram"]["bpc"], task.baselines["bigram"]["bpc"]
    assert 3.0 < bi < uni < math.log2(len(vocab))


def _ngram_bpc_by_counting(text: str, split: int, n_valid: int) -> tuple[float, float]:
    """Add-one unigram and bigram bits per character, counted with Counters on the training
    text alone and scored on the ``n_valid`` characters after it (the first one conditioned
    on the last training character)."""
    train, valid = text[:split], text[split : split + n_valid]
    V, N = len(set(text)), len(train)
    uni = collections.Counter(train)
    pairs = collections.Counter(zip(train, train[1:]))
    prev = collections.Counter(train[:-1])
    bits_uni = -sum(math.log2((uni[c] + 1) / (N + V)) for c in valid) / len(valid)
    contexts = text[split - 1 : split + n_valid - 1]
    bits_bi = -sum(math.log2((pairs[a, c] + 1) / (prev[a] + V)) for a, c in zip(contexts, valid)) / len(valid)
    return bits_uni, bits_bi


@pytest.mark.parametrize("length, max_valid_chars", [(100, None), (50, 5000)])
def test_char_lm_baselines_counted_from_the_training_text_alone(length, max_valid_chars):
    task = tasks.char_lm(length, max_valid_chars=max_valid_chars)
    text = tasks.text.CORPUS.read_text(encoding="utf-8")
    split = task.info["n_train_chars"]
    assert task.info["n_valid_chars"] == task.test["ys"].size
    uni, bi = _ngram_bpc_by_counting(text, split, task.info["n_valid_chars"])
    # tight: a bigram fitted on training and validation text together scores 3.594, not 3.672
    assert task.baselines["unigram"]["bpc"] == pytest.approx(uni, rel=1e-9)
    assert task.baselines["bigram"]["bpc"] == pytest.approx(bi, rel=1e-9)


def test_sample_text_is_seeded_and_checks_its_input():
    task = tasks.char_lm(20, max_valid_chars=1000)
    model = tasks.sequence_model(memcell.gru(8), task.output_size, "all")
    params = model.init(KEY, task.input_size)
    a = tasks.sample_text(task, model, params, jax.random.key(1), prompt="To be", length=40, temperature=1.0)
    b = tasks.sample_text(task, model, params, jax.random.key(1), prompt="To be", length=40, temperature=1.0)
    c = tasks.sample_text(task, model, params, jax.random.key(2), prompt="To be", length=40, temperature=1.0)
    assert len(a) == 40 and a == b and a != c and set(a) <= set(task.info["vocab"])
    g1 = tasks.sample_text(task, model, params, jax.random.key(1), prompt="To be", length=20, temperature=0.0)
    g2 = tasks.sample_text(task, model, params, jax.random.key(9), prompt="To be", length=20, temperature=0.0)
    assert g1 == g2  # greedy ignores the key
    # the greedy first character is the model's argmax after the prompt
    ids = jnp.asarray([task.info["vocab"].index(ch) for ch in "To be"])
    logits = model.apply(params, jax.nn.one_hot(ids, task.input_size))
    assert g1[0] == task.info["vocab"][int(jnp.argmax(logits[-1]))]
    with pytest.raises(ValueError, match="unknown"):
        tasks.sample_text(task, model, params, KEY, prompt="caf\u00e9")
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
        tasks.sample_text(task, model, params, KEY, temperature=-1.0)


# ----------------------------------------------------------------------------- sunspots


def test_sunspots_windows_and_baselines():
    task = tasks.sunspots(window=10, horizon=3)
    years, v = load_sunspots()
    assert len(v) == 309 and years[0] == 1700 and years[-1] == 2008
    mu, sd = task.info["mean"], task.info["std"]
    split = int(round(309 * 0.75))
    assert mu == pytest.approx(v[:split].mean()) and sd == pytest.approx(v[:split].std())
    x, y = task.test["xs"][..., 0] * sd + mu, task.test["ys"] * sd + mu
    # the first test window ends just before the first test year
    np.testing.assert_allclose(x[0], v[split - 10 : split], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(y[0], v[split : split + 3], rtol=1e-4, atol=1e-3)
    naive = np.sqrt(np.mean((y - x[:, -1:]) ** 2))
    assert task.baselines["naive"]["rmse"] == pytest.approx(naive, rel=1e-4)
    assert task.baselines["naive"]["rmse_1"] == pytest.approx(np.sqrt(np.mean((y[:, 0] - x[:, -1]) ** 2)), rel=1e-4)
    assert task.baselines["linear"]["rmse_1"] < task.baselines["naive"]["rmse_1"]
    b = _np(task.sample(KEY, 5))
    assert b["xs"].shape == (5, 10, 1) and b["ys"].shape == (5, 3)


@pytest.mark.parametrize("window, horizon", [(24, 5), (10, 3)])
def test_sunspots_linear_baseline_refitted_on_raw_training_years(window, horizon):
    # The linear autoregression, fitted here with scikit-learn on the raw (unstandardised)
    # values of the training years only: with an intercept the fit does not depend on the
    # standardisation, so it must match the task's to float32 rounding.
    from sklearn.linear_model import LinearRegression

    task = tasks.sunspots(window=window, horizon=horizon)
    _, v = load_sunspots()
    split = int(round(len(v) * 0.75))
    win = np.lib.stride_tricks.sliding_window_view(v, window + horizon)  # [starts, window + horizon]
    train = win[: split - window - horizon + 1]  # every training target year before the split
    test = win[split - window :]
    assert len(train) == task.info["n_train"] and len(test) == task.info["n_test"]
    assert np.all(np.arange(len(train)) + window + horizon <= split)  # no training target in the test years
    fit = LinearRegression().fit(train[:, :window], train[:, window:])
    err = fit.predict(test[:, :window]) - test[:, window:]
    assert task.baselines["linear"]["rmse_1"] == pytest.approx(np.sqrt(np.mean(err[:, 0] ** 2)), rel=1e-4)
    assert task.baselines["linear"]["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-4)
    naive = test[:, window - 1 : window] - test[:, window:]
    assert task.baselines["naive"]["rmse_1"] == pytest.approx(np.sqrt(np.mean(naive[:, 0] ** 2)), rel=1e-4)
    assert task.baselines["naive"]["rmse"] == pytest.approx(np.sqrt(np.mean(naive**2)), rel=1e-4)


# ----------------------------------------------------------------------------- vowels


def test_japanese_vowels_loader():
    task = tasks.japanese_vowels()
    assert task.info["n_train"] == 270 and task.info["n_test"] == 370
    assert task.test["xs"].shape == (370, 29, 12) and task.input_size == 12 and task.output_size == 9
    lengths = task.test["lengths"]
    assert lengths.min() >= 7 and lengths.max() <= 29 and task.info["min_length"] == 7
    for xs, n in zip(task.test["xs"], lengths):
        assert np.all(xs[n:] == 0) and np.any(xs[n - 1] != 0)
    assert set(task.test["ys"]) == set(range(9))
    series, labels, classes = tasks.read_ts(vowels_module.DATA / "JapaneseVowels_TRAIN.ts")
    assert len(series) == 270 and classes == [str(i) for i in range(1, 10)]
    assert np.all(np.bincount(labels) == 30)  # 30 utterances a speaker in the training set


def test_japanese_vowels_baselines_recomputed():
    # Standardised with training frames, each utterance resampled to 29 frames by linear
    # interpolation, then scikit-learn's 1-nearest-neighbour; and the training majority class.
    from sklearn.neighbors import KNeighborsClassifier

    tr, y_tr, _ = tasks.read_ts(vowels_module.DATA / "JapaneseVowels_TRAIN.ts")
    te, y_te, _ = tasks.read_ts(vowels_module.DATA / "JapaneseVowels_TEST.ts")
    frames = np.concatenate(tr).astype(np.float64)
    mu, sd = frames.mean(0), frames.std(0)

    def resampled(s):
        s = (s - mu) / sd
        t = np.linspace(0, len(s) - 1, 29)
        lo = np.minimum(np.floor(t).astype(int), len(s) - 2)
        w = (t - lo)[:, None]
        return ((1 - w) * s[lo] + w * s[lo + 1]).reshape(-1)

    nn = KNeighborsClassifier(n_neighbors=1).fit([resampled(s) for s in tr], y_tr)
    task = default_task("vowels")
    assert task.baselines["nearest_neighbour"]["accuracy"] == pytest.approx(nn.score([resampled(s) for s in te], y_te), abs=1e-12)
    # every speaker has 30 training utterances: the majority is the first class
    assert task.baselines["majority"]["accuracy"] == pytest.approx(np.mean(y_te == 0), abs=1e-12)


# ----------------------------------------------------------------------------- docs/tasks.md


def _documented(task_name):
    """The strings docs/tasks.md must hold for a task, built from the task's computed values."""
    if task_name in ("digits", "vowels"):
        t = default_task(task_name)
        maj, nn = t.baselines["majority"]["accuracy"], t.baselines["nearest_neighbour"]["accuracy"]
        n = f"{t.info['n_train']} train / {t.info['n_test']} test"
        return [f"`majority` ({maj:.3f})", f"({nn:.3f}) |", n, f"majority {maj:.3f}, 1-NN {nn:.3f}"]
    if task_name == "char_lm":
        t = default_task("char_lm")
        uni, bi = t.baselines["unigram"]["bpc"], t.baselines["bigram"]["bpc"]
        size = tasks.text.CORPUS.stat().st_size
        return [f"`unigram` ({uni:.2f} bpc), `bigram` ({bi:.2f} bpc)", f"unigram {uni:.2f}, bigram {bi:.2f}",
                f"({size / 1000:.0f} KB, {len(t.info['vocab'])} characters)"]
    if task_name == "sunspots":
        t = default_task("sunspots")
        nv, ln = t.baselines["naive"], t.baselines["linear"]
        return [f"rmse_1 {nv['rmse_1']:.1f}, rmse {nv['rmse']:.1f}", f"(rmse_1 {ln['rmse_1']:.1f}, rmse {ln['rmse']:.1f})",
                f"naive {nv['rmse_1']:.1f}, linear {ln['rmse_1']:.1f}", f"naive {nv['rmse']:.1f}, linear {ln['rmse']:.1f}",
                f"targets from {t.info['test_target_years'][:4]} on are test", f"{t.info['window']} years, forecast {t.info['horizon']}"]
    if task_name == "adding":
        row = " | ".join(f"mean {default_task('adding', T).baselines['mean']['mse']:.4g}" for T in (25, 50, 100, 200))
        return [f"| baseline | {row} |"]
    if task_name == "copy":
        row = " | ".join(f"memoryless {default_task('copy', T).baselines['memoryless']['xent']:.4g}" for T in (10, 20))
        return [f"| baseline | {row} |"]
    raise AssertionError(task_name)


@pytest.mark.parametrize("task_name", ["digits", "vowels", "char_lm", "sunspots", "adding", "copy"])
def test_docs_tasks_md_states_the_computed_baselines_and_sizes(task_name):
    # Baselines and data sizes are facts of the code: docs/tasks.md states them as computed here.
    text = " ".join((ROOT / "docs" / "tasks.md").read_text().split())
    for expected in _documented(task_name):
        assert expected in text, f"docs/tasks.md should state {expected!r}"


def test_default_baselines_are_pinned():
    # The exact values of the default tasks' baselines (the protocol and the data fix them), so
    # a change of split, smoothing or fit shows up here even where it keeps every band above.
    expected = {
        "digits": {"majority": {"accuracy": 29 / 359}, "nearest_neighbour": {"accuracy": 355 / 359}},
        "vowels": {"majority": {"accuracy": 31 / 370}, "nearest_neighbour": {"accuracy": 355 / 370}},
        "char_lm": {"unigram": {"bpc": 4.868421042430306}, "bigram": {"bpc": 3.671711047605476}},
        "sunspots": {"naive": {"rmse_1": 32.723628829257294, "rmse": 74.71906497628358},
                     "linear": {"rmse_1": 20.01473440461007, "rmse": 34.12416115753767}},
    }
    for name, baselines in expected.items():
        chex.assert_trees_all_close(default_task(name).baselines, baselines, rtol=1e-6)
    assert default_task("temporal_order", 110).baselines["majority"]["accuracy"] == pytest.approx(0.268, abs=1e-12)


@pytest.mark.parametrize(
    "text, message",
    [
        ("@data\n1,2:1\n", "data before any '@classLabel"),
        ("@classLabel true 1 2\n@data\n1,2:3,4:7\n", "label '7' is not among"),
        ("@classLabel true 1 2\n@data\n1,x:3,4:1\n", "is not a number"),
        ("@classLabel true 1 2\n@data\n1,2:3:1\n", "dimensions have different lengths"),
        ("@classLabel true 1 2\n", "no '@data' section"),
    ],
)
def test_read_ts_names_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.ts"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        tasks.read_ts(path)
    assert "bad.ts" in str(err.value)


# ----------------------------------------------------------------------------- registry and model


def test_make_checks_its_arguments():
    with pytest.raises(ValueError, match="task must be one of .* got 'mnist'"):
        tasks.make("mnist")
    with pytest.raises(ValueError, match="length fixed by its data"):
        tasks.make("vowels", 10)
    with pytest.raises(ValueError, match="length must be an int >= 2, got 1"):
        tasks.adding(1)
    with pytest.raises(ValueError, match="length must be an int >= 11"):
        tasks.temporal_order(5)
    with pytest.raises(ValueError, match="window must be an int >= 2"):
        tasks.sunspots(window=1)
    with pytest.raises(ValueError, match="cell must be one of"):
        tasks.make_cell("transformer", 8)
    with pytest.raises(ValueError, match="readout must be 'last' or 'all'"):
        tasks.sequence_model(memcell.gru(4), 2, "first")
    with pytest.raises(ValueError, match="output_size must be a positive int"):
        tasks.sequence_model(memcell.gru(4), 0)
    with pytest.raises(ValueError, match="the model's readout must be 'all'"):
        tasks.train_task(tasks.copy_memory(3, n_test=8), tasks.sequence_model(memcell.gru(4), 10, "last"), steps=1)


def test_last_readout_reads_each_sequence_at_its_length():
    cell = memcell.lstm(5)
    model = tasks.sequence_model(cell, 3, "last")
    params = model.init(KEY, 2)
    xs = jax.random.normal(KEY, (3, 7, 2))
    lengths = jnp.array([7, 4, 1])
    out = model.apply(params, xs, lengths=lengths)
    _, ys = memcell.unroll(cell, params.rnn, xs, lengths=lengths)
    for i, n in enumerate([7, 4, 1]):
        np.testing.assert_allclose(out[i], ys[i, n - 1] @ params.w + params.b, rtol=1e-5, atol=1e-6)
    # and padding after the length changes nothing
    out2 = model.apply(params, xs.at[1, 4:].set(1e3), lengths=lengths)
    np.testing.assert_allclose(out2, out, rtol=1e-6)


def test_gradient_flow_metrics_match_the_jacobian_module():
    from memcell.jacobian import loss_gradient_norms

    task = tasks.adding(12, n_test=40)
    model = tasks.sequence_model(memcell.rnn(8), 1, "last")
    params = model.init(KEY, 2)
    m = jax.jit(tasks.eval_fn(task, model, gradient_flow=True))(params)
    xs = jnp.asarray(task.test["xs"][:32])
    batch = {"xs": xs, "ys": jnp.asarray(task.test["ys"][:32])}
    g = loss_gradient_norms(model.cell, params.rnn, xs, lambda ys: task.loss(model.head(params, ys), batch)[0]).mean(0)
    assert float(m["grad_h_first"]) == pytest.approx(float(g[0]), rel=1e-4)
    assert float(m["grad_flow_log10"]) == pytest.approx(float(np.log10(g[0] / g.max())), abs=1e-4)
    assert float(m["grad_flow_log10"]) < 0  # the gradient is largest near the readout
    with pytest.raises(ValueError, match="single Cell"):
        tasks.gradient_flow_fn(task, tasks.sequence_model([memcell.rnn(4), memcell.rnn(4)], 1))


def test_irnn_is_relu_with_identity_recurrence():
    params = tasks.make_cell("irnn", 4).init(KEY, 2)
    np.testing.assert_array_equal(params.w_h, np.eye(4))


def test_unroll_accepts_concrete_lengths_closed_over_in_jit():
    # Regression test (core bug fixed in scan.py): lengths checked with np.min on a jax.Array
    # that jit had closed over crashed with a ConcretizationTypeError.
    cell = memcell.gru(3)
    params = cell.init(KEY, 2)
    lengths = jnp.array([2, 4])
    f = jax.jit(lambda p: memcell.unroll(cell, p, jnp.ones((2, 4, 2)), lengths=lengths)[1])
    np.testing.assert_allclose(f(params), memcell.unroll(cell, params, jnp.ones((2, 4, 2)), lengths=lengths)[1], rtol=1e-6)


# ----------------------------------------------------------------------------- short runs beat the baseline

# (task, length, options, cell, hidden, steps, learning rate, baseline to beat)
SHORT_RUNS = [
    ("adding", 10, dict(n_test=200), "lstm", 16, 150, 1e-2, "mean"),
    ("copy", 3, dict(n_test=200), "lstm", 32, 600, 2e-2, "memoryless"),  # 300 updates: 0.8171, short of 0.9 x 0.9042
    ("temporal_order", 15, dict(n_test=200), "lstm", 16, 200, 2e-2, "majority"),
    ("digits", None, {}, "gru", 16, 100, 1e-2, "majority"),
    ("permuted_digits", None, {}, "gru", 16, 100, 1e-2, "majority"),
    ("char_lm", 20, dict(max_valid_chars=20000), "gru", 32, 100, 1e-2, "unigram"),
    ("sunspots", None, {}, "gru", 16, 100, 1e-2, "naive"),
    ("vowels", None, {}, "gru", 16, 100, 1e-2, "majority"),
]


# Three tasks learn in seconds in `make test` (a synthetic one, text and speech); the others'
# short runs go with the slow checks, to keep `make test` within its budget.
_SHORT_RUNS_FAST = {"adding"}  # the other science checks run with make test-slow


@pytest.mark.parametrize(
    "name, length, options, cell, hidden, steps, lr, baseline",
    [r if r[0] in _SHORT_RUNS_FAST else pytest.param(*r, marks=pytest.mark.slow) for r in SHORT_RUNS],
    ids=[r[0] for r in SHORT_RUNS],
)
def test_short_run_beats_baseline(name, length, options, cell, hidden, steps, lr, baseline):
    task = tasks.make(name, length, **options)
    model = tasks.sequence_model(tasks.make_cell(cell, hidden), task.output_size, task.readout)
    result = tasks.train_task(task, model, seeds=[0], steps=steps, batch_size=32, learning_rate=lr, steps_per_call=50)
    value = result.final[task.metric][0]
    ref = task.baselines[baseline][task.metric]
    assert tasks.beats(task, value, baseline), f"{name}: {task.metric} {value:.4f} vs {baseline} baseline {ref:.4f}"
    assert result.beats[baseline] == 1


# ----------------------------------------------------------------------------- slow science checks


@pytest.mark.slow
def test_lstm_solves_adding_100_and_tanh_rnn_does_not():
    task = tasks.adding(100, n_test=1000)
    results = {}
    for cell in ("lstm", "rnn"):
        model = tasks.sequence_model(tasks.make_cell(cell, 64), 1, "last")
        results[cell] = tasks.train_task(task, model, seeds=[0, 1], steps=2500, batch_size=50, learning_rate=2e-3,
                                         eval_every=250, stop_at_solved=True)
    assert results["lstm"].n_solved == 2, results["lstm"].final
    assert results["rnn"].n_solved == 0, results["rnn"].final


@pytest.mark.slow
def test_lstm_solves_temporal_order_110_for_some_seeds():
    # Seed-sensitive at T = 110: in the check run (these four seeds, vmapped) seeds 2 and 3 reached
    # accuracy 1.0 by step 1000 while seeds 0 and 1 were still near chance at step 3000.
    task = tasks.temporal_order(110)
    model = tasks.sequence_model(tasks.make_cell("lstm", 64), 4, "last")
    r = tasks.train_task(task, model, seeds=[0, 1, 2, 3], steps=3000, batch_size=32, learning_rate=2e-3,
                         eval_every=500)
    assert r.n_solved >= 2, r.final
    assert r.beats["majority"] >= 2


@pytest.mark.slow
def test_lstm_beats_copy_memory_baseline_at_lag_20_and_tanh_rnn_does_not():
    # The recorded sweep (docs/tasks.md): after 2000 steps the LSTM is at 0.82x the memoryless
    # baseline and the tanh RNN at 1.00x.
    task = tasks.copy_memory(20)
    final = {}
    for cell in ("lstm", "rnn"):
        model = tasks.sequence_model(tasks.make_cell(cell, 64), 10, "all")
        final[cell] = tasks.train_task(task, model, seeds=[0], steps=2000, batch_size=50, learning_rate=2e-3).final
    base = task.baselines["memoryless"]["xent"]
    assert final["lstm"]["xent"][0] < 0.9 * base, final
    assert final["rnn"]["xent"][0] > 0.97 * base, final


@pytest.mark.slow
@pytest.mark.parametrize("name, baseline, steps", [("vowels", "nearest_neighbour", 1500), ("char_lm", "bigram", 1500),
                                                   ("sunspots", "naive", 1500), ("digits", "majority", 1500)])
def test_longer_runs_of_real_data(name, baseline, steps):
    task = tasks.make(name)
    model = tasks.sequence_model(tasks.make_cell("gru", 64), task.output_size, task.readout)
    r = tasks.train_task(task, model, seeds=[0], steps=steps, batch_size=32, learning_rate=3e-3)
    assert r.beats[baseline] == 1, (r.final[task.metric], task.baselines)


# ----------------------------------------------------------------------------- sizes checked by name

# Each task's smallest length (the lag for copy, the window for sunspots); every task with a length is here.
SMALLEST = {"adding": 2, "copy": 1, "selective_copy": 16, "mqar": 32, "temporal_order": 11, "char_lm": 1, "sunspots": 2}


def test_every_task_with_a_length_has_its_smallest_size_listed_here():
    assert set(SMALLEST) == {name for name, (_, length_arg) in tasks.TASKS.items() if length_arg is not None}


@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_each_task_runs_at_its_smallest_size_and_refuses_one_below_by_name(name):
    T = SMALLEST[name]
    task = tasks.make(name, T, **({"max_valid_chars": 50} if name == "char_lm" else {}))
    model = tasks.sequence_model(memcell.rnn(3), task.output_size, task.readout)
    params = model.init(KEY, task.input_size)
    loss, metrics = tasks.loss_fn(task, model)(params, task.sample(KEY, 2), None)
    assert np.isfinite(float(loss)) and np.isfinite(float(metrics[task.metric]))
    # one below: a ValueError naming the task, the argument and its bound, before anything is built
    argument = "window" if name == "sunspots" else "length"
    with pytest.raises(ValueError, match=rf"task '{name}'.*: {argument} must be an int >= {T}, got {T - 1}"):
        tasks.make(name, T - 1)


def test_char_lm_refuses_a_validation_part_shorter_than_a_window():
    with pytest.raises(ValueError, match="max_valid_chars must be None or an int >= length=10"):
        tasks.char_lm(10, max_valid_chars=9)
    with pytest.raises(ValueError, match="length must be at most 93992 for this corpus .* got 1000000"):
        tasks.make("char_lm", 1_000_000)


# ----------------------------------------------------------------------------- beating a baseline


def _fake_task(mode, baseline):
    metric = "mse" if mode == "min" else "accuracy"
    return tasks.Task("fake", 1, 1, "last", None, {}, None, metric, mode, {"b": {metric: baseline}}, None, {})


@pytest.mark.parametrize("mode, baseline, value, beats", [
    ("min", 0.170, 0.1694, False),  # within noise of the baseline: not a win (the case of issue 25)
    ("min", 0.170, 0.1531, False),  # 0.9 x 0.170 = 0.153
    ("min", 0.170, 0.1529, True),
    ("max", 0.25, 0.32, False),  # 0.25 + 0.1 x (1 - 0.25) = 0.325
    ("max", 0.25, 0.33, True),
])
def test_beats_needs_a_clear_margin(mode, baseline, value, beats):
    task = _fake_task(mode, baseline)
    assert tasks.beats(task, value, "b") is beats
    assert tasks.beat_threshold(task, "b") == pytest.approx(0.153 if mode == "min" else 0.325)
    with pytest.raises(ValueError, match=r"baseline must name a baseline of task 'fake' .*\(one of \['b'\]\), got 'c'"):
        tasks.beat_threshold(task, "c")


# ----------------------------------------------------------------------------- train_task: optimizer and result

_TINY = tasks.adding(5, n_test=16)
_TINY_MODEL = tasks.sequence_model(memcell.gru(4), 1, "last")


@pytest.fixture(scope="module")
def tiny_runs():
    """Two seeds trained for 4 steps, with the optimizer given by name and as the transformation it names."""
    from memcell import train

    kw = dict(seeds=[0, 1], steps=4, batch_size=4, steps_per_call=2, eval_every=2)
    by_name = tasks.train_task(_TINY, _TINY_MODEL, optimizer="sgd", learning_rate=1e-2, clip_norm=None, **kw)
    by_tx = tasks.train_task(_TINY, _TINY_MODEL, optimizer=train.optimizer(1e-2, name="sgd", clip_norm=None), **kw)
    return by_name, by_tx


def test_train_task_takes_an_optax_transformation_and_the_names_are_built_on_it(tiny_runs):
    from memcell import train

    by_name, by_tx = tiny_runs
    assert isinstance(by_tx, tasks.TaskResult) and by_tx.final == by_name.final  # the same numbers, bit for bit
    for a, b in zip(jax.tree.leaves(by_tx.state.params), jax.tree.leaves(by_name.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a transformation with per-seed rates: each seed starts with its own (the state holds an injected rate)
    tx, states = tasks.initial_states(_TINY, _TINY_MODEL, seeds=[0, 1], optimizer=train.optimizer(1e-2),
                                      learning_rate=[1e-2, 3e-3])
    np.testing.assert_allclose(train.learning_rate(states.opt_state), [1e-2, 3e-3], rtol=1e-6)


def test_train_task_refuses_convenience_options_beside_a_transformation():
    import optax

    for kw, named in ((dict(clip_norm=0.5), "clip_norm=0.5"), (dict(learning_rate=0.1), "learning_rate=0.1"),
                      (dict(decay=True, warmup_steps=2), "warmup_steps=2, decay=True")):
        with pytest.raises(ValueError, match=f"optimizer is an optax.GradientTransformation.*: {named} applies to an "
                                             "optimizer given by name"):
            tasks.train_task(_TINY, _TINY_MODEL, optimizer=optax.sgd(1e-2), steps=1, **kw)
    with pytest.raises(TypeError, match="optimizer must be an optax.GradientTransformation or the name of one"):
        tasks.train_task(_TINY, _TINY_MODEL, optimizer=3, steps=1)


def test_task_result_has_named_fields_and_a_json_form(tiny_runs):
    import json

    result = tiny_runs[0]
    d = result.to_dict()
    assert "state" not in d and [h["step"] for h in d["history"]] == [2, 4]
    assert json.loads(json.dumps(d)) == d  # JSON-able as it is
    assert "history" not in result.to_dict(history=False)
    assert d["beat_thresholds"]["mean"] == pytest.approx(0.9 * _TINY.baselines["mean"]["mse"])
    assert result.beats["mean"] == sum(tasks.beats(_TINY, v, "mean") for v in result.final["mse"])
    assert (result.metric, result.mode, result.seeds, result.steps) == ("mse", "min", [0, 1], 4)
    with pytest.raises(TypeError, match=r"TaskResult is a dataclass, not a dict: read result.final"):
        result["final"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.steps = 5
