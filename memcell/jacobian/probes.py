"""Probes of the carry along a trajectory: loss gradients with respect to every step's hidden
part (through probes added to it), and each unit's gate on its own past (``carry_gates``)."""

from typing import Callable

import jax
import jax.numpy as jnp

from memcell.jacobian._common import (
    as_array,
    hidden_index,
    leaf,
    over_batch,
    prepare,
    replace_leaf,
    trajectory,
)
from memcell.types import Array, Cell, LinearSpec, PyTree, Sequence

# ----------------------------------------------------------------------------- loss gradients


def unroll_with_probes(
    cell: Cell,
    params: PyTree,
    xs: Sequence,
    probes: Array,
    carry: PyTree | None = None,
    *,
    hidden: str | int = "h",
) -> tuple[PyTree, Array]:
    """``memcell.unroll`` with ``probes[..., t, :]`` added to the hidden part after each step.

    With zero probes the values are those of ``unroll``; the gradient of a loss with respect to
    the probes is ``dL / dh_t`` for every ``t`` (the total derivative, through all later
    steps), obtained in the same backward pass as the params' gradient. The probe reaches the
    step's output too where the step returns its carry's hidden part as its output (the RNN,
    LSTM, GRU and RG-LRU), or where the cell's ``LinearSpec`` reads the output out of the carry
    (the LRU's ``y = Re(x C) + D u`` is recomputed from the probed carry with ``spec.readout``).
    A complex hidden part takes complex (or real) probes.

    Args:
      cell, params, xs, carry, hidden: as for ``gradient_norms_through_time``.
      probes: ``[*b, T, *h_shape]``, normally zeros.

    Returns:
      ``(carry, ys)`` as ``memcell.unroll`` returns them.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> from memcell.jacobian import unroll_with_probes
      >>> cell = memcell.gru(4)
      >>> params = cell.init(jax.random.key(0), input_size=1)
      >>> xs, probes = jnp.ones((20, 1)), jnp.zeros((20, 4))
      >>> loss = lambda p, z: unroll_with_probes(cell, p, xs, z)[1][-1].sum()
      >>> grads, dl_dh = jax.grad(loss, argnums=(0, 1))(params, probes)
      >>> dl_dh.shape
      (20, 4)
    """
    xs, batch_shape, carry0 = prepare(cell, params, xs, carry)
    hi = hidden_index(cell, params, hidden)
    h_leaf = jax.eval_shape(lambda p: leaf(cell.initial_carry(p, ()), hi), params)
    probes = as_array(probes)
    expected = batch_shape + (xs.shape[-2],) + tuple(h_leaf.shape)
    if jnp.issubdtype(h_leaf.dtype, jnp.complexfloating):
        if not jnp.issubdtype(probes.dtype, jnp.inexact):
            raise TypeError(f"probes must be a floating-point or complex array, got dtype {probes.dtype}")
    elif not jnp.issubdtype(probes.dtype, jnp.floating):
        raise TypeError(f"probes must be a floating-point array, got dtype {probes.dtype}")
    if tuple(probes.shape) != expected:
        raise ValueError(f"probes must have shape {expected} (batch, time, hidden), got shape {tuple(probes.shape)}")

    spec = getattr(cell, "spec", None)
    readout = spec.readout if isinstance(spec, LinearSpec) and spec.describes(cell) and spec.readout else None

    def body(c, inputs):
        x, p = inputs
        new, y = cell.step(params, c, x)
        h = leaf(new, hi)
        h_probed = h + p.astype(h.dtype)
        # Identity, not equality: the probe reaches y only where y is the carry's own h leaf, or
        # where the cell's own spec says how y is read out of the carry (the LRU: Re(C x) + D u).
        if y is h:
            y = h_probed
        elif readout is not None:
            y = readout(params, h_probed, x)
        return replace_leaf(new, hi, h_probed), y

    n_b = len(batch_shape)
    time_major = lambda a: jnp.moveaxis(a, n_b, 0)
    c, ys = jax.lax.scan(body, carry0, (time_major(xs), time_major(jnp.asarray(probes))))
    return c, jnp.moveaxis(ys, 0, n_b)


