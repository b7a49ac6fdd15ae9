"""The Pallas path (memcell.pallas) against the reference path, in Pallas interpret mode on the CPU.

``memcell.unroll(..., backend="pallas")`` runs the kernels on the one frame every path shares; each
result is compared with ``memcell.unroll`` (the reference path) on the same arguments: values (final carry and outputs)
and gradients with respect to the params, the inputs and the initial carry. Sizes are small and
odd (not multiples of any block); the blocks are shrunk so that several grid programs and the
loop's tail run. The GPU lowering is checked as far as a CPU can: every kernel lowers to Triton
IR (``jax.export`` for CUDA), which Triton then compiles only on a GPU (``make bench-gpu``).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import memcell
from memcell.pallas import linear_scan, tuning
from memcell.pallas.recurrent import recurrence

# Blocks small enough that odd sizes span several programs; one step a loop iteration keeps the
# interpreted programs small (the tests that unroll more say so: a loop's tail then runs too). On a
# GPU (make bench-gpu runs this file there) the same small blocks run compiled.
PLATFORM = jax.default_backend()
SMALL = tuning.Tuning(channel_block=4, batch_block=16, unroll=1, num_warps=1, resident_bytes=4096)
F32_TOL = 2e-5


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setitem(tuning.BY_PLATFORM, PLATFORM, SMALL)


def pallas_unroll(cell, params, xs, carry=None, **kw):
    """``memcell.unroll`` on the Pallas path: the frame (processing order, ``valid``, ``resets``, the
    initial carry) is the one every path runs on."""
    return memcell.unroll(cell, params, xs, carry, backend="pallas", **kw)


def _loss_and_outputs(unroll, cell, kw):
    def loss(params, xs, carry):
        c, ys = unroll(cell, params, xs, carry, **kw)
        weights = jnp.cos(jnp.arange(ys.size, dtype=jnp.float32)).reshape(ys.shape)  # every output counts differently
        total = jnp.sum(ys.astype(jnp.float32) * weights)
        return total + sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree.leaves(c)), (c, ys)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def compare(cell, params, xs, carry, **kw):
    """(max |value difference|, max |gradient difference|, max |gradient|, pallas's outputs) against the reference."""
    (_, out_p), grads_p = _loss_and_outputs(pallas_unroll, cell, kw)(params, xs, carry)
    (_, out_r), grads_r = _loss_and_outputs(memcell.unroll, cell, kw)(params, xs, carry)
    diff = lambda a, b: max(float(jnp.max(jnp.abs(jnp.asarray(x, jnp.complex64) - y))) for x, y in
                            zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    for a, b in zip(jax.tree.leaves((out_p, grads_p)), jax.tree.leaves((out_r, grads_r))):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_r))
    return diff(out_p, out_r), diff(grads_p, grads_r), scale, (out_p, out_r)


D, H, T = 5, 6, 7

CELLS = {
    "lstm": lambda **kw: memcell.lstm(H, **kw),
    "gru": lambda **kw: memcell.gru(H, **kw),
    "rnn_tanh": lambda **kw: memcell.rnn(H, **kw),
    "rnn_relu": lambda **kw: memcell.rnn(H, activation="relu", **kw),
    "mingru": lambda **kw: memcell.mingru(H, **kw),
    "minlstm": lambda **kw: memcell.minlstm(H, log_space=True, **kw),  # coefficients in log space
    "lru": lambda **kw: memcell.lru(H, **kw),  # a complex carry
    "rglru": lambda **kw: memcell.rglru(H, **kw),
}


def _case(name, batch_shape=(3,), T=T, seed=0, **factory):
    cell = CELLS[name](**factory)
    k = jax.random.split(jax.random.key(seed), 4)
    params = cell.init(k[0], D)
    xs = jax.random.normal(k[1], batch_shape + (T, D))
    carry = jax.tree.map(lambda z: (0.5 * jax.random.normal(k[2], z.shape)).astype(z.dtype) if not jnp.iscomplexobj(z)
                         else (0.5 * jax.random.normal(k[2], z.shape) * (1 + 1j)).astype(z.dtype),
                         cell.initial_carry(params, batch_shape))
    return cell, params, xs, carry


def _options(batch_shape, T, seed=1):
    """Lengths with a full one and a 0, resets inside the sequences (within their lengths), reverse."""
    n = int(np.prod(batch_shape))
    lengths = np.array([T, 0] + [2 + (5 * i) % (T - 1) for i in range(2, n)])
    resets = np.array(jax.random.bernoulli(jax.random.key(seed), 0.2, (n, T)))
    resets[0, [2, T - 2]] = True  # the full sequence restarts twice
    resets[2:, 1] = True  # the others once, inside their lengths
    return dict(lengths=jnp.asarray(lengths.reshape(batch_shape)), resets=jnp.asarray(resets.reshape(batch_shape + (T,))),
                reverse=True)


