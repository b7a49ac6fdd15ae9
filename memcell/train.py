"""Training with optax: a pure train step, an evaluation step, and a ``fit`` loop.

The pure pieces come first and compose with plain JAX:

- ``TrainState(params, opt_state, step, key)``: everything a run needs to continue.
- ``optimizer(...)``: an optax chain (clip by global norm, Adam/SGD/..., an optional
  warmup/cosine schedule) inside ``optax.apply_if_finite``, so a non-finite gradient skips the
  update instead of poisoning the params, with the learning rate held in the optimizer state
  (``optax.inject_hyperparams``) so that models vmapped together can each have their own.
- ``make_train_step(loss_fn, optimizer)`` returns a jit-able ``(state, batch) -> (state, metrics)``.
- ``init_state`` / ``init_states``: one model, or N models stacked on a leading axis for
  ``jax.vmap`` (one key and optionally one learning rate each).

``fit`` runs the loop: batches drawn from a pure, seeded sampler (``sample(key) -> batch``,
with the key a function of the run's key and the step only, so a resumed run sees the same
data), several steps per jit call with ``lax.scan``, metrics of every step to JSONL, a progress
bar, periodic evaluation, early stopping, and orbax checkpoints that resume bit-identically.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from memcell.types import Array, Key, PyTree

__all__ = [
    "EarlyStopping",
    "FitResult",
    "TrainState",
    "evaluate",
    "fit",
    "init_state",
    "init_states",
    "learning_rate",
    "make_eval_step",
    "make_train_step",
    "optimizer",
    "summarize",
]

LossFn = Callable[..., tuple[Array, dict]]  # loss_fn(params, batch, key) -> (loss, metrics)


class TrainState(NamedTuple):
    """What a training run needs to continue: a pytree, so it jits, vmaps and checkpoints.

    With N models trained together every leaf has a leading axis of size N.
    """

    params: PyTree
    opt_state: PyTree
    step: Array  # int32 [] (or [n] for n vmapped models): number of updates attempted
    key: Key  # the run's key; the key of step t is derived from (key, t), never advanced


# ----------------------------------------------------------------------------- optimizer

_OPTIMIZERS = {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd, "rmsprop": optax.rmsprop}


def optimizer(
    learning_rate: float = 1e-3,
    *,
    name: str = "adam",
    clip_norm: float | None = 1.0,
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    momentum: float | None = None,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """The default optimizer: ``apply_if_finite(clip_by_global_norm -> name)`` with an injected learning rate.

    Args:
      learning_rate: the (peak) learning rate, > 0.
      name: ``"adam"``, ``"adamw"``, ``"sgd"`` or ``"rmsprop"``.
      clip_norm: clip gradients to this global norm (None: no clipping). RNNs need it:
        exploding gradients come in rare, huge spikes.
      warmup_steps: linear warmup from 0 over this many steps.
      decay_steps: if set, cosine decay to 0 at this step (counted from the start, warmup included).
      momentum: for ``"sgd"`` (Nesterov off) and ``"rmsprop"``.
      weight_decay: for ``"adamw"``.

    Returns:
      An ``optax.GradientTransformation``. Its state holds the current learning rate
      (``memcell.train.learning_rate(opt_state)``); an update whose gradient holds a NaN or
      an inf leaves params and moments unchanged (``optax.apply_if_finite``), and the train
      step reports it as ``metrics["skipped"]``.
    """
    if name not in _OPTIMIZERS:
        raise ValueError(f"name must be one of {sorted(_OPTIMIZERS)}, got {name!r}")
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a positive finite number, got {learning_rate!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
    if decay_steps is not None and decay_steps <= warmup_steps:
        raise ValueError(f"decay_steps must exceed warmup_steps={warmup_steps}, got {decay_steps!r}")

    def shape(count, peak):
        scale = jnp.ones((), jnp.float32)
        if warmup_steps:
            scale = jnp.minimum(1.0, (count + 1) / warmup_steps)
        if decay_steps is not None:
            frac = jnp.clip((count - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
            scale = scale * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        return peak * scale

    def factory(learning_rate):
        kw = {}
        if momentum is not None and name in ("sgd", "rmsprop"):
            kw["momentum"] = momentum
        if name == "adamw":
            kw["weight_decay"] = weight_decay
        # The schedule multiplies the injected peak rate, so a vmapped peak rate keeps its schedule.
        base = _OPTIMIZERS[name](lambda count: shape(count, learning_rate), **kw)
        parts = ([optax.clip_by_global_norm(clip_norm)] if clip_norm is not None else []) + [base]
        # A huge error budget: apply_if_finite applies the NaN update once the budget is spent,
        # and ``fit`` stops a diverged run itself, so the budget must never run out.
        return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=2**30)

    return optax.inject_hyperparams(factory)(learning_rate=float(learning_rate))


def learning_rate(opt_state) -> Array:
    """The peak learning rate held in the state of an ``optimizer(...)``."""
    hyper = getattr(opt_state, "hyperparams", None)
    if not isinstance(hyper, dict) or "learning_rate" not in hyper:
        raise TypeError(
            "opt_state must come from memcell.train.optimizer (optax.inject_hyperparams with a "
            f"learning_rate), got {type(opt_state).__name__}"
        )
    return hyper["learning_rate"]


def _set_learning_rate(opt_state, lr):
    learning_rate(opt_state)  # raises a clear TypeError otherwise
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(lr, hyper["learning_rate"].dtype)
    return opt_state._replace(hyperparams=hyper)


# ----------------------------------------------------------------------------- state


def _check_key(name: str, key) -> Key:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if not hasattr(key, "dtype"):
        raise TypeError(f"{name} must be a jax.random.key or an int seed, got {type(key).__name__}")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype == jnp.uint32 and key.shape[-1:] == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"{name} must be a jax.random.key or an int seed, got dtype {key.dtype} shape {key.shape}")


def init_state(key, init_params: Callable[[Key], PyTree], tx: optax.GradientTransformation) -> TrainState:
    """A fresh ``TrainState``: params from ``init_params(key)``, step 0.

    Args:
      key: a ``jax.random.key`` or an int seed; split into a params key and the run's key.
      init_params: ``key -> params``.
      tx: the optax optimizer.

    Returns:
      ``TrainState(params, tx.init(params), step=0, key)``.
    """
    key = _check_key("key", key)
    k_params, k_run = jax.random.split(key)
    params = init_params(k_params)
    return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), k_run)


def init_states(
    keys,
    init_params: Callable[[Key], PyTree],
    tx: optax.GradientTransformation,
    learning_rates: Iterable[float] | None = None,
) -> TrainState:
    """``n`` independent ``TrainState``s stacked on a leading axis, ready for ``jax.vmap``.

    Model ``i`` is exactly ``init_state(keys[i], ...)`` (same params, same data stream).

    Args:
      keys: ``[n]`` keys, or a sequence of int seeds.
      init_params, tx: as for ``init_state``.
      learning_rates: optional ``n`` peak learning rates, one a model (``tx`` must come from
        ``memcell.train.optimizer``, which keeps the rate in its state).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from memcell import train
      >>> tx = train.optimizer(1e-2)
      >>> states = train.init_states([0, 1, 2], lambda k: jax.random.normal(k, (3,)), tx,
      ...                            learning_rates=[1e-3, 1e-2, 1e-1])
      >>> states.params.shape, train.learning_rate(states.opt_state).shape
      ((3, 3), (3,))
    """
    if isinstance(keys, (list, tuple)):
        keys = jnp.stack([_check_key(f"keys[{i}]", k) for i, k in enumerate(keys)])
    else:
        keys = _check_key("keys", keys)
    if keys.ndim != 1 or keys.shape[0] < 1:
        raise ValueError(f"keys must be a 1-d array of at least one key, got shape {keys.shape}")
    n = keys.shape[0]
    lrs = None
    if learning_rates is not None:
        lrs = np.asarray(list(learning_rates), np.float32)
        if lrs.shape != (n,):
            raise ValueError(f"learning_rates must hold one value a model ({n}), got shape {lrs.shape}")
        if not (np.all(lrs > 0) and np.all(np.isfinite(lrs))):
            raise ValueError(f"learning_rates must be positive and finite, got {lrs.tolist()}")
    # Not jit-compiled: jax.jit(jax.vmap(init)) of an LSTM model (orthogonal init, so QR via
    # LAPACK) hung XLA:CPU within 50 calls here (jax 0.10.2); the eager vmap did not in 300.
    states = jax.vmap(lambda k: init_state(k, init_params, tx))(keys)
    if lrs is not None:
        states = states._replace(opt_state=_set_learning_rate(states.opt_state, jnp.asarray(lrs)))
    return states


def _step_keys(state: TrainState) -> tuple[Key, Key]:
    """The (data, loss) keys of the current step: a function of (run key, step) only."""
    data_key, loss_key = jax.random.split(jax.random.fold_in(state.key, state.step))
    return data_key, loss_key


# ----------------------------------------------------------------------------- steps


def _tree_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation) -> Callable:
    """A pure, jit-able train step ``(state, batch) -> (state, metrics)``.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)``, with ``metrics`` a dict of
        scalars; ``key`` is fresh each step (for dropout) and None at evaluation.
      tx: the optax optimizer; use ``memcell.train.optimizer`` (or wrap yours in
        ``optax.apply_if_finite``) so a non-finite gradient skips the update.

    Returns:
      ``train_step(state, batch) -> (state, metrics)``; ``metrics`` holds ``loss``,
      ``grad_norm`` (global norm before clipping), ``skipped`` (1.0 when the gradient was not
      finite) and the loss function's own metrics.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from memcell import train
      >>> loss_fn = lambda p, batch, key: (jnp.sum((p - batch) ** 2), {})
      >>> tx = train.optimizer(0.1)
      >>> state = train.init_state(0, lambda k: jnp.zeros(2), tx)
      >>> step = jax.jit(train.make_train_step(loss_fn, tx))
      >>> for _ in range(200):
      ...     state, metrics = step(state, jnp.array([1.0, -1.0]))
      >>> bool(metrics["loss"] < 1e-3), int(state.step)
      (True, 200)
    """

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        _, loss_key = _step_keys(state)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, loss_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = _tree_finite(grads)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "skipped": 1.0 - finite.astype(jnp.float32)}
        metrics.update(aux)
        return TrainState(params, opt_state, state.step + 1, state.key), metrics

    return train_step


def make_eval_step(loss_fn: LossFn) -> Callable:
    """A pure, jit-able evaluation step ``(params, batch) -> metrics``: ``loss`` and the loss
    function's own metrics, computed with ``key=None`` (deterministic: no dropout)."""

    def eval_step(params, batch) -> dict:
        loss, aux = loss_fn(params, batch, None)
        return {"loss": loss, **aux}

    return eval_step


