"""The ``memcell`` command line: train any cell on any task, for several seeds in one jit.

    memcell train --task adding --cell lstm --length 200 --seeds 4 --steps 5000 --out runs/x
    memcell train --task adding --cell lstm --length 200 --seeds 4 --steps 8000 --out runs/x --resume
    memcell train --task adding --cell lstm --seeds 4 --mesh data=2,seeds=4   # 8 devices (docs/scaling.md)
    memcell tasks                       # the tasks, their metric and baselines
    memcell flow runs/x                 # gradient norm against lag, initial vs trained params

A run with ``--out`` writes its learning curves beside its report (``learning_curves.png``).

Bad input (an unknown task or option, a bad length, an unwritable output directory, a
checkpoint that does not match) prints a message and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
from typing import Sequence

from memcell import cudnn, fused, parallel, tasks
from memcell.scan import layer as as_layer
from memcell.types import BACKENDS

__all__ = ["build_parser", "main"]

# The names the CLI offers are memcell.tasks' own lists, not copies of them.
TASK_NAMES = tuple(tasks.TASKS)
CELL_NAMES = tasks.CELLS
_CLASSIC = ("rnn", "irnn", "lstm", "gru")  # the cells with a dense recurrent matrix (--recurrent-init applies)
# What a resumed run must share with the run that wrote the checkpoint (steps may grow).
_IDENTITY_KEYS = ("task", "length", "cell", "hidden", "layers", "seeds", "seed_offset", "batch_size", "lr",
                  "optimizer", "clip", "warmup", "decay", "forget_bias", "lstm_init", "recurrent_init",
                  "recurrent_scale", "reset_after", "layer_norm", "dtype", "backend", "proj_size",
                  "recurrent_dropout", "zoneout", "learn_initial_carry")


class UsageError(Exception):
    """Bad command-line input: reported with exit code 2."""


def _number_type(convert, valid, what: str, invalid: str | None = None, show_text: bool = False):
    """An argparse ``type``: ``convert(text)``, refused with "expected <what>" unless ``valid``."""

    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not valid(v):
            raise argparse.ArgumentTypeError(f"expected {invalid or what}, got {text if show_text else v}")
        return v

    return parse


_positive_int = _number_type(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number_type(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _number_type(float, lambda v: v > 0 and math.isfinite(v), "a positive number",
                               "a positive finite number", show_text=True)
_rate = _number_type(float, lambda v: 0 <= v < 1, "a rate in [0, 1)", show_text=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``memcell`` (subcommands ``train``, ``tasks`` and ``flow``)."""
    p = argparse.ArgumentParser(prog="memcell", description="Recurrent cells as pure JAX functions: training and benchmarks.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,tasks,flow}")

    t = sub.add_parser("train", help="train a cell on a task, several seeds at once",
                       description="Train a recurrent cell on a task; all seeds train together in one jit (jax.vmap).")
    g = t.add_argument_group("task")
    g.add_argument("--task", required=True, choices=TASK_NAMES)
    g.add_argument("--length", type=_positive_int, default=None,
                   help="sequence length T (adding, copy: the lag, temporal_order, char_lm; sunspots: the input window)")
    g.add_argument("--batch-size", type=_positive_int, default=32)
    g = t.add_argument_group("model")
    g.add_argument("--cell", default="lstm", choices=CELL_NAMES,
                   help="rnn: tanh Elman; irnn: ReLU with identity recurrent init (Le et al. 2015); lstm, gru; "
                        "the modern cells mingru, minlstm (Feng et al. 2024), lru (Orvieto et al. 2023), rglru "
                        "(De et al. 2024), slstm, mlstm (Beck et al. 2024)")
    g.add_argument("--hidden", type=_positive_int, default=128, help="hidden units a layer")
    g.add_argument("--layers", type=_positive_int, default=1, help="stacked recurrent layers")
    g.add_argument("--forget-bias", type=float, default=None, help="LSTM forget-gate bias (default 1.0)")
    g.add_argument("--lstm-init", default="default", choices=("default", "chrono"),
                   help="chrono: forget biases spread up to T steps (Tallec and Ollivier 2018)")
    g.add_argument("--layer-norm", action="store_true", help="layer-normalised LSTM")
    g.add_argument("--proj-size", type=_positive_int, default=None,
                   help="LSTM with a projection of h to this many units (Sak et al. 2014; torch's proj_size)")
    g.add_argument("--recurrent-dropout", type=_rate, default=0.0,
                   help="variational dropout on h where it enters the recurrent matmul (lstm, gru, rnn, irnn)")
    g.add_argument("--zoneout", type=_rate, default=0.0, help="zoneout rate of every carry unit (Krueger et al. 2017)")
    g.add_argument("--learn-initial-carry", action="store_true", help="the initial carry is a learnt param")
    g.add_argument("--reset-after", default="true", choices=("true", "false"), help="GRU reset-gate placement")
    g.add_argument("--recurrent-init", default=None,
                   help="orthogonal (default), identity, lecun_normal, glorot_uniform, uniform")
    g.add_argument("--recurrent-scale", type=_positive_float, default=1.0, help="spectral radius of the recurrent init")
    g.add_argument("--backend", default="reference", choices=BACKENDS,
                   help="how the cells are unrolled: 'auto' trains the default LSTM, GRU and RNN on the "
                        "fused path (memcell.fused) and the cells with a linear carry update (mingru, minlstm, "
                        "lru, rglru, mlstm) on the parallel path (memcell.parallel); 'fused', 'parallel' and "
                        "'cudnn' (GPU only) refuse what they do not implement")
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="matmul dtype (bfloat16 accumulates in float32; params stay float32)")
    g = t.add_argument_group("optimisation")
    g.add_argument("--steps", type=_positive_int, default=1000, help="total updates (a resumed run continues up to this)")
    g.add_argument("--seeds", type=_positive_int, default=1, help="independent models, trained together with vmap")
    g.add_argument("--seed-offset", type=_nonneg_int, default=0, help="seeds are offset, offset+1, ...")
    g.add_argument("--lr", type=_positive_float, nargs="+", default=[1e-3],
                   help="peak learning rate; or one per seed (vmapped too)")
    g.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd", "rmsprop"))
    g.add_argument("--clip", type=float, default=1.0, help="global-norm gradient clipping (0: none)")
    g.add_argument("--warmup", type=_nonneg_int, default=0, help="linear warmup steps")
    g.add_argument("--decay", action="store_true", help="cosine decay of the learning rate to 0 at --steps")
    g = t.add_argument_group("loop")
    g.add_argument("--eval-every", type=_nonneg_int, default=0, help="evaluate every N steps (0: at the end)")
    g.add_argument("--stop-at-solved", action="store_true", help="stop when every seed reaches the task's 'solved' threshold")
    g.add_argument("--patience", type=_positive_int, default=None, help="stop after N evaluations without improvement")
    g.add_argument("--out", default=None, help="output directory: config, metrics.jsonl, checkpoints, report")
    g.add_argument("--checkpoint-every", type=_nonneg_int, default=0, help="checkpoint every N steps (0: at the end)")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    g.add_argument("--steps-per-call", type=_positive_int, default=50, help="updates per jit call")
    g.add_argument("--gradient-flow", action="store_true",
                   help="log ||dL/dh_t|| at the first step vs its peak at every evaluation (one layer only)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    g = t.add_argument_group("devices", "one device by default; see docs/scaling.md")
    g.add_argument("--devices", type=_positive_int, default=None,
                   help="split each batch over the first N devices (a 1-D data mesh)")
    g.add_argument("--mesh", default=None, metavar="SPEC",
                   help="a device mesh such as data=4,seeds=2: the batch over 'data', the seeds over 'seeds'")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-host: process 0's coordinator address (with --num-processes and --process-id)")
    g.add_argument("--num-processes", type=_positive_int, default=None, help="multi-host: how many processes")
    g.add_argument("--process-id", type=_nonneg_int, default=None, help="multi-host: this process's index")
    g.add_argument("--distributed", action="store_true",
                   help="multi-host with the cluster detected by jax.distributed (SLURM, Open MPI, "
                        "JAX_COORDINATOR_ADDRESS)")
    g = t.add_argument_group("char_lm")
    g.add_argument("--tbptt", action="store_true",
                   help="truncated BPTT: each batch row reads its own part of the text, window (--length) after "
                        "window, from the carry the last window ended with; validation reads the whole stream "
                        "with the carry kept")
    g.add_argument("--sample-chars", type=_nonneg_int, default=0, help="after training, print this many sampled characters")
    g.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely characters only (1: greedy)")
    g.add_argument("--prompt", default="\n", help="text the sample continues")

    sub.add_parser("tasks", help="list the tasks with their metric and baselines")

    f = sub.add_parser("flow", help="gradient norm against lag of a trained run, initial vs trained params",
                       description="Loads a `memcell train --out` run's config and latest checkpoint and measures, "
                                   "for the initial and the trained params of every seed, the norm of the loss "
                                   "gradient at each lag before the last step on the task's test sequences, with "
                                   "its decay rate per step; writes flow.png and flow.json.")
    f.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of a memcell train run")
    f.add_argument("--out", default=None, help="where flow.png and flow.json go (default RUN_DIR)")
    f.add_argument("--wrt", default="auto", choices=("auto", "hidden", "input"),
                   help="gradient with respect to the cell's hidden state or the model's inputs (auto: the "
                        "hidden state where the model is one cell with one, else the inputs)")
    f.add_argument("--sequences", type=_positive_int, default=64, help="test sequences averaged over")
    f.add_argument("--json", action="store_true", help="print flow.json instead of the table")
    return p


# ----------------------------------------------------------------------------- helpers


def _check_out(out: str | None, resume: bool) -> pathlib.Path | None:
    if out is None:
        if resume:
            raise UsageError("--resume needs --out (the directory holding the checkpoints)")
        return None
    path = pathlib.Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".memcell-write-test-{os.getpid()}"  # one a process: hosts may share --out
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--out {out!r} is not a writable directory: {e.strerror or e}") from None
    if resume and not (path / "checkpoints").exists():
        raise UsageError(f"--resume: {out!r} holds no checkpoints to resume from")
    return path


def _build(args):
    import jax.numpy as jnp


    if args.task in ("digits", "permuted_digits", "vowels") and args.length is not None:
        raise UsageError(f"--length: task {args.task!r} has its length fixed by the data (64 for digits, 7-29 frames for vowels)")
    if args.task == "temporal_order" and args.length is not None and args.length < 11:
        raise UsageError(f"--length must be >= 11 for temporal_order, got {args.length}")
    if args.task == "adding" and args.length is not None and args.length < 2:
        raise UsageError(f"--length must be >= 2 for adding, got {args.length}")
    if args.task == "sunspots" and args.length is not None and args.length < 2:
        raise UsageError(f"--length (the input window) must be >= 2 for sunspots, got {args.length}")
    if len(args.lr) not in (1, args.seeds):
        raise UsageError(f"--lr takes one value or one per seed ({args.seeds}), got {len(args.lr)}")
    if args.clip < 0:
        raise UsageError(f"--clip must be >= 0, got {args.clip}")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    if args.tbptt and args.task != "char_lm":
        raise UsageError(f"--tbptt only applies to --task char_lm (the task with long streams), got {args.task!r}")
    if args.sample_chars and args.task != "char_lm":
        raise UsageError("--sample-chars only applies to --task char_lm")
    if args.stop_at_solved and not args.eval_every:
        raise UsageError("--stop-at-solved needs --eval-every N to check the threshold during training")
    if args.patience and not args.eval_every:
        raise UsageError("--patience needs --eval-every N")
    if args.gradient_flow and args.layers > 1:
        raise UsageError(f"--gradient-flow needs a single recurrent layer, got --layers {args.layers}")
    if args.checkpoint_every and args.out is None:
        raise UsageError("--checkpoint-every needs --out")

    try:
        task = tasks.make(args.task, args.length)
    except ImportError as e:
        raise UsageError(str(e)) from None
    options: dict = {}
    if args.dtype != "float32":
        options["dtype"] = jnp.dtype(args.dtype)
    if args.recurrent_init is not None:
        options["recurrent_init"] = args.recurrent_init
    if args.recurrent_scale != 1.0:
        options["recurrent_scale"] = args.recurrent_scale
    if args.cell not in _CLASSIC and ("recurrent_init" in options or "recurrent_scale" in options):
        raise UsageError(f"--recurrent-init and --recurrent-scale apply to --cell {', '.join(_CLASSIC)}, not {args.cell!r}")
    if args.cell == "lstm":
        if args.lstm_init == "chrono":
            options.update(init="chrono", max_timescale=float(max(_sequence_length(task), 3)))
        if args.forget_bias is not None:
            options["forget_bias"] = args.forget_bias
        if args.layer_norm:
            options["layer_norm"] = True
        if args.proj_size is not None:
            if args.proj_size >= args.hidden:
                raise UsageError(f"--proj-size must be < --hidden ({args.hidden}), got {args.proj_size}")
            options["proj_size"] = args.proj_size
    else:
        if args.forget_bias is not None or args.lstm_init != "default" or args.layer_norm or args.proj_size:
            raise UsageError(f"--forget-bias, --lstm-init, --layer-norm and --proj-size apply to --cell lstm, "
                             f"not {args.cell!r}")
    if args.cell == "gru":
        options["reset_after"] = args.reset_after == "true"
    elif args.reset_after != "true":
        raise UsageError(f"--reset-after applies to --cell gru, not {args.cell!r}")
    cells = [tasks.make_cell(args.cell, args.hidden, **options) for _ in range(args.layers)]
    why_not = {"fused": fused.why_not, "parallel": parallel.why_not, "cudnn": cudnn.why_not}.get(args.backend)
    reason = None if why_not is None else why_not(cells[0])
    if reason is None and args.backend == "cudnn":  # the seeds train under jax.vmap, which cuDNN cannot batch
        reason = "the seeds train under jax.vmap, which has no cuDNN batching rule in JAX"
    if reason is not None:
        raise UsageError(f"--backend {args.backend} cannot run this cell: {reason}; use --backend auto or reference")
    regularised = dict(recurrent_dropout=args.recurrent_dropout, zoneout=args.zoneout,
                       learn_initial_carry=args.learn_initial_carry)
    if any(regularised.values()):  # each cell becomes a memcell.layer with these options
        if args.gradient_flow:
            raise UsageError("--gradient-flow measures a bare cell: leave out --recurrent-dropout, --zoneout "
                             "and --learn-initial-carry")
        try:
            cells = [as_layer(c, backend=args.backend, **regularised) for c in cells]
        except ValueError as e:
            raise UsageError(str(e)) from None
    model = tasks.sequence_model(cells if args.layers > 1 else cells[0], task.output_size, task.readout,
                                 backend=args.backend)
    return task, model


def _sequence_length(task) -> int:
    return int(task.test["xs"].shape[1])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(report: dict, task) -> str:
    # "loss" repeats one of the named metrics (mse, xent) in every task
    metrics = [m for m in report["final"] if m != "loss"]
    head = ["seed"] + metrics
    rows = [[str(s)] + [_fmt(float(report["final"][m][i])) for m in metrics] for i, s in enumerate(report["seeds"])]
    rows.append(["mean"] + [_fmt(report["summary"][m]["mean"]) for m in metrics])
    rows.append(["std"] + [_fmt(report["summary"][m]["std"]) for m in metrics])
    for name, vals in report["baselines"].items():
        rows.append([f"{name} baseline"] + [_fmt(vals.get(m)) for m in metrics])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]
    n = len(report["seeds"])
    verdict = [f"task {report['task']}: metric {report['metric']} ({task.mode} is better), {report['steps']} steps, "
               f"stopped: {report['stop_reason']}, {report['wall_time']:.1f} s"]
    for name, k in report["beats"].items():
        verdict.append(f"beats the {name} baseline: {k}/{n} seeds")
    if report["solved_threshold"] is not None:
        verdict.append(f"solved ({report['metric']} {'<=' if task.mode == 'min' else '>='} {report['solved_threshold']:.4g}): "
                       f"{report['n_solved']}/{n} seeds")
    return "\n".join(out + [""] + verdict)


