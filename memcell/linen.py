"""memcell cells as ``flax.linen`` modules.

``LSTM``, ``GRU`` and ``RNN`` are ``flax.linen.RNNCellBase`` cells that go where
``nn.OptimizedLSTMCell``, ``nn.GRUCell`` and ``nn.SimpleCell`` go: inside ``nn.RNN`` (with
``seq_lengths``, ``reverse``, ``keep_order``, ``return_carry``) and ``nn.Bidirectional``,
with Flax's carry layout (the LSTM's is ``(c, h)``). ``Cell`` wraps any memcell cell factory
the same way, with memcell's own carry. ``Recurrent`` is a sequence module that calls
``memcell.unroll`` directly (lengths, bidirectional, stacking) instead of ``nn.RNN``.

The params are memcell's params, stored as dicts of their fields (``{"w_x", "w_h", "b"}``
for the LSTM); ``memcell_params`` turns them back into the NamedTuple, and the module's
output equals ``cell.step`` on those params bit for bit.

This module and ``memcell.nnx`` are the only ones that import flax; what they share
(Flax's carry layouts, the argument checks) is in ``memcell._flax``.
"""

import math
from typing import Any, Callable, Sequence as SequenceOf

import flax.linen as nn
import jax
import jax.numpy as jnp

from memcell import convert
from memcell._checks import check_bool, check_positive_int
from memcell._flax import (
    check_carry_structure,
    check_input_shape,
    check_inputs,
    lstm_carry_from_flax,
    lstm_carry_to_flax,
    single_carry_from_flax,
)
from memcell.cells import (
    GRUCarry,
    LRUCarry,
    MinGRUCarry,
    MinLSTMCarry,
    RGLRUCarry,
    RNNCarry,
    gru,
    lru,
    lstm,
    mingru,
    minlstm,
    mlstm,
    rglru,
    rnn,
    slstm,
)
from memcell.scan import bidirectional as bidirectional_layer, layer as as_layer, stack
from memcell.types import Array, Cell as PureCell, PyTree

__all__ = [
    "GRU", "LRU", "LSTM", "MLSTM", "RGLRU", "RNN", "SLSTM", "Cell", "MinGRU", "MinLSTM", "Recurrent", "memcell_params",
]


def _param_names(template) -> tuple[str, ...] | None:
    """Top-level names of a cell's params as ``convert.to_dict`` lays them out (None: a bare array)."""
    tree = convert.to_dict(template)
    return tuple(tree) if isinstance(tree, dict) else None


class _CellBase(nn.RNNCellBase):
    """The wrapper's logic, shared by ``Cell``, ``LSTM``, ``GRU`` and ``RNN``.

    A subclass says which memcell cell it is (``_memcell``) and how Flax's carry maps to
    memcell's (``_to_memcell_carry`` / ``_from_memcell_carry``, identities by default).
    """

    def _memcell(self) -> PureCell:
        raise NotImplementedError

    def _to_memcell_carry(self, carry):
        return carry

    def _from_memcell_carry(self, carry):
        return carry

    @nn.compact
    def __call__(self, carry, inputs: Array) -> tuple[Any, Array]:
        """One step: ``(carry, inputs[*b, d]) -> (carry, y[*b, h])``, ``cell.step`` on the module's params."""
        check_inputs(inputs)
        mem_carry = self._to_memcell_carry(carry)
        cell = self._memcell()
        d = inputs.shape[-1]
        template = jax.eval_shape(lambda k: cell.init(k, d), jax.random.key(0))
        check_carry_structure(cell, template, mem_carry)
        # Each field of the params NamedTuple (or key of a dict) is its own Flax param, named alike,
        # so Flax checks its shape on apply, and Orbax, optax masks and traverse_util see dicts.
        names = _param_names(template)
        if names is None:  # params that are a single array
            stored = self.param("params", lambda key: cell.init(key, d))
        else:
            stored = {
                name: self.param(name, lambda key, name=name: convert.to_dict(cell.init(key, d))[name])
                for name in names
            }
        params = convert.from_dict(stored, template, path=self.name or type(self).__name__)
        new, y = cell.step(params, mem_carry, inputs)
        return self._from_memcell_carry(new), y

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]):
        """The initial carry for inputs of ``input_shape = (*batch, features)``.

        Zeros (``cell.initial_carry``) unless ``carry_init`` is set, in which case each carry
        leaf is ``carry_init(key, shape, dtype)`` with its own key split from ``rng``.
        """
        shape = check_input_shape(input_shape)
        cell = self._memcell()
        batch, d = shape[:-1], shape[-1]
        # The carry's shape depends on the params' shapes only; no params exist yet here.
        struct = jax.eval_shape(lambda k: cell.initial_carry(cell.init(k, d), batch), jax.random.key(0))
        carry_init = getattr(self, "carry_init", None)
        if carry_init is None:
            carry = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), struct)
        else:
            leaves, treedef = jax.tree.flatten(struct)
            keys = jax.random.split(rng, len(leaves))
            carry = treedef.unflatten([carry_init(k, s.shape, s.dtype) for k, s in zip(keys, leaves)])
        return self._from_memcell_carry(carry)

    @property
    def num_feature_axes(self) -> int:
        return 1

    @nn.nowrap
    def memcell_cell(self) -> PureCell:
        """The pure memcell ``Cell`` this module runs."""
        return self._memcell()


