"""The fused layers (memcell.fused) against the reference path (memcell.unroll over cell.step)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import memcell
from memcell import fused
from memcell.fused import kinds, layout as fused_layout, tuning

B, D, H = 3, 5, 8

# name -> (factory of the reference cell, fused function with the matching options)
KINDS = {
    "lstm": (lambda **kw: memcell.lstm(H, **kw), fused.lstm),
    "gru": (lambda **kw: memcell.gru(H, **kw), fused.gru),
    "rnn_tanh": (lambda **kw: memcell.rnn(H, **kw), fused.rnn),
    "rnn_relu": (
        lambda **kw: memcell.rnn(H, activation="relu", **kw),
        lambda *a, **kw: fused.rnn(*a, activation="relu", **kw),
    ),
}


def _use_layout(name, monkeypatch):
    """Lower the CPU tuning's thresholds (``memcell.fused.tuning.CPU``) so the H = 8 cells run ``name``."""
    t = tuning.CPU
    if name == "feature_major":
        t = t._replace(feature_major_from_h=1)
    if name == "batch_major_grouped":
        t = t._replace(groups_from_h=1, groups_min_b=2)
    monkeypatch.setitem(tuning.BY_PLATFORM, jax.default_backend(), t)
    return name


# The full grid of the two layouts other than CPU's default runs with the slow checks (make
# test-slow); make test checks each of them against the reference in
# test_every_layout_matches_the_reference, with lengths, an initial carry and reverse at once.
_OTHER_LAYOUTS = ("batch_major_grouped", "feature_major")


@pytest.fixture(params=["batch_major", *(pytest.param(n, marks=pytest.mark.slow) for n in _OTHER_LAYOUTS)])
def layout(request, monkeypatch):
    """Every layout of the fused path, on these small cells, on any platform: the CPU tuning
    (``memcell.fused.tuning.CPU``) with its thresholds lowered so these H = 8 cells take each path.
    From ``feature_major_from_h`` hidden units on it runs feature-major ([h, B] per step); from
    ``groups_from_h`` on (batch-major) each step runs the batch as two independent groups; with
    B = 3 the groups are uneven (2 and 1)."""
    return _use_layout(request.param, monkeypatch)


def _params(cell, key=0, scale=0.3):
    """Params with every entry non-zero (biases included), so no gradient term hides behind a zero."""
    params = cell.init(jax.random.key(key), D)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(key + 100), len(leaves))
    noisy = [a + scale * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, noisy)


def _carry(cell, params, batch_shape, key=7):
    zeros = cell.initial_carry(params, batch_shape)
    leaves, tree = jax.tree.flatten(zeros)
    keys = jax.random.split(jax.random.key(key), len(leaves))
    return jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


