"""The char LM target of issue 14: a stacked LSTM on the shipped Shakespeare, at most 2.2 bpc on validation.

Protocol (the fair-comparison one, adapted to one long text):
- training: truncated BPTT (``memcell.train.make_stream_train_step``, run by ``memcell.train.fit``
  with ``KeepBest``): 32 contiguous rows of the
  training text, windows of 100 characters, the carry kept from window to window (restarted
  where a play begins); dropout between the layers and before the readout (Zaremba et al.
  2014's non-recurrent dropout), Adam with clipping and cosine decay; every learning rate x
  seed trained together, vmapped in one jit;
- the held-out text (the last 10%, the task's validation split) is read as one stream, the
  carry kept, and cut in two: the first ``valid_chars`` characters select (the best evaluation
  of each model is kept, and the learning rate with the best mean over seeds is chosen by
  ``memcell.train.choose_learning_rate``), the
  rest reports (measured at every evaluation for the curves, it never enters a choice). The bpc
  of the whole held-out text at those params is given too (the issue's "validation split").

    python experiments/char_lm.py                         # the recorded run (docs/tasks.md)
    python experiments/char_lm.py --steps 40 --hidden 32 --eval-every 20 --warmup 5 --out /tmp/x   # a quick look

Writes results/char_lm/report.md, results.json, metrics.jsonl (every update) and curves.png.
The protocol itself lives in ``_common.py`` (``train_char_lm``), which ``fair_data.py --tasks
char_lm`` runs too.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import char_lm_model, parse_config, provenance, provenance_line, train_char_lm  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    cell: str = "lstm"
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.25  # between the layers and before the readout, training only
    length: int = 100  # the truncated-BPTT window
    batch_size: int = 32
    steps: int = 6000
    lrs: tuple[float, ...] = (3e-3,)
    seeds: int = 1
    warmup: int = 100
    eval_every: int = 500
    valid_chars: int = 20000  # the held-out text's first characters select, the rest report
    backend: str = "auto"
    out: str = "results"


def main(config: Config) -> dict:
    from memcell import plot, tasks

    task = tasks.char_lm(config.length)
    model = char_lm_model(task, config.cell, config.hidden, config.layers, config.dropout, config.backend)
    out = pathlib.Path(config.out) / "char_lm"
    r = train_char_lm(task, model, lrs=config.lrs, seeds=config.seeds, steps=config.steps,
                      batch_size=config.batch_size, length=config.length, warmup=config.warmup,
                      eval_every=config.eval_every, valid_chars=config.valid_chars, log_path=out / "metrics.jsonl")
    info = {"train_chars": int(len(task.stream.train)), "valid_chars": int(len(task.stream.valid_xs)),
            "baselines": task.baselines}
    prov = provenance()
    result = {"config": dataclasses.asdict(config), **prov, "info": info, **r}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    label = f"{config.cell} {config.layers}x{config.hidden}, dropout {config.dropout}"
    k = config.lrs.index(r["chosen_lr"]) * config.seeds
    curve = lambda key: [{"step": h["step"], "bpc": h[key][k:k + config.seeds]} for h in r["history"]]
    plot.evaluation_curves(out / "curves.png", {f"char LM, {label}": {"validation split": curve("valid_bpc"),
                                                                      "training windows": curve("train_bpc")}}, "bpc")
    fmt = lambda v: f"{np.mean(v):.3f}" + (f" ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else "")
    text = [f"# char LM, {label}", "", provenance_line(prov), "",
            f"- params {r['params']:,}; lr {r['chosen_lr']:g} (of {list(config.lrs)}); seeds {config.seeds}; "
            f"{r['steps_run']} updates of {config.batch_size} windows of {config.length} (truncated BPTT)",
            f"- held-out bpc at each model's best selection-part evaluation (step {r['best_step']}): "
            f"selection part {fmt(r['select_bpc'])}, reporting part {fmt(r['report_bpc'])}, "
            f"whole validation split {fmt(r['valid_bpc'])}",
            f"- {r['wall_time'] / 60:.1f} wall minutes, {r['cpu_minutes']:.1f} CPU minutes",
            "", "![validation bpc against updates](curves.png)"]
    (out / "report.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return result


if __name__ == "__main__":
    main(parse_config(Config))
