"""Long sequences in memory: an LSTM training step at T = 1,000 to 100,000 under each remat policy.

An LSTM (B=16, D=64, H=256) training step (gradient of the loss w.r.t. the params and an SGD
update, jitted) on the reference and the fused path, for no remat, per-step remat
(``remat=True``) and the sqrt(T) policy (``remat="sqrt"``), with (a) the loss on the last output
only (sequence classification, as in the adding problem; taken from the final carry ``carry.h``,
which is the last output, so the O(T) outputs are never kept) and (b) a loss over every output,
where the outputs and their gradients (2 B T H floats) are a floor no policy goes under.

Columns: XLA's temp memory of the compiled step (``memory_analysis().temp_size_in_bytes``: compiled,
not run) and the step time (run, after compiling ahead). The smallest T is timed as the minimum of
``--rounds`` interleaved rounds after a warm-up; longer T with a single call each (seconds to
minutes a call). A config is not run where its temp memory exceeds ``--max-gb`` or 75% of the
memory available when it would start; at the largest T only ``--long-policies`` are timed (in
between, ``--mid-policies``; default all), and the
loss over every output only up to ``--time-every-up-to``. Written into docs/benchmarks.md between
the ``long`` markers; the raw numbers go to ``results/long.json``.

Usage: ``python benchmarks/long.py [--ts 1000,10000,100000] [--rounds 2] [--out docs/benchmarks.md]``.
"""

import argparse
import datetime
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

import memcell

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_name, race, write_section  # noqa: E402

B, D, H = 16, 64, 256
START, END = "<!-- long:start -->", "<!-- long:end -->"
POLICIES = {"none": False, "step": True, "sqrt": "sqrt"}
PATHS = ("fused", "reference")
LOSSES = ("last", "every")


def train_step(backend: str, remat, loss_on: str):
    """A jitted training step ``(params, xs) -> (loss, params)`` of the LSTM."""
    cell = memcell.lstm(H)

    def loss(params, xs):
        carry, ys = memcell.unroll(cell, params, xs, remat=remat, backend=backend)
        return jnp.mean(carry.h ** 2) if loss_on == "last" else jnp.mean(ys ** 2)

    def step(params, xs):
        value, grads = jax.value_and_grad(loss)(params, xs)
        return value, jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)

    return jax.jit(step)