def _distributed(args) -> None:
    """Joins a multi-host run when the flags (or JAX_COORDINATOR_ADDRESS) say so; before jax starts."""
    flags = (args.coordinator, args.num_processes, args.process_id)
    if any(f is not None for f in flags) and not all(f is not None for f in flags):
        raise UsageError("--coordinator, --num-processes and --process-id go together: give all three "
                         f"(or --distributed to detect them), got {args.coordinator}, {args.num_processes}, "
                         f"{args.process_id}")
    if args.coordinator is None and not (args.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return
    from memcell import train

    try:
        train.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"multi-host set-up failed: {e}") from None


def _mesh(args):
    """The mesh of --devices / --mesh (None: one device; every device in a multi-host run)."""
    import jax

    from memcell import train

    if args.devices is not None and args.mesh is not None:
        raise UsageError(f"--devices and --mesh exclude each other, got --devices {args.devices} --mesh {args.mesh}")
    try:
        if args.mesh is not None:
            return train.mesh_from_spec(args.mesh)
        if args.devices is not None:
            return None if args.devices == 1 and jax.process_count() == 1 else train.make_mesh(data=args.devices)
        return train.make_mesh(data=jax.device_count()) if jax.process_count() > 1 else None
    except ValueError as e:
        raise UsageError(f"--{'mesh' if args.mesh is not None else 'devices'}: {e}") from None


