"""``memcell train`` and ``memcell tasks``: the model a command line describes, the multi-host and
mesh set-up, the run and its report."""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import threading

from memcell import paths, tasks
from memcell.cli._cells import cell_name, make_cells
from memcell.cli._parser import IDENTITY_KEYS, TASK_NAMES, UsageError
from memcell.scan import layer as as_layer


def check_out(out: str | None, resume: bool) -> pathlib.Path | None:
    """``--out`` as a writable directory (created), or None; with ``resume`` it must hold checkpoints."""
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


def holds_checkpoints(out: pathlib.Path) -> bool:
    """Whether ``out`` holds a run's checkpoints (orbax's step directories under ``checkpoints/``)."""
    ckpt = out / "checkpoints"
    return ckpt.is_dir() and any(p.name.isdigit() and p.is_dir() for p in ckpt.iterdir())


def build(args):
    """The task and the model a ``train`` command line describes; ``UsageError`` on a bad combination."""
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
        task = tasks.make(args.task, args.length)  # each task checks its own sizes, by name
    except ImportError as e:
        raise UsageError(str(e)) from None
    except ValueError as e:
        raise UsageError(f"{'--length' if args.length is not None else f'--task {args.task}'}: {e}") from None
    cells = make_cells(args, sequence_length(task))
    reason = paths.why_not(args.backend, cells[0])
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
    if args.gradient_flow:
        try:
            tasks.gradient_flow_fn(task, model)
        except ValueError as e:
            raise UsageError(f"--gradient-flow cannot measure --cell {args.cell} (it reads dL/dh of the cell's hidden "
                             f"state): {e}; after training, `memcell flow RUN_DIR --wrt input` measures any model") from None
    return task, model


def sequence_length(task) -> int:
    return int(task.test["xs"].shape[1])


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _beat_rule(report: dict, name: str) -> str:
    """The margin ``memcell.tasks.beats`` asks, in words, for the verdict line."""
    ref, threshold = report["baselines"][name][report["metric"]], report["beat_thresholds"][name]
    if report["mode"] == "min":
        return f"{report['metric']} < {tasks.BEAT_FRACTION:g} x {ref:.4g} = {threshold:.4g}"
    return f"{report['metric']} > {ref:.4g} + {1 - tasks.BEAT_FRACTION:.1g} x (1 - {ref:.4g}) = {threshold:.4g}"


def table(report: dict, lrs: list | None = None) -> str:
    """The run's table (a row a seed, with its learning rate when the seeds have several) and verdict."""
    # "loss" repeats one of the named metrics (mse, xent) in every task
    metrics = [m for m in report["final"] if m != "loss"]
    by_lr = lrs is not None and len(set(lrs)) > 1  # a learning-rate sweep: each row says its rate
    head = ["seed"] + (["lr"] if by_lr else []) + metrics
    pad = [""] if by_lr else []
    rows = [[str(s)] + ([fmt(float(lrs[i]))] if by_lr else []) + [fmt(float(report["final"][m][i])) for m in metrics]
            for i, s in enumerate(report["seeds"])]
    rows.append(["mean"] + pad + [fmt(report["summary"][m]["mean"]) for m in metrics])
    rows.append(["std"] + pad + [fmt(report["summary"][m]["std"]) for m in metrics])
    for name, vals in report["baselines"].items():
        rows.append([f"{name} baseline"] + pad + [fmt(vals.get(m)) for m in metrics])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]
    n, metric = len(report["seeds"]), report["metric"]
    mean = report["summary"][metric]["mean"]
    verdict = [f"task {report['task']}: metric {metric} ({report['mode']} is better), {report['steps']} steps, "
               f"stopped: {report['stop_reason']}, {report['wall_time']:.1f} s"]
    for name, k in report["beats"].items():
        verdict.append(f"beats the {name} baseline ({_beat_rule(report, name)}): {k}/{n} seeds; "
                       f"mean {fmt(mean)} against the baseline {fmt(report['baselines'][name][metric])}")
    if report["solved_threshold"] is not None:
        verdict.append(f"solved ({metric} {'<=' if report['mode'] == 'min' else '>='} {report['solved_threshold']:.4g}): "
                       f"{report['n_solved']}/{n} seeds")
    return "\n".join(out + [""] + verdict)


def run_title(args, length: int) -> str:
    """A figure's title: what was trained on what, so two runs' figures tell apart (layers, lr, T)."""
    lrs = "/".join(fmt(float(v)) for v in args.lr)
    layers = f"{args.layers} layer{'s' if args.layers > 1 else ''} of {args.hidden} units"
    return f"{args.task} (T = {length}), {args.cell}, {layers}, lr {lrs}"


