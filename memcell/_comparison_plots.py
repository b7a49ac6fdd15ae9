"""Figures that compare several runs side by side: evaluation curves over seeds, norms against the
lag, and per-seed values. ``memcell.plot`` re-exports them; the experiments draw with them.

Every series of one panel gets a colour of its own (``distinct_colors``): up to 20 from
matplotlib's tab10 then ten colours far from its hues (black, gold, blue, ...), beyond that evenly
spaced on a colour map.
"""

from __future__ import annotations

import os
import pathlib
from typing import Mapping, Sequence

import numpy as np

__all__ = ["distinct_colors", "evaluation_curves", "norms_by_lag", "seed_values"]

# After tab10's ten: colours far from all of them (a light shade of a tab10 hue reads as the same hue).
_BEYOND_TAB10 = ((0.0, 0.0, 0.0), (1.0, 0.84, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 1.0), (0.0, 0.0, 0.5),
                 (0.53, 0.81, 0.98), (0.0, 1.0, 0.0), (1.0, 0.08, 0.58), (0.55, 0.0, 0.55), (0.0, 1.0, 0.5))
# A series given as {phase: norms} draws each phase in the series' colour, in these styles.
PHASE_STYLES = {"initial": "--", "init": "--", "trained": "-"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; figures go to files only
    import matplotlib.pyplot as plt

    return plt


def distinct_colors(n: int) -> list:
    """``n`` colours, all different: tab10, then ten far from its hues (black, gold, blue, ...), then
    a colour map's spread.

    Example:
      >>> from memcell import plot
      >>> len(set(plot.distinct_colors(12)))
      12
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    plt = _pyplot()
    if n <= len(_BEYOND_TAB10) + 10:
        return list(plt.get_cmap("tab10").colors + _BEYOND_TAB10)[:n]
    return [plt.get_cmap("turbo")(x) for x in np.linspace(0.05, 0.95, n)]


def _save(fig, path, title, dpi: int) -> pathlib.Path:
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = pathlib.Path(path)
    fig.savefig(out, dpi=dpi)
    _pyplot().close(fig)
    return out


LEGEND_INSIDE = 8  # evaluation_curves: up to this many series a legend in each panel, more beside the last


def evaluation_curves(
    path: str | os.PathLike,
    panels: Mapping[str, Mapping[str, Sequence[Mapping]]],
    metric: str,
    *,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
    threshold: float | None = None,
    log: bool = False,
    title: str | None = None,
    dpi: int = 110,
) -> pathlib.Path:
    """Evaluation curves of several runs, one panel a key: the mean over seeds with a min-max band.

    Args:
      path: the PNG to write.
      panels: ``{panel title: {label: history}}``, a history being ``fit``'s (``FitResult.history``,
        ``train_task``'s ``"history"``): one dict an evaluation with ``"step"`` and ``metric``
        (one value, or one a seed).
      metric: the metric drawn.
      baselines: ``{panel title: {name: value}}``, drawn dashed and named.
      threshold: a value drawn dotted in every panel (a task's solved threshold).
      log: a logarithmic y-axis.
      title: the figure's title.
      dpi: the PNG's resolution.

    Returns:
      The path of the PNG.

    Example:
      >>> import pathlib, tempfile
      >>> from memcell import plot
      >>> runs = {"lstm": [{"step": s, "mse": [1 / s, 2 / s]} for s in (10, 20, 30)]}
      >>> png = plot.evaluation_curves(pathlib.Path(tempfile.mkdtemp()) / "c.png", {"T=10": runs}, "mse",
      ...                              baselines={"T=10": {"mean": 0.17}}, threshold=0.01, log=True)
      >>> png.stat().st_size > 1000
      True
    """
    plt = _pyplot()
    n = len(panels)
    labels = [list(runs) for runs in panels.values()]
    # Many series and the same in every panel: one legend beside the last panel, where it hides no curve
    shared = bool(labels) and len(labels[0]) > LEGEND_INSIDE and all(ls == labels[0] for ls in labels)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(4.2 * max(n, 1) + (1.6 if shared else 0), 3.4), squeeze=False)
    for ax, (name, runs) in zip(axes[0], panels.items()):
        for color, (label, history) in zip(distinct_colors(len(runs)), runs.items()):
            steps = [h["step"] for h in history]
            vals = np.asarray([np.atleast_1d(h[metric]) for h in history], np.float64)
            ax.plot(steps, vals.mean(1), marker=".", color=color, label=label)
            ax.fill_between(steps, vals.min(1), vals.max(1), color=color, alpha=0.2)
        for base, value in (baselines or {}).get(name, {}).items():
            ax.axhline(value, color="gray", ls="--", lw=1)
            ax.annotate(base, (0.01, value), xycoords=("axes fraction", "data"), fontsize=7, color="gray", va="bottom")
        if threshold is not None:
            ax.axhline(threshold, color="green", ls=":", lw=1)
        if log:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        if not shared:
            ax.legend(fontsize=7)
    if shared:
        axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return _save(fig, path, title, dpi)


def _series(value) -> dict:
    """A series as ``{phase or None: 1-d float array}``."""
    if isinstance(value, Mapping):
        return {phase: np.asarray(v, np.float64).reshape(-1) for phase, v in value.items()}
    return {None: np.asarray(value, np.float64).reshape(-1)}


def _scaled(y: np.ndarray, log_norms: bool, relative_to: str | None) -> np.ndarray:
    """``y`` ready to draw: log10 of natural-log norms, or the norms with underflowed zeros left out."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if log_norms:
            y = y / np.log(10.0)
            ref = {"first": y[0], "max": np.nanmax(y)}.get(relative_to, 0.0)
            return y - ref
        y = np.where(y > 0, y, np.nan)  # an underflowed norm has no place on a log axis
        ref = {"first": y[0], "max": np.nanmax(y)}.get(relative_to, 1.0)
        return y / ref


def norms_by_lag(
    path: str | os.PathLike,
    panels: Mapping[str, Mapping[str, object]],
    *,
    log_norms: bool = False,
    relative_to: str | None = None,
    xlabel: str = "lag k (steps before the last step)",
    ylabel: str = "||dL/dh||",
    ylim: tuple[float, float] | None = None,
    linestyles: Mapping[str, str] | None = None,
    title: str | None = None,
    legend_loc: str = "best",
    dpi: int = 110,
) -> pathlib.Path:
    """Norms against the lag (or the step) for several cells, one panel a key, one colour a cell.

    Args:
      path: the PNG to write.
      panels: ``{panel title: {label: series}}``; a series is the norms ``[K]`` at lags
        ``0 .. K-1`` (``memcell.tasks.gradient_norms_by_lag``, ``memcell.jacobian.gradient_norms_through_time``),
        or ``{phase: norms}`` (e.g. ``"initial"`` and ``"trained"``), drawn in the series' colour
        in the phase's line style.
      log_norms: the series hold natural logs of the norms (``log=True`` of ``memcell.jacobian``):
        drawn as log10 on a linear axis, so norms far below float32's range still show.
        Otherwise the y-axis is logarithmic and a norm that underflowed to 0 is left out.
      relative_to: ``None``, ``"first"`` (each line divided by its value at lag 0) or ``"max"``
        (by its largest value).
      xlabel, ylabel, ylim, title: the axes' labels and y-range, and the figure's title.
      linestyles: line style by label or by phase (default: ``"initial"`` dashed, the rest solid).
      legend_loc: where the legend goes (matplotlib's ``loc``).
      dpi: the PNG's resolution.

    Returns:
      The path of the PNG.

    Example:
      >>> import pathlib, tempfile
      >>> import numpy as np
      >>> from memcell import plot
      >>> k = np.arange(30)
      >>> flows = {"rnn": {"initial": 0.8 ** k, "trained": 0.7 ** k}, "lstm": {"initial": 0.95 ** k, "trained": 0.99 ** k}}
      >>> png = plot.norms_by_lag(pathlib.Path(tempfile.mkdtemp()) / "f.png", {"adding": flows}, relative_to="first")
      >>> png.stat().st_size > 1000
      True
    """
    if relative_to not in (None, "first", "max"):
        raise ValueError(f"relative_to must be None, 'first' or 'max', got {relative_to!r}")
    styles = dict(PHASE_STYLES, **(linestyles or {}))
    plt = _pyplot()
    n = len(panels)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(7.5 if n == 1 else 4.6 * n, 4.5 if n == 1 else 3.6),
                             squeeze=False)
    for ax, (name, runs) in zip(axes[0], panels.items()):
        for color, (label, value) in zip(distinct_colors(len(runs)), runs.items()):
            for phase, y in _series(value).items():
                ls = styles.get(phase, styles.get(label, "-")) if phase is not None else styles.get(label, "-")
                ax.plot(np.arange(len(y)), _scaled(y, log_norms, relative_to), ls, color=color, lw=1.4,
                        label=label if phase is None else f"{label}, {phase}")
        if not log_norms:
            ax.set_yscale("log")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7 if sum(len(_series(v)) for v in runs.values()) <= 12 else 6, loc=legend_loc)
    axes[0][0].set_ylabel(ylabel)
    return _save(fig, path, title, dpi)


