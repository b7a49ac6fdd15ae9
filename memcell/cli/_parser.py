"""The ``memcell`` argument parser, the names it offers, and ``UsageError`` (exit code 2)."""

from __future__ import annotations

import argparse
import math

from memcell import cells, tasks
from memcell.types import BACKENDS

# The names the CLI offers are memcell's own tables, not copies of them: --cell also takes a
# user's MODULE:FACTORY, and each cell option goes to the factory, which takes it or refuses it.
TASK_NAMES = tuple(tasks.TASKS)
CELL_NAMES = tuple(cells.CELLS)
# What config.json's layout is: 2 since the cell options are passed only when set (--reset-after
# and --recurrent-scale default to None); a config without it was written with "true" and 1.0.
CONFIG_VERSION = 2
# What a resumed run must share with the run that wrote the checkpoint (steps may grow).
IDENTITY_KEYS = ("task", "length", "cell", "hidden", "layers", "seeds", "seed_offset", "batch_size", "lr",
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


def _takers(keyword: str) -> str:
    """Which built-in cells name ``keyword`` in their factory's signature, read from the table."""
    import inspect

    def takes(factory) -> bool:
        try:
            return keyword in inspect.signature(factory).parameters
        except (TypeError, ValueError):  # no signature to read
            return False

    names = [name for name, factory in cells.CELLS.items() if takes(factory)]
    return "named by the factories of " + ", ".join(names) if names else "no built-in cell names it"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``memcell`` (subcommands ``train``, ``tasks``, ``flow`` and ``export``)."""
    p = argparse.ArgumentParser(prog="memcell", description="Recurrent cells as pure JAX functions: training and benchmarks.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,tasks,flow,export}")

    t = sub.add_parser("train", help="train a cell on a task, several seeds at once",
                       description="Train a recurrent cell on a task; all seeds train together in one jit (jax.vmap).")
    g = t.add_argument_group("task")
    g.add_argument("--task", required=True, choices=TASK_NAMES)
    g.add_argument("--length", type=_positive_int, default=None,
                   help="sequence length T (adding, copy: the lag, temporal_order, char_lm; sunspots: the input window)")
    g.add_argument("--batch-size", type=_positive_int, default=32)
    g = t.add_argument_group("model")
    g.add_argument("--cell", default="lstm", metavar="CELL",
                   help=f"a built-in cell ({', '.join(CELL_NAMES)}; memcell.cells.CELLS) or MODULE:FACTORY, a "
                        "user's factory(hidden_size, **options) -> memcell.Cell, imported like `uvicorn "
                        "module:app` (from the current directory or an installed package); the run's "
                        "config.json keeps the name, so --resume and `memcell flow` rebuild the same cell")
    g.add_argument("--hidden", type=_positive_int, default=128, help="hidden units a layer")
    g.add_argument("--layers", type=_positive_int, default=1, help="stacked recurrent layers")
    # The cell options below go to the cell's factory only when set, as keywords; a factory that
    # does not take one, or refuses its value, stops the run with exit code 2 naming the flag.
    g.add_argument("--forget-bias", type=float, default=None,
                   help=f"forget_bias= of the cell's factory: the forget-gate bias ({_takers('forget_bias')})")
    g.add_argument("--lstm-init", default="default", choices=("default", "chrono"),
                   help="chrono: init='chrono', max_timescale=T: forget biases spread up to T steps "
                        f"(Tallec and Ollivier 2018; {_takers('max_timescale')})")
    g.add_argument("--layer-norm", action="store_true", help=f"layer_norm=True ({_takers('layer_norm')})")
    g.add_argument("--proj-size", type=_positive_int, default=None,
                   help="proj_size=: a projection of h to this many units, fewer than --hidden (Sak et al. 2014; "
                        f"torch's proj_size; {_takers('proj_size')})")
    g.add_argument("--recurrent-dropout", type=_rate, default=0.0,
                   help="variational dropout on h where it enters the recurrent matmul (memcell.layer's "
                        "recurrent_dropout: the cells whose spec declares that matmul)")
    g.add_argument("--zoneout", type=_rate, default=0.0, help="zoneout rate of every carry unit (Krueger et al. 2017)")
    g.add_argument("--learn-initial-carry", action="store_true", help="the initial carry is a learnt param")
    g.add_argument("--reset-after", default=None, choices=("true", "false"),
                   help=f"reset_after=: where the reset gate applies ({_takers('reset_after')})")
    g.add_argument("--recurrent-init", default=None,
                   help="recurrent_init=: orthogonal (the usual default), identity, lecun_normal, glorot_uniform, "
                        f"uniform ({_takers('recurrent_init')})")
    g.add_argument("--recurrent-scale", type=_positive_float, default=None,
                   help=f"recurrent_scale=: the spectral radius of the recurrent init ({_takers('recurrent_scale')})")
    g.add_argument("--backend", default="reference", choices=BACKENDS,
                   help="how the cells are unrolled (memcell.unroll's backend): 'auto' runs each cell on a fast "
                        "path its spec declares (the fused path of the classic cells' default forms, the parallel "
                        "path of the cells with a linear carry update), else the reference; 'fused', 'parallel' "
                        "and 'cudnn' (GPU only) refuse a cell they do not implement")
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="dtype= of the factory when not float32: the matmul dtype (bfloat16 accumulates in "
                        "float32; params stay float32)")
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
    g.add_argument("--eval-every", type=_nonneg_int, default=None,
                   help="evaluate every N steps (default: about 10 evaluations over the run, a multiple of "
                        "--steps-per-call, so the learning curves show the metric's course; 0: at the end only)")
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
    g.add_argument("--coordinator-timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                   help="multi-host: give up (exit 2) when not every process has joined within this many seconds")
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

    t.set_defaults(config_version=CONFIG_VERSION)  # stored in config.json with the flags

    sub.add_parser("tasks", help="list the tasks with their metric and baselines")

    f = sub.add_parser("flow", help="gradient norm against lag of a trained run, initial vs trained params",
                       description="Loads a `memcell train --out` run's config and latest checkpoint and measures, "
                                   "for the initial and the trained params of every seed, the norm of the loss "
                                   "gradient at each lag before the last step on the task's test sequences, with "
                                   "its decay rate per step; writes flow_<wrt>.png and flow_<wrt>.json "
                                   "(flow_hidden.*, flow_input.*: one pair a quantity, so a second "
                                   "measurement does not overwrite the first).")
    f.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of a memcell train run")
    f.add_argument("--out", default=None, help="where flow_<wrt>.png and flow_<wrt>.json go (default RUN_DIR)")
    f.add_argument("--wrt", default="auto", choices=("auto", "hidden", "input"),
                   help="gradient with respect to the cell's hidden state or the model's inputs (auto: the "
                        "hidden state where the model is one cell with one, else the inputs)")
    f.add_argument("--sequences", type=_positive_int, default=64, help="test sequences averaged over")
    f.add_argument("--json", action="store_true", help="print flow_<wrt>.json instead of the table")

    e = sub.add_parser("export", help="a trained run's model as an ONNX model or a serialized jax.export program",
                       description="Loads a `memcell train --out` run's config and its checkpoint and writes the "
                                   "model (recurrent layers and readout, evaluation mode) for one of its seeds: "
                                   "an ONNX model (ONNX's LSTM/GRU/RNN operators where the cells allow, else a Loop) "
                                   "checked once in ONNX Runtime, or a jax.export program. Inputs: xs [B, T, D] "
                                   "float32 (token tasks: one-hot), then lengths [B] int32 with --lengths; outputs: "
                                   "the readout, then the final carry's leaves. See docs/deployment.md.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of a memcell train run")
    e.add_argument("--format", required=True, choices=("onnx", "jax"), help="onnx: an .onnx file; jax: jax.export bytes")
    e.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    e.add_argument("--streaming", action="store_true", help="a one-step model: x [B, D] and the carry in, y and the "
                                                            "new carry out")
    e.add_argument("--lengths", action="store_true", help="the sequence model takes lengths [B] as a second input")
    e.add_argument("--seed", type=int, default=None, help="which of the run's seeds (default: its first)")
    return p
