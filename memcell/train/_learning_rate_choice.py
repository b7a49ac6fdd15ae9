"""Choosing a learning rate on validation: the models of a sweep, and the rate their validation values choose.

A sweep trains every (learning rate, seed) pair together, vmapped: ``sweep_models`` lays the
models out lr-major (the seeds of the first rate, then those of the second, ...), the same seeds
at every rate so that each rate starts from the same inits and data. ``choose_learning_rate``
reads one validation value a model in that order and chooses the rate with the best mean over
its seeds.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import numpy as np

from memcell._checks import check_choice
from memcell.types import PyTree


class LearningRateChoice(NamedTuple):
    """What ``choose_learning_rate`` chose.

    Attributes:
      learning_rate: the chosen rate.
      index: its index in the swept rates.
      models: int ``[seeds]``: the chosen rate's models in the lr-major stack of the sweep.
      means: ``{rate: mean validation value over its seeds}``, a non-finite seed counted as the
        worst value (so a diverged seed sinks its rate), in the order swept.
    """

    learning_rate: float
    index: int
    models: np.ndarray
    means: dict

    def take(self, tree: PyTree) -> PyTree:
        """The chosen rate's models of a pytree stacked over the sweep's models (params, metrics)."""
        return jax.tree.map(lambda x: x[self.models], tree)


def _rates(learning_rates) -> list[float]:
    try:
        rates = [float(r) for r in learning_rates]
    except (TypeError, ValueError):
        raise TypeError(f"learning_rates must be a sequence of numbers, got {learning_rates!r}") from None
    if not rates or not all(np.isfinite(r) and r > 0 for r in rates):
        raise ValueError(f"learning_rates must be one or more positive finite numbers, got {rates}")
    return rates


def sweep_models(learning_rates: Sequence[float], seeds: Sequence[int]) -> tuple[list[int], list[float]]:
    """The models of a learning-rate sweep, lr-major: each model's seed and its rate.

    Args:
      learning_rates: the rates swept.
      seeds: the seeds trained at every rate.

    Returns:
      ``(seeds, rates)``, two lists of ``len(learning_rates) * len(seeds)``, for
      ``init_states(seeds, ..., learning_rates=rates)`` or ``tasks.train_task(seeds=...,
      learning_rate=...)``.

    Example:
      >>> from memcell import train
      >>> train.sweep_models([1e-3, 1e-2], [0, 1])
      ([0, 1, 0, 1], [0.001, 0.001, 0.01, 0.01])
    """
    rates = _rates(learning_rates)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    return [s for _ in rates for s in seeds], [r for r in rates for _ in seeds]


def choose_learning_rate(values, learning_rates: Sequence[float], *, mode: str = "min") -> LearningRateChoice:
    """The learning rate whose seeds have the best mean validation value.

    Args:
      values: one validation value a model of the sweep, lr-major (``sweep_models``' order):
        ``[len(learning_rates) * seeds]`` or ``[len(learning_rates), seeds]``. A non-finite
        value (a diverged model) counts as the worst possible, so it sinks its rate.
      learning_rates: the rates swept, in the order of ``values``.
      mode: ``"min"`` or ``"max"``: which way is better. A tie goes to the rate listed first.

    Returns:
      A ``LearningRateChoice``.

    Example:
      >>> from memcell import train
      >>> valid_loss = [0.5, 0.7, 0.4, 0.9, 0.3, float("nan")]  # rates 1e-3, 1e-2, 1e-1 x 2 seeds
      >>> choice = train.choose_learning_rate(valid_loss, [1e-3, 1e-2, 1e-1])
      >>> choice.learning_rate, choice.models.tolist()    # 1e-1 has the best seed, but a NaN one
      (0.001, [0, 1])
    """
    rates = _rates(learning_rates)
    check_choice("mode", mode, ("min", "max"))
    try:
        v = np.asarray(values, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"values must be numbers, one a model, got {values!r}") from None
    if v.size == 0 or v.size % len(rates) or (v.ndim == 2 and v.shape[0] != len(rates)) or v.ndim > 2:
        raise ValueError(f"values must hold one value a model, lr-major: [{len(rates)} * seeds] or "
                         f"[{len(rates)}, seeds] for {len(rates)} learning rates, got shape {v.shape}")
    v = v.reshape(len(rates), -1)
    worst = np.inf if mode == "min" else -np.inf
    means = np.where(np.isfinite(v), v, worst).mean(axis=1)
    k = int(np.argmin(means) if mode == "min" else np.argmax(means))
    n = v.shape[1]
    return LearningRateChoice(rates[k], k, np.arange(k * n, (k + 1) * n), dict(zip(rates, means.tolist())))