class Cell(_CellBase):
    """Any memcell cell as a ``flax.linen`` RNN cell, with memcell's carry.

    Attributes:
      cell_factory: a function ``hidden_size -> memcell.Cell``: ``memcell.lstm``, or
        ``functools.partial(memcell.lstm, peephole=True)`` for options.
      features: the hidden size passed to it.
      carry_init: optional initialiser of the carry's leaves (default: the cell's zeros).

    Example:
      >>> import functools, jax, jax.numpy as jnp, flax.linen as nn, memcell
      >>> import memcell.linen
      >>> cell = memcell.linen.Cell(functools.partial(memcell.lstm, peephole=True), 8)
      >>> xs = jnp.ones((2, 5, 3))
      >>> variables = nn.RNN(cell).init(jax.random.key(0), xs)
      >>> sorted(variables["params"]["cell"])
      ['b', 'p_f', 'p_i', 'p_o', 'w_h', 'w_x']
    """

    cell_factory: Callable[[int], PureCell]
    features: int
    carry_init: Callable | None = None

    def _memcell(self) -> PureCell:
        if not callable(self.cell_factory):
            raise TypeError(f"cell_factory must be a callable hidden_size -> memcell.Cell, got {self.cell_factory!r}")
        cell = self.cell_factory(self.features)
        if not isinstance(cell, PureCell):
            raise TypeError(f"cell_factory must return a memcell.Cell, got {type(cell).__name__}")
        return cell


class LSTM(_CellBase):
    """memcell's LSTM as a drop-in for ``nn.LSTMCell`` / ``nn.OptimizedLSTMCell``.

    Same call, ``initialize_carry``, ``num_feature_axes`` and carry ``(c, h)`` as Flax's
    cells. Differences: the params are memcell's (``w_x [d, 4h]``, ``w_h [h, 4h]``, ``b [4h]``,
    gates ``i, f, g, o``; ``memcell.convert.from_flax`` reads Flax's), the forget-gate bias
    starts at ``forget_bias`` (memcell's default 1.0; Flax's is 0.0), the carry is float32
    for bfloat16 params, and gate/activation functions are fixed. For peepholes, layer norm
    and the other variants use ``Cell(functools.partial(memcell.lstm, ...), features)``.
    With ``proj_size=p`` it is PyTorch's ``LSTM(proj_size=p)`` (Sak et al.'s LSTMP, which Flax
    lacks): the carry is still ``(c, h)``, with ``c: [*b, features]`` and ``h: [*b, p]``, the
    outputs have ``p`` units and the params gain ``w_hr [features, p]`` (``w_h`` is ``[p, 4h]``).

    Attributes:
      features: hidden units.
      forget_bias: initial forget-gate bias (None: memcell's default, 1.0).
      proj_size: project ``h`` (and the outputs) to this many units, fewer than ``features``;
        None or 0: no projection (see ``memcell.lstm``).
      kernel_init, recurrent_kernel_init: initialisers (names or ``jax.nn.initializers``
        callables) of ``w_x`` and ``w_h``, per gate block.
      dtype: computation dtype of the matmuls (None: that of params and inputs).
      param_dtype: dtype of the params.
      carry_init: optional initialiser of ``c`` and ``h`` (default zeros).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> import memcell.linen
      >>> model = nn.RNN(memcell.linen.LSTM(16))      # where nn.OptimizedLSTMCell(16) went
      >>> xs = jnp.ones((4, 10, 3))
      >>> variables = model.init(jax.random.key(0), xs)
      >>> model.apply(variables, xs, seq_lengths=jnp.array([10, 7, 3, 1])).shape
      (4, 10, 16)
    """

    features: int
    forget_bias: float | None = None
    kernel_init: Any = "lecun_normal"
    recurrent_kernel_init: Any = "orthogonal"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Callable | None = None
    proj_size: int | None = None

    def _memcell(self) -> PureCell:
        return lstm(
            self.features,
            forget_bias=self.forget_bias,
            proj_size=self.proj_size,
            kernel_init=self.kernel_init,
            recurrent_init=self.recurrent_kernel_init,
            param_dtype=self.param_dtype,
            dtype=self.dtype,
        )

    def _to_memcell_carry(self, carry):
        return lstm_carry_from_flax(carry)

    def _from_memcell_carry(self, carry):
        return lstm_carry_to_flax(carry)


