"""memcell.convert: PyTorch and Flax weights both ways, with outputs compared to the real frameworks."""

import doctest
import importlib
import pathlib
import pkgutil
import re
import subprocess
import sys

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import memcell
from memcell import convert

TOL = 1e-5  # float32 parity with PyTorch
TORCH = {
    "lstm": (torch.nn.LSTM, {}),
    "gru": (torch.nn.GRU, {}),
    "rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
}


def torch_module(mode, d, h, *, num_layers=1, bidirectional=False, bias=True, seed=0, dtype=torch.float32, proj_size=0):
    torch.manual_seed(seed)
    cls, kw = TORCH[mode]
    kw = dict(kw, proj_size=proj_size) if proj_size else kw  # only torch.nn.LSTM takes proj_size
    m = cls(d, h, num_layers=num_layers, bidirectional=bidirectional, bias=bias, batch_first=True, **kw)
    m = m.to(dtype)
    with torch.no_grad():  # nonzero, distinct biases so that bias handling is really tested
        for name, p in m.named_parameters():
            if name.startswith("bias"):
                p.uniform_(-0.5, 0.5)
    return m


def state_dict_np(m):
    return {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}


def run_torch(m, mode, x, lengths=None, hx=None):
    """Torch outputs [B, T, dirs*H] (zeros in padding) and h_n (and c_n) as NumPy."""
    with torch.no_grad():
        if lengths is None:
            y, out_h = m(x, hx)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            y, out_h = m(packed, hx)
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
    if mode == "lstm":
        return y.numpy(), (out_h[0].numpy(), out_h[1].numpy())
    return y.numpy(), out_h.numpy()


def assert_close(a, b, tol=TOL):
    chex.assert_trees_all_close(np.asarray(a), np.asarray(b), rtol=0, atol=tol)  # shapes must match too


def check_parity(mode, d, h, num_layers, bidirectional, *, B=3, T=7, with_lengths=(False, True), seed=0, proj_size=0):
    m = torch_module(mode, d, h, num_layers=num_layers, bidirectional=bidirectional, seed=seed, proj_size=proj_size)
    layer, params = convert.from_torch(state_dict_np(m), mode=mode)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, d)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T  # pack_padded_sequence needs one full-length sequence for total_length
    for lens in [lengths if w else None for w in with_lengths]:
        y_t, hn_t = run_torch(m, mode, torch.from_numpy(x), None if lens is None else torch.from_numpy(lens))
        carries, ys = layer.apply(params, jnp.asarray(x), lengths=None if lens is None else jnp.asarray(lens))
        assert ys.dtype == jnp.float32
        assert_close(ys, y_t)
        hn_m = convert.to_torch_carry(carries)
        if mode == "lstm":
            assert_close(hn_m[0], hn_t[0])
            assert_close(hn_m[1], hn_t[1])
        else:
            assert_close(hn_m, hn_t)


# --------------------------------------------------------------------------- from_torch parity


@pytest.mark.parametrize("mode", list(TORCH))
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_from_torch_matches_torch_outputs_and_final_carries(mode, num_layers, bidirectional):
    # without lengths: test_from_torch_parity_random_sizes and the round trips
    check_parity(mode, d=4, h=6, num_layers=num_layers, bidirectional=bidirectional, with_lengths=(True,))


def test_from_torch_three_layers():
    check_parity("lstm", d=2, h=3, num_layers=3, bidirectional=False, with_lengths=(False,))


# Every mode is a case of its own (a sampled mode could miss one); Hypothesis draws the sizes.
# LSTM and GRU here; the two RNN modes (one code path with the activation swapped) with the slow checks.
@pytest.mark.parametrize("mode", [m if m in ("lstm", "gru") else pytest.param(m, marks=pytest.mark.slow) for m in TORCH])
@settings(max_examples=3, deadline=None)
@given(
    d=st.integers(1, 9),
    h=st.integers(1, 9),
    num_layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    batch=st.integers(1, 4),
    T=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_from_torch_parity_random_sizes(mode, d, h, num_layers, bidirectional, batch, T, seed):
    check_parity(mode, d, h, num_layers, bidirectional, B=batch, T=T, seed=seed)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_from_torch_initial_state_via_from_torch_carry(mode):
    m = torch_module(mode, 3, 5, num_layers=2, bidirectional=True)
    layer, params = convert.from_torch(state_dict_np(m), mode=mode)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    h0 = rng.normal(size=(4, 2, 5)).astype(np.float32)
    c0 = rng.normal(size=(4, 2, 5)).astype(np.float32)
    hx_t = (torch.from_numpy(h0), torch.from_numpy(c0)) if mode == "lstm" else torch.from_numpy(h0)
    y_t, hn_t = run_torch(m, mode, torch.from_numpy(x), hx=hx_t)
    carry = convert.from_torch_carry((h0, c0) if mode == "lstm" else h0, mode=mode, bidirectional=True)
    carries, ys = layer.apply(params, jnp.asarray(x), carry)
    assert_close(ys, y_t)
    hn_m = convert.to_torch_carry(carries)
    assert_close(hn_m[0] if mode == "lstm" else hn_m, hn_t[0] if mode == "lstm" else hn_t)


def test_from_torch_carry_under_jit_and_grad_matches_torch_autograd():
    """from_torch_carry is traceable: d loss / d (h_0, c_0) through it under jax.jit equals torch's autograd."""
    m = torch_module("lstm", 3, 5, num_layers=2, bidirectional=True)
    layer, params = convert.from_torch(state_dict_np(m), mode="lstm")
    rng = np.random.default_rng(2)
    x, h0, c0 = (rng.normal(size=s).astype(np.float32) for s in ((2, 6, 3), (4, 2, 5), (4, 2, 5)))
    h_t, c_t = (torch.from_numpy(a).requires_grad_() for a in (h0, c0))
    y_t, _ = m(torch.from_numpy(x), (h_t, c_t))
    (y_t**2).sum().backward()

    def loss(h, c):
        carry = convert.from_torch_carry((h, c), mode="lstm", bidirectional=True)
        return jnp.sum(layer.apply(params, jnp.asarray(x), carry)[1] ** 2)

    g_h, g_c = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(h0), jnp.asarray(c0))
    assert_close(g_h, h_t.grad.numpy())
    assert_close(g_c, c_t.grad.numpy())
    jitted = jax.jit(lambda h: convert.from_torch_carry(h, mode="gru"))(jnp.asarray(h0))
    chex.assert_trees_all_equal(jitted, convert.from_torch_carry(h0, mode="gru"))
    with pytest.raises(TypeError, match="h_0 must be a floating-point array, got dtype int32"):
        jax.jit(lambda h: convert.from_torch_carry(h, mode="gru"))(jnp.zeros((2, 1, 3), jnp.int32))


