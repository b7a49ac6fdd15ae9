"""Fair real-data comparisons (issue 14): the tanh RNN, the LSTM and the GRU under one protocol.

For every task and cell: a validation split cut from the training data; the learning rate
tuned per cell by a sweep (every learning rate x seed trained together, vmapped in one jit);
early stopping on validation, keeping each model's best-validation params; the learning rate
with the best mean validation metric over seeds is chosen, and only then is the test split
evaluated, once, with those params. Cells are compared at equal width and at equal parameters
(a tanh RNN widened to the LSTM's parameter count). The char LM is a stacked LSTM under
``experiments/char_lm.py``'s protocol (truncated BPTT, dropout, selection on the held-out
text's first part, report on the rest).

    python experiments/fair_data.py                       # vowels, digits, sunspots, char_lm
    python experiments/fair_data.py --quick true          # a short version (vowels, a few hundred updates)
    python experiments/fair_data.py --tasks vowels --seeds 5

Writes results/fair_data/report.md, results.json and figures (learning curves, gradient
flow through time on the task's validation sequences).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import parse_config, plot_curves

# Protocol constants. Every task gets the same ones; only the step budget differs (by task size).
TASK_STEPS = {"vowels": 1000, "digits": 1200, "sunspots": 1000}  # the recorded run (docs/tasks.md)


@dataclasses.dataclass(frozen=True)
class Config:
    """One protocol for every cell: validation split, vmapped learning-rate sweep, early stopping, seeds."""

    tasks: tuple[str, ...] = ("vowels", "digits", "sunspots", "char_lm")
    cells: tuple[str, ...] = ("rnn", "lstm", "gru", "rnn_eq")  # rnn_eq: a tanh RNN with the LSTM's parameter count
    hidden: int = 64
    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    seeds: int = 3
    steps: int = 0  # 0: TASK_STEPS per task
    batch_size: int = 32
    eval_every: int = 100
    patience: int = 6  # evaluations without a better validation metric before a model stops improving
    clip_norm: float = 1.0
    valid_fraction: float = 0.2
    backend: str = "auto"  # the fused path where it applies
    max_minutes: float = 0.0  # wall-time cap of one cell's sweep (0: none)
    # char LM: a stacked LSTM, experiments/char_lm.py's protocol (truncated BPTT, dropout, cosine decay)
    lm_cells: tuple[str, ...] = ("lstm",)
    lm_hidden: int = 256
    lm_layers: int = 2
    lm_dropout: float = 0.25
    lm_length: int = 100
    lm_batch_size: int = 32
    lm_steps: int = 8000
    lm_lrs: tuple[float, ...] = (3e-3,)
    lm_seeds: int = 1
    lm_eval_every: int = 500
    lm_valid_chars: int = 20000  # the first ones of the held-out text select; the rest report
    lm_max_minutes: float = 0.0  # wall-time cap of the char LM's run (0: none)
    quick: bool = False
    out: str = "results"


QUICK = {"tasks": ("vowels",), "cells": ("rnn", "lstm"), "lrs": (3e-3, 1e-2), "seeds": 2, "steps": 400, "eval_every": 50,
         "patience": 4, "lm_hidden": 64, "lm_layers": 1, "lm_steps": 200, "lm_eval_every": 100, "lm_valid_chars": 2000}


def param_count(params) -> int:
    import jax

    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def equal_param_width(input_size: int, output_size: int, target: int) -> int:
    """The tanh RNN width whose parameter count (recurrent + readout) is closest to ``target``."""
    count = lambda h: h * (input_size + h + 1) + h * output_size + output_size
    return min(range(1, 4 * int(math.sqrt(target)) + 2), key=lambda h: abs(count(h) - target))


def split_heldout(task, n_valid_windows: int):
    """The char LM's held-out windows cut in two: the first ``n_valid_windows`` select, the rest report."""
    valid = {k: v[:n_valid_windows] for k, v in task.test.items()}
    test = {k: v[n_valid_windows:] for k, v in task.test.items()}
    return task._replace(test=valid), task._replace(test=test)