class _SingleStateCell(_CellBase):
    """Cells whose Flax carry is the state array alone (``GRUCell``, ``SimpleCell``; memcell's one-field carries)."""

    _carry_cls = None  # set by subclasses (GRUCarry, RNNCarry, ...); not a dataclass field

    def _to_memcell_carry(self, carry):
        return single_carry_from_flax(self._carry_cls, carry)

    def _from_memcell_carry(self, carry):
        return carry[0]  # the carry NamedTuple's one field (h; the LRU's x)


class GRU(_SingleStateCell):
    """memcell's GRU as a drop-in for ``nn.GRUCell`` (``reset_after`` convention, carry ``h``).

    Params are ``GRUParams`` fields (``w_x [d, 3h]``, ``w_h [h, 3h]``, ``b_x``, ``b_h``, gates
    ``r, z, n``). Attributes as for ``LSTM`` (without ``forget_bias``).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> import memcell.linen
      >>> xs = jnp.ones((2, 6, 3))
      >>> model = nn.Bidirectional(nn.RNN(memcell.linen.GRU(8)), nn.RNN(memcell.linen.GRU(8)))
      >>> model.apply(model.init(jax.random.key(0), xs), xs).shape
      (2, 6, 16)
    """

    features: int
    kernel_init: Any = "lecun_normal"
    recurrent_kernel_init: Any = "orthogonal"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Callable | None = None

    _carry_cls = GRUCarry

    def _memcell(self) -> PureCell:
        return gru(
            self.features,
            kernel_init=self.kernel_init,
            recurrent_init=self.recurrent_kernel_init,
            param_dtype=self.param_dtype,
            dtype=self.dtype,
        )


class RNN(_SingleStateCell):
    """memcell's Elman RNN as a drop-in for ``nn.SimpleCell`` (carry ``h``).

    Params are ``RNNParams`` fields (``w_x [d, h]``, ``w_h [h, h]``, ``b [h]``).

    Attributes:
      features: hidden units.
      activation: ``"tanh"`` or ``"relu"``.
      kernel_init, recurrent_kernel_init, dtype, param_dtype, carry_init: as for ``LSTM``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import memcell.linen
      >>> cell = memcell.linen.RNN(4)
      >>> x = jnp.ones((2, 3))
      >>> carry = cell.initialize_carry(jax.random.key(0), x.shape)
      >>> variables = cell.init(jax.random.key(1), carry, x)
      >>> carry, y = cell.apply(variables, carry, x)
      >>> y.shape
      (2, 4)
    """

    features: int
    activation: str = "tanh"
    kernel_init: Any = "lecun_normal"
    recurrent_kernel_init: Any = "orthogonal"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Callable | None = None

    _carry_cls = RNNCarry

    def _memcell(self) -> PureCell:
        return rnn(
            self.features,
            activation=self.activation,
            kernel_init=self.kernel_init,
            recurrent_init=self.recurrent_kernel_init,
            param_dtype=self.param_dtype,
            dtype=self.dtype,
        )


