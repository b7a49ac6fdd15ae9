"""The cuDNN path: ``memcell.unroll(..., backend="cudnn")`` runs the default LSTM through cuDNN.

The call goes through ``jax.experimental.rnn.lstm`` (cuDNN's fused LSTM, forward and backward),
on the weights packed from memcell's ``LSTMParams`` into cuDNN's flat layout (``pack``). It
computes what ``memcell.unroll`` computes for ``memcell.lstm(h)`` with default options: same
params, same shapes, same ``lengths`` and ``reverse`` semantics, zero outputs past each length.

What cuDNN cannot run, and what happens then (``why_not`` says it in words):

- a cell other than the default LSTM (GRU, Elman RNN, any LSTM option: peepholes, layer norm,
  gate ablations), a cell without a spec, packed-sequence ``resets``, any ``remat`` policy;
- dtypes other than float32 (cuDNN's LSTM in JAX is float32 only: no bfloat16, no float64),
  and ``xs`` without time steps;
- ``jax.vmap`` over the unroll (cuDNN's primitive has no batching rule): use leading batch axes.
  Only a vmap outside the unroll's own trace is seen: ``jax.vmap(jax.jit(f))`` traces ``f``
  before batching it, so there cuDNN is chosen and the batching fails on the GPU;
- any platform but a GPU (``jax.default_backend()`` must be ``"gpu"``).

``backend="cudnn"`` raises a ``ValueError`` with the reason; ``backend="auto"`` moves on to the
next path of the platform's order (``memcell.paths``). A length of 0 makes cuDNN fail (jax#17966: the backward
pass fails if any sequence has length 0), so cuDNN is never given one: such rows run one step
whose outputs are masked away, and their final carry is the initial carry, as on every path.

cuDNN is first order only (a ``custom_vjp``): keep the reference for forward-mode and
higher-order derivatives. No GPU was available when this was written, so the cuDNN call itself
has not run yet (tests/test_cudnn.py has a GPU-only test of it); on CPU the tests check everything
around it (packing, lengths, reverse, carries, gradients) by running
``jax.experimental.rnn.lstm_ref``, JAX's reference of the same flat-weight LSTM, in its place.
"""

import jax
import jax.numpy as jnp
from jax.experimental import rnn as jax_rnn

from memcell import _dispatch
from memcell._sequence import flat_batch_size
from memcell.cells import LSTMCarry, LSTMParams, LSTMSpec
from memcell.types import Array, Cell, Frame, Path, PyTree

__all__ = ["PATH", "pack", "unpack", "why_not"]


def pack(directions) -> Array:
    """cuDNN's flat LSTM weights from memcell params, one ``LSTMParams`` per pseudo-layer.

    The layout is ``jax.experimental.rnn``'s: for every pseudo-layer (layer 0 forward, layer 0
    backward if bidirectional, layer 1 forward, ...) ``W_ih [4h, d]`` then ``W_hh [4h, h]``,
    row-major, followed by every pseudo-layer's ``b_ih [4h]`` then ``b_hh [4h]``. The gate
    order is ``i, f, g, o`` in both. memcell's one bias ``b`` goes into ``b_ih``, zeros into
    ``b_hh`` (cuDNN adds them), as ``memcell.convert.to_torch`` does.

    Args:
      directions: a sequence of ``LSTMParams`` of the default LSTM, in pseudo-layer order.

    Returns:
      A 1-D array in the params' dtype, of ``jax.experimental.rnn.get_num_params_in_lstm`` entries.
    """
    directions = list(directions)
    weights = [w for p in directions for w in (p.w_x.T.reshape(-1), p.w_h.T.reshape(-1))]
    biases = [w for p in directions for w in (p.b, jnp.zeros_like(p.b))]
    return jnp.concatenate(weights + biases)


def unpack(weights: Array, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool) -> list:
    """``LSTMParams`` per pseudo-layer from cuDNN's flat weights (the inverse of ``pack``).

    The two biases of each pseudo-layer are summed into memcell's one ``b``. ``weights`` must
    have exactly the size the sizes imply (``memcell.convert.from_cudnn`` checks it by name).

    Returns:
      A list of ``LSTMParams``, one per pseudo-layer, in the weights' dtype.
    """
    W_ih, W_hh, b_ih, b_hh = jax_rnn.unpack_lstm_weights(
        jnp.asarray(weights), input_size, hidden_size, num_layers, bidirectional
    )
    return [LSTMParams(W_ih[i].T, W_hh[i].T, b_ih[i] + b_hh[i]) for i in sorted(W_ih)]


def _platform() -> str:
    """The platform cuDNN would run on (tests replace this to run the CPU stand-in)."""
    return jax.default_backend()


def _kernel(x, h_0, c_0, weights, seq_lengths, *, input_size, hidden_size, num_layers, bidirectional):
    """The one cuDNN call: ``jax.experimental.rnn.lstm``, batch-major, no dropout.

    On CPU the tests replace this with ``jax.experimental.rnn.lstm_ref`` on the unpacked weights
    (same arguments, same results), so everything around it is tested without a GPU.
    """
    return jax_rnn.lstm(
        x, h_0, c_0, weights, seq_lengths, input_size=input_size, hidden_size=hidden_size,
        num_layers=num_layers, dropout=0.0, bidirectional=bidirectional,
    )