def _batch_size(batch) -> int:
    leaves = jax.tree.leaves(batch)
    return int(leaves[0].shape[0]) if leaves and getattr(leaves[0], "ndim", 0) else 1


def evaluate(eval_step: Callable, params, batches: Iterable) -> dict:
    """Averages ``eval_step(params, batch)`` over batches, weighted by batch size (leading axis)."""
    total, weight = None, 0
    for batch in batches:
        m = jax.device_get(eval_step(params, batch))
        w = _batch_size(batch)
        scaled = {k: np.asarray(v, np.float64) * w for k, v in m.items()}
        total = scaled if total is None else {k: total[k] + scaled[k] for k in total}
        weight += w
    if total is None:
        raise ValueError("batches must yield at least one batch, got none")
    return {k: v / weight for k, v in total.items()}


# ----------------------------------------------------------------------------- reporting


def summarize(values) -> dict:
    """Mean, standard deviation (ddof=1 when n > 1), min, max and n of per-seed values."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("values must hold at least one number, got none")
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


class EarlyStopping(NamedTuple):
    """When ``fit`` stops before ``steps``, judged on an evaluation metric.

    Attributes:
      metric: the key of the evaluation metrics to watch (e.g. ``"loss"``, ``"accuracy"``).
      mode: ``"min"`` or ``"max"``: which way is better.
      target: stop once the metric is at or past this value (``<=`` for min, ``>=`` for max)
        at an evaluation.
      patience: stop after this many evaluations without improving on the best value.

    With several models trained together the run stops when, at one evaluation, every model
    meets the target or has run out of patience.
    """

    metric: str = "loss"
    mode: str = "min"
    target: float | None = None
    patience: int | None = None


class FitResult(NamedTuple):
    """What ``fit`` returns.

    Attributes:
      state: the final ``TrainState``.
      history: one dict per evaluation: ``step`` plus the evaluation metrics (lists of ``n``
        values with ``n`` models).
      stop_reason: ``"steps"``, ``"target"``, ``"patience"`` or ``"diverged"``.
      solved_step: per model, the first evaluated step at which the early-stopping target was
        met (None where never, or without a target); an int for one model, a list for several.
      skipped_steps: per model, how many updates were skipped for a non-finite gradient.
      wall_time: seconds spent in this call.
    """

    state: TrainState
    history: list
    stop_reason: str
    solved_step: Any
    skipped_steps: Any
    wall_time: float


# ----------------------------------------------------------------------------- checkpoints


def _fingerprint(tree) -> list:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [[jax.tree_util.keystr(p), list(np.shape(x)), str(np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype)]
            for p, x in leaves]


def _storable(state: TrainState) -> TrainState:
    # Typed PRNG keys are stored as their raw uint32 data.
    return state._replace(key=jax.random.key_data(state.key))


class _Checkpointer:
    """Orbax CheckpointManager around a TrainState plus JSON bookkeeping of the loop."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        import orbax.checkpoint as ocp  # lazily: orbax is slow to import

        self.ocp = ocp
        self.dir = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True),
        )

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, meta: dict) -> None:
        step = int(np.max(jax.device_get(state.step)))
        if self.latest() == step:
            return
        tree = _storable(state)
        meta = dict(meta, fingerprint=_fingerprint(tree))
        args = self.ocp.args
        self.manager.save(step, args=args.Composite(state=args.StandardSave(tree), meta=args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, template: TrainState, config: dict | None) -> tuple[TrainState, dict]:
        step = self.latest()
        path = self.dir / str(step)
        args = self.ocp.args
        try:
            meta = self.manager.restore(step, args=args.Composite(meta=args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises many types; all mean "unreadable"
            raise ValueError(f"checkpoint {path} is corrupted or unreadable (its metadata): {type(e).__name__}: {e}") from e
        if not isinstance(meta, dict) or "fingerprint" not in meta:
            raise ValueError(f"checkpoint {path} is corrupted or was not written by memcell.train.fit (no fingerprint)")
        if config is not None and meta.get("config") is not None and meta["config"] != config:
            changed = sorted(k for k in set(config) | set(meta["config"]) if config.get(k) != meta["config"].get(k))
            raise ValueError(
                f"checkpoint {path} was written with a different configuration: "
                + ", ".join(f"{k}: checkpoint {meta['config'].get(k)!r}, now {config.get(k)!r}" for k in changed)
            )
        tree = _storable(template)
        expected = _fingerprint(tree)
        if meta["fingerprint"] != expected:
            diff = next(
                ((a, b) for a, b in zip(meta["fingerprint"], expected) if a != b),
                (f"{len(meta['fingerprint'])} leaves", f"{len(expected)} leaves"),
            )
            raise ValueError(
                f"checkpoint {path} does not match this run's state: the checkpoint holds {diff[0]}, "
                f"this run expects {diff[1]} (different model, optimizer or number of seeds?)"
            )
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)
        try:
            restored = self.manager.restore(step, args=args.Composite(state=args.StandardRestore(abstract)))["state"]
        except Exception as e:
            raise ValueError(f"checkpoint {path} is corrupted or unreadable: {type(e).__name__}: {e}") from e
        restored = jax.tree.map(jnp.asarray, restored)
        return restored._replace(key=jax.random.wrap_key_data(restored.key)), meta


# ----------------------------------------------------------------------------- fit


def _chunk_size(steps_per_call: int, *intervals: int) -> int:
    k = steps_per_call
    for n in intervals:
        if n:
            k = math.gcd(k, n)
    return max(k, 1)


def _to_host(tree):
    return jax.tree.map(lambda x: np.asarray(x).tolist(), jax.device_get(tree))


def _logged_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _better(a, b, mode) -> bool:
    return a < b if mode == "min" else a > b


@functools.lru_cache(maxsize=32)
def _compiled_run(train_step: Callable, sample: Callable, multi: bool) -> Callable:
    """``(state, n) -> (state, metrics of n steps)``, jit-compiled once per (step, sampler)
    so that repeated and resumed ``fit`` calls reuse the compilation."""

    def one_step(s, _):
        data_key, _ = _step_keys(s)
        return train_step(s, sample(data_key))

    def run(s, n):
        return jax.lax.scan(one_step, s, None, length=n)

    return jax.jit(jax.vmap(run, in_axes=(0, None)) if multi else run, static_argnums=1)


@functools.lru_cache(maxsize=32)
def _compiled_eval(eval_fn: Callable, multi: bool) -> Callable:
    return jax.jit(jax.vmap(eval_fn) if multi else eval_fn)


def fit(
    train_step: Callable,
    state: TrainState,
    sample: Callable[[Key], Any],
    *,
    steps: int,
    eval_fn: Callable[[PyTree], dict] | None = None,
    eval_every: int = 0,
    early_stopping: EarlyStopping | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    config: dict | None = None,
    log_path: str | os.PathLike | None = None,
    progress: bool = True,
    steps_per_call: int = 50,
    max_nonfinite: int = 100,
) -> FitResult:
    """Trains until ``steps`` updates (or early stopping), logging, evaluating and checkpointing.

    Args:
      train_step: from ``make_train_step``.
      state: from ``init_state``, or ``init_states`` to train several models in one jit with
        ``jax.vmap`` (each with its own key, data stream and learning rate).
      sample: ``sample(key) -> batch``, a pure, jit-able function; the key of step ``t`` is
        derived from ``(state.key, t)``, so data is seeded, deterministic and the same after a
        resume. Tasks provide one (``task.sample``).
      steps: total number of updates (counted from step 0, not from a resumed step).
      eval_fn: ``params -> dict`` of scalar metrics, jit-able (e.g. on a fixed test set).
      eval_every: evaluate every this many steps (0: only at the end; needs ``eval_fn``).
      early_stopping: an ``EarlyStopping`` rule on ``eval_fn``'s metrics.
      checkpoint_dir: where orbax checkpoints go (the last two are kept).
      checkpoint_every: checkpoint every this many steps (0: only at the end).
      resume: continue from the latest checkpoint in ``checkpoint_dir`` if there is one.
        Without it, a directory that already holds checkpoints is an error (nothing is overwritten).
      config: a JSON-able dict stored with the checkpoints; resuming with a different one is
        an error naming the differing keys.
      log_path: a JSONL file; one line per step (``{"step", "split": "train", metrics...}``)
        and per evaluation (``"split": "eval"``). A resumed run drops the lines past the
        checkpoint before appending, so the file reads as one uninterrupted run.
      progress: show a tqdm progress bar with live metrics.
      steps_per_call: updates run per jit call with ``lax.scan`` (fewer host round trips);
        reduced to divide ``eval_every`` and ``checkpoint_every``.
      max_nonfinite: stop with ``stop_reason="diverged"`` after this many consecutive skipped
        (non-finite) updates of every model.

    Returns:
      A ``FitResult``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from memcell import train
      >>> def loss_fn(w, batch, key):
      ...     x, y = batch
      ...     return jnp.mean((x @ w - y) ** 2), {}
      >>> def sample(key):
      ...     x = jax.random.normal(key, (32, 2))
      ...     return x, x @ jnp.array([2.0, -1.0])
      >>> tx = train.optimizer(0.05)
      >>> state = train.init_state(0, lambda k: jnp.zeros(2), tx)
      >>> result = train.fit(train.make_train_step(loss_fn, tx), state, sample, steps=300, progress=False)
      >>> result.stop_reason, bool(jnp.allclose(result.state.params, jnp.array([2.0, -1.0]), atol=1e-2))
      ('steps', True)
    """
    for name, v in (("steps", steps), ("eval_every", eval_every), ("checkpoint_every", checkpoint_every),
                    ("steps_per_call", steps_per_call), ("max_nonfinite", max_nonfinite)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if steps < 1 or steps_per_call < 1 or max_nonfinite < 1:
        raise ValueError(f"steps, steps_per_call and max_nonfinite must be >= 1, got {steps}, {steps_per_call}, {max_nonfinite}")
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a memcell.train.TrainState, got {type(state).__name__}")
    if eval_every and eval_fn is None:
        raise ValueError("eval_every > 0 needs an eval_fn")
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be a memcell.train.EarlyStopping, got {type(early_stopping).__name__}")
        if eval_fn is None:
            raise ValueError("early_stopping needs an eval_fn to judge")
        if early_stopping.mode not in ("min", "max"):
            raise ValueError(f"early_stopping.mode must be 'min' or 'max', got {early_stopping.mode!r}")
        if early_stopping.target is None and early_stopping.patience is None:
            raise ValueError("early_stopping needs a target or a patience, got neither")
    if checkpoint_every and checkpoint_dir is None:
        raise ValueError("checkpoint_every > 0 needs a checkpoint_dir")
    if config is not None:
        try:
            config = json.loads(json.dumps(config))
        except TypeError as e:
            raise TypeError(f"config must be JSON-serialisable: {e}") from None

    t0 = time.perf_counter()
    step_ndim = np.ndim(state.step)
    if step_ndim not in (0, 1):
        raise ValueError(f"state.step must be a scalar (one model) or [n] (vmapped models), got shape {np.shape(state.step)}")
    multi = step_ndim == 1
    n_models = int(np.shape(state.step)[0]) if multi else 1

    # ------------------------------------------------------------------ loop bookkeeping
    book = {"history": [], "best": [None] * n_models, "bad_evals": [0] * n_models, "meets_target": [False] * n_models,
            "solved_step": [None] * n_models, "skipped": [0] * n_models, "nonfinite_run": [0] * n_models}
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = _Checkpointer(checkpoint_dir)
        if ckpt.latest() is not None:
            if not resume:
                raise ValueError(
                    f"checkpoint_dir {ckpt.dir} already holds checkpoints (latest step {ckpt.latest()}); "
                    "pass resume=True to continue from it, or choose an empty directory"
                )
            state, meta = ckpt.restore(state, config)
            book.update(meta["book"])
    start = int(np.max(jax.device_get(state.step)))

    log = None
    if log_path is not None:
        log_path = pathlib.Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if start > 0 and log_path.exists():
            # Every line up to the checkpoint was flushed before it was saved; later lines (and
            # a last line cut by a kill) belong to the lost part of the run.
            kept = [ln for ln in log_path.read_text().splitlines() if _logged_step(ln) <= start]
            log_path.write_text("".join(ln + "\n" for ln in kept))
        elif start == 0:
            log_path.write_text("")
        log = open(log_path, "a")

    run_jit = _compiled_run(train_step, sample, multi)
    eval_jit = None if eval_fn is None else _compiled_eval(eval_fn, multi)

    bar, postfix = None, {}
    if progress:
        from tqdm.auto import tqdm  # lazily: only the loop needs it

        bar = tqdm(total=steps, initial=start, dynamic_ncols=True, leave=True)

    def write(row):
        if log is not None:
            log.write(json.dumps(row) + "\n")

    def do_eval(s) -> bool:
        m = _to_host(eval_jit(s.params))
        step = int(np.max(jax.device_get(s.step)))
        row = {"step": step, **m}
        book["history"].append(row)
        write({"step": step, "split": "eval", **m})
        if bar is not None:
            postfix.update({f"eval_{k}": float(np.mean(v)) for k, v in m.items()})
            bar.set_postfix(postfix, refresh=False)
        if early_stopping is None:
            return False
        es = early_stopping
        if es.metric not in m:
            raise ValueError(f"early_stopping.metric {es.metric!r} is not among the evaluation metrics {sorted(m)}")
        vals = np.asarray(m[es.metric], np.float64).reshape(n_models)
        done = []
        for i, v in enumerate(vals):
            best = book["best"][i]
            if best is None or _better(v, best, es.mode):
                book["best"][i], book["bad_evals"][i] = float(v), 0
            else:
                book["bad_evals"][i] += 1
            hit = es.target is not None and (v <= es.target if es.mode == "min" else v >= es.target)
            if hit and book["solved_step"][i] is None:
                book["solved_step"][i] = step
            # A model is done while it meets the target now (not merely once: a model that met
            # it and drifted off keeps training) or once its patience has run out.
            done.append(hit or (es.patience is not None and book["bad_evals"][i] >= es.patience))
            book["meets_target"][i] = bool(hit)
        return all(done)

    def save(s):
        if ckpt is not None:
            if log is not None:  # the log must never lag behind a checkpoint
                log.flush()
                os.fsync(log.fileno())
            ckpt.save(s, {"book": book, "config": config})

    # ------------------------------------------------------------------ the loop
    chunk = _chunk_size(steps_per_call, eval_every, checkpoint_every)
    stop_reason = "steps"
    step = start
    try:
        while step < steps:
            n = min(chunk - step % chunk, steps - step)
            state, metrics = run_jit(state, n)
            metrics = jax.device_get(metrics)  # leaves [n] or [models, n]
            for j in range(n):
                row = {k: (v[:, j] if multi else v[j]) for k, v in metrics.items()}
                write({"step": step + j + 1, "split": "train", **{k: np.asarray(v).tolist() for k, v in row.items()}})
                sk = np.asarray(row["skipped"], np.float64).reshape(n_models)
                for i in range(n_models):
                    book["skipped"][i] += int(sk[i])
                    book["nonfinite_run"][i] = book["nonfinite_run"][i] + 1 if sk[i] else 0
            step += n
            if bar is not None:
                bar.update(n)
                postfix["loss"] = float(np.mean(metrics["loss"][..., -1]))
                bar.set_postfix(postfix, refresh=False)
            stop = False
            if eval_jit is not None and eval_every and step % eval_every == 0:
                stop = do_eval(state)
                if stop:
                    stop_reason = "target" if all(book["meets_target"]) else "patience"
            if all(r >= max_nonfinite for r in book["nonfinite_run"]):
                stop, stop_reason = True, "diverged"
            if stop:
                break
            if checkpoint_every and step % checkpoint_every == 0 and step < steps:
                save(state)
        if eval_jit is not None and (not book["history"] or book["history"][-1]["step"] != step):
            if do_eval(state) and stop_reason == "steps":
                stop_reason = "target" if all(book["meets_target"]) else "patience"
        save(state)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()

    pick = (lambda v: v) if multi else (lambda v: v[0])
    return FitResult(
        state=state,
        history=book["history"],
        stop_reason=stop_reason,
        solved_step=pick(book["solved_step"]),
        skipped_steps=pick(book["skipped"]),
        wall_time=time.perf_counter() - t0,
    )