def seed_values(
    path: str | os.PathLike,
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    ylabel: str | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> pathlib.Path:
    """One value a seed for several variants: each variant's mean ± std with every seed as a dot.

    Args:
      path: the PNG to write.
      panels: ``{panel title: {variant: values, one a seed}}``.
      ylabel, title: the y-axis label and the figure's title.
      dpi: the PNG's resolution.

    Returns:
      The path of the PNG.

    Example:
      >>> import pathlib, tempfile
      >>> from memcell import plot
      >>> png = plot.seed_values(pathlib.Path(tempfile.mkdtemp()) / "v.png",
      ...                        {"adding": {"vanilla": [0.01, 0.02], "NFG": [0.1, 0.05]}}, ylabel="test mse")
      >>> png.stat().st_size > 1000
      True
    """
    plt = _pyplot()
    n = len(panels)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(4.0 * max(n, 1), 3.2), squeeze=False)
    for ax, (name, variants) in zip(axes[0], panels.items()):
        for i, (color, values) in enumerate(zip(distinct_colors(len(variants)), variants.values())):
            v = np.asarray(values, np.float64).reshape(-1)
            std = float(v.std(ddof=1)) if v.size > 1 else 0.0
            ax.errorbar([i], [v.mean()], yerr=[std], fmt="o", capsize=3, color=color)
            ax.scatter([i] * v.size, v, s=6, color="gray", zorder=3)
        ax.set_xticks(range(len(variants)), list(variants), rotation=45, fontsize=7)
        ax.set_title(name)
        if ylabel:
            ax.set_ylabel(ylabel)
    return _save(fig, path, title, dpi)
