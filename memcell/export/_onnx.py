"""``to_onnx``: the native form where every layer maps to an ONNX operator, else the Loop form (jax2onnx)."""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from memcell.export import _native, _program, _rewrite, _structure

__all__ = ["check_params", "to_onnx", "why_not_native"]

DEFAULT_OPSET = 21  # ONNX 1.16's; what ONNX Runtime >= 1.18 runs (and jax2onnx emits) everywhere
_RANDOM = ("random_bits", "random_seed", "random_wrap", "threefry2x32", "rng_bit_generator", "rng_uniform")
_WIDTHS = {"float64": "float64", "bfloat16": "bfloat16", "float16": "float16"}


def why_not_native(model, *, streaming: bool = False) -> str | None:
    """Why ``model`` is not written with ONNX's own LSTM/GRU/RNN operators, or None where it is.

    Only the declared parts decide: each cell's spec (``memcell.CellSpec``), the layers
    ``memcell.layer``/``bidirectional``/``stack`` were made with, and a ``memcell.tasks.Model``'s
    readout. Where this gives a sentence, ``to_onnx`` writes the Loop form instead.

    Args:
      model: a ``Cell``, a ``Layer`` or a ``memcell.tasks.Model``.
      streaming: for the one-step model (a bidirectional layer cannot stream).

    Returns:
      None, or a sentence naming the part and the reason.

    Example:
      >>> import memcell
      >>> from memcell import export
      >>> export.why_not_native(memcell.stack([memcell.lstm(8), memcell.gru(8)])) is None
      True
      >>> export.why_not_native(memcell.gru(8, reset_after=False))
      "the model: ONNX's GRU operator runs reset_after=True only (linear_before_reset=1), this GRU sets it False"
    """
    return _native.why_not(_structure.read(model), streaming=_program.check_flag("streaming", streaming))


