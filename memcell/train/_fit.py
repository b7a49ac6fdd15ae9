"""``fit``: the argument checks, the run's set-up (resume, log, progress bar) and its result.
The loop itself is ``memcell.train._loop.run_loop``."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, NamedTuple

from memcell._checks import check_bool
from memcell.train._args import (
    check_callable,
    check_config,
    check_count,
    check_optional_callable,
    check_path,
)
from memcell.train._checkpoint import Checkpointer
from memcell.train._early_stopping import EarlyStopping
from memcell.train._keep_best import KeepBest, keeping_best
from memcell.train._loop import (
    Record,
    Run,
    chunk_size,
    compiled_eval,
    compiled_run,
    run_loop,
)
from memcell.train._metrics_log import MetricsLog
from memcell.train._placement import placement_of
from memcell.train._state import TrainState, check_state, current_step
from memcell.train._stream import sampled_batch
from memcell.types import Key, PyTree


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
      best_params: with ``keep_best``, each model's params at its best evaluation (stacked
        like ``state.params``); None without it.
      best_step: with ``keep_best``, per model, the step of that evaluation (None where no
        evaluation was finite); an int for one model, a list for several.
      best_value: with ``keep_best``, per model, the metric's best value (None where none).
    """

    state: TrainState
    history: list
    stop_reason: str
    solved_step: Any
    skipped_steps: Any
    wall_time: float
    best_params: Any = None
    best_step: Any = None
    best_value: Any = None


def _check_args(train_step, state, sample, steps, eval_fn, eval_every, early_stopping, checkpoint_dir,
                checkpoint_every, resume, config, log_path, progress, steps_per_call, max_nonfinite):
    """``fit``'s arguments, checked; returns the config as stored and the number of vmapped models (None: one)."""
    check_count("steps", steps, 1)
    check_count("eval_every", eval_every)
    check_count("checkpoint_every", checkpoint_every)
    check_count("steps_per_call", steps_per_call, 1)
    check_count("max_nonfinite", max_nonfinite, 1)
    check_callable("train_step", train_step, "(state, batch) -> (state, metrics), e.g. from make_train_step")
    n_models = check_state(state)
    check_callable("sample", sample, "key -> batch" if state.stream is None else "(key, cursor) -> (batch, cursor)")
    sampled_batch(sample, state, n_models)  # the sampler's kind matches the state's (a stream or not)
    check_optional_callable("eval_fn", eval_fn, "params -> metrics")
    if eval_every and eval_fn is None:
        raise ValueError(f"eval_every > 0 needs an eval_fn, got eval_every={eval_every} and eval_fn=None")
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be a memcell.train.EarlyStopping, got {type(early_stopping).__name__}")
        if eval_fn is None:
            raise ValueError("early_stopping needs an eval_fn to judge, got eval_fn=None")
        early_stopping.check("early_stopping")
    check_path("checkpoint_dir", checkpoint_dir)
    check_path("log_path", log_path)
    if checkpoint_every and checkpoint_dir is None:
        raise ValueError(f"checkpoint_every > 0 needs a checkpoint_dir, got checkpoint_every={checkpoint_every} "
                         "and checkpoint_dir=None")
    check_bool("resume", resume)
    check_bool("progress", progress)
    return check_config(config), n_models


def _resume(checkpointer: Checkpointer | None, state: TrainState, config, resume: bool, n_models: int):
    """The state and record to start from: fresh, or the latest checkpoint's with ``resume``."""
    if checkpointer is None or checkpointer.latest() is None:
        return state, Record.fresh(n_models)
    if not resume:
        raise ValueError(
            f"checkpoint_dir {checkpointer.dir} already holds checkpoints (latest step {checkpointer.latest()}); "
            "pass resume=True to continue from it, or choose an empty directory"
        )
    state, meta = checkpointer.restore(state, config)
    return state, Record.from_book(meta["book"], n_models)


_BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt} steps [{elapsed} elapsed, {remaining} left, {rate_fmt}{postfix}]"


def _progress_bar(progress: bool, steps: int, start: int):
    if not progress:
        return None
    from tqdm.auto import tqdm  # lazily: only the loop needs it

    # The time left in words, next to the time spent: a long run says up front how long it will take.
    return tqdm(total=steps, initial=start, dynamic_ncols=True, leave=True, unit="step", bar_format=_BAR)


def _result(state: TrainState, record: Record, stop_reason: str, multi: bool, wall_time: float,
            best=None) -> FitResult:
    pick = (lambda v: v) if multi else (lambda v: v[0])
    return FitResult(state=state, history=record.history, stop_reason=stop_reason,
                     solved_step=pick(list(record.stopping.solved_step)), skipped_steps=pick(record.skipped),
                     wall_time=wall_time, **({} if best is None else dict(zip(
                         ("best_params", "best_step", "best_value"), best.result()))))