def test_from_torch_unbatched_input():
    m = torch_module("lstm", 3, 4)
    layer, params = convert.from_torch(state_dict_np(m), mode="lstm")
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    with torch.no_grad():
        y_t, (h_t, c_t) = m(torch.from_numpy(x))
    carries, ys = layer.apply(params, jnp.asarray(x))
    assert_close(ys, y_t.numpy())
    assert_close(convert.to_torch_carry(carries)[1], c_t.numpy())


def test_from_torch_accepts_tensors_prefix_and_bias_false():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(2, 3)
            self.rnn = torch.nn.GRU(3, 4, bias=False, batch_first=True)

    model = Model()
    sd = model.state_dict()  # torch tensors, whole model
    layer, params = convert.from_torch(sd, mode="gru", prefix="rnn.")
    assert not np.any(np.asarray(params[0].b_x)) and not np.any(np.asarray(params[0].b_h))
    x = torch.randn(2, 5, 3)
    y_t, _ = run_torch(model.rnn, "gru", x)
    _, ys = layer.apply(params, jnp.asarray(x.numpy()))
    assert_close(ys, y_t)
    spec = convert.torch_spec(layer, params)
    assert spec == convert.TorchSpec("gru", 3, 4, 1, False, bias=False)
    sd2 = convert.to_torch(layer, params)
    assert sorted(sd2) == ["weight_hh_l0", "weight_ih_l0"]
    model.rnn.load_state_dict({k: torch.from_numpy(v) for k, v in sd2.items()})


def test_from_torch_float64_keeps_dtype():
    m = torch_module("lstm", 3, 4, num_layers=2, dtype=torch.float64)
    with jax.enable_x64(True):
        layer, params = convert.from_torch(state_dict_np(m), mode="lstm")
        assert params[0].w_x.dtype == jnp.float64
        x = np.random.default_rng(0).normal(size=(2, 6, 3))
        y_t, _ = run_torch(m, "lstm", torch.from_numpy(x))
        _, ys = layer.apply(params, jnp.asarray(x))
        assert ys.dtype == jnp.float64
        assert_close(ys, y_t, tol=1e-12)


# --------------------------------------------------------------------------- to_torch


@pytest.mark.parametrize("mode", list(TORCH))
def test_round_trip_memcell_torch_memcell_is_exact(mode, bidirectional=True):
    layer = convert.torch_layer(mode, 5, num_layers=2, bidirectional=bidirectional)
    params = layer.init(jax.random.key(3), 4)
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(4), a.shape), params)  # nonzero biases
    sd = convert.to_torch(layer, params)
    layer2, params2 = convert.from_torch(sd, mode=mode)
    chex.assert_trees_all_equal(params2, params)  # structure and values, bit for bit
    chex.assert_trees_all_equal_dtypes(params2, params)
    # and the torch module built from the spec reproduces memcell's outputs
    spec = convert.torch_spec(layer, params)
    cls, _ = TORCH[mode]
    m = cls(**spec.torch_kwargs(), batch_first=True)
    assert list(m.state_dict()) == list(sd)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = np.random.default_rng(0).normal(size=(3, 6, 4)).astype(np.float32)
    y_t, _ = run_torch(m, mode, torch.from_numpy(x))
    _, ys = layer.apply(params, jnp.asarray(x))
    assert_close(ys, y_t)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_round_trip_torch_memcell_torch_gives_same_module(mode):
    m = torch_module(mode, 3, 4, num_layers=2, bidirectional=True)
    sd = state_dict_np(m)
    sd2 = convert.to_torch(*convert.from_torch(sd, mode=mode))
    assert list(sd2) == list(sd)
    for k in sd:
        if k.startswith("weight") or mode == "gru":
            np.testing.assert_array_equal(sd2[k], sd[k])
        elif k.startswith("bias_ih"):  # the LSTM's two biases come back as their sum, in bias_ih
            kh = k.replace("bias_ih", "bias_hh")
            np.testing.assert_array_equal(sd2[k], sd[k] + sd[kh])
            assert not np.any(sd2[kh])
    m2 = torch_module(mode, 3, 4, num_layers=2, bidirectional=True, seed=9)
    m2.load_state_dict({k: torch.from_numpy(v) for k, v in sd2.items()})
    x = torch.randn(2, 5, 3)
    assert_close(run_torch(m2, mode, x)[0], run_torch(m, mode, x)[0])


