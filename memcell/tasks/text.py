"""Character-level language modelling on Shakespeare (seven plays, public domain, shipped
with memcell), with unigram and bigram baselines and temperature sampling."""

from __future__ import annotations

import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from memcell.streaming import stream
from memcell.tasks._base import Model, ModelParams, Task, cross_entropy
from memcell.tasks._streams import TokenStreams

__all__ = ["char_lm", "sample_text"]

CORPUS = pathlib.Path(__file__).parent / "data" / "shakespeare.txt"
_LN2 = math.log(2.0)


def _ngram_bpc(train: np.ndarray, valid: np.ndarray, vocab: int) -> tuple[float, float]:
    """Bits per character of add-one smoothed unigram and bigram models fitted on ``train``."""
    uni = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    uni /= uni.sum()
    unigram = -np.mean(np.log2(uni[valid]))
    big = np.ones((vocab, vocab), np.float64)
    np.add.at(big, (train[:-1], train[1:]), 1.0)
    big /= big.sum(1, keepdims=True)
    # The first validation character is scored by the last training one, like the model's windows.
    prev = np.concatenate([train[-1:], valid[:-1]])
    bigram = -np.mean(np.log2(big[prev, valid]))
    return float(unigram), float(bigram)


def _lm_loss(outputs, batch):
    # Truncated-BPTT windows end early before a document start: only their real steps count.
    lengths = batch.get("lengths")
    mask = None if lengths is None else jnp.arange(outputs.shape[-2]) < lengths[..., None]
    xent, acc = cross_entropy(outputs, batch["ys"], mask)
    return xent, {"xent": xent, "bpc": xent / _LN2, "accuracy": acc}


def _document_starts(text: str) -> np.ndarray:
    """Where each play begins (its title line, two lines above "by William Shakespeare"), int32."""
    starts = [m.start() for m in re.finditer(r"^[^\n]+\n\nby William Shakespeare$", text, flags=re.M)]
    return np.asarray(starts, np.int32)


