"""The ``memcell`` command line: train any cell on any task, for several seeds in one jit.

    memcell train --task adding --cell lstm --length 200 --seeds 4 --steps 5000 --out runs/x
    memcell train --task adding --cell lstm --length 200 --seeds 4 --steps 8000 --out runs/x --resume
    memcell train --task adding --cell lstm --seeds 4 --mesh data=2,seeds=4   # 8 devices (docs/scaling.md)
    memcell train --task adding --cell mypkg.cells:leaky --hidden 64           # a user's factory, MODULE:FACTORY
    memcell tasks                       # the tasks, their metric and baselines
    memcell flow runs/x                 # gradient norm against lag, initial vs trained params (flow_hidden.png)
    memcell export runs/x --format onnx --lengths --out model.onnx   # docs/deployment.md

``--cell`` reads ``memcell.cells.CELLS`` (or imports a user's factory); each cell option the user
sets goes to the factory as a keyword, and the factory takes it or refuses it (exit code 2).

A run with ``--out`` writes its learning curves beside its report (``learning_curves.png``).

Bad input (an unknown task or option, a bad length, an unwritable output directory, a
checkpoint that does not match) prints a message and exits with code 2.
"""

from __future__ import annotations

from typing import Sequence

from memcell.cli._export import export_command
from memcell.cli._flow import flow_command
from memcell.cli._parser import CELL_NAMES, TASK_NAMES, UsageError, build_parser
from memcell.cli._train import tasks_command, train_command

__all__ = ["CELL_NAMES", "TASK_NAMES", "UsageError", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 itself on unknown options and bad values
    try:
        if args.command == "train":
            return train_command(args)
        if args.command == "flow":
            return flow_command(args)
        if args.command == "export":
            return export_command(args)
        return tasks_command()
    except UsageError as e:
        parser.exit(2, f"memcell: error: {e}\n")
    return 0  # unreachable: parser.exit raises SystemExit
