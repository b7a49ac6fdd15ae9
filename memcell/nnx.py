"""memcell cells as ``flax.nnx`` modules: ``memcell.linen``'s, with nnx's constructors (and Flax's sharding metadata);
each field of the memcell params is an ``nnx.Param`` of that name."""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from memcell import _flax, convert
from memcell._checks import check_positive_int
from memcell.types import Cell as PureCell, PyTree

__all__ = ["GRU", "LSTM", "RNN", "Cell", "Recurrent"]


def _values(tree):
    return jax.tree.map(lambda v: v[...], tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _key(rngs, stream: str):
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"rngs must be an nnx.Rngs, got {type(rngs).__name__}")
    return getattr(rngs, stream)()


class _Params(nnx.Module):
    """Holds memcell params as one ``nnx.Param`` a leaf, in attributes named by their fields."""

    def _store(self, params, metadata: Mapping[str, Mapping] | None = None) -> None:
        self._structure = jax.tree.map(lambda _: 0, params)  # ints for leaves: static, and enough to rebuild them
        tree = convert.to_dict(params)
        for name, value in (tree if isinstance(tree, dict) else {"params": tree}).items():
            if hasattr(self, name):
                raise ValueError(f"the cell's params may not have a field named {name!r}: the module uses that name")
            param = lambda v: nnx.Param(v, **(metadata or {}).get(name) or {})  # noqa: E731
            setattr(self, name, nnx.data(jax.tree.map(param, value)) if isinstance(value, dict) else param(value))
        self._names = tuple(tree) if isinstance(tree, dict) else None

    def memcell_params(self) -> PyTree:
        """The params as memcell's NamedTuple (the current values of the ``nnx.Param``s)."""
        stored = {n: _values(getattr(self, n)) for n in self._names} if self._names else _values(self.params)
        return convert.from_dict(stored, self._structure, path=type(self).__name__)


class Cell(_Params, nnx.RNNCellBase):
    """``memcell.linen.Cell`` for nnx: any memcell cell, a built-in by name or a user's factory.

    Args:
      cell, hidden_features, options, carry_layout, carry_init, learn_initial_carry: as for ``memcell.linen.Cell``
        (``hidden_features`` is its ``features``); in_features: input features; rngs: ``nnx.Rngs``.
      param_metadata: ``{param field: metadata}`` for its ``nnx.Param`` (``{"w_x": {"out_sharding": (None, "tp")}}``).

    Example:
      >>> import jax.numpy as jnp, memcell.nnx
      >>> from flax import nnx
      >>> cell = memcell.nnx.Cell("lstm", 3, 8, options={"layer_norm": True}, rngs=nnx.Rngs(0))
      >>> nnx.RNN(cell)(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """

    complex_ok = False  # class data: the drop-ins take complex inputs, as Flax's cells

    def __init__(self, cell, in_features: int, hidden_features: int | None = None, *, options=None, carry_layout="flax",
                 carry_init=None, learn_initial_carry=False, param_metadata: Mapping | None = None, rngs: nnx.Rngs):
        self.cell = _flax.make_cell(cell, hidden_features, options, boxes := {})
        self.in_features, self.hidden_features = check_positive_int("in_features", in_features), hidden_features
        learn = _flax.check_learnt_carry(learn_initial_carry, carry_init)
        self.carry_init, self.carry_layout, self.dtype = carry_init, carry_layout, dict(options or {}).get("dtype")
        params = self.cell.init(_key(rngs, "params"), self.in_features)
        boxed = {n: b.metadata for n, b in boxes.items() if hasattr(b, "raw_value")}  # nnx.with_partitioning's
        self._store(params, {**boxed, **(param_metadata or {})})
        # A learnt initial carry: a Param a carry leaf, without batch axes, started at the cell's initial carry.
        self.carry0 = nnx.data(jax.tree.map(nnx.Param, self.cell.initial_carry(params))) if learn else None

    def memcell_cell(self) -> PureCell:
        """The pure memcell ``Cell`` this module runs."""
        return self.cell

    def __call__(self, carry, inputs) -> tuple[Any, Any]:
        """One step: ``(carry, inputs[*b, d]) -> (carry, y[*b, h])``, ``cell.step`` on the module's params."""
        if _flax.check_inputs(inputs, complex_ok=self.complex_ok).shape[-1] != self.in_features:
            raise ValueError(f"inputs must have {self.in_features} features (in_features) on the last axis, "
                             f"got shape {tuple(inputs.shape)}")
        params = self.memcell_params()
        return _flax.step(self.cell, params, lambda: params, carry, inputs, layout=self.carry_layout,
                          dtype=self.dtype, complex_ok=self.complex_ok)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs=None, carry_init=None):
        """The carry for ``input_shape`` ``(*batch, features)``: zeros, ``carry_init``'s (``rngs``) or ``carry0``."""
        carry_init = carry_init or self.carry_init
        rngs = rngs.carry if isinstance(rngs, nnx.Rngs) else rngs
        if self.carry0 is None and carry_init is not None and rngs is None:
            raise ValueError("rngs must be given to initialize_carry when a carry_init is used")
        return _flax.initial_carry(self.cell, input_shape, layout=self.carry_layout, carry_init=carry_init,
                                   key_for=lambda i: rngs(), learnt=self.carry0 and _values(self.carry0))

    @property
    def num_feature_axes(self) -> int:
        return 1


