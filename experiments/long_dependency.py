"""Long-term-dependency sweep: which sequence lengths T a tanh RNN, an IRNN, an LSTM and a GRU
(or any of memcell.tasks.CELLS: the modern mingru, minlstm, lru, rglru, slstm, mlstm) solve on the
adding (or copy, temporal order, selective copying) problem within a fixed budget of updates.

    python experiments/long_dependency.py                                  # adding, the CPU-sized default
    python experiments/long_dependency.py --task copy --lengths 10,20,40 --steps 2000
    python experiments/long_dependency.py --lengths 100,200,400 --steps 10000 --seeds 4   # a longer study
    python experiments/long_dependency.py --task selective_copy --lengths 64 --cells lstm,mingru,lru

Writes results/<task>/report.md (table), results.json and curves.png (learning curves).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import fmt_metric, parse_config, run_cell, write_report  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    """Sweep of T x cells on one long-dependency task; every (T, cell) gets the same budget."""

    task: str = "adding"  # adding, copy, temporal_order or selective_copy
    lengths: tuple[int, ...] = (25, 50, 100, 200)
    cells: tuple[str, ...] = ("rnn", "irnn", "lstm", "gru")  # any of memcell.tasks.CELLS
    hidden: int = 64
    seeds: int = 3
    steps: int = 2000  # the fixed budget of updates
    batch_size: int = 50
    lr: float = 2e-3
    eval_every: int = 250
    n_test: int = 1000
    out: str = "results"


def main(config: Config) -> dict:
    from memcell import plot, tasks

    results, panels, base_lines = {}, {}, {}
    for T in config.lengths:
        task = tasks.make(config.task, T, n_test=config.n_test)
        panels[f"T={T}"] = {}
        base_lines[f"T={T}"] = {b: v[task.metric] for b, v in task.baselines.items()}
        for cell in config.cells:
            r = run_cell(task, cell, config.hidden, seeds=config.seeds, steps=config.steps, batch_size=config.batch_size,
                         lr=config.lr, eval_every=config.eval_every, stop_at_solved=True)
            results[f"{cell}/T={T}"] = {k: r[k] for k in ("final", "summary", "n_solved", "solved_step", "steps",
                                                          "wall_time", "baselines", "solved_threshold", "stop_reason")}
            panels[f"T={T}"][cell] = r["history"]
            print(f"T={T} {cell}: {task.metric} {fmt_metric(r['summary'][task.metric])}, solved {r['n_solved']}/"
                  f"{config.seeds}, steps {r['steps']}, {r['wall_time']:.0f} s", flush=True)
    out = pathlib.Path(config.out) / config.task
    out.mkdir(parents=True, exist_ok=True)
    plot.evaluation_curves(out / "curves.png", panels, task.metric, baselines=base_lines, threshold=task.solved,
                           log=True)

    metric = task.metric
    head = "| cell | " + " | ".join(f"T={T}" for T in config.lengths) + " |"
    lines = [f"Metric: test {metric}; solved means {metric} {'<=' if task.mode == 'min' else '>='} "
             f"{'threshold' if task.solved is None else f'{task.solved:.4g}'} (for copy: 1% of the memoryless baseline) "
             f"within {config.steps} updates (batch {config.batch_size}, Adam lr {config.lr}, clip 1.0, "
             f"{config.hidden} hidden units, evaluated every {config.eval_every} steps, stopped at the first evaluation "
             f"where every seed meets the threshold). 'k/n' counts seeds meeting it at the end; 'by step s': the "
             f"evaluation at which the last seed first met it.",
             "", "Seeds solved, and the final " + metric + " (mean ± std over seeds):", "", head,
             "|" + "---|" * (len(config.lengths) + 1)]
    for cell in config.cells:
        row = []
        for T in config.lengths:
            r = results[f"{cell}/T={T}"]
            steps = [s for s in (r["solved_step"] or []) if s is not None]
            when = f", by step {max(steps)}" if steps and r["n_solved"] == config.seeds else ""
            row.append(f"{r['n_solved']}/{config.seeds}{when}; {fmt_metric(r['summary'][metric])}")
        lines.append(f"| {cell} | " + " | ".join(row) + " |")
    lines.append("| baseline | " + " | ".join(
        "; ".join(f"{b} {v:.4g}" for b, v in base_lines[f"T={T}"].items()) for T in config.lengths) + " |")
    solved = {cell: [T for T in config.lengths if results[f"{cell}/T={T}"]["n_solved"] == config.seeds]
              for cell in config.cells}
    lines += ["", "Largest T solved by every seed: " + ", ".join(
        f"{cell} {max(v) if v else 'none'}" for cell, v in solved.items()), "", "![learning curves](curves.png)"]
    write_report(out, f"{config.task}: which T each cell solves", config, lines, results)
    return results


if __name__ == "__main__":
    main(parse_config(Config))
