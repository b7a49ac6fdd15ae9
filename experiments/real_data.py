"""The real-data tasks against their baselines: sequential and permuted digits, Japanese
vowels (speaker classification), sunspot forecasting and Shakespeare character LM.

    python experiments/real_data.py                          # every task, the CPU-sized default
    python experiments/real_data.py --tasks vowels,sunspots --steps 3000 --seeds 4

Writes results/real_data/report.md, results.json, curves.png, and a text sample from the
char LM.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import fmt_metric, parse_config, run_cell, write_report  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    """Each task x cell, several seeds at once, the same budget for all."""

    tasks: tuple[str, ...] = ("digits", "permuted_digits", "vowels", "sunspots", "char_lm")
    cells: tuple[str, ...] = ("rnn", "lstm", "gru")
    hidden: int = 64
    seeds: int = 2
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    eval_every: int = 100
    char_lm_length: int = 100
    sample_chars: int = 400
    temperature: float = 0.8
    out: str = "results"


def main(config: Config) -> dict:
    import jax

    from memcell import plot, tasks

    results, panels, base_lines, lines = {}, {}, {}, []
    sample = None
    for name in config.tasks:
        task = tasks.make(name, config.char_lm_length if name == "char_lm" else None)
        panels[name] = {}
        base_lines[name] = {b: v[task.metric] for b, v in task.baselines.items() if task.metric in v}
        lines += [f"## {name}", "", f"Metric: test {task.metric} ({task.mode} is better). "
                  + "; ".join(f"{b}: " + ", ".join(f"{m} {v:.4g}" for m, v in vals.items())
                              for b, vals in task.baselines.items()), "",
                  "| cell | " + " | ".join(m for m in _metrics(task)) + " | beats |", "|---|" + "---|" * (len(_metrics(task)) + 1)]
        for cell in config.cells:
            r = run_cell(task, cell, config.hidden, seeds=config.seeds, steps=config.steps,
                         batch_size=config.batch_size, lr=config.lr, eval_every=config.eval_every)
            panels[name][cell] = r.pop("history")
            results[f"{name}/{cell}"] = r
            beats = ", ".join(f"{b} {k}/{config.seeds}" for b, k in r["beats"].items())
            lines.append(f"| {cell} | " + " | ".join(fmt_metric(r["summary"][m]) for m in _metrics(task)) + f" | {beats} |")
            print(f"{name} {cell}: {task.metric} {fmt_metric(r['summary'][task.metric])} ({r['wall_time']:.0f} s)", flush=True)
        lines.append("")
        if name == "char_lm" and config.sample_chars:
            # A sample from the LSTM's first seed, retrained here (train_task drops the state from reports).
            model = tasks.sequence_model(tasks.make_cell("lstm", config.hidden), task.output_size, "all")
            rep = tasks.train_task(task, model, seeds=[0], steps=config.steps, batch_size=config.batch_size,
                                   learning_rate=config.lr)
            params = jax.tree.map(lambda x: x[0], rep.state.params)
            sample = tasks.sample_text(task, model, params, jax.random.key(0), prompt="\n", length=config.sample_chars,
                                       temperature=config.temperature)
            lines += [f"Sample from an LSTM (seed 0, {config.steps} steps, temperature {config.temperature}):", "",
                      "```", sample, "```", ""]
    out = pathlib.Path(config.out) / "real_data"
    out.mkdir(parents=True, exist_ok=True)
    plot.evaluation_curves(out / "curves.png", panels, "loss")
    lines.append("![learning curves (test loss)](curves.png)")
    write_report(out, "Real data: cells against baselines", config, lines, results)
    return results


def _metrics(task):
    return {"digits": ["accuracy"], "permuted_digits": ["accuracy"], "vowels": ["accuracy"],
            "sunspots": ["rmse_1", "rmse"], "char_lm": ["bpc"]}.get(task.name, [task.metric])


if __name__ == "__main__":
    main(parse_config(Config))