def _loss(run):
    """A loss reading every output and every leaf of the final carry, each with its own weight."""

    def loss(params, xs, carry):
        c_T, ys = run(params, xs, carry)
        w = jnp.sin(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        total = jnp.sum(w * ys) + jnp.sum(ys**2)
        for i, leaf in enumerate(jax.tree.leaves(c_T)):
            total = total + (i + 1.5) * jnp.sum(jnp.cos(leaf))
        return total

    return loss


def _value_and_grads(run, params, xs, carry):
    # Under jit: one compilation instead of op-by-op dispatch keeps the suite fast.
    return jax.jit(jax.value_and_grad(_loss(run), argnums=(0, 1, 2)))(params, xs, carry)


def _assert_close_in_norm(a, b, tol):
    """Each leaf within ``tol`` of the reference in relative L2 norm: the bf16 comparison, where
    the reference rounds every step's weight gradient to bf16 and the fused path accumulates
    them in one float32 matmul, so single elements legitimately differ by a few bf16 ulps."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape, x.dtype, y.dtype)
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        err = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)
        assert err < tol, (err, x.shape)


def _assert_close(a, b, rtol, atol):
    """Leafwise ``|x - y| <= atol * scale + rtol * |y|`` with ``scale = max(1, max |y|)``.

    The absolute term is relative to the leaf's largest entry: a weight gradient is a sum over
    all steps and batch rows, and an entry where large terms cancel carries float32 rounding of
    the order of the terms, not of the small result (both paths sum in different orders).
    """
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape, x.dtype, y.dtype)
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(1.0, float(np.max(np.abs(y)))) if y.size else 1.0
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol * scale)


OPTIONS = {
    "plain": dict(),
    "lengths_carry": dict(lengths=np.array([7, 3, 0]), carry=True),
    "reverse": dict(reverse=True),
    "reverse_lengths_carry": dict(reverse=True, lengths=np.array([2, 7, 5]), carry=True),
}


# The GRU's cases in test-slow: tests/test_contract.py checks the fused GRU against a per-sequence
# oracle in make test (values; gradients against the reference), with lengths, reverse and a carry.
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k == "gru" else k for k in KINDS])
def test_values_and_gradients_match_reference_float32(kind, option, layout):
    make, run = KINDS[kind]
    cell = make()
    params = _params(cell)
    # 8: blocks of 4 steps a scan iteration; 6: blocks of 3; 7: blocks of 1
    T = {"plain": 8, "reverse": 6}.get(option, 7)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    kw = dict(OPTIONS[option])
    carry = _carry(cell, params, (B,)) if kw.pop("carry", False) else None
    kw = {k: (jnp.asarray(v) if k == "lengths" else v) for k, v in kw.items()}
    got = _value_and_grads(lambda p, x, c: run(p, x, c, **kw), params, xs, carry)
    want = _value_and_grads(lambda p, x, c: memcell.unroll(cell, p, x, c, **kw), params, xs, carry)
    _assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("name", _OTHER_LAYOUTS)
def test_every_layout_matches_the_reference(name, kind, monkeypatch):
    _use_layout(name, monkeypatch)
    make, run = KINDS[kind]
    cell = make()
    params = _params(cell)
    xs = jax.random.normal(jax.random.key(1), (B, 7, D))
    kw = dict(reverse=True, lengths=jnp.array([2, 7, 5]))
    carry = _carry(cell, params, (B,))
    got = _value_and_grads(lambda p, x, c: run(p, x, c, **kw), params, xs, carry)
    want = _value_and_grads(lambda p, x, c: memcell.unroll(cell, p, x, c, **kw), params, xs, carry)
    _assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_reference_float64(kind, layout):
    make, run = KINDS[kind]
    with jax.enable_x64(True):
        cell = make(param_dtype=jnp.float64)
        params = _params(cell)
        xs = jax.random.normal(jax.random.key(1), (B, 6, D), jnp.float64)
        carry = _carry(cell, params, (B,))
        lengths = jnp.array([6, 2, 4])
        got = _value_and_grads(lambda p, x, c: run(p, x, c, lengths=lengths), params, xs, carry)
        want = _value_and_grads(lambda p, x, c: memcell.unroll(cell, p, x, c, lengths=lengths), params, xs, carry)
        assert jax.tree.leaves(got)[0].dtype == jnp.float64
        _assert_close(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("platform", ["cpu", pytest.param("gpu", marks=pytest.mark.slow)])  # the GPU's tuning: test-slow
def test_layout_of_each_platform_at_the_cpu_switch_size(platform, monkeypatch):
    """An LSTM of ``CPU.feature_major_from_h`` units, float32, with each platform's tuning: the CPU's
    switches to feature-major on its own there, the GPU's stays batch-major; both match the reference."""
    monkeypatch.setitem(tuning.BY_PLATFORM, jax.default_backend(), tuning.for_platform(platform))
    H_switch = tuning.CPU.feature_major_from_h
    assert fused_layout.feature_axis(H_switch) == (0 if platform == "cpu" else -1)
    cell = memcell.lstm(H_switch)
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (2, 16, D))  # T = 16: two blocks of the GPU's 8 steps
    got = _value_and_grads(lambda p, x, c: fused.lstm(p, x, c), params, xs, None)
    want = _value_and_grads(lambda p, x, c: memcell.unroll(cell, p, x, c), params, xs, None)
    _assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_compute_matches_reference_in_bfloat16(kind, layout):
    make, run = KINDS[kind]
    cell = make(dtype=jnp.bfloat16)
    params = _params(cell, scale=0.1)
    xs = jax.random.normal(jax.random.key(1), (B, 8, D))
    got = _value_and_grads(lambda p, x, c: run(p, x, c, dtype=jnp.bfloat16), params, xs, None)
    want = _value_and_grads(lambda p, x, c: memcell.unroll(cell, p, x, c), params, xs, None)
    # The carry and the accumulation stay float32 on both paths: same dtypes, bf16-level agreement.
    assert got[0].dtype == jnp.float32
    _assert_close_in_norm(got, want, 2e-2)
    # ...and the bf16 run really differs from float32, so the tolerance above is not vacuous.
    f32 = _value_and_grads(lambda p, x, c: run(p, x, c), params, xs, None)
    assert float(jnp.abs(f32[0] - got[0])) > 0


