"""``memcell flow RUN_DIR``: the gradient norm against lag of a trained run, initial vs trained params."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pathlib

from memcell import tasks
from memcell.cli._parser import TASK_NAMES, UsageError, build_parser
from memcell.cli._train import build, check_out, fmt, run_config, run_title


def load_run(run_dir: str):
    """The ``train`` arguments of the run in ``run_dir``: its config.json over the parser's defaults."""
    path = pathlib.Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"RUN_DIR {run_dir!r} is not a directory")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise UsageError(f"RUN_DIR {run_dir!r} is not a memcell run: it holds no config.json "
                         "(memcell train --out DIR writes one)")
    try:
        saved = json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"RUN_DIR {run_dir!r} is not a memcell run: {cfg} is not readable JSON ({e})") from None
    if not isinstance(saved, dict) or saved.get("command") != "train" or saved.get("task") not in TASK_NAMES:
        raise UsageError(f"RUN_DIR {run_dir!r} is not a memcell run: {cfg} is not the config of a memcell train "
                         f"run (expected \"command\": \"train\" and a task of {list(TASK_NAMES)})")
    if not (path / "checkpoints").is_dir():
        raise UsageError(f"RUN_DIR {run_dir!r} holds no checkpoint (no checkpoints/ directory: the run was "
                         "killed before its first one; --checkpoint-every N writes them during training)")
    args = parse_config(saved, cfg)
    if "config_version" not in saved:  # written before the cell options went to the factory only when set
        args.reset_after = None if saved.get("reset_after") == "true" else args.reset_after
        args.recurrent_scale = None if saved.get("recurrent_scale") == 1.0 else args.recurrent_scale
    return args, path


