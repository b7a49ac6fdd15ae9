"""``EarlyStopping``: the rule, and its decision at each evaluation for every model trained together."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from memcell._checks import check_choice, check_positive_int
from memcell.train._args import check_real


class StopProgress(NamedTuple):
    """Where each model stands against an ``EarlyStopping`` rule: one entry a model."""

    best: tuple  # float | None: the best value so far (None before the first evaluation)
    bad_evals: tuple  # int: evaluations since the best one
    meets_target: tuple  # bool: whether the last evaluation met the target
    solved_step: tuple  # int | None: the first evaluated step that met the target

    @classmethod
    def fresh(cls, n_models: int) -> StopProgress:
        """The progress of ``n_models`` models before their first evaluation."""
        n = check_positive_int("n_models", n_models)
        return cls((None,) * n, (0,) * n, (False,) * n, (None,) * n)



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

    Example:
      >>> from memcell import train
      >>> rule = train.EarlyStopping("loss", "min", target=0.1, patience=2)
      >>> progress = rule.init(n_models=1)
      >>> progress, done = rule.update(progress, {"loss": 0.5}, step=10)
      >>> done, progress.best
      (False, (0.5,))
      >>> progress, done = rule.update(progress, {"loss": 0.05}, step=20)
      >>> done, progress.solved_step
      (True, (20,))
    """

    metric: str = "loss"
    mode: str = "min"
    target: float | None = None
    patience: int | None = None

    def check(self, name: str = "early_stopping") -> EarlyStopping:
        """The rule itself if its fields are valid; errors name them as ``{name}.field``."""
        if not isinstance(self.metric, str):
            raise TypeError(f"{name}.metric must be a str (a key of the evaluation metrics), got {self.metric!r}")
        check_choice(f"{name}.mode", self.mode, ("min", "max"))
        if self.target is not None:
            check_real(f"{name}.target", self.target)
        if self.patience is not None:
            check_positive_int(f"{name}.patience", self.patience)
        if self.target is None and self.patience is None:
            raise ValueError(f"{name} needs a target or a patience, got neither")
        return self

    def init(self, n_models: int = 1) -> StopProgress:
        """The progress of ``n_models`` models before their first evaluation."""
        return StopProgress.fresh(n_models)

    def improves(self, value, best) -> bool:
        """Whether ``value`` is better than ``best`` (None: nothing yet)."""
        return best is None or (value < best if self.mode == "min" else value > best)

    def meets_target(self, value) -> bool:
        return self.target is not None and bool(value <= self.target if self.mode == "min" else value >= self.target)

    def update(self, progress: StopProgress, metrics: dict, step: int) -> tuple[StopProgress, bool]:
        """Judges one evaluation of every model.

        Args:
          progress: where each model stood before this evaluation.
          metrics: the evaluation metrics; ``metrics[self.metric]`` holds one value a model.
          step: the step evaluated.

        Returns:
          ``(progress, done)``: the new progress, and whether every model now meets the
          target or has run out of patience (a model that met the target and drifted off
          keeps training).
        """
        if self.metric not in metrics:
            raise ValueError(f"early_stopping.metric {self.metric!r} is not among the evaluation metrics {sorted(metrics)}")
        values = np.asarray(metrics[self.metric], np.float64).reshape(len(progress.best))
        rows, done = [], []
        for v, best, bad, solved in zip(values, progress.best, progress.bad_evals, progress.solved_step):
            best, bad = (float(v), 0) if self.improves(v, best) else (best, bad + 1)
            hit = self.meets_target(v)
            if hit and solved is None:
                solved = step
            rows.append((best, bad, hit, solved))
            done.append(hit or (self.patience is not None and bad >= self.patience))
        return StopProgress(*map(tuple, zip(*rows))), all(done)
