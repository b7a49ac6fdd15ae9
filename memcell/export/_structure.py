"""What a model to export is made of: its cells, their directions, how layers join, the readout.

A ``Cell`` says what it is in its spec. A ``Layer`` is a pair of functions that does not say what it
holds, so the layers ``memcell.layer``, ``memcell.bidirectional`` and ``memcell.stack`` make are
recognised by their ``apply``'s code object (the very function those factories return, compared by
identity, never by name) and read through the values that factory was given (its cell or cells,
``reverse``, ``merge``, ``residual``, the regularisers). Any other layer is opaque: it is exported
whole through the Loop form. A ``memcell.tasks.Model`` adds its declared readout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from memcell import scan, tasks
from memcell.cells import rnn
from memcell.types import Cell, Layer

__all__ = ["CellNode", "Model", "Opaque", "PairNode", "StackNode", "read"]


@dataclasses.dataclass(frozen=True)
class CellNode:
    """A cell run over the sequence in one direction (a bare cell, or ``memcell.layer(cell, ...)``)."""

    cell: Cell
    reverse: bool = False
    learn_initial_carry: bool = False
    zoneout: Any = 0.0  # changes the step at evaluation (the expectation of the kept carry)

    @property
    def changes_step(self) -> tuple[str, ...]:
        return ("zoneout",) if self.zoneout else ()


@dataclasses.dataclass(frozen=True)
class PairNode:
    """``memcell.bidirectional(forward, backward, merge=...)``; ``merge`` None: the user's function."""

    forward: Cell
    backward: Cell
    merge: str | None
    merge_fn: Callable = None


@dataclasses.dataclass(frozen=True)
class StackNode:
    """``memcell.stack(layers, residual=...)`` (its dropout is off at evaluation)."""

    layers: tuple
    residual: bool


@dataclasses.dataclass(frozen=True)
class Opaque:
    """A layer whose parts memcell cannot see: exported whole, in the Loop form."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Model:
    """What is exported: the recurrent part, and the readout of a ``memcell.tasks.Model`` (None: none)."""

    layers: Any  # CellNode | PairNode | StackNode | Opaque
    layer: Layer  # the recurrent part as a Layer (the Loop form and the check run it)
    readout: str | None = None  # "last" or "all" for a tasks.Model with memcell's dense readout
    head: Callable | None = None  # tasks.Model.head, for the Loop form
    head_reason: str | None = None  # why the readout is not memcell's own dense one (then Loop only)


_REFERENCE: dict[str, Any] = {}


def _references() -> dict[str, Any]:
    """The code objects of the factories' ``apply`` functions, and their merge functions by name."""
    if not _REFERENCE:
        c = rnn(1)
        _REFERENCE["layer"] = scan.layer(c).apply.__code__
        _REFERENCE["bidirectional"] = scan.bidirectional(c, c).apply.__code__
        _REFERENCE["stack"] = scan.stack([c]).apply.__code__
        _REFERENCE["merges"] = {_closure(scan.bidirectional(c, c, merge=m).apply)["merge_fn"]: m
                                for m in ("concat", "sum", "mean", "mul")}
        _REFERENCE["head"] = tasks.sequence_model(c, 1, "last").head.__code__
    return _REFERENCE


def _closure(fn) -> dict[str, Any]:
    cells = fn.__closure__ or ()
    return {name: cell.cell_contents for name, cell in zip(fn.__code__.co_freevars, cells)}


def _read_layer(lyr: Layer):
    ref = _references()
    code = getattr(lyr.apply, "__code__", None)
    try:
        if code is ref["layer"]:
            v = _closure(lyr.apply)
            return CellNode(v["cell"], bool(v["reverse"]), bool(v["learn_initial_carry"]), v["zoneout"])
        if code is ref["bidirectional"]:
            v = _closure(lyr.apply)
            return PairNode(v["forward"], v["backward"], ref["merges"].get(v["merge_fn"]), v["merge_fn"])
        if code is ref["stack"]:
            v = _closure(lyr.apply)
            return StackNode(tuple(_read_layer(x) for x in v["layers"]), bool(v["residual"]))
    except KeyError as e:  # memcell.scan's factories were changed: their parts cannot be read
        return Opaque(f"the layer's parts cannot be read (memcell.scan's factories hold no {e.args[0]!r})")
    return Opaque("the layer was not made by memcell.layer, memcell.bidirectional or memcell.stack, so memcell "
                  "cannot see its cells")


def reference_layer(node, layer: Layer) -> Layer:
    """The layer ``node`` describes, in evaluation mode on the reference path (``layer`` itself where opaque).

    Fast paths (fused, cuDNN) need a fixed batch size; the exported programs have a symbolic one, and
    the reference path computes the same function (memcell tests each path against it).
    """
    if isinstance(node, CellNode):
        return scan.layer(node.cell, reverse=node.reverse, zoneout=node.zoneout,
                          learn_initial_carry=node.learn_initial_carry)
    if isinstance(node, PairNode):
        return scan.bidirectional(node.forward, node.backward, merge=node.merge_fn)
    if isinstance(node, StackNode):
        return scan.stack([reference_layer(x, None) for x in node.layers], residual=node.residual)
    if layer is None:
        raise ValueError(f"a layer of the stack cannot be exported: {node.reason}")
    return layer


def _reference_or_opaque(node, layer: Layer) -> Layer:
    """The reference layer, or ``layer`` itself where a part is opaque (it then runs as it is)."""
    try:
        return reference_layer(node, layer)
    except ValueError:  # an opaque layer inside a stack: the whole stack runs as it is
        return layer


def read(model) -> Model:
    """The parts of ``model``: a ``Cell``, a ``Layer`` or a ``memcell.tasks.Model``.

    Raises:
      TypeError: for anything else.
    """
    if isinstance(model, Cell):
        return Model(CellNode(model), scan.layer(model))
    if isinstance(model, tasks.Model):
        ref = _references()
        head = model.head
        code = getattr(head, "__code__", None)
        readout, reason = None, "the model's head is not memcell.tasks.sequence_model's dense readout"
        if code is ref["head"]:
            readout = _closure(head)["readout"]
            reason = None if readout in ("last", "all") else reason
        node = _read_layer(model.layers)
        return Model(node, _reference_or_opaque(node, model.layers), readout, head, reason)
    if isinstance(model, Layer):
        node = _read_layer(model)
        return Model(node, _reference_or_opaque(node, model))
    raise TypeError(f"model must be a memcell.Cell, a memcell.Layer or a memcell.tasks.Model, got {type(model).__name__}")