def _dtypes_reason(spec: LSTMSpec, params, xs) -> str | None:
    if spec.dtype is not None and jnp.dtype(spec.dtype) != jnp.float32:
        return f"cuDNN's LSTM computes in float32 only, the cell sets dtype={jnp.dtype(spec.dtype)}"
    if params is not None:
        bad = sorted({str(jnp.dtype(x.dtype)) for x in jax.tree.leaves(params)} - {"float32"})
        if bad:
            return f"cuDNN's LSTM takes float32 params only, got {', '.join(bad)}"
    if xs is not None:
        dtype = getattr(xs, "dtype", None)
        if dtype is not None and jnp.dtype(dtype) != jnp.float32:
            return f"cuDNN's LSTM takes float32 inputs only, got xs of dtype {jnp.dtype(dtype)}"
        shape = getattr(xs, "shape", None)
        if shape is not None and len(shape) >= 2 and shape[-2] == 0:
            return "xs has no time steps (T = 0)"
    return None


def _under_vmap(x) -> bool:
    # jax.experimental.rnn registers no batching rule for its cuDNN primitive, and JAX has no
    # public test for a vmap tracer: its class name is the stable, import-free sign.
    return isinstance(x, jax.core.Tracer) and type(x).__name__ == "BatchTracer"


def why_not(cell: Cell, params: PyTree = None, fr: Frame | None = None) -> str | None:
    """Why cuDNN cannot run ``cell`` on this frame (``memcell.unroll(..., backend="cudnn")``), or None.

    Args:
      cell: the ``Cell``; only its declared spec counts (see ``memcell.CellSpec``).
      params: checked for float32 when given (cuDNN computes in float32 only) and for being traced
        by ``jax.vmap``.
      fr: the framed unroll, when known: its inputs (float32, some steps, not under ``jax.vmap``),
        resets and remat policy (cuDNN implements neither).

    Returns:
      A sentence saying why, or None. The platform is checked last: off a GPU the reason is
      ``"cuDNN needs a GPU: jax.default_backend() is 'cpu'"``.

    Example:
      >>> import memcell
      >>> memcell.cudnn.why_not(memcell.gru(4))
      'cuDNN runs the default LSTM only, this cell has a GRUSpec'
      >>> memcell.cudnn.why_not(memcell.lstm(4, peephole=True))
      'cuDNN runs the default LSTM only, this one sets peephole'
    """
    spec, reason = _dispatch.declared_spec(
        cell, "the cell declares no fast path (only a default memcell.lstm runs on cuDNN)")
    if reason is not None:
        return reason
    if not isinstance(spec, LSTMSpec):
        return f"cuDNN runs the default LSTM only, this cell has a {type(spec).__name__}"
    off = _dispatch.options_set(spec, LSTMSpec)  # cuDNN computes the default LSTM only
    if off:
        return f"cuDNN runs the default LSTM only, this one sets {', '.join(off)}"
    xs = None if fr is None else fr.xs
    if fr is not None and fr.resets is not None:
        return "resets (packed sequences) are not implemented by cuDNN"
    if fr is not None and fr.remat:
        return (f"remat={fr.remat!r} is not implemented by cuDNN (it keeps its own reserve space); "
                "the fused path runs every remat policy")
    reason = _dtypes_reason(spec, params, xs)
    if reason is not None:
        return reason
    if any(_under_vmap(x) for x in jax.tree.leaves((params, xs))):
        return "cuDNN's LSTM has no batching rule, so it cannot run under jax.vmap (use leading batch axes)"
    platform = _platform()
    if platform != "gpu":
        return f"cuDNN needs a GPU: jax.default_backend() is {platform!r}"
    return None


def _run(cell: Cell, params, fr: Frame):
    """One direction of one layer through ``_kernel`` on the framed sequence; ``(carry, ys)``."""
    batch_shape, (T, D), H = tuple(fr.xs.shape[:-2]), fr.xs.shape[-2:], params.w_h.shape[0]
    B = flat_batch_size(batch_shape)
    x = fr.xs.reshape(B, T, D)
    n = jnp.full((B,), T, jnp.int32) if fr.lengths is None else fr.lengths.reshape(B).astype(jnp.int32)
    h0, c0 = fr.carry0.h.reshape(1, B, H), fr.carry0.c.reshape(1, B, H)
    # jax#17966: cuDNN fails on a length of 0. Such rows run one step whose output the frame masks
    # and whose final carry is replaced by the initial one.
    ys, h_n, c_n = _kernel(
        x, h0, c0, pack([params]), jnp.maximum(n, 1),
        input_size=D, hidden_size=H, num_layers=1, bidirectional=False,
    )
    empty = (n == 0)[:, None]
    h = jnp.where(empty, h0[0], h_n[0]).reshape(batch_shape + (H,))
    c = jnp.where(empty, c0[0], c_n[0]).reshape(batch_shape + (H,))
    return LSTMCarry(h=h, c=c), ys.reshape(batch_shape + (T, H))


PATH = Path("cudnn", why_not, _run)
