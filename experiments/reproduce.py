"""Reproductions of published long-dependency protocols, with the paper's finding beside ours.

    python experiments/reproduce.py --list                      # the reproductions and their budgets
    python experiments/reproduce.py --only adding_arjovsky      # one of them, at its default budget
    python experiments/reproduce.py --quick                     # every one, at a short budget (minutes)
    python experiments/reproduce.py --only greff_variants --seeds 3 --steps 600 --out results/reproduce

The reproductions (papers, protocols, claims) are the data of ``reproductions.toml``. Each run of
a recorded protocol writes results/reproduce/NAME/; a run with other settings (``--quick``,
``--steps``, ``--seeds``, ``--lengths``, ``--eval-every``, ``--cells``) writes results/reproduce/
NAME/SETTINGS/ (``quick``, ``steps=4000-lengths=400``, ...), never over the recorded run, and its
report names its settings. Each writes ``results.json`` (every number, per seed), ``report.md``
(the table: the paper's finding beside ours, and a verdict per row),
``curves.png`` (test metric against updates, mean over seeds with a min-max band, baselines
dashed; a sweep of several learning rates trains against a validation set instead, chooses the
rate on it with ``memcell.train.choose_learning_rate``, and reads the test set once with the
chosen rate's params) and, where it explains the result, ``flow.png`` (the loss gradient's norm
against lag, ``memcell.tasks.gradient_norms_by_lag``, its slope by ``memcell.jacobian.decay_rate``,
at init and after training). Figures are ``memcell.plot``'s.

The published budgets (tens of thousands of updates at T = 750) do not fit a shared 2-core CPU;
every protocol below states its budget, and the verdicts only say what that budget allows:
"agrees", "disagrees", or "not reached" where the paper's effect needs more updates than we ran.
Seeds and learning rates of one (cell, T) are trained together in one jit (vmapped), on the
fused path where it applies (``backend="auto"``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time
import tomllib

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import provenance, provenance_line, split_heldout  # noqa: E402

# A run "beats" a baseline when its final test metric is below this fraction of it (min tasks):
# a clear margin, so a seed hovering at the baseline does not count.
BEAT_FRACTION = 0.9
# The validation draw of a synthetic task: the task factory's ``seed`` (which fixes its test set)
# set to this instead of 0, so the two sets are independent draws of the same distribution.
VALID_SEED = 1000


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One training protocol, applied to every (cell, T) of a reproduction."""

    task: str  # adding or copy
    lengths: tuple[int, ...]
    cells: tuple[str, ...]  # memcell.tasks.CELLS, or "lstm_chrono" (chrono init, max_timescale = the sequence length)
    hidden: int
    steps: int
    batch_size: int
    lrs: tuple[float, ...]  # several: a vmapped sweep, the best by mean final metric on a validation draw
    optimizer: str = "rmsprop"
    clip_norm: float | None = 1.0
    seeds: int = 2
    eval_every: int = 100
    n_test: int = 500
    stop_at_solved: bool = True
    flow: bool = True  # the gradient-flow figure at the longest T


