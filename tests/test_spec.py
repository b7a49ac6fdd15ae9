"""A fast path runs a cell only when the cell declares it (Cell.spec), never from attributes of its step.

The cases are those of a user who builds a cell from a built-in one: a step wrapped with
``functools.wraps`` (which copies function attributes), a ``functools.partial``, a lambda, a
``cell._replace(step=...)`` (which keeps the spec field), and a NamedTuple of the user's own.
Each must run the user's step, on every backend that accepts it.
"""

import functools
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import pytest

import memcell
from memcell import fused

B, T, D, H = 2, 7, 3, 5


def _setup(cell):
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    return params, xs


def _changed(step):
    """A different cell built on a built-in step: it reads zeros instead of its inputs."""
    return lambda params, carry, x: step(params, carry, 0.0 * x)


def _wrapped(cell):
    @functools.wraps(cell.step)
    def step(params, carry, x):
        return cell.step(params, carry, 0.0 * x)

    return memcell.Cell(cell.init, cell.initial_carry, step)


def _lambda(cell):
    return memcell.Cell(cell.init, cell.initial_carry, _changed(cell.step))


def _replaced(cell):
    return cell._replace(step=_changed(cell.step))


def _stolen_spec(cell):
    """A user's cell that copies the built-in cell's spec next to its own step."""
    return memcell.Cell(cell.init, cell.initial_carry, _changed(cell.step), cell.spec)


CHANGED = {"wraps": _wrapped, "lambda": _lambda, "replace": _replaced, "stolen spec": _stolen_spec}
FACTORIES = {"lstm": memcell.lstm, "gru": memcell.gru, "rnn": memcell.rnn}


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES)
@pytest.mark.parametrize("make_user", CHANGED.values(), ids=CHANGED)
def test_a_changed_step_runs_its_own_equations(factory, make_user):
    cell = factory(H)
    user = make_user(cell)
    params, xs = _setup(cell)
    want = memcell.unroll(user, params, xs)[1]
    # what the user's cell means: the built-in cell on zero inputs, not on xs
    chex.assert_trees_all_close(want, memcell.unroll(cell, params, jnp.zeros_like(xs))[1])
    assert float(jnp.abs(want - memcell.unroll(cell, params, xs)[1]).max()) > 1e-3
    chex.assert_trees_all_equal(memcell.unroll(user, params, xs, backend="auto")[1], want)
    assert not (memcell.paths.why_not("fused", user) is None)
    with pytest.raises(ValueError, match="backend='fused' cannot run this unroll"):
        memcell.unroll(user, params, xs, backend="fused")
    lyr = memcell.layer(user, backend="auto")
    chex.assert_trees_all_equal(lyr.apply(params, xs)[1], want)


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES)
def test_a_partial_step_runs_the_reference(factory):
    cell = factory(H)
    user = memcell.Cell(cell.init, cell.initial_carry, functools.partial(cell.step))
    params, xs = _setup(cell)
    assert user.spec is None and not (memcell.paths.why_not("fused", user) is None)
    want = memcell.unroll(cell, params, xs)[1]
    ys = memcell.unroll(user, params, xs, backend="auto")[1]
    chex.assert_trees_all_equal(ys, want)  # the reference: bit-equal to the built-in step's scan
    jaxpr = str(jax.make_jaxpr(lambda p: memcell.unroll(user, p, xs, backend="auto")[1])(params))
    assert "custom_vjp" not in jaxpr


class UserCell(NamedTuple):
    init: Callable
    initial_carry: Callable
    step: Callable


def test_a_user_namedtuple_cell_runs_the_reference():
    cell = memcell.lstm(H)
    user = UserCell(cell.init, cell.initial_carry, cell.step)
    params, xs = _setup(cell)
    assert not (memcell.paths.why_not("fused", user) is None)
    chex.assert_trees_all_equal(
        memcell.unroll(user, params, xs, backend="auto")[1], memcell.unroll(cell, params, xs)[1]
    )
    with pytest.raises(ValueError, match="declares no fast path"):
        memcell.unroll(user, params, xs, backend="fused")


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES)
def test_built_in_cells_declare_their_fast_path(factory):
    cell = factory(H)
    assert isinstance(cell.spec, memcell.CellSpec) and cell.spec.describes(cell)
    assert (memcell.paths.why_not("fused", cell) is None) and memcell.paths.why_not("fused", cell) is None
    params, xs = _setup(cell)
    jaxpr = str(jax.make_jaxpr(lambda p: memcell.unroll(cell, p, xs, backend="auto")[1])(params))
    assert "custom_vjp" in jaxpr


