"""``memcell export RUN_DIR --format onnx|jax --out FILE``: a trained run's model, readout included, as a file."""

from __future__ import annotations

import argparse
import pathlib

from memcell.cli._flow import initial_states, load_run
from memcell.cli._parser import UsageError
from memcell.cli._train import build, run_config


def trained_params(args, run_args, run_dir: pathlib.Path, task, model):
    """The params of one seed from the run's checkpoint."""
    import jax

    from memcell import train

    config = run_config(run_args, task)
    seeds = list(range(run_args.seed_offset, run_args.seed_offset + run_args.seeds))
    seed = seeds[0] if args.seed is None else args.seed
    if seed not in seeds:
        raise UsageError(f"--seed must be one of the run's seeds {seeds}, got {seed}")
    initial = initial_states(run_args, task, model, seeds)
    try:  # the run's checkpoint (memcell.train keeps its latest)
        trained = train.load_checkpoint(run_dir / "checkpoints", initial, config=config)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"RUN_DIR {args.run_dir!r}: {e}") from None
    i = seeds.index(seed)
    return jax.tree.map(lambda x: x[i], trained.params), seed, int(jax.device_get(trained.step).max())


def export_command(args) -> int:
    run_args, run_dir = load_run(args.run_dir)
    if args.streaming and args.lengths:
        raise UsageError("--streaming and --lengths exclude each other: a streaming model takes one step at a time")
    out = pathlib.Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {args.out!r} is a directory; give the file to write")
    # The reference path: the fast paths compute the same function (tested), and export lowers the reference.
    task, model = build(argparse.Namespace(**{**vars(run_args), "backend": "reference"}))
    params, seed, step = trained_params(args, run_args, run_dir, task, model)
    try:
        from memcell import export
    except ImportError as e:  # the export extra is missing
        raise UsageError(f"memcell export needs the export extra (pip install 'memcell[export]'): {e}") from None
    kw = dict(input_size=task.input_size, with_lengths=args.lengths, streaming=args.streaming, path=out)
    try:
        if args.format == "onnx":
            export.to_onnx(model, params, **kw)
            why = export.why_not_native(model, streaming=args.streaming)
            form = "ONNX's native operators" if why is None else f"the Loop form ({why})"
        else:
            export.to_jax_export(model, params, **kw)
            form = "a jax.export program (jax.export.deserialize, then .call)"
    except ImportError as e:
        raise UsageError(f"--format {args.format} needs the export extra (pip install 'memcell[export]'): {e}") from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"cannot export RUN_DIR {args.run_dir!r}: {e}") from None
    except OSError as e:
        raise UsageError(f"--out {args.out!r} cannot be written: {e.strerror or e}") from None
    kind = "one step" if args.streaming else "sequences" + (" with lengths" if args.lengths else "")
    print(f"wrote {out}: {run_args.task}, {run_args.cell} x{run_args.layers}, seed {seed}, step {step}, "
          f"{kind}, as {form}")
    return 0
