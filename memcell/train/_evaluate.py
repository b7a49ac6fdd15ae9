"""Evaluation over several batches, and the summary of per-seed results."""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np

from memcell.train._args import check_callable


def _batch_size(batch) -> int:
    leaves = jax.tree.leaves(batch)
    return int(leaves[0].shape[0]) if leaves and getattr(leaves[0], "ndim", 0) else 1


def evaluate(eval_step: Callable, params, batches: Iterable) -> dict:
    """Averages ``eval_step(params, batch)`` over batches, weighted by batch size (leading axis).

    Args:
      eval_step: ``(params, batch) -> dict`` of scalar metrics, e.g. from ``make_eval_step``.
      params: the model's params.
      batches: an iterable of batches (a list, a generator); one batch alone goes in a list.

    Returns:
      ``{metric: weighted mean}`` as NumPy float64 scalars.

    Example:
      >>> import jax.numpy as jnp
      >>> from memcell import train
      >>> ev = train.make_eval_step(lambda p, batch, key: (jnp.mean(batch), {}))
      >>> float(train.evaluate(ev, None, [jnp.zeros(3), jnp.ones(1)])["loss"])
      0.25
    """
    check_callable("eval_step", eval_step, "(params, batch) -> metrics")
    if isinstance(batches, dict) or not isinstance(batches, Iterable):
        raise TypeError(
            f"batches must be an iterable of batches (put one batch in a list), got {type(batches).__name__}"
        )
    total, weight = None, 0
    for batch in batches:
        m = jax.device_get(eval_step(params, batch))
        if not isinstance(m, dict):
            raise TypeError(f"eval_step must return a dict of metrics, got {type(m).__name__}")
        w = _batch_size(batch)
        scaled = {k: np.asarray(v, np.float64) * w for k, v in m.items()}
        total = scaled if total is None else {k: total[k] + scaled[k] for k in total}
        weight += w
    if total is None:
        raise ValueError("batches must yield at least one batch, got none")
    return {k: v / weight for k, v in total.items()}


def summarize(values) -> dict:
    """Mean, standard deviation (ddof=1 when n > 1), min, max and n of per-seed values.

    Example:
      >>> from memcell import train
      >>> train.summarize([1.0, 2.0, 3.0])
      {'mean': 2.0, 'std': 1.0, 'min': 1.0, 'max': 3.0, 'n': 3}
    """
    try:
        v = np.asarray(values, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"values must be real numbers, got {values!r}") from None
    if v.size == 0:
        raise ValueError("values must hold at least one number, got none")
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}