@dataclasses.dataclass(frozen=True)
class GreffProtocol:
    """Greff et al.'s variants on our small tasks: a learning-rate sweep per variant, several seeds."""

    tasks: tuple[str, ...] = ("adding", "vowels")  # "char_lm" too where the budget allows (~5 CPU-minutes more)
    variants: tuple[str, ...] = ("vanilla", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG")
    hidden: int = 32
    steps: int = 300
    batch_size: int = 32
    lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    seeds: int = 3
    adding_length: int = 50
    char_length: int = 50
    eval_every: int = 100


# ----------------------------------------------------------------------------- the reproductions


def _load(path: pathlib.Path) -> tuple[dict, dict]:
    """``(PAPERS, REPRODUCTIONS)`` from the data file: each reproduction's paper, protocols, claims."""
    data = tomllib.loads(path.read_text())
    papers = data.pop("papers")

    def protocol(fields: dict):
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        return (GreffProtocol if "variants" in fields else Protocol)(**fields)

    return papers, {name: {**spec, "protocol": protocol(spec["protocol"]), "quick": protocol(spec["quick"])}
                    for name, spec in data.items()}


# name -> {"paper", "differs", "protocol", "quick", "claims"}, in priority order
PAPERS, REPRODUCTIONS = _load(pathlib.Path(__file__).with_name("reproductions.toml"))


# ----------------------------------------------------------------------------- training


def _cell(label: str, hidden: int, seq_len: int, **options):
    from memcell import tasks

    if label == "lstm_chrono":
        return tasks.make_cell("lstm", hidden, init="chrono", max_timescale=float(seq_len), **options)
    return tasks.make_cell(label, hidden, **options)


def _seq_len(task) -> int:
    return int(np.shape(task.test["xs"])[1])


def _beats(task, value: float) -> bool:
    base = min(v[task.metric] for v in task.baselines.values() if task.metric in v)
    return value < BEAT_FRACTION * base if task.mode == "min" else value > base + (1 - BEAT_FRACTION) * (1 - base)


def train_sweep(task, cell, *, seeds: int, lrs, steps: int, batch_size: int, optimizer: str = "rmsprop",
                clip_norm=1.0, eval_every: int = 100, stop_at_solved: bool = False, task_test=None) -> dict:
    """Trains ``cell`` on ``task`` for every (learning rate, seed) at once (``tasks.train_task``, the
    models laid out by ``train.sweep_models``), chooses the rate by the mean over seeds of the final
    metric on ``task.test`` (``train.choose_learning_rate``: pass a task whose ``.test`` is a validation
    set), then reads ``task_test.test`` once with the chosen rate's final params.

    Returns a dict: ``lr``, ``per_lr`` (the mean final validation metric a rate), ``valid`` and
    ``final`` (per seed of the chosen rate: on ``task.test``, and the number to report, on
    ``task_test.test`` when given, else ``valid``), ``test`` (every metric on ``task_test.test``, or
    None), ``history`` (the chosen rate's, on ``task.test``), ``steps``, ``wall_time``, ``model``,
    ``params`` (the chosen rate's, stacked over seeds).
    """
    from memcell import tasks, train

    model = tasks.sequence_model(cell, task.output_size, task.readout, backend="auto")
    lrs = [float(x) for x in lrs]
    model_seeds, model_lrs = train.sweep_models(lrs, range(seeds))
    t0 = time.perf_counter()
    r = tasks.train_task(task, model, seeds=model_seeds, steps=steps, batch_size=batch_size,
                         learning_rate=model_lrs if len(lrs) > 1 else lrs[0], optimizer=optimizer,
                         clip_norm=clip_norm, eval_every=eval_every, stop_at_solved=stop_at_solved)
    valid = np.asarray(r.final[task.metric], np.float64)
    choice = train.choose_learning_rate(valid, lrs, mode=task.mode)
    history = [{"step": h["step"], **{k: choice.take(np.asarray(v)).tolist() for k, v in h.items() if k != "step"}}
               for h in r.history]
    params = choice.take(r.state.params)
    test = None
    if task_test is not None:  # the test split, read once, for the chosen rate only
        test = _evaluate(task_test, model, params)
    valid = valid.reshape(len(lrs), seeds)
    return {"lr": choice.learning_rate, "per_lr": dict(zip(map(str, lrs), valid.mean(1).tolist())),
            "valid": valid[choice.index].tolist(),
            "final": test[task.metric] if test is not None else valid[choice.index].tolist(),
            "test": test, "history": history, "steps": r.steps, "wall_time": time.perf_counter() - t0,
            "model": model, "params": params}


def _evaluate(task, model, params) -> dict:
    """``task.test``'s metrics for stacked ``params`` (one model a seed)."""
    import jax

    from memcell import tasks

    out = jax.jit(jax.vmap(tasks.eval_fn(task, model)))(params)
    return {k: np.asarray(v, np.float64).tolist() for k, v in out.items()}


def _first_solved(history, metric: str, threshold: float) -> list:
    """Per seed: the first evaluated step whose metric is below ``threshold`` (None: never)."""
    n = len(history[0][metric])
    return [next((h["step"] for h in history if h[metric][i] < threshold), None) for i in range(n)]


def _flow_figure(path, runs: dict, task_of: dict) -> dict:
    """``||dL/dh||`` by lag before the output (``memcell.tasks.gradient_norms_by_lag``, mean over 32
    test sequences), at init and trained (seed 0), one colour a cell; the slope of its log10 by lag
    (``memcell.jacobian.decay_rate`` from lag 0, in decades a step, as the recorded runs fitted it)."""
    import jax

    from memcell import jacobian, plot, tasks

    series, rates = {}, {}
    for label, run in runs.items():
        task, model = task_of[label], run["model"]
        # "init" is a fresh draw from key 0 (seed 0's own init is split from it): the recorded figures' draw
        phases = {"init": model.init(jax.random.key(0), task.input_size),
                  "trained": jax.tree.map(lambda x: x[0], run["params"])}
        series[label] = {}
        for phase, params in phases.items():
            g = np.asarray(tasks.gradient_norms_by_lag(task, model, params, n=32), np.float64)
            rate = float(jacobian.decay_rate(g, start=0)) / math.log(10.0)
            rates[f"{label}/{phase}"] = {"log10_per_step": rate, "first_over_max": float(g[-1] / g.max())}
            series[label][phase] = g
    plot.norms_by_lag(path, {"gradient flow, seed 0": series}, xlabel="lag (steps before the output)",
                      ylabel="||dL/dh_t||")
    return rates


def run_protocol(name: str, p: Protocol, out: pathlib.Path, settings: str = "") -> dict:
    """Every (cell, T) of ``p``: train, tabulate against the paper's claims, plot."""
    from memcell import plot, tasks

    results, panels, base_lines, flow_runs, flow_tasks = {}, {}, {}, {}, {}
    for T in p.lengths:
        task = tasks.make(p.task, T, n_test=p.n_test)
        # A sweep chooses its rate on an independent draw and reads the test set once; a single
        # rate chooses nothing, so it trains against the test set's curves as before.
        task_valid = tasks.make(p.task, T, n_test=p.n_test, seed=VALID_SEED) if len(p.lrs) > 1 else None
        title = f"T={T}"
        panels[title], base_lines[title] = {}, {b: v[task.metric] for b, v in task.baselines.items()}
        for label in p.cells:
            cell = _cell(label, p.hidden, _seq_len(task))
            run = train_sweep(task if task_valid is None else task_valid, cell, seeds=p.seeds, lrs=p.lrs,
                              steps=p.steps, batch_size=p.batch_size, optimizer=p.optimizer, clip_norm=p.clip_norm,
                              eval_every=p.eval_every, stop_at_solved=p.stop_at_solved,
                              task_test=None if task_valid is None else task)
            final = run["final"]
            results[f"{label}/T={T}"] = {
                "cell": label, "T": T, "metric": task.metric, "final": final,
                "mean": float(np.mean(final)), "std": float(np.std(final, ddof=1)) if len(final) > 1 else 0.0,
                "baselines": base_lines[title], "solved_threshold": task.solved,
                "n_beat": int(sum(_beats(task, v) for v in final)),
                "n_solved": int(sum(v < task.solved for v in final)),
                "first_solved_step": _first_solved(run["history"], task.metric, task.solved),
                "first_beat_step": _first_solved(run["history"], task.metric,
                                                 BEAT_FRACTION * min(base_lines[title].values())),
                "lr": run["lr"], "per_lr": run["per_lr"], "valid": run["valid"] if task_valid is not None else None,
                "history_on": "test" if task_valid is None else "validation",
                "steps": run["steps"], "wall_time": run["wall_time"], "history": run["history"]}
            panels[title][label] = run["history"]
            print(f"[{name}] T={T} {label}: {task.metric} {np.mean(final):.4g} (seeds {np.round(final, 4).tolist()}), "
                  f"beat {results[f'{label}/T={T}']['n_beat']}/{len(final)}, {run['steps']} steps, "
                  f"{run['wall_time']:.0f} s", flush=True)
            if T == max(p.lengths):
                flow_runs[label], flow_tasks[label] = run, task
    out.mkdir(parents=True, exist_ok=True)
    metric = task.metric
    plot.evaluation_curves(out / "curves.png", panels, metric, baselines=base_lines, threshold=task.solved, log=True)
    figures = ["curves.png"]
    flow = {}
    if p.flow:
        flow = _flow_figure(out / "flow.png", flow_runs, flow_tasks)
        figures.append("flow.png")
    lines = _protocol_table(name, p, results, metric)
    _write(out, name, dataclasses.asdict(p), lines, {"runs": results, "flow": flow}, figures, settings)
    return {"runs": results, "flow": flow}


def _verdict(claim: str, n_beat: int, n: int, T: int) -> str:
    """What our numbers say about the paper's claim for one (cell, T), at our budget."""
    claim = claim.lower()
    beat_lengths = None
    if "up to t = " in claim:
        beat_lengths = int(claim.split("up to t = ")[1].split(";")[0].split()[0])
    expect_beat = None
    if "at the baseline" in claim or "fails" in claim:
        expect_beat = False
    if ("at the baseline" in claim and "from t = " in claim
            and T < int(claim.split("from t = ")[1].split()[0].rstrip(")"))):
        return "-"  # the claim is about longer sequences
    if beat_lengths is not None:
        expect_beat = T <= beat_lengths
    if "beats the memoryless baseline at t = 100" in claim:
        return _verdict_of(T <= 100, n_beat, n)  # and "sits on it from T = 200"
    if "leaves the baseline" in claim or "solves" in claim:
        expect_beat = True
    return _verdict_of(expect_beat, n_beat, n)


def _verdict_of(expect_beat, n_beat: int, n: int) -> str:
    if expect_beat is None:
        return "-"
    if expect_beat:
        return "agrees" if n_beat == n else ("not reached (budget)" if n_beat == 0 else f"partly ({n_beat}/{n})")
    return "agrees" if n_beat == 0 else "disagrees (beats it)"


def _protocol_table(name, p: Protocol, results, metric) -> list[str]:
    spec = REPRODUCTIONS[name]
    lines = [f"Paper: {PAPERS[spec['paper']]}.", "", f"Where ours differs: {spec['differs']}", "",
             (f"Budget: at most {p.steps} updates of batch {p.batch_size}, {p.optimizer} lr "
             f"{'/'.join(map(str, p.lrs))}{' (best of the sweep on an independent validation draw; the learning curves and first steps are on it, the final numbers on the test set)' if len(p.lrs) > 1 else ''}, clip {p.clip_norm}, "
             f"{p.hidden} units, {p.seeds} seed(s), test set of {p.n_test}; 'beats' means final test {metric} "
             f"< {BEAT_FRACTION} x the baseline; solved: {metric} < the task's threshold."), "",
             ("| cell | T | paper | memcell: final " + metric + " (mean ± std; seeds) | beats baseline | solved | "
             "first step below baseline x0.9 | updates | wall s | verdict |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        claim = spec["claims"].get(r["cell"], "")
        n = len(r["final"])
        base = min(r["baselines"].values())
        first = [s for s in r["first_beat_step"] if s is not None]
        lines.append(
            f"| {r['cell']} | {r['T']} | {claim} (baseline {base:.4g}) | {r['mean']:.4g} ± {r['std']:.2g}; "
            f"{', '.join(f'{v:.4g}' for v in r['final'])} | {r['n_beat']}/{n} | {r['n_solved']}/{n} | "
            f"{', '.join(map(str, first)) if first else 'never'} | {r['steps']} | {r['wall_time']:.0f} | "
            f"{_verdict(claim, r['n_beat'], n, r['T'])} |")
    return lines


# ----------------------------------------------------------------------------- Greff et al.


def greff_tasks(name: str, g: GreffProtocol):
    """``(task_valid, task_test)`` of one of Greff's tasks: train on ``task_valid`` (its ``.test``
    is the validation set that chooses the learning rate), read ``task_test.test`` once.

    adding: the test set and an independent draw (``seed=VALID_SEED``); vowels (and digits,
    sunspots): 20% of the training data held out of training (``valid_fraction=0.2``);
    char_lm: the held-out text's first half of windows selects, the second half reports.
    """
    from memcell import tasks

    if name == "adding":
        return (tasks.make("adding", g.adding_length, n_test=500, seed=VALID_SEED),
                tasks.make("adding", g.adding_length, n_test=500))
    if name == "char_lm":
        full = tasks.make("char_lm", g.char_length)
        return split_heldout(full, len(full.test["xs"]) // 2)
    return (tasks.make(name, valid_fraction=0.2, split="valid"), tasks.make(name, valid_fraction=0.2, split="test"))


def run_greff(name: str, g: GreffProtocol, out: pathlib.Path, settings: str = "") -> dict:
    """Every LSTM variant on every task: the best learning rate's per-seed final metric."""
    import memcell
    from memcell import plot

    results = {}
    for tname in g.tasks:
        task_valid, task = greff_tasks(tname, g)
        for variant in g.variants:
            cell = memcell.lstm(g.hidden, **memcell.cells.LSTM_VARIANTS[variant])
            run = train_sweep(task_valid, cell, seeds=g.seeds, lrs=g.lrs, steps=g.steps, batch_size=g.batch_size,
                              optimizer="adam", clip_norm=1.0, eval_every=g.eval_every, task_test=task)
            final, valid = run["final"], run["valid"]
            results[f"{tname}/{variant}"] = {
                "task": tname, "variant": variant, "metric": task.metric, "mode": task.mode, "final": final,
                "mean": float(np.mean(final)), "std": float(np.std(final, ddof=1)) if len(final) > 1 else 0.0,
                "valid": valid, "valid_mean": float(np.mean(valid)),
                "valid_std": float(np.std(valid, ddof=1)) if len(valid) > 1 else 0.0, "test": run["test"],
                "lr": run["lr"], "per_lr_valid": run["per_lr"], "steps": run["steps"], "wall_time": run["wall_time"],
                "history_valid": run["history"]}
            print(f"[{name}] {tname} {variant}: test {task.metric} {np.mean(final):.4g} ± "
                  f"{results[f'{tname}/{variant}']['std']:.2g}, valid {np.mean(valid):.4g} (lr {run['lr']}, chosen on "
                  f"valid {run['per_lr']}), {run['wall_time']:.0f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    plot.seed_values(out / "variants.png", {f"{t} (test {results[f'{t}/vanilla']['metric']})":
                                            {v: results[f"{t}/{v}"]["final"] for v in g.variants} for t in g.tasks})
    lines = _greff_table(name, g, results)
    _write(out, name, dataclasses.asdict(g), lines, {"runs": results}, ["variants.png"], settings)
    return {"runs": results}


def compare_to_vanilla(a: list, b: list, mode: str) -> str:
    """``"worse"``/``"better"`` when variant ``b``'s mean differs from vanilla ``a``'s by more than
    two standard errors of the difference (Welch), else ``"same"``; ``"n/a"`` with one seed."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return "n/a"
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    diff = b.mean() - a.mean()
    if not np.isfinite(diff) or abs(diff) <= 2 * se:
        return "same" if np.isfinite(diff) else "n/a"
    worse = diff > 0 if mode == "min" else diff < 0
    return "worse" if worse else "better"


def _greff_table(name, g: GreffProtocol, results) -> list[str]:
    spec = REPRODUCTIONS[name]
    lines = [f"Paper: {PAPERS[spec['paper']]}.", "", f"Where ours differs: {spec['differs']}", "",
             (f"Budget: {g.steps} updates of batch {g.batch_size} a run, Adam, lrs {'/'.join(map(str, g.lrs))} "
             f"(chosen per variant by the mean final metric on the validation set), {g.seeds} seeds, {g.hidden} "
             "units. The table reports the TEST set, read once with the chosen rate's params (validation in "
             "results.json). 'vs vanilla': the difference of test means against twice its standard error "
             "(Welch)."), "",
             "| variant | paper (Greff et al.) | " + " | ".join(f"{t}: test {results[f'{t}/vanilla']['metric']} "
                                                             f"(mean ± std; lr chosen on validation) | vs vanilla"
                                                             for t in g.tasks) + " |",
             "|---|---|" + "---|---|" * len(g.tasks)]
    for v in g.variants:
        cells = []
        for t in g.tasks:
            r, ref = results[f"{t}/{v}"], results[f"{t}/vanilla"]
            cmp = "-" if v == "vanilla" else compare_to_vanilla(ref["final"], r["final"], r["mode"])
            cells.append(f"{r['mean']:.4g} ± {r['std']:.2g} (lr {r['lr']:g}) | {cmp}")
        claim = spec["claims"].get(v, "the reference" if v == "vanilla" else "a moderate or no effect")
        lines.append(f"| {v} | {claim} | " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------------- settings and the report


class BadArgument(ValueError):
    """An argument the run refuses, named (the command line adds its ``--``): ``f"{arg} {detail}"``."""

    def __init__(self, arg: str, detail: str):
        super().__init__(f"{arg} {detail}")
        self.arg, self.detail = arg, detail


def _positive_ints(arg: str, values) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise BadArgument(arg, f"must be positive ints, got {values!r}")
    return values


def _check_lengths_and_cells(name: str, p: Protocol) -> None:
    """Every (T, cell) of ``p`` can be built: the task accepts T, and each cell its options at T."""
    from memcell import tasks

    for T in p.lengths:
        try:
            seq_len = _seq_len(tasks.make(p.task, T, n_test=1))
        except ValueError as e:
            raise BadArgument("lengths", f"hold {T}, a length {name} refuses: {e}") from None
        for label in p.cells:
            try:
                _cell(label, p.hidden, seq_len)
            except ValueError as e:
                raise BadArgument("lengths", f"hold {T}, where cell {label!r} cannot be built: {e}") from None


def resolve(name: str, *, quick: bool = False, steps: int | None = None, seeds: int | None = None,
            lengths: tuple[int, ...] | None = None, eval_every: int | None = None,
            cells: tuple[str, ...] | None = None) -> tuple[Protocol | GreffProtocol, str]:
    """The protocol a run follows, and the name of its settings: ``""`` for the recorded protocol
    itself, else ``quick`` and/or the overrides (``steps=4000-lengths=400``), the folder it writes to
    under ``out/name/`` so that it never replaces the recorded run. Raises ``BadArgument`` (a
    ``ValueError`` naming the argument) before anything is trained or written."""
    if name not in REPRODUCTIONS:
        raise BadArgument("name", f"must be one of {sorted(REPRODUCTIONS)}, got {name!r}")
    spec = REPRODUCTIONS[name]
    p = spec["quick" if quick else "protocol"]
    greff = isinstance(p, GreffProtocol)
    changes = {}
    for k, v in (("steps", steps), ("seeds", seeds), ("eval_every", eval_every)):
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BadArgument(k, f"must be a positive int, got {v!r}")
            changes[k] = v
    if lengths is not None:
        if greff:
            raise BadArgument("lengths", f"cannot be overridden for {name!r} (its lengths are per task: "
                                         f"adding_length, char_length)")
        changes["lengths"] = _positive_ints("lengths", lengths)
    if cells is not None:
        cells = tuple(cells)
        if greff or not cells or not set(cells) <= set(p.cells):
            allowed = "none (its variants are fixed)" if greff else list(p.cells)
            raise BadArgument("cells", f"must be a subset of {name!r}'s cells, {allowed}, got {list(cells)}")
        changes["cells"] = cells
    p = dataclasses.replace(p, **changes)
    if lengths is not None:  # the protocol's own lengths are known to run
        _check_lengths_and_cells(name, p)
    if p == spec["protocol"]:
        return p, ""
    fmt = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return p, "-".join((["quick"] if quick else []) + [f"{k}={fmt(v)}" for k, v in changes.items()])


def _settings_line(name: str, settings: str) -> str:
    if not settings:
        return f"Settings: the recorded protocol of {name!r} (below)."
    return (f"Settings: **{settings}**, not the recorded protocol of {name!r}: the budget below is the one this "
            f"run had, and it is written to {name}/{settings}/, apart from the recorded run.")


def _write(out: pathlib.Path, name: str, protocol: dict, lines: list[str], results: dict, figures: list[str],
           settings: str = "") -> None:
    prov = provenance()
    text = [f"# {name}", "", provenance_line(prov), "", _settings_line(name, settings), "",
            f"Protocol: `{json.dumps(protocol)}`", ""] + lines + [""] + [f"![{f}]({f})" for f in figures]
    (out / "report.md").write_text("\n".join(text) + "\n")
    (out / "results.json").write_text(json.dumps({"name": name, "settings": settings or "recorded protocol",
                                                  "protocol": protocol, **prov, **results}, indent=1,
                                                 default=float) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'report.md'}", flush=True)


def run(name: str, *, quick: bool = False, out="results/reproduce", steps: int | None = None,
        seeds: int | None = None, lengths: tuple[int, ...] | None = None, eval_every: int | None = None,
        cells: tuple[str, ...] | None = None) -> dict:
    """Runs one reproduction; writes ``out/name/`` (its recorded protocol) or ``out/name/SETTINGS/``
    (any other settings, ``resolve``): ``results.json``, ``report.md``, ``*.png``.

    Args:
      name: a key of ``REPRODUCTIONS``.
      quick: the short version (minutes; what the slow tests run).
      out: the parent folder.
      steps, seeds: override the protocol's updates and seeds.
      lengths, eval_every, cells: override the sequence lengths, the evaluation interval and the
        cells (a subset of the protocol's; not for ``greff_variants``).

    Returns:
      The results written to ``results.json``.
    """
    p, settings = resolve(name, quick=quick, steps=steps, seeds=seeds, lengths=lengths, eval_every=eval_every,
                          cells=cells)
    return _execute(name, p, settings, out)


def _execute(name: str, p, settings: str, out) -> dict:
    target = pathlib.Path(out) / name / settings if settings else pathlib.Path(out) / name
    if isinstance(p, GreffProtocol):
        return run_greff(name, p, target, settings)
    return run_protocol(name, p, target, settings)


def rewrite_report(name: str, out="results/reproduce", settings: str = "") -> None:
    """Rebuilds a run's ``report.md`` from its ``results.json`` (no training): after a change to the tables."""
    target = pathlib.Path(out) / name / settings if settings else pathlib.Path(out) / name
    saved = json.loads((target / "results.json").read_text())
    figures = sorted(f.name for f in target.glob("*.png"))
    as_fields = lambda d: {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    if name == "greff_variants":
        g = GreffProtocol(**as_fields(saved["protocol"]))
        _write(target, name, saved["protocol"], _greff_table(name, g, saved["runs"]), {"runs": saved["runs"]}, figures,
               settings)
        return
    p = Protocol(**as_fields(saved["protocol"]))
    metric = next(iter(saved["runs"].values()))["metric"]
    _write(target, name, saved["protocol"], _protocol_table(name, p, saved["runs"], metric),
           {"runs": saved["runs"], "flow": saved["flow"]}, figures, settings)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="list the reproductions and their default budgets")
    ap.add_argument("--only", default="", help="comma-separated names (default: all, in priority order)")
    ap.add_argument("--quick", action="store_true", help="the short version of each (written to NAME/quick/)")
    ap.add_argument("--out", default="results/reproduce", help="parent folder of the NAME/ folders")
    ap.add_argument("--steps", type=int, default=None, help="override the updates of every run")
    ap.add_argument("--seeds", type=int, default=None, help="override the seeds of every run")
    ap.add_argument("--lengths", default="", help="comma-separated sequence lengths (override the protocol's)")
    ap.add_argument("--eval-every", type=int, default=None, help="override the evaluation interval")
    ap.add_argument("--cells", default="", help="comma-separated cells, a subset of the protocol's")
    return ap


def main(argv=None) -> dict:
    """The command line: every argument is checked, for every reproduction asked for, before the
    first one trains; a bad one exits with code 2 and a message naming it."""
    ap = _parser()
    args = ap.parse_args(argv)
    if args.list:
        for name, spec in REPRODUCTIONS.items():
            print(f"{name}: {PAPERS[spec['paper']]}\n  default: {spec['protocol']}\n  quick:   {spec['quick']}")
        return {}
    names = [n for n in args.only.split(",") if n] or list(REPRODUCTIONS)
    unknown = [n for n in names if n not in REPRODUCTIONS]
    if unknown:
        ap.error(f"--only must name reproductions among {list(REPRODUCTIONS)}, got {unknown}")
    try:
        lengths = tuple(int(x) for x in args.lengths.split(",") if x) or None
    except ValueError:
        ap.error(f"--lengths must be comma-separated ints, got {args.lengths!r}")
    cells = tuple(c for c in args.cells.split(",") if c) or None
    plans = {}
    for n in names:
        try:
            plans[n] = resolve(n, quick=args.quick, steps=args.steps, seeds=args.seeds, lengths=lengths,
                               eval_every=args.eval_every, cells=cells)
        except BadArgument as e:
            ap.error(f"--{e.arg.replace('_', '-')} {e.detail}" + ("" if len(names) == 1 else f" (for {n!r})"))
    return {n: _execute(n, p, settings, args.out) for n, (p, settings) in plans.items()}


if __name__ == "__main__":
    main()
