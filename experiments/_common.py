"""Shared by the experiments (the only module they import besides memcell): CLI overrides of a
frozen Config, where a run came from (command and commit), training one cell on one task for
several seeds, the report (markdown table and JSON), and the char LM protocol that
``char_lm.py`` and ``fair_data.py --tasks char_lm`` both run."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import platform
import shlex
import subprocess
import sys
import time
import typing

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


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


def cpu_name() -> str:
    """The CPU's model name (``lscpu``), else the platform's own name."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    """The CPU and the jax version a run had: recorded numbers are only reproduced bit for bit on the
    same (XLA:CPU's floating-point code, hence chaotic training runs, differ between CPUs)."""
    import jax

    return f"{cpu_name()}; jax {jax.__version__}"


def provenance(argv=None) -> dict:
    """Where a run came from: its command line, the commit it ran (``-dirty`` with local changes) and
    the machine, so that a recorded number can be traced to its code and found stale by rerunning."""
    argv = sys.argv if argv is None else argv
    script = pathlib.Path(argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:  # run from elsewhere: the path as given
        pass
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=10"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    return {"command": shlex.join(["python", str(script), *argv[1:]]), "commit": commit, "machine": machine()}


def provenance_line(prov: dict) -> str:
    return f"Command: `{prov['command']}`; commit `{prov['commit']}`; machine: {prov['machine']}."


def recorded_marker(prov: dict) -> str:
    """The opening marker of a recorded table in docs/ (closed by ``<!-- end -->``)."""
    return f"<!-- recorded: {prov['command']} | machine: {prov['machine']} -->"


def run_cell(task, cell: str, hidden: int, *, seeds: int, steps: int, batch_size: int, lr: float, eval_every: int,
             stop_at_solved: bool = False, layers: int = 1, **cell_options) -> dict:
    """Trains ``cell`` on ``task`` for ``seeds`` seeds at once; the report of ``train_task``, minus the state."""
    from memcell import tasks

    cells = [tasks.make_cell(cell, hidden, **cell_options) for _ in range(layers)]
    model = tasks.sequence_model(cells[0] if layers == 1 else cells, task.output_size, task.readout)
    t0 = time.perf_counter()
    report = tasks.train_task(task, model, seeds=list(range(seeds)), steps=steps, batch_size=batch_size,
                              learning_rate=lr, eval_every=eval_every, stop_at_solved=stop_at_solved).to_dict()
    report["cell"] = cell
    report["wall_time"] = time.perf_counter() - t0
    return report


def fmt_metric(summary: dict) -> str:
    return f"{summary['mean']:.4g} ± {summary['std']:.2g}"


def write_report(out: pathlib.Path, title: str, config, lines: list[str], results) -> None:
    """``report.md`` (the title, the command and commit, the config, ``lines``) and ``results.json``."""
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    cfg = json.dumps(dataclasses.asdict(config))
    text = [f"# {title}", "", provenance_line(prov), "", f"Config: `{cfg}`", ""] + lines
    (out / "report.md").write_text("\n".join(text) + "\n")
    (out / "results.json").write_text(json.dumps({"config": dataclasses.asdict(config), **prov, "results": results},
                                                 indent=1, default=float) + "\n")
    print("\n".join(text))
    print(f"\nwrote {out / 'report.md'}")


def split_heldout(task, n_valid_windows: int):
    """A char LM's held-out windows cut in two: the first ``n_valid_windows`` select, the rest report."""
    valid = {k: v[:n_valid_windows] for k, v in task.test.items()}
    test = {k: v[n_valid_windows:] for k, v in task.test.items()}
    return task._replace(test=valid), task._replace(test=test)


# ----------------------------------------------------------------------------- the char LM protocol


def output_dropout(lyr, rate: float):
    """``lyr`` (a ``memcell.Layer``) with dropout on its outputs when ``apply`` gets a key."""
    import jax
    import jax.numpy as jnp

    from memcell.types import Layer

    def apply(params, xs, carry=None, *, lengths=None, resets=None, key=None):
        k_in, k_out = (None, None) if key is None else tuple(jax.random.split(key))
        carry, ys = lyr.apply(params, xs, carry, lengths=lengths, resets=resets, key=k_in)
        if k_out is not None and rate > 0.0:
            keep = jax.random.bernoulli(k_out, 1.0 - rate, ys.shape)
            ys = jnp.where(keep, ys / (1.0 - rate), jnp.zeros_like(ys))
        return carry, ys

    return Layer(lyr.init, apply)


def char_lm_model(task, cell: str, hidden: int, layers: int, dropout: float, backend: str):
    """``layers`` stacked ``cell`` layers with dropout between them and before the readout (Zaremba et al. 2014)."""
    import memcell
    from memcell import tasks

    cells = [memcell.layer(tasks.make_cell(cell, hidden), backend=backend) for _ in range(layers)]
    lyr = memcell.stack(cells, dropout=dropout) if layers > 1 else cells[0]
    return tasks.sequence_model(output_dropout(lyr, dropout), task.output_size, "all")


def stream_bits(task, model):
    """``params -> bits [m]``: each held-out character's cross-entropy in bits, the text read in
    order with the carry kept (restarted where a play begins)."""
    import jax
    import jax.numpy as jnp

    s = task.stream
    V = task.input_size
    cuts = [0, *(int(j) for j in s.valid_starts), len(s.valid_xs)]
    pieces = [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]

    def bits(params):
        out = []
        for lo, hi in pieces:
            xs = jax.nn.one_hot(jnp.asarray(s.valid_xs[None, lo:hi]), V, dtype=jnp.float32)
            _, ys = model.layers.apply(params.rnn, xs)
            logp = jax.nn.log_softmax(model.head(params, ys)[0], axis=-1)
            out.append(-jnp.take_along_axis(logp, jnp.asarray(s.valid_ys[lo:hi])[:, None], axis=-1)[:, 0])
        return jnp.concatenate(out) / math.log(2.0)

    return bits


def _train_bpc(log_path: pathlib.Path, history: list) -> None:
    """Adds to each evaluation the training bpc of the updates since the last one (from ``fit``'s log)."""
    from memcell import plot

    train = plot.read_metrics(log_path)["train"]
    lo = 0
    for h in history:
        hi = int(np.searchsorted(train["step"], h["step"], side="right"))
        loss, tokens = train["loss"][lo:hi], train["tokens"][lo:hi]
        h["train_bpc"] = ((loss * tokens).sum(0) / tokens.sum(0) / math.log(2.0)).tolist()
        lo = hi


def train_char_lm(task, model, *, lrs, seeds: int, steps: int, batch_size: int, length: int, warmup: int,
                  eval_every: int, valid_chars: int, log_path: pathlib.Path) -> dict:
    """Every (lr, seed) pair trained together by ``memcell.train.fit`` with truncated BPTT; each
    model's best params on the held-out text's first ``valid_chars`` characters kept
    (``KeepBest``), the rate chosen on them (``choose_learning_rate``), the rest read at those params."""
    import jax

    from memcell import tasks, train

    if not 1 <= eval_every <= steps:
        raise ValueError(f"eval_every must lie in [1, steps={steps}], got {eval_every}")
    if not 0 < valid_chars < len(task.stream.valid_xs):
        raise ValueError(f"valid_chars must lie in (0, {len(task.stream.valid_xs)}) (the held-out characters), "
                         f"got {valid_chars}")
    model_seeds, model_lrs = train.sweep_models(lrs, range(seeds))
    warmup = min(warmup, steps // 2)  # a short run (a quick look) keeps room to decay
    tx = train.optimizer(lrs[0], clip_norm=1.0, warmup_steps=warmup, decay_steps=steps)
    states = train.init_states(model_seeds, lambda k: model.init(k, task.input_size), tx, learning_rates=model_lrs)
    states = tasks.with_stream(task, model, states, batch_size)
    sample, _ = tasks.stream_sampler(task.stream, batch_size, length)
    bits = stream_bits(task, model)

    def evaluate(params):
        b = bits(params)
        return {"select_bpc": b[:valid_chars].mean(), "report_bpc": b[valid_chars:].mean(), "valid_bpc": b.mean()}

    c0 = time.process_time()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    r = train.fit(train.make_stream_train_step(tasks.stream_loss_fn(task, model), tx), states, sample, steps=steps,
                  eval_fn=evaluate, eval_every=eval_every, keep_best=train.KeepBest("select_bpc", "min"),
                  steps_per_call=eval_every, log_path=log_path, progress=True)
    _train_bpc(log_path, r.history)
    choice = train.choose_learning_rate(np.asarray(r.best_value, np.float64), lrs)
    chosen = choice.take(r.best_params)
    final = np.asarray(jax.vmap(bits)(chosen))  # at the kept params: the reporting part and the whole text
    best = np.asarray(r.best_value, np.float64).reshape(len(lrs), seeds)
    return {
        "chosen_lr": choice.learning_rate, "best_step": [r.best_step[i] for i in choice.models],
        "select_bpc": best[choice.index].tolist(),
        "select_by_lr": {str(lr): best[i].tolist() for i, lr in enumerate(lrs)},
        "report_bpc": final[:, valid_chars:].mean(1).tolist(), "valid_bpc": final.mean(1).tolist(),
        "history": r.history, "steps_run": r.history[-1]["step"], "wall_time": r.wall_time,
        "cpu_minutes": (time.process_time() - c0) / 60,
        "params": int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(jax.tree.map(lambda x: x[0], chosen)))),
    }