def test_bfloat16_params_and_inputs():
    cell = memcell.lstm(H, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    params = _params(cell, scale=0.1)
    xs = jax.random.normal(jax.random.key(1), (B, 8, D)).astype(jnp.bfloat16)
    (c1, y1), (c2, y2) = fused.lstm(params, xs, dtype=jnp.bfloat16), memcell.unroll(cell, params, xs)
    assert y1.dtype == y2.dtype == jnp.float32 and c1.c.dtype == jnp.float32
    _assert_close_in_norm((c1, y1), (c2, y2), 2e-2)
    g1 = jax.jit(jax.grad(lambda p: jnp.sum(fused.lstm(p, xs, dtype=jnp.bfloat16)[1] ** 2)))(params)
    g2 = jax.jit(jax.grad(lambda p: jnp.sum(memcell.unroll(cell, p, xs)[1] ** 2)))(params)
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(g1))
    _assert_close_in_norm(g1, g2, 3e-2)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_batch_shapes_jit_and_vmap(kind, layout):
    make, run = KINDS[kind]
    cell = make()
    params = _params(cell)
    xs = jax.random.normal(jax.random.key(1), (2, 3, 6, D))  # two batch axes
    lengths = jnp.array([[6, 1, 0], [3, 6, 2]])
    want = jax.jit(lambda x, n: memcell.unroll(cell, params, x, lengths=n))(xs, lengths)
    jitted = jax.jit(lambda p, x, n: run(p, x, lengths=n))(params, xs, lengths)
    _assert_close(jitted, want, 1e-5, 1e-5)
    vmapped = jax.jit(jax.vmap(jax.vmap(lambda x, n: run(params, x, lengths=n))))(xs, lengths)
    _assert_close(vmapped, want, 1e-5, 1e-5)
    # one unbatched sequence [T, D], eagerly (jit == eager)
    _assert_close(run(params, xs[0, 0]), memcell.unroll(cell, params, xs[0, 0]), 1e-5, 1e-5)
    # gradients through vmap of the fused path == batched reference gradients
    g_vmap = jax.jit(jax.grad(lambda p: jnp.sum(jax.vmap(lambda x: run(p, x)[1])(xs[0]) ** 2)))(params)
    g_ref = jax.jit(jax.grad(lambda p: jnp.sum(memcell.unroll(cell, p, xs[0])[1] ** 2)))(params)
    _assert_close(g_vmap, g_ref, 1e-5, 1e-5)


def test_unbatched_carry_broadcasts_and_gets_summed_gradient():
    cell = memcell.lstm(H)
    params = _params(cell)
    xs = jax.random.normal(jax.random.key(1), (B, 5, D))
    carry = _carry(cell, params, ())  # leaves [H], broadcast over the batch
    got = _value_and_grads(lambda p, x, c: fused.lstm(p, x, c), params, xs, carry)
    want = _value_and_grads(lambda p, x, c: memcell.unroll(cell, p, x, c), params, xs, carry)
    assert got[1][2].h.shape == (H,)
    _assert_close(got, want, 1e-5, 1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_garbage_in_padding_does_not_reach_outputs_or_gradients(kind):
    make, run = KINDS[kind]
    cell = make()
    params = _params(cell)
    lengths = jnp.array([6, 2, 4])
    xs = jax.random.normal(jax.random.key(1), (B, 6, D))
    pad = jnp.arange(6)[None, :, None] >= lengths[:, None, None]
    dirty = jnp.where(pad, jnp.nan, xs)
    got = _value_and_grads(lambda p, x, c: run(p, x, c, lengths=lengths), params, dirty, None)
    want = _value_and_grads(lambda p, x, c: memcell.unroll(cell, p, x, c, lengths=lengths), params, xs, None)
    assert all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(got))
    _assert_close(got, want, 1e-5, 1e-5)


def test_zero_length_sequences_return_the_initial_carry():
    cell = memcell.gru(H)
    params = _params(cell)
    xs = jax.random.normal(jax.random.key(1), (B, 4, D))
    carry = _carry(cell, params, (B,))
    c_T, ys = fused.gru(params, xs, carry, lengths=jnp.zeros((B,), jnp.int32))
    np.testing.assert_array_equal(c_T.h, carry.h)
    np.testing.assert_array_equal(ys, 0.0)
    c0, y0 = fused.gru(params, jnp.zeros((B, 0, D)), carry)  # T = 0
    np.testing.assert_array_equal(c0.h, carry.h)
    assert y0.shape == (B, 0, H)


