"""Figures of a training run: its learning curves and its gradient flow through time.

``learning_curves(run_dir)`` draws what ``memcell train --out DIR`` logged (``metrics.jsonl``,
``report.json``); ``gradient_flow(path, lags, initial, trained)`` draws the loss gradient's
norm against the lag before the readout, for the initial and the trained params, as
``memcell flow RUN_DIR`` measures it (``memcell.tasks.gradient_norms_by_lag``).

Figures that compare several runs (the experiments' figures) come from ``memcell._comparison_plots``:
``evaluation_curves`` (mean over seeds with a min-max band), ``norms_by_lag`` (one colour a cell,
initial dashed and trained solid) and ``seed_values`` (mean ± std with each seed), every series of
a panel in a colour of its own (``distinct_colors``).

matplotlib is imported when a figure is drawn, with its non-interactive Agg backend, so the
figures are written on machines without a display and importing memcell stays fast.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Mapping, Sequence

import numpy as np

from memcell._comparison_plots import distinct_colors, evaluation_curves, norms_by_lag, seed_values

__all__ = ["distinct_colors", "evaluation_curves", "gradient_flow", "learning_curves", "norms_by_lag", "read_metrics",
           "seed_values"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; figures go to files only
    import matplotlib.pyplot as plt

    return plt


def _as_seeds(v) -> np.ndarray:
    """A logged value, one a seed (a list) or of a single model (a number), as a float ``[seeds]`` row."""
    return np.atleast_1d(np.asarray(v, np.float64))


def read_metrics(path: str | os.PathLike) -> dict:
    """The ``metrics.jsonl`` log of ``memcell.train.fit`` as arrays.

    Args:
      path: the log file (``log_path`` of ``fit``; ``metrics.jsonl`` in a CLI run's directory).

    Returns:
      ``{"train": {...}, "eval": {...}}``: for each split, ``"step"`` (``[n]``) and every metric
      logged in it as ``[n, models]`` (one column a seed; one column for a single model).
      A split that was never logged is ``{}``.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} is not a file (expected a metrics.jsonl log)")
    rows = {"train": [], "eval": []}
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # a last line cut by a kill
            continue
        if not isinstance(row, dict) or row.get("split") not in rows or "step" not in row:
            raise ValueError(f"{path}, line {i + 1}: expected a JSON object with 'step' and 'split' "
                             f"('train' or 'eval'), got {line[:80]!r}")
        rows[row["split"]].append(row)
    out = {}
    for split, rs in rows.items():
        if not rs:
            out[split] = {}
            continue
        names = [k for k in rs[0] if k not in ("step", "split")]
        cols = {"step": np.asarray([r["step"] for r in rs], np.int64)}
        for k in names:
            cols[k] = np.stack([_as_seeds(r.get(k, math.nan)) for r in rs])
        out[split] = cols
    return out


