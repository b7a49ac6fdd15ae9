"""The LSTM with memory cell, input, forget and output gates, and its variants."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from memcell.cells import _common as c
from memcell.types import Array, Cell, CellSpec

_LN_EPS = 1e-5


class LSTMNorm(NamedTuple):
    """Layer-norm gains and biases of the layer-normalised LSTM (Ba et al. 2016)."""

    x_scale: Array  # [g] gain of LN(x W), normalised per gate block
    h_scale: Array  # [g] gain of LN(h U), normalised per gate block
    c_scale: Array  # [h] gain of LN(c) before the output activation
    c_bias: Array  # [h]


class LSTMParams(NamedTuple):
    """LSTM params. Gate blocks are fused along the last axis of ``w_x``, ``w_h``, ``b`` in
    the order ``i, f, g, o`` (PyTorch's), leaving out the blocks a variant has no use for."""

    w_x: Array  # [d, g]
    w_h: Array  # [h, g]
    b: Array  # [g]
    p_i: Array | None = None  # [h] peephole c -> i (diagonal), with peephole=True
    p_f: Array | None = None  # [h] peephole c -> f
    p_o: Array | None = None  # [h] peephole c' -> o
    norm: LSTMNorm | None = None  # with layer_norm=True
    w_hr: Array | None = None  # [h, p] output projection, with proj_size=p (then w_h is [p, g])


class LSTMCarry(NamedTuple):
    h: Array  # [*b, h] hidden output ([*b, p] with proj_size=p)
    c: Array  # [*b, h] memory cell


@dataclasses.dataclass(frozen=True)
class LSTMSpec(CellSpec):
    """What ``memcell.lstm`` declares for fast paths: the options its step was built with."""

    peephole: bool = False
    cifg: bool = False
    layer_norm: bool = False
    input_gate: bool = True
    forget_gate: bool = True
    output_gate: bool = True
    input_activation: bool = True
    output_activation: bool = True
    proj_size: int | None = None
    gate_fn: str | None = "sigmoid"  # None: a user's function, which no fast path computes
    activation_fn: str | None = "tanh"


# Greff et al. 2017, "LSTM: A Search Space Odyssey": their "vanilla" LSTM has peepholes;
# each variant removes or changes one component.
LSTM_VARIANTS: dict[str, dict] = {
    "vanilla": dict(peephole=True),
    "NIG": dict(peephole=True, input_gate=False),
    "NFG": dict(peephole=True, forget_gate=False),
    "NOG": dict(peephole=True, output_gate=False),
    "NIAF": dict(peephole=True, input_activation=False),
    "NOAF": dict(peephole=True, output_activation=False),
    "NP": dict(),
    "CIFG": dict(peephole=True, cifg=True),
}


def _layer_norm(z: Array, n_blocks: int, scale: Array, bias: Array | None = None) -> Array:
    """Normalises each of ``n_blocks`` gate blocks of the last axis on its own."""
    shape = z.shape
    z = z.reshape(shape[:-1] + (n_blocks, shape[-1] // n_blocks))
    mean = z.mean(-1, keepdims=True)
    var = jnp.square(z - mean).mean(-1, keepdims=True)
    z = ((z - mean) * jax.lax.rsqrt(var + _LN_EPS)).reshape(shape)
    z = z * scale
    return z if bias is None else z + bias


def lstm(
    hidden_size: int,
    *,
    forget_bias: float | None = None,
    init: str = "default",
    max_timescale: float | None = None,
    peephole: bool = False,
    cifg: bool = False,
    layer_norm: bool = False,
    input_gate: bool = True,
    forget_gate: bool = True,
    output_gate: bool = True,
    input_activation: bool = True,
    output_activation: bool = True,
    proj_size: int | None = None,
    gate_fn=jax.nn.sigmoid,
    activation_fn=jnp.tanh,
    kernel_init="lecun_normal",
    recurrent_init="orthogonal",
    bias_init=None,
    recurrent_scale: float = 1.0,
    param_dtype=jnp.float32,
    dtype=None,
) -> Cell:
    """The LSTM (Hochreiter and Schmidhuber 1997) with forget gate (Gers et al. 2000).

    Equations, for ``z = x W + h U + b`` split into gate blocks::

        i  = sigmoid(z_i + p_i * c)        input gate     (1 without it; 1 - f with cifg)
        f  = sigmoid(z_f + p_f * c)        forget gate    (1 without it)
        g  = tanh(z_g)                     cell input     (z_g without input_activation)
        c' = f * c + i * g                 memory cell
        o  = sigmoid(z_o + p_o * c')       output gate    (1 without it)
        h' = o * tanh(c')                  hidden output  (o * c' without output_activation)

    The peephole terms ``p * c`` exist only with ``peephole=True``. With ``layer_norm=True``,
    ``z = LN(x W) + LN(h U) + b`` (each gate block normalised alone) and ``tanh(c')`` becomes
    ``tanh(LN(c'))`` (Ba et al. 2016). With ``proj_size=p`` (the LSTMP of Sak et al. 2014,
    PyTorch's ``proj_size``) the hidden output is projected to ``p`` units, and the recurrent
    matmul reads the projected ``h`` (``U: [p, g]``)::

        h' = (o * tanh(c')) W_hr           W_hr: [h, p], so h': [p] while c': [h]

    The step returns ``(LSTMCarry(h', c'), h')``.

    Args:
      hidden_size: number of hidden units ``h``.
      forget_bias: initial forget-gate bias (default 1.0, Jozefowicz et al. 2015).
      init: ``"default"`` or ``"chrono"`` (Tallec and Ollivier 2018: ``b_f ~ log U(1,
        max_timescale - 1)`` and ``b_i = -b_f``, so forget gates start close to 1 with
        memory timescales spread up to ``max_timescale`` steps).
      max_timescale: the longest dependency expected, in steps; required by chrono init.
      peephole: diagonal peephole connections from the memory cell to the gates.
      cifg: coupled input and forget gate, ``i = 1 - f``.
      layer_norm: layer-normalised gates and cell.
      input_gate, forget_gate, output_gate: ``False`` fixes that gate at 1 (the NIG, NFG and
        NOG variants of Greff et al.); its weights are not allocated.
      input_activation, output_activation: ``False`` removes the tanh on ``g`` or on ``c'``
        (the NIAF and NOAF variants). ``LSTM_VARIANTS`` names all of Greff et al.'s variants.
      proj_size: ``p`` with ``0 < p < hidden_size`` projects the hidden output to ``p`` units
        (``w_hr: [h, p]``, carry ``h: [p]``, outputs ``[p]``); None or 0 (PyTorch's default):
        no projection. It composes with every other option (peepholes and layer norm read
        ``c``, which keeps ``h`` units); the fused path does not implement it and falls back.
      gate_fn, activation_fn: the functions in place of ``sigmoid`` and ``tanh`` above (Flax's
        options); with others the fast paths name the option and the cell runs the reference path.
      bias_init: None (zeros, and ``forget_bias`` on ``f``) or an initialiser of each gate block of
        ``b`` (Flax's ``bias_init``), the ``f`` block included unless ``forget_bias`` is given.
      kernel_init, recurrent_init, recurrent_scale: as for ``memcell.rnn``; each gate block is
        initialised on its own. ``w_hr`` sits inside the recurrence and is drawn with
        ``recurrent_init`` (orthogonal: orthonormal columns; ``recurrent_scale`` scales ``w_h`` only).
      param_dtype: dtype of the params.
      dtype: computation dtype of the matmuls (None: that of params and inputs); bfloat16
        accumulates in float32, and the carry stays float32.

    Returns:
      A ``Cell`` with ``LSTMParams`` and ``LSTMCarry``.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.lstm(16, forget_bias=1.0)
      >>> params = cell.init(jax.random.key(0), input_size=4)
      >>> params.w_x.shape, params.w_h.shape   # gates i, f, g, o fused
      ((4, 64), (16, 64))
      >>> carry, ys = memcell.unroll(cell, params, jnp.ones((2, 10, 4)))   # a batch of 2
      >>> ys.shape, carry.c.shape
      ((2, 10, 16), (2, 16))
      >>> cell = memcell.lstm(16, proj_size=4)              # LSTMP: outputs and carry h of 4 units
      >>> params = cell.init(jax.random.key(0), input_size=4)
      >>> params.w_h.shape, params.w_hr.shape
      ((4, 64), (16, 4))
      >>> carry, ys = memcell.unroll(cell, params, jnp.ones((2, 10, 4)))
      >>> ys.shape, carry.h.shape, carry.c.shape
      ((2, 10, 4), (2, 4), (2, 16))
    """
    hidden_size = c.check_positive_int("hidden_size", hidden_size)
    c.check_choice("init", init, {"default", "chrono"})
    flags = dict(peephole=peephole, cifg=cifg, layer_norm=layer_norm, input_gate=input_gate,
                 forget_gate=forget_gate, output_gate=output_gate, input_activation=input_activation,
                 output_activation=output_activation)
    flags = {name: c.check_bool(name, value) for name, value in flags.items()}
    b_init = None if bias_init is None else c.resolve_init("bias_init", bias_init, hidden_size)
    if b_init is not None and init == "chrono":
        raise ValueError("bias_init cannot be set with init='chrono', which sets the gate biases itself")
    # With bias_init and no forget_bias, the forget block is bias_init's too, as in Flax's cells.
    forget_bias = None if b_init is not None and forget_bias is None else _check_init_options(
        init, forget_bias, max_timescale, **flags)
    sigmoid, gate = c.resolve_fn("gate_fn", gate_fn, {"sigmoid": jax.nn.sigmoid})
    tanh, act = c.resolve_fn("activation_fn", activation_fn, {"tanh": jnp.tanh})
    proj_size = _check_proj_size(proj_size, hidden_size)
    options = LSTMSpec(step=None, dtype=c.check_float_dtype("dtype", dtype, allow_none=True), proj_size=proj_size,
                       gate_fn=gate, activation_fn=act, **flags)
    init_fn = _make_init(
        options, hidden_size, init, forget_bias, max_timescale,
        c.resolve_init("kernel_init", kernel_init, hidden_size),
        c.resolve_init("recurrent_init", recurrent_init, hidden_size),
        recurrent_scale, c.check_float_dtype("param_dtype", param_dtype), b_init,
    )

    def initial_carry(params: LSTMParams, batch_shape=()) -> LSTMCarry:
        h = c.zeros_carry(params.w_h, batch_shape)  # w_h: [p or h, g], what h holds
        cell = h if params.w_hr is None else c.zeros_carry(params.w_hr, batch_shape)  # w_hr: [h, p]
        return LSTMCarry(h=h, c=cell)

    step = _make_step(options, sigmoid, tanh)
    return Cell(init_fn, initial_carry, step, dataclasses.replace(options, step=step))


def _check_init_options(scheme, forget_bias, max_timescale, *, cifg, forget_gate, input_gate, **_) -> float:
    """Refuses contradicting init and gate options; returns the forget bias to use."""
    if scheme == "chrono":
        if forget_bias is not None:
            raise ValueError("forget_bias cannot be set with init='chrono', which sets the forget bias itself")
        if max_timescale is None or not max_timescale > 2:
            raise ValueError(f"init='chrono' needs max_timescale > 2 (in steps), got {max_timescale!r}")
        if not forget_gate:
            raise ValueError("init='chrono' initialises the forget gate, so it needs forget_gate=True")
    elif max_timescale is not None:
        raise ValueError("max_timescale is only used with init='chrono'")
    if cifg and not forget_gate:
        raise ValueError("cifg=True couples the input gate to the forget gate, so it needs forget_gate=True")
    if cifg and not input_gate:
        raise ValueError("cifg=True replaces the input gate by 1 - f; input_gate=False contradicts it")
    return 1.0 if forget_bias is None else float(forget_bias)


def _check_proj_size(proj_size, hidden_size: int) -> int | None:
    """None or 0: no projection (None is kept); else an int in ``(0, hidden_size)``, as PyTorch requires."""
    if proj_size is None or (isinstance(proj_size, (int, np.integer)) and not isinstance(proj_size, bool)
                             and proj_size == 0):
        return None
    if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)) or not 0 < proj_size < hidden_size:
        raise ValueError(
            f"proj_size must be None, 0 (no projection) or an int in [1, hidden_size={hidden_size}) "
            f"(a projection to fewer units than the cell has, as PyTorch requires), got {proj_size!r}"
        )
    return int(proj_size)


def _gates(spec: LSTMSpec) -> tuple[str, ...]:
    """The gate blocks a variant has weights for, in PyTorch's order ``i, f, g, o``."""
    has_i = spec.input_gate and not spec.cifg
    return tuple(name for name, on in (("i", has_i), ("f", spec.forget_gate), ("g", True), ("o", spec.output_gate)) if on)


def _make_init(spec: LSTMSpec, H: int, scheme: str, forget_bias: float, max_timescale, k_init, r_init,
               recurrent_scale: float, param_dtype, b_init=None):
    gates = _gates(spec)
    n = len(gates)

    P = H if spec.proj_size is None else spec.proj_size  # the units h (what w_h reads) has

    def init(key, input_size: int) -> LSTMParams:
        input_size = c.check_input_size(input_size)
        kx, kh, kb = jax.random.split(key, 3)
        b = dict(zip(gates, jnp.split(c.bias_blocks(kb, b_init, H, n, param_dtype), n)))
        if "f" in gates and forget_bias is not None:
            if scheme == "chrono":
                b["f"] = jnp.log(jax.random.uniform(kb, (H,), param_dtype, 1.0, max_timescale - 1.0))
                if "i" in gates:
                    b["i"] = -b["f"]
            else:
                b["f"] = jnp.full((H,), forget_bias, param_dtype)
        peep = (lambda on: jnp.zeros((H,), param_dtype) if (spec.peephole and on) else None)
        norm = None
        if spec.layer_norm:
            norm = LSTMNorm(
                x_scale=jnp.ones((n * H,), param_dtype),
                h_scale=jnp.ones((n * H,), param_dtype),
                c_scale=jnp.ones((H,), param_dtype),
                c_bias=jnp.zeros((H,), param_dtype),
            )
        return LSTMParams(
            w_x=c.block_matrix(kx, k_init, input_size, H, n, param_dtype),
            w_h=c.block_matrix(kh, r_init, P, H, n, param_dtype, recurrent_scale),
            b=jnp.concatenate([b[name] for name in gates]),
            p_i=peep("i" in gates),
            p_f=peep(spec.forget_gate),
            p_o=peep(spec.output_gate),
            norm=norm,
            w_hr=None if spec.proj_size is None else _projection(key, r_init, H, P, param_dtype),
        )

    return init


def _projection(key, r_init, H: int, P: int, param_dtype) -> Array:
    """``w_hr: [h, p]``, drawn in float32 at least (as ``c.block_matrix`` does) from its own key."""
    # fold_in leaves the split above, hence the params of an LSTM without projection, unchanged.
    draw_dtype = jnp.promote_types(param_dtype, jnp.float32)
    return r_init(jax.random.fold_in(key, 1), (H, P), draw_dtype).astype(param_dtype)


def _make_step(spec: LSTMSpec, sigmoid=jax.nn.sigmoid, tanh=jnp.tanh):
    gates = _gates(spec)
    n = len(gates)

    def step(params: LSTMParams, carry: LSTMCarry, x: Array) -> tuple[LSTMCarry, Array]:
        zx = c.linear(x, params.w_x, spec.dtype)
        zh = c.linear(carry.h, params.w_h, spec.dtype)
        if params.norm is not None:
            zx = _layer_norm(zx, n, params.norm.x_scale)
            zh = _layer_norm(zh, n, params.norm.h_scale)
        blocks = dict(zip(gates, jnp.split(zx + zh + params.b, n, axis=-1)))
        c_prev = carry.c
        if params.p_f is not None:
            blocks["f"] = blocks["f"] + params.p_f * c_prev
        if params.p_i is not None:
            blocks["i"] = blocks["i"] + params.p_i * c_prev
        f = sigmoid(blocks["f"]) if spec.forget_gate else 1.0
        if spec.cifg:
            i = 1.0 - f
        elif "i" in gates:
            i = sigmoid(blocks["i"])
        else:
            i = 1.0
        g = tanh(blocks["g"]) if spec.input_activation else blocks["g"]
        c_new = f * c_prev + i * g
        if spec.output_gate:
            zo = blocks["o"] if params.p_o is None else blocks["o"] + params.p_o * c_new
            o = sigmoid(zo)
        else:
            o = 1.0
        c_out = c_new if params.norm is None else _layer_norm(c_new, 1, params.norm.c_scale, params.norm.c_bias)
        h_new = o * (tanh(c_out) if spec.output_activation else c_out)
        if params.w_hr is not None:  # LSTMP: the float32 product is projected, accumulating in float32
            h_new = c.linear(h_new, params.w_hr, spec.dtype)
        new = LSTMCarry(h=h_new.astype(carry.h.dtype), c=c_new.astype(carry.c.dtype))
        return new, new.h

    return step