@pytest.mark.parametrize("mode", list(TORCH))
def test_torch_cells_both_ways(mode):
    cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}.get(mode, torch.nn.RNNCell)
    kw = {"nonlinearity": mode[4:]} if mode.startswith("rnn") else {}
    torch.manual_seed(0)
    tcell = cls(3, 5, **kw)
    cell, params = convert.from_torch_cell(tcell.state_dict(), mode=mode)
    rng = np.random.default_rng(0)
    x, h, c = (rng.normal(size=(2, n)).astype(np.float32) for n in (3, 5, 5))
    with torch.no_grad():
        hx = (torch.from_numpy(h), torch.from_numpy(c)) if mode == "lstm" else torch.from_numpy(h)
        out = tcell(torch.from_numpy(x), hx)
    if mode == "lstm":
        carry = memcell.cells.LSTMCarry(h=jnp.asarray(h), c=jnp.asarray(c))
    else:
        carry = cell.initial_carry(params, (2,))._replace(h=jnp.asarray(h))
    new, y = cell.step(params, carry, jnp.asarray(x))
    if mode == "lstm":
        assert_close(new.h, out[0].numpy())
        assert_close(new.c, out[1].numpy())
    else:
        assert_close(y, out.numpy())
    sd = convert.to_torch_cell(cell, params)
    assert sorted(sd) == sorted(tcell.state_dict())
    _, back = convert.from_torch_cell(sd, mode=mode)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_torch_cell_errors():
    sd = torch.nn.LSTMCell(3, 4).state_dict()
    with pytest.raises(ValueError, match="not weights of a torch lstm cell: \\['bias_hh_l0',.*use from_torch"):
        convert.from_torch_cell(torch.nn.LSTM(3, 4).state_dict(), mode="lstm")
    with pytest.raises(ValueError, match="missing the key 'bias_hh'"):
        convert.from_torch_cell({k: v for k, v in sd.items() if k != "bias_hh"}, mode="lstm")
    with pytest.raises(ValueError, match=r"weight_hh must have shape \[3 \* hidden_size"):
        convert.from_torch_cell(sd, mode="gru")
    with pytest.raises(ValueError, match="does not compute"):
        cell = memcell.gru(4, reset_after=False)
        convert.to_torch_cell(cell, _randomize(cell.init(jax.random.key(0), 3), 1))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_to_torch_on_a_plain_memcell_stack_probes_the_nonlinearity(activation):
    cell = memcell.rnn(4, activation=activation)
    layer = memcell.stack([memcell.bidirectional(cell, cell)])
    params = layer.init(jax.random.key(0), 3)
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(1), a.shape), params)
    spec = convert.torch_spec(layer, params)
    assert spec == convert.TorchSpec(f"rnn_{activation}", 3, 4, 1, True)
    sd = convert.to_torch(layer, params)
    m = torch.nn.RNN(**spec.torch_kwargs(), batch_first=True)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    _, ys = layer.apply(params, jnp.asarray(x))
    assert_close(ys, run_torch(m, "rnn_tanh", torch.from_numpy(x))[0])


def test_to_torch_single_layer_params_without_stack():
    cell = memcell.gru(4)
    layer = memcell.layer(cell)
    params = cell.init(jax.random.key(0), 2)
    sd = convert.to_torch(layer, params)
    assert sorted(sd) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: memcell.layer(memcell.gru(4, reset_after=False)), "does not compute"),
        (lambda: memcell.layer(memcell.lstm(4, input_activation=False)), "does not compute"),
        (lambda: memcell.bidirectional(memcell.lstm(4), memcell.lstm(4), merge="sum"), "does not compute"),
        (lambda: memcell.stack([memcell.gru(4), memcell.gru(4)], residual=True), "does not compute"),
        (lambda: memcell.layer(memcell.lstm(4, peephole=True)), "peephole"),
        (lambda: memcell.layer(memcell.lstm(4, layer_norm=True)), "layer-normalised"),
        (lambda: memcell.layer(memcell.lstm(4, output_gate=False)), "gate blocks"),
        (lambda: memcell.stack([memcell.lstm(4), memcell.gru(4)]), "torch layers are all alike"),
    ],
)
def test_to_torch_refuses_layers_torch_cannot_express(make, match):
    layer = make()
    params = layer.init(jax.random.key(0), 4)
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(1), a.shape), params)
    with pytest.raises(ValueError, match=match):
        convert.to_torch(layer, params)


def test_to_torch_checks_params_against_a_known_layer():
    layer = convert.torch_layer("lstm", 4, num_layers=2)
    other = convert.torch_layer("lstm", 5, num_layers=2).init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match="params do not fit the layer"):
        convert.to_torch(layer, other)
    with pytest.raises(TypeError, match="layer must be a memcell.Layer"):
        convert.to_torch(memcell.lstm(4), other)


# --------------------------------------------------------------------------- from_torch errors


