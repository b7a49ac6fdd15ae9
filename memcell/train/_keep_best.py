"""``KeepBest``: each model's params at its best evaluation, kept by ``fit`` while it trains on.

Early stopping of vmapped models cannot stop one model alone: they share one jit. What it can
do is keep, for each model, the params of its best evaluation and stop counting a model's later
evaluations once it has run out of patience; the run then stops when every model has.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from memcell._checks import check_choice, check_positive_int
from memcell.train._loop import Run
from memcell.train._state import current_step
from memcell.types import PyTree


class KeepBest(NamedTuple):
    """Which params ``fit`` keeps for each model: those of its best evaluation.

    Attributes:
      metric: the evaluation metric that judges (a key of ``eval_fn``'s metrics).
      mode: ``"min"`` or ``"max"``: which way is better.
      patience: a model whose metric has not improved for this many evaluations is done: its
        kept params stay those of its best evaluation, whatever it does later (vmapped with
        others, it trains on with them), and ``fit`` stops once every model is done
        (``stop_reason="patience"``). None: every evaluation counts, up to ``steps``.

    A non-finite value is never the best; a tie keeps the earlier evaluation. A model with no
    finite evaluation keeps its initial params, with best step None.

    Example:
      >>> from memcell import train
      >>> train.KeepBest("loss", "min", patience=6).check()
      KeepBest(metric='loss', mode='min', patience=6)
    """

    metric: str = "loss"
    mode: str = "min"
    patience: int | None = None

    def check(self, name: str = "keep_best") -> KeepBest:
        """The rule itself if its fields are valid; errors name them as ``{name}.field``."""
        if not isinstance(self.metric, str):
            raise TypeError(f"{name}.metric must be a str (a key of the evaluation metrics), got {self.metric!r}")
        check_choice(f"{name}.mode", self.mode, ("min", "max"))
        if self.patience is not None:
            check_positive_int(f"{name}.patience", self.patience)
        return self


@dataclasses.dataclass
class Best:
    """What ``fit`` has kept so far: one entry a model (arrays stacked like the state's params)."""

    rule: KeepBest
    multi: bool
    params: PyTree
    value: np.ndarray  # float64 [n]: the best value (+-inf before a finite one)
    step: list  # int | None a model: the step of that evaluation
    bad: np.ndarray  # int [n]: evaluations since the best one

    @classmethod
    def start(cls, rule: KeepBest, params: PyTree, n_models: int, multi: bool) -> Best:
        worst = np.inf if rule.mode == "min" else -np.inf
        return cls(rule, multi, params, np.full(n_models, worst), [None] * n_models, np.zeros(n_models, np.int64))

    def update(self, params: PyTree, metrics: dict, step: int) -> bool:
        """Keeps each model's params where this evaluation beats its best; whether every model is done."""
        if self.rule.metric not in metrics:
            raise ValueError(f"keep_best.metric {self.rule.metric!r} is not among the evaluation metrics "
                             f"{sorted(k for k in metrics if k != 'step')}")
        v = np.asarray(metrics[self.rule.metric], np.float64).reshape(len(self.value))
        patience = self.rule.patience
        active = np.ones(len(v), bool) if patience is None else self.bad < patience
        lower = self.rule.mode == "min"
        better = active & np.isfinite(v) & ((v < self.value) if lower else (v > self.value))
        if better.any():
            if self.multi:
                mask = jnp.asarray(better)
                pick = lambda old, new: jnp.where(mask.reshape(mask.shape + (1,) * (new.ndim - 1)), new, old)
                self.params = jax.tree.map(pick, self.params, params)
            else:
                self.params = params
        self.value = np.where(better, v, self.value)
        self.step = [step if b else s for b, s in zip(better, self.step)]
        self.bad = np.where(better, 0, self.bad + 1)
        return patience is not None and bool(np.all(self.bad >= patience))

    def result(self) -> tuple:
        """``(params, step, value)`` as ``FitResult`` holds them (a list a model when vmapped)."""
        value = [float(x) if np.isfinite(x) else None for x in self.value]
        pick = (lambda v: v) if self.multi else (lambda v: v[0])
        return self.params, pick(list(self.step)), pick(value)


@dataclasses.dataclass
class KeepBestRun(Run):
    """``Run`` that also keeps each model's best params at every evaluation."""

    best: Best | None = None

    def evaluate(self, state) -> bool:
        done = super().evaluate(state)
        return self.best.update(state.params, self.record.history[-1], current_step(state)) or done


def keeping_best(run: Run, rule: KeepBest, params: PyTree, n_models: int, multi: bool) -> KeepBestRun:
    """``run`` as a ``KeepBestRun`` that keeps the best params under ``rule``, starting from ``params``."""
    fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(run)}
    return KeepBestRun(**fields, best=Best.start(rule, params, n_models, multi))
