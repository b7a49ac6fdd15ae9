"""``train_task``, the loop the CLI and the experiments run, and the initial states it starts
from (``initial_states``, ``with_stream``), which ``memcell flow`` rebuilds. Its result is a
``TaskResult`` (``_result``)."""

from __future__ import annotations

import pathlib
from typing import Sequence as SequenceOf

import jax
import jax.numpy as jnp
import numpy as np
import optax

from memcell import train as _train
from memcell.tasks._base import Model, Task, eval_fn, gradient_flow_fn, loss_fn
from memcell.tasks._result import TaskResult, task_result
from memcell.tasks._streams import initial_carry, stream_eval_fn, stream_loss_fn, stream_sampler
from memcell.types import Array


def train_task(
    task: Task,
    model: Model,
    *,
    seeds: SequenceOf[int] = (0,),
    steps: int = 1000,
    batch_size: int = 32,
    optimizer: optax.GradientTransformation | str = "adam",
    learning_rate: float | SequenceOf[float] = 1e-3,
    clip_norm: float | None = 1.0,
    warmup_steps: int = 0,
    decay: bool = False,
    eval_every: int = 0,
    stop_at_solved: bool = False,
    patience: int | None = None,
    out_dir=None,
    checkpoint_every: int = 0,
    resume: bool = False,
    config: dict | None = None,
    progress: bool = False,
    steps_per_call: int = 50,
    gradient_flow: bool = False,
    mesh=None,
    tbptt: bool = False,
) -> TaskResult:
    """Trains ``model`` on ``task`` for every seed at once (``jax.vmap``) and reports against the baselines.

    Args:
      task, model: the task and a ``sequence_model`` whose readout matches ``task.readout``.
      seeds: one independent model a seed (params, data stream).
      steps, batch_size: updates and sequences per update.
      optimizer: an ``optax.GradientTransformation`` (used as given: its own learning rate,
        clipping and schedule), or the name of one for ``memcell.train.optimizer`` (``"adam"``,
        ``"adamw"``, ``"sgd"``, ``"rmsprop"``), built from the four options below.
      learning_rate: one peak rate for all seeds, or one per seed (vmapped too). With a
        transformation, only a per-seed list may be given, and the transformation's state must
        hold an injected learning rate (``memcell.train.optimizer``, ``optax.inject_hyperparams``).
      clip_norm, warmup_steps: as for ``memcell.train.optimizer``; ``decay``: cosine decay to 0 at
        ``steps``. With a transformation they must keep their defaults (it has its own).
      eval_every: evaluate on the test set every this many steps (0: only at the end).
      stop_at_solved: stop once every seed reaches ``task.solved`` (needs ``eval_every``).
      patience: stop after this many evaluations without improvement of ``task.metric``.
      out_dir: if set, ``metrics.jsonl`` and ``checkpoints/`` go there.
      checkpoint_every, resume, config, progress, steps_per_call: as for ``memcell.train.fit``.
      gradient_flow: log how far the loss gradient reaches back in time at every evaluation
        (``gradient_flow_fn``; single-cell models).
      mesh: a ``jax.sharding.Mesh`` for ``memcell.train.fit`` (the batch over ``data``, the
        seeds over ``seeds``; ``memcell.train.make_mesh``); None: one device.
      tbptt: truncated backpropagation through time over ``task.stream``: each of the
        ``batch_size`` rows reads its own contiguous part of the training stream, window after
        window of ``task.info["length"]``, starting from the carry the last window ended with
        (gradient stopped there; restarted where a document begins); evaluation reads the whole
        validation stream with the carry kept (``stream_eval_fn``). Tasks without streams refuse it.

    Returns:
      A ``TaskResult``: ``final`` (per-seed test metrics), ``summary`` (mean/std/min/max over
      seeds of each metric), ``baselines``, ``beats`` (per baseline: how many seeds beat it on
      ``task.metric`` by the margin of ``memcell.tasks.beats``), ``solved_step``, ``history``,
      ``stop_reason``, ``wall_time``, ``state`` (the final vmapped ``TrainState``) and more;
      ``to_dict()`` is its JSON form.

    Example:
      >>> import memcell, optax
      >>> from memcell import tasks
      >>> task = tasks.adding(5, n_test=16)
      >>> model = tasks.sequence_model(memcell.gru(4), task.output_size, task.readout)
      >>> result = tasks.train_task(task, model, seeds=[0, 1], steps=5, optimizer=optax.sgd(1e-2))
      >>> result.steps, len(result.final["mse"]), result.to_dict()["summary"]["mse"]["n"]
      (5, 2, 2)
    """
    seeds = [int(s) for s in seeds]
    tx, states, sample = _start(task, model, seeds=seeds, steps=steps, batch_size=batch_size,
                                optimizer=optimizer, learning_rate=learning_rate, clip_norm=clip_norm,
                                warmup_steps=warmup_steps, decay=decay, tbptt=tbptt)
    if tbptt:
        step, evaluate = _tbptt(task, model, tx, gradient_flow)
    else:
        step = _train.make_train_step(loss_fn(task, model), tx)
        sample = lambda key: task.sample(key, batch_size)
        evaluate = eval_fn(task, model, gradient_flow=gradient_flow)
    es = _early_stopping(task, stop_at_solved, patience)
    out = None if out_dir is None else pathlib.Path(out_dir)
    result = _train.fit(
        step, states, sample, steps=steps, eval_fn=evaluate,
        eval_every=eval_every,
        early_stopping=es,
        checkpoint_dir=None if out is None else out / "checkpoints",
        checkpoint_every=checkpoint_every, resume=resume, config=config,
        log_path=None if out is None else out / "metrics.jsonl",
        progress=progress, steps_per_call=steps_per_call, mesh=mesh,
    )
    return task_result(task, seeds, result)