def _smooth(y: np.ndarray, w: int) -> np.ndarray:
    """Moving mean over ``w`` rows of ``y: [n, seeds]`` (``n - w + 1`` rows), NaNs left out."""
    finite = np.isfinite(y)
    kernel = np.ones(w)
    num = np.stack([np.convolve(np.where(f, c, 0.0), kernel, "valid") for c, f in zip(y.T, finite.T)], 1)
    den = np.stack([np.convolve(f.astype(np.float64), kernel, "valid") for f in finite.T], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _loss_name(evals: dict) -> str | None:
    """The named metric that ``loss`` repeats (``mse``, ``xent``), so its baselines can be drawn."""
    if "loss" not in evals:
        return None
    for k, v in evals.items():
        if k not in ("loss", "step") and np.array_equal(v, evals["loss"], equal_nan=True):
            return k
    return None


def _hlines(ax, baselines: Mapping, key: str | None, colors) -> None:
    for (name, vals), color in zip(baselines.items(), colors):
        for k in ("loss", key) if key else ("loss",):
            if k in vals and vals[k] is not None and math.isfinite(vals[k]):
                ax.axhline(vals[k], color=color, ls="--", lw=1.2, label=f"{name} baseline ({vals[k]:.4g})")
                break


def _log_if_positive(ax, *arrays) -> None:
    vals = np.concatenate([np.ravel(a) for a in arrays if a is not None and np.size(a)] or [np.zeros(0)])
    vals = vals[np.isfinite(vals)]
    if vals.size and np.all(vals > 0) and vals.max() / vals.min() > 20:
        ax.set_yscale("log")


def learning_curves(
    run_dir: str | os.PathLike,
    *,
    path: str | os.PathLike | None = None,
    metric: str | None = None,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
    solved: float | None = None,
    seeds: Sequence[int] | None = None,
    title: str | None = None,
) -> pathlib.Path:
    """Draws a run's learning curves: train loss and the evaluation metric against steps.

    Left: the train loss of every step (thin) and its moving mean (thick), one colour a seed,
    with the evaluation loss as dots. Right: the task's metric at each evaluation, one line a
    seed, the task's baselines dashed and the solved threshold dotted. A y-axis spanning more
    than a factor 20 of positive values is logarithmic.

    Args:
      run_dir: a directory holding ``metrics.jsonl`` (``memcell train --out DIR``, or ``fit``'s
        ``log_path``) and, optionally, the run's ``report.json``.
      path: the PNG to write (default ``run_dir/learning_curves.png``).
      metric, baselines, solved, seeds: the task's metric, its baselines ``{name: {metric:
        value}}``, its solved threshold and the seed of each model; each defaults to what
        ``report.json`` holds, else to ``"loss"``, none, none and ``0, 1, ...``.
      title: the figure's title (default: the task and the cell, from ``report.json`` and
        ``config.json`` where present).

    Returns:
      The path of the PNG.

    Example:
      >>> import json, pathlib, tempfile
      >>> from memcell import plot
      >>> run = pathlib.Path(tempfile.mkdtemp())
      >>> rows = [{"step": s, "split": "train", "loss": [1 / s, 2 / s]} for s in range(1, 21)]
      >>> rows += [{"step": s, "split": "eval", "loss": [1 / s, 2 / s], "mse": [1 / s, 2 / s]} for s in (10, 20)]
      >>> _ = (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
      >>> png = plot.learning_curves(run, metric="mse", baselines={"mean": {"mse": 0.17}})
      >>> png.name, png.stat().st_size > 1000
      ('learning_curves.png', True)
    """
    run_dir = pathlib.Path(run_dir)
    logs = read_metrics(run_dir / "metrics.jsonl")
    train, evals = logs["train"], logs["eval"]
    report = _read_json(run_dir / "report.json")
    config = _read_json(run_dir / "config.json")
    metric = metric or report.get("metric") or "loss"
    baselines = dict(report.get("baselines") or {}) if baselines is None else dict(baselines)
    solved = report.get("solved_threshold") if solved is None else solved
    if title is None:
        what = [report.get("task") or config.get("task"), config.get("cell"),
                f"{config['hidden']} units" if config.get("hidden") else None]
        title = ", ".join(str(w) for w in what if w) or str(run_dir)
    n_models = next((v.shape[1] for s in (train, evals) for k, v in s.items() if k != "step"), 1)
    seeds = list(report.get("seeds") or range(n_models)) if seeds is None else list(seeds)

    plt = _pyplot()
    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.get_cmap("tab10").colors
    base_colors = ["0.35", "tab:brown", "tab:olive", "tab:pink", "tab:cyan"]
    if train and "loss" in train:
        steps, loss = train["step"], train["loss"]
        w = max(1, len(steps) // 50)
        for j in range(loss.shape[1]):
            c = colors[j % len(colors)]
            if w > 1:
                ax_l.plot(steps, loss[:, j], color=c, lw=0.5, alpha=0.3)
            ax_l.plot(steps[w - 1:], _smooth(loss[:, j:j + 1], w)[:, 0], color=c, lw=1.6,
                      label=f"seed {seeds[j] if j < len(seeds) else j}")
        ax_l.set_title("train loss" + (f" (thick: mean of {w} steps)" if w > 1 else ""), fontsize=10)
    if evals and "loss" in evals:
        for j in range(evals["loss"].shape[1]):
            ax_l.plot(evals["step"], evals["loss"][:, j], "o", ms=3.5, color=colors[j % len(colors)],
                      mec="k", mew=0.4, label="eval loss" if j == 0 else None)
    _hlines(ax_l, baselines, _loss_name(evals) if evals else None, base_colors)
    _log_if_positive(ax_l, train.get("loss"), evals.get("loss"))
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("loss")

    if evals and metric in evals:
        for j in range(evals[metric].shape[1]):
            ax_m.plot(evals["step"], evals[metric][:, j], "-o", ms=3.5, lw=1.4, color=colors[j % len(colors)],
                      label=f"seed {seeds[j] if j < len(seeds) else j}")
        ax_m.set_title(f"evaluation {metric}", fontsize=10)
    else:
        ax_m.text(0.5, 0.5, f"no evaluation of {metric!r} logged", ha="center", va="center", transform=ax_m.transAxes)
    for (name, vals), color in zip(baselines.items(), base_colors):
        if vals.get(metric) is not None and math.isfinite(vals[metric]):
            ax_m.axhline(vals[metric], color=color, ls="--", lw=1.2, label=f"{name} baseline ({vals[metric]:.4g})")
    if solved is not None:
        ax_m.axhline(solved, color="tab:green", ls=":", lw=1.6, label=f"solved ({solved:.4g})")
    _log_if_positive(ax_m, evals.get(metric), [solved] if solved is not None else None)
    ax_m.set_xlabel("step")
    ax_m.set_ylabel(metric)
    for ax in (ax_l, ax_m):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = run_dir / "learning_curves.png" if path is None else pathlib.Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _read_json(path: pathlib.Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def gradient_flow(
    path: str | os.PathLike,
    initial: Sequence,
    trained: Sequence,
    *,
    rates: tuple[Sequence[float], Sequence[float]] | None = None,
    seeds: Sequence[int] | None = None,
    steps: tuple[int, int | None] = (0, None),
    ylabel: str = "||dL/dh||",
    title: str = "",
) -> pathlib.Path:
    """Draws the loss gradient's norm against the lag, for the initial and the trained params.

    Left: the norms (log scale), one colour a seed, dashed for the initial params and solid for
    the trained ones. Right: the same divided by their value at lag 0, so that how far the
    gradient reaches shows apart from how large the loss is.

    Args:
      path: the PNG to write.
      initial, trained: ``[seeds, K]`` norms at lags ``0 .. K-1`` (``memcell.tasks.gradient_norms_by_lag``
        of each seed's params).
      rates: optional ``(initial, trained)`` decay rates per step, one a seed, shown in the legend.
      seeds: the seed of each row (default ``0, 1, ...``).
      steps: the training steps of the two sets of params, for the legend (default 0 and unknown).
      ylabel: what the norms are of.
      title: the figure's title.

    Returns:
      The path of the PNG.

    Example:
      >>> import pathlib, tempfile
      >>> import numpy as np
      >>> from memcell import plot
      >>> k = np.arange(30)
      >>> png = plot.gradient_flow(pathlib.Path(tempfile.mkdtemp()) / "flow.png",
      ...                          [0.8 ** k], [0.97 ** k], rates=([np.log(0.8)], [np.log(0.97)]))
      >>> png.stat().st_size > 1000
      True
    """
    initial = np.atleast_2d(np.asarray(initial, np.float64))
    trained = np.atleast_2d(np.asarray(trained, np.float64))
    if initial.shape != trained.shape or initial.ndim != 2:
        raise ValueError(f"initial and trained must both have shape [seeds, K], got {initial.shape} and {trained.shape}")
    n, K = initial.shape
    seeds = list(range(n)) if seeds is None else list(seeds)
    if len(seeds) != n:
        raise ValueError(f"seeds must hold one seed a row ({n}), got {len(seeds)}")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.get_cmap("tab10").colors
    lags = np.arange(K)
    labels = (f"initial (step {steps[0]})", "trained" if steps[1] is None else f"trained (step {steps[1]})")
    with np.errstate(divide="ignore", invalid="ignore"):
        for ax, relative in zip(axes, (False, True)):
            for j in range(n):
                for which, (norms, ls) in enumerate(((initial[j], "--"), (trained[j], "-"))):
                    y = norms / norms[0] if relative else norms
                    y = np.where(y > 0, y, np.nan)  # an underflowed norm has no place on a log axis
                    label = f"seed {seeds[j]}, {labels[which]}"
                    if rates is not None:
                        label += f": {float(rates[which][j]):+.3g}/step"
                    ax.plot(lags, y, ls, color=colors[j % len(colors)], lw=1.5, label=None if relative else label)
            ax.set_yscale("log")
            ax.set_xlabel("lag k (steps before the last step)")
            ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(ylabel)
    axes[0].set_title("gradient norm at lag k", fontsize=10)
    axes[1].set_ylabel(f"{ylabel} at lag k / at lag 0")
    axes[1].set_title("relative to lag 0", fontsize=10)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = pathlib.Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