class MinGRU(_SingleStateCell):
    """memcell's minGRU (``memcell.mingru``, Feng et al. 2024) as a ``flax.linen`` RNN cell.

    Goes inside ``nn.RNN`` / ``nn.Bidirectional`` like ``GRU``. The carry is the hidden-state
    array ``h: [*b, features]`` itself (memcell's ``MinGRUCarry(h)`` unwrapped, as Flax's
    ``GRUCell`` carries), the params are ``MinGRUParams``' fields (``w_x [d, 2h]``, ``b [2h]``).
    For the whole sequence at once, with the parallel scan, use
    ``Recurrent(memcell.mingru(h), backend="parallel")``.

    Attributes:
      features: hidden units.
      log_space: the paper's log-space variant (positive candidate through ``g``), as for
        ``memcell.mingru``.
      kernel_init: ``"fan_in_uniform"`` (default, PyTorch's ``nn.Linear``) or any initialiser
        ``memcell.mingru`` takes.
      dtype, param_dtype, carry_init: as for ``LSTM``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> import memcell.linen
      >>> model = nn.RNN(memcell.linen.MinGRU(8, log_space=True))
      >>> xs = jnp.ones((2, 5, 3))
      >>> model.apply(model.init(jax.random.key(0), xs), xs, seq_lengths=jnp.array([5, 2])).shape
      (2, 5, 8)
    """

    features: int
    log_space: bool = False
    kernel_init: Any = "fan_in_uniform"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Callable | None = None

    _carry_cls = MinGRUCarry

    def _memcell(self) -> PureCell:
        return mingru(self.features, log_space=self.log_space, kernel_init=self.kernel_init,
                      param_dtype=self.param_dtype, dtype=self.dtype)


class MinLSTM(_SingleStateCell):
    """memcell's minLSTM (``memcell.minlstm``, Feng et al. 2024) as a ``flax.linen`` RNN cell.

    Carry: the hidden-state array ``h: [*b, features]`` (``MinLSTMCarry(h)`` unwrapped; the
    minLSTM has no separate cell state). Params: ``MinLSTMParams``' fields (``w_x [d, 3h]``,
    ``b [3h]``). Attributes as for ``MinGRU``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> import memcell.linen
      >>> model = nn.RNN(memcell.linen.MinLSTM(8))
      >>> ys, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> ys.shape, variables["params"]["cell"]["w_x"].shape
      ((2, 5, 8), (3, 24))
    """

    features: int
    log_space: bool = False
    kernel_init: Any = "fan_in_uniform"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Callable | None = None

    _carry_cls = MinLSTMCarry

    def _memcell(self) -> PureCell:
        return minlstm(self.features, log_space=self.log_space, kernel_init=self.kernel_init,
                       param_dtype=self.param_dtype, dtype=self.dtype)


class LRU(_SingleStateCell):
    """memcell's linear recurrent unit (``memcell.lru``, Orvieto et al. 2023) as a ``flax.linen`` RNN cell.

    Two differences from the other cells, both the LRU's own: the outputs have the *input's*
    width ``d``, not ``features`` (``y = Re(x C) + D u``, the paper's residual-style layer), and
    the carry is the complex state array ``x: [*b, features]`` (complex64; ``LRUCarry(x)``
    unwrapped). The params are all real (``nu_log``, ``theta_log``, ``gamma_log``, ``b_re``,
    ``b_im``, ``c_re``, ``c_im``, ``d``), so optax and checkpointers see real arrays.

    Attributes:
      features: the number of complex state units ``h``.
      r_min, r_max, max_phase: the ring initialisation of ``lambda``, as for ``memcell.lru``
        (the paper's long-range choice is ``r_min=0.9, r_max=0.999, max_phase=pi/10``).
      dtype, param_dtype: as for ``LSTM``.
      carry_init: optional initialiser of the carry, called with a complex dtype.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> import memcell.linen
      >>> model = nn.RNN(memcell.linen.LRU(16, r_min=0.9, r_max=0.999), return_carry=True)
      >>> (x, ys), _ = jax.eval_shape(model.init_with_output, jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> ys.shape, x.shape, x.dtype
      ((2, 5, 3), (2, 16), dtype('complex64'))
    """

    features: int
    r_min: float = 0.0
    r_max: float = 1.0
    max_phase: float = 2 * math.pi
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Callable | None = None

    _carry_cls = LRUCarry

    def _memcell(self) -> PureCell:
        return lru(self.features, r_min=self.r_min, r_max=self.r_max, max_phase=self.max_phase,
                   param_dtype=self.param_dtype, dtype=self.dtype)


