"""memcell cells as ``flax.linen`` modules: drop-ins for Flax's cells (``LSTM``, ``GRU``, ``RNN``), any other cell
(``Cell``, by name or a user's factory) and a sequence module (``Recurrent``); ``memcell.nnx`` has the same for nnx."""

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from memcell import _flax, convert
from memcell.types import Cell as PureCell, PyTree

__all__ = ["GRU", "LSTM", "RNN", "Cell", "Recurrent", "memcell_params"]

_CARRY0 = "carry0"  # the learnt initial carry's param


def _as_dict(params) -> dict:  # a bare-array params is {"params": it}
    tree = convert.to_dict(params)
    return tree if isinstance(tree, dict) else {"params": tree}


def _boxed(name, params, boxes):  # a param in the box its initialiser returned (nn.with_partitioning's)
    box = boxes.get(name)
    return box.replace_boxed(params[name]) if hasattr(box, "replace_boxed") else params[name]


class _Base(nn.RNNCellBase):
    """A memcell cell as a Flax RNN cell: ``cell``, ``features`` and ``options`` say which."""

    carry_layout, complex_ok = "flax", False  # class data, overridden by fields or subclasses

    @nn.nowrap
    def memcell_cell(self, boxes=None) -> PureCell:
        """The pure memcell ``Cell`` this module runs."""
        return _flax.make_cell(self.cell, self.features, self.options, boxes)

    @nn.compact
    def __call__(self, carry, inputs) -> tuple[Any, Any]:
        """One step: ``(carry, inputs[*b, d]) -> (carry, y[*b, h])``, ``cell.step`` on the module's params."""
        boxes = {}  # the boxes of partitioned initialisers, filled as the params are made
        cell = self.memcell_cell(boxes)
        d = _flax.check_inputs(inputs, complex_ok=self.complex_ok).shape[-1]
        template = jax.eval_shape(lambda k: cell.init(k, d), jax.random.key(0))
        if _CARRY0 in _as_dict(template):
            raise ValueError(f"the cell's params may not have a field named {_CARRY0!r}: the module uses that name")
        if _flax.check_learnt_carry(self.learn_initial_carry, self.carry_init):
            self.param(_CARRY0, lambda key: convert.to_dict(cell.initial_carry(cell.init(key, d))))

        def params():  # one Flax param a field, named alike: Flax checks its shape, Orbax and optax see dicts
            init = lambda k, n: _boxed(n, _as_dict(cell.init(k, d)), boxes)  # noqa: E731
            stored = {n: self.param(n, init, n) for n in _as_dict(template)}
            return memcell_params(self, stored, d)

        return _flax.step(cell, template, params, carry, inputs, layout=self.carry_layout,
                          dtype=dict(self.options or {}).get("dtype"), complex_ok=self.complex_ok)

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]):
        """The carry for ``input_shape`` ``(*batch, features)``: zeros, ``carry_init``'s or a bound ``carry0``."""
        bound = self.learn_initial_carry and self.scope is not None and self.has_variable("params", _CARRY0)
        return _flax.initial_carry(self.memcell_cell(), input_shape, layout=self.carry_layout,
                                   carry_init=self.carry_init, key_for=lambda i: jax.random.fold_in(rng, i),
                                   learnt=self.get_variable("params", _CARRY0) if bound else None)

    @property
    def num_feature_axes(self) -> int:
        return 1


class Cell(_Base):
    """Any memcell cell as a ``flax.linen`` RNN cell: a built-in by name, or a user's factory.

    Attributes:
      cell: a name in ``memcell.cells.CELLS``, a ``"module:factory"`` string, a factory
        ``factory(hidden_size, **options) -> memcell.Cell``, or a built ``memcell.Cell``.
      features, options: the hidden size and the factory's keyword arguments (None for a built cell).
      carry_layout: ``"flax"``: Flax's carry (a one-field carry is that array, as ``nn.GRUCell``'s; the LSTM's
        ``(h, c)`` is ``(c, h)``; others stay memcell's); None: memcell's; or an ordering of the carry's fields.
      carry_init, learn_initial_carry: the carry's initialiser (None: zeros), or learn it (a param ``carry0``).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, memcell.linen
      >>> model = nn.RNN(memcell.linen.Cell("mingru", 8, {"log_space": True}), return_carry=True)
      >>> (h, ys), variables = model.init_with_output(jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> h.shape, ys.shape, sorted(variables["params"]["cell"])
      ((2, 8), (2, 5, 8), ['b', 'w_x'])
    """

    cell: Any
    features: int | None = None
    options: Mapping[str, Any] | None = None
    carry_layout: Any = "flax"
    carry_init: Callable | None = None
    learn_initial_carry: bool = False


class _DropIn(_Base):
    """Flax's attributes of its LSTM, GRU and simple cells, given to the memcell factory named ``cell``."""

    features: int
    kernel_init: Any = "lecun_normal"
    recurrent_kernel_init: Any = "orthogonal"
    bias_init: Any = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Callable | None = None
    learn_initial_carry: bool = False
    complex_ok, cell, _renames = True, "", {}  # class data: Flax's names -> the factory's

    @property
    def options(self) -> dict:
        """The factory's options: the module's attributes, named as the factory names them."""
        own = {"features", "carry_init", "learn_initial_carry", "parent", "name"}
        args = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in own}
        return {{**_flax.FLAX_NAMES, **self._renames}.get(k, k): v for k, v in args.items()}