def available_bytes() -> float:
    """MemAvailable from /proc/meminfo (inf where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return float("inf")


def measure(ts, rounds: int, max_gb: float, mid_policies: set | None, long_policies: set, every_up_to: int) -> list[dict]:
    params = memcell.lstm(H).init(jax.random.key(0), D)
    rows = []
    for T in ts:
        xs_shape = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
        compiled = {}
        for loss_on in LOSSES:
            for path in PATHS:
                for name, remat in POLICIES.items():
                    t0 = time.perf_counter()
                    fn = train_step(path, remat, loss_on).lower(params, xs_shape).compile()
                    row = dict(T=T, loss=loss_on, path=path, policy=name, floor=2 * B * T * H * 4 if loss_on == "every" else 0,
                               temp=fn.memory_analysis().temp_size_in_bytes, compile_s=time.perf_counter() - t0,
                               time=None, why=None)
                    print(f"T={T} {loss_on} {path} {name}: temp {row['temp'] / 1e9:.3f} GB "
                          f"(compiled in {row['compile_s']:.1f} s)", flush=True)
                    rows.append(row)
                    compiled[(loss_on, path, name)] = (row, fn)
        xs = jax.random.normal(jax.random.key(1), (B, T, D))
        runs = {}
        for (loss_on, path, name), (row, fn) in compiled.items():
            timed = long_policies if T == max(ts) else mid_policies
            if T > min(ts) and timed is not None and f"{path}:{name}" not in timed:
                row["why"] = f"timed at T={T:,} only for {', '.join(sorted(timed))} (time budget)"
            elif loss_on == "every" and T > every_up_to:
                row["why"] = f"the loss over every output is timed up to T={every_up_to} (time budget)"
            elif row["temp"] > max_gb * 1e9:
                row["why"] = f"temp memory over --max-gb {max_gb:g}"
            else:
                runs[(loss_on, path, name)] = lambda fn=fn: jax.block_until_ready(fn(params, xs))
        if T == min(ts):
            best = race(runs, rounds)
        else:  # one call each, a check of the memory available before each
            best = {}
            for key, f in runs.items():
                row = compiled[key][0]
                avail = available_bytes()
                if row["temp"] + xs.nbytes > 0.75 * avail:
                    row["why"] = f"not run: {row['temp'] / 1e9:.1f} GB temp, {avail / 1e9:.1f} GB available"
                    continue
                t0 = time.perf_counter()
                f()
                best[key] = time.perf_counter() - t0
                print(f"T={T} {key}: {best[key]:.1f} s", flush=True)
        for key, t in best.items():
            compiled[key][0]["time"] = t
        del xs, compiled, runs
    return rows


def _gb(b: float) -> str:
    return f"{b / 1e9:.3f}" if b < 1e9 else f"{b / 1e9:.2f}"


def ratios(rows: list[dict]) -> list[str]:
    """The issue's targets at the largest T, for each path's sqrt(T) policy against the fused path without remat."""
    at = {(r["T"], r["loss"], r["path"], r["policy"]): r for r in rows}
    ts = sorted({r["T"] for r in rows})
    T, lines = ts[-1], []
    base = at.get((T, "last", "fused", "none"))
    for path in PATHS:
        sq = at.get((T, "last", path, "sqrt"))
        if base is None or sq is None:
            continue
        mem = sq["temp"] / base["temp"]
        line = f"- {path} sqrt(T), last-output loss, T={T:,}: memory {mem:.4f}x the fused path without remat (target <= 0.05)"
        if sq["time"] is not None and base["time"] is not None:
            line += f"; time {sq['time'] / base['time']:.2f}x (target <= 1.5)"
        else:
            line += "; time ratio not measured (" + (sq["why"] or base["why"] or "not timed") + ")"
        if len(ts) > 1:
            prev = at.get((ts[-2], "last", path, "sqrt"))
            line += f"; memory growth T={ts[-2]:,} -> {T:,}: {sq['temp'] / prev['temp']:.2f}x (target <= ~4)"
        lines.append(line)
    return lines


def render(rows: list[dict], rounds: int, elapsed: float) -> str:
    lines = [
        START,
        "## Long sequences in memory (`benchmarks/long.py`)",
        "",
        f"LSTM training step (gradient and SGD update, jitted), B={B}, D={D}, H={H}: XLA temp memory of the "
        "compiled step (GB; compiled, not run) and its time (s; the smallest T the minimum of "
        f"{rounds} interleaved rounds, longer T one call each). `last`: loss on the last output (from the "
        "final carry); `every`: loss over every output, whose outputs and gradients (`floor`, 2 B T H "
        f"float32) no policy can drop. Run {datetime.date.today()} on {cpu_name()} ({os.cpu_count()} cores, "
        f"shared), jax {jax.__version__}, backend {jax.default_backend()}, {elapsed / 60:.1f} min.",
        "",
        "| T | loss | path | remat | temp GB | floor GB | step s |",
        "|---:|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        t = f"{r['time']:.2f}" if r["time"] is not None else f"not run: {r['why']}"
        floor = _gb(r["floor"]) if r["floor"] else ""
        lines.append(f"| {r['T']:,} | {r['loss']} | {r['path']} | {r['policy']} | {_gb(r['temp'])} | {floor} | {t} |")
    lines += ["", "Against the issue's targets:", ""] + ratios(rows) + [END]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ts", default="1000,10000,100000", help="comma-separated sequence lengths")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds at the smallest T")
    parser.add_argument("--max-gb", type=float, default=16.0, help="run no config whose temp memory exceeds this")
    parser.add_argument("--long-policies", default="fused:none,fused:sqrt,reference:sqrt",
                        help="path:policy pairs timed at the largest T")
    parser.add_argument("--mid-policies", default="",
                        help="path:policy pairs timed at the T between the smallest and the largest (default: all)")
    parser.add_argument("--time-every-up-to", type=int, default=1000, help="largest T at which the every-output loss is timed")
    parser.add_argument("--out", default="docs/benchmarks.md", help="markdown file whose section to write ('' to skip)")
    args = parser.parse_args(argv)
    try:
        ts = sorted({int(t) for t in args.ts.split(",")})
    except ValueError:
        parser.error(f"--ts must be comma-separated ints, got {args.ts!r}")
    if not ts or min(ts) < 1:
        parser.error(f"--ts must hold positive ints, got {args.ts!r}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    start = time.perf_counter()
    mid = set(args.mid_policies.split(",")) if args.mid_policies else None
    rows = measure(ts, args.rounds, args.max_gb, mid, set(args.long_policies.split(",")), args.time_every_up_to)
    os.makedirs("results", exist_ok=True)
    with open("results/long.json", "w") as f:
        json.dump(rows, f, indent=1)
    section = render(rows, args.rounds, time.perf_counter() - start)
    print(section)
    if args.out:
        write_section(args.out, section, START, END)
        print(f"wrote the long section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
