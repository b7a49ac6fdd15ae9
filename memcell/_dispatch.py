"""What the fast paths (``memcell.fused``, ``memcell.parallel``, ``memcell.cudnn``, ``memcell.pallas``)
share when they decide whether they run a cell: the spec the cell declares for its own step, and the
options it sets.

Only the declared spec decides (see ``memcell.CellSpec``), never attributes of the cell's functions,
and every path reads it by the same rule, so no path runs a cell another one would rightly refuse.
"""

import dataclasses

from memcell.types import Cell, CellSpec


def declared_spec(cell, undeclared: str) -> tuple[CellSpec | None, str | None]:
    """The spec ``cell`` declares for its own step, or why a fast path cannot read one.

    Args:
      cell: anything given as a cell; only a ``Cell``'s ``spec`` counts.
      undeclared: the path's sentence for a cell without a spec (saying which cells have one).

    Returns:
      ``(spec, None)``, or ``(None, reason)``: ``undeclared``, or, for a spec made for another step
      function (a wrapped, partial or replaced step, which must run the reference), a sentence saying so.
    """
    spec = getattr(cell, "spec", None) if isinstance(cell, Cell) else None
    if spec is None:
        return None, undeclared
    if not spec.describes(cell):
        return None, "the cell's spec was made for another step function (its step was wrapped or replaced)"
    return spec, None


def options_set(spec: CellSpec, kind: type) -> list[str]:
    """The options of ``kind`` (a ``CellSpec`` class) that ``spec`` sets away from the defaults, sorted.

    The defaults are ``kind(step=None)``'s, the factory's own; the computation ``dtype`` and the
    functions the spec holds (``step``, ``parallel``, ``masked_step``: fields not compared) are not
    options. A kernel written for the default cell of a kind runs ``spec`` where this is empty.
    """
    defaults = kind(step=None)
    return sorted(f.name for f in dataclasses.fields(kind)
                  if f.compare and f.name != "dtype" and getattr(spec, f.name) != getattr(defaults, f.name))