class LSTM(_DropIn):
    """memcell's LSTM as a drop-in for ``nn.LSTMCell``/``nn.OptimizedLSTMCell``, carry ``(c, h)``.

    Flax's attributes mean what they mean there; memcell adds ``forget_bias`` (None: 1.0, or ``bias_init``'s),
    ``proj_size`` (PyTorch's LSTMP) and ``learn_initial_carry`` (as for ``Cell``). The params are memcell's (``w_x``,
    ``w_h``, ``b``); with bf16 or fp16 the outputs come in that dtype, the carry in float32 (see
    docs/coming_from_flax_pytorch.md for each difference from Flax).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, memcell.linen
      >>> model, xs = nn.RNN(memcell.linen.LSTM(16)), jnp.ones((4, 10, 3))   # was: nn.OptimizedLSTMCell(16)
      >>> model.apply(model.init(jax.random.key(0), xs), xs, seq_lengths=jnp.array([10, 7, 3, 1])).shape
      (4, 10, 16)
    """

    gate_fn: Callable = jax.nn.sigmoid
    activation_fn: Callable = jnp.tanh
    forget_bias: float | None = None
    proj_size: int | None = None
    cell = "lstm"


class GRU(_DropIn):
    """memcell's GRU as a drop-in for ``nn.GRUCell`` (carry ``h``), with its attributes, as ``LSTM`` is for
    ``nn.LSTMCell``; unlike nnx's ``GRUCell`` (not linen's) it has the recurrent bias ``b_hn``."""

    gate_fn: Callable = jax.nn.sigmoid
    activation_fn: Callable = jnp.tanh
    cell = "gru"


class RNN(_DropIn):
    """memcell's Elman RNN as a drop-in for ``nn.SimpleCell`` (carry ``h``), with its attributes but ``residual``,
    as ``LSTM`` is for ``nn.LSTMCell``; ``activation_fn=jax.nn.relu`` is the ReLU RNN."""

    activation_fn: Callable = jnp.tanh
    cell, _renames = "rnn", {"activation_fn": "activation"}


class Recurrent(nn.Module):
    """A sequence module over ``memcell.stack`` (``memcell.unroll`` a layer, no ``nn.RNN``).

    Attributes:
      cell, features, options: as for ``Cell``, for every layer; or a list of cells, one a layer.
      num_layers, bidirectional, merge: layers, read both ways (from each sequence's own last step) and merged with
        ``"concat"``, ``"sum"``, ``"mean"``, ``"mul"`` or a function.
      residual, dropout: ``memcell.stack``'s; input_dropout, recurrent_dropout, zoneout, learn_initial_carry:
        ``memcell.layer``'s (``dropout``, ...), for one-directional layers; unroll, remat, backend: ``unroll``'s.

    ``__call__(xs, carry=None, *, lengths=None, resets=None, deterministic=True)`` is ``Layer.apply``; dropout and
    zoneout run with ``deterministic=False`` (``"dropout"`` rng). Params: ``layer_0``, ``layer_1``, ...

    Example:
      >>> import jax, jax.numpy as jnp, memcell.linen
      >>> model, xs = memcell.linen.Recurrent("lstm", 8, bidirectional=True), jnp.ones((3, 5, 4))
      >>> carry, ys = model.apply(model.init(jax.random.key(0), xs), xs, lengths=jnp.array([5, 2, 0]))
      >>> ys.shape, type(carry[0]).__name__
      ((3, 5, 16), 'DirectionPair')
    """

    cell: Any
    features: int | None = None
    options: Mapping[str, Any] | None = None
    # The sequence options, fields named and defaulted as _flax.SEQUENCE_OPTIONS: the list nnx.Recurrent takes too.
    __annotations__.update(dict.fromkeys(_flax.SEQUENCE_OPTIONS, Any))
    vars().update(_flax.SEQUENCE_OPTIONS)

    @nn.nowrap
    def memcell_layer(self):
        """The memcell ``Layer`` (a ``memcell.stack``) this module applies."""
        return _flax.sequence_layer(self.cell, self.features, self.options,
                                    **{k: getattr(self, k) for k in _flax.SEQUENCE_OPTIONS})

    @nn.compact
    def __call__(self, xs, carry=None, *, lengths=None, resets=None, deterministic: bool = True):
        """Runs the layers over ``xs: [*b, T, D]``; returns ``(carry, ys)``."""
        lyr, d = self.memcell_layer(), _flax.check_inputs(xs).shape[-1]
        n = len(jax.eval_shape(lambda k: lyr.init(k, d), jax.random.key(0)))
        # Layer i's init depends on the sizes before it only: each layer's param is taken from the stack's init.
        stored = {f"layer_{i}": self.param(f"layer_{i}", lambda k, i=i: convert.to_dict(lyr.init(k, d)[i]))
                  for i in range(n)}
        random = not deterministic and any(getattr(self, k) for k in _flax.RANDOM)
        return _flax.run_sequence(lyr, memcell_params(self, stored, d), xs, carry, lengths=lengths, resets=resets,
                                  key=self.make_rng("dropout") if random else None,
                                  dtype=dict(self.options or {}).get("dtype"))


def memcell_params(module: nn.Module, params, input_size: int) -> PyTree:
    """What ``cell.init`` (or the layer's) returns, with the arrays of a memcell linen ``module``'s own ``params``
    (``variables["params"]``, or its sub-dict, e.g. ``["RNN_0"]["cell"]``) for ``input_size`` features."""
    if isinstance(module, _Base):
        init = module.memcell_cell().init
    elif isinstance(module, Recurrent):
        init = module.memcell_layer().init
    else:
        raise TypeError(f"module must be a memcell.linen cell or Recurrent, got {type(module).__name__}")
    template = jax.eval_shape(lambda k: init(k, input_size), jax.random.key(0))
    params = {k: v for k, v in params.items() if k != _CARRY0} if isinstance(params, Mapping) else params
    dict_params = isinstance(convert.to_dict(template), dict)
    return convert.from_dict(params if dict_params else params["params"], template, path=module.name or "params")