def test_from_torch_bad_arguments():
    sd = state_dict_np(torch_module("lstm", 3, 4, num_layers=2))
    with pytest.raises(ValueError, match="mode must be one of"):
        convert.from_torch(sd, mode="LSTM")
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        convert.from_torch([1, 2], mode="lstm")
    missing = dict(sd)
    del missing["bias_hh_l1"]
    with pytest.raises(ValueError, match=r"missing the key 'bias_hh_l1' \(expected shape \(16,\) for a lstm"):
        convert.from_torch(missing, mode="lstm")
    bad = dict(sd, weight_hh_l1=np.zeros((16, 5), np.float32))
    with pytest.raises(ValueError, match=r"weight_hh_l1 must have shape \(16, 4\).*got shape \(16, 5\)"):
        convert.from_torch(bad, mode="lstm")
    bad = dict(sd, weight_ih_l1=np.zeros((16, 3), np.float32))
    with pytest.raises(ValueError, match=r"weight_ih_l1 must have shape \(16, 4\).*got shape \(16, 3\)"):
        convert.from_torch(bad, mode="lstm")
    bad = dict(sd, bias_ih_l0=np.zeros((15,), np.float32))
    with pytest.raises(ValueError, match=r"bias_ih_l0 must have shape \(16,\).*got shape \(15,\)"):
        convert.from_torch(bad, mode="lstm")
    with pytest.raises(ValueError, match=r"weight_hh_l0 must have shape \[3 \* hidden_size"):
        convert.from_torch(sd, mode="gru")  # LSTM weights read as a GRU
    with pytest.raises(ValueError, match="not weights of a torch lstm module.*'fc.weight'"):
        convert.from_torch(dict(sd, **{"fc.weight": np.zeros((2, 2), np.float32)}), mode="lstm")
    with pytest.raises(ValueError, match="no keys under prefix 'enc.'"):
        convert.from_torch(sd, mode="lstm", prefix="enc.")
    partial = {k: v for k, v in sd.items() if not k.endswith("_l0") or k.startswith("weight")}
    with pytest.raises(ValueError, match="has bias_ih_l1 but no bias_ih_l0"):
        convert.from_torch(partial, mode="lstm")
    with pytest.raises(TypeError, match="weight_ih_l0 must be a floating-point array, got dtype int64"):
        convert.from_torch(dict(sd, weight_ih_l0=np.zeros((16, 3), np.int64)), mode="lstm")


# --------------------------------------------------------------------------- torch.nn.LSTM(proj_size=...)
# torch's CPU LSTM warns that oneDNN has no projection and runs its own implementation: the one compared with.
_NO_ONEDNN_WARNING = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


@_NO_ONEDNN_WARNING
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_from_torch_proj_size_matches_torch(num_layers, bidirectional):
    # outputs, h_n [L * dirs, B, p] and c_n [L * dirs, B, h] against torch, with and without lengths
    check_parity("lstm", d=3, h=5, num_layers=num_layers, bidirectional=bidirectional, proj_size=2, T=6,
                 with_lengths=(True,))  # without lengths: the initial-state test below
    m = torch_module("lstm", 3, 5, num_layers=num_layers, bidirectional=bidirectional, proj_size=2)
    sd = state_dict_np(m)
    layer, params = convert.from_torch(sd, mode="lstm")
    dirs = 2 if bidirectional else 1
    p = params[-1].forward if bidirectional else params[-1]
    assert p.w_hr.shape == (5, 2) and p.w_h.shape == (2, 20) and p.w_x.shape == (2 * dirs if num_layers > 1 else 3, 20)
    np.testing.assert_array_equal(p.w_hr, sd[f"weight_hr_l{num_layers - 1}"].T)
    spec = convert.torch_spec(layer, params)
    assert spec == convert.TorchSpec("lstm", 3, 5, num_layers, bidirectional, proj_size=2)
    # torch -> memcell -> torch: the same keys in torch's order, the weights (weight_hr too) exact
    sd2 = convert.to_torch(layer, params)
    assert list(sd2) == list(sd)
    for k in sd:
        if k.startswith("weight"):
            np.testing.assert_array_equal(sd2[k], sd[k])
    m2 = torch.nn.LSTM(**spec.torch_kwargs(), batch_first=True)
    m2.load_state_dict({k: torch.from_numpy(v) for k, v in sd2.items()})
    x = torch.randn(2, 4, 3)
    assert_close(run_torch(m2, "lstm", x)[0], run_torch(m, "lstm", x)[0])


@_NO_ONEDNN_WARNING
def test_from_torch_proj_size_initial_state_and_fresh_layers():
    m = torch_module("lstm", 3, 5, num_layers=2, bidirectional=True, proj_size=2)
    layer, params = convert.from_torch(state_dict_np(m), mode="lstm")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    h0, c0 = rng.normal(size=(4, 2, 2)).astype(np.float32), rng.normal(size=(4, 2, 5)).astype(np.float32)
    y_t, (h_t, c_t) = run_torch(m, "lstm", torch.from_numpy(x), hx=(torch.from_numpy(h0), torch.from_numpy(c0)))
    carry = convert.from_torch_carry((h0, c0), mode="lstm", bidirectional=True)
    carries, ys = layer.apply(params, jnp.asarray(x), carry)
    assert_close(ys, y_t)
    h_n, c_n = convert.to_torch_carry(carries)
    assert_close(h_n, h_t)
    assert_close(c_n, c_t)
    # a fresh torch_layer with a projection: memcell -> torch -> memcell is exact
    fresh = convert.torch_layer("lstm", 5, num_layers=2, proj_size=2)
    params = _randomize(fresh.init(jax.random.key(0), 3), 2)
    assert params[1].w_x.shape == (2, 20) and params[1].w_hr.shape == (5, 2)
    _, back = convert.from_torch(convert.to_torch(fresh, params), mode="lstm")
    chex.assert_trees_all_equal(back, params)