def sweep(task_valid, model, *, lrs, seeds, steps, batch_size, eval_every, patience, clip_norm, max_minutes=0.0):
    """Trains every (learning rate, seed) pair together; keeps each one's best-validation-loss params.

    Returns a dict: ``best_params`` (stacked, ``len(lrs) * len(seeds)`` models, lr-major),
    ``best_loss`` and ``best_valid`` (the task's metric at those params) ``[n_lr, n_seed]``,
    ``best_step``, ``history`` (one dict an evaluation; the loop also ends after ``max_minutes``
    of wall time when that is > 0),
    ``steps_run`` and ``wall_time``.
    """
    import jax
    import jax.numpy as jnp

    from memcell import tasks, train

    metric, lower = "loss", True  # select on the validation loss: smoother than accuracy on a few hundred cases
    keys = [s for _ in lrs for s in seeds]  # the same init and data stream for a seed at every lr
    lr_of = [lr for lr in lrs for _ in seeds]
    tx = train.optimizer(lrs[0], clip_norm=clip_norm)
    states = train.init_states(keys, lambda k: model.init(k, task_valid.input_size), tx, learning_rates=lr_of)
    step = train.make_train_step(tasks.loss_fn(task_valid, model), tx)
    evaluate = jax.vmap(tasks.eval_fn(task_valid, model))
    n = len(keys)

    def one(s, _):
        data_key = jax.random.split(jax.random.fold_in(s.key, s.step))[0]
        s, m = step(s, task_valid.sample(data_key, batch_size))
        return s, m["loss"]

    @jax.jit
    def chunk(states, best_params, best_val, best_metric, active):
        states, losses = jax.vmap(lambda s: jax.lax.scan(one, s, None, length=eval_every))(states)
        val = evaluate(states.params)
        v = jnp.where(jnp.isfinite(val[metric]), val[metric], jnp.inf if lower else -jnp.inf)
        better = active & ((v < best_val) if lower else (v > best_val))
        pick = lambda b, p: jnp.where(better.reshape((n,) + (1,) * (p.ndim - 1)), p, b)
        return (states, jax.tree.map(pick, best_params, states.params), jnp.where(better, v, best_val),
                jnp.where(better, val[task_valid.metric], best_metric), better, val, losses.mean(1))

    t0 = time.perf_counter()
    best_params = states.params
    best_val = jnp.full((n,), jnp.inf if lower else -jnp.inf)
    best_metric = jnp.full((n,), jnp.nan)
    best_step = np.zeros(n, np.int64)
    bad = np.zeros(n, np.int64)
    history = []
    for i in range(1, steps // eval_every + 1):
        active = jnp.asarray(bad < patience)
        states, best_params, best_val, best_metric, better, val, train_loss = chunk(
            states, best_params, best_val, best_metric, active)
        better = np.asarray(better)
        best_step[better] = i * eval_every
        bad = np.where(better, 0, bad + 1)
        history.append({"step": i * eval_every, "train_loss": np.asarray(train_loss).tolist(),
                        **{k: np.asarray(v).tolist() for k, v in val.items()}})
        if np.all(bad >= patience) or (max_minutes and time.perf_counter() - t0 > 60 * max_minutes):
            break
    shape = (len(lrs), len(seeds))
    return {"best_params": best_params, "best_valid": np.asarray(best_metric).reshape(shape),
            "best_loss": np.asarray(best_val).reshape(shape),
            "best_step": best_step.reshape(shape), "history": history, "steps_run": history[-1]["step"],
            "wall_time": time.perf_counter() - t0}


def choose(best_valid: np.ndarray, mode: str) -> int:
    """The index of the learning rate with the best mean validation value over seeds (NaN or inf: worst)."""
    worst = np.inf if mode == "min" else -np.inf
    means = np.where(np.isfinite(best_valid), best_valid, worst).mean(axis=1)  # a diverged seed sinks its lr
    return int(np.argmin(means) if mode == "min" else np.argmax(means))


def evaluate_test(task_test, model, params) -> dict:
    """The test split's metrics for stacked ``params`` (one model a seed): the only place the test split is read."""
    import jax

    from memcell import tasks

    out = jax.jit(jax.vmap(tasks.eval_fn(task_test, model)))(params)
    return {k: np.asarray(v).tolist() for k, v in out.items()}


def stats(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": len(v)}


def build_model(cell: str, hidden: int, task, layers: int, backend: str):
    from memcell import tasks

    cells = [tasks.make_cell(cell, hidden) for _ in range(layers)]
    return tasks.sequence_model(cells[0] if layers == 1 else cells, task.output_size, task.readout, backend=backend)


def run_one(task_valid, task_test, cell, hidden, *, layers=1, lrs, seeds, steps, batch_size, eval_every, patience,
            clip_norm, backend, max_minutes=0.0):
    """One cell on one task under the protocol: sweep on validation, choose the lr, test once."""
    import jax

    model = build_model(cell, hidden, task_valid, layers, backend)
    seeds = list(range(seeds))
    t0 = time.process_time()
    sw = sweep(task_valid, model, lrs=lrs, seeds=seeds, steps=steps, batch_size=batch_size, eval_every=eval_every,
               patience=patience, clip_norm=clip_norm, max_minutes=max_minutes)
    k = choose(sw["best_loss"], "min")
    chosen = jax.tree.map(lambda x: x[k * len(seeds):(k + 1) * len(seeds)], sw["best_params"])
    test = evaluate_test(task_test, model, chosen)
    one = jax.tree.map(lambda x: x[0], chosen)
    return {
        "cell": cell, "hidden": hidden, "layers": layers, "params": param_count(one),
        "lrs": list(lrs), "seeds": seeds, "chosen_lr": lrs[k],
        "valid_by_lr": {str(lr): stats(sw["best_valid"][i]) for i, lr in enumerate(lrs)},
        "valid_loss_by_lr": {str(lr): stats(sw["best_loss"][i]) for i, lr in enumerate(lrs)},
        "best_step": sw["best_step"][k].tolist(), "steps_run": sw["steps_run"],
        "valid": stats(sw["best_valid"][k]), "test": {m: stats(v) for m, v in test.items()}, "test_per_seed": test,
        "wall_time": sw["wall_time"], "cpu_minutes": (time.process_time() - t0) / 60,
        "curve": [{"step": h["step"], **{m: h[m][k * len(seeds):(k + 1) * len(seeds)] for m in h if m != "step"}}
                  for h in sw["history"]],
        "_model": model, "_params": chosen,
    }


def gradient_flow(task_valid, model, params, init_params, n: int = 64) -> dict:
    """Mean over ``n`` validation sequences of ``||dL/dh_t||`` (``memcell.jacobian.loss_gradient_norms``),
    for the trained and the initial params of seed 0."""
    import jax
    import jax.numpy as jnp

    from memcell import tasks
    from memcell.jacobian import loss_gradient_norms

    batch = jax.tree.map(lambda x: jnp.asarray(x[:n]), task_valid.test)
    xs = tasks.features(task_valid, batch["xs"])
    lengths = batch.get("lengths")
    if lengths is not None:  # full-length sequences only, so every step t exists in each
        keep = np.asarray(lengths) == int(np.max(lengths))
        batch = jax.tree.map(lambda x: x[keep], batch)
        xs, lengths = xs[keep], batch["lengths"]

    def g(p):
        loss_of_ys = lambda ys: task_valid.loss(model.head(p, ys, lengths), batch)[0]
        return np.asarray(loss_gradient_norms(model.cell, p.rnn, xs, loss_of_ys).mean(0)).tolist()

    return {"trained": g(params), "init": g(init_params)}


def fmt(s: dict, digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def run_task(config: Config, name: str) -> dict:
    """Every cell of ``config`` on task ``name`` under the protocol: results, curves and gradient flow."""
    import jax

    from memcell import tasks

    t_task = time.process_time()
    if name == "char_lm":
        return run_char_lm(config)
    task_valid = tasks.make(name, valid_fraction=config.valid_fraction, split="valid")
    task_test = tasks.make(name, valid_fraction=config.valid_fraction)
    cells = []
    for c in config.cells:
        if c == "rnn_eq":
            lstm = build_model("lstm", config.hidden, task_valid, 1, "reference")
            target = param_count(lstm.init(jax.random.key(0), task_valid.input_size))
            cells.append(("rnn", equal_param_width(task_valid.input_size, task_valid.output_size, target), 1))
        else:
            cells.append((c, config.hidden, 1))
    kw = {"lrs": config.lrs, "seeds": config.seeds, "steps": config.steps or TASK_STEPS[name],
          "batch_size": config.batch_size, "eval_every": config.eval_every, "max_minutes": config.max_minutes}
    runs, curves, flows = {}, {}, {}
    for cell, hidden, layers in cells:
        label = f"{cell} {layers}x{hidden}" if layers > 1 else f"{cell} {hidden}"
        r = run_one(task_valid, task_test, cell, hidden, layers=layers, patience=config.patience,
                    clip_norm=config.clip_norm, backend=config.backend, **kw)
        model, params = r.pop("_model"), r.pop("_params")
        curves[label] = r.pop("curve")
        if model.cell is not None:
            init = model.init(jax.random.split(jax.random.key(0))[0], task_valid.input_size)  # seed 0's, as init_state
            flows[label] = gradient_flow(task_valid, model, jax.tree.map(lambda x: x[0], params), init)
        runs[label] = r
        print(f"{name} {label}: params {r['params']}, lr {r['chosen_lr']}, valid {fmt(r['valid'], 4)}, "
              f"test {task_test.metric} {fmt(r['test'][task_test.metric], 4)}, {r['steps_run']} steps, "
              f"{r['wall_time']:.0f} s wall, {r['cpu_minutes']:.1f} CPU min", flush=True)
    return {"task": name, "metric": task_test.metric, "mode": task_test.mode, "runs": runs, "curves": curves,
            "gradient_flow": flows, "test_baselines": task_test.baselines, "valid_baselines": task_valid.baselines,
            "info": {k: v for k, v in task_test.info.items() if k != "vocab"},
            "config": dataclasses.asdict(config), "cpu_minutes": (time.process_time() - t_task) / 60}


def run_char_lm(config: Config) -> dict:
    """The char LM under ``experiments/char_lm.py``'s protocol, one run a cell of ``config.lm_cells``,
    in ``run_task``'s form (valid: the held-out text's selection part; test: the rest)."""
    import char_lm

    from memcell import tasks

    t_task = time.process_time()
    task = tasks.char_lm(config.lm_length)
    runs, curves = {}, {}
    for cell in config.lm_cells:
        cfg = char_lm.Config(cell=cell, hidden=config.lm_hidden, layers=config.lm_layers, dropout=config.lm_dropout,
                             length=config.lm_length, batch_size=config.lm_batch_size, steps=config.lm_steps,
                             lrs=config.lm_lrs, seeds=config.lm_seeds, eval_every=config.lm_eval_every,
                             valid_chars=config.lm_valid_chars, max_minutes=config.lm_max_minutes,
                             backend=config.backend)
        r = char_lm.train(cfg, task, char_lm.build_model(cfg, task))
        label = f"{cell} {cfg.layers}x{cfg.hidden}" if cfg.layers > 1 else f"{cell} {cfg.hidden}"
        k = cfg.lrs.index(r["chosen_lr"]) * cfg.seeds
        curves[label] = [{"step": h["step"], "bpc": h["select_bpc"][k:k + cfg.seeds]} for h in r["history"]]
        runs[label] = {"cell": cell, "hidden": cfg.hidden, "layers": cfg.layers, "params": r["params"],
                       "lrs": list(cfg.lrs), "seeds": list(range(cfg.seeds)), "chosen_lr": r["chosen_lr"],
                       "valid_by_lr": {lr: stats(v) for lr, v in r["select_by_lr"].items()},
                       "best_step": r["best_step"], "steps_run": r["steps_run"], "valid": stats(r["select_bpc"]),
                       "test": {"bpc": stats(r["report_bpc"])}, "test_per_seed": {"bpc": r["report_bpc"]},
                       "valid_split_bpc": r["valid_bpc"], "wall_time": r["wall_time"], "cpu_minutes": r["cpu_minutes"]}
        print(f"char_lm {label}: params {r['params']}, lr {r['chosen_lr']}, select {fmt(runs[label]['valid'], 4)}, "
              f"report bpc {fmt(runs[label]['test']['bpc'], 4)}, {r['steps_run']} steps, {r['wall_time']:.0f} s wall, "
              f"{r['cpu_minutes']:.1f} CPU min", flush=True)
    return {"task": "char_lm", "metric": "bpc", "mode": "min", "runs": runs, "curves": curves, "gradient_flow": {},
            "test_baselines": task.baselines, "valid_baselines": task.baselines,
            "info": {"train_chars": int(len(task.stream.train)), "valid_chars": int(len(task.stream.valid_xs))},
            "config": dataclasses.asdict(config), "cpu_minutes": (time.process_time() - t_task) / 60}


def main(config: Config) -> dict:
    """Runs ``config.tasks`` (each saved to ``tasks/NAME.json``), then writes the report of every task saved so far."""
    if config.quick:
        config = dataclasses.replace(config, **QUICK)
    out = pathlib.Path(config.out) / "fair_data"
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    for name in config.tasks:
        result = run_task(config, name)
        (out / "tasks" / f"{name}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    order = ["vowels", "digits", "permuted_digits", "sunspots", "char_lm"]
    saved = sorted(out.glob("tasks/*.json"), key=lambda f: order.index(f.stem) if f.stem in order else len(order))
    results = {f.stem: json.loads(f.read_text()) for f in saved}
    lines = _report_lines(results)
    _figures(out, results, lines)
    text = ["# Fair real-data comparisons", ""] + lines
    (out / "report.md").write_text("\n".join(text) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    print("\n".join(text))
    print(f"\nwrote {out / 'report.md'}")
    return results


def _report_lines(results) -> list[str]:
    lines = ["| task | cell | params | chosen lr | valid | test | test per seed | best step per seed | CPU min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, t in results.items():
        m = t["metric"]
        for label, r in t["runs"].items():
            per_seed = ", ".join(f"{v:.3f}" for v in r["test_per_seed"][m])
            lines.append(f"| {name} | {label} | {r['params']} | {r['chosen_lr']:g} | {fmt(r['valid'])} | "
                         f"{m} {fmt(r['test'][m])} | {per_seed} | {r['best_step']} | {r['cpu_minutes']:.1f} |")
    lines += ["", "Baselines (test split):", ""]
    for name, t in results.items():
        lines.append(f"- {name}: " + "; ".join(f"{b} " + ", ".join(f"{k} {v:.4g}" for k, v in vals.items())
                                               for b, vals in t["test_baselines"].items())
                     + f" (the task's runs: {t['cpu_minutes']:.1f} CPU minutes; config `{json.dumps(t['config'])}`)")
    lines += ["", "Validation metric (at each model's best validation loss) by learning rate, mean ± std over seeds:", ""]
    for name, t in results.items():
        for label, r in t["runs"].items():
            lines.append(f"- {name} / {label}: " + "; ".join(f"{lr}: {fmt(s)}" for lr, s in r["valid_by_lr"].items()))
    return lines + [""]


def _figures(out, results, lines) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, t in results.items():
        plot_curves(out / f"curves_{name}.png", {f"{name}: validation, chosen lr": t["curves"]}, t["metric"])
        lines.append(f"![{name}: validation {t['metric']} against steps](curves_{name}.png)")
    flows = {name: t["gradient_flow"] for name, t in results.items() if t["gradient_flow"]}
    if flows:
        fig, axes = plt.subplots(1, len(flows), figsize=(4.2 * len(flows), 3.4), squeeze=False)
        for ax, (name, runs) in zip(axes[0], flows.items()):
            for i, (label, g) in enumerate(runs.items()):
                for which, ls in (("trained", "-"), ("init", ":")):
                    v = np.asarray(g[which])
                    v = v[: int(np.max(np.nonzero(v)[0])) + 1]  # the steps the sequences have (vowels' padding reads 0)
                    ax.semilogy(np.arange(len(v)), v / v.max(), ls=ls, color=f"C{i}", label=f"{label} {which}")
            ax.set_title(f"{name}: ||dL/dh_t|| / max")
            ax.set_xlabel("step t")
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "gradient_flow.png", dpi=110)
        plt.close(fig)
        lines.append("![gradient norm through time, trained (solid) and initial (dotted) params](gradient_flow.png)")


if __name__ == "__main__":
    main(parse_config(Config))