class RGLRU(_SingleStateCell):
    """memcell's RG-LRU (``memcell.rglru``, Griffin, De et al. 2024) as a ``flax.linen`` RNN cell.

    Carry: the hidden-state array ``h: [*b, features]`` (``RGLRUCarry(h)`` unwrapped). Params:
    ``w_gates [h, 2h]``, ``b_gates [2h]``, ``lam [h]`` and, when the input width differs from
    ``features`` (or ``input_projection=True``), the input projection ``w_in [d, h]``.

    Attributes:
      features: hidden units.
      c_scale, r_min, r_max, input_projection: as for ``memcell.rglru``.
      kernel_init, dtype, param_dtype, carry_init: as for ``LSTM``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> import memcell.linen
      >>> model = nn.RNN(memcell.linen.RGLRU(8))
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((2, 5, 3)))
      >>> sorted(variables["params"]["cell"])
      ['b_gates', 'lam', 'w_gates', 'w_in']
    """

    features: int
    c_scale: float = 8.0
    r_min: float = 0.9
    r_max: float = 0.999
    input_projection: bool | None = None
    kernel_init: Any = "lecun_normal"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Callable | None = None

    _carry_cls = RGLRUCarry

    def _memcell(self) -> PureCell:
        return rglru(self.features, c_scale=self.c_scale, r_min=self.r_min, r_max=self.r_max,
                     input_projection=self.input_projection, kernel_init=self.kernel_init,
                     param_dtype=self.param_dtype, dtype=self.dtype)


class SLSTM(_CellBase):
    """memcell's sLSTM (``memcell.slstm``, xLSTM, Beck et al. 2024) as a ``flax.linen`` RNN cell.

    The carry is memcell's ``SLSTMCarry(c, n, m, h)`` (each ``[*b, features]``): four states
    with no Flax counterpart to mimic, so they keep their names. Params: ``w_x [d, 4h]``,
    ``w_h`` (block-diagonal by head) and ``b``, as ``memcell.slstm`` lays them out.

    Attributes:
      features: hidden units.
      num_heads, forget_gate, forget_bias, recurrent_scale: as for ``memcell.slstm``.
      kernel_init, recurrent_kernel_init, dtype, param_dtype, carry_init: as for ``LSTM``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> import memcell.linen
      >>> model = nn.RNN(memcell.linen.SLSTM(8, num_heads=2), return_carry=True)
      >>> carry, ys = jax.eval_shape(model.init_with_output, jax.random.key(0), jnp.ones((2, 5, 3)))[0]
      >>> type(carry).__name__, ys.shape
      ('SLSTMCarry', (2, 5, 8))
    """

    features: int
    num_heads: int = 1
    forget_gate: str = "sigmoid"
    forget_bias: Any = 1.0
    recurrent_scale: float = 1.0
    kernel_init: Any = "lecun_normal"
    recurrent_kernel_init: Any = "orthogonal"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Callable | None = None

    def _memcell(self) -> PureCell:
        return slstm(self.features, num_heads=self.num_heads, forget_gate=self.forget_gate,
                     forget_bias=self.forget_bias, recurrent_scale=self.recurrent_scale,
                     kernel_init=self.kernel_init, recurrent_init=self.recurrent_kernel_init,
                     param_dtype=self.param_dtype, dtype=self.dtype)


