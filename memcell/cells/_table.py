"""The one table of built-in cells, ``name -> factory``, and how a cell is named anywhere memcell takes one.

Everything that accepts a cell by name (the command line's ``--cell``, ``memcell.tasks.make_cell``,
the experiments, the Flax wrappers) reads ``CELLS`` and resolves names with ``resolve``, which also
accepts a user's factory: a callable, or a ``"module:attribute"`` string (``"mypkg.cells:leaky"``,
imported like ``uvicorn module:app``). A new built-in cell is one module in ``memcell/cells/`` and
one line here.
"""

import functools
import importlib
from types import MappingProxyType
from typing import Callable, Mapping

from memcell.cells.gru import gru
from memcell.cells.lru import lru
from memcell.cells.lstm import lstm
from memcell.cells.minrnn import mingru, minlstm
from memcell.cells.rglru import rglru
from memcell.cells.rnn import irnn, rnn
from memcell.cells.xlstm import mlstm, slstm
from memcell.cells.mamba import mamba
from memcell.cells.gated_deltanet import gated_deltanet
from memcell.types import Cell

__all__ = ["CELLS", "Factory", "factory_name", "resolve"]

Factory = Callable[..., Cell]  # factory(hidden_size, **options) -> Cell


def _heads_where_divisible(factory: Factory, heads: int = 4) -> Factory:
    """``factory`` with ``num_heads`` defaulting to ``heads`` where it divides ``hidden_size``, else 1:
    the xLSTM cells as the task models have always built them (``memcell.slstm`` itself defaults to 1)."""

    @functools.wraps(factory)
    def make(hidden_size, **options):
        if "num_heads" not in options and isinstance(hidden_size, int) and hidden_size > 0:
            options["num_heads"] = heads if hidden_size % heads == 0 else 1
        return factory(hidden_size, **options)

    return make


CELLS: Mapping[str, Factory] = MappingProxyType({
    "rnn": rnn,  # tanh Elman RNN
    "irnn": irnn,  # ReLU with identity recurrent init (Le et al. 2015)
    "lstm": lstm,
    "gru": gru,
    "mingru": mingru,  # Feng et al. 2024
    "minlstm": minlstm,
    "lru": lru,  # Orvieto et al. 2023
    "rglru": rglru,  # De et al. 2024 (Griffin)
    "slstm": _heads_where_divisible(slstm),  # Beck et al. 2024 (xLSTM)
    "mlstm": _heads_where_divisible(mlstm),
    "mamba": mamba,  # Gu and Dao 2023
    "gated_deltanet": gated_deltanet,  # Yang, Kautz and Hatamizadeh 2024
})


def resolve(cell: str | Factory) -> Factory:
    """The factory a cell name stands for.

    Args:
      cell: a name in ``CELLS``; a ``"module:attribute"`` string naming a user's factory (the module
        is imported); or a factory itself, ``factory(hidden_size, **options) -> memcell.Cell``.

    Returns:
      The factory. Raises ``ValueError`` (unknown name, malformed string, missing module or attribute)
      or ``TypeError`` (not callable) naming the argument.

    Example:
      >>> from memcell.cells import CELLS, resolve
      >>> resolve("lstm") is CELLS["lstm"]
      True
      >>> resolve("memcell.cells:gru") is CELLS["gru"]
      True
    """
    if callable(cell):
        return cell
    if not isinstance(cell, str):
        raise TypeError(f"cell must be a name in {list(CELLS)}, a 'module:factory' string or a factory, "
                        f"got {type(cell).__name__}")
    if cell in CELLS:
        return CELLS[cell]
    if ":" not in cell:
        raise ValueError(f"cell must be one of {list(CELLS)} or a 'module:factory' string, got {cell!r}")
    module_name, _, attr = cell.partition(":")
    if not module_name or not attr:
        raise ValueError(f"cell {cell!r} must read 'module:factory', with both parts")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cell {cell!r}: cannot import module {module_name!r} ({e})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"cell {cell!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"cell {cell!r} must name a factory (a callable), got {type(obj).__name__}")
    return obj


def factory_name(cell: str | Factory) -> str:
    """A name ``resolve`` maps back to the same factory: the table's name, else ``"module:qualname"``
    (what a run's config stores, so that a resumed run rebuilds the same cell)."""
    if isinstance(cell, str):
        resolve(cell)
        return cell
    for name, f in CELLS.items():
        if f is cell:
            return name
    module, qualname = getattr(cell, "__module__", None), getattr(cell, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ValueError(f"cell factory {cell!r} has no importable 'module:name' (a lambda or a local function); "
                         "define it at a module's top level")
    name = f"{module}:{qualname}"
    if resolve(name) is not cell:
        raise ValueError(f"cell factory {cell!r} is not importable as {name!r}")
    return name