def initial_states(
    task: Task,
    model: Model,
    *,
    seeds: SequenceOf[int] = (0,),
    steps: int = 1000,
    batch_size: int = 32,
    optimizer: optax.GradientTransformation | str = "adam",
    learning_rate: float | SequenceOf[float] = 1e-3,
    clip_norm: float | None = 1.0,
    warmup_steps: int = 0,
    decay: bool = False,
    tbptt: bool = False,
) -> tuple[optax.GradientTransformation, _train.TrainState]:
    """The optimizer and the states ``train_task`` starts from, for the same arguments.

    ``train_task`` builds its start with this very code, so a run's initial state can be made
    again from its arguments alone (``memcell flow`` measures the params a run started from).

    Args:
      task, model: the task and a ``sequence_model`` whose readout matches ``task.readout``.
      seeds: one model a seed, stacked on a leading axis (``memcell.train.init_states``).
      steps: the run's updates (the end of the cosine decay, with ``decay``).
      batch_size: rows of the streams (only read with ``tbptt``).
      optimizer, learning_rate, clip_norm, warmup_steps, decay, tbptt: as for ``train_task``.

    Returns:
      ``(tx, states)``: the optimizer (``optimizer`` itself, or the ``memcell.train.optimizer``
      its name and options build) and the stacked ``TrainState``s, with
      the stream state (``with_stream``) for ``tbptt``.

    Example:
      >>> import memcell
      >>> from memcell import tasks
      >>> task = tasks.make("adding", length=8)
      >>> model = tasks.sequence_model(memcell.lstm(4), task.output_size, task.readout)
      >>> tx, states = tasks.initial_states(task, model, seeds=[0, 1], steps=100, decay=True)
      >>> states.step.tolist(), states.stream is None  # two models at step 0; no streams without tbptt
      ([0, 0], True)
    """
    tx, states, _ = _start(task, model, seeds=seeds, steps=steps, batch_size=batch_size,
                           optimizer=optimizer, learning_rate=learning_rate, clip_norm=clip_norm,
                           warmup_steps=warmup_steps, decay=decay, tbptt=tbptt)
    return tx, states


