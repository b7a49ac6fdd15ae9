"""memcell cells as ``flax.nnx`` modules.

``LSTM``, ``GRU`` and ``RNN`` are ``nnx.RNNCellBase`` cells that go where ``nnx.LSTMCell``
/ ``nnx.OptimizedLSTMCell``, ``nnx.GRUCell`` and ``nnx.SimpleCell`` go: inside ``nnx.RNN``
(``seq_lengths``, ``reverse``, ``keep_order``, ``return_carry``) and ``nnx.Bidirectional``,
with the same constructor shape ``(in_features, hidden_features, *, rngs)`` and Flax's carry
layout (the LSTM's is ``(c, h)``). ``Cell`` wraps any memcell cell factory, with memcell's
carry.

Each field of the memcell params is an ``nnx.Param`` attribute of the same name (``w_x``,
``w_h``, ``b``, ...); ``memcell_params()`` returns the NamedTuple, and the module's output
equals ``cell.step`` on it bit for bit.
"""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

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
from memcell.types import Array, Cell as PureCell, PyTree

__all__ = ["GRU", "LRU", "LSTM", "MLSTM", "RGLRU", "RNN", "SLSTM", "Cell", "MinGRU", "MinLSTM"]


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


class _CellBase(nnx.RNNCellBase):
    """Shared logic: params from ``cell.init``, one ``nnx.Param`` per field, ``cell.step`` on call."""

    def _setup(self, cell: PureCell, in_features: int, rngs: nnx.Rngs, carry_init: Callable | None,
               learn_initial_carry: bool = False) -> None:
        in_features = check_positive_int("in_features", in_features)
        learn_initial_carry = check_bool("learn_initial_carry", learn_initial_carry)
        if learn_initial_carry and carry_init is not None:
            raise ValueError("learn_initial_carry=True learns the initial carry, so carry_init must be None")
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs must be an nnx.Rngs, got {type(rngs).__name__}")
        self.cell = cell
        self.in_features = in_features
        self.carry_init = carry_init
        params = cell.init(rngs.params(), in_features)
        # The params' structure with ints for leaves (None fields kept): it says how to rebuild
        # the NamedTuple from the attributes, and as plain ints it stays static.
        self._structure = jax.tree.map(lambda _: 0, params)
        tree = convert.to_dict(params)
        if not isinstance(tree, dict):  # params that are a single array
            tree = {"params": tree}
        self._names = tuple(tree)
        for name, value in tree.items():
            if hasattr(self, name):
                raise ValueError(f"the cell's params may not have a field named {name!r}: the module uses that name")
            if isinstance(value, dict):
                setattr(self, name, nnx.data(jax.tree.map(nnx.Param, value)))
            else:
                setattr(self, name, nnx.Param(value))
        # A learnt initial carry: one nnx.Param a carry leaf, without batch axes, started at the
        # cell's own initial carry; initialize_carry broadcasts it over the batch.
        self.carry0 = nnx.data(jax.tree.map(nnx.Param, cell.initial_carry(params))) if learn_initial_carry else None

    def memcell_params(self) -> PyTree:
        """The params as memcell's NamedTuple (the current values of the ``nnx.Param``s)."""
        stored = {
            name: jax.tree.map(lambda v: v[...], getattr(self, name), is_leaf=_is_var) for name in self._names
        }
        if self._names == ("params",) and not isinstance(convert.to_dict(self._structure), dict):
            stored = stored["params"]
        return convert.from_dict(stored, self._structure, path=type(self).__name__)

    def memcell_cell(self) -> PureCell:
        """The pure memcell ``Cell`` this module runs."""
        return self.cell

    def _to_memcell_carry(self, carry):
        return carry

    def _from_memcell_carry(self, carry):
        return carry

    def __call__(self, carry, inputs: Array) -> tuple[Any, Array]:
        """One step: ``(carry, inputs[*b, d]) -> (carry, y[*b, h])``, ``cell.step`` on the module's params."""
        check_inputs(inputs)
        if inputs.shape[-1] != self.in_features:
            raise ValueError(
                f"inputs must have {self.in_features} features (in_features) on the last axis, "
                f"got shape {tuple(inputs.shape)}"
            )
        mem_carry = self._to_memcell_carry(carry)
        params = self.memcell_params()
        check_carry_structure(self.cell, params, mem_carry)
        new, y = self.cell.step(params, mem_carry, inputs)
        return self._from_memcell_carry(new), y

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: nnx.Rngs | nnx.RngStream | None = None,
        carry_init: Callable | None = None,
    ):
        """The initial carry for inputs of ``input_shape = (*batch, features)``.

        Zeros unless a ``carry_init`` is given (here or to the constructor); it is then
        called on each carry leaf with a key drawn from ``rngs`` (its ``carry`` stream). With
        ``learn_initial_carry=True``, the learnt carry (the ``carry0`` params) broadcast over the batch.
        """
        shape = check_input_shape(input_shape)
        batch = shape[:-1]
        params = self.memcell_params()
        struct = jax.eval_shape(lambda p: self.cell.initial_carry(p, batch), params)
        carry_init = carry_init if carry_init is not None else self.carry_init
        if self.carry0 is not None:
            learnt = jax.tree.map(lambda v: v[...], self.carry0, is_leaf=_is_var)
            carry = jax.tree.map(lambda v, s: jnp.broadcast_to(v, s.shape).astype(s.dtype), learnt, struct)
        elif carry_init is None:
            carry = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), struct)
        else:
            if isinstance(rngs, nnx.Rngs):
                rngs = rngs.carry
            if rngs is None:
                raise ValueError("rngs must be given to initialize_carry when a carry_init is used")
            carry = jax.tree.map(lambda s: carry_init(rngs(), s.shape, s.dtype), struct)
        return self._from_memcell_carry(carry)

    @property
    def num_feature_axes(self) -> int:
        return 1


