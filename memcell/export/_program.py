"""The JAX function every exported form computes, its inputs with symbolic batch and time, and their names.

A sequence model is ``f(xs[, lengths]) -> (ys, *carry leaves)``; a streaming one is
``f(x, *carry leaves) -> (y, *new carry leaves)``, leaves in ``jax.tree.leaves`` order. The Loop form
and ``jax.export`` lower this function; the native form is checked against it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from memcell._checks import check_positive_int
from memcell.export._structure import Model
from memcell.streaming import stream

__all__ = ["Program", "program"]


class Program(NamedTuple):
    fn: Callable  # f(*inputs) -> tuple of outputs
    specs: list  # jax.ShapeDtypeStruct of each input, batch "B" and time "T" symbolic
    input_names: list[str]
    output_names: list[str]
    leaves: list  # the carry's leaves for a batch of 1 (ShapeDtypeStructs), jax.tree.leaves order


def check_flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def leaf_names(base: str, leaves) -> list[str]:
    return [f"{base}_{k}" for k in range(len(leaves))]


def _head_step(model: Model, params):
    """The readout of one step's output ``y [B, h]``."""

    def head(y):
        out = model.head(params, y[..., None, :])
        return out[..., 0, :] if out.ndim == y.ndim + 1 else out

    return head


def symbolic(trace):
    """Runs ``trace()`` (a trace with symbolic batch and time), turning JAX's error for a model that needs
    fixed sizes into a ``ValueError`` that says what to do."""
    try:
        return trace()
    except Exception as e:
        if type(e).__name__ != "InconclusiveDimensionOperation":  # JAX's shape_poly error has no public name
            raise
        raise ValueError(
            "the model needs a fixed batch size or length (a fast path such as backend='fused' or 'cudnn' inside a "
            "layer memcell cannot see into); build its layers with backend='reference' to export them, "
            f"which computes the same function ({str(e).splitlines()[0]})") from None


def program(model: Model, params, *, input_size, with_lengths: bool, streaming: bool) -> Program:
    """The function to export, its input specs and names; ``ValueError`` for a bad combination."""
    input_size = check_positive_int("input_size", input_size)
    with_lengths = check_flag("with_lengths", with_lengths)
    streaming = check_flag("streaming", streaming)
    if with_lengths and streaming:
        raise ValueError("with_lengths=True and streaming=True exclude each other: a streaming model takes one step "
                         "at a time (feed only the real steps of each sequence)")
    task = model.head is not None
    rnn_params = params.rnn if task else params
    lyr = model.layer
    B, T = jax.export.symbolic_shape("B, T")
    try:
        carry1 = jax.eval_shape(lambda p: lyr.apply(p, jnp.zeros((1, 0, input_size), jnp.float32))[0], rnn_params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the model does not run on inputs of input_size={input_size} with these params: {e}") from e
    leaves, treedef = jax.tree.flatten(carry1)
    for leaf in leaves:
        if leaf.ndim < 1 or leaf.shape[0] != 1:
            raise ValueError(f"the carry's leaves must have the batch as their first axis, got a leaf of shape "
                             f"{leaf.shape} for a batch of 1")
    leaf_specs = [jax.ShapeDtypeStruct((B,) + leaf.shape[1:], leaf.dtype) for leaf in leaves]

    if streaming:
        s = stream(lyr, input_size)
        head = _head_step(model, params) if task else (lambda y: y)
        try:
            s.init_carry(rnn_params, (1,))  # refuses a bidirectional layer, saying so
        except ValueError as e:
            raise ValueError(f"streaming=True: {e}") from None

        def fn(x, *carry_leaves):
            carry, y = s.step(rnn_params, jax.tree.unflatten(treedef, carry_leaves), x)
            return (head(y), *jax.tree.leaves(carry))

        specs = [jax.ShapeDtypeStruct((B, input_size), jnp.float32)] + leaf_specs
        return Program(fn, specs, ["x"] + leaf_names("carry", leaves), ["y"] + leaf_names("new_carry", leaves), leaves)

    def fn(xs, lengths=None):
        carry, ys = lyr.apply(rnn_params, xs, lengths=lengths)
        if task:
            ys = model.head(params, ys, lengths)
        return (ys, *jax.tree.leaves(carry))

    specs = [jax.ShapeDtypeStruct((B, T, input_size), jnp.float32)]
    names = ["xs"]
    if with_lengths:
        specs.append(jax.ShapeDtypeStruct((B,), jnp.int32))
        names.append("lengths")
    return Program(fn, specs, names, ["ys"] + leaf_names("carry", leaves), leaves)
