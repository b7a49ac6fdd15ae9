"""Shared by the task experiments: CLI overrides of a frozen Config, training one cell on one
task for several seeds, and the report (markdown table, JSON, PNG learning curves)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
import typing

import numpy as np


def parse_config(cls, argv=None):
    """``cls()`` with fields overridden by ``--name value`` (tuples: comma-separated)."""
    argv = sys.argv[1:] if argv is None else argv
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    it = iter(argv)
    for arg in it:
        if arg in ("-h", "--help"):
            print(f"{cls.__doc__}\n\noptions (default):")
            for name, f in fields.items():
                print(f"  --{name.replace('_', '-')} {f.default!r}")
            raise SystemExit(0)
        name = arg.lstrip("-").replace("-", "_")
        if not arg.startswith("--") or name not in fields:
            raise SystemExit(f"unknown option {arg!r}; options: {', '.join('--' + n.replace('_', '-') for n in fields)}")
        raw = next(it, None)
        if raw is None:
            raise SystemExit(f"option {arg} needs a value")
        hint = hints[name]
        origin = typing.get_origin(hint)
        try:
            if origin is tuple:
                item = typing.get_args(hint)[0]
                values[name] = tuple(item(x) for x in raw.split(",") if x)
            elif hint is bool:
                values[name] = raw.lower() in ("1", "true", "yes")
            else:
                values[name] = hint(raw)
        except ValueError:
            raise SystemExit(f"option {arg}: cannot read {raw!r} as {hint}") from None
    return cls(**values)


def run_cell(task, cell: str, hidden: int, *, seeds: int, steps: int, batch_size: int, lr: float, eval_every: int,
             stop_at_solved: bool = False, layers: int = 1, **cell_options) -> dict:
    """Trains ``cell`` on ``task`` for ``seeds`` seeds at once; the report of ``train_task``, minus the state."""
    from memcell import tasks

    cells = [tasks.make_cell(cell, hidden, **cell_options) for _ in range(layers)]
    model = tasks.sequence_model(cells[0] if layers == 1 else cells, task.output_size, task.readout)
    t0 = time.perf_counter()
    report = tasks.train_task(task, model, seeds=list(range(seeds)), steps=steps, batch_size=batch_size,
                              learning_rate=lr, eval_every=eval_every, stop_at_solved=stop_at_solved)
    report.pop("state")
    report["cell"] = cell
    report["wall_time"] = time.perf_counter() - t0
    return report


def fmt_metric(summary: dict) -> str:
    return f"{summary['mean']:.4g} ± {summary['std']:.2g}"


def plot_curves(path, panels: dict, metric: str, baselines: dict | None = None, threshold=None, log=False):
    """One panel a key of ``panels``: ``{title: {label: history}}``; mean over seeds with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, (title, runs) in zip(axes[0], panels.items()):
        for label, history in runs.items():
            steps = [h["step"] for h in history]
            vals = np.asarray([np.atleast_1d(h[metric]) for h in history], np.float64)
            line, = ax.plot(steps, vals.mean(1), marker=".", label=label)
            ax.fill_between(steps, vals.min(1), vals.max(1), color=line.get_color(), alpha=0.2)
        for name, value in (baselines or {}).get(title, {}).items():
            ax.axhline(value, color="gray", ls="--", lw=1)
            ax.annotate(name, (0.01, value), xycoords=("axes fraction", "data"), fontsize=7, color="gray", va="bottom")
        if threshold is not None:
            ax.axhline(threshold, color="green", ls=":", lw=1)
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: pathlib.Path, title: str, config, lines: list[str], results) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.dumps(dataclasses.asdict(config))
    text = [f"# {title}", "", f"Config: `{cfg}`", ""] + lines
    (out / "report.md").write_text("\n".join(text) + "\n")
    (out / "results.json").write_text(json.dumps({"config": dataclasses.asdict(config), "results": results}, indent=1,
                                                 default=float) + "\n")
    print("\n".join(text))
    print(f"\nwrote {out / 'report.md'}")