class Cell(_CellBase):
    """Any memcell cell as an ``nnx`` RNN cell, with memcell's carry.

    Args:
      cell_factory: a function ``hidden_size -> memcell.Cell`` (``memcell.gru``, or a
        ``functools.partial`` of one with options).
      in_features: input features.
      hidden_features: hidden units.
      carry_init: optional initialiser of the carry's leaves (default zeros).
      learn_initial_carry: the initial carry is a param (``carry0``, one ``nnx.Param`` a carry
        leaf, started at the cell's initial carry) that ``initialize_carry`` broadcasts over the batch.
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    Example:
      >>> import functools, jax.numpy as jnp, memcell
      >>> from flax import nnx
      >>> import memcell.nnx
      >>> cell = memcell.nnx.Cell(functools.partial(memcell.lstm, layer_norm=True), 3, 8, rngs=nnx.Rngs(0))
      >>> nnx.RNN(cell)(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """

    def __init__(self, cell_factory, in_features: int, hidden_features: int, *, carry_init=None,
                 learn_initial_carry: bool = False, rngs: nnx.Rngs):
        if not callable(cell_factory):
            raise TypeError(f"cell_factory must be a callable hidden_size -> memcell.Cell, got {cell_factory!r}")
        cell = cell_factory(hidden_features)
        if not isinstance(cell, PureCell):
            raise TypeError(f"cell_factory must return a memcell.Cell, got {type(cell).__name__}")
        self.hidden_features = hidden_features
        self._setup(cell, in_features, rngs, carry_init, learn_initial_carry)


