"""What ``memcell.linen`` and ``memcell.nnx`` share: Flax's carries and dtypes, the sequence options (no flax)."""

from types import MappingProxyType
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from memcell import convert
from memcell._checks import check_bool, check_positive_int
from memcell.cells import resolve
from memcell.scan import bidirectional, layer, stack
from memcell.types import Cell, Layer

# Flax's carry for a memcell carry with these fields, in Flax's order: its LSTM cells carry (c, h). A carry
# of one field is that array alone (as Flax's GRUCell and SimpleCell carry theirs); any other keeps memcell's.
FLAX_CARRIES = MappingProxyType({frozenset({"h", "c"}): ("c", "h")})

# The sequence modules' options and defaults: the one list linen.Recurrent's fields and nnx.Recurrent's keywords are.
SEQUENCE_OPTIONS = MappingProxyType(dict(
    num_layers=1, bidirectional=False, merge="concat", residual=False, dropout=0.0, unroll=1, remat=False,
    backend="reference", input_dropout=0.0, recurrent_dropout=0.0, zoneout=0.0, learn_initial_carry=False))
# The memcell params each factory initialiser draws (Flax's kernel, recurrent kernel, bias: where nnx's metadata go).
INITS = MappingProxyType({"kernel_init": ("w_x",), "recurrent_init": ("w_h", "w_hr"), "bias_init": ("b", "b_x", "b_h")})
_PER_LAYER = dict(input_dropout="dropout", **{k: k for k in ("recurrent_dropout", "zoneout", "learn_initial_carry")})
RANDOM = ("dropout", "input_dropout", "recurrent_dropout", "zoneout")  # the options that draw masks when training
FLAX_NAMES = MappingProxyType({"recurrent_kernel_init": "recurrent_init"})  # Flax's argument -> the factories' name


def make_cell(cell, hidden_size=None, options=None, boxes=None) -> Cell:
    """``cell`` if built, else ``factory(hidden_size, **unboxed(options, boxes))`` (``memcell.cells.resolve``)."""
    if isinstance(cell, Cell):
        if hidden_size is not None or options:
            raise ValueError("a built memcell.Cell takes no hidden size or options: give its name or factory instead")
        return cell
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of the factory's keyword arguments, got {type(options).__name__}")
    if hidden_size is None:
        raise ValueError(f"the hidden size (features) must be given to build cell {cell!r}")
    made = resolve(cell)(hidden_size, **unboxed(options, {} if boxes is None else boxes))
    if not isinstance(made, Cell):
        raise TypeError(f"cell {cell!r} must build a memcell.Cell, its factory returned {type(made).__name__}")
    return made


def unboxed(options, boxes: dict) -> dict:
    """``options`` whose initialisers return arrays; ``boxes[param]`` keeps what its initialiser returned (a box)."""
    def unbox(name, init):
        def draw(key, shape, dtype):
            out = init(key, shape, dtype)
            boxes.update(dict.fromkeys(INITS[name], out))
            return out.unbox() if hasattr(out, "unbox") else getattr(out, "raw_value", out)
        return draw
    return {k: unbox(k, v) if k in INITS and callable(v) else v for k, v in (options or {}).items()}


def carry_layout(struct, layout) -> tuple[str, ...] | None:
    """The fields Flax's carry holds, in order (one: that array alone), or None (memcell's carry)."""
    fields = getattr(struct, "_fields", None)
    if layout is None:
        return None
    if isinstance(layout, str) and layout == "flax":
        return None if fields is None else (tuple(fields) if len(fields) == 1 else FLAX_CARRIES.get(frozenset(fields)))
    if fields is None or not isinstance(layout, (tuple, list)) or sorted(layout) != sorted(fields):
        raise ValueError(f"carry_layout must be 'flax', None or an order of the carry fields {fields}, got {layout!r}")
    return tuple(layout)


def to_flax(carry, fields):
    parts = carry if fields is None else tuple(getattr(carry, f) for f in fields)
    return parts[0] if fields is not None and len(fields) == 1 else parts


def from_flax(carry, fields, struct):
    """memcell's carry from Flax's; refuses a carry whose structure is not ``struct``'s."""
    if fields is not None:
        ps = (carry,) if len(fields) == 1 else carry
        if not isinstance(ps, (tuple, list)) or len(ps) != len(fields) or not all(hasattr(p, "shape") for p in ps):
            what = f"the array {fields[0]}" if len(fields) == 1 else f"the tuple ({', '.join(fields)})"
            raise TypeError(f"carry must be {what} that initialize_carry returns, got {type(carry).__name__}")
        carry = type(struct)(**dict(zip(fields, ps)))
    expected, got = jax.tree.structure(struct), jax.tree.structure(carry)
    if got != expected:
        raise TypeError(f"carry must have the structure of initialize_carry's carry, {expected}, got {got}")
    return carry


def check_inputs(inputs, *, complex_ok: bool = False):
    """Arrays ``[..., features]``: floating, integer or bool (promoted as Flax does), complex where allowed."""
    if not hasattr(inputs, "shape") or not hasattr(inputs, "dtype"):
        raise TypeError(f"inputs must be an array, got {type(inputs).__name__}")
    if inputs.ndim < 1:
        raise ValueError(f"inputs must have shape [..., features], got shape {tuple(inputs.shape)}")
    if jnp.issubdtype(inputs.dtype, jnp.complexfloating) and not complex_ok:
        raise TypeError(f"inputs must be a real array, got dtype {inputs.dtype} (of memcell's Flax modules, the LSTM, "
                        "GRU and RNN drop-ins take complex inputs, as Flax's cells do)")
    if not (jnp.issubdtype(inputs.dtype, jnp.number) or inputs.dtype == jnp.bool_):
        raise TypeError(f"inputs must be a numeric array, got dtype {inputs.dtype}")
    return inputs


