"""Fair real-data comparisons (issue 14): the tanh RNN, the LSTM and the GRU under one protocol.

For every task and cell: a validation split cut from the training data; the learning rate
tuned per cell by a sweep (every learning rate x seed trained together, vmapped in one jit);
early stopping on validation, keeping each model's best-validation params; the learning rate
with the best mean validation metric over seeds is chosen, and only then is the test split
evaluated, once, with those params. Cells are compared at equal width and at equal parameters
(a tanh RNN widened to the LSTM's parameter count). The char LM is a stacked LSTM under
``experiments/char_lm.py``'s protocol (truncated BPTT, dropout, selection on the held-out
text's first part, report on the rest; ``_common.train_char_lm``).

On the library: ``memcell.train.fit`` trains each sweep, keeping each model's best params
(``KeepBest``); ``memcell.train.choose_learning_rate`` chooses the rate; the gradient flow is
``memcell.tasks.gradient_norms_by_lag``; the figures are ``memcell.plot``'s.

    python experiments/fair_data.py                       # vowels, digits, sunspots, char_lm
    python experiments/fair_data.py --quick true          # a short version (vowels, a few hundred updates)
    python experiments/fair_data.py --tasks vowels --seeds 5

Writes results/fair_data/report.md, results.json and figures (learning curves, the loss
gradient's norm by lag before the readout on the task's validation sequences).
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
from memcell.train import summarize  # noqa: E402

from _common import char_lm_model, parse_config, provenance, provenance_line, train_char_lm  # noqa: E402

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
    lm_warmup: int = 100
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


def sweep(task_valid, model, *, lrs, seeds, steps, batch_size, eval_every, patience, clip_norm):
    """Trains every (learning rate, seed) pair together with ``memcell.train.fit``, keeping each
    one's best-validation-loss params (``KeepBest`` with ``patience``), and chooses the rate with
    the best mean validation loss over seeds (``choose_learning_rate``).

    Returns a dict: ``choice`` (the ``LearningRateChoice``), ``best_params`` (stacked, lr-major),
    ``best_loss`` and ``best_valid`` (the task's metric at those params) ``[n_lr, n_seed]``,
    ``best_step`` (per model), ``history`` (one dict an evaluation), ``steps_run`` and ``wall_time``.
    """
    from memcell import tasks, train

    model_seeds, model_lrs = train.sweep_models(lrs, seeds)  # the same init and data for a seed at every lr
    tx = train.optimizer(lrs[0], clip_norm=clip_norm)
    states = train.init_states(model_seeds, lambda k: model.init(k, task_valid.input_size), tx,
                               learning_rates=model_lrs)
    # select on the validation loss: smoother than accuracy on a few hundred cases
    r = train.fit(train.make_train_step(tasks.loss_fn(task_valid, model), tx), states,
                  lambda key: task_valid.sample(key, batch_size), steps=steps, eval_fn=tasks.eval_fn(task_valid, model),
                  eval_every=eval_every, keep_best=train.KeepBest("loss", "min", patience=patience),
                  steps_per_call=eval_every, progress=False)
    at = {h["step"]: h for h in r.history}
    metric = task_valid.metric
    best_valid = [np.nan if s is None else at[s][metric][i] for i, s in enumerate(r.best_step)]
    shape = (len(lrs), len(seeds))
    best_loss = np.asarray(r.best_value, np.float64)
    return {"choice": train.choose_learning_rate(best_loss, lrs, mode="min"), "best_params": r.best_params,
            "best_valid": np.asarray(best_valid, np.float64).reshape(shape), "best_loss": best_loss.reshape(shape),
            "best_step": r.best_step, "history": r.history, "steps_run": r.history[-1]["step"],
            "wall_time": r.wall_time}


def evaluate_test(task_test, model, params) -> dict:
    """The test split's metrics for stacked ``params`` (one model a seed): the only place the test split is read."""
    import jax

    from memcell import tasks

    out = jax.jit(jax.vmap(tasks.eval_fn(task_test, model)))(params)
    return {k: np.asarray(v).tolist() for k, v in out.items()}


def build_model(cell: str, hidden: int, task, layers: int, backend: str):
    from memcell import tasks

    cells = [tasks.make_cell(cell, hidden) for _ in range(layers)]
    return tasks.sequence_model(cells[0] if layers == 1 else cells, task.output_size, task.readout, backend=backend)


def run_one(task_valid, task_test, cell, hidden, *, layers=1, lrs, seeds, steps, batch_size, eval_every, patience,
            clip_norm, backend):
    """One cell on one task under the protocol: sweep on validation, choose the lr, test once."""
    import jax

    model = build_model(cell, hidden, task_valid, layers, backend)
    seeds = list(range(seeds))
    t0 = time.process_time()
    sw = sweep(task_valid, model, lrs=lrs, seeds=seeds, steps=steps, batch_size=batch_size, eval_every=eval_every,
               patience=patience, clip_norm=clip_norm)
    choice, k = sw["choice"], sw["choice"].index
    chosen = choice.take(sw["best_params"])
    test = evaluate_test(task_test, model, chosen)
    return {
        "cell": cell, "hidden": hidden, "layers": layers, "params": param_count(jax.tree.map(lambda x: x[0], chosen)),
        "lrs": list(lrs), "seeds": seeds, "chosen_lr": choice.learning_rate,
        "valid_by_lr": {str(lr): summarize(sw["best_valid"][i]) for i, lr in enumerate(lrs)},
        "valid_loss_by_lr": {str(lr): summarize(sw["best_loss"][i]) for i, lr in enumerate(lrs)},
        "best_step": [sw["best_step"][i] for i in choice.models], "steps_run": sw["steps_run"],
        "valid": summarize(sw["best_valid"][k]), "test": {m: summarize(v) for m, v in test.items()}, "test_per_seed": test,
        "wall_time": sw["wall_time"], "cpu_minutes": (time.process_time() - t0) / 60,
        "curve": [{"step": h["step"], **{m: choice.take(np.asarray(h[m])).tolist() for m in h if m != "step"}}
                  for h in sw["history"]],
        "_model": model, "_params": chosen,
    }


def gradient_flow(task_valid, model, params, init_params, n: int = 64) -> dict:
    """``||dL/dh||`` by lag before each sequence's readout, mean over the first ``n`` validation
    sequences (``memcell.tasks.gradient_norms_by_lag``), for the trained and the initial params of seed 0."""
    from memcell import tasks

    g = lambda p: np.asarray(tasks.gradient_norms_by_lag(task_valid, model, p, n=n)).tolist()
    return {"trained": g(params), "initial": g(init_params)}


def fmt(s: dict, digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def run_task(config: Config, name: str, out: pathlib.Path) -> dict:
    """Every cell of ``config`` on task ``name`` under the protocol: results, curves and gradient flow."""
    import jax

    from memcell import tasks

    t_task = time.process_time()
    if name == "char_lm":
        return run_char_lm(config, out)
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
          "batch_size": config.batch_size, "eval_every": config.eval_every}
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


def run_char_lm(config: Config, out: pathlib.Path) -> dict:
    """The char LM under ``experiments/char_lm.py``'s protocol (``_common.train_char_lm``), one run a
    cell of ``config.lm_cells``, in ``run_task``'s form (valid: the held-out text's selection part; test: the rest)."""
    from memcell import tasks

    t_task = time.process_time()
    task = tasks.char_lm(config.lm_length)
    runs, curves = {}, {}
    for cell in config.lm_cells:
        model = char_lm_model(task, cell, config.lm_hidden, config.lm_layers, config.lm_dropout, config.backend)
        r = train_char_lm(task, model, lrs=config.lm_lrs, seeds=config.lm_seeds, steps=config.lm_steps,
                          batch_size=config.lm_batch_size, length=config.lm_length, warmup=config.lm_warmup,
                          eval_every=config.lm_eval_every, valid_chars=config.lm_valid_chars,
                          log_path=out / "logs" / f"char_lm_{cell}.jsonl")
        label = f"{cell} {config.lm_layers}x{config.lm_hidden}" if config.lm_layers > 1 else f"{cell} {config.lm_hidden}"
        k = config.lm_lrs.index(r["chosen_lr"]) * config.lm_seeds
        curves[label] = [{"step": h["step"], "bpc": h["select_bpc"][k:k + config.lm_seeds]} for h in r["history"]]
        runs[label] = {"cell": cell, "hidden": config.lm_hidden, "layers": config.lm_layers, "params": r["params"],
                       "lrs": list(config.lm_lrs), "seeds": list(range(config.lm_seeds)), "chosen_lr": r["chosen_lr"],
                       "valid_by_lr": {lr: summarize(v) for lr, v in r["select_by_lr"].items()},
                       "best_step": r["best_step"], "steps_run": r["steps_run"], "valid": summarize(r["select_bpc"]),
                       "test": {"bpc": summarize(r["report_bpc"])}, "test_per_seed": {"bpc": r["report_bpc"]},
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
        result = {**run_task(config, name, out), **provenance()}
        (out / "tasks" / f"{name}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    order = ["vowels", "digits", "permuted_digits", "sunspots", "char_lm"]
    saved = sorted(out.glob("tasks/*.json"), key=lambda f: order.index(f.stem) if f.stem in order else len(order))
    results = {f.stem: json.loads(f.read_text()) for f in saved}
    lines = _report_lines(results)
    _figures(out, results, lines)
    text = ["# Fair real-data comparisons", "", provenance_line(provenance()), ""] + lines
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
    from memcell import plot

    for name, t in results.items():
        plot.evaluation_curves(out / f"curves_{name}.png", {f"{name}: validation, chosen lr": t["curves"]}, t["metric"])
        lines.append(f"![{name}: validation {t['metric']} against steps](curves_{name}.png)")
    flows = {name: t["gradient_flow"] for name, t in results.items() if t["gradient_flow"]}
    if flows:
        plot.norms_by_lag(out / "gradient_flow.png", {f"{name}: ||dL/dh|| / max": runs for name, runs in flows.items()},
                          relative_to="max", xlabel="lag k (steps before the readout)", ylabel="||dL/dh|| / max")
        lines.append("![gradient norm by lag before the readout, trained (solid) and initial (dashed) params]"
                     "(gradient_flow.png)")


if __name__ == "__main__":
    main(parse_config(Config))