def eval_every(args) -> int:
    """``--eval-every``, or by default about 10 evaluations over the run, each a whole number of jit
    calls apart (``--steps-per-call``), so the default splits no call: a run of fewer than 10 calls
    is evaluated after each call."""
    if args.eval_every is not None:
        return args.eval_every
    return max(args.steps_per_call, args.steps // 10 // args.steps_per_call * args.steps_per_call)


def distributed(args) -> None:
    """Joins a multi-host run when the flags (or JAX_COORDINATOR_ADDRESS) say so; before jax starts."""
    flags = (args.coordinator, args.num_processes, args.process_id)
    if any(f is not None for f in flags) and not all(f is not None for f in flags):
        raise UsageError("--coordinator, --num-processes and --process-id go together: give all three "
                         f"(or --distributed to detect them), got {args.coordinator}, {args.num_processes}, "
                         f"{args.process_id}")
    if args.coordinator is None and not (args.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return
    from memcell import train

    who = ("this process" if args.process_id is None else
           f"process {args.process_id} of {args.num_processes}")
    where = "the coordinator JAX detects" if args.coordinator is None else f"the coordinator {args.coordinator}"
    timeout = args.coordinator_timeout
    print(f"memcell: {who} is joining the multi-host run at {where} and waits until every process has connected "
          f"(at most {timeout:g} s: --coordinator-timeout)", file=sys.stderr, flush=True)
    # JAX's own timeout ends the process with an abort, so the CLI gives up first, with exit 2.
    watchdog = threading.Timer(timeout, _give_up, args=(who, where, timeout))
    watchdog.daemon = True
    watchdog.start()
    try:
        train.initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                                     timeout=math.ceil(timeout) + 60)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"multi-host set-up failed: {e}") from None
    finally:
        watchdog.cancel()


def _give_up(who: str, where: str, timeout: float) -> None:
    """Ends a multi-host start that waited ``timeout`` seconds for the other processes: exit 2.
    ``jax.distributed.initialize`` cannot be interrupted from Python, so the process exits here."""
    sys.stderr.write(f"memcell: error: --coordinator-timeout: {who} waited {timeout:g} s at {where} and not every "
                     "process connected; start all of them with the same --coordinator and --num-processes, each "
                     "with its own --process-id (or raise --coordinator-timeout)\n")
    sys.stderr.flush()
    os._exit(2)


def mesh_of(args):
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


def run_config(args, task) -> dict:
    """What a checkpoint records of its run (and a resumed run or ``flow`` must share)."""
    config = {k: getattr(args, k) for k in IDENTITY_KEYS}
    config["length"] = sequence_length(task) if args.length is None else args.length
    if args.tbptt:  # only when set, so the checkpoints of runs without it keep their config
        config["tbptt"] = True
    # Before the cell options went to the factory only when set, every checkpoint recorded these
    # two unset flags as "true" and 1.0 (the GRU's and every factory's defaults); recording them so
    # keeps those checkpoints resumable (and readable by `memcell flow`).
    if config["reset_after"] is None:
        config["reset_after"] = "true"
    if config["recurrent_scale"] is None:
        config["recurrent_scale"] = 1.0
    return config


def train_command(args) -> int:
    distributed(args)
    mesh = mesh_of(args)
    from memcell.train import is_main_process

    main_process = is_main_process()
    out = check_out(args.out, args.resume)
    args.cell = cell_name(args.cell)  # the name config.json keeps: the table's, else module:qualname
    task, model = build(args)
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    config = run_config(args, task)

    # Nothing is written into an existing run before the run is accepted: a directory holding
    # checkpoints gets its config.json only after fit took them (a resume with the same config);
    # a refused rerun or resume leaves the run as it was, for a later resume or `memcell flow`.
    write_config = out is not None and main_process
    if write_config and not holds_checkpoints(out):
        (out / "config.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    try:
        result = tasks.train_task(
            task, model, seeds=seeds, steps=args.steps, batch_size=args.batch_size,
            learning_rate=args.lr[0] if len(args.lr) == 1 else args.lr, optimizer=args.optimizer,
            clip_norm=args.clip or None, warmup_steps=args.warmup, decay=args.decay, eval_every=eval_every(args),
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
    report = result.to_dict(history=False)
    text = None
    if args.sample_chars:
        import jax

        from memcell.tasks import sample_text

        params0 = jax.tree.map(lambda x: x[0], result.state.params)
        text = sample_text(task, model, params0, jax.random.key(args.seed_offset), prompt=args.prompt,
                           length=args.sample_chars, temperature=args.temperature, top_k=args.top_k)
        report["sample"] = text
    if not main_process:  # process 0 alone writes and prints the report
        return 0
    lrs = [float(v) for v in args.lr] * (args.seeds if len(args.lr) == 1 else 1)
    if out is not None:
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        from memcell import plot  # lazily: matplotlib is only needed here

        png = plot.learning_curves(out, title=run_title(args, config["length"]))
        (out / "report.md").write_text(table(report, lrs) + f"\n\n![learning curves]({png.name})\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(report, lrs))
        if text is not None:
            print(f"\nsample of seed {seeds[0]} (temperature {args.temperature}):\n{args.prompt}{text}")
    return 0


def tasks_command() -> int:
    for name in TASK_NAMES:
        try:
            task = tasks.make(name)
        except ImportError as e:  # the message names the package and the extra that brings it
            print(f"{name}: unavailable: {e}")
            continue
        base = "; ".join(f"{b}: " + ", ".join(f"{m} {v:.4g}" for m, v in vals.items()) for b, vals in task.baselines.items())
        solved = "" if task.solved is None else f", solved at {task.metric} {task.solved:.4g}"
        print(f"{name}: metric {task.metric} ({task.mode}){solved}; baselines {base}")
    return 0