def test_proj_size_errors_name_the_key_and_shapes():
    sd = state_dict_np(torch_module("lstm", 3, 5, num_layers=2, proj_size=2))
    with pytest.raises(ValueError, match=r"missing the key 'weight_hr_l1' \(expected shape \(2, 5\)"):
        convert.from_torch({k: v for k, v in sd.items() if k != "weight_hr_l1"}, mode="lstm")
    with pytest.raises(ValueError, match="has weight_hr_l1 but no weight_hr_l0: a projection in some layers only"):
        convert.from_torch({k: v for k, v in sd.items() if k != "weight_hr_l0"}, mode="lstm")
    with pytest.raises(ValueError, match=r"weight_hr_l0 must have shape \(2, 5\) \(\[proj_size, hidden_size\]\), got shape \(2, 4\)"):
        convert.from_torch(dict(sd, weight_hr_l0=_f32(2, 4)), mode="lstm")
    with pytest.raises(ValueError, match=r"weight_hh_l1 must have shape \(20, 2\) \(\[4 \* hidden_size, proj_size\]\)"):
        convert.from_torch(dict(sd, weight_hh_l1=_f32(20, 5)), mode="lstm")
    with pytest.raises(ValueError, match=r"weight_ih_l1 must have shape \(20, 2\).*got shape \(20, 5\)"):
        convert.from_torch(dict(sd, weight_ih_l1=_f32(20, 5)), mode="lstm")
    gru_sd = dict(_GRU_SD, weight_hr_l0=_f32(2, 4))
    with pytest.raises(ValueError, match=r"not weights of a torch gru module: \['weight_hr_l0'\]"):
        convert.from_torch(gru_sd, mode="gru")
    cell = memcell.lstm(5, proj_size=2)
    params = cell.init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match=r"torch.nn.LSTMCell has no projection, but params.w_hr is set \(shape \(5, 2\)"):
        convert.to_torch_cell(cell, params)
    with pytest.raises(ValueError, match="Flax's LSTM cells have no projection.*proj_size=2"):
        convert.to_flax(cell, params)
    with pytest.raises(ValueError, match="to_cudnn: jax.experimental.rnn's LSTM has no projection.*proj_size=2"):
        convert.to_cudnn(memcell.layer(cell), params)
    with pytest.raises(ValueError, match="is a lstm of 5 units but params\\[0\\] is a lstm of 5 projected to 2"):
        convert.to_torch(memcell.stack([cell, memcell.lstm(5)]), memcell.stack([cell, memcell.lstm(5)]).init(
            jax.random.key(0), 3))
    with pytest.raises(ValueError, match=r"h_0 and c_0 must have the same shape, or h_0 fewer units .*\(2, 1, 2\) and \(1, 1, 5\)"):
        convert.from_torch_carry((_f32(2, 1, 2), _f32(1, 1, 5)), mode="lstm")


def test_carry_helpers_bad_input():
    with pytest.raises(TypeError, match=r"hx must be the pair \(h_0, c_0\)"):
        convert.from_torch_carry(np.zeros((2, 1, 3), np.float32), mode="lstm")
    with pytest.raises(ValueError, match="h_0's first axis must be num_layers \\* 2, got 3"):
        convert.from_torch_carry(np.zeros((3, 1, 4), np.float32), mode="gru", bidirectional=True)
    with pytest.raises(ValueError, match="h_0 and c_0 must have the same shape"):
        convert.from_torch_carry((np.zeros((2, 1, 4), np.float32), np.zeros((2, 1, 3), np.float32)), mode="lstm")
    with pytest.raises(TypeError, match="carries must be the per-layer carries"):
        convert.to_torch_carry((np.zeros(3),))
    with pytest.raises(ValueError, match="mode must be one of"):
        convert.torch_layer("transformer", 4)
    with pytest.raises(TypeError, match="bidirectional must be a bool, got 'yes'"):
        convert.torch_layer("gru", 4, bidirectional="yes")
    with pytest.raises(TypeError, match="prefix must be a str"):
        convert.from_torch({}, mode="gru", prefix=1)
    rnn_layer = memcell.layer(memcell.rnn(3))
    with pytest.raises(ValueError, match="nonlinearity is not in its params: use check=True"):
        convert.torch_spec(rnn_layer, memcell.rnn(3).init(jax.random.key(0), 2), check=False)
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        convert.torch_layer("gru", 4, num_layers=0)


def _f32(*shape):
    return np.zeros(shape, np.float32)


_GRU_SD = {"weight_ih_l0": _f32(12, 3), "weight_hh_l0": _f32(12, 4), "bias_ih_l0": _f32(12), "bias_hh_l0": _f32(12)}
_GRU = memcell.gru(4)
_GRU_PARAMS = _GRU.init(jax.random.key(0), 3)
_LSTM_LAYER = convert.torch_layer("lstm", 4)
_LSTM_PARAMS = _LSTM_LAYER.init(jax.random.key(0), 3)

