"""What ``train_task`` returns: ``TaskResult``, a frozen dataclass with named fields, and its JSON form."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from memcell import train as _train
from memcell.tasks._base import Task, beat_threshold, beats


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """The result of ``train_task``: the final test metrics of every seed against the task's baselines.

    Attributes:
      task: the task's name.
      seeds: the seed of each model, in the order of every per-seed list below.
      steps: the step of the final evaluation (the last update made).
      metric: the task's stated metric (``Task.metric``); ``mode``: ``"min"`` or ``"max"``, which
        way it is better.
      final: ``{metric: [value per seed]}``, every metric of the final test evaluation.
      summary: ``{metric: {"mean", "std", "min", "max", "n"}}`` over the seeds (``memcell.train.summarize``).
      baselines: ``{name: {metric: value}}``, the task's baselines.
      beat_thresholds: ``{name: value}``: what ``metric`` must pass to beat each baseline that has
        it (``memcell.tasks.beat_threshold``: 0.9 x the baseline where lower is better).
      beats: ``{name: count}``: how many seeds beat each of those baselines (``memcell.tasks.beats``).
      solved_threshold: the task's ``solved`` threshold (None where it has none); ``n_solved``:
        how many seeds reach it at the end (None without a threshold).
      solved_step: per seed, the first evaluated step at which early stopping's target was met
        (``memcell.train.FitResult.solved_step``).
      skipped_steps: per seed, updates skipped for a non-finite gradient.
      history: one dict per evaluation: ``step`` and every metric, one value a seed.
      stop_reason: ``"steps"``, ``"target"``, ``"patience"`` or ``"diverged"``.
      wall_time: seconds the training took.
      state: the final ``memcell.train.TrainState``, stacked over the seeds (not in ``to_dict``).
    """

    task: str
    seeds: list
    steps: int
    metric: str
    mode: str
    final: dict
    summary: dict
    baselines: dict
    beat_thresholds: dict
    beats: dict
    solved_threshold: float | None
    n_solved: int | None
    solved_step: Any
    skipped_steps: Any
    history: list
    stop_reason: str
    wall_time: float
    state: _train.TrainState = dataclasses.field(repr=False)

    def to_dict(self, *, history: bool = True) -> dict:
        """The JSON-able form (every field but ``state``; without ``history`` when ``history=False``),
        as ``memcell train`` writes it to ``report.json`` and prints it with ``--json``."""
        skip = {"state"} | (set() if history else {"history"})
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def __getitem__(self, key):
        raise TypeError(f"TaskResult is a dataclass, not a dict: read result.{key} (or result.to_dict()[{key!r}])"
                        if isinstance(key, str) and key in {f.name for f in dataclasses.fields(self)}
                        else f"TaskResult is a dataclass, not a dict: got the key {key!r}")


def task_result(task: Task, seeds: list[int], result: _train.FitResult) -> TaskResult:
    """``train_task``'s result from ``fit``'s: the final test metrics per seed, their summary, and the
    baselines beaten by the margin of ``memcell.tasks.beats``."""
    final = result.history[-1]
    metric_names = [k for k in final if k != "step"]
    solved = None
    if task.solved is not None:
        vals = np.asarray(final[task.metric])
        solved = int(np.sum(vals <= task.solved if task.mode == "min" else vals >= task.solved))
    judged = [b for b in task.baselines if task.metric in task.baselines[b]]
    return TaskResult(
        task=task.name,
        seeds=seeds,
        steps=int(final["step"]),  # fit evaluates at its last step (read from the host, even multi-host)
        metric=task.metric,
        mode=task.mode,
        final={k: final[k] for k in metric_names},
        summary={k: _train.summarize(final[k]) for k in metric_names},
        baselines=task.baselines,
        beat_thresholds={b: beat_threshold(task, b) for b in judged},
        beats={b: sum(beats(task, v, b) for v in final[task.metric]) for b in judged},
        solved_threshold=task.solved,
        n_solved=solved,
        solved_step=result.solved_step,
        skipped_steps=result.skipped_steps,
        history=result.history,
        stop_reason=result.stop_reason,
        wall_time=result.wall_time,
        state=result.state,
    )
