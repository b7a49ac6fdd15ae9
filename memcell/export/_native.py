"""The native form: ONNX's own LSTM, GRU and RNN operators, one a layer (both directions in one).

Which cells qualify is read from each cell's declared spec alone (``memcell.CellSpec``), by the rule
the fused path keeps: the default LSTM, the GRU with ``reset_after=True`` (ONNX's
``linear_before_reset=1``) and the Elman RNN (tanh or ReLU), computing in float32. The weights are
written in PyTorch's layout by ``memcell.convert`` and only reordered here into ONNX's gate order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from memcell import _dispatch, convert
from memcell.cells import GRUSpec, LSTMSpec, RNNSpec
from memcell.export._structure import CellNode, Model, Opaque, PairNode, StackNode
from memcell.regularize import LearntCarry

__all__ = ["build", "why_not"]

# ONNX's gate blocks, as indices into PyTorch's: LSTM i, o, f, c from torch's i, f, g, o; GRU z, r, h
# from torch's r, z, n (ONNX's LSTM, GRU operator specs).
_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn_tanh": (0,), "rnn_relu": (0,)}
_OP = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}
_STATE = {"h": 1, "c": 2}  # carry field -> the operator's output index (Y_h, Y_c)


def mode_of(cell) -> tuple[str | None, str | None]:
    """``(torch mode, None)`` of a cell ONNX runs natively, or ``(None, why not)``."""
    spec, reason = _dispatch.declared_spec(
        cell, "the cell declares no spec (only memcell.lstm, memcell.gru and memcell.rnn map to ONNX operators)")
    if reason is not None:
        return None, reason
    if spec.dtype is not None and jnp.dtype(spec.dtype) != jnp.float32:
        return None, f"the cell computes its matmuls in {jnp.dtype(spec.dtype).name} (dtype=), ONNX's operators in float32"
    if isinstance(spec, LSTMSpec):
        off = _dispatch.options_set(spec, LSTMSpec)
        if off:
            return None, f"ONNX's LSTM operator is the default LSTM, this one sets {', '.join(off)}"
        return "lstm", None
    if isinstance(spec, GRUSpec):
        if not spec.reset_after:
            return None, "ONNX's GRU operator runs reset_after=True only (linear_before_reset=1), this GRU sets it False"
        return "gru", None
    if isinstance(spec, RNNSpec):
        return f"rnn_{spec.activation}", None
    return None, f"ONNX has no operator for a cell with a {type(spec).__name__}"


def _why_not_node(node, where: str) -> str | None:
    if isinstance(node, Opaque):
        return f"{where}: {node.reason}"
    if isinstance(node, CellNode):
        if node.changes_step:
            return f"{where}: {', '.join(node.changes_step)} changes the step at evaluation"
        if node.learn_initial_carry:
            return f"{where}: learn_initial_carry (a learnt initial carry) is not written as the operators' initial state"
        _, reason = mode_of(node.cell)
        return None if reason is None else f"{where}: {reason}"
    if isinstance(node, PairNode):
        if node.merge is None:
            return f"{where}: a bidirectional layer with the user's own merge function"
        for name in ("forward", "backward"):
            _, reason = mode_of(getattr(node, name))
            if reason is not None:
                return f"{where}.{name}: {reason}"
        return None
    for i, child in enumerate(node.layers):
        reason = _why_not_node(child, f"{where}[{i}]")
        if reason is not None:
            return reason
    return None


def why_not(model: Model, *, streaming: bool = False) -> str | None:
    """Why ``model`` cannot be written with ONNX's native operators, or None."""
    if model.head_reason is not None:
        return model.head_reason
    reason = _why_not_node(model.layers, "the model" if not isinstance(model.layers, StackNode) else "layer")
    if reason is None and streaming and _has_pair(model.layers):
        return "a bidirectional layer cannot stream"
    return reason


def _has_pair(node) -> bool:
    return isinstance(node, PairNode) or (isinstance(node, StackNode) and any(_has_pair(x) for x in node.layers))