def _run_config(args, task) -> dict:
    """What a checkpoint records of its run (and a resumed run or ``flow`` must share)."""
    config = {k: getattr(args, k) for k in _IDENTITY_KEYS}
    config["length"] = _sequence_length(task) if args.length is None else args.length
    if args.tbptt:  # only when set, so the checkpoints of runs without it keep their config
        config["tbptt"] = True
    return config


def _train(args) -> int:
    _distributed(args)
    mesh = _mesh(args)
    from memcell.train import is_main_process

    main_process = is_main_process()
    out = _check_out(args.out, args.resume)
    task, model = _build(args)
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    config = _run_config(args, task)

    # A resume is written over the run's config.json only once its checkpoint accepted it: a refused
    # resume (another configuration) must leave the run as it was, for a later resume or `memcell flow`.
    write_config = out is not None and main_process
    if write_config and not (args.resume and (out / "config.json").exists()):
        (out / "config.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    try:
        report = tasks.train_task(
            task, model, seeds=seeds, steps=args.steps, batch_size=args.batch_size,
            learning_rate=args.lr[0] if len(args.lr) == 1 else args.lr, optimizer=args.optimizer,
            clip_norm=args.clip or None, warmup_steps=args.warmup, decay=args.decay, eval_every=args.eval_every,
            stop_at_solved=args.stop_at_solved, patience=args.patience, out_dir=out,
            checkpoint_every=args.checkpoint_every, resume=args.resume, config=config,
            progress=not args.no_progress, steps_per_call=args.steps_per_call, gradient_flow=args.gradient_flow,
            mesh=mesh,
            tbptt=args.tbptt,
        )
    except ValueError as e:
        # Input the loop rejects (a mismatched or corrupted checkpoint, bad sizes): a usage error.
        raise UsageError(str(e)) from None
    if write_config:
        (out / "config.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    state = report.pop("state")
    report.pop("history")
    text = None
    if args.sample_chars:
        import jax

        from memcell.tasks import sample_text

        params0 = jax.tree.map(lambda x: x[0], state.params)
        text = sample_text(task, model, params0, jax.random.key(args.seed_offset), prompt=args.prompt,
                           length=args.sample_chars, temperature=args.temperature, top_k=args.top_k)
        report["sample"] = text
    if not main_process:  # process 0 alone writes and prints the report
        return 0
    if out is not None:
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        from memcell import plot  # lazily: matplotlib is only needed here

        png = plot.learning_curves(out)
        (out / "report.md").write_text(_table(report, task) + f"\n\n![learning curves]({png.name})\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_table(report, task))
        if text is not None:
            print(f"\nsample of seed {seeds[0]} (temperature {args.temperature}):\n{args.prompt}{text}")
    return 0


def _tasks() -> int:

    for name in TASK_NAMES:
        try:
            task = tasks.make(name)
        except ImportError as e:
            print(f"{name}: unavailable ({e})")
            continue
        base = "; ".join(f"{b}: " + ", ".join(f"{m} {v:.4g}" for m, v in vals.items()) for b, vals in task.baselines.items())
        solved = "" if task.solved is None else f", solved at {task.metric} {task.solved:.4g}"
        print(f"{name}: metric {task.metric} ({task.mode}){solved}; baselines {base}")
    return 0


# ----------------------------------------------------------------------------- flow


def _load_run(run_dir: str):
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
    args = build_parser().parse_args(["train", "--task", saved["task"]])
    for k, v in saved.items():
        if k != "command" and hasattr(args, k):
            setattr(args, k, v)
    return args, path


def _initial_states(args, task, model, seeds):
    """The states ``train`` started from: ``tasks.train_task``'s optimizer and ``init_states``."""
    from memcell import train

    tx = train.optimizer(args.lr[0], name=args.optimizer, clip_norm=args.clip or None, warmup_steps=args.warmup,
                         decay_steps=args.steps if args.decay else None)
    lrs = None if len(args.lr) == 1 else args.lr
    return train.init_states(seeds, lambda k: model.init(k, task.input_size), tx, learning_rates=lrs)


def _flow_wrt(wrt: str, task, model, params) -> str:
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


def _flow_table(result: dict) -> str:
    K = result["lags"]
    head = ["seed", "rate initial", f"rate trained (step {result['trained']['step']})",
            f"norm at lag {K - 1} initial", "trained"]
    rows = [[str(s), _fmt(result["initial"]["decay_rate"][i]), _fmt(result["trained"]["decay_rate"][i]),
             _fmt(result["initial"]["norm_at_max_lag"][i]), _fmt(result["trained"]["norm_at_max_lag"][i])]
            for i, s in enumerate(result["seeds"])]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([f"{result['quantity']}", f"decay rate: {result['fit']}", "",
                      line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def _flow(args) -> int:
    import jax
    import numpy as np

    from memcell import jacobian, plot, train

    run_args, run_dir = _load_run(args.run_dir)
    out = _check_out(args.out or args.run_dir, False)
    # Measured on the reference path: the fast paths compute the same function (tested), and
    # the jacobian tools differentiate the cell's own step. The checkpoint's config keeps the run's backend.
    task, model = _build(argparse.Namespace(**{**vars(run_args), "backend": "reference"}))
    config = _run_config(run_args, task)
    seeds = list(range(run_args.seed_offset, run_args.seed_offset + run_args.seeds))
    initial = _initial_states(run_args, task, model, seeds)
    if getattr(run_args, "tbptt", False):  # a truncated-BPTT run's state holds its streams too
        initial = tasks.with_stream(task, model, initial, run_args.batch_size)
    try:
        trained = train.load_checkpoint(run_dir / "checkpoints", initial, config=config)
    except ValueError as e:  # no checkpoint, or one of another model or config
        raise UsageError(f"RUN_DIR {args.run_dir!r}: {e}") from None
    wrt = _flow_wrt(args.wrt, task, model, jax.tree.map(lambda x: x[0], initial.params))
    measure = jax.jit(jax.vmap(lambda p: tasks.gradient_norms_by_lag(task, model, p, n=args.sequences, wrt=wrt)))
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
                    f"sequences of {run_args.task}, with respect to {of}",
        "fit": f"least-squares slope of ln(norm) against lag over lags 1..{K - 1} (memcell.jacobian.decay_rate; "
               "norms that underflowed to 0 left out), nats per step; negative: the gradient vanishes",
    }
    for name, g, r, at in (("initial", norms[0], rates[0], 0), ("trained", norms[1], rates[1], step)):
        result[name] = {"step": at, "decay_rate": r.tolist(), "norm_at_max_lag": g[:, -1].tolist(), "norms": g.tolist()}
    (out / "flow.json").write_text(json.dumps(result, indent=2) + "\n")
    plot.gradient_flow(out / "flow.png", norms[0], norms[1], rates=(rates[0], rates[1]), seeds=seeds,
                       steps=(0, step), ylabel=grad,
                       title=f"{run_args.task}, {run_args.cell}, {run_args.hidden} units: {grad} against lag")
    print(json.dumps(result, indent=2) if args.json else _flow_table(result) + f"\n\nwrote {out / 'flow.png'} and {out / 'flow.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 itself on unknown options and bad values
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "flow":
            return _flow(args)
        return _tasks()
    except UsageError as e:
        parser.exit(2, f"memcell: error: {e}\n")
    return 0  # unreachable: parser.exit raises SystemExit


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