def test_no_retracing_on_a_second_call():
    params = _params(memcell.lstm(H))
    f = jax.jit(jax.grad(lambda p, x: jnp.sum(fused.lstm(p, x)[1])))
    xs = jnp.ones((B, 5, D))
    f(params, xs)
    f(params, xs + 1.0)
    assert f._cache_size() == 1


def test_forward_mode_is_refused_clearly():
    # The custom VJP is first order; jvp (jacobian studies) belongs to the reference path.
    params = _params(memcell.lstm(H))
    xs = jnp.ones((B, 5, D))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: fused.lstm(params, x)[1], (xs,), (xs,))


# ----------------------------------------------------------------------------- tuning and residuals


def test_tuning_is_per_platform():
    """CPU: the constants measured on the 2-core CPU; GPU: measured on an H100 (batch-major, one
    group, 8 steps a scan iteration); TPU and others (not measured): the plain layout."""
    assert tuning.for_platform("cpu") == tuning.Tuning(
        scan_unroll=4, feature_major_from_h=512, groups_from_h=256, groups_min_b=16
    )
    assert tuning.for_platform("gpu").scan_unroll == 8
    for platform in ("gpu", "tpu", "some_new_backend"):
        t = tuning.for_platform(platform)
        assert t.feature_major_from_h is None and t.groups_from_h is None
        assert t.scan_unroll == (8 if platform == "gpu" else 4)
        # batch-major and one group at every size
        assert fused_layout.feature_axis(1 << 16, t) == -1
        assert fused_layout.groups(1024, 1 << 16, -1, t).n == 1
    cpu = tuning.for_platform("cpu")
    assert [fused_layout.feature_axis(h, cpu) for h in (511, 512)] == [-1, 0]
    assert [fused_layout.groups(b, h, -1, cpu).n for b, h in ((16, 255), (15, 256), (16, 256))] == [1, 1, 2]
    assert fused_layout.groups(16, 1024, 0, cpu).n == 1  # feature-major runs one group
    assert tuning.for_platform() is tuning.BY_PLATFORM.get(jax.default_backend(), tuning.PLAIN)


@pytest.mark.parametrize("name, make, fields", [
    ("lstm", lambda: kinds.lstm_kind(None, -1, tuning.CPU), ("a", "f", "passthrough")),
    ("gru", lambda: kinds.gru_kind(None, -1, tuning.CPU), ("z", "r")),
    ("rnn", lambda: kinds.rnn_kind(None, "tanh", -1, tuning.CPU), ("passthrough",)),
])
def test_each_kind_names_the_residuals_it_stores(name, make, fields):
    """What a step keeps for the backward pass is a NamedTuple of [B, h] arrays named by field (no
    buffer decoded by its width); ``passthrough`` exists only with lengths (None without)."""
    kind = make()
    assert kind.residuals._fields == fields
    G = kind.n_gates * H
    rec = lambda h: jnp.zeros(h.shape[:-1] + (G,), h.dtype)
    carry = (jnp.ones((B, H)),) * (2 if name == "lstm" else 1)
    zx, b = jnp.ones((B, G)), jnp.zeros((G,))
    for ok in (None, jnp.array([[True], [False], [True]])):
        _, (k, res) = kind.step(rec, b, b, carry, zx, ok, True)
        assert type(res) is kind.residuals and k.shape == (B, G)
        for field in fields:
            value = getattr(res, field)
            if field == "passthrough" and ok is None:
                assert value is None
            else:
                assert value.shape == (B, H), (field, value.shape)


# ----------------------------------------------------------------------------- dispatch from unroll


@pytest.mark.parametrize("kind", KINDS)
def test_unroll_backends_agree(kind):
    make, _ = KINDS[kind]
    cell = make()
    params = _params(cell)
    xs = jax.random.normal(jax.random.key(1), (B, 6, D))
    lengths = jnp.array([6, 1, 3])
    runs = {
        b: _value_and_grads(
            lambda p, x, c, b=b: memcell.unroll(cell, p, x, c, lengths=lengths, reverse=True, backend=b),
            params, xs, None,
        )
        for b in ("reference", "fused", "auto")
    }
    _assert_close(runs["fused"], runs["reference"], 1e-5, 1e-5)
    _assert_close(runs["auto"], runs["fused"], 0, 0)  # auto took the fused path