class _Graph:
    """Nodes and initializers of the graph being written, with fresh names."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base: str, value) -> str:
        name = self.name(base)
        self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs, n_out: int = 1, **attrs) -> list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, name=self.name("n" + op_type), **attrs))
        return outs

    def one(self, op_type: str, inputs, **attrs) -> str:
        return self.op(op_type, inputs, 1, **attrs)[0]


def _weights(mode: str, directions: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX's ``W [dirs, G*h, d]``, ``R [dirs, G*h, h]`` and ``B [dirs, 2*G*h]`` for one cell a direction."""
    Ws, Rs, Bs = [], [], []
    for p in directions:
        H = np.shape(p.w_h)[0]
        sd = convert.to_torch(convert.torch_layer(mode, H), (p,))  # torch's layout; known spec: no probe
        blocks = lambda a: np.concatenate([np.split(np.asarray(a, np.float32), len(_ORDER[mode]))[k]  # noqa: E731
                                           for k in _ORDER[mode]])
        Ws.append(blocks(sd["weight_ih_l0"]))
        Rs.append(blocks(sd["weight_hh_l0"]))
        Bs.append(np.concatenate([blocks(sd["bias_ih_l0"]), blocks(sd["bias_hh_l0"])]))
    return np.stack(Ws), np.stack(Rs), np.stack(Bs)


def _carry_fields(cell, params) -> tuple[str, ...]:
    return type(jax.eval_shape(cell.initial_carry, params))._fields


