"""Probing: run a layer on a fixed input and compare it with a NumPy reference of the torch/Flax equations.

Converting weights is only right if the layer computes what the target framework computes; a
layer that only looks alike (a GRU with ``reset_after=False``, a ``"sum"`` merge, a ReLU RNN
for Flax's ``SimpleCell``) has the same params but different outputs, and is caught here.
"""

import jax
import jax.numpy as jnp
import numpy as np

from memcell.convert._spec import TORCH_CLASS, TorchSpec, layers_of
from memcell.types import DirectionPair


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _ref_step(mode: str, p, h, c, x):
    """One step of the equations torch, Flax and memcell share, in float64."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    if mode == "lstm":
        z = x @ f64(p.w_x) + h @ f64(p.w_h) + f64(p.b)
        i, f, g, o = np.split(z, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        w_hr = getattr(p, "w_hr", None)  # torch's proj_size: h = (o * tanh(c)) W_hr
        return (h if w_hr is None else h @ f64(w_hr)), c
    if mode == "gru":
        xr, xz, xn = np.split(x @ f64(p.w_x) + f64(p.b_x), 3, axis=-1)
        hr, hz, hn = np.split(h @ f64(p.w_h) + f64(p.b_h), 3, axis=-1)
        r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        return (1.0 - z) * n + z * h, c
    z = x @ f64(p.w_x) + h @ f64(p.w_h) + f64(p.b)
    return (np.tanh(z) if mode == "rnn_tanh" else np.maximum(z, 0.0)), c


def ref_layer(mode: str, params, xs: np.ndarray) -> np.ndarray:
    """Outputs ``[B, T, H * dirs]`` (``proj_size * dirs`` with a projection) of a torch-like stack, in float64."""
    ys = xs
    for entry in layers_of(params):
        outs = []
        is_pair = isinstance(entry, DirectionPair)
        for direction, p in (("f", entry.forward), ("b", entry.backward)) if is_pair else (("f", entry),):
            H = p.w_h.shape[0]  # the units h holds: proj_size with a projection
            h = np.zeros(ys.shape[:-2] + (H,))
            w_hr = getattr(p, "w_hr", None)
            c = np.zeros(ys.shape[:-2] + ((H,) if w_hr is None else (w_hr.shape[0],)))
            steps = range(ys.shape[-2]) if direction == "f" else reversed(range(ys.shape[-2]))
            out = np.zeros(ys.shape[:-1] + (H,))
            for t in steps:
                h, c = _ref_step(mode, p, h, c, ys[..., t, :])
                out[..., t, :] = h
            outs.append(out)
        ys = np.concatenate(outs, axis=-1)
    return ys


def _tolerance(params) -> float:
    dtypes = {np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)}
    return 5e-2 if min(dtypes) < 4 else 1e-4


def probe(apply, params, spec: TorchSpec, modes) -> str:
    """Runs the layer on a fixed random input and returns the first mode whose equations it computes."""
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(2, 5, spec.input_size))
    dtype = jax.tree.leaves(params)[0].dtype
    # Full float32 matmuls (not TF32 on GPUs), so the tolerance below measures the equations only.
    with jax.default_matmul_precision("highest"):
        _, ys = apply(params, jnp.asarray(xs, dtype))
    ys = np.asarray(jnp.asarray(ys, jnp.float32), np.float64)
    tol = _tolerance(params)
    errs = {}
    for mode in modes:
        ref = ref_layer(mode, params, xs)
        if ys.shape == ref.shape:
            errs[mode] = float(np.max(np.abs(ys - ref)) / (1.0 + np.max(np.abs(ref))))
            if errs[mode] <= tol:
                return mode
        else:
            errs[mode] = f"output shape {ys.shape} instead of {ref.shape}"
    raise ValueError(
        f"the layer does not compute what {TORCH_CLASS[modes[0]]} computes with these params "
        f"(relative error on a probe input: {errs}); layers that differ are e.g. a GRU with "
        f"reset_after=False, an LSTM without input/output activation, a bidirectional merge other "
        f"than 'concat', or a residual stack. Build the layer with memcell.convert.torch_layer."
    )