def check_params(params, target: str = "ONNX") -> None:
    """Refuses params with floating leaves other than float32 (the exported model's type), naming one."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        dtype = np.dtype(leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf))  # as stored, not as JAX reads it
        if jnp.issubdtype(dtype, jnp.floating) and dtype != np.float32:
            raise ValueError(
                f"params{jax.tree_util.keystr(path)} is {dtype.name}; the {target} model computes in float32 "
                f"(ONNX Runtime's recurrent and Loop kernels run float32): cast the params first, "
                f"jax.tree.map(lambda a: a.astype(jnp.float32), params)")


def _avals(jaxpr):
    j = getattr(jaxpr, "jaxpr", jaxpr)
    for v in list(j.invars) + list(j.constvars):
        yield None, getattr(v, "aval", None)
    for eqn in j.eqns:
        for v in eqn.outvars:
            yield eqn, v.aval
        for inner in _rewrite.inner_jaxprs(eqn):
            yield from _avals(inner)


def _check_program(closed) -> None:
    """Refuses what ONNX Runtime cannot run: random draws, float64/bfloat16/float16 arithmetic."""
    for eqn, aval in _avals(closed):
        if eqn is not None and eqn.primitive.name in _RANDOM:
            raise ValueError(
                f"the model draws random numbers ({eqn.primitive.name}): a layer in training mode (dropout with a "
                "key) has no deterministic export; export the layer in evaluation mode (apply without a key)")
        dtype = getattr(aval, "dtype", None)
        if dtype is not None and jnp.dtype(dtype).name in _WIDTHS:
            where = f" in {eqn.primitive.name}" if eqn is not None else ""
            raise ValueError(
                f"the model computes in {jnp.dtype(dtype).name}{where}, which the ONNX model cannot hold: it runs "
                "float32 (ONNX Runtime's CPU kernels have no bfloat16 matmuls; build the cells with dtype=None "
                "and float32 params to export them)")


def _jax2onnx():
    """jax2onnx's ``to_onnx``, with only its plugins for JAX's own primitives loaded.

    On its first conversion jax2onnx imports every plugin it ships, and its Equinox examples build
    and compile models as they are imported: 25-30 s on this project's 2-core machine, against 5 s
    for the ``jax`` plugins alone (measured with jax2onnx 0.17.1). memcell lowers plain JAX programs,
    so the ``jax`` plugins are all it needs; a jax2onnx without this layout loads all, as it would.
    """
    from jax2onnx import to_onnx as j2o

    try:
        from jax2onnx.plugins import plugin_system as ps

        if not ps._already_imported_plugins:
            ps._import_tree(pathlib.Path(ps.__file__).parent / "jax", "jax2onnx.plugins.jax")
            ps._already_imported_plugins = True
    except (ImportError, AttributeError):  # another jax2onnx: its own discovery runs
        pass
    return j2o


def _loop(prog: _program.Program, opset: int):
    """The Loop form: ``prog.fn`` traced once with symbolic shapes, complex values made real, then jax2onnx."""
    j2o = _jax2onnx()

    closed = _program.symbolic(lambda: jax.make_jaxpr(prog.fn)(*prog.specs))
    _check_program(closed)
    specs, in_names = [], []
    for spec, name in zip(prog.specs, prog.input_names):
        if jnp.issubdtype(spec.dtype, jnp.complexfloating):
            real = jax.ShapeDtypeStruct(spec.shape, jnp.finfo(spec.dtype).dtype)
            specs += [real, real]
            in_names += [name + "_re", name + "_im"]
        else:
            specs.append(spec)
            in_names.append(name)
    out_names = []
    for aval, name in zip(closed.out_avals, prog.output_names):
        out_names += [name + "_re", name + "_im"] if jnp.issubdtype(aval.dtype, jnp.complexfloating) else [name]
    # Traced again from the jaxpr: its primitives are bound as they are (jax2onnx's own jnp patches, such
    # as its arange for symbolic sizes, never see memcell's code), complex values and reverse scans rewritten.
    fn = _rewrite.realify(closed)
    try:
        return j2o(fn, specs, model_name="memcell", opset=opset, input_names=in_names, output_names=out_names)
    except NotImplementedError as e:
        raise ValueError(f"jax2onnx cannot lower the model: {e}") from e
    except Exception as e:  # noqa: BLE001 - jax2onnx raises many types for a primitive it lacks
        raise ValueError(f"jax2onnx cannot lower the model ({type(e).__name__}: {e})") from e


def to_onnx(
    model,
    params,
    *,
    input_size: int,
    with_lengths: bool = False,
    streaming: bool = False,
    opset: int | None = None,
    path: str | os.PathLike | None = None,
    check: bool = True,
    native: bool | None = None,
):
    """Writes ``model`` with ``params`` as an ONNX model, run in evaluation mode (no dropout).

    The sequence model takes ``xs [B, T, input_size]`` float32 (B and T symbolic) and, with
    ``with_lengths``, ``lengths [B]`` int32, and returns ``ys`` then the final carry's leaves in
    ``jax.tree.leaves`` order (named ``ys``, ``carry_0``, ...). ``streaming=True`` writes one step:
    inputs ``x [B, input_size]`` then the carry's leaves, outputs ``y`` then the new carry's leaves
    (``new_carry_0``, ...). A complex leaf (the LRU's) is two float32 tensors, its real part then its
    imaginary part (``carry_0_re``, ``carry_0_im``).

    The default LSTM, the GRU (``reset_after=True``) and the Elman RNN, alone, as
    ``memcell.layer``s (any ``reverse``), as ``memcell.bidirectional`` pairs (any named merge) and in
    ``memcell.stack``s of them, become ONNX's own LSTM/GRU/RNN operators, with ``lengths`` as their
    ``sequence_lens``. Everything else is the Loop form: the JAX program lowered by jax2onnx.
    ``why_not_native`` says which, and why.

    Args:
      model: a ``Cell``, a ``Layer`` or a ``memcell.tasks.Model`` (its readout included).
      params: its params (float32).
      input_size: features of the inputs.
      with_lengths: take ``lengths`` as a second input.
      streaming: write the one-step model instead.
      opset: the ONNX opset (default 21).
      path: also write the model to this file.
      check: run the written model once in ONNX Runtime on a small input and compare it with
        memcell, raising a ``RuntimeError`` if they differ by more than 1e-4 (relative).
      native: None (default) chooses as ``why_not_native`` says; True requires the native form
        (a ``ValueError`` says why not); False writes the Loop form even where operators exist.

    Returns:
      The ``onnx.ModelProto``.

    Raises:
      ValueError: what cannot be exported, naming it: non-float32 params or arithmetic, random draws
        (a layer in training mode), a primitive jax2onnx cannot lower, bad sizes or flags.
      TypeError: a model that is not a Cell, Layer or tasks.Model.

    Example:
      >>> import jax, numpy as np, memcell, onnxruntime as ort
      >>> from memcell import export
      >>> model = memcell.stack([memcell.bidirectional(memcell.lstm(8), memcell.lstm(8)), memcell.gru(8)])
      >>> params = model.init(jax.random.key(0), 3)
      >>> proto = export.to_onnx(model, params, input_size=3, with_lengths=True)
      >>> sorted({n.op_type for n in proto.graph.node} & {"LSTM", "GRU", "Loop"})
      ['GRU', 'LSTM']
      >>> session = ort.InferenceSession(proto.SerializeToString())
      >>> ys, *carry = session.run(None, {"xs": np.ones((2, 7, 3), np.float32), "lengths": np.array([7, 4], np.int32)})
      >>> ys.shape, len(carry)   # carry: forward (h, c), backward (h, c), then the GRU's h
      ((2, 7, 8), 5)
    """
    m = _structure.read(model)
    check_params(params)
    prog = _program.program(m, params, input_size=input_size, with_lengths=with_lengths, streaming=streaming)
    opset = DEFAULT_OPSET if opset is None else _check_opset(opset)
    reason = _native.why_not(m, streaming=streaming)
    if native is not None and _program.check_flag("native", native) and reason is not None:
        raise ValueError(f"native=True: the model has no native ONNX form: {reason}")
    if reason is None and native is not False:
        proto = _native.build(m, params, prog, streaming=streaming, opset=opset)
    else:
        proto = _loop(prog, opset)
    if _program.check_flag("check", check):
        compare(proto, prog, input_size)
    if path is not None:
        import onnx

        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
    return proto


def _check_opset(opset) -> int:
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not 14 <= opset <= 23:
        raise ValueError(f"opset must be an int in [14, 23] (ONNX's LSTM, GRU and RNN as memcell writes them), got {opset!r}")
    return int(opset)


def run_onnx(proto_or_session, inputs: dict):
    """Runs an ONNX model in ONNX Runtime on CPU; returns the list of outputs."""
    import onnxruntime as ort

    session = proto_or_session
    if not isinstance(session, ort.InferenceSession):
        options = ort.SessionOptions()
        options.log_severity_level = 3  # no warnings about initializers the optimiser dropped
        session = ort.InferenceSession(proto_or_session.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def probe_inputs(prog: _program.Program, input_size: int, B: int = 2, T: int = 5, seed: int = 0) -> list:
    """Inputs for ``prog``: normal ``xs``/``x``, lengths ``T`` and 2, random carries."""
    rng = np.random.default_rng(seed)
    out = []
    for name, spec in zip(prog.input_names, prog.specs):
        if name == "lengths":
            out.append(np.array([T] + [2] * (B - 1), np.int32))
        elif name in ("xs", "x"):
            out.append(rng.normal(size=(B, T, input_size) if name == "xs" else (B, input_size)).astype(np.float32))
        else:
            shape = (B,) + tuple(spec.shape[1:])
            z = rng.normal(size=shape) * 0.5
            if jnp.issubdtype(spec.dtype, jnp.complexfloating):
                z = z + 1j * rng.normal(size=shape) * 0.5
            out.append(z.astype(spec.dtype))
    return out


def feeds(proto_inputs, values) -> dict:
    """ONNX Runtime's input dict: complex values split into their real and imaginary parts."""
    flat = []
    for v in values:
        flat += [np.real(v).copy(), np.imag(v).copy()] if np.iscomplexobj(v) else [v]
    return {i.name: v for i, v in zip(proto_inputs, flat)}


def join_complex(prog: _program.Program, outputs, values) -> list:
    """ONNX outputs with each complex output's two parts joined again, in ``prog``'s order (``values``: its inputs)."""
    out, k = [], 0
    for aval in jax.eval_shape(prog.fn, *values):
        if jnp.issubdtype(aval.dtype, jnp.complexfloating):
            out.append(outputs[k] + 1j * outputs[k + 1])
            k += 2
        else:
            out.append(outputs[k])
            k += 1
    return out


def compare(proto, prog: _program.Program, input_size: int) -> float:
    """Runs ``proto`` and memcell on probe inputs; the largest relative difference (raises above 1e-4)."""
    values = probe_inputs(prog, input_size)
    got = join_complex(prog, run_onnx(proto, feeds(proto.graph.input, values)), values)
    want = [np.asarray(a) for a in jax.jit(prog.fn)(*values)]
    worst = 0.0
    for name, a, b in zip(prog.output_names, got, want):
        if np.shape(a) != np.shape(b):
            raise RuntimeError(f"the ONNX model's output {name} has shape {np.shape(a)}, memcell's {np.shape(b)}")
        err = float(np.max(np.abs(a - b), initial=0.0) / (1.0 + np.max(np.abs(b), initial=0.0)))
        if not err <= 1e-4:
            raise RuntimeError(f"the ONNX model's output {name} differs from memcell's by {err:.3g} (relative) on a "
                               "probe input; please report this")
        worst = max(worst, err)
    return worst
