"""Which layout the fused LSTM should use on this platform: the measurement behind memcell.fused.tuning.

Times one training step (forward and backward through ``memcell.fused.lstm``, loss on every
output) for each layout the fused path has, on the platform JAX runs on, at the shapes of
``make bench``; the reference path (``memcell.unroll``) is timed beside them. Every variant runs
in this one process, in interleaved rounds, and the table reports the minimum over rounds and
each layout's ratio to the plain batch-major layout.

    python benchmarks/fused_layouts.py [--rounds 5] [--quick]

It prints a markdown table; ``memcell.fused.tuning`` cites the numbers it is based on.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp

import memcell
from memcell.fused import tuning as T

SHAPES = [(16, 200, 64, 128), (32, 128, 128, 256), (64, 100, 512, 512), (16, 1000, 64, 128), (16, 100, 256, 1024)]
QUICK = [(16, 200, 64, 128), (32, 128, 128, 256)]

LAYOUTS = {
    "batch-major": T.PLAIN,
    "batch-major, 2 groups": T.PLAIN._replace(groups_from_h=1, groups_min_b=2),
    "feature-major": T.PLAIN._replace(feature_major_from_h=1),
    "batch-major, unroll 1": T.PLAIN._replace(scan_unroll=1),
    "batch-major, unroll 8": T.PLAIN._replace(scan_unroll=8),
    "batch-major, unroll 16": T.PLAIN._replace(scan_unroll=16),
}


def _step(layout: T.Tuning | None, params, xs):
    """A jitted training step of the fused LSTM under ``layout`` (None: the reference path)."""
    cell = memcell.lstm(params.w_h.shape[0])
    backend = "reference" if layout is None else "fused"

    def loss(p, x):
        return jnp.mean(memcell.unroll(cell, p, x, backend=backend)[1] ** 2)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    platform_name = jax.default_backend()
    saved = T.BY_PLATFORM.get(platform_name)
    if layout is not None:
        T.BY_PLATFORM[platform_name] = layout  # read when the fused layer is traced: now, in lower()
    try:
        compiled = grad.lower(params, xs).compile()
    finally:
        if saved is not None:
            T.BY_PLATFORM[platform_name] = saved
    return compiled


def _time(fn, args, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def measure(shapes, rounds: int) -> list[dict]:
    rows = []
    for B, Tn, D, H in shapes:
        params = memcell.lstm(H).init(jax.random.key(0), D)
        xs = jax.random.normal(jax.random.key(1), (B, Tn, D))
        variants = {"reference": _step(None, params, xs)}
        variants.update({name: _step(layout, params, xs) for name, layout in LAYOUTS.items()})
        for fn in variants.values():  # warm up
            jax.block_until_ready(fn(params, xs))
        best = {name: float("inf") for name in variants}
        for _ in range(rounds):  # interleaved: every variant once a round
            for name, fn in variants.items():
                best[name] = min(best[name], _time(fn, (params, xs), repeats=1))
        rows.append({"shape": (B, Tn, D, H), "ms": {k: 1e3 * v for k, v in best.items()}})
    return rows


def table(rows) -> str:
    names = list(rows[0]["ms"])
    head = "| B,T,D,H | " + " | ".join(f"{n} ms" for n in names) + " | " + " | ".join(
        f"{n} / batch-major" for n in names if n != "batch-major") + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(names) - 1)]
    for r in rows:
        ms = r["ms"]
        base = ms["batch-major"]
        lines.append("| " + ",".join(map(str, r["shape"])) + " | " + " | ".join(f"{ms[n]:.2f}" for n in names)
                     + " | " + " | ".join(f"{ms[n] / base:.2f}" for n in names if n != "batch-major") + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="two small shapes only")
    args = p.parse_args(argv)
    device = jax.devices()[0]
    print(f"platform {jax.default_backend()}, device {device.device_kind}, host {platform.processor() or platform.machine()},"
          f" jax {jax.__version__}, min of {args.rounds} interleaved rounds, training step (fwd + bwd)\n")
    print(table(measure(QUICK if args.quick else SHAPES, args.rounds)))


if __name__ == "__main__":
    main()
