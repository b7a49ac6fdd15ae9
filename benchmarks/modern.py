"""The modern cells' speed: each on its sequential (reference) and its parallel path, beside the
fused LSTM and torch.nn.LSTM, one training step at T in {256, 1024, 4096} (B=16, D=64, H=128).

A training step is the gradient of ``mean(ys ** 2)`` with respect to all params, jitted. Timings
are interleaved (each round calls every implementation once, the minimum over rounds is kept),
so a shared machine slows them alike and the ratios stay meaningful. Written into
docs/benchmarks.md between the ``modern`` markers (the rest of the page is run.py's).

Usage: ``python benchmarks/modern.py [--quick] [--rounds N] [--out docs/benchmarks.md]``.
"""

import argparse
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import memcell

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_name, race, write_section  # noqa: E402

B, D, H = 16, 64, 128
LENGTHS = (256, 1024, 4096)
QUICK_LENGTHS = (256, 1024)
CELLS = {  # name -> factory options
    "mingru": {},
    "minlstm": {},
    "lru": {},
    "rglru": {},
    "slstm": {"num_heads": 4},
    "mlstm": {"num_heads": 4},
}
START, END = "<!-- modern:start -->", "<!-- modern:end -->"


def _step(cell, backend, T):
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))

    def loss(p, x):
        return jnp.mean(memcell.unroll(cell, p, x, backend=backend)[1] ** 2)

    grad = jax.jit(jax.grad(loss)).lower(params, xs).compile()
    return lambda: jax.block_until_ready(grad(params, xs))


def _torch_step(T):
    import torch

    torch.manual_seed(0)
    model = torch.nn.LSTM(D, H, batch_first=True)
    x = torch.randn(B, T, D)

    def train():
        model.zero_grad(set_to_none=True)
        y, _ = model(x)
        (y**2).mean().backward()

    return train


def impls(T):
    """name -> training-step function, for every cell and path at length T."""
    out = {}
    for name, options in CELLS.items():
        cell = getattr(memcell, name)(H, **options)
        out[f"{name} sequential"] = _step(cell, "reference", T)
        if memcell.paths.why_not("parallel", cell) is None:
            out[f"{name} parallel"] = _step(cell, "parallel", T)
    out["lstm fused"] = _step(memcell.lstm(H), "fused", T)
    try:
        out["torch.nn.LSTM"] = _torch_step(T)
    except ImportError:  # torch is in the bench extra; without it the row is left out
        pass
    return out



def render(results: dict, lengths, rounds: int, elapsed: float) -> str:
    names = list(next(iter(results.values())))
    lines = [
        START,
        "## Modern cells: sequential and parallel paths (`benchmarks/modern.py`)",
        "",
        f"Training step (gradient of `mean(ys**2)` w.r.t. all params, jitted), B={B}, D={D}, H={H}; "
        f"ms, minimum of {rounds} interleaved rounds; `x LSTM` is the fused LSTM's time over the row's "
        f"(higher is faster). Run {datetime.date.today()} on {cpu_name()} "
        f"({os.cpu_count()} cores), jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{elapsed / 60:.1f} min.",
        "",
        "| implementation | " + " | ".join(f"T={T} ms | x LSTM" for T in lengths) + " |",
        "|---|" + "---:|---:|" * len(lengths),
    ]
    for n in names:
        cells = []
        for T in lengths:
            t, lstm = results[T][n], results[T]["lstm fused"]
            cells.append(f"{1e3 * t:.1f} | {lstm / t:.2f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Targets (issue 11):", ""]
    Tmax = max(lengths)
    for name in ("mingru", "lru"):
        r = results[Tmax]["lstm fused"] / results[Tmax][f"{name} parallel"]
        lines.append(f"- parallel {name} at T={Tmax}: {r:.2f}x the fused LSTM's speed (target >= 5x): "
                     f"{'met' if r >= 5 else 'not met'}")
    for name in CELLS:
        if f"{name} parallel" not in names:
            continue
        worst = min(results[T][f"{name} sequential"] / results[T][f"{name} parallel"] for T in lengths if T >= 1024)
        lines.append(f"- parallel {name} no slower than sequential from T=1024: worst ratio {worst:.2f} "
                     f"({'met' if worst >= 1 else 'not met'})")
    lines.append(END)
    return "\n".join(lines) + "\n"




def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T in {256, 1024}, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 2)")
    parser.add_argument("--out", default="docs/benchmarks.md", help="markdown file whose section to write ('' to skip)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 3)
    if rounds < 1:
        parser.error(f"--rounds must be >= 1, got {rounds}")
    lengths = QUICK_LENGTHS if args.quick else LENGTHS
    start = time.perf_counter()
    results = {}
    for T in lengths:
        results[T] = race(impls(T), rounds)
        lstm = results[T]["lstm fused"]
        print(f"\nT={T}", flush=True)
        for n, t in results[T].items():
            print(f"  {n:22s} {1e3 * t:9.1f} ms   x LSTM {lstm / t:6.2f}", flush=True)
    section = render(results, lengths, rounds, time.perf_counter() - start)
    print("\n" + section)
    if args.out:
        write_section(args.out, section, START, END)
        print(f"wrote the modern-cells section of {args.out}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