def char_lm(length: int = 100, *, valid_fraction: float = 0.1, max_valid_chars: int | None = None,
            corpus=None) -> Task:
    """Next-character prediction on the shipped Shakespeare text.

    The text is split by position: the first ``1 - valid_fraction`` for training (random
    windows of ``length + 1`` characters), the rest for validation (consecutive windows of
    ``length``, each predicting its next characters). Metric: validation bits per character.
    Baselines: add-one smoothed unigram and bigram models fitted on the training part.

    ``task.stream`` holds the same splits as long streams for truncated BPTT
    (``train_task(..., tbptt=True)``), with the documents' starts: in the shipped corpus the
    seven plays (each begins at its title, found by the "by William Shakespeare" line under
    it); another corpus is one document unless it has the same marker.

    Args:
      length: characters a training window reads (``T``, >= 1; a window must fit in each split).
      valid_fraction: the share of the text, at its end, held out.
      max_valid_chars: evaluate on at most this many validation characters (None: all; else >= ``length``).
      corpus: another text file to use (ASCII or UTF-8).

    Returns:
      A ``Task`` with token inputs ``xs: [b, T]`` and targets ``ys: [b, T]``; ``info["vocab"]``
      is the string of characters, indexed by token id.
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"length must be an int >= 1, got {length!r}")
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must lie in (0, 1), got {valid_fraction!r}")
    if max_valid_chars is not None and (isinstance(max_valid_chars, bool) or not isinstance(max_valid_chars, (int, np.integer))
                                        or max_valid_chars < length):
        raise ValueError(f"max_valid_chars must be None or an int >= length={length} (one validation window), "
                         f"got {max_valid_chars!r}")
    text = pathlib.Path(CORPUS if corpus is None else corpus).read_text(encoding="utf-8")
    vocab = "".join(sorted(set(text)))
    lut = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((lut[c] for c in text), np.int32, len(text))
    split = int(len(ids) * (1.0 - valid_fraction))
    train, valid = ids[:split], ids[split:]
    if len(train) <= length + 1 or len(valid) <= length + 1:
        limit = min(len(train), len(valid)) - 2
        raise ValueError(f"length must be at most {limit} for this corpus (a window of length + 1 characters must fit "
                         f"in the {len(train)}-character training and {len(valid)}-character validation splits), "
                         f"got {length}")
    # Validation windows read (prev char, ...) and predict (..., next char): the context at
    # the start of each window is cut, as in the training windows.
    stream = np.concatenate([train[-1:], valid])
    if max_valid_chars is not None:
        stream = stream[: max_valid_chars + 1]
    n_win = (len(stream) - 1) // length
    xs = stream[: n_win * length].reshape(n_win, length)
    ys = stream[1 : n_win * length + 1].reshape(n_win, length)
    unigram, bigram = _ngram_bpc(train, ys.reshape(-1), len(vocab))
    doc = _document_starts(text)
    valid_starts = doc[(doc > split - 1) & (doc < split - 1 + ys.size)] - (split - 1)  # in the stream's inputs
    streams = TokenStreams(train=train, train_starts=doc[(doc > 0) & (doc < split)], valid_xs=xs.reshape(-1),
                           valid_ys=ys.reshape(-1), valid_starts=valid_starts)
    train_ids = jnp.asarray(train)

    def sample(key, batch_size: int) -> dict:
        start = jax.random.randint(key, (batch_size,), 0, train_ids.shape[0] - length - 1)
        win = jax.vmap(lambda s: jax.lax.dynamic_slice(train_ids, (s,), (length + 1,)))(start)
        return {"xs": win[:, :-1], "ys": win[:, 1:]}

    return Task(
        name="char_lm", input_size=len(vocab), output_size=len(vocab), readout="all", sample=sample,
        test={"xs": xs, "ys": ys}, loss=_lm_loss, metric="bpc", mode="min",
        baselines={"unigram": {"bpc": unigram}, "bigram": {"bpc": bigram}},
        solved=None, stream=streams,
        info={"length": length, "n_documents": len(doc) + int(0 not in doc), "vocab": vocab, "n_train_chars": len(train), "n_valid_chars": int(ys.size),
              "source": "Shakespeare, seven plays (memcell/tasks/data/README.md)"},
    )


def sample_text(task: Task, model: Model, params: ModelParams, key, *, prompt: str = "\n", length: int = 200,
                temperature: float = 1.0, top_k: int | None = None) -> str:
    """Generates ``length`` characters after ``prompt`` from a trained char-LM ``model``.

    The model runs as a stream (``memcell.stream``): the prompt is fed as one chunk, then each
    drawn character is fed as the next step, from the carry the last call left. Each character
    is drawn from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely
    ones: below 1 the text is more conservative, above 1 more random; ``temperature=0`` or
    ``top_k=1`` takes the most likely character.

    Args:
      task: the ``char_lm`` task (for its vocabulary).
      model: a ``sequence_model(..., readout="all")`` whose layers run in one direction;
        params: its params (one model).
      key: a ``jax.random.key``.
      prompt: text to condition on (every character must be in the vocabulary).
      length: characters to generate.
      temperature: a finite number >= 0.
      top_k: draw among the ``top_k`` most likely characters only (None: all of them); an int
        in ``[1, vocabulary size]``.

    Returns:
      The generated text (without the prompt).
    """
    vocab = task.info["vocab"]
    V = len(vocab)
    bad = sorted({c for c in prompt if c not in vocab})
    if not prompt or bad:
        raise ValueError(f"prompt must be non-empty and use only the corpus' characters, got unknown {bad!r}")
    ok = isinstance(temperature, (int, float, np.integer, np.floating)) and not isinstance(temperature, bool)
    if not (ok and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= V):
        raise ValueError(f"top_k must be None or an int in [1, {V}] (the vocabulary size), got {top_k!r}")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"length must be an int >= 1, got {length!r}")
    if model.readout != "all":
        raise ValueError(f"model must have readout='all' (one output a step) to generate text, got {model.readout!r}")
    s = stream(model.layers, V)
    prompt_ids = jnp.asarray([vocab.index(c) for c in prompt], jnp.int32)
    greedy = temperature == 0 or top_k == 1

    def draw(logits, k):
        if greedy:
            return jnp.argmax(logits, axis=-1)
        if top_k is not None and top_k < V:
            kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
            logits = jnp.where(logits >= kth, logits, -jnp.inf)
        return jax.random.categorical(k, logits / temperature)

    @jax.jit
    def generate(params, key):
        carry, ys = s.feed(params.rnn, s.init_carry(params.rnn), jax.nn.one_hot(prompt_ids, V))
        logits = model.head(params, ys[-1])

        def body(state, k):
            carry, logits = state
            c = draw(logits, k)
            carry, y = s.step(params.rnn, carry, jax.nn.one_hot(c, V))
            return (carry, model.head(params, y)), c

        _, out = jax.lax.scan(body, (carry, logits), jax.random.split(key, length))
        return out

    out = np.asarray(generate(params, key))
    return "".join(vocab[i] for i in out)