def test_layers_and_models_take_the_backend():
    """``layer``, ``bidirectional`` and ``tasks.sequence_model`` pass ``backend`` to ``unroll``."""
    from memcell import tasks

    cell = memcell.lstm(H)
    xs = jax.random.normal(jax.random.key(1), (B, 6, D))
    lengths = jnp.array([6, 2, 4])
    pairs = [
        (memcell.layer(cell), memcell.layer(cell, backend="fused")),
        (memcell.bidirectional(cell, memcell.gru(H)), memcell.bidirectional(cell, memcell.gru(H), backend="fused")),
    ]
    for ref, fast in pairs:
        params = ref.init(jax.random.key(0), D)
        run = lambda lyr: lambda p, x, c: lyr.apply(p, x, lengths=lengths)
        got, want = _value_and_grads(run(fast), params, xs, None), _value_and_grads(run(ref), params, xs, None)
        _assert_close(got, want, 1e-5, 1e-5)
    # The fused path really runs: its jaxpr has the custom VJP, the reference's does not.
    jaxpr = lambda lyr: str(jax.make_jaxpr(lambda p: lyr.apply(p, xs)[1])(pairs[0][0].init(jax.random.key(0), D)))
    assert "custom_vjp" in jaxpr(pairs[0][1]) and "custom_vjp" not in jaxpr(pairs[0][0])
    model_ref = tasks.sequence_model([cell, memcell.gru(H)], output_size=2)
    model_auto = tasks.sequence_model([cell, memcell.gru(H)], output_size=2, backend="auto")
    params = model_ref.init(jax.random.key(0), D)
    loss = lambda model: jax.jit(jax.value_and_grad(lambda p: jnp.sum(model.apply(p, xs, lengths=lengths) ** 2)))
    _assert_close(loss(model_auto)(params), loss(model_ref)(params), 1e-5, 1e-5)
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'fast'"):
        memcell.layer(cell, backend="fast")
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'fast'"):
        memcell.bidirectional(cell, cell, backend="fast")
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'fast'"):  # even with no Cell to lift
        tasks.sequence_model(memcell.layer(cell), output_size=2, backend="fast")