def loss_gradient_norms(
    cell: Cell,
    params: PyTree,
    xs: Sequence,
    loss_fn: Callable[[Array], Array],
    *,
    carry: PyTree | None = None,
    hidden: str | int = "h",
) -> Array:
    """Euclidean norms of ``dL / dh_t`` for every step, for a loss ``L = loss_fn(ys)`` on the outputs.

    One forward and one backward pass (zero probes, see ``unroll_with_probes``), so it is cheap
    enough to log during training; to get the params' gradient in the same pass, differentiate
    ``unroll_with_probes`` with respect to both.

    Args:
      cell, params, xs, carry, hidden: as for ``gradient_norms_through_time``.
      loss_fn: ``ys [*b, T, H] -> scalar``.

    Returns:
      ``[*b, T]``: ``||dL / dh_t||`` per sequence and step.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (ys -> scalar), got {type(loss_fn).__name__}")
    xs, batch_shape, carry0 = prepare(cell, params, xs, carry)
    hi = hidden_index(cell, params, hidden)
    h_leaf = jax.eval_shape(lambda p: leaf(cell.initial_carry(p, batch_shape), hi), params)
    T = xs.shape[-2]
    probes = jnp.zeros(batch_shape + (T,) + h_leaf.shape[len(batch_shape) :], h_leaf.dtype)

    def loss(z):
        value = loss_fn(unroll_with_probes(cell, params, xs, z, carry0, hidden=hidden)[1])
        if jnp.shape(value) != ():
            raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(value)}")
        return value

    g = jax.grad(loss)(probes)
    h_axes = tuple(range(len(batch_shape) + 1, g.ndim))
    # |g|^2: for a complex hidden part, |dL/dRe h + i dL/dIm h| (JAX's cotangent is its conjugate).
    return jnp.sqrt(jnp.sum(jnp.square(jnp.abs(g)), axis=h_axes))


# ----------------------------------------------------------------------------- gates


def carry_gates(
    cell: Cell,
    params: PyTree,
    xs: Sequence,
    *,
    carry: PyTree | None = None,
    field: str | int = "c",
) -> Array:
    """Each unit's gate on its own past along one carry field: the diagonal of ``d c_t / d c_{t-1}``.

    For the field ``c`` of a carry, ``gate[t, j] = d c_t[j] / d c_{t-1}[j]`` at the trajectory of
    ``xs``, the carry's other fields held at step ``t`` (as for ``state_jacobians``). Read off any
    cell's step, with no knowledge of its parameter layout:

    - the LSTM's memory cell (``field="c"``, no peepholes): ``c_t = f_t c_{t-1} + i_t g_t``, so the
      gate is the forget gate ``f_t`` exactly (``1`` without a forget gate);
    - a cell with a ``LinearSpec`` (``h_t = a_t h_{t-1} + b_t``: minGRU, minLSTM, LRU, RG-LRU),
      ``field="h"``: its coefficient ``a_t`` (complex for the LRU's complex carry);
    - any other cell: the diagonal of its step Jacobian (the GRU's also holds the paths through
      its gates), which is not a gate of the equations.

    Args:
      cell, params, xs, carry: as for ``gradient_norms_through_time``.
      field: the carry field (its name, or its leaf index in ``jax.tree.leaves(carry)``).

    Returns:
      ``[*b, T, *field_shape]``, in the field's dtype.

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> from memcell.jacobian import carry_gates
      >>> cell = memcell.lstm(4, forget_bias=1.0)
      >>> params = cell.init(jax.random.key(0), input_size=2)
      >>> f = carry_gates(cell, params, jnp.zeros((5, 2)))   # the forget gates, sigmoid(1) at zero input
      >>> f.shape, round(float(f[0, 0]), 4)
      ((5, 4), 0.7311)
    """
    xs, batch_shape, carry0 = prepare(cell, params, xs, carry)
    fi = hidden_index(cell, params, field, "field")

    def one(xs_, c0):
        prev = trajectory(cell, params, xs_, c0)

        def gates(c_prev, x):
            a = leaf(c_prev, fi)
            m = a.size
            f = lambda v: leaf(cell.step(params, replace_leaf(c_prev, fi, v.reshape(a.shape)), x)[0], fi).reshape(m)
            # one jvp a unit (the columns of the field's Jacobian), of which the diagonal is kept
            columns = jax.vmap(lambda e: jax.jvp(f, (a.reshape(m),), (e,))[1])(jnp.eye(m, dtype=a.dtype))
            return jnp.diagonal(columns).reshape(a.shape)

        return jax.vmap(gates)(prev, xs_)

    return over_batch(one, batch_shape, xs, carry0)