def flax_dtypes(run: Callable, xs, params, dtype=None, complex_ok=False):
    """``run(xs)`` with integer ``xs`` promoted to Flax's computation dtype, and the outputs returned in it."""
    xs = check_inputs(xs, complex_ok=complex_ok)
    inexact = jnp.issubdtype(xs.dtype, jnp.inexact)
    dtypes = [a.dtype for a in jax.tree.leaves(params) if jnp.issubdtype(a.dtype, jnp.floating)] + [xs.dtype] * inexact
    dt = jnp.dtype(dtype if dtype is not None else jnp.result_type(*dtypes) if dtypes else jnp.float32)
    carry, ys = run(xs if inexact else xs.astype(dt))
    return carry, ys.astype(dt) if jnp.issubdtype(ys.dtype, jnp.floating) and jnp.issubdtype(dt, jnp.floating) else ys


def step(cell: Cell, template, get_params: Callable, carry, inputs, *, layout="flax", dtype=None, complex_ok=False):
    """``(carry, inputs) -> (carry, y)`` in Flax's carry, checked against ``template`` before ``get_params()``."""
    struct = jax.eval_shape(cell.initial_carry, template)
    fields = carry_layout(struct, layout)
    mem = from_flax(carry, fields, struct)

    def run(x):  # a complex step has a complex carry, as in Flax
        m = jax.tree.map(lambda a: a.astype(jnp.result_type(a, x)), mem) if jnp.iscomplexobj(x) else mem
        new, y = cell.step(get_params(), m, x)
        return to_flax(new, fields), y

    return flax_dtypes(run, inputs, template, dtype, complex_ok)


def initial_carry(cell: Cell, input_shape, *, layout, carry_init, key_for, learnt):
    """Flax's carry for ``input_shape`` ``(*batch, features)``: ``learnt`` (one carry, a dict of its fields) broadcast,
    zeros in the cell's dtypes, or ``carry_init(key_for(i), shape, dtype)`` a leaf ``i``."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if not shape or not all(isinstance(s, int) for s in shape) or shape[-1] < 1:
        raise ValueError(f"input_shape must be a tuple (*batch, features) of ints, features >= 1, got {input_shape!r}")
    params = jax.eval_shape(lambda k: cell.init(k, shape[-1]), jax.random.key(0))
    struct = jax.eval_shape(lambda p: cell.initial_carry(p, shape[:-1]), params)
    leaves, treedef = jax.tree.flatten(struct)
    if learnt is not None:
        learnt = convert.from_dict(convert.to_dict(learnt), jax.eval_shape(cell.initial_carry, params), path="carry0")
        carry = jax.tree.map(lambda v, s: jnp.broadcast_to(v, s.shape).astype(s.dtype), learnt, struct)
    elif carry_init is None:
        carry = treedef.unflatten([jnp.zeros(s.shape, s.dtype) for s in leaves])
    else:
        carry = treedef.unflatten([carry_init(key_for(i), s.shape, s.dtype) for i, s in enumerate(leaves)])
    return to_flax(carry, carry_layout(struct, layout))


def check_learnt_carry(learn_initial_carry, carry_init) -> bool:
    learn = check_bool("learn_initial_carry", learn_initial_carry)
    if learn and carry_init is not None:
        raise ValueError("learn_initial_carry=True learns the initial carry, so carry_init must be None")
    return learn


def sequence_layer(cell, hidden_size=None, options=None, **sequence) -> Layer:
    """The ``memcell.stack`` of ``cell`` (for every layer, or a list: one a layer) with ``SEQUENCE_OPTIONS``."""
    unknown = sorted(set(sequence) - set(SEQUENCE_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected option {unknown[0]!r}; the sequence options are {list(SEQUENCE_OPTIONS)}")
    o = {**SEQUENCE_OPTIONS, **sequence}
    if isinstance(cell, (list, tuple)) and not isinstance(cell, Cell):
        cells = [make_cell(c, hidden_size, options) for c in cell]
        if o["num_layers"] not in (1, len(cells)):  # an empty list: memcell.stack says so
            raise ValueError(f"num_layers={o['num_layers']} contradicts the {len(cells)} cells given")
    else:
        cells = [make_cell(cell, hidden_size, options)] * check_positive_int("num_layers", o["num_layers"])
    paths = dict(unroll=o["unroll"], remat=o["remat"], backend=o["backend"])
    if check_bool("bidirectional", o["bidirectional"]):
        used = [name for name in _PER_LAYER if o[name]]
        if used:
            raise ValueError(f"{used[0]} is available for one-directional layers only, not with bidirectional=True")
        layers = [bidirectional(c, c, merge=o["merge"], **paths) for c in cells]
    elif o["merge"] != "concat":
        raise ValueError(f"merge={o['merge']!r} merges the two directions: it needs bidirectional=True")
    else:
        layers = [layer(c, **paths, **{_PER_LAYER[k]: o[k] for k in _PER_LAYER}) for c in cells]
    return stack(layers, residual=o["residual"], dropout=o["dropout"])


def run_sequence(lyr: Layer, params, xs, carry, *, dtype=None, **kw):
    """``lyr.apply`` on ``xs: [*b, T, D]``, with Flax's dtypes (``flax_dtypes``)."""
    if getattr(xs, "ndim", 2) < 2:
        raise ValueError(f"xs must have shape [..., T, D] (time, then features), got shape {tuple(xs.shape)}")
    return flax_dtypes(lambda x: lyr.apply(params, x, carry, **kw), xs, params, dtype)


