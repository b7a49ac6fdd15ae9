"""The cells a ``train`` command line describes: ``--cell`` read through ``memcell.cells`` (a table
name or a user's ``MODULE:FACTORY``), and the cell options the user set passed to the factory.

The CLI knows no cell: which options a cell takes, and which values it accepts, is the factory's
own business. An option a factory does not take (a ``TypeError`` for an unexpected keyword) or a
value it refuses (a ``ValueError``) becomes a ``UsageError`` (exit 2) naming the flag.
"""

from __future__ import annotations

import os
import re
import sys

from memcell import cells
from memcell.cli._parser import UsageError
from memcell.types import Cell

# The factory keyword each cell flag sets, when the user sets it (--lstm-init chrono sets two).
FLAG_OF = {
    "forget_bias": "--forget-bias",
    "init": "--lstm-init",
    "max_timescale": "--lstm-init",
    "layer_norm": "--layer-norm",
    "proj_size": "--proj-size",
    "reset_after": "--reset-after",
    "recurrent_init": "--recurrent-init",
    "recurrent_scale": "--recurrent-scale",
    "dtype": "--dtype",
}


def resolve_cell(name: str):
    """The factory ``--cell name`` stands for; a ``MODULE:FACTORY`` is imported from the current
    directory too, as ``uvicorn module:app`` does (the ``memcell`` script does not put it on the path)."""
    if ":" in name and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return cells.resolve(name)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--cell: {e}") from None


def cell_name(name: str) -> str:
    """The name a run stores for ``--cell name``: the table's name, else ``module:qualname``
    (``memcell.cells.factory_name``), so ``memcell.cells:gru`` and ``gru`` are one cell."""
    factory = resolve_cell(name)
    try:
        return cells.factory_name(factory)
    except ValueError:  # importable under the name given, though not under its own qualname
        return name


def cell_options(args, length: int) -> dict:
    """The keywords the cell flags the user set give the factory (none for a flag left unset)."""
    import jax.numpy as jnp

    options: dict = {}
    if args.dtype != "float32":
        options["dtype"] = jnp.dtype(args.dtype)
    if args.recurrent_init is not None:
        options["recurrent_init"] = args.recurrent_init
    if args.recurrent_scale is not None:
        options["recurrent_scale"] = args.recurrent_scale
    if args.lstm_init == "chrono":  # the forget biases spread up to the task's length
        options.update(init="chrono", max_timescale=float(max(length, 3)))
    if args.forget_bias is not None:
        options["forget_bias"] = args.forget_bias
    if args.layer_norm:
        options["layer_norm"] = True
    if args.proj_size is not None:
        options["proj_size"] = args.proj_size
    if args.reset_after is not None:
        options["reset_after"] = args.reset_after == "true"
    return options


def _named(keywords, message: str) -> list[str]:
    """The flags of the ``keywords`` that ``message`` names as a word (``init`` is not ``recurrent_init``)."""
    return sorted({FLAG_OF[k] for k in keywords if re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", message)})


def make_cells(args, length: int) -> list[Cell]:
    """``args.layers`` cells of ``args.hidden`` units from ``--cell`` and the options set; ``UsageError``
    naming the flag when the factory does not take an option or refuses its value."""
    factory = resolve_cell(args.cell)
    options = cell_options(args, length)
    try:
        made = [factory(args.hidden, **options) for _ in range(args.layers)]
    except TypeError as e:
        m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if m is not None and m.group(1) in options:
            kw = m.group(1)
            raise UsageError(f"{FLAG_OF[kw]}: --cell {args.cell} does not take it: its factory has no option "
                             f"{kw} ({e})") from None
        raise UsageError(f"--cell {args.cell}: its factory cannot be called as factory(hidden_size, **options) "
                         f"with options {sorted(options)}: {e}") from None
    except ValueError as e:
        flags = _named(options, str(e)) or (["--hidden"] if "hidden_size" in str(e) else [f"--cell {args.cell}"])
        raise UsageError(f"{', '.join(flags)}: {e}") from None
    if not all(isinstance(c, Cell) for c in made):
        got = type(next(c for c in made if not isinstance(c, Cell))).__name__
        raise UsageError(f"--cell {args.cell}: its factory must return a memcell.Cell, got {got}")
    return made