def _run_cells(g: _Graph, cells, params, x: str, lengths: str | None, state_in, direction: str):
    """One ONNX operator over ``x [T, B, d]``: ``(Y [T, dirs, B, h], {field: [dirs, B, h]})``."""
    mode = mode_of(cells[0])[0]
    W, R, B = _weights(mode, params)
    H = int(W.shape[1] // len(_ORDER[mode]))
    fields = _carry_fields(cells[0], params[0])
    inputs = [x, g.const("W", W), g.const("R", R), g.const("B", B), lengths or ""]
    if state_in is not None:  # streaming: the carry's leaves, [dirs, B, h]
        inputs += [state_in[f] for f in ("h", "c") if f in fields]
    attrs = dict(hidden_size=H, direction=direction)
    if mode == "gru":
        attrs["linear_before_reset"] = 1
    if mode.startswith("rnn_"):
        attrs["activations"] = ["Tanh" if mode == "rnn_tanh" else "Relu"] * (2 if direction == "bidirectional" else 1)
    outs = g.op(_OP[mode], inputs, 3 if mode == "lstm" else 2, **attrs)
    return outs[0], {f: outs[_STATE[f]] for f in fields}


def _squeeze(g: _Graph, x: str, axis: int) -> str:
    return g.one("Squeeze", [x, g.const("axes", np.array([axis], np.int64))])


def _pick(g: _Graph, x: str, index: int, axis: int) -> str:
    """``x`` at ``index`` along ``axis``, that axis dropped."""
    return g.one("Gather", [x, g.const("index", np.array(index, np.int64))], axis=axis)


def _unsqueeze(g: _Graph, x: str, axis: int) -> str:
    return g.one("Unsqueeze", [x, g.const("axes", np.array([axis], np.int64))])


def _layer(g: _Graph, node, params, x: str, lengths, leaves_in):
    """``node`` over ``x [T, B, d]``: ``(ys [T, B, h'], carry leaf names in jax.tree.leaves order)``."""
    if isinstance(node, StackNode):
        leaves = []
        for i, (child, p) in enumerate(zip(node.layers, params)):
            y, child_leaves = _layer(g, child, p, x, lengths, leaves_in)
            leaves += child_leaves
            x = g.one("Add", [x, y]) if node.residual and i > 0 else y
        return x, leaves
    if isinstance(node, CellNode):
        fields = _carry_fields(node.cell, params)
        state = None if leaves_in is None else {f: _unsqueeze(g, leaves_in.pop(0), 0) for f in fields}
        y, out = _run_cells(g, [node.cell], [params], x, lengths, state, "reverse" if node.reverse else "forward")
        return _squeeze(g, y, 1), [_squeeze(g, out[f], 0) for f in fields]
    # PairNode: both directions in one operator where they are alike, else one operator each.
    modes = [mode_of(c)[0] for c in (node.forward, node.backward)]
    sizes = [np.shape(p.w_h)[0] for p in params]
    if modes[0] == modes[1] and sizes[0] == sizes[1]:
        y, out = _run_cells(g, [node.forward, node.backward], list(params), x, lengths, None, "bidirectional")
        fields = _carry_fields(node.forward, params.forward)
        leaves = [_pick(g, out[f], d, 0) for d in range(2) for f in fields]
        yf, yb = _pick(g, y, 0, 1), _pick(g, y, 1, 1)
    else:
        (yf, lf), (yb, lb) = (_layer(g, CellNode(c, rev), p, x, lengths, None)
                              for c, rev, p in ((node.forward, False, params.forward), (node.backward, True, params.backward)))
        leaves = lf + lb
    return _merge(g, node.merge, yf, yb), leaves


def _merge(g: _Graph, merge: str, yf: str, yb: str) -> str:
    if merge == "concat":
        return g.one("Concat", [yf, yb], axis=-1)
    if merge == "sum":
        return g.one("Add", [yf, yb])
    if merge == "mul":
        return g.one("Mul", [yf, yb])
    return g.one("Mul", [g.one("Add", [yf, yb]), g.const("half", np.array(0.5, np.float32))])  # mean


def _readout(g: _Graph, model: Model, params, ys: str, lengths: str | None, streaming: bool) -> str:
    """memcell.tasks' dense readout on ``ys [B, T, h]`` (``[B, h]`` streaming)."""
    if model.readout == "last" and not streaming:
        if lengths is None:  # the last step
            last = g.one("Gather", [ys, g.const("minus1", np.array(-1, np.int64))], axis=1)
        else:  # each sequence's last real step (step 0 for a length of 0, as memcell reads it)
            index = g.one("Max", [g.one("Sub", [lengths, g.const("one", np.array(1, np.int32))]),
                                  g.const("zero", np.array(0, np.int32))])
            index = g.one("Cast", [g.one("Unsqueeze", [index, g.const("axes", np.array([1, 2], np.int64))])],
                          to=7)  # int64, [B, 1, 1]
            shape = g.one("Shape", [ys])
            h = g.one("Slice", [shape, g.const("s", np.array([2], np.int64)), g.const("e", np.array([3], np.int64))])
            b = g.one("Slice", [shape, g.const("s", np.array([0], np.int64)), g.const("e", np.array([1], np.int64))])
            index = g.one("Expand", [index, g.one("Concat", [b, g.const("one", np.array([1], np.int64)), h], axis=0)])
            last = _squeeze(g, g.one("GatherElements", [ys, index], axis=1), 1)
        ys = last
    w = g.const("readout_w", np.asarray(params.w, np.float32))
    return g.one("Add", [g.one("MatMul", [ys, w]), g.const("readout_b", np.asarray(params.b, np.float32))])


def build(model: Model, params, prog, *, streaming: bool, opset: int):
    """The native ONNX model of ``model`` (``why_not(model)`` must be None), with ``prog``'s inputs and outputs."""
    import onnx
    from onnx import TensorProto

    g = _Graph()
    rnn_params = params.rnn if model.head is not None else params
    if isinstance(rnn_params, LearntCarry):  # refused by why_not; a guard
        raise ValueError("learn_initial_carry has no native form")
    dims = lambda spec: [d if isinstance(d, int) else str(d) for d in spec.shape]  # noqa: E731  "B", "T" symbolic
    inputs = [onnx.helper.make_tensor_value_info(
        n, TensorProto.INT32 if jnp.issubdtype(s.dtype, jnp.integer) else TensorProto.FLOAT, dims(s))
        for n, s in zip(prog.input_names, prog.specs)]
    lengths = "lengths" if "lengths" in prog.input_names else None
    if streaming:
        leaves_in = list(prog.input_names[1:])
        x = _unsqueeze(g, prog.input_names[0], 0)  # [1, B, d]
    else:
        leaves_in = None
        x = g.one("Transpose", [prog.input_names[0]], perm=[1, 0, 2])  # time-major [T, B, d]: ONNX Runtime's layout
    ys, leaves = _layer(g, model.layers, rnn_params, x, lengths, leaves_in)
    ys = _squeeze(g, ys, 0) if streaming else g.one("Transpose", [ys], perm=[1, 0, 2])
    if model.head is not None:
        ys = _readout(g, model, params, ys, lengths, streaming)
    for value, out in zip([ys] + leaves, prog.output_names):
        g.nodes.append(onnx.helper.make_node("Identity", [value], [out]))
    outputs = [onnx.helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in prog.output_names]
    graph = onnx.helper.make_graph(g.nodes, "memcell", inputs, outputs, g.inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                  producer_name="memcell.export")
