"""What every task shares: the ``Task`` bundle, a sequence model with a dense readout, and the
loss and evaluation functions that join them (``train_task``, the loop the CLI and the
experiments run, is in ``_training``)."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence as SequenceOf

import jax
import jax.numpy as jnp
import numpy as np

from memcell import cells as cell_table
from memcell._checks import check_backend as _check_backend
from memcell.scan import layer, stack
from memcell.tasks._streams import TokenStreams
from memcell.types import Array, Cell, Key, Layer, PyTree


class Task(NamedTuple):
    """A benchmark: a seeded batch sampler, a fixed test set, a loss and baselines.

    Attributes:
      name: the task's name.
      input_size: features per step; for token inputs (``batch["xs"]`` integer ``[b, t]``)
        the vocabulary size, and models see one-hot vectors.
      output_size: outputs of the readout (classes, or regression targets).
      readout: ``"last"``: one output per sequence, read at each sequence's last real step;
        ``"all"``: one output per step.
      sample: ``sample(key, batch_size) -> batch``, pure and jit-able. A batch is a dict with
        ``"xs"`` and ``"ys"`` and, for variable lengths, ``"lengths"`` ``[b]``.
      test: the fixed test (or validation) batch, NumPy arrays.
      loss: ``loss(outputs, batch) -> (loss, metrics)``, jnp, mean over the batch.
      metric: the task's stated metric (a key of ``metrics``), e.g. ``"mse"``, ``"accuracy"``.
      mode: ``"min"`` or ``"max"``: which way ``metric`` is better.
      baselines: ``{name: {metric: value}}``, every value computed from the data on the test set.
      solved: the threshold on ``metric`` that counts as solved (None where the task has none).
      info: protocol details (sequence length, split sizes, vocabulary, units, references).
      stream: the task's data as long ``TokenStreams`` for truncated BPTT (``train_task``'s
        ``tbptt``), or None where the task has none (all but ``char_lm``).
    """

    name: str
    input_size: int
    output_size: int
    readout: str
    sample: Callable[[Key, int], dict]
    test: dict
    loss: Callable[[Array, dict], tuple[Array, dict]]
    metric: str
    mode: str
    baselines: dict
    solved: float | None
    info: dict
    stream: TokenStreams | None = None


class Model(NamedTuple):
    """A recurrent stack and a dense readout: ``init(key, input_size) -> params``,
    ``apply(params, xs, *, lengths=None, key=None) -> outputs``."""

    init: Callable[..., PyTree]
    apply: Callable[..., Array]
    layers: Layer  # the recurrent part (for sampling step by step)
    readout: str
    cell: Cell | None = None  # the cell, when the recurrent part is a single Cell
    head: Callable[..., Array] | None = None  # head(params, ys, lengths=None): the readout alone


class ModelParams(NamedTuple):
    rnn: PyTree  # params of the recurrent Layer
    w: Array  # [h, o] readout
    b: Array  # [o]


# ----------------------------------------------------------------------------- losses


def cross_entropy(logits: Array, labels: Array, mask: Array | None = None) -> tuple[Array, Array]:
    """Mean cross-entropy (nats) and accuracy of integer ``labels`` under ``logits``, over ``mask``."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    if mask is None:
        return nll.mean(), hit.mean()
    mask = mask.astype(jnp.float32)
    denom = jnp.maximum(mask.sum(), 1.0)
    return (nll * mask).sum() / denom, (hit * mask).sum() / denom


def classification_loss(outputs, batch):
    """Cross-entropy with accuracy, for one label per sequence."""
    xent, acc = cross_entropy(outputs, batch["ys"])
    return xent, {"xent": xent, "accuracy": acc}


# ----------------------------------------------------------------------------- models

CELLS = tuple(cell_table.CELLS)  # the names of memcell.cells.CELLS, the one table of built-in cells


def make_cell(name: str | cell_table.Factory, hidden_size: int, **options) -> Cell:
    """A cell from ``memcell.cells.CELLS`` by name (``"rnn"``, ``"irnn"``, ``"lstm"``, ``"gru"``,
    ``"mingru"``, ``"minlstm"``, ``"lru"``, ``"rglru"``, ``"slstm"``, ``"mlstm"``), a user's
    ``"module:factory"``, or a factory itself (see ``memcell.cells.resolve``); ``options`` go to
    the factory."""
    return cell_table.resolve(name)(hidden_size, **options)