def test_a_spec_states_the_options_and_the_fused_path_reads_them():
    spec = memcell.lstm(H, peephole=True, dtype=jnp.bfloat16).spec
    assert isinstance(spec, memcell.cells.LSTMSpec)
    assert spec.peephole is True and spec.dtype == jnp.bfloat16 and spec.forget_gate is True
    assert "sets peephole" in memcell.paths.why_not("fused", memcell.lstm(H, peephole=True))
    assert "reset_after=True only" in memcell.paths.why_not("fused", memcell.gru(H, reset_after=False))
    assert memcell.rnn(H, activation="relu").spec.activation == "relu"
    assert memcell.paths.why_not("fused", memcell.lstm(H), remat=True) is None  # remat runs the kernel in checkpointed blocks
    assert "resets" in memcell.paths.why_not("fused", memcell.lstm(H), resets=jnp.zeros(T, bool))


def test_a_cell_made_of_three_functions_has_no_spec():
    cell = memcell.lstm(H)
    assert memcell.Cell(cell.init, cell.initial_carry, cell.step).spec is None
    # the same three functions with the spec passed explicitly: declared, so the fast path may run it
    assert (memcell.paths.why_not("fused", memcell.Cell(cell.init, cell.initial_carry, cell.step, cell.spec)) is None)


def test_the_step_carries_no_attribute_for_the_fast_path():
    """Nothing about the fast path hides in function attributes, which wrappers copy."""
    for factory in FACTORIES.values():
        assert not hasattr(factory(H).step, "spec")


def test_every_fast_path_reads_the_spec_by_the_same_rule():
    # fused, parallel and cuDNN: the same sentence for a replaced step, their own for a cell
    # without a spec, and the same LSTM options named (dtype is not an option)
    stale = "the cell's spec was made for another step function (its step was wrapped or replaced)"
    lstm, mingru = memcell.lstm(H), memcell.mingru(H)
    assert memcell.paths.why_not("fused", _replaced(lstm)) == memcell.paths.why_not("cudnn", _replaced(lstm)) == stale
    assert memcell.paths.why_not("parallel", _replaced(mingru)) == stale
    plain = memcell.Cell(lstm.init, lstm.initial_carry, lstm.step)
    for path in (fused, memcell.parallel, memcell.cudnn):
        assert path.why_not(plain).startswith("the cell declares no "), path.__name__
    options = memcell.lstm(H, peephole=True, cifg=True, dtype=jnp.bfloat16)
    assert memcell.paths.why_not("fused", options) == "the fused LSTM implements the default cell only, this one sets cifg, peephole"
    assert memcell.paths.why_not("cudnn", options) == "cuDNN runs the default LSTM only, this one sets cifg, peephole"


def test_a_users_gate_function_is_an_option_the_fast_paths_name():
    """Flax's gate_fn/activation_fn: another function than the default is declared (as None), so the
    paths name it, instead of saying the cell declares no fast path."""
    relu_gates = memcell.lstm(4, gate_fn=jax.nn.relu)
    assert memcell.paths.why_not("fused", relu_gates) == (
        "the fused LSTM implements the default cell only, this one sets gate_fn")
    assert memcell.paths.why_not("cudnn", relu_gates) == "cuDNN runs the default LSTM only, this one sets gate_fn"
    assert memcell.paths.why_not("fused", memcell.gru(4, activation_fn=jax.nn.elu)) == (
        "the fused GRU implements the default cell only, this one sets activation_fn")
    assert "user's function" in memcell.paths.why_not("fused", memcell.rnn(4, activation=jax.nn.elu))
    assert memcell.paths.why_not("fused", memcell.lstm(4, gate_fn=jax.nn.sigmoid)) is None  # the default, by identity