# (public function, call with one bad argument, error, message naming the argument, what was expected and what came)
BAD_CALLS = [
    ("torch_layer", lambda: convert.torch_layer(3, 4), ValueError, r"mode must be one of \['lstm'.*got 3"),
    ("torch_layer", lambda: convert.torch_layer("gru", 2.5), ValueError, "hidden_size must be a positive int, got 2.5"),
    ("torch_layer", lambda: convert.torch_layer("gru", 4, param_dtype=jnp.int32), TypeError,
     "param_dtype must be a floating dtype, got int32"),
    ("torch_layer", lambda: convert.torch_layer("lstm", 4, proj_size=4), ValueError,
     r"proj_size must be an int in \[0, hidden_size=4\), got 4"),
    ("torch_layer", lambda: convert.torch_layer("gru", 4, proj_size=2), ValueError,
     "proj_size is only supported for mode='lstm' .*got mode='gru'"),
    ("from_torch", lambda: convert.from_torch({0: _f32(3)}, mode="gru"), TypeError,
     r"state_dict keys must be str.*got 0 \(int\)"),
    ("from_torch", lambda: convert.from_torch(dict(_GRU_SD, weight_ih_l0=None), mode="gru"), TypeError,
     "weight_ih_l0 must be an array, got NoneType"),
    ("from_torch", lambda: convert.from_torch(dict(_GRU_SD, weight_hh_l0=_f32(12)), mode="gru"), ValueError,
     r"weight_hh_l0 must have shape \[3 \* hidden_size, hidden_size\].*got shape \(12,\)"),
    ("from_torch", lambda: convert.from_torch(dict(_GRU_SD, weight_ih_l0=_f32(12)), mode="gru"), ValueError,
     r"weight_ih_l0 must have shape \[3 \* hidden_size, input features\] = \(12, input_size\), got shape \(12,\)"),
    ("from_torch", lambda: convert.from_torch({k: v for k, v in _GRU_SD.items() if k != "weight_ih_l0"}, mode="gru"),
     ValueError, r"missing the key 'weight_ih_l0' \(expected shape \(12, 'input_size'\)"),
    ("from_torch", lambda: convert.from_torch(dict(_GRU_SD, weight_ih_l2=_f32(12, 4)), mode="gru"), ValueError,
     r"missing the key 'weight_ih_l1' \(expected shape \(12, 4\)"),
    ("from_torch_cell", lambda: convert.from_torch_cell("sd", mode="gru"), TypeError,
     "state_dict must be a mapping of names to arrays, got str"),
    ("from_torch_cell", lambda: convert.from_torch_cell({}, mode="GRU"), ValueError, "mode must be one of.*got 'GRU'"),
    ("from_torch_cell", lambda: convert.from_torch_cell({}, mode="gru", prefix=None), TypeError,
     "prefix must be a str, got NoneType"),
    ("from_torch_cell", lambda: convert.from_torch_cell({"weight_ih": _f32(12, 3)}, mode="gru"), ValueError,
     r"missing the key 'weight_hh'"),
    ("to_torch", lambda: convert.to_torch(_LSTM_LAYER, None), TypeError,
     "params must be LSTMParams, GRUParams or RNNParams.*got NoneType"),
    ("to_torch", lambda: convert.to_torch(_LSTM_LAYER, ()), ValueError, "params must hold at least one layer"),
    ("to_torch", lambda: convert.to_torch(_LSTM_LAYER, _LSTM_PARAMS, check="no"), TypeError,
     "check must be a bool, got 'no'"),
    ("torch_spec", lambda: convert.torch_spec(_LSTM_LAYER, _LSTM_PARAMS, check=1), TypeError,
     "check must be a bool, got 1"),
    ("torch_spec", lambda: convert.torch_spec(memcell.layer(_GRU), _GRU_PARAMS._replace(w_x=None)), ValueError,
     "params.w_x must be a 2-D array, got None"),
    ("to_torch_cell", lambda: convert.to_torch_cell(memcell.layer(_GRU), _GRU_PARAMS), TypeError,
     "cell must be a memcell.Cell, got Layer"),
    ("to_torch_cell", lambda: convert.to_torch_cell(_GRU, (_GRU_PARAMS,)), TypeError,
     "params must be the params of one cell, got tuple"),
    ("to_torch_cell", lambda: convert.to_torch_cell(_GRU, _GRU_PARAMS, check="yes"), TypeError,
     "check must be a bool, got 'yes'"),
    ("to_torch_carry", lambda: convert.to_torch_carry((memcell.cells.GRUCarry(jnp.zeros(3)), memcell.cells.GRUCarry(jnp.zeros(4)))),
     ValueError, r"carries must all have the same shape.*got h shapes \[\(3,\), \(4,\)\]"),
    ("to_torch_carry", lambda: convert.to_torch_carry(jnp.zeros((2, 3))), TypeError,
     r"carries must be the per-layer carries.*got \['ArrayImpl'\]"),
    ("from_torch_carry", lambda: convert.from_torch_carry(_f32(2, 1, 3), mode="gru", bidirectional="yes"), TypeError,
     "bidirectional must be a bool, got 'yes'"),
    ("from_torch_carry", lambda: convert.from_torch_carry(_f32(3), mode="gru"), ValueError,
     r"h_0 must have shape \[num_layers \* num_directions, \*batch, hidden_size\], got shape \(3,\)"),
    ("from_torch_carry", lambda: convert.from_torch_carry(None, mode="gru"), TypeError,
     "h_0 must be an array, got NoneType"),
    ("from_torch_carry", lambda: convert.from_torch_carry(_f32(1, 3), mode="lstm_"), ValueError,
     "mode must be one of.*got 'lstm_'"),
    ("from_flax", lambda: convert.from_flax({"params": 3}), TypeError,
     r"variables\['params'\] must be a nested dict of arrays, got int"),
    ("from_flax", lambda: convert.from_flax({"foo": 1}), ValueError,
     r"not those of an LSTMCell.*top-level keys: \['foo'\]"),
    ("from_flax", lambda: convert.from_flax({"i": {"kernel": _f32(3), "bias": _f32(4)}, "h": {"kernel": _f32(4, 4)}}),
     ValueError, r"h/kernel and i/kernel must be 2-D, got shapes \(4, 4\) and \(3,\)"),
    ("from_flax", lambda: convert.from_flax({"i": {}, "h": {}, "bias": _f32(4)}), ValueError,
     r"variables have keys that are not weights of a flax SimpleCell: \['bias'\]"),
    ("to_flax", lambda: convert.to_flax(_GRU, _GRU_PARAMS, optimized="yes"), TypeError,
     "optimized must be a bool, got 'yes'"),
    ("to_flax", lambda: convert.to_flax(_GRU, _GRU_PARAMS, check=None), TypeError, "check must be a bool, got None"),
    ("to_flax", lambda: convert.to_flax(_GRU, _GRU_PARAMS, api=["nnx"]), ValueError,
     r"api must be one of \['linen', 'nnx'\], got \['nnx'\]"),
    ("to_flax", lambda: convert.to_flax(_GRU, (_GRU_PARAMS,)), TypeError,
     "params must be the params of one cell, got tuple"),
    ("from_cudnn", lambda: convert.from_cudnn(jnp.zeros(10), 3, 4), ValueError,
     r"weights must have 144 entries for input_size=3, hidden_size=4, .*got 10"),
    ("to_cudnn", lambda: convert.to_cudnn(memcell.layer(_GRU), _GRU_PARAMS), ValueError,
     r"to_cudnn packs LSTM layers only .*got a gru"),
    ("to_dict", lambda: convert.to_dict({1: jnp.zeros(3)}), TypeError, r"params dict keys must be str, got 1 \(int\)"),
    ("from_dict", lambda: convert.from_dict({}, _GRU_PARAMS, path=3), TypeError, "path must be a str, got int 3"),
    ("from_dict", lambda: convert.from_dict([1], _GRU_PARAMS), TypeError, "params must be a dict, got list"),
    ("from_dict", lambda: convert.from_dict({"a": 1}, {"a": 1, "b": 2}), ValueError,
     r"params must have the keys \['a', 'b'\], got \['a'\]"),
    ("from_dict", lambda: convert.from_dict({"a": 1, "c": 3}, {"a": 1}), ValueError,
     r"params must have the keys \['a'\], got \['a', 'c'\]"),
]