def sequence_model(
    layers: Cell | Layer | SequenceOf[Cell | Layer], output_size: int, readout: str = "last", *,
    backend: str = "reference",
) -> Model:
    """A recurrent stack followed by a dense readout.

    Args:
      layers: a ``Cell``, a ``Layer``, or a list of them (stacked with ``memcell.stack``).
      output_size: outputs of the readout.
      readout: ``"last"`` (one output per sequence, at each one's last real step, so padding
        is never read) or ``"all"`` (one per step).
      backend: how the ``Cell``s in ``layers`` are unrolled (``memcell.unroll``'s ``backend``):
        ``"auto"`` trains the default LSTM, GRU and RNN on the fused path. ``Layer``s keep their own.

    Returns:
      A ``Model``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> from memcell.tasks import sequence_model
      >>> model = sequence_model(memcell.lstm(8), output_size=3)
      >>> params = model.init(jax.random.key(0), input_size=2)
      >>> model.apply(params, jnp.ones((4, 10, 2)), lengths=jnp.array([10, 5, 1, 7])).shape
      (4, 3)
    """
    if readout not in ("last", "all"):
        raise ValueError(f"readout must be 'last' or 'all', got {readout!r}")
    _check_backend(backend)
    single = layers if isinstance(layers, Cell) else None
    lift = lambda c: layer(c, backend=backend) if isinstance(c, Cell) else c
    if isinstance(layers, (Cell, Layer)):
        lyr = lift(layers)
    else:
        lyr = stack([lift(c) for c in layers])
    if isinstance(output_size, bool) or not isinstance(output_size, (int, np.integer)) or output_size < 1:
        raise ValueError(f"output_size must be a positive int, got {output_size!r}")
    head = _read(readout)

    def init(key, input_size: int) -> ModelParams:
        k_rnn, k_out = jax.random.split(key)
        p = lyr.init(k_rnn, input_size)
        h = jax.eval_shape(lambda q: lyr.apply(q, jnp.zeros((1, input_size), jnp.float32))[1], p).shape[-1]
        w = jax.random.normal(k_out, (h, output_size), jnp.float32) / math.sqrt(h)
        return ModelParams(p, w, jnp.zeros((output_size,), jnp.float32))

    def apply(params: ModelParams, xs, *, lengths=None, key=None):
        _, ys = lyr.apply(params.rnn, xs, lengths=lengths, key=key)
        return head(params, ys, lengths)

    return Model(init, apply, lyr, readout, single, head)


def _read(readout: str):
    def head(params: ModelParams, ys: Array, lengths=None) -> Array:
        """The dense readout of the recurrent outputs ``ys: [*b, t, h]``."""
        if readout == "last":
            T = ys.shape[-2]
            last = (jnp.full(ys.shape[:-2], T - 1) if lengths is None else jnp.maximum(jnp.asarray(lengths) - 1, 0))
            ys = jnp.take_along_axis(ys, last[..., None, None].astype(jnp.int32), axis=-2)[..., 0, :]
        return ys @ params.w + params.b

    return head


def features(task: Task, xs: Array) -> Array:
    """The model's inputs: token ids ``[*b, t]`` become one-hot ``[*b, t, task.input_size]``."""
    xs = jnp.asarray(xs)
    if jnp.issubdtype(xs.dtype, jnp.integer):
        return jax.nn.one_hot(xs, task.input_size, dtype=jnp.float32)
    return xs


def loss_fn(task: Task, model: Model) -> Callable:
    """``loss_fn(params, batch, key) -> (loss, metrics)`` of ``model`` on ``task``, for
    ``memcell.train.make_train_step``."""

    def f(params, batch, key):
        out = model.apply(params, features(task, batch["xs"]), lengths=batch.get("lengths"), key=key)
        return task.loss(out, batch)

    return f


def gradient_flow_fn(task: Task, model: Model, n: int = 32) -> Callable:
    """``params -> metrics`` on how far the loss gradient reaches back in time, on ``n`` test sequences.

    With ``g_t = mean over sequences of ||dL / dh_t||`` (``memcell.jacobian.loss_gradient_norms``):
    ``grad_h_first`` is ``g_0``, ``grad_h_max`` is ``max_t g_t`` and ``grad_flow_log10`` is
    ``log10(g_0 / max_t g_t)``: 0 when the first step gets as much gradient as any, very
    negative when the gradient vanishes before it reaches the start. Needs a model whose
    recurrent part is one ``Cell``.
    """
    from memcell.jacobian import loss_gradient_norms  # the jacobian module sits beside training

    if model.cell is None:
        raise ValueError("gradient_flow_fn needs a sequence_model built from a single Cell, got a stack or a Layer")
    batch = jax.tree.map(lambda x: jnp.asarray(x[:n]), task.test)
    xs = features(task, batch["xs"])
    lengths = batch.get("lengths")

    def flow(params):
        loss_of_ys = lambda ys: task.loss(model.head(params, ys, lengths), batch)[0]
        g = loss_gradient_norms(model.cell, params.rnn, xs, loss_of_ys).mean(0)  # [T]
        peak = jnp.max(g)
        return {"grad_h_first": g[0], "grad_h_max": peak,
                "grad_flow_log10": jnp.log10(jnp.maximum(g[0], 1e-38) / jnp.maximum(peak, 1e-38))}

    # Traced once here (shapes only), so a cell the measure cannot read (the mLSTM's carry has no
    # hidden state h) is refused before training, not at the first evaluation after it.
    jax.eval_shape(flow, jax.eval_shape(lambda k: model.init(k, task.input_size), jax.random.key(0)))
    return flow