class LSTM(_CellBase):
    """memcell's LSTM as a drop-in for ``nnx.LSTMCell`` / ``nnx.OptimizedLSTMCell``.

    Same constructor shape, call, ``initialize_carry`` and carry ``(c, h)``. The params are
    memcell's ``w_x [d, 4h]``, ``w_h [h, 4h]``, ``b [4h]`` (gates ``i, f, g, o``); the forget
    bias starts at ``forget_bias`` (memcell's 1.0, not Flax's 0.0). With ``proj_size=p`` it is
    PyTorch's ``LSTM(proj_size=p)`` (LSTMP, which Flax lacks): carry ``(c, h)`` with ``h`` and
    the outputs of ``p`` units, and a param ``w_hr [h, p]`` (``w_h`` is ``[p, 4h]``).

    Args:
      in_features, hidden_features: sizes.
      forget_bias: initial forget-gate bias (None: 1.0).
      proj_size: project ``h`` and the outputs to this many units (fewer than
        ``hidden_features``); None or 0: no projection.
      kernel_init, recurrent_kernel_init: initialisers of ``w_x`` and ``w_h`` (names or callables).
      dtype: computation dtype of the matmuls; param_dtype: dtype of the params.
      carry_init: optional initialiser of ``c`` and ``h`` (default zeros).
      learn_initial_carry: learn the initial carry, as for ``Cell``.
      rngs: ``nnx.Rngs``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import memcell.nnx
      >>> model = nnx.RNN(memcell.nnx.LSTM(3, 16, rngs=nnx.Rngs(0)), return_carry=True)
      >>> (c, h), ys = model(jnp.ones((4, 10, 3)), seq_lengths=jnp.array([10, 7, 3, 1]))
      >>> ys.shape, h.shape
      ((4, 10, 16), (4, 16))
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        forget_bias: float | None = None,
        proj_size: int | None = None,
        kernel_init="lecun_normal",
        recurrent_kernel_init="orthogonal",
        dtype=None,
        param_dtype=jnp.float32,
        carry_init=None,
        learn_initial_carry: bool = False,
        rngs: nnx.Rngs,
    ):
        self.hidden_features = hidden_features
        cell = lstm(
            hidden_features,
            forget_bias=forget_bias,
            proj_size=proj_size,
            kernel_init=kernel_init,
            recurrent_init=recurrent_kernel_init,
            param_dtype=param_dtype,
            dtype=dtype,
        )
        self._setup(cell, in_features, rngs, carry_init, learn_initial_carry)

    def _to_memcell_carry(self, carry):
        return lstm_carry_from_flax(carry)

    def _from_memcell_carry(self, carry):
        return lstm_carry_to_flax(carry)


class _SingleStateCell(_CellBase):
    """Cells whose Flax carry is the state array alone (``GRUCell``, ``SimpleCell``; memcell's one-field carries)."""

    _carry_cls = None  # GRUCarry, RNNCarry, ..., set by subclasses

    def _to_memcell_carry(self, carry):
        return single_carry_from_flax(self._carry_cls, carry)

    def _from_memcell_carry(self, carry):
        return carry[0]  # the carry NamedTuple's one field (h; the LRU's x)


class GRU(_SingleStateCell):
    """memcell's GRU as a drop-in for ``nnx.GRUCell`` (carry ``h``).

    Unlike ``nnx.GRUCell`` it has the recurrent bias ``b_hn`` inside ``r * (h U_n + b_hn)``,
    as PyTorch and ``flax.linen.GRUCell`` do. Args as for ``LSTM`` (without ``forget_bias``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import memcell.nnx
      >>> rngs = nnx.Rngs(0)
      >>> bi = nnx.Bidirectional(nnx.RNN(memcell.nnx.GRU(3, 8, rngs=rngs)), nnx.RNN(memcell.nnx.GRU(3, 8, rngs=rngs)))
      >>> bi(jnp.ones((2, 6, 3))).shape
      (2, 6, 16)
    """

    _carry_cls = GRUCarry

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        kernel_init="lecun_normal",
        recurrent_kernel_init="orthogonal",
        dtype=None,
        param_dtype=jnp.float32,
        carry_init=None,
        learn_initial_carry: bool = False,
        rngs: nnx.Rngs,
    ):
        self.hidden_features = hidden_features
        cell = gru(
            hidden_features,
            kernel_init=kernel_init,
            recurrent_init=recurrent_kernel_init,
            param_dtype=param_dtype,
            dtype=dtype,
        )
        self._setup(cell, in_features, rngs, carry_init, learn_initial_carry)


