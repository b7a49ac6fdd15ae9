"""The copy task at T = 500 with the chrono LSTM, under Tallec and Ollivier's settings, with RMSprop's
epsilon where memcell (optax) puts it or where PyTorch puts it (docs/reproductions.md, the open copy
disagreement).

memcell's ``"rmsprop"`` is ``optax.rmsprop``: ``g / sqrt(nu + eps)``, eps inside the square root, so
no parameter's step is amplified by more than ``1 / sqrt(eps) = 1e4`` however small its gradients.
PyTorch's ``torch.optim.RMSprop`` (the usual tool in 2018) divides by ``sqrt(nu) + eps``, eps outside:
a parameter whose gradients are all about ``1e-6`` still moves by about the learning rate a step. On
a plateau where the gradient reaching the remembered symbols has vanished to such sizes, the two
differ by orders of magnitude. This script trains the same model with either.

    python experiments/copy_chrono_check.py --eps-in-sqrt false       # PyTorch's placement
    python experiments/copy_chrono_check.py --eps-in-sqrt true        # memcell's (as `memcell train`)
    python experiments/copy_chrono_check.py --diagnose true           # gradient sizes at init, no training

Writes results/copy_chrono_check/EPS/: metrics.jsonl, report.json and learning_curves.png
(``memcell.plot.learning_curves``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import parse_config


@dataclasses.dataclass(frozen=True)
class Config:
    """The copy task, chrono LSTM, RMSprop (decay 0.9, eps 1e-8) with eps inside or outside the square root."""

    length: int = 500
    hidden: int = 128
    batch_size: int = 20
    lr: float = 1e-3
    decay: float = 0.9
    eps: float = 1e-8
    eps_in_sqrt: bool = False
    clip: float = 0.0  # 0: none (Tallec and Ollivier clip nothing)
    seeds: int = 2
    steps: int = 20000
    eval_every: int = 500
    n_test: int = 500
    diagnose: bool = False  # only print each param's RMS gradient at init (5 batches) against sqrt(eps)
    out: str = "results/copy_chrono_check"


def gradient_rms(task, model, params, batch_size: int, n: int = 5) -> dict:
    """Per param array: the median over its entries of the RMS gradient over ``n`` batches, and the
    fraction of entries below ``1e-4 = sqrt(1e-8)``, the floor that eps inside the square root puts
    under RMSprop's denominator."""
    import jax

    from memcell import tasks

    loss = tasks.loss_fn(task, model)
    grad = jax.jit(jax.grad(lambda p, b: loss(p, b, None)[0]))
    sq = None
    for i in range(n):
        g = grad(params, task.sample(jax.random.key(1000 + i), batch_size))
        sq = jax.tree.map(lambda a: a**2, g) if sq is None else jax.tree.map(lambda s, a: s + a**2, sq, g)
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(sq)[0]:
        rms = np.sqrt(np.asarray(x, np.float64).ravel() / n)
        name = jax.tree_util.keystr(path)
        out[name] = {"shape": list(x.shape), "median_rms": float(np.median(rms)),
                     "fraction_below_1e-4": float(np.mean(rms < 1e-4))}
        if name == ".rnn.w_x":  # one row an input token: 0 blank, 1..8 the letters, 9 the signal
            out[name]["median_rms_by_input_token"] = np.median(rms.reshape(x.shape), axis=1).tolist()
    return out


def main(argv=None) -> dict:
    import jax
    import optax

    import memcell
    from memcell import plot, tasks, train

    config = parse_config(Config, argv)
    task = tasks.copy_memory(config.length, n_test=config.n_test)
    # T_max = T + 20, the sequence length, as `memcell train --lstm-init chrono` sets it
    cell = memcell.lstm(config.hidden, init="chrono", max_timescale=float(config.length + 20))
    model = tasks.sequence_model(cell, task.output_size, task.readout, backend="auto")
    parts = [optax.clip_by_global_norm(config.clip)] if config.clip > 0 else []
    tx = optax.chain(*parts, optax.rmsprop(config.lr, decay=config.decay, eps=config.eps,
                                           eps_in_sqrt=config.eps_in_sqrt))
    if config.diagnose:
        sizes = gradient_rms(task, model, model.init(jax.random.key(0), task.input_size), config.batch_size)
        print(json.dumps(sizes, indent=1))
        return sizes
    states = train.init_states(list(range(config.seeds)), lambda k: model.init(k, task.input_size), tx)
    step = train.make_train_step(tasks.loss_fn(task, model), tx)
    out = pathlib.Path(config.out) / ("eps_in_sqrt" if config.eps_in_sqrt else "eps_outside_sqrt")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = train.fit(step, states, lambda key: task.sample(key, config.batch_size), steps=config.steps,
                       eval_fn=tasks.eval_fn(task, model), eval_every=config.eval_every,
                       early_stopping=train.EarlyStopping(metric="xent", mode="min", target=task.solved),
                       log_path=out / "metrics.jsonl", progress=False)
    final = result.history[-1]
    report = {"config": dataclasses.asdict(config), "task": "copy", "metric": "xent", "seeds": list(range(config.seeds)),
              "baselines": task.baselines, "solved_threshold": task.solved, "steps": int(final["step"]),
              "final": {k: np.asarray(v).tolist() for k, v in final.items() if k != "step"},
              "wall_time": time.perf_counter() - t0, "stop_reason": result.stop_reason}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    plot.learning_curves(out, title=f"copy T = {config.length}, chrono LSTM {config.hidden}, RMSprop eps "
                                     f"{'inside' if config.eps_in_sqrt else 'outside'} the sqrt")
    print(json.dumps({k: report[k] for k in ("steps", "final", "wall_time", "stop_reason")}, default=float))
    return report


if __name__ == "__main__":
    main()