class _DropIn(Cell):
    """Flax's constructor arguments of its LSTM, GRU and simple cells, as the memcell factory's options."""

    complex_ok = True

    def _drop_in(self, factory: str, args: dict, renames: Mapping | None = None) -> None:
        roles = {"kernel_init": "kernel", "recurrent_init": "recurrent_kernel", "bias_init": "bias"}
        meta = {k: args.pop(f"{role}_metadata") for k, role in roles.items()}
        own = ("self", "__class__", "in_features", "hidden_features", "rngs", "carry_init", "learn_initial_carry")
        options = {{**_flax.FLAX_NAMES, **(renames or {})}.get(k, k): v for k, v in args.items() if k not in own}
        super().__init__(factory, args["in_features"], args["hidden_features"], options=options, rngs=args["rngs"],
                         carry_init=args["carry_init"], learn_initial_carry=args["learn_initial_carry"],
                         param_metadata={n: meta[k] for k, ns in _flax.INITS.items() for n in ns if meta[k]})


class LSTM(_DropIn):
    """memcell's LSTM as a drop-in for ``nnx.LSTMCell``/``nnx.OptimizedLSTMCell``: ``memcell.linen.LSTM``'s arguments
    and differences, nnx's constructor, and its sharding metadata ``kernel_metadata`` (of ``w_x``),
    ``recurrent_kernel_metadata`` (``w_h``, ``w_hr``) and ``bias_metadata`` (``b``).

    Example:
      >>> import jax.numpy as jnp, memcell.nnx
      >>> from flax import nnx
      >>> model = nnx.RNN(memcell.nnx.LSTM(3, 16, rngs=nnx.Rngs(0)), return_carry=True)
      >>> (c, h), ys = model(jnp.ones((4, 10, 3)), seq_lengths=jnp.array([10, 7, 3, 1]))
      >>> ys.shape, h.shape
      ((4, 10, 16), (4, 16))
    """

    def __init__(self, in_features: int, hidden_features: int, *, gate_fn=jax.nn.sigmoid, activation_fn=jnp.tanh,
                 forget_bias=None, proj_size=None, kernel_init="lecun_normal", recurrent_kernel_init="orthogonal",
                 bias_init=None, dtype=None, param_dtype=jnp.float32, carry_init=None, learn_initial_carry=False,
                 kernel_metadata=None, recurrent_kernel_metadata=None, bias_metadata=None, rngs: nnx.Rngs):
        self._drop_in("lstm", dict(locals()))