class RNN(_SingleStateCell):
    """memcell's Elman RNN as a drop-in for ``nnx.SimpleCell`` (carry ``h``).

    Args as for ``LSTM``, plus ``activation`` (``"tanh"`` or ``"relu"``) instead of ``forget_bias``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import memcell.nnx
      >>> cell = memcell.nnx.RNN(3, 4, rngs=nnx.Rngs(0))
      >>> carry = cell.initialize_carry((2, 3))
      >>> carry, y = cell(carry, jnp.ones((2, 3)))
      >>> y.shape
      (2, 4)
    """

    _carry_cls = RNNCarry

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        activation: str = "tanh",
        kernel_init="lecun_normal",
        recurrent_kernel_init="orthogonal",
        dtype=None,
        param_dtype=jnp.float32,
        carry_init=None,
        learn_initial_carry: bool = False,
        rngs: nnx.Rngs,
    ):
        self.hidden_features = hidden_features
        cell = rnn(
            hidden_features,
            activation=activation,
            kernel_init=kernel_init,
            recurrent_init=recurrent_kernel_init,
            param_dtype=param_dtype,
            dtype=dtype,
        )
        self._setup(cell, in_features, rngs, carry_init, learn_initial_carry)


class MinGRU(_SingleStateCell):
    """memcell's minGRU (``memcell.mingru``, Feng et al. 2024) as an ``nnx`` RNN cell.

    Goes inside ``nnx.RNN`` / ``nnx.Bidirectional`` like ``GRU``. The carry is the hidden-state
    array ``h: [*b, hidden_features]`` itself (``MinGRUCarry(h)`` unwrapped, as ``nnx.GRUCell``
    carries); the params are ``w_x [d, 2h]`` and ``b [2h]``.

    Args:
      in_features, hidden_features: sizes.
      log_space: the paper's log-space variant, as for ``memcell.mingru``.
      kernel_init: ``"fan_in_uniform"`` (default) or any initialiser ``memcell.mingru`` takes.
      dtype, param_dtype, carry_init, learn_initial_carry, rngs: as for ``LSTM``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import memcell.nnx
      >>> import jax
      >>> def run(xs, lengths):   # traced by jax.eval_shape below: shapes only, nothing computed
      ...     model = nnx.RNN(memcell.nnx.MinGRU(3, 8, log_space=True, rngs=nnx.Rngs(0)))
      ...     return model(xs, seq_lengths=lengths)
      >>> jax.eval_shape(run, jnp.ones((2, 5, 3)), jnp.array([5, 2])).shape
      (2, 5, 8)
    """

    _carry_cls = MinGRUCarry

    def __init__(self, in_features: int, hidden_features: int, *, log_space: bool = False,
                 kernel_init="fan_in_uniform", dtype=None, param_dtype=jnp.float32, carry_init=None,
                 learn_initial_carry: bool = False, rngs: nnx.Rngs):
        self.hidden_features = hidden_features
        cell = mingru(hidden_features, log_space=log_space, kernel_init=kernel_init, param_dtype=param_dtype,
                      dtype=dtype)
        self._setup(cell, in_features, rngs, carry_init, learn_initial_carry)


class MinLSTM(_SingleStateCell):
    """memcell's minLSTM (``memcell.minlstm``, Feng et al. 2024) as an ``nnx`` RNN cell.

    Carry: the hidden-state array ``h`` (``MinLSTMCarry(h)`` unwrapped). Params: ``w_x [d, 3h]``,
    ``b [3h]``. Args as for ``MinGRU``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import memcell.nnx
      >>> import jax
      >>> def run(xs):   # traced by jax.eval_shape below: shapes only, nothing computed
      ...     return nnx.RNN(memcell.nnx.MinLSTM(3, 8, rngs=nnx.Rngs(0)), return_carry=True)(xs)
      >>> h, ys = jax.eval_shape(run, jnp.ones((2, 5, 3)))
      >>> h.shape, ys.shape
      ((2, 8), (2, 5, 8))
    """

    _carry_cls = MinLSTMCarry

    def __init__(self, in_features: int, hidden_features: int, *, log_space: bool = False,
                 kernel_init="fan_in_uniform", dtype=None, param_dtype=jnp.float32, carry_init=None,
                 learn_initial_carry: bool = False, rngs: nnx.Rngs):
        self.hidden_features = hidden_features
        cell = minlstm(hidden_features, log_space=log_space, kernel_init=kernel_init, param_dtype=param_dtype,
                       dtype=dtype)
        self._setup(cell, in_features, rngs, carry_init, learn_initial_carry)