class MLSTM(_CellBase):
    """memcell's mLSTM (``memcell.mlstm``, xLSTM, Beck et al. 2024) as a ``flax.linen`` RNN cell.

    The carry is memcell's ``MLSTMCarry(C, n, m)`` (the matrix memory ``C: [*b, heads, dk, dv]``,
    ``n: [*b, heads, dk]``, ``m: [*b, heads]``); outputs ``[*b, features]``. For the chunkwise
    parallel form over a whole sequence use ``Recurrent(memcell.mlstm(h), backend="parallel")``.

    Attributes:
      features: hidden units (``dk = dv = features / num_heads``).
      num_heads, forget_bias: as for ``memcell.mlstm``.
      kernel_init, dtype, param_dtype, carry_init: as for ``LSTM``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> import memcell.linen
      >>> model = nn.RNN(memcell.linen.MLSTM(8, num_heads=2), return_carry=True)
      >>> carry, ys = jax.eval_shape(model.init_with_output, jax.random.key(0), jnp.ones((2, 5, 3)))[0]
      >>> carry.C.shape, ys.shape
      ((2, 2, 4, 4), (2, 5, 8))
    """

    features: int
    num_heads: int = 1
    forget_bias: Any = (3.0, 6.0)
    kernel_init: Any = "lecun_normal"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    carry_init: Callable | None = None

    def _memcell(self) -> PureCell:
        return mlstm(self.features, num_heads=self.num_heads, forget_bias=self.forget_bias,
                     kernel_init=self.kernel_init, param_dtype=self.param_dtype, dtype=self.dtype)


def memcell_params(module: nn.Module, params, input_size: int) -> PyTree:
    """The memcell params (NamedTuples) inside a memcell linen module's params.

    Args:
      module: a ``Cell``/``LSTM``/``GRU``/``RNN`` or ``Recurrent`` (unbound is fine).
      params: that module's own params (``variables["params"]``, or the sub-dict at its path
        inside a bigger model, e.g. ``variables["params"]["RNN_0"]["cell"]``).
      input_size: the features its inputs have.

    Returns:
      What ``cell.init`` (or the layer's ``init``) returns, with the module's arrays:
      ``cell.step(memcell_params(...), carry, x)`` equals the module's output.
    """
    if isinstance(module, _CellBase):
        init = module.memcell_cell().init
    elif isinstance(module, Recurrent):
        init = module.memcell_layer().init
    else:
        raise TypeError(f"module must be a memcell.linen cell or Recurrent, got {type(module).__name__}")
    return convert.from_dict(params, jax.eval_shape(lambda k: init(k, input_size), jax.random.key(0)))


_MERGES = ("concat", "sum", "mean", "mul")