UNSUPPORTED = {
    "peephole": (memcell.lstm(H, peephole=True), {}),
    "layer_norm": (memcell.lstm(H, layer_norm=True), {}),
    "cifg": (memcell.lstm(H, cifg=True), {}),
    "no_output_gate": (memcell.lstm(H, output_gate=False), {}),
    "no_output_activation": (memcell.lstm(H, output_activation=False), {}),
    "gru_reset_before": (memcell.gru(H, reset_after=False), {}),
    "resets": (memcell.lstm(H), dict(resets=jnp.array([False, False, True, False, False]))),
    "user_cell": (memcell.Cell(memcell.rnn(H).init, memcell.rnn(H).initial_carry, lambda p, c, x: memcell.rnn(H).step(p, c, x)), {}),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_options_fall_back_with_auto_and_raise_with_fused(case):
    cell, kw = UNSUPPORTED[case]
    params = _params(cell)
    xs = jax.random.normal(jax.random.key(1), (B, 5, D))
    assert not (memcell.paths.why_not("fused", cell, resets=kw.get("resets"), remat=kw.get("remat", False)) is None)
    auto = memcell.unroll(cell, params, xs, backend="auto", **kw)
    ref = memcell.unroll(cell, params, xs, **kw)
    _assert_close(auto, ref, 0, 0)  # the reference path itself, bit for bit
    with pytest.raises(ValueError, match="backend='fused' cannot run"):
        memcell.unroll(cell, params, xs, backend="fused", **kw)


def test_remat_runs_on_the_fused_path():
    """remat was refused here until blocks of steps were checkpointed (tests/test_remat.py has the rest)."""
    cell = memcell.rnn(H)
    params = _params(cell)
    xs = jax.random.normal(jax.random.key(1), (B, 5, D))
    assert (memcell.paths.why_not("fused", cell, remat=True) is None)
    _assert_close(memcell.unroll(cell, params, xs, backend="fused", remat=True), memcell.unroll(cell, params, xs), 1e-5, 1e-6)


def test_proj_size_is_named_when_the_fused_path_refuses_it():
    cell = memcell.lstm(H, proj_size=3)
    params, xs = cell.init(jax.random.key(0), D), jnp.ones((B, 4, D))
    assert memcell.paths.why_not("fused", cell) == "the fused LSTM implements the default cell only, this one sets proj_size"
    assert (memcell.paths.why_not("fused", memcell.lstm(H, proj_size=0)) is None)  # 0 is no projection, as in torch
    with pytest.raises(ValueError, match="backend='fused' cannot run this unroll: .*sets proj_size"):
        memcell.unroll(cell, params, xs, backend="fused")
    # "auto": the fused dispatch declines before anything runs, and memcell.unroll then runs the reference
    # (the fall-back itself, reference bit for bit, is test_unsupported_options_fall_back_..., for every option)
    assert memcell.paths.which(cell, params, xs, backend="auto") == "reference"


def test_supported_cells():
    for cell in (memcell.lstm(H, forget_bias=2.0, init="default"), memcell.lstm(H, init="chrono", max_timescale=10),
                 memcell.gru(H), memcell.rnn(H, activation="relu"), memcell.lstm(H, dtype=jnp.bfloat16)):
        assert (memcell.paths.why_not("fused", cell) is None)


def test_unroll_rejects_an_unknown_backend():
    cell = memcell.rnn(H)
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'cuda'"):
        memcell.unroll(cell, cell.init(jax.random.key(0), D), jnp.ones((4, D)), backend="cuda")


# ----------------------------------------------------------------------------- bad input


def test_params_of_unsupported_variants_are_refused_by_name():
    xs = jnp.ones((B, 4, D))
    with pytest.raises(ValueError, match="peepholes"):
        fused.lstm(memcell.lstm(H, peephole=True).init(jax.random.key(0), D), xs)
    with pytest.raises(ValueError, match="layer norm"):
        fused.lstm(memcell.lstm(H, layer_norm=True).init(jax.random.key(0), D), xs)
    with pytest.raises(ValueError, match=r"output projection \(proj_size\) \(params.w_hr is set\)"):
        fused.lstm(memcell.lstm(H, proj_size=3).init(jax.random.key(0), D), xs)
    with pytest.raises(ValueError, match=r"w_h of shape \[h, 4h\].*got shape \(8, 24\)"):
        fused.lstm(memcell.lstm(H, cifg=True).init(jax.random.key(0), D), xs)
    with pytest.raises(TypeError, match="params must be a memcell.cells.LSTMParams.*got GRUParams"):
        fused.lstm(memcell.gru(H).init(jax.random.key(0), D), xs)
    with pytest.raises(ValueError, match="reset_after=True only, got reset_after=False"):
        fused.gru(memcell.gru(H).init(jax.random.key(0), D), xs, reset_after=False)
    with pytest.raises(ValueError, match="activation must be one of.*got 'gelu'"):
        fused.rnn(memcell.rnn(H).init(jax.random.key(0), D), xs, activation="gelu")
    bad = memcell.lstm(H).init(jax.random.key(0), D)._replace(b=jnp.zeros((3,)))
    with pytest.raises(ValueError, match=r"params.b must have shape \(32,\), got shape \(3,\)"):
        fused.lstm(bad, xs)


def test_bad_arguments_are_named():
    params = memcell.lstm(H).init(jax.random.key(0), D)
    xs = jnp.ones((B, 4, D))
    with pytest.raises(ValueError, match=f"xs must have {D} features.*got shape"):
        fused.lstm(params, jnp.ones((B, 4, D + 1)))
    with pytest.raises(ValueError, match=r"xs must have shape \[..., T, D\]"):
        fused.lstm(params, jnp.ones((D,)))
    with pytest.raises(TypeError, match="xs must be a floating-point array, got dtype int32"):
        fused.lstm(params, jnp.ones((B, 4, D), jnp.int32))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=4\].*max 5"):
        fused.lstm(params, xs, lengths=jnp.array([1, 5, 2]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(3,\).*got shape \(2,\)"):
        fused.lstm(params, xs, lengths=jnp.array([1, 2]))
    with pytest.raises(TypeError, match="lengths must be an integer array, got dtype float32"):
        fused.lstm(params, xs, lengths=jnp.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="carry leaves must have shape"):
        fused.lstm(params, xs, memcell.cells.LSTMCarry(jnp.zeros((2, H)), jnp.zeros((2, H))))
    with pytest.raises(ValueError, match="carry must have the structure"):
        fused.lstm(params, xs, (jnp.zeros((B, H)),))
    with pytest.raises(TypeError, match="reverse must be a bool, got 1"):
        fused.lstm(params, xs, reverse=1)
    with pytest.raises(TypeError, match="dtype must be a floating dtype, got int32"):
        fused.lstm(params, xs, dtype=jnp.int32)
    with pytest.raises(ValueError, match="backend must be one of"):
        memcell.unroll(memcell.lstm(H), params, xs, backend="fast")