def _train_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def parse_config(saved: dict, cfg: pathlib.Path) -> argparse.Namespace:
    """The ``train`` arguments a run's config.json records, read back through ``train``'s own parser,
    so each value meets the checks it met on the command line (a wrong-typed one is a UsageError
    naming its key; keys the parser does not know are left out, as the parser's defaults fill in)."""
    parser = _train_parser()
    argv = []
    for action in parser._actions:
        if not action.option_strings or action.dest not in saved or action.dest == "help":
            continue
        value, flag = saved[action.dest], action.option_strings[-1]
        if action.nargs == 0:  # a store_true flag: true, false (or absent)
            if not isinstance(value, bool):
                raise UsageError(f"{cfg}: {action.dest!r} must be true or false, got {value!r}")
            argv += [flag] if value else []
        elif value is not None:
            values = value if isinstance(value, list) and action.nargs == "+" else [value]
            if any(isinstance(v, (list, dict, bool)) for v in values):
                raise UsageError(f"{cfg}: {action.dest!r} holds {value!r}, not a value of {flag}")
            # flag=value, so that a value starting with "-" (a prompt) is not read as an option
            argv += [flag, *map(str, values)] if action.nargs == "+" else [f"{flag}={values[0]}"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
        args.command = "train"
        return args
    except SystemExit:
        why = err.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
        raise UsageError(f"{cfg} holds a value train refuses: {why}") from None


def initial_states(args, task, model, seeds):
    """The states ``train`` started from: ``tasks.initial_states`` of the run's arguments, mapped
    as ``train`` maps them for ``tasks.train_task`` (a truncated-BPTT run's states hold its streams)."""
    _, states = tasks.initial_states(
        task, model, seeds=seeds, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.lr[0] if len(args.lr) == 1 else args.lr, optimizer=args.optimizer,
        clip_norm=args.clip or None, warmup_steps=args.warmup, decay=args.decay,
        tbptt=getattr(args, "tbptt", False))
    return states


def flow_wrt(wrt: str, task, model, params) -> str:
    """``--wrt auto``: the hidden state where the model is one cell whose carry has one, else the inputs."""
    import jax

    if wrt != "auto":
        return wrt
    if model.cell is None:
        return "input"
    try:
        jax.eval_shape(lambda p: tasks.gradient_norms_by_lag(task, model, p, n=1, wrt="hidden"), params)
    except ValueError:  # a carry without a hidden part (the mLSTM's C, n, m)
        return "input"
    return "hidden"


def flow_table(result: dict) -> str:
    K = result["lags"]
    head = ["seed", "rate initial", f"rate trained (step {result['trained']['step']})",
            f"norm at lag {K - 1} initial", "trained"]
    rows = [[str(s), fmt(result["initial"]["decay_rate"][i]), fmt(result["trained"]["decay_rate"][i]),
             fmt(result["initial"]["norm_at_max_lag"][i]), fmt(result["trained"]["norm_at_max_lag"][i])]
            for i, s in enumerate(result["seeds"])]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([f"{result['quantity']}", f"decay rate: {result['fit']}", "",
                      line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def flow_command(args) -> int:
    import jax
    import numpy as np

    from memcell import jacobian, plot, train

    run_args, run_dir = load_run(args.run_dir)
    out = check_out(args.out or args.run_dir, False)
    # Measured on the reference path: the fast paths compute the same function (tested), and
    # the jacobian tools differentiate the cell's own step. The checkpoint's config keeps the run's backend.
    try:
        task, model = build(argparse.Namespace(**{**vars(run_args), "backend": "reference"}))
    except UsageError as e:  # e.g. a user's cell whose module cannot be imported from here
        raise UsageError(f"RUN_DIR {args.run_dir!r}: its config.json describes a run this command cannot build: {e}") from None
    config = run_config(run_args, task)
    seeds = list(range(run_args.seed_offset, run_args.seed_offset + run_args.seeds))
    initial = initial_states(run_args, task, model, seeds)
    try:
        trained = train.load_checkpoint(run_dir / "checkpoints", initial, config=config)
    except ValueError as e:  # no checkpoint, or one of another model or config
        raise UsageError(f"RUN_DIR {args.run_dir!r}: {e}") from None
    wrt = flow_wrt(args.wrt, task, model, jax.tree.map(lambda x: x[0], initial.params))
    # With one output a step, only the last output's loss is differentiated: lag k is then k steps
    # before an output, as for a single readout, not a sum over the k + 1 last outputs' losses.
    measure = jax.jit(jax.vmap(lambda p: tasks.gradient_norms_by_lag(task, model, p, n=args.sequences, wrt=wrt,
                                                                     last_output_only=True)))
    try:
        norms = [np.asarray(measure(s.params), np.float64) for s in (initial, trained)]
    except ValueError as e:
        raise UsageError(f"--wrt {wrt}: {e} (--wrt input works for every model)") from None
    K = norms[0].shape[1]
    if K < 3:
        raise UsageError(f"RUN_DIR {args.run_dir!r}: the task's sequences have {K} steps; a decay rate needs >= 3")
    with np.errstate(divide="ignore"):
        rates = [np.asarray(jacobian.decay_rate(np.log(g), log=True, start=1)) for g in norms]
    grad, of = ("||dL/dh_t||", "the cell's hidden state") if wrt == "hidden" else ("||dL/dx_t||", "the model's inputs")
    n_seq = min(args.sequences, int(np.shape(task.test["xs"])[0]))
    step = int(np.max(jax.device_get(trained.step)))
    result = {
        "run_dir": str(run_dir), "task": run_args.task, "cell": run_args.cell, "hidden": run_args.hidden,
        "layers": run_args.layers, "seeds": seeds, "wrt": wrt, "sequences": n_seq, "lags": K,
        "quantity": f"{grad} at lag k = 0..{K - 1} before each sequence's last step, mean over {n_seq} test "
                    f"sequences of {run_args.task}, with respect to {of}"
                    + (", of the loss of the last output only (the task scores every step)" if task.readout == "all" else ""),
        "fit": f"least-squares slope of ln(norm) against lag over lags 1..{K - 1} (memcell.jacobian.decay_rate; "
               "norms that underflowed to 0 left out), nats per step; negative: the gradient vanishes",
    }
    for name, g, r, at in (("initial", norms[0], rates[0], 0), ("trained", norms[1], rates[1], step)):
        result[name] = {"step": at, "decay_rate": r.tolist(), "norm_at_max_lag": g[:, -1].tolist(), "norms": g.tolist()}
    # Named by what they measure, so `--wrt input` after `--wrt hidden` keeps both.
    json_path, png_path = out / f"flow_{wrt}.json", out / f"flow_{wrt}.png"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    loss = "the last output's loss" if task.readout == "all" else "the loss"
    title = f"{run_title(run_args, config['length'])}\n{grad} of {loss} against lag"
    plot.gradient_flow(png_path, norms[0], norms[1], rates=(rates[0], rates[1]), seeds=seeds, steps=(0, step),
                       ylabel=grad, title=title)
    print(json.dumps(result, indent=2) if args.json else flow_table(result) + f"\n\nwrote {png_path} and {json_path}")
    return 0