# Values and gradients for one cell of each kind of kernel code (the complex LRU among them); the
# other cells share that code (the RNN's activation, the linear cells' coefficients differ): their
# values here, their gradients in the slow sweep below.
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh", "mingru", "lru"])
def test_each_kernel_matches_reference_with_lengths_resets_reverse_and_carry(name):
    cell, params, xs, carry = _case(name)
    options = _options((3,), T)
    assert 0 in options["lengths"].tolist()
    err, gerr, scale, _ = compare(cell, params, xs, carry, **options)
    assert err < F32_TOL and gerr < F32_TOL * max(scale, 1.0), (err, gerr, scale)


@pytest.mark.parametrize("name", ["rnn_relu", "minlstm", "rglru"])
def test_other_cells_values_with_lengths_resets_reverse_and_carry(name):
    cell, params, xs, carry = _case(name)
    options = _options((3,), T)
    got = jax.jit(lambda p, x, c: pallas_unroll(cell, p, x, c, **options))(params, xs, carry)
    want = jax.jit(lambda p, x, c: memcell.unroll(cell, p, x, c, **options))(params, xs, carry)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.shape == b.shape and float(jnp.max(jnp.abs(a - b))) < F32_TOL


def test_tiled_hidden_units_over_several_batch_blocks_and_a_loop_tail(monkeypatch):
    # Above `tile` hidden units the kernels run tile by tile, the carry through memory between steps:
    # H = 20 in tiles of 16 is 2 tiles (the second mostly padding). The LSTM, whose cell also goes
    # through memory (the GRU and the RNNs: the slow sweep). 17 sequences: two batch blocks of 16;
    # 3 steps a loop iteration: 2 iterations and a tail of 1 step.
    monkeypatch.setitem(tuning.BY_PLATFORM, PLATFORM, SMALL._replace(tile=16, unroll=3))
    cell = memcell.lstm(20)
    k = jax.random.split(jax.random.key(7), 3)
    params = cell.init(k[0], D)
    xs = jax.random.normal(k[1], (17, T, D))
    carry = jax.tree.map(lambda z: 0.5 * jax.random.normal(k[2], z.shape), cell.initial_carry(params, (17,)))
    err, gerr, scale, _ = compare(cell, params, xs, carry, **_options((17,), T))
    assert err < F32_TOL and gerr < F32_TOL * max(scale, 1.0), (err, gerr, scale)


@pytest.mark.parametrize("name, batch_shape", [("gru", ()), ("mingru", (2, 2))])
def test_unbatched_and_two_batch_axes(name, batch_shape):
    cell, params, xs, _ = _case(name, batch_shape)
    carry, ys = jax.jit(functools.partial(pallas_unroll, cell))(params, xs)
    ref_carry, ref_ys = memcell.unroll(cell, params, xs)
    assert ys.shape == batch_shape + (T, H) and float(jnp.max(jnp.abs(ys - ref_ys))) < F32_TOL
    assert float(jnp.max(jnp.abs(carry.h - ref_carry.h))) < F32_TOL


def test_zero_steps_return_the_initial_carry():
    cell, params, _, _ = _case("gru")
    empty = jnp.zeros((2, 0, D))
    carry0, ys0 = pallas_unroll(cell, params, empty)
    assert ys0.shape == (2, 0, H) and bool((carry0.h == 0).all())


# bfloat16: the matmuls in bfloat16, accumulated in float32; the carry stays float32. The tolerance
# is 1e-2 (absolute on outputs, relative to the largest gradient on gradients). Measured here (seed
# 0, B = 3, T = 7, H = 6, lengths, resets, reverse): pallas against the bfloat16 reference, outputs
# 1.2e-7 (LSTM) and 6e-8 (LRU) apart, gradients 9.9e-3 of 4.2 (LSTM) and 4.1e-2 of 18.7 (LRU), i.e.
# 2.4e-3 and 2.2e-3 relative (the kernels form the weight gradients from float32 factors, the
# reference from bfloat16 ones); against float32 both paths' outputs are 1.5e-3 (LSTM) and 1.03e-2
# (LRU: the cell's own bfloat16 error, which the kernel does not add to) away.
BF16_TOL = 1e-2


@pytest.mark.parametrize("name", ["lstm", "lru"])
def test_bfloat16_matches_the_bfloat16_reference_and_adds_no_error_to_float32(name):
    cell, params, xs, carry = _case(name, dtype=jnp.bfloat16)
    options = _options((3,), T)
    err, gerr, scale, ((_, ys16), (_, ys16_ref)) = compare(cell, params, xs, carry, **options)
    assert err < BF16_TOL and gerr < BF16_TOL * max(scale, 1.0), (err, gerr, scale)
    _, ys32 = memcell.unroll(CELLS[name](), params, xs, carry, **options)  # the same params in float32 arithmetic
    kernel, cell_own = (float(jnp.max(jnp.abs(y - ys32))) for y in (ys16, ys16_ref))
    assert kernel <= cell_own + 1e-3, (kernel, cell_own)
    if name == "lstm":
        assert kernel < BF16_TOL