def eval_fn(task: Task, model: Model, max_batch: int = 4096, *, gradient_flow: bool = False) -> Callable:
    """``params -> metrics`` on the task's fixed test set (split into chunks of ``max_batch``
    sequences, weighted by size), jit-able and vmap-able. With ``gradient_flow=True`` the
    metrics of ``gradient_flow_fn`` are added, so ``fit`` logs them at every evaluation."""
    test = jax.tree.map(jnp.asarray, task.test)
    n = int(jax.tree.leaves(test)[0].shape[0])
    f = loss_fn(task, model)
    chunks = [(i, min(i + max_batch, n)) for i in range(0, n, max_batch)]
    flow = gradient_flow_fn(task, model) if gradient_flow else None

    def evaluate(params):
        total = None
        for lo, hi in chunks:
            part = jax.tree.map(lambda x: x[lo:hi], test)
            loss, m = f(params, part, None)
            m = {"loss": loss, **m}
            m = {k: v * (hi - lo) / n for k, v in m.items()}
            total = m if total is None else {k: total[k] + m[k] for k in total}
        if flow is not None:
            total.update(flow(params))
        return total

    return evaluate


# ----------------------------------------------------------------------------- splits


def check_split(valid_fraction, split) -> float:
    """Checks a task factory's ``valid_fraction`` (in ``[0, 1)``) and ``split`` (``"test"`` or
    ``"valid"``; ``"valid"`` needs ``valid_fraction > 0``); returns ``valid_fraction`` as a float."""
    ok = isinstance(valid_fraction, (int, float, np.integer, np.floating)) and not isinstance(valid_fraction, bool)
    if not (ok and 0.0 <= valid_fraction < 1.0):
        raise ValueError(f"valid_fraction must lie in [0, 1), got {valid_fraction!r}")
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    if split == "valid" and valid_fraction == 0:
        raise ValueError("split='valid' needs a validation split: valid_fraction must be > 0, got 0")
    return float(valid_fraction)


def holdout(n: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, valid)`` index arrays: a random ``valid_fraction`` of ``range(n)`` (fixed by
    ``seed``) held out for validation, the rest to fit on, each sorted."""
    order = np.random.RandomState(seed).permutation(n)
    n_valid = int(round(valid_fraction * n))
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


# ----------------------------------------------------------------------------- training


# A run beats a baseline by a clear margin only, so that a seed hovering at the baseline (0.1694
# against 0.170) does not count: below 0.9 x the baseline where lower is better; where higher is
# better (accuracies, at most 1), a tenth of the way from the baseline to a perfect 1. The
# reproductions (experiments/reproduce.py, docs/reproductions.md) use the same rule.
BEAT_FRACTION = 0.9


def beat_threshold(task: Task, baseline: str) -> float:
    """The value of ``task.metric`` a run must pass to beat the named baseline (see ``beats``).

    Example:
      >>> from memcell import tasks
      >>> task = tasks.adding(20, n_test=100)
      >>> ref = task.baselines["mean"]["mse"]
      >>> round(tasks.beat_threshold(task, "mean") / ref, 6)
      0.9
    """
    if baseline not in task.baselines or task.metric not in task.baselines[baseline]:
        have = [b for b, v in task.baselines.items() if task.metric in v]
        raise ValueError(f"baseline must name a baseline of task {task.name!r} with its metric {task.metric!r} "
                         f"(one of {have}), got {baseline!r}")
    ref = float(task.baselines[baseline][task.metric])
    return BEAT_FRACTION * ref if task.mode == "min" else ref + (1.0 - BEAT_FRACTION) * (1.0 - ref)


def beats(task: Task, value: float, baseline: str) -> bool:
    """Whether ``value`` of ``task.metric`` beats the named baseline by a clear margin: below
    ``0.9 x`` the baseline where lower is better, above ``baseline + 0.1 x (1 - baseline)`` where
    higher is better (``beat_threshold``). A value within the margin does not count."""
    threshold = beat_threshold(task, baseline)
    return value < threshold if task.mode == "min" else value > threshold