def _start(task: Task, model: Model, *, seeds, steps, batch_size, optimizer, learning_rate, clip_norm,
           warmup_steps, decay, tbptt):
    """``initial_states`` and, for ``tbptt``, the stream sampler whose first cursor the states hold
    (built once for both); None without ``tbptt``."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    if model.readout != task.readout:
        raise ValueError(f"the model's readout must be {task.readout!r} for task {task.name!r}")
    tx, lrs = _transformation(optimizer, learning_rate, clip_norm, warmup_steps, decay, steps)
    if tbptt and task.stream is None:
        raise ValueError(f"tbptt needs a task with long streams (char_lm), got task {task.name!r}")
    states = _train.init_states(seeds, lambda k: model.init(k, task.input_size), tx, learning_rates=lrs)
    sample = None
    if tbptt:
        sample, cursor = stream_sampler(task.stream, batch_size, task.info["length"])
        states = with_stream(task, model, states, batch_size, cursor=cursor)
    return tx, states, sample


# The convenience options of train_task and their defaults: a transformation brings its own.
_CONVENIENCE = {"learning_rate": 1e-3, "clip_norm": 1.0, "warmup_steps": 0, "decay": False}


def _transformation(optimizer, learning_rate, clip_norm, warmup_steps, decay, steps):
    """``(tx, per-seed learning rates or None)`` of ``train_task``'s optimizer arguments: the
    transformation given, or ``memcell.train.optimizer`` built from a name and the options."""
    lrs = None if isinstance(learning_rate, (int, float)) else [float(x) for x in learning_rate]
    if isinstance(optimizer, optax.GradientTransformation):
        given = {"learning_rate": learning_rate if lrs is None else _CONVENIENCE["learning_rate"],
                 "clip_norm": clip_norm, "warmup_steps": warmup_steps, "decay": decay}
        changed = [f"{k}={v!r}" for k, v in given.items() if v != _CONVENIENCE[k]]
        if changed:
            raise ValueError(f"optimizer is an optax.GradientTransformation, which brings its own learning rate, "
                             f"clipping and schedule: {', '.join(changed)} applies to an optimizer given by name "
                             "(a per-seed list of learning rates is the one option a transformation takes)")
        return optimizer, lrs
    if not isinstance(optimizer, str):
        raise TypeError("optimizer must be an optax.GradientTransformation or the name of one for "
                        f"memcell.train.optimizer ('adam', ...), got {type(optimizer).__name__}")
    peak = float(learning_rate) if lrs is None else lrs[0]
    tx = _train.optimizer(peak, name=optimizer, clip_norm=clip_norm, warmup_steps=warmup_steps,
                          decay_steps=steps if decay else None)
    return tx, lrs


def with_stream(task: Task, model: Model, states: _train.TrainState, batch_size: int, *,
                cursor: Array | None = None) -> _train.TrainState:
    """``states`` (from ``init_states``) with the stream state ``train_task(..., tbptt=True)`` starts
    from: every row at its first position, zero carries. ``initial_states`` builds a truncated-BPTT
    run's initial state with it.

    Args:
      task: a task with long streams (``task.stream``: ``char_lm``).
      model: the task's ``sequence_model``.
      states: ``init_states``'s stacked states (a leading models axis).
      batch_size: rows of the stream, one a batch row.
      cursor: the first cursor, int ``[batch_size]``, where the caller already holds the
        ``stream_sampler`` (its second result); None: ``stream_sampler``'s.

    Returns:
      ``states`` with ``stream`` set to a ``StreamState(cursor [n, batch_size], carry)``.
    """
    if task.stream is None:
        raise ValueError(f"with_stream needs a task with long streams (char_lm), got task {task.name!r}")
    if cursor is None:
        _, cursor = stream_sampler(task.stream, batch_size, task.info["length"])
    elif jnp.shape(cursor) != (batch_size,):
        raise ValueError(f"cursor must have shape (batch_size,) = ({batch_size},), got {jnp.shape(cursor)}")
    carry = jax.vmap(lambda p: initial_carry(model, p, batch_size, task.input_size))(states.params)
    n = states.step.shape[0]
    return states._replace(stream=_train.StreamState(jnp.tile(cursor, (n, 1)), carry))


def _tbptt(task: Task, model: Model, tx, gradient_flow: bool):
    """``train_task``'s truncated-BPTT step and its evaluation over the whole validation stream
    (``_start`` builds the states with their streams and the stateful sampler)."""
    step = _train.make_stream_train_step(stream_loss_fn(task, model), tx)
    evaluate = stream_eval_fn(task, model)
    if gradient_flow:
        flow = gradient_flow_fn(task, model)
        evaluate = (lambda ev: lambda p: {**ev(p), **flow(p)})(evaluate)
    return step, evaluate


def _early_stopping(task: Task, stop_at_solved: bool, patience: int | None):
    """The ``EarlyStopping`` rule of ``train_task``'s options, or None for a fixed number of steps."""
    if not (stop_at_solved or patience is not None):
        return None
    target = task.solved if stop_at_solved else None
    if stop_at_solved and target is None:
        raise ValueError(f"task {task.name!r} has no 'solved' threshold, so stop_at_solved cannot be used")
    return _train.EarlyStopping(metric=task.metric, mode=task.mode, target=target, patience=patience)