def test_linear_scan_bfloat16_coefficients_keep_a_float32_carry():
    k = jax.random.split(jax.random.key(3), 2)
    a = jax.random.uniform(k[0], (2, 9, 11), minval=0.5, maxval=1.0).astype(jnp.bfloat16)
    b = jax.random.normal(k[1], (2, 9, 11)).astype(jnp.bfloat16)
    hs, h_last = linear_scan(a, b, jnp.zeros((2, 11)), tuning=SMALL._replace(unroll=2))  # 9 steps: a tail of 1
    assert hs.dtype == jnp.float32
    step = lambda h, ab: (ab[0] * h + ab[1],) * 2  # float32 arithmetic on the same bfloat16 values
    _, expected = jax.lax.scan(step, jnp.zeros((2, 11)), (a.astype(jnp.float32).swapaxes(0, 1), b.astype(jnp.float32).swapaxes(0, 1)))
    assert float(jnp.max(jnp.abs(hs - expected.swapaxes(0, 1)))) < 1e-5
    grads = jax.grad(lambda a, b: jnp.sum(linear_scan(a, b, jnp.zeros((2, 11)), tuning=SMALL._replace(unroll=2))[0]),
                     argnums=(0, 1))(a, b)
    assert grads[0].dtype == grads[1].dtype == jnp.bfloat16


# ----------------------------------------------------------------------------- what the path refuses


def _why(cell, dtype=jnp.float32, **kw):
    # Only dtypes are read: shapes stand in for the params and inputs.
    like = lambda a: jax.ShapeDtypeStruct(a.shape, dtype if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype)
    params = jax.tree.map(like, jax.eval_shape(lambda k: cell.init(k, D), jax.random.key(0)))
    return memcell.paths.why_not("pallas", cell, params, jax.ShapeDtypeStruct((2, T, D), dtype), **kw)


def test_why_not_accepts_the_cells_with_kernels():
    for name, make in CELLS.items():
        assert _why(make()) is None, name
    assert _why(memcell.lstm(H, dtype=jnp.bfloat16), jnp.bfloat16) is None


@pytest.mark.parametrize("cell, kw, words", [
    (memcell.lstm(H, peephole=True), {}, "default cell only, this one sets peephole"),
    (memcell.lstm(H, cifg=True), {}, "sets cifg"),
    (memcell.gru(H, reset_after=False), {}, "reset_after=True only"),
    (memcell.mlstm(H, num_heads=2), {}, "no Pallas kernel for a cell with a MLSTMSpec"),
    (memcell.lstm(H), {"remat": "sqrt"}, "remat='sqrt' is not implemented by the pallas path"),
    (memcell.Cell(memcell.lstm(H).init, memcell.lstm(H).initial_carry, memcell.lstm(H).step), {}, "declares no fast path"),
])
def test_why_not_names_what_the_kernels_lack(cell, kw, words):
    reason = _why(cell, **kw)
    assert reason is not None and words in reason, reason


def test_why_not_refuses_a_wrapped_step_float64_and_an_unrun_platform(monkeypatch):
    lstm = memcell.lstm(H)
    wrapped = lstm._replace(step=lambda p, c, x: lstm.step(p, c, x))
    assert "made for another step function" in _why(wrapped)
    with jax.enable_x64(True):
        assert "float32 or bfloat16, got float64" in _why(lstm, jnp.float64)
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert "on 'tpu' they were never run" in _why(lstm)


def test_auto_never_runs_pallas_where_no_benchmark_measured_it():
    assert all(v is None for v in tuning.AUTO.values())
    assert not any(tuning.auto_runs_pallas(p) for p in ("cpu", "gpu", "tpu"))
    cell = memcell.lstm(H)
    for platform in ("cpu", "gpu", "tpu"):
        assert "unmeasured" in memcell.paths.PATHS["pallas"].auto_why_not(cell, platform)
    assert memcell.paths.order("gpu")[0] == "pallas"  # first on a GPU once measured there
    assert memcell.paths.which(cell, cell.init(jax.random.key(0), D), jnp.ones((2, T, D))) != "pallas"


# ----------------------------------------------------------------------------- the GPU lowering


def _lowers_to_triton(fn, *args) -> int:
    """How many Triton kernels ``fn`` lowers to for CUDA (Pallas -> Triton IR runs here; Triton -> PTX on a GPU)."""
    target = "__gpu$xla.gpu.triton"
    exported = jax.export.export(jax.jit(fn), platforms=["cuda"],
                                 disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(target)])(*args)
    return exported.mlir_module().count(f"@{target}(")