@pytest.mark.parametrize("name, call, error, match", BAD_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CALLS)])
def test_bad_arguments_name_the_argument_the_expected_and_the_actual(name, call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_every_public_function_has_a_bad_argument_case():
    functions = {n for n in convert.__all__ if callable(getattr(convert, n)) and n != "TorchSpec"}
    assert functions <= {case[0] for case in BAD_CALLS}, functions - {case[0] for case in BAD_CALLS}


# --------------------------------------------------------------------------- Flax


def _flax_linen_cell(name, h):
    return getattr(fnn, name)(h)


def _randomize(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([a + 0.3 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


def _flax_carry_to_memcell(carry):
    if isinstance(carry, tuple):  # Flax's LSTM carry is (c, h)
        return memcell.cells.LSTMCarry(h=carry[1], c=carry[0])
    return carry


@pytest.mark.parametrize("name", ["LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell"])
def test_from_flax_linen_matches_flax_over_a_sequence(name):
    d, h = 3, 5
    fcell = _flax_linen_cell(name, h)
    xs = jax.random.normal(jax.random.key(0), (2, 7, d))
    model = fnn.RNN(fcell, return_carry=True)
    variables = _randomize(model.init(jax.random.key(1), xs), 2)  # nonzero biases
    carry_f, ys_f = model.apply(variables, xs)
    cell, params = convert.from_flax(variables["params"]["cell"])
    carry_m, ys_m = memcell.unroll(cell, params, xs)
    assert_close(ys_m, ys_f, 1e-6)
    for a, b in zip(jax.tree.leaves(_flax_carry_to_memcell(carry_f)), jax.tree.leaves(carry_m)):
        assert_close(a, b, 1e-6)
    # and back: the Flax cell with to_flax's params reproduces memcell
    back = convert.to_flax(cell, params)
    _, ys_back = model.apply({"params": {"cell": back}}, xs)
    assert_close(ys_back, ys_m, 1e-6)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables["params"]["cell"])):
        assert a.shape == b.shape


@pytest.mark.parametrize("name", ["LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell"])
def test_from_flax_nnx_cells_match_one_step(name):
    d, h = 3, 4
    fcell = getattr(nnx, name)(d, h, rngs=nnx.Rngs(0))
    state = nnx.state(fcell, nnx.Param)
    nnx.update(fcell, _randomize(state, 1))
    x = jax.random.normal(jax.random.key(2), (2, d))
    carry = fcell.initialize_carry((2, d), rngs=nnx.Rngs(3))
    carry = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(4), a.shape), carry)
    carry_f, y_f = fcell(carry, x)
    cell, params = convert.from_flax(nnx.state(fcell, nnx.Param))
    mem_carry = _flax_carry_to_memcell(carry)
    if not isinstance(mem_carry, tuple):
        mem_carry = cell.initial_carry(params, (2,))._replace(h=carry)
    carry_m, y_m = cell.step(params, mem_carry, x)
    assert_close(y_m, y_f, 1e-6)
    optimized = name == "OptimizedLSTMCell"
    back = convert.to_flax(cell, params, api="nnx", optimized=optimized)
    if name == "GRUCell":  # nnx.GRUCell has no b_hn, so from_flax gave zeros there and to_flax accepts it
        assert not np.any(np.asarray(params.b_h))
    fresh = getattr(nnx, name)(d, h, rngs=nnx.Rngs(7))
    nnx.update(fresh, back)
    _, y_back = fresh(carry, x)
    assert_close(y_back, y_m, 1e-6)