class LRU(_SingleStateCell):
    """memcell's linear recurrent unit (``memcell.lru``, Orvieto et al. 2023) as an ``nnx`` RNN cell.

    The outputs have the input's width ``in_features`` (``y = Re(x C) + D u``), not
    ``hidden_features``; the carry is the complex state array ``x: [*b, hidden_features]``
    (complex64; ``LRUCarry(x)`` unwrapped). The params are all real ``nnx.Param``s (``nu_log``,
    ``theta_log``, ``gamma_log``, ``b_re``, ``b_im``, ``c_re``, ``c_im``, ``d``).

    Args:
      in_features: input (and output) features.
      hidden_features: complex state units.
      r_min, r_max, max_phase: the ring initialisation, as for ``memcell.lru``.
      dtype, param_dtype, carry_init, learn_initial_carry, rngs: as for ``LSTM`` (a learnt
        initial carry is a complex ``nnx.Param``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import memcell.nnx
      >>> import jax
      >>> def run(xs):   # traced by jax.eval_shape below: shapes only, nothing computed
      ...     cell = memcell.nnx.LRU(3, 16, r_min=0.9, r_max=0.999, rngs=nnx.Rngs(0))
      ...     return nnx.RNN(cell, return_carry=True)(xs)
      >>> x, ys = jax.eval_shape(run, jnp.ones((2, 5, 3)))
      >>> ys.shape, x.shape, x.dtype
      ((2, 5, 3), (2, 16), dtype('complex64'))
    """

    _carry_cls = LRUCarry

    def __init__(self, in_features: int, hidden_features: int, *, r_min: float = 0.0, r_max: float = 1.0,
                 max_phase: float = 2 * math.pi, dtype=None, param_dtype=jnp.float32, carry_init=None,
                 learn_initial_carry: bool = False, rngs: nnx.Rngs):
        self.hidden_features = hidden_features
        cell = lru(hidden_features, r_min=r_min, r_max=r_max, max_phase=max_phase, param_dtype=param_dtype,
                   dtype=dtype)
        self._setup(cell, in_features, rngs, carry_init, learn_initial_carry)


class RGLRU(_SingleStateCell):
    """memcell's RG-LRU (``memcell.rglru``, Griffin, De et al. 2024) as an ``nnx`` RNN cell.

    Carry: the hidden-state array ``h`` (``RGLRUCarry(h)`` unwrapped). Params: ``w_gates [h, 2h]``,
    ``b_gates [2h]``, ``lam [h]`` and, when ``in_features != hidden_features`` (or
    ``input_projection=True``), the input projection ``w_in [d, h]``.

    Args:
      in_features, hidden_features: sizes.
      c_scale, r_min, r_max, input_projection: as for ``memcell.rglru``.
      kernel_init, dtype, param_dtype, carry_init, learn_initial_carry, rngs: as for ``LSTM``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import memcell.nnx
      >>> cell = nnx.eval_shape(lambda: memcell.nnx.RGLRU(3, 8, rngs=nnx.Rngs(0)))   # shapes only
      >>> {k: v.shape for k, v in sorted(nnx.to_pure_dict(nnx.state(cell, nnx.Param)).items())}
      {'b_gates': (16,), 'lam': (8,), 'w_gates': (8, 16), 'w_in': (3, 8)}
    """

    _carry_cls = RGLRUCarry

    def __init__(self, in_features: int, hidden_features: int, *, c_scale: float = 8.0, r_min: float = 0.9,
                 r_max: float = 0.999, input_projection: bool | None = None, kernel_init="lecun_normal",
                 dtype=None, param_dtype=jnp.float32, carry_init=None, learn_initial_carry: bool = False,
                 rngs: nnx.Rngs):
        self.hidden_features = hidden_features
        cell = rglru(hidden_features, c_scale=c_scale, r_min=r_min, r_max=r_max,
                     input_projection=input_projection, kernel_init=kernel_init, param_dtype=param_dtype,
                     dtype=dtype)
        self._setup(cell, in_features, rngs, carry_init, learn_initial_carry)


