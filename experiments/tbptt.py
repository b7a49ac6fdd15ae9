"""Truncated BPTT against independent windows on Shakespeare character LM (issue 12).

Both modes train the same model (same init per seed, same optimizer and learning rate) for
the same number of updates on windows of the same length and batch size, so they see the
same number of characters (the truncated-BPTT windows that end before a play's start read a
few fewer; counted and reported). Each final model is then scored both ways on the same
validation characters: independent windows (each starts from a zero carry, the task's test
set) and the whole validation stream read in order with the carry kept.

    python experiments/tbptt.py                       # the default below (run it under the heavy lock)
    python experiments/tbptt.py --steps 50 --hidden 32 --out /tmp/x   # a quick look

Writes results/tbptt/report.md and results.json.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import cpu_name, fmt_metric, parse_config  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    """char_lm: a 1-layer LSTM trained with independent windows and with truncated BPTT."""

    hidden: int = 256
    layers: int = 1
    length: int = 100  # the window (T), both modes
    batch_size: int = 32
    steps: int = 1000
    seeds: int = 2  # vmapped in one jit
    lr: float = 2e-3
    eval_every: int = 250
    backend: str = "auto"
    out: str = "results"


def _tokens_seen(task, config: Config) -> list[int]:
    """Real characters the truncated-BPTT windows read in ``config.steps`` updates (the sampler replayed)."""
    import jax
    import jax.numpy as jnp

    from memcell import tasks

    sample, cursor = tasks.stream_sampler(task.stream, config.batch_size, config.length)

    def body(c, _):
        batch, c = sample(None, c)
        return c, jnp.sum(batch["lengths"])

    _, n = jax.jit(lambda c: jax.lax.scan(body, c, None, length=config.steps))(cursor)
    return [int(x) for x in jax.device_get(n).cumsum()[-1:]]


def main(config: Config) -> dict:
    import jax

    import memcell
    from memcell import tasks

    task = tasks.make("char_lm", config.length)
    cells = [memcell.lstm(config.hidden) for _ in range(config.layers)]
    model = tasks.sequence_model(cells[0] if config.layers == 1 else cells, task.output_size, task.readout,
                                 backend=config.backend)
    evals = {"windows": jax.jit(jax.vmap(tasks.eval_fn(task, model))),
             "stream": jax.jit(jax.vmap(tasks.stream_eval_fn(task, model)))}
    results = {}
    for mode in ("windows", "tbptt"):
        t0 = time.perf_counter()
        r = tasks.train_task(task, model, seeds=list(range(config.seeds)), steps=config.steps,
                             batch_size=config.batch_size, learning_rate=config.lr, eval_every=config.eval_every,
                             tbptt=mode == "tbptt")
        train_time = time.perf_counter() - t0
        params = r.state.params
        scores = {name: jax.device_get(ev(params)) for name, ev in evals.items()}
        results[mode] = {
            "bpc_windows": [float(x) for x in scores["windows"]["bpc"]],
            "bpc_stream": [float(x) for x in scores["stream"]["bpc"]],
            "history": r.history,
            "train_time_s": train_time,
            "chars_seen": (config.steps * config.batch_size * config.length if mode == "windows"
                           else _tokens_seen(task, config)[0]),
        }
        print(mode, {k: v for k, v in results[mode].items() if k != "history"}, flush=True)
    report = {"config": dataclasses.asdict(config), "cpu": cpu_name(), "jax": jax.__version__,
              "baselines": task.baselines, "n_valid_chars": task.info["n_valid_chars"], "results": results}
    out = pathlib.Path(config.out) / "tbptt"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report) + "\n")
    print(_markdown(report))
    return report


def _markdown(report: dict) -> str:
    import numpy as np

    from memcell.train import summarize

    c = report["config"]
    lines = ["# char_lm: truncated BPTT against independent windows", "",
             f"{c['layers']}-layer LSTM {c['hidden']}, window {c['length']}, batch {c['batch_size']}, "
             f"{c['steps']} Adam updates at lr {c['lr']} (clip 1.0), {c['seeds']} seeds vmapped, backend "
             f"{c['backend']}; {report['n_valid_chars']} validation characters; CPU {report['cpu']}, jax {report['jax']}.",
             "", "| trained with | chars seen | val bpc, independent windows | val bpc, whole stream, carry kept | train time |",
             "|---|---|---|---|---|"]
    for mode, r in report["results"].items():
        lines.append(f"| {mode} | {r['chars_seen']:,} | {fmt_metric(summarize(r['bpc_windows']))} | "
                     f"{fmt_metric(summarize(r['bpc_stream']))} | {r['train_time_s']:.0f} s |")
    base = report["baselines"]
    lines += ["", f"Baselines: unigram {base['unigram']['bpc']:.3f}, bigram {base['bigram']['bpc']:.3f} bpc. "
              "Mean ± std over seeds.", "", "Evaluations during training (each mode's own evaluation):", ""]
    for mode, r in report["results"].items():
        pts = ", ".join(f"{h['step']}: {np.mean(h['bpc']):.3f}" for h in r["history"])
        lines.append(f"- {mode}: {pts}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(parse_config(Config))
