"""What selectivity buys (issue 24): selective copying and multi-query associative recall for ten cells.

Protocol, the same for every cell and ablation: the model is one cell and a dense readout, its
width chosen so the whole model has about ``target_params`` parameters (each task its own
count); every (learning rate, seed) pair trains at once (vmapped, ``memcell.tasks.train_task``),
evaluated on a validation draw (the task's test set drawn with another seed); the learning rate
with the best mean final validation metric over seeds is chosen, and only then is the test set
read, once, with those models' final params. Ablations: the LSTM without its forget gate,
Mamba with a fixed step size Delta (``dt_rank=0``), Mamba and Gated DeltaNet without their short
convolution (``conv_size=1``), and the mLSTM with one (``with_short_conv``). A state-size sweep
reruns some cells on mqar at other widths, at the rate chosen at the main width. Gate probes (the jacobian toolkit):
for the trained LSTM and Mamba on selective copying, the diagonal of the carry-to-carry Jacobian
(``f_t`` for the LSTM, ``exp(Delta_t A)`` for Mamba: what the step keeps) and ``||d state_end /
d x_t||`` (what of each input is in the state when recall begins), on test sequences.

    python experiments/selectivity.py                    # everything (see docs/selectivity.md for the budget)
    python experiments/selectivity.py --quick true       # a few minutes: tiny widths and budgets
    python experiments/selectivity.py --tasks mqar --cells lstm,mamba --resume true

Writes results/selectivity/: results.json (every number, per seed; the file is rewritten after
each cell, and ``--resume true`` skips what it holds), report.md, curves_TASK.png, sweep.png and gates.png.

The learning rate is chosen by ``memcell.train.choose_learning_rate`` (final validation metric,
mean over seeds; a diverged seed sinks its rate).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import parse_config, provenance

CELLS = ("rnn", "lstm", "gru", "mingru", "lru", "rglru", "slstm", "mlstm", "mamba", "gated_deltanet")
# name -> (the table's cell, the options that make the ablation)
# The two without their short convolution (conv_size 1: a per-channel scale, no mixing across steps): one
# layer whose q, k, v (or B, C, x) come from the current token alone cannot put a key and the value one
# step later into one outer product, which associative recall asks (the mLSTM has no convolution).
# And the converse: the mLSTM after such a convolution (``with_short_conv``), so that one step sees a key
# and the value after it together.
VARIANTS = {"lstm_nofg": ("lstm", {"forget_gate": False}), "mamba_fixed_dt": ("mamba", {"dt_rank": 0}),
            "mamba_noconv": ("mamba", {"conv_size": 1}), "gated_deltanet_noconv": ("gated_deltanet", {"conv_size": 1}),
            "mlstm_conv": ("mlstm", {})}
CONV_INPUT = frozenset({"mlstm_conv"})  # variants built with with_short_conv
# Cells whose width must be a multiple of HEADS: they run HEADS heads, as the table builds the xLSTM cells
# (Gated DeltaNet's factory defaults to one head; several heads, as in the paper, also keep its memories small).
HEADS = 4
MULTI_HEAD = {"slstm": {}, "mlstm": {}, "gated_deltanet": {"num_heads": HEADS}}
VALID_SEED = 1  # the validation draw's seed; the test set is seed 0's


@dataclasses.dataclass(frozen=True)
class Config:
    """The selectivity study: cells at matched parameter counts, lr chosen on validation, 3 seeds."""

    tasks: tuple[str, ...] = ("selective_copy", "mqar")
    cells: tuple[str, ...] = CELLS
    ablations: tuple[str, ...] = tuple(VARIANTS)
    target_params: int = 8000  # every model (cell + readout) within a few % of this, per task
    sel_length: int = 48  # selective copying: context steps, with sel_tokens data tokens among them, then the recall
    sel_tokens: int = 6
    sel_vocab: int = 8
    mqar_length: int = 48
    mqar_vocab: int = 32
    mqar_pairs: int = 6
    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    seeds: int = 3
    steps: int = 1200
    batch_size: int = 32
    eval_every: int = 100
    clip_norm: float = 1.0
    n_valid: int = 500
    n_test: int = 1000
    sweep_cells: tuple[str, ...] = ("lstm", "gru", "lru", "mlstm", "mamba", "gated_deltanet")
    sweep_params: tuple[int, ...] = (3000, 24000)  # mqar at these sizes too (the main size is target_params)
    gates: bool = True
    resume: bool = False
    quick: bool = False
    out: str = "results/selectivity"


QUICK = {"cells": ("lstm", "lru", "mamba", "gated_deltanet"), "ablations": ("mamba_fixed_dt",), "target_params": 2500,
         "sel_length": 24, "sel_tokens": 4, "sel_vocab": 4, "mqar_length": 24, "mqar_vocab": 16, "mqar_pairs": 3, "lrs": (3e-3,), "seeds": 2,
         "steps": 60, "eval_every": 30, "n_valid": 64, "n_test": 64, "sweep_cells": ("mamba",), "sweep_params": (1200,)}


# ----------------------------------------------------------------------------- models


def cell_spec(name: str) -> tuple[str, dict]:
    """``(table name, options)`` of a cell or ablation name."""
    return VARIANTS.get(name, (name, {}))


class ConvInputParams(NamedTuple):
    conv_w: Any  # [k, d] depthwise taps, oldest first (``memcell.cells._conv``'s layout)
    inner: Any  # the wrapped cell's params


class ConvInputCarry(NamedTuple):
    conv: Any  # [*b, k - 1, d] the last k - 1 inputs: a window, not memory (``state_size`` leaves it out)
    inner: Any  # the wrapped cell's carry


def with_short_conv(cell, input_size: int, conv_size: int = 4):
    """``cell`` fed ``silu(conv(x))``: the causal depthwise convolution of width ``conv_size`` (no bias) and
    SiLU that Mamba and Gated DeltaNet put before their recurrence (xLSTM's mLSTM block before q and k),
    taps ``U(+-1/sqrt(k))`` as theirs; the window is part of the carry. A user's cell (no spec): the
    reference path runs it."""
    import math

    import jax
    import jax.numpy as jnp

    from memcell.cells._conv import conv_step
    from memcell.types import Cell

    K = conv_size

    def init(key, d: int):
        if d != input_size:
            raise ValueError(f"input_size: expected {input_size} (the wrapper's), got {d}")
        k_conv, k_inner = jax.random.split(key)
        bound = 1 / math.sqrt(K)
        return ConvInputParams(conv_w=jax.random.uniform(k_conv, (K, d), jnp.float32, -bound, bound),
                               inner=cell.init(k_inner, d))

    def initial_carry(params, batch_shape=()):
        inner = cell.initial_carry(params.inner, batch_shape)
        return ConvInputCarry(conv=jnp.zeros(tuple(batch_shape) + (K - 1, input_size), jax.tree.leaves(inner)[0].dtype),
                              inner=inner)

    def step(params, carry, x):
        window, u = conv_step(carry.conv, x, params.conv_w, None)
        inner, y = cell.step(params.inner, carry.inner, jax.nn.silu(u).astype(x.dtype))
        return ConvInputCarry(conv=window, inner=inner), y

    return Cell(init, initial_carry, step)


def build(name: str, hidden: int, task):
    from memcell import tasks

    base, options = cell_spec(name)
    cell = tasks.make_cell(base, hidden, **options, **MULTI_HEAD.get(base, {}))
    if name in CONV_INPUT:
        cell = with_short_conv(cell, task.input_size)
    return tasks.sequence_model(cell, task.output_size, task.readout, backend="auto")


def param_count(model, task) -> int:
    import jax

    shapes = jax.eval_shape(lambda k: model.init(k, task.input_size), jax.random.key(0))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def state_size(model, task) -> dict:
    """Floats in the carry: ``all`` leaves, and ``memory`` without the convolution windows (a complex unit: 2)."""
    import jax
    import jax.numpy as jnp

    params = jax.eval_shape(lambda k: model.init(k, task.input_size), jax.random.key(0))
    carry = jax.eval_shape(lambda p: model.cell.initial_carry(p.rnn, ()), params)
    leaves = jax.tree_util.tree_flatten_with_path(carry)[0]
    size = lambda x: int(np.prod(x.shape)) * (2 if jnp.issubdtype(x.dtype, jnp.complexfloating) else 1)
    return {"all": sum(size(x) for _, x in leaves),
            "memory": sum(size(x) for path, x in leaves if jax.tree_util.keystr(path) != ".conv")}


def matched_width(name: str, task, target: int) -> tuple[int, int]:
    """``(hidden, params)`` with the model's parameter count closest to ``target`` (bisection, then a local look)."""
    step = HEADS if cell_spec(name)[0] in MULTI_HEAD else 1  # widths the cell takes
    count = lambda k: param_count(build(name, k * step, task), task)
    lo, hi = 1, 1024 // step
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= target else (lo, mid)
    best = min(range(max(1, lo - 2), lo + 3), key=lambda k: abs(count(k) - target))
    return best * step, count(best)


# ----------------------------------------------------------------------------- protocol


def make_tasks(config: Config, name: str):
    """``(validation, test)`` versions of task ``name``: the same sampler, test sets drawn with other seeds."""
    from memcell import tasks

    if name == "selective_copy":
        kw = dict(length=config.sel_length, num_tokens=config.sel_tokens, vocab_size=config.sel_vocab)
    elif name == "mqar":
        kw = dict(length=config.mqar_length, vocab_size=config.mqar_vocab, num_pairs=config.mqar_pairs)
    else:
        raise SystemExit(f"--tasks: expected selective_copy or mqar, got {name!r}")
    valid = tasks.make(name, seed=VALID_SEED, n_test=config.n_valid, **kw)
    return valid, tasks.make(name, n_test=config.n_test, **kw)


def stats(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def run_one(config: Config, name: str, hidden: int, valid_task, test_task, lrs) -> dict:
    """One cell at one width: every (lr, seed) trained at once, the lr chosen on validation, test read once."""
    import jax

    from memcell import tasks, train

    model = build(name, hidden, valid_task)
    seeds = list(range(config.seeds))
    t0 = time.perf_counter()
    report = tasks.train_task(valid_task, model, seeds=[s for _ in lrs for s in seeds],
                              learning_rate=[lr for lr in lrs for _ in seeds], steps=config.steps,
                              batch_size=config.batch_size, clip_norm=config.clip_norm, eval_every=config.eval_every)
    metric, n = valid_task.metric, len(seeds)
    valid = np.asarray(report.final[metric], np.float64).reshape(len(lrs), n)
    choice = train.choose_learning_rate(valid, lrs, mode=valid_task.mode)
    k = choice.index
    chosen = choice.take(report.state.params)
    test = jax.jit(jax.vmap(tasks.eval_fn(test_task, model)))(chosen)
    test = {m: np.asarray(v, np.float64).tolist() for m, v in test.items()}
    base = test_task.baselines["memoryless"][metric]
    curve = [{"step": h["step"], metric: np.asarray(h[metric])[k * n:(k + 1) * n].tolist()} for h in report.history]
    return {
        "cell": name, "hidden": hidden, "params": param_count(model, valid_task), "state": state_size(model, valid_task),
        "lrs": list(lrs), "chosen_lr": lrs[k], "valid_by_lr": {str(lr): valid[i].tolist() for i, lr in enumerate(lrs)},
        "test": test, "test_summary": stats(test[metric]), "beats_memoryless": int(np.sum(np.asarray(test[metric]) > base)),
        "solved": int(np.sum(np.asarray(test[metric]) >= test_task.solved)), "curve": curve,
        "skipped_steps": np.asarray(report.skipped_steps).tolist(), "wall_s": time.perf_counter() - t0,
        "_model": model, "_params": chosen,
    }


# ----------------------------------------------------------------------------- gate probes


def gate_probe(model, params, task, n: int = 16) -> dict:
    """Seed 0's retention per step and ``||d state_end / d x_t||`` over the context of ``n`` test
    sequences, each split by data and noise steps.

    Retention is the carry-to-carry Jacobian's diagonal, geometric mean over units: ``f_t`` for the LSTM (its
    ``d c_t / d c_{t-1}``), ``exp(Delta_t A)`` for Mamba (``d h_t / d h_{t-1}``). Both Jacobians are
    diagonal (tests/test_mamba.py checks Mamba's); ``memcell.jacobian.carry_gates`` reads it off the
    step. The influence of each input on the state at the end of the context is
    ``memcell.jacobian.input_gradient_norms``.
    """
    import jax
    import jax.numpy as jnp

    from memcell import jacobian, tasks

    T = task.info["length"]
    xs = tasks.features(task, jnp.asarray(task.test["xs"][:n, :T]))  # the context: what recall starts from
    data = np.asarray(task.test["xs"][:n, :T]) > 0
    p = jax.tree.map(lambda a: a[0], params).rnn
    cell = model.cell
    memory = "c" if "c" in cell.initial_carry(p, ())._fields else "h"

    gates = jacobian.carry_gates(cell, p, xs, field=memory)  # [n, T, *memory's shape]: each unit's d m_t / d m_{t-1}
    # geometric mean over units: Mamba's modes decay at rates A spread over 1..n, and a plain mean would
    # show only its slowest ones; log-mean is -Delta_t mean|A| there, so it tracks the step size
    logs = jnp.log(jnp.maximum(gates, 1e-30)).reshape(gates.shape[:2] + (-1,))
    keep = np.asarray(jnp.exp(jnp.mean(logs, axis=-1)))  # [n, T]
    write = np.asarray(jacobian.input_gradient_norms(cell, p, xs, hidden=memory))  # [n, T]
    return {"memory": memory, "retention": keep.tolist(), "influence": write.tolist(), "data": data.tolist(),
            "retention_data": float(keep[data].mean()), "retention_noise": float(keep[~data].mean()),
            "influence_data": float(np.median(write[data])), "influence_noise": float(np.median(write[~data]))}


def gates_figure(path, probes: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(probes), figsize=(4.2 * len(probes), 5.6), squeeze=False)
    for j, (name, pr) in enumerate(probes.items()):
        keep, write, data = (np.asarray(pr[k]) for k in ("retention", "influence", "data"))
        t = np.arange(keep.shape[1])
        for row, (vals, label) in enumerate(((keep[0], "retention (geometric mean of the Jacobian diagonal)"),
                                             (write[0], "||d state_end / d x_t||"))):
            ax = axes[row, j]
            ax.plot(t, vals, lw=1.2, color="tab:blue")
            ax.plot(t[data[0]], vals[data[0]], "o", ms=4, color="tab:red", label="data token")
            if row == 1:
                ax.set_yscale("log")
            ax.set_title(f"{name}: {label}", fontsize=8)
            ax.set_xlabel("context step (test sequence 0)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- the study

GATE_CELLS = ("lstm", "lstm_nofg", "mamba", "mamba_fixed_dt")  # probed on selective copying


def public(run: dict) -> dict:
    return {k: v for k, v in run.items() if not k.startswith("_")}


def save(out: pathlib.Path, config: Config, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"config": dataclasses.asdict(config), "results": results},
                                                 indent=1, default=float) + "\n")


def run_task(config: Config, name: str, results: dict, out: pathlib.Path, prov: dict) -> None:
    """Every cell and ablation on task ``name``; each result saved as soon as it exists, with the
    provenance of the call that trained it (``--resume`` can join calls made on other commits)."""
    valid, test = make_tasks(config, name)
    done = results.setdefault(name, {"runs": {}, "baselines": test.baselines, "info": test.info})
    for cell in config.cells + config.ablations:
        if cell in done["runs"]:
            continue
        hidden, n = matched_width(cell, valid, config.target_params)
        print(f"[{name}] {cell}: hidden {hidden}, {n} params", flush=True)
        run = run_one(config, cell, hidden, valid, test, config.lrs)
        if name == "selective_copy" and config.gates and cell in GATE_CELLS:
            run["gates"] = gate_probe(run["_model"], run["_params"], test)
        done["runs"][cell] = {**public(run), "provenance": prov}
        s = run["test_summary"]
        print(f"  lr {run['chosen_lr']}: test {test.metric} {s['mean']:.4f} ± {s['std']:.4f} ({run['wall_s']:.0f} s)",
              flush=True)
        save(out, config, results)


def run_sweep(config: Config, results: dict, out: pathlib.Path, prov: dict) -> None:
    """mqar at other model sizes, each cell at the learning rate chosen at the main size."""
    valid, test = make_tasks(config, "mqar")
    sweep = results.setdefault("sweep", {})
    for cell in config.sweep_cells:
        main = results.get("mqar", {}).get("runs", {}).get(cell)
        if main is None:
            print(f"[sweep] {cell}: no main mqar run to take the learning rate from; skipped", flush=True)
            continue
        for target in config.sweep_params:
            key = f"{cell}@{target}"
            if key in sweep:
                continue
            hidden, n = matched_width(cell, valid, target)
            print(f"[sweep] {cell} at {target} params: hidden {hidden}, {n} params", flush=True)
            run = run_one(config, cell, hidden, valid, test, (main["chosen_lr"],))
            sweep[key] = {**public(run), "provenance": prov}
            save(out, config, results)


def provenance_lines(results: dict) -> list[str]:
    """One line per call whose runs the report holds (command, commit, machine, the runs it trained);
    runs saved before the results carried their provenance are counted as such."""
    calls: dict = {}
    runs = [(f"{task}/{cell}", r) for task in ("selective_copy", "mqar")
            for cell, r in results.get(task, {}).get("runs", {}).items()]
    runs += [(f"sweep/{key}", r) for key, r in results.get("sweep", {}).items()]
    for key, r in runs:
        p = r.get("provenance")
        line = (f"Command: `{p['command']}`; commit `{p['commit']}`; machine: {p['machine']}" if p
                else "Provenance not saved with the results (a run older than the field)")
        calls.setdefault(line, []).append(key)
    if len(calls) == 1:
        return [f"{line}." for line in calls] + [""]
    return [f"{line}: {len(keys)} runs ({', '.join(keys)})." for line, keys in calls.items()] + [""]


def fmt(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def report(config: Config, results: dict, out: pathlib.Path) -> list[str]:
    """The markdown tables and the figures, from ``results`` alone."""
    lines, panels = [], {}
    for name in ("selective_copy", "mqar"):  # every task run so far (a --resume call may run one task)
        res = results.get(name)
        if not res:
            continue
        base = res["baselines"]["memoryless"]
        metric = "accuracy"
        lines += [f"## {name}", "", f"memoryless baseline: accuracy {base['accuracy']:.3f}; {res['info']['protocol']}", "",
                  "| cell | hidden | params | state floats | lr (chosen on validation) | test accuracy (mean ± std) | "
                  "per seed | beats memoryless | solved (>= 0.99) | wall s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for cell, r in res["runs"].items():
            seeds = ", ".join(f"{v:.3f}" for v in r["test"][metric])
            lines.append(f"| {cell} | {r['hidden']} | {r['params']} | {r['state']['memory']} | {r['chosen_lr']:g} | "
                         f"{fmt(r['test_summary'])} | {seeds} | {r['beats_memoryless']}/{len(r['test'][metric])} | "
                         f"{r['solved']}/{len(r['test'][metric])} | {r['wall_s']:.0f} |")
        lines.append("")
        panels[name] = {cell: r["curve"] for cell, r in res["runs"].items()}
    if panels:
        from memcell import plot

        plot.evaluation_curves(out / "curves.png", panels, "accuracy",
                               baselines={t: {"memoryless": results[t]["baselines"]["memoryless"]["accuracy"]}
                                          for t in panels}, threshold=0.99)
    lines += sweep_report(results, out) + gates_report(results, out)
    return lines


def sweep_report(results: dict, out: pathlib.Path) -> list[str]:
    sweep = dict(results.get("sweep", {}))
    if not sweep:
        return []
    for cell, r in results.get("mqar", {}).get("runs", {}).items():  # the main size is a point of the sweep too
        if any(k.startswith(cell + "@") for k in sweep):
            sweep[f"{cell}@main"] = r
    by_cell: dict = {}
    for key, r in sweep.items():
        by_cell.setdefault(key.split("@")[0], []).append(r)
    lines = ["## mqar: accuracy against state size", "",
             "| cell | hidden | params | state floats | lr | test accuracy (mean ± std) |", "|---|---|---|---|---|---|"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for cell, runs in by_cell.items():
        runs.sort(key=lambda r: r["state"]["memory"])
        for r in runs:
            lines.append(f"| {cell} | {r['hidden']} | {r['params']} | {r['state']['memory']} | {r['chosen_lr']:g} | "
                         f"{fmt(r['test_summary'])} |")
        x = [r["state"]["memory"] for r in runs]
        y = [r["test_summary"]["mean"] for r in runs]
        err = [[r["test_summary"]["mean"] - r["test_summary"]["min"] for r in runs],
               [r["test_summary"]["max"] - r["test_summary"]["mean"] for r in runs]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=cell)
    ax.set_xscale("log")
    ax.set_xlabel("recurrent state (floats, conv windows excluded)")
    ax.set_ylabel("mqar test accuracy (min-max over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=110)
    plt.close(fig)
    return lines + [""]


def gates_report(results: dict, out: pathlib.Path) -> list[str]:
    runs = results.get("selective_copy", {}).get("runs", {})
    probes = {cell: runs[cell]["gates"] for cell in GATE_CELLS if cell in runs and "gates" in runs[cell]}
    if not probes:
        return []
    gates_figure(out / "gates.png", probes)
    lines = ["## Gate probes (selective copying, seed 0, 16 test sequences)", "",
             "| cell | retention at data steps | at noise steps | median d state_end / d x_t: data | noise |",
             "|---|---|---|---|---|"]
    for cell, pr in probes.items():
        lines.append(f"| {cell} | {pr['retention_data']:.4f} | {pr['retention_noise']:.4f} | "
                     f"{pr['influence_data']:.3g} | {pr['influence_noise']:.3g} |")
    return lines + [""]


def main(argv=None) -> dict:
    config = parse_config(Config, argv)
    if config.quick:  # the quick budget for every setting left at its default (what was given stays)
        defaults = Config()
        quick = {k: v for k, v in QUICK.items() if getattr(config, k) == getattr(defaults, k)}
        config = dataclasses.replace(config, **quick)
    unknown = [c for c in config.cells + config.ablations + config.sweep_cells if cell_spec(c)[0] not in CELLS]
    if unknown:
        raise SystemExit(f"--cells/--ablations/--sweep-cells: unknown {unknown}; cells: {list(CELLS)}, "
                         f"ablations: {list(VARIANTS)}")
    out = pathlib.Path(config.out)
    path = out / "results.json"
    results = json.loads(path.read_text())["results"] if config.resume and path.exists() else {}
    t0 = time.perf_counter()
    prov = provenance(None if argv is None else [__file__, *argv])
    for name in config.tasks:
        run_task(config, name, results, out, prov)
    if "mqar" in config.tasks and config.sweep_params:
        run_sweep(config, results, out, prov)
    results["wall_s_this_call"] = time.perf_counter() - t0
    save(out, config, results)
    lines = report(config, results, out)
    cfg = json.dumps(dataclasses.asdict(config))
    (out / "report.md").write_text("\n".join(["# Selectivity", "", *provenance_lines(results), f"Config: `{cfg}`", ""]
                                             + lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