@pytest.mark.parametrize("mode, flax_cell", [("lstm", fnn.OptimizedLSTMCell), ("gru", fnn.GRUCell)])
def test_torch_memcell_flax_agree_on_the_same_inputs(mode, flax_cell):
    """A torch module, its memcell conversion and the Flax cell made from it agree, with lengths too."""
    m = torch_module(mode, 3, 6)
    layer, params = convert.from_torch(state_dict_np(m), mode=mode)
    x = np.random.default_rng(0).normal(size=(3, 8, 3)).astype(np.float32)
    lengths = np.array([8, 3, 5])
    y_t, hn_t = run_torch(m, mode, torch.from_numpy(x), torch.from_numpy(lengths))
    carries, y_m = layer.apply(params, jnp.asarray(x), lengths=jnp.asarray(lengths))
    cell = memcell.lstm(6) if mode == "lstm" else memcell.gru(6)
    flax_params = {"params": {"cell": convert.to_flax(cell, params[0])}}
    flax_rnn = fnn.RNN(flax_cell(6), return_carry=True)
    carry_f, y_f = flax_rnn.apply(flax_params, jnp.asarray(x), seq_lengths=jnp.asarray(lengths))
    valid = (np.arange(8) < lengths[:, None])[..., None]
    assert_close(y_m, y_t)
    assert_close(np.where(valid, y_f, 0.0), y_t)  # nn.RNN leaves its own values in the padding
    h_f = carry_f[1] if mode == "lstm" else carry_f
    assert_close(h_f, hn_t[0][0] if mode == "lstm" else hn_t[0])


def test_to_flax_refusals_and_errors():
    params = memcell.gru(4, reset_after=False).init(jax.random.key(0), 3)
    params = _randomize(params, 1)
    with pytest.raises(ValueError, match="does not compute"):
        convert.to_flax(memcell.gru(4, reset_after=False), params)
    params = _randomize(memcell.gru(4).init(jax.random.key(0), 3), 1)
    with pytest.raises(ValueError, match="nnx.GRUCell has no recurrent bias b_hn"):
        convert.to_flax(memcell.gru(4), params, api="nnx")
    with pytest.raises(ValueError, match="api must be one of"):
        convert.to_flax(memcell.gru(4), params, api="haiku")
    with pytest.raises(TypeError, match="cell must be a memcell.Cell"):
        convert.to_flax("gru", params)
    with pytest.raises(ValueError, match="peephole"):
        convert.to_flax(memcell.lstm(4, peephole=True), memcell.lstm(4, peephole=True).init(jax.random.key(0), 3))
    relu = memcell.rnn(4, activation="relu")
    with pytest.raises(ValueError, match="does not compute"):
        convert.to_flax(relu, _randomize(relu.init(jax.random.key(0), 3), 1))


def test_from_flax_errors_name_the_key_and_shapes():
    fcell = fnn.LSTMCell(4)
    x = jnp.ones((1, 3))
    p = fcell.init(jax.random.key(0), fcell.initialize_carry(jax.random.key(1), x.shape), x)["params"]
    bad = dict(p, hg={"kernel": p["hg"]["kernel"], "bias": jnp.zeros(5)})
    with pytest.raises(ValueError, match=r"hg/bias must have shape \(4,\).*got shape \(5,\)"):
        convert.from_flax(bad)
    missing = {k: v for k, v in p.items() if k != "ho"}
    with pytest.raises(ValueError, match="not those of an LSTMCell"):
        convert.from_flax(missing)
    no_bias = dict(p, ho={"kernel": p["ho"]["kernel"]})
    with pytest.raises(ValueError, match="missing the key 'ho/bias'"):
        convert.from_flax(no_bias)
    with pytest.raises(TypeError, match="must be a nested dict"):
        convert.from_flax([1, 2])


def test_to_dict_from_dict_round_trip_and_errors():
    cell = memcell.lstm(3, layer_norm=True)
    params = cell.init(jax.random.key(0), 2)
    tree = convert.to_dict(params)
    assert set(tree) == {"w_x", "w_h", "b", "norm"} and set(tree["norm"]) == set(memcell.cells.LSTMNorm._fields)
    back = convert.from_dict(tree, params)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    stack = (params, memcell.DirectionPair(params, params))
    assert jax.tree.structure(convert.from_dict(convert.to_dict(stack), stack)) == jax.tree.structure(stack)
    with pytest.raises(ValueError, match="params is missing the key 'b'"):
        convert.from_dict({k: v for k, v in tree.items() if k != "b"}, params)
    with pytest.raises(ValueError, match=r"params/w_x must have shape \(2, 12\), got shape \(3, 12\)"):
        convert.from_dict(dict(tree, w_x=np.zeros((3, 12))), params)
    with pytest.raises(ValueError, match="unexpected keys \\['extra'\\]"):
        convert.from_dict(dict(tree, extra=1), params)
    with pytest.raises(ValueError, match="present but the cell has no 'p_i'"):
        convert.from_dict(dict(tree, p_i=np.zeros(3)), params)


@pytest.mark.slow  # a repeat: tests/test_docs.py runs every public module's examples in make test
def test_docstring_examples():
    """Every module of the package: the package itself only re-exports, so its examples live in them."""
    failures = tried = 0
    for info in pkgutil.iter_modules(convert.__path__, prefix="memcell.convert."):
        result = doctest.testmod(importlib.import_module(info.name), optionflags=doctest.ELLIPSIS)
        failures, tried = failures + result.failed, tried + result.attempted
    assert tried > 0 and failures == 0


DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "coming_from_flax_pytorch.md"


@pytest.mark.slow  # test_docs runs the same page the same way (in order, one namespace) in make test
def test_coming_from_flax_pytorch_examples_run():
    """The page's examples run in order in one namespace, as a reader would run them (its asserts hold)."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 7
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}[{i}]", "exec"), namespace)


def test_convert_imports_no_framework():
    code = "import sys, memcell.convert; bad = [m for m in ('torch', 'flax') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(TORCH))
def test_torch_parity_long_sequences(mode):
    """Float32 error does not grow with T: T=1000, 2 bidirectional layers, still within 1e-5."""
    check_parity(mode, d=8, h=32, num_layers=2, bidirectional=True, B=4, T=1000)