def test_kernels_lower_to_triton_forward_and_backward():
    B, T_, Hd = 5, 9, 100  # odd sizes; the LSTM's weights too big to stay resident: read each step (tiles: slow)
    valid = jnp.arange(T_) < jnp.array([9, 4, 0, 9, 1])[:, None]
    resets = jnp.zeros((B, T_), bool).at[:, 3].set(True)
    a = jnp.full((B, T_, Hd), 0.5) * jnp.exp(0.1j)
    scan = lambda a, b, h0: jnp.sum(jnp.abs(linear_scan(a, b, h0, valid=valid, resets=resets, platform="gpu")[0]))
    assert _lowers_to_triton(jax.grad(scan, argnums=(0, 1, 2)), a, a, a[:, 0]) == 2
    carry = (jnp.zeros((B, Hd)),) * 2
    run = lambda zx, w, c: jnp.sum(recurrence("lstm", zx, w, None, c, valid, resets, dtype=None, tuning=tuning.GPU,
                                              platform="gpu")[0])
    assert _lowers_to_triton(jax.grad(run, argnums=(0, 1, 2)), jnp.ones((B, T_, 4, Hd)), jnp.ones((Hd, 4 * Hd)), carry) == 2


# ----------------------------------------------------------------------------- slow: a bigger sweep


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("options", ["plain", "lengths_reverse", "resets", "all"])
def test_sweep_larger_odd_sizes(name, options, monkeypatch):
    monkeypatch.setitem(tuning.BY_PLATFORM, PLATFORM, SMALL._replace(unroll=3, channel_block=8))
    batch_shape, T_ = (19,), 23
    cell, params, xs, carry = _case(name, batch_shape, T=T_, seed=5)
    every = _options(batch_shape, T_, seed=6)
    kw = {"plain": {}, "lengths_reverse": dict(lengths=every["lengths"], reverse=True),
          "resets": dict(resets=every["resets"]), "all": every}[options]
    err, gerr, scale, _ = compare(cell, params, xs, carry, **kw)
    assert err < 1e-4 and gerr < 1e-4 * max(scale, 1.0), (err, gerr, scale)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("options", ["plain", "all"])
def test_sweep_tiled(name, options, monkeypatch):
    # H = 37 in tiles of 16: 3 tiles; 19 sequences: two batch blocks; 3 steps a loop iteration.
    monkeypatch.setitem(tuning.BY_PLATFORM, PLATFORM, SMALL._replace(tile=16, unroll=3))
    factory = {"lstm": memcell.lstm, "gru": memcell.gru, "rnn_tanh": memcell.rnn,
               "rnn_relu": functools.partial(memcell.rnn, activation="relu")}[name]
    cell = factory(37)
    k = jax.random.split(jax.random.key(8), 3)
    params = cell.init(k[0], D)
    xs = jax.random.normal(k[1], (19, 23, D))
    carry = jax.tree.map(lambda z: 0.5 * jax.random.normal(k[2], z.shape), cell.initial_carry(params, (19,)))
    kw = {} if options == "plain" else _options((19,), 23, seed=9)
    err, gerr, scale, _ = compare(cell, params, xs, carry, **kw)
    assert err < 1e-4 and gerr < 1e-4 * max(scale, 1.0), (err, gerr, scale)


@pytest.mark.slow
@pytest.mark.parametrize("kind, G", [("tanh", 1), ("relu", 1), ("lstm", 4), ("gru", 3)])
def test_every_kernel_lowers_to_triton(kind, G):
    # Resident weights (H = 24), weights read each step (H = 100), tiles (H = 200), float32 and bfloat16.
    B, T_ = 3, 5
    flags = jnp.ones((B, T_), bool)
    for Hd, dtype in ((24, None), (100, jnp.bfloat16), (200, None)):
        bh = jnp.zeros(G * Hd) if kind == "gru" else None
        carry = tuple(jnp.zeros((B, Hd)) for _ in range(2 if kind == "lstm" else 1))
        run = lambda zx, w, c: jnp.sum(recurrence(kind, zx, w, bh, c, None, flags, dtype=dtype, tuning=tuning.GPU,
                                                  platform="gpu")[0])
        assert _lowers_to_triton(jax.grad(run, argnums=(0, 1, 2)), jnp.ones((B, T_, G, Hd)), jnp.ones((Hd, G * Hd)),
                                 carry) == 2
    bf = jnp.ones((B, T_, 24), jnp.bfloat16)
    assert _lowers_to_triton(lambda a, b: linear_scan(a, b, jnp.zeros((B, 24)), valid=flags, platform="gpu"), bf, bf) == 1