def _check_keep_best(keep_best, eval_fn) -> None:
    """``keep_best`` is a ``KeepBest`` rule with evaluations to judge."""
    if keep_best is None:
        return
    if not isinstance(keep_best, KeepBest):
        raise TypeError(f"keep_best must be a memcell.train.KeepBest, got {type(keep_best).__name__}")
    keep_best.check("keep_best")
    if eval_fn is None:
        raise ValueError("keep_best needs an eval_fn to judge, got eval_fn=None")


def _check_keep_best_fresh(keep_best, checkpointer: Checkpointer | None, resume: bool) -> None:
    """A run that keeps the best cannot continue another: checkpoints hold no best params."""
    if keep_best is not None and resume and checkpointer is not None and checkpointer.latest() is not None:
        raise ValueError(f"keep_best cannot resume the run in {checkpointer.dir}: its checkpoints hold the "
                         "current params, not each model's best; start a fresh run, or resume without keep_best")


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
    mesh=None,
    keep_best: KeepBest | None = None,
) -> FitResult:
    """Trains until ``steps`` updates (or early stopping), logging, evaluating and checkpointing.

    Args:
      train_step: from ``make_train_step``.
      state: from ``init_state``, or ``init_states`` to train several models in one jit with
        ``jax.vmap`` (each with its own key, data stream and learning rate).
      sample: ``sample(key) -> batch``, a pure, jit-able function; the key of step ``t`` is
        derived from ``(state.key, t)``, so data is seeded, deterministic and the same after a
        resume. Tasks provide one (``task.sample``). For truncated BPTT (``state.stream`` a
        ``StreamState`` and ``train_step`` from ``make_stream_train_step``) it is stateful,
        ``sample(key, cursor) -> (batch, cursor)``, with the cursor kept in ``state.stream``
        (and in its checkpoints, with the carries, so a resumed run continues the same streams).
      steps: total number of updates (counted from step 0, not from a resumed step), >= 1.
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
      mesh: a ``jax.sharding.Mesh`` with axes among ``("data", "seeds")`` (``make_mesh``):
        each step's batch is split over ``data`` (params and optimizer state replicated, the
        gradient reduced by the compiler), the models of ``init_states`` over ``seeds``. In a
        multi-host run every process calls ``fit`` alike, computes only its own shards, and
        only process 0 writes the log and the progress bar. None: one device, as without it.
      keep_best: a ``KeepBest`` rule: each model's params at its best evaluation are kept
        (``FitResult.best_params``, ``best_step``, ``best_value``), and with its patience a model
        stops counting once it has run out of it (the run stops when every model has). Needs
        ``eval_fn``; a run that resumes from a checkpoint cannot keep the best of its first part.

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
    config, n = _check_args(train_step, state, sample, steps, eval_fn, eval_every, early_stopping, checkpoint_dir,
                            checkpoint_every, resume, config, log_path, progress, steps_per_call, max_nonfinite)
    _check_keep_best(keep_best, eval_fn)
    placement = placement_of(mesh)
    placement.check(n, sample, state)
    state = placement.place(state, n is not None)  # so a restored checkpoint takes this layout too
    if not placement.writes:  # on a multi-host mesh, process 0 alone writes the log and shows progress
        log_path, progress = None, False
    t0 = time.perf_counter()
    checkpointer = None if checkpoint_dir is None else Checkpointer(checkpoint_dir)
    _check_keep_best_fresh(keep_best, checkpointer, resume)
    state, record = _resume(checkpointer, state, config, resume, n or 1)
    start = current_step(state)
    run = Run(
        run_jit=compiled_run(train_step, sample, n is not None, placement),
        eval_jit=None if eval_fn is None else compiled_eval(eval_fn, n is not None, placement),
        multi=n is not None, record=record, log=MetricsLog(log_path, start), bar=_progress_bar(progress, steps, start),
        checkpointer=checkpointer, early_stopping=early_stopping, config=config,
    )
    if keep_best is not None:
        run = keeping_best(run, keep_best, state.params, n or 1, n is not None)
    try:
        state, stop_reason = run_loop(run, state, start=start, steps=steps, eval_every=eval_every,
                                      chunk=chunk_size(steps_per_call, eval_every, checkpoint_every),
                                      checkpoint_every=checkpoint_every, max_nonfinite=max_nonfinite)
    finally:
        run.close()
    return _result(state, record, stop_reason, n is not None, time.perf_counter() - t0,
                   getattr(run, "best", None))