class SLSTM(_CellBase):
    """memcell's sLSTM (``memcell.slstm``, xLSTM, Beck et al. 2024) as an ``nnx`` RNN cell.

    The carry is memcell's ``SLSTMCarry(c, n, m, h)`` (four states with no Flax counterpart, so
    they keep their names); params ``w_x``, ``w_h`` (block-diagonal by head), ``b``.

    Args:
      in_features, hidden_features: sizes.
      num_heads, forget_gate, forget_bias, recurrent_scale: as for ``memcell.slstm``.
      kernel_init, recurrent_kernel_init, dtype, param_dtype, carry_init, learn_initial_carry, rngs:
        as for ``LSTM``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import memcell.nnx
      >>> def run(xs):   # traced by jax.eval_shape below: shapes only, nothing computed
      ...     return nnx.RNN(memcell.nnx.SLSTM(3, 8, num_heads=2, rngs=nnx.Rngs(0)), return_carry=True)(xs)
      >>> carry, ys = jax.eval_shape(run, jnp.ones((2, 5, 3)))
      >>> type(carry).__name__, ys.shape
      ('SLSTMCarry', (2, 5, 8))
    """

    def __init__(self, in_features: int, hidden_features: int, *, num_heads: int = 1, forget_gate: str = "sigmoid",
                 forget_bias=1.0, recurrent_scale: float = 1.0, kernel_init="lecun_normal",
                 recurrent_kernel_init="orthogonal", dtype=None, param_dtype=jnp.float32, carry_init=None,
                 learn_initial_carry: bool = False, rngs: nnx.Rngs):
        self.hidden_features = hidden_features
        cell = slstm(hidden_features, num_heads=num_heads, forget_gate=forget_gate, forget_bias=forget_bias,
                     recurrent_scale=recurrent_scale, kernel_init=kernel_init, recurrent_init=recurrent_kernel_init,
                     param_dtype=param_dtype, dtype=dtype)
        self._setup(cell, in_features, rngs, carry_init, learn_initial_carry)


class MLSTM(_CellBase):
    """memcell's mLSTM (``memcell.mlstm``, xLSTM, Beck et al. 2024) as an ``nnx`` RNN cell.

    The carry is memcell's ``MLSTMCarry(C, n, m)`` (matrix memory ``C: [*b, heads, dk, dv]``).

    Args:
      in_features, hidden_features: sizes (``dk = dv = hidden_features / num_heads``).
      num_heads, forget_bias: as for ``memcell.mlstm``.
      kernel_init, dtype, param_dtype, carry_init, learn_initial_carry, rngs: as for ``LSTM``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import memcell.nnx
      >>> def run(xs):   # traced by jax.eval_shape below: shapes only, nothing computed
      ...     return nnx.RNN(memcell.nnx.MLSTM(3, 8, num_heads=2, rngs=nnx.Rngs(0)), return_carry=True)(xs)
      >>> carry, ys = jax.eval_shape(run, jnp.ones((2, 5, 3)))
      >>> carry.C.shape, ys.shape
      ((2, 2, 4, 4), (2, 5, 8))
    """

    def __init__(self, in_features: int, hidden_features: int, *, num_heads: int = 1, forget_bias=(3.0, 6.0),
                 kernel_init="lecun_normal", dtype=None, param_dtype=jnp.float32, carry_init=None,
                 learn_initial_carry: bool = False, rngs: nnx.Rngs):
        self.hidden_features = hidden_features
        cell = mlstm(hidden_features, num_heads=num_heads, forget_bias=forget_bias, kernel_init=kernel_init,
                     param_dtype=param_dtype, dtype=dtype)
        self._setup(cell, in_features, rngs, carry_init, learn_initial_carry)