class Recurrent(nn.Module):
    """A sequence module that runs memcell cells with ``memcell.unroll`` (no ``nn.RNN``).

    One or more layers, each unidirectional or bidirectional, built with ``memcell.stack``;
    padding is handled by ``lengths`` (outputs past a sequence's length are zeros and the
    final carry is the sequence's own last one).

    Attributes:
      cell: a memcell ``Cell`` (used for every layer) or a sequence of them (one per layer).
      num_layers: layers when ``cell`` is a single cell.
      bidirectional: read each layer in both directions (the backward one from each
        sequence's own last step), merging outputs with ``merge``.
      merge: ``"concat"``, ``"sum"``, ``"mean"`` or ``"mul"``.
      residual, dropout: as for ``memcell.stack``; dropout runs when ``deterministic=False``
        and takes the ``"dropout"`` rng.
      input_dropout, recurrent_dropout, zoneout, learn_initial_carry: ``memcell.layer``'s
        ``dropout`` (variational, on each layer's inputs), ``recurrent_dropout``, ``zoneout`` and
        ``learn_initial_carry``, for every layer; the random ones run when ``deterministic=False``
        (``"dropout"`` rng). One-directional layers only. With ``learn_initial_carry`` each layer's
        params are ``{"params": ..., "carry": ...}``.
      unroll, remat, backend: as for ``memcell.unroll`` (``backend="auto"``: the default LSTM,
        GRU and RNN run on the fused path, ``memcell.fused``; ``backend="parallel"``: the cells
        whose carry update is linear in the carry, ``memcell.mingru``, ``minlstm``, ``lru``,
        ``rglru`` and ``mlstm``, run on the parallel path, ``memcell.parallel``, with the same params).

    ``__call__(xs, carry=None, *, lengths=None, resets=None, deterministic=True)`` returns
    ``(carry, ys)`` as ``Layer.apply`` does: ``carry`` is a tuple with one entry per layer
    (a ``DirectionPair`` for bidirectional ones). The params are one dict a layer,
    ``layer_0``, ``layer_1``, ... (with ``forward``/``backward`` inside for bidirectional ones).

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> import memcell.linen
      >>> model = memcell.linen.Recurrent(memcell.lstm(8), bidirectional=True)
      >>> xs = jnp.ones((3, 5, 4))
      >>> variables = model.init(jax.random.key(0), xs)
      >>> carry, ys = model.apply(variables, xs, lengths=jnp.array([5, 2, 0]))
      >>> ys.shape, type(carry[0]).__name__
      ((3, 5, 16), 'DirectionPair')
    """

    cell: PureCell | SequenceOf[PureCell]
    num_layers: int = 1
    bidirectional: bool = False
    merge: str = "concat"
    residual: bool = False
    dropout: float = 0.0
    unroll: int = 1
    remat: bool | str | int = False  # a memcell.unroll policy: False, True/"step", "sqrt" or k
    backend: str = "reference"
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    zoneout: Any = 0.0
    learn_initial_carry: bool = False

    @nn.nowrap
    def memcell_layer(self):
        """The memcell ``Layer`` (a ``memcell.stack``) this module applies."""
        if isinstance(self.cell, PureCell):
            check_positive_int("num_layers", self.num_layers)
            cells = (self.cell,) * self.num_layers
        else:
            cells = tuple(self.cell)
            if not cells or not all(isinstance(c, PureCell) for c in cells):
                raise TypeError(f"cell must be a memcell.Cell or a non-empty sequence of them, got {self.cell!r}")
            if self.num_layers != 1 and self.num_layers != len(cells):
                raise ValueError(f"num_layers={self.num_layers} contradicts the {len(cells)} cells given")
        if self.merge not in _MERGES:
            raise ValueError(f"merge must be one of {list(_MERGES)}, got {self.merge!r}")
        kw = dict(unroll=self.unroll, remat=self.remat, backend=self.backend)
        options = dict(dropout=self.input_dropout, recurrent_dropout=self.recurrent_dropout, zoneout=self.zoneout,
                       learn_initial_carry=self.learn_initial_carry)
        if check_bool("bidirectional", self.bidirectional):
            used = [("input_dropout" if k == "dropout" else k) for k, v in options.items() if v]
            if used:
                raise ValueError(f"{used[0]} is available for one-directional layers only, not with bidirectional=True")
            layers = [bidirectional_layer(c, c, merge=self.merge, **kw) for c in cells]
        else:
            layers = [as_layer(c, **kw, **options) for c in cells]
        return stack(layers, residual=self.residual, dropout=self.dropout)

    @nn.compact
    def __call__(self, xs, carry=None, *, lengths=None, resets=None, deterministic: bool = True):
        """Runs the layers over ``xs: [*b, T, D]``; returns ``(carry, ys)``."""
        check_inputs(xs)
        if xs.ndim < 2:
            raise ValueError(f"xs must have shape [..., T, D] (time, then features), got shape {tuple(xs.shape)}")
        lyr = self.memcell_layer()
        d = xs.shape[-1]
        template = jax.eval_shape(lambda k: lyr.init(k, d), jax.random.key(0))
        stored = {}
        for i in range(len(template)):
            name = f"layer_{i}"
            # Layer i's init depends on the sizes before it only, so each layer's init is
            # taken from the whole stack's init with that key.
            stored[name] = self.param(name, lambda key, i=i: convert.to_dict(lyr.init(key, d)[i]))
        params = convert.from_dict(stored, template, path=self.name or "Recurrent")
        random = self.dropout or self.input_dropout or self.recurrent_dropout or self.zoneout
        key = None if deterministic or not random else self.make_rng("dropout")
        return lyr.apply(params, xs, carry, lengths=lengths, resets=resets, key=key)
