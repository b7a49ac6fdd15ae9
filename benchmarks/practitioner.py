"""A practitioner's layer: a 2-layer bidirectional LSTM, H=256, B=32, D=64, variable lengths drawn
between T/2 and T=200, one training step (gradient of the mean squared outputs over the real
steps), memcell against torch.nn.LSTM on packed sequences and flax's
``nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell))`` with ``seq_lengths``, in one process.

memcell runs ``memcell.stack([memcell.bidirectional(lstm, lstm, backend=b)] * 2)`` for the
reference, fused and auto backends (on a GPU also cuDNN). Timings are interleaved rounds, the
minimum kept. Written into docs/benchmarks.md between the ``practitioner`` markers.

Usage: ``python benchmarks/practitioner.py [--rounds N] [--out docs/benchmarks.md]``.
"""

import argparse
import datetime
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import memcell

B, T, D, H, LAYERS = 32, 200, 64, 256, 2
START, END = "<!-- practitioner:start -->", "<!-- practitioner:end -->"


def data():
    rng = np.random.default_rng(0)
    lengths = rng.integers(T // 2, T + 1, size=B)
    lengths[0] = T
    xs = rng.normal(size=(B, T, D)).astype(np.float32)
    return xs, lengths


def _mask(lengths):
    return (jnp.arange(T)[None, :] < lengths[:, None])[..., None]


def memcell_step(backend, xs, lengths):
    model = memcell.stack([memcell.bidirectional(memcell.lstm(H), memcell.lstm(H), backend=backend)
                           for _ in range(LAYERS)])
    params = model.init(jax.random.key(0), D)
    x, n = jnp.asarray(xs), jnp.asarray(lengths)

    def loss(p):
        ys = model.apply(p, x, lengths=n)[1]
        return jnp.sum(jnp.where(_mask(n), ys, 0.0) ** 2) / jnp.sum(n)

    grad = jax.jit(jax.grad(loss)).lower(params).compile()
    return lambda: jax.block_until_ready(grad(params))


def flax_step(xs, lengths):
    import flax.linen as nn

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x, n):
            for _ in range(LAYERS):
                x = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(H)), nn.RNN(nn.OptimizedLSTMCell(H)))(x, seq_lengths=n)
            return x

    model = Model()
    x, n = jnp.asarray(xs), jnp.asarray(lengths)
    params = model.init(jax.random.key(0), x, n)

    def loss(p):
        ys = model.apply(p, x, n)
        return jnp.sum(jnp.where(_mask(n), ys, 0.0) ** 2) / jnp.sum(n)

    grad = jax.jit(jax.grad(loss)).lower(params).compile()
    return lambda: jax.block_until_ready(grad(params))


def torch_step(xs, lengths, device="cpu"):
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    model = torch.nn.LSTM(D, H, num_layers=LAYERS, bidirectional=True, batch_first=True).to(device)
    x = torch.from_numpy(xs).to(device)
    n = torch.from_numpy(lengths)
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)

    def train():
        model.zero_grad(set_to_none=True)
        packed = pack_padded_sequence(x, n, batch_first=True, enforce_sorted=False)
        ys, _ = pad_packed_sequence(model(packed)[0], batch_first=True, total_length=T)
        ((ys**2).sum() / n.sum()).backward()
        sync()

    return train


def race(fns: dict, rounds: int) -> dict:
    for f in fns.values():
        f()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def render(best: dict, rounds: int, elapsed: float) -> str:
    ref = best["torch.nn.LSTM (packed)"]
    flax = best["flax Bidirectional(RNN(OptimizedLSTMCell))"]
    lines = [
        START,
        "## A practitioner's layer: 2-layer bidirectional LSTM, variable lengths (`benchmarks/practitioner.py`)",
        "",
        f"Training step of a {LAYERS}-layer bidirectional LSTM, H={H}, B={B}, D={D}, lengths drawn between "
        f"{T // 2} and T={T} (loss over the real steps only); ms, minimum of {rounds} interleaved rounds; "
        f"`x torch` and `x flax` are their times over the row's (higher is faster). Run {datetime.date.today()} "
        f"on {platform.processor() or platform.machine()} ({os.cpu_count()} cores), jax {jax.__version__}, "
        f"backend {jax.default_backend()}, {elapsed / 60:.1f} min.",
        "",
        "| implementation | ms | x torch | x flax |",
        "|---|---:|---:|---:|",
    ]
    for name, t in best.items():
        lines.append(f"| {name} | {1e3 * t:.1f} | {ref / t:.2f} | {flax / t:.2f} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(path: str, section: str) -> None:
    text = open(path).read() if os.path.exists(path) else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="docs/benchmarks.md", help="markdown file whose section to write ('' to skip)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    start = time.perf_counter()
    xs, lengths = data()
    fns = {f"memcell {b}": memcell_step(b, xs, lengths) for b in ("reference", "fused", "auto")}
    if jax.default_backend() == "gpu":
        fns["memcell cudnn"] = memcell_step("cudnn", xs, lengths)
    fns["flax Bidirectional(RNN(OptimizedLSTMCell))"] = flax_step(xs, lengths)
    fns["torch.nn.LSTM (packed)"] = torch_step(xs, lengths)
    best = race(fns, args.rounds)
    section = render(best, args.rounds, time.perf_counter() - start)
    print(section)
    if args.out:
        write_section(args.out, section)
        print(f"wrote the practitioner section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
