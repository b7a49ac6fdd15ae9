"""The contract every cell keeps, for every cell of ``memcell.cells.CELLS`` and a user's own cell.

A new cell in the table gets all of this without a line of test code: shapes batched and unbatched,
vmap == broadcasting, jit == eager, ``unroll`` == a Python loop over ``step``, causality, no retrace,
and the differential test of every path the cell declares (random lengths, 0 and T included, resets
anywhere, the padding included, reverse, a nonzero initial carry) against a per-sequence oracle that
runs ``step`` in a Python loop, values and gradients. The per-cell files keep what is specific to a
cell: its equations against NumPy, its init, its options and its bad input.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from user_cells import leaky_cell

import memcell
from memcell import paths

H, D, T, B = 4, 3, 5, 4
CELLS = {**memcell.cells.CELLS, "user": leaky_cell}
names = pytest.mark.parametrize("name", list(CELLS))


def setup(name, seed=0):
    cell = CELLS[name](H)
    params = cell.init(jax.random.key(seed), D)
    # Nonzero everywhere (biases included), so that padding or reset bugs cannot hide behind zeros.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(seed + 1), p.shape, p.dtype), params)
    return cell, params


def rand(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def close(a, b, tol=2e-5):
    chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


def fast_paths(cell):
    """The paths other than the reference that run ``cell`` here (``cudnn`` only on a GPU)."""
    return [name for name in paths.PATHS if name != "reference" and paths.why_not(name, cell) is None]


def nonzero_carry(cell, params, batch_shape):
    carry = cell.initial_carry(params, batch_shape)
    return jax.tree.map(lambda c: c + (0.3 + 0.2 * rand(c.shape, 7)).astype(c.dtype), carry)


# --------------------------------------------------------------------------- shapes, vmap, jit, loop


@names
def test_shapes_unbatched_and_batched(name):
    cell, params = setup(name)
    for batch in ((), (2,), (2, 3)):
        carry, ys = memcell.unroll(cell, params, rand(batch + (T, D)))
        assert ys.shape[:-1] == batch + (T,)
        expected = jax.eval_shape(lambda p: cell.initial_carry(p, batch), params)
        chex.assert_trees_all_equal_shapes(carry, expected)


@names
def test_vmap_equals_broadcasting(name):
    cell, params = setup(name)
    xs = rand((3, T, D))
    close(jax.vmap(lambda x: memcell.unroll(cell, params, x))(xs), memcell.unroll(cell, params, xs))


@names
def test_jit_equals_eager_and_does_not_retrace(name):
    cell, params = setup(name)
    traces = []

    def run(p, x, lengths):
        traces.append(1)  # runs only while tracing
        return memcell.unroll(cell, p, x, lengths=lengths, backend="auto")

    f = jax.jit(run)
    xs, lengths = rand((2, T, D)), jnp.array([T, 2])
    close(f(params, xs, lengths), run(params, xs, lengths))
    f(params, rand((2, T, D), seed=5), jnp.array([1, 3]))
    assert len(traces) == 2  # the eager call and one trace: the second jitted call reused it


@names
def test_unroll_equals_a_python_loop_over_step(name):
    cell, params = setup(name)
    xs = rand((2, T, D))
    carry = cell.initial_carry(params, (2,))
    ys = []
    for t in range(T):
        carry, y = cell.step(params, carry, xs[:, t])
        ys.append(y)
    close(memcell.unroll(cell, params, xs), (carry, jnp.stack(ys, axis=1)))


@names
@pytest.mark.parametrize("reverse", [False, True])
def test_causality(name, reverse):
    """d ys[t] / d xs[s] is zero for every s after t (before t when reading backwards)."""
    cell, params = setup(name)
    xs = rand((4, D))
    jac = jax.jacrev(lambda x: memcell.unroll(cell, params, x, reverse=reverse)[1])(xs)
    block = np.abs(np.asarray(jac, np.float64)).reshape(4, -1, 4, D).sum(axis=(1, 3))  # [t, s]
    allowed = np.triu(np.ones_like(block, bool)) if reverse else np.tril(np.ones_like(block, bool))
    assert block[~allowed].max() == 0.0
    assert np.diag(block).min() > 0.0  # and each step's own input does reach its output


# --------------------------------------------------------------------------- the differential test


def oracle(cell, params, xs, carry0, lengths, resets, reverse):
    """What an unroll means, one sequence at a time in a Python loop over ``step``: each sequence
    runs its first ``length`` steps (backwards for ``reverse``); a reset at step t restarts the carry
    from ``carry0`` where the segment starting at t is entered; padded outputs are zeros."""
    carries, outputs = [], []
    for b in range(xs.shape[0]):
        c0 = jax.tree.map(lambda a: a[b], carry0)
        L = int(lengths[b])
        c, ys = c0, [None] * L
        order = range(L - 1, -1, -1) if reverse else range(L)
        for t in order:
            starts = (t + 1 < L and bool(resets[b, t + 1])) if reverse else bool(resets[b, t])
            if starts:
                c = c0
            c, ys[t] = cell.step(params, c, xs[b, t])
        y_shape = jax.eval_shape(cell.step, params, c0, xs[b, 0])[1]
        pad = [jnp.zeros(y_shape.shape, y_shape.dtype)] * (xs.shape[1] - L)
        carries.append(c)
        outputs.append(jnp.stack(ys + pad))
    return jax.tree.map(lambda *a: jnp.stack(a), *carries), jnp.stack(outputs)


def differential_case(cell, params, seed):
    """Random lengths (0 and T always among them) and resets anywhere, the padding included."""
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([[0, T], rng.integers(0, T + 1, B - 2)])
    resets = rng.random((B, T)) < 0.35
    resets[:, -1] |= lengths < T  # a reset in the padding of every padded sequence (issue 20, S1)
    xs = rand((B, T, D), seed)
    return xs, nonzero_carry(cell, params, (B,)), jnp.asarray(lengths), jnp.asarray(resets)


@names
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("seed", [3, pytest.param(4, marks=pytest.mark.slow)])  # a second draw: test-slow
def test_every_path_equals_the_oracle(name, reverse, seed):
    cell, params = setup(name)
    xs, carry0, lengths, resets = differential_case(cell, params, seed)
    expected = oracle(cell, params, xs, carry0, lengths, resets, reverse)
    for backend in ["reference", "auto"] + fast_paths(cell):
        kw = dict(lengths=lengths, resets=resets, reverse=reverse)
        if paths.why_not(backend, cell, resets=resets) is not None:
            kw.pop("resets")  # the fused path has no resets: it is checked without them
            expected_b = oracle(cell, params, xs, carry0, lengths, np.zeros((B, T), bool), reverse)
        else:
            expected_b = expected
        got = memcell.unroll(cell, params, xs, carry0, backend=backend, **kw)
        close(got, expected_b, tol=1e-4)


@names
@pytest.mark.parametrize("reverse", [False, True])
def test_every_path_has_the_reference_gradients(name, reverse):
    """Gradients with respect to params, inputs and the initial carry, with lengths and resets."""
    cell, params = setup(name)
    xs, carry0, lengths, resets = differential_case(cell, params, 5)

    def loss(backend, resets, params, xs, carry0):
        carry, ys = memcell.unroll(cell, params, xs, carry0, lengths=lengths, resets=resets, reverse=reverse,
                                   backend=backend)
        w = jnp.cos(jnp.arange(ys.size).reshape(ys.shape))  # every output weighs differently
        return jnp.sum(ys * w).real + sum(jnp.sum(jnp.abs(c) ** 2) for c in jax.tree.leaves(carry))

    for backend in fast_paths(cell):
        r = resets if paths.why_not(backend, cell, resets=resets) is None else None
        grad = lambda b: jax.grad(lambda *a: loss(b, r, *a), argnums=(0, 1, 2))(params, xs, carry0)
        close(grad(backend), grad("reference"), tol=1e-4)


@names
def test_no_steps_give_the_initial_carry_on_every_path(name):
    cell, params = setup(name)
    carry0 = nonzero_carry(cell, params, (2,))
    for backend in ["reference"] + [b for b in fast_paths(cell) if b != "cudnn"]:
        carry, ys = memcell.unroll(cell, params, jnp.zeros((2, 0, D)), carry0, backend=backend)
        close(carry, carry0, tol=0)
        assert ys.shape[:2] == (2, 0)


# --------------------------------------------------------------------------- float64, second order


@pytest.mark.slow  # float64 recompiles every cell twice; make test checks gradients against the oracle's paths
@names
def test_check_grads_float64_order2(name):
    from jax.test_util import check_grads

    with jax.enable_x64(True):
        cell = CELLS[name](3)
        params = jax.tree.map(lambda p: p.astype(jnp.float64) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                              cell.init(jax.random.key(0), 2))
        xs = jax.random.normal(jax.random.key(1), (3, 2), jnp.float64)
        f = lambda p, x: jnp.sum(jnp.abs(memcell.unroll(cell, p, x)[1]) ** 2)
        check_grads(f, (params, xs), order=2, modes=("fwd", "rev"), atol=1e-4, rtol=1e-4)


def test_front_door_holds_the_table_not_each_cells_types():
    """memcell's top level: every factory of the table, the contract types, the sequence functions and
    the subpackages; each cell's Params/Carry/Spec types live in memcell.cells (issue 21.7)."""
    for name in memcell.cells.CELLS:
        assert name in memcell.__all__ and callable(getattr(memcell, name)), name
    assert {"lstm", "gru", "mamba", "gated_deltanet", "unroll", "layer", "stream", "Cell", "paths"} <= set(memcell.__all__)
    per_cell = [n for n in memcell.__all__ if n.endswith(("Carry", "Params", "Gates", "Norm")) or
                (n.endswith("Spec") and n not in ("CellSpec", "LayerSpec", "LinearSpec"))]
    assert per_cell == [] and not hasattr(memcell, "LSTMCarry")
    assert memcell.cells.LSTMCarry is not None and len(memcell.__all__) <= 40
