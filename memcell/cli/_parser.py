"""The ``memcell`` argument parser, the names it offers, and ``UsageError`` (exit code 2)."""

from __future__ import annotations

import argparse
import math

from memcell import tasks
from memcell.types import BACKENDS

# The names the CLI offers are memcell.tasks' own lists, not copies of them.
TASK_NAMES = tuple(tasks.TASKS)
CELL_NAMES = tasks.CELLS
CLASSIC = ("rnn", "irnn", "lstm", "gru")  # the cells with a dense recurrent matrix (--recurrent-init applies)
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