class GRU(_DropIn):
    """memcell's GRU as a drop-in for ``nnx.GRUCell`` (carry ``h``), as ``LSTM`` is for ``nnx.LSTMCell``
    (``bias_metadata``: ``b_x``, ``b_h``); unlike ``nnx.GRUCell`` it has the recurrent bias ``b_hn``."""

    def __init__(self, in_features: int, hidden_features: int, *, gate_fn=jax.nn.sigmoid, activation_fn=jnp.tanh,
                 kernel_init="lecun_normal", recurrent_kernel_init="orthogonal", bias_init=None, dtype=None,
                 param_dtype=jnp.float32, carry_init=None, learn_initial_carry=False, kernel_metadata=None,
                 recurrent_kernel_metadata=None, bias_metadata=None, rngs: nnx.Rngs):
        self._drop_in("gru", dict(locals()))


class RNN(_DropIn):
    """memcell's Elman RNN as a drop-in for ``nnx.SimpleCell`` (carry ``h``), with its arguments but ``residual``,
    as ``LSTM`` is for ``nnx.LSTMCell``; ``activation_fn=jax.nn.relu`` is the ReLU RNN."""

    def __init__(self, in_features: int, hidden_features: int, *, activation_fn=jnp.tanh, kernel_init="lecun_normal",
                 recurrent_kernel_init="orthogonal", bias_init=None, dtype=None, param_dtype=jnp.float32,
                 carry_init=None, learn_initial_carry=False, kernel_metadata=None, recurrent_kernel_metadata=None,
                 bias_metadata=None, rngs: nnx.Rngs):
        self._drop_in("rnn", dict(locals()), {"activation_fn": "activation"})


class Recurrent(_Params):
    """``memcell.linen.Recurrent`` for nnx: a sequence module over ``memcell.stack``, with the same options.

    Args:
      cell, hidden_features, options, **sequence: as for ``memcell.linen.Recurrent`` (``hidden_features`` is its
        ``features``, ``**sequence`` its ``num_layers``, ``bidirectional``, ...); in_features: input features.
      deterministic: no dropout or zoneout (``model.eval()``/``.train()`` set it, ``__call__`` takes it); training
        draws masks from the ``dropout`` stream of ``rngs`` (the constructor's or ``__call__``'s).

    Example:
      >>> import jax.numpy as jnp, memcell.nnx
      >>> from flax import nnx
      >>> model = memcell.nnx.Recurrent("gru", 4, 8, num_layers=2, rngs=nnx.Rngs(0))
      >>> carry, ys = model(jnp.ones((3, 5, 4)), lengths=jnp.array([5, 2, 0]))   # as Layer.apply
      >>> ys.shape, len(carry)
      ((3, 5, 8), 2)
    """

    def __init__(self, cell, in_features: int, hidden_features: int | None = None, *, options=None,
                 deterministic: bool = False, rngs: nnx.Rngs, **sequence):
        self.layer = _flax.sequence_layer(cell, hidden_features, options, **sequence)
        self.in_features = check_positive_int("in_features", in_features)
        self.dtype, self.deterministic = dict(options or {}).get("dtype"), deterministic
        self._store(self.layer.init(_key(rngs, "params"), self.in_features))
        self.rngs = rngs.dropout.fork() if any(sequence.get(k) for k in _flax.RANDOM) else nnx.data(None)

    def memcell_layer(self):
        """The memcell ``Layer`` (a ``memcell.stack``) this module applies."""
        return self.layer

    def __call__(self, xs, carry=None, *, lengths=None, resets=None, deterministic=None, rngs=None):
        """Runs the layers over ``xs: [*b, T, D]``; returns ``(carry, ys)``."""
        stream = self.rngs if rngs is None else rngs
        train = stream is not None and not (self.deterministic if deterministic is None else deterministic)
        key = (stream.dropout if isinstance(stream, nnx.Rngs) else stream)() if train else None
        return _flax.run_sequence(self.layer, self.memcell_params(), xs, carry, lengths=lengths, resets=resets,
                                  key=key, dtype=self.dtype)
