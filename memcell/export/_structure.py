"""What a model to export is made of: its cells, their directions, how layers join, the readout.

A ``Cell`` says what it is in its spec, and so does a layer made by ``memcell.layer``,
``memcell.bidirectional`` or ``memcell.stack`` (its ``Layer.spec``: its cell or cells, ``reverse``,
``merge``, ``residual``, the regularisers; bound to its ``apply`` by identity). Any other layer is
opaque: it is exported whole through the Loop form. A ``memcell.tasks.Model`` adds its declared readout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from memcell import scan, tasks
from memcell.cells import rnn
from memcell.types import BidirectionalSpec, Cell, CellLayerSpec, Layer, StackSpec

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
    """The code object of ``memcell.tasks.sequence_model``'s readout head (a ``tasks.Model`` declares
    its readout's name, not whether its head is memcell's own dense one)."""
    if not _REFERENCE:
        _REFERENCE["head"] = tasks.sequence_model(rnn(1), 1, "last").head.__code__
    return _REFERENCE


def _closure(fn) -> dict[str, Any]:
    cells = fn.__closure__ or ()
    return {name: cell.cell_contents for name, cell in zip(fn.__code__.co_freevars, cells)}


_MERGE_NAMES = ("concat", "sum", "mean", "mul")


def _read_layer(lyr: Layer):
    spec = getattr(lyr, "spec", None)
    if spec is None or not spec.describes(lyr):
        return Opaque("the layer was not made by memcell.layer, memcell.bidirectional or memcell.stack (or its "
                      "apply was replaced), so memcell cannot see its cells")
    if isinstance(spec, CellLayerSpec):
        return CellNode(spec.cell, spec.reverse, spec.learn_initial_carry, spec.zoneout)
    if isinstance(spec, BidirectionalSpec):
        merge = spec.merge if isinstance(spec.merge, str) and spec.merge in _MERGE_NAMES else None
        return PairNode(spec.forward, spec.backward, merge, spec.merge_fn)
    if isinstance(spec, StackSpec):
        return StackNode(tuple(_read_layer(x) for x in spec.layers), spec.residual)
    return Opaque(f"memcell cannot see the cells of a layer with a {type(spec).__name__}")


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
