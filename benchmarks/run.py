"""LSTM speed benchmark: memcell (reference and fused) against the layers a user would pick instead.

Measures, in one process and side by side, one training step (forward + backward of the mean
squared outputs with respect to all params, batch-major inputs) and the forward pass alone, at
a few shapes, for:

- memcell reference (``memcell.unroll`` over ``memcell.lstm``), memcell fused (``memcell.fused.lstm``);
- torch.nn.LSTM (CPU; and cuDNN when a GPU is present);
- flax linen ``nn.RNN(nn.OptimizedLSTMCell)``, equinox ``LSTMCell`` + ``lax.scan``,
  haiku ``hk.LSTM`` + ``hk.dynamic_unroll``;
- on a GPU only: ``jax.experimental.rnn.lstm`` (cuDNN).

Timings are interleaved (each round calls every implementation once) and the minimum over rounds
is kept, so a machine shared with other work slows every implementation alike and the ratios
stay meaningful. Also reported: compile time of the JAX training steps, their peak temporary
memory from XLA's memory analysis, and the fraction of the matmul-bound floor
``3 x 2 B T (D + H) 4H`` FLOPs at the machine's measured 2048 x 2048 float32 matmul rate.

Usage: ``python benchmarks/run.py [--quick] [--rounds N] [--out docs/benchmarks.md]``
(``make bench`` runs it with the defaults and rewrites docs/benchmarks.md).
"""

import argparse
import dataclasses
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import memcell
from memcell import fused
from memcell.fused import layout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_name, race  # noqa: E402  (shared with modern.py and practitioner.py)

SHAPES = [  # (B, T, D, H)
    (16, 200, 64, 128),
    (32, 128, 128, 256),
    (64, 100, 512, 512),
    (16, 1000, 64, 128),  # long sequence: per-step overhead dominates
    (16, 100, 256, 1024),  # wide hidden state: the recurrent matmul dominates
]
QUICK_SHAPES = [(16, 200, 64, 128), (32, 128, 128, 256)]


@dataclasses.dataclass
class Impl:
    name: str
    train: object  # () -> None, blocks until done
    forward: object
    compile_s: float | None = None
    temp_mb: float | None = None


def _block(x):
    return jax.block_until_ready(x)


def _jax_impl(name, loss_fn, fwd_fn, params, xs):
    """Jitted training step (grad of loss_fn w.r.t. params) and forward; compile time and memory."""
    grad = jax.jit(jax.grad(loss_fn))
    t0 = time.perf_counter()
    compiled = grad.lower(params, xs).compile()
    compile_s = time.perf_counter() - t0
    temp_mb = None
    try:
        mem = compiled.memory_analysis()
        temp_mb = mem.temp_size_in_bytes / 2**20
    except Exception:  # memory analysis is not offered by every backend
        pass
    fwd = jax.jit(fwd_fn)
    return Impl(name, lambda: _block(compiled(params, xs)), lambda: _block(fwd(params, xs)), compile_s, temp_mb)


def memcell_impls(B, T, D, H, xs):
    cell = memcell.lstm(H)
    params = cell.init(jax.random.key(0), D)
    ref = lambda p, x: memcell.unroll(cell, p, x)[1]
    fast = lambda p, x: fused.lstm(p, x)[1]
    return [
        _jax_impl("memcell reference", lambda p, x: jnp.mean(ref(p, x) ** 2), ref, params, xs),
        _jax_impl("memcell fused", lambda p, x: jnp.mean(fast(p, x) ** 2), fast, params, xs),
    ]


def flax_impl(B, T, D, H, xs):
    import flax.linen as nn

    model = nn.RNN(nn.OptimizedLSTMCell(H))
    params = model.init(jax.random.key(0), xs)
    run = lambda p, x: model.apply(p, x)
    return _jax_impl("flax OptimizedLSTMCell", lambda p, x: jnp.mean(run(p, x) ** 2), run, params, xs)


def equinox_impl(B, T, D, H, xs):
    import equinox as eqx

    cell = eqx.nn.LSTMCell(D, H, key=jax.random.key(0))
    params, static = eqx.partition(cell, eqx.is_array)

    def run(p, x):
        c = eqx.combine(p, static)

        def one(seq):
            def step(carry, xt):
                carry = c(xt, carry)
                return carry, carry[0]

            zeros = jnp.zeros((H,), x.dtype)
            return jax.lax.scan(step, (zeros, zeros), seq)[1]

        return jax.vmap(one)(x)

    return _jax_impl("equinox LSTMCell", lambda p, x: jnp.mean(run(p, x) ** 2), run, params, xs)


def haiku_impl(B, T, D, H, xs):
    import haiku as hk

    def forward(x):
        core = hk.LSTM(H)
        ys, _ = hk.dynamic_unroll(core, jnp.swapaxes(x, 0, 1), core.initial_state(x.shape[0]))
        return jnp.swapaxes(ys, 0, 1)

    model = hk.without_apply_rng(hk.transform(forward))
    params = model.init(jax.random.key(0), xs)
    run = model.apply
    return _jax_impl("haiku LSTM", lambda p, x: jnp.mean(run(p, x) ** 2), run, params, xs)


def cudnn_impl(B, T, D, H, xs):
    """jax.experimental.rnn's cuDNN LSTM (GPU only)."""
    from jax.experimental import rnn

    weights = rnn.init_lstm_weight(jax.random.key(0), D, H, 1, False)
    lengths = jnp.full((B,), T, jnp.int32)

    def run(w, x):
        h0 = jnp.zeros((1, B, H), x.dtype)
        return rnn.lstm(x, h0, h0, w, lengths, D, H, 1, 0.0, False)[0]

    return _jax_impl("jax cuDNN (experimental.rnn)", lambda w, x: jnp.mean(run(w, x) ** 2), run, weights, xs)


def torch_impl(B, T, D, H, xs_np, device):
    import torch

    model = torch.nn.LSTM(D, H, batch_first=True).to(device)
    x = torch.from_numpy(xs_np).to(device)
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)

    def train():
        model.zero_grad(set_to_none=True)
        y, _ = model(x)
        (y**2).mean().backward()
        sync()

    def forward():
        with torch.no_grad():
            model(x)
        sync()

    return Impl("torch.nn.LSTM" + (" (cuDNN)" if device == "cuda" else ""), train, forward)



def matmul_rate(rounds: int) -> float:
    """float32 FLOP/s of one 2048 x 2048 matmul under XLA on this machine."""
    a = jax.random.normal(jax.random.key(0), (2048, 2048))
    mm = jax.jit(lambda a: a @ a)
    t = race({"mm": lambda: _block(mm(a))}, max(rounds, 3))["mm"]
    return 2 * 2048**3 / t


def recurrent_matmul_rates(B, T, H, rounds: int) -> dict:
    """FLOP/s of the T sequential ``[B, H] x [H, 4H]`` recurrent matmuls alone, XLA (as fused runs them) and torch.

    Each step is ``h = tanh((h @ U)[:, :H])``, a dependency chain as in the recurrence; the
    tanh on ``[B, H]`` is small next to the matmul. Measures the one operation the fused path
    cannot batch over time, on both sides, so the tables above can be read against it.
    """
    import torch

    u = (np.random.default_rng(0).standard_normal((H, 4 * H)) / np.sqrt(H)).astype(np.float32)
    h0 = np.ones((B, H), np.float32)
    axis = layout.feature_axis(H)  # the layout the fused path uses at this size: [B, H] or [H, B] per step
    rec = layout.recurrent_matmul(jnp.asarray(u), None, transposed=False, axis=axis)

    @jax.jit
    def xla_loop(h):
        step = lambda h, _: (jnp.tanh(jax.lax.slice_in_dim(rec(h), 0, H, axis=axis)), None)
        return jax.lax.scan(step, h, None, length=T, unroll=4)[0]

    ut, ht = torch.from_numpy(u), torch.from_numpy(h0)

    def torch_loop():
        h = ht
        for _ in range(T):
            h = torch.tanh(torch.mm(h, ut)[:, :H])
        return h

    h0j = jnp.asarray(h0 if axis == -1 else h0.T)
    best = race({"xla": lambda: _block(xla_loop(h0j)), "torch": torch_loop}, rounds)
    flops = 2 * B * H * 4 * H * T
    return {k: flops / v for k, v in best.items()}


def floor_seconds(B, T, D, H, rate) -> float:
    return 3 * 2 * B * T * (D + H) * 4 * H / rate


def bench_shape(shape, rounds, gpu: bool):
    B, T, D, H = shape
    xs_np = np.random.default_rng(0).standard_normal((B, T, D)).astype(np.float32)
    xs = jnp.asarray(xs_np)
    impls = memcell_impls(B, T, D, H, xs)
    impls += [torch_impl(B, T, D, H, xs_np, "cpu")]
    for make in (flax_impl, equinox_impl, haiku_impl):
        impls.append(make(B, T, D, H, xs))
    if gpu:
        impls.append(cudnn_impl(B, T, D, H, xs))
        impls.append(torch_impl(B, T, D, H, xs_np, "cuda"))
    train = race({i.name: i.train for i in impls}, rounds)
    fwd = race({i.name: i.forward for i in impls}, rounds)
    return impls, train, fwd


def _ms(s):
    return f"{1e3 * s:.1f}"


def _targets(results, rate) -> list[str]:
    """The speed targets of the fused path, each with what this run measured and whether it is met."""
    fused_name, by_shape = "memcell fused", {shape: (impls, train) for shape, impls, train, _ in results}
    ratio = lambda shape, peer: by_shape[shape][1][peer] / by_shape[shape][1][fused_name]
    fmt = lambda shape: f"{shape[0]},{shape[1]},{shape[2]},{shape[3]}"
    verdict = lambda ok: "met" if ok else "**not met**"
    rows = []
    torch_r = {s: ratio(s, "torch.nn.LSTM") for s in by_shape}
    rows.append(("training step faster than torch.nn.LSTM at every shape (x torch >= 1.0)",
                 ", ".join(f"{fmt(s)}: {r:.2f}" for s, r in torch_r.items()), min(torch_r.values()) >= 1.0))
    small = [s for s in ((16, 200, 64, 128), (32, 128, 128, 256)) if s in by_shape]
    if small:
        flax_r = {s: ratio(s, "flax OptimizedLSTMCell") for s in small}
        rows.append(("at least 2x flax at the two small shapes", ", ".join(f"{fmt(s)}: {r:.2f}" for s, r in flax_r.items()),
                     min(flax_r.values()) >= 2.0))
    large = (64, 100, 512, 512)
    if large in by_shape:
        over = by_shape[large][1][fused_name] / floor_seconds(*large, rate)
        rows.append(("within 1.5x of the matmul floor at the large shape", f"{over:.2f}x the floor", over <= 1.5))
    fused_impl = {s: next(i for i in impls if i.name == fused_name) for s, (impls, _) in by_shape.items()}
    ref_impl = {s: next(i for i in impls if i.name == "memcell reference") for s, (impls, _) in by_shape.items()}
    pair = [s for s in ((16, 200, 64, 128), (16, 1000, 64, 128)) if s in by_shape]
    if len(pair) == 2:
        c200, c1000 = (fused_impl[s].compile_s for s in pair)
        rows.append(("compile time independent of T (T=200 against T=1000, same B, D, H)",
                     f"{c200:.2f} s against {c1000:.2f} s", c1000 <= 1.25 * c200))
    if all(fused_impl[s].temp_mb is not None and ref_impl[s].temp_mb is not None for s in by_shape):
        mem = {s: (fused_impl[s].temp_mb, ref_impl[s].temp_mb) for s in by_shape}
        rows.append(("fused temporary memory no more than the reference's",
                     ", ".join(f"{fmt(s)}: {f:.0f}/{r:.0f} MiB" for s, (f, r) in mem.items()),
                     all(f <= r for f, r in mem.values())))
    lines = ["## Targets, as measured in this run", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {what} | {got} | {verdict(ok)} |" for what, got, ok in rows]
    return lines + [""]


def render(results, matmuls, rate, args, elapsed) -> str:
    import torch

    cpu = cpu_name()
    lines = [
        "# Benchmarks: one LSTM layer, memcell against its peers",
        "",
        f"Written by `benchmarks/run.py{' --quick' if args.quick else ''}` "
        f"on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in {elapsed:.0f} s. "
        f"Machine: {cpu}, {os.cpu_count()} CPU cores, JAX {jax.__version__} on {jax.default_backend()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads). Matmul rate (2048^2, float32, XLA): "
        f"{rate / 1e9:.0f} GFLOP/s.",
        "",
        "One training step = forward + backward of `mean(ys**2)` with respect to all params, float32, "
        "batch-major inputs `[B, T, D]`, one LSTM layer of `H` units. Times are the minimum over "
        f"{args.rounds} interleaved rounds (every implementation once a round), in ms. "
        "`x torch` and `x flax` are speed-ups (their time / this time: above 1 is faster). "
        "`floor` is the matmul-bound time `3 x 2 B T (D+H) 4H` FLOPs at the measured matmul rate; "
        "`% floor` is floor / time.",
        "",
    ]
    for shape, impls, train, fwd in results:
        B, T, D, H = shape
        fl = floor_seconds(B, T, D, H, rate)
        t_torch = train.get("torch.nn.LSTM")
        t_flax = train.get("flax OptimizedLSTMCell")
        lines += [
            f"## B={B}, T={T}, D={D}, H={H} (floor {_ms(fl)} ms)",
            "",
            "| implementation | train step (ms) | x torch | x flax | % floor | forward (ms) | compile (s) | temp memory (MiB) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i in impls:
            t = train[i.name]
            lines.append(
                f"| {i.name} | {_ms(t)} | {t_torch / t:.2f} | {t_flax / t:.2f} | {100 * fl / t:.0f}% | "
                f"{_ms(fwd[i.name])} | {'' if i.compile_s is None else f'{i.compile_s:.2f}'} | "
                f"{'' if i.temp_mb is None else f'{i.temp_mb:.1f}'} |"
            )
        lines.append("")
    lines += _targets(results, rate)
    if jax.default_backend() != "gpu":
        lines += [
            "GPU rows (jax.experimental.rnn cuDNN, torch cuDNN) run only when a GPU is present; "
            "they were not measured here.",
            "",
        ]
    lines += [
        "Compile time and temporary memory come from XLA (`jit(...).lower(...).compile()` and its "
        "`memory_analysis().temp_size_in_bytes`, the scratch a training step needs beyond its "
        "arguments and outputs); torch offers neither.",
        "",
        "## The recurrent matmul alone",
        "",
        "The one operation no implementation can batch over time: `T` sequential `[B, H] x [H, 4H]` "
        "matmuls (`h = tanh((h @ U)[:, :H])`, a dependency chain), in GFLOP/s, XLA as the fused path "
        "runs them against `torch.mm` in a Python loop. A training step runs this twice (forward "
        "`h U`, backward `dz U^T`).",
        "",
        "| B, H (T) | XLA (GFLOP/s) | torch (GFLOP/s) | XLA / torch |",
        "|---|---|---|---|",
    ]
    for (B, T, D, H), r in matmuls:
        lines.append(f"| {B}, {H} ({T}) | {r['xla'] / 1e9:.0f} | {r['torch'] / 1e9:.0f} | {r['xla'] / r['torch']:.2f} |")
    lines += [
        "",
        "## What the fused path does, and what limits it",
        "",
        "`memcell.fused.lstm` (also `.gru`, `.rnn`; `memcell.unroll(..., backend=\"fused\")`) computes "
        "the input projection of all steps as one matmul, runs only `h U` and the gates in the scan, "
        "and has a hand-written backward pass (`jax.custom_vjp`): the forward step stores the factors "
        "of its own derivative over the input projection's buffer, the reverse scan is a few "
        "multiply-adds and one `dz U^T` a step and writes `dz` over those factors in place, and the "
        "weight gradients are one matmul over all `B x T` rows afterwards, as cuDNN does. It is "
        "tested equal to the reference path (values and gradients).",
        "",
        "- Where XLA:CPU runs the recurrent matmul slower than torch's GEMM (the table above; at "
        "B=32, H=256 about 0.6x), that ratio bounds what any JAX LSTM reaches against torch. Where "
        "it runs it as fast or faster, the rest of the gap is per-step overhead that torch's fused "
        "cell kernel does not have. Profiled on the development machine (2026-11-24, "
        "`jax.profiler`, training step): XLA:CPU runs each step's gate arithmetic as about a "
        "dozen small kernels, one launch each (6573 elementwise kernels, 11.5 ms, of a 66 ms step "
        "at B=32, H=256), and the block reads and writes of the per-step arrays cost 10 ms there "
        "and 58 ms of a 290 ms step at B=64, H=512, with 30 ms more for zero-filling fresh "
        "output buffers and copies.",
        "- The layout constants below are per platform (`memcell.fused.tuning`, chosen by `jax.default_backend()` "
        "when a layer is traced). The CPU values were measured on the 2-core development CPU. On GPU "
        "(`benchmarks/fused_layouts.py` on one H100, training step at these five shapes against plain "
        "batch-major with 4 steps a scan iteration) feature-major gained nothing (0.96 to 1.05x the time), "
        "two batch groups were slower (1.19 to 1.28x) and 8 steps a scan iteration were faster (0.90 to "
        "1.00x), so the GPU runs batch-major, one group, 8 steps an iteration; there the fused step took "
        "0.33 to 0.43x the reference path's time ([fused_layouts.md](fused_layouts.md)). On TPU nothing was measured yet: the plain layout.",
        "- From H = 512 (CPU) the fused path runs feature-major (`tuning.CPU.feature_major_from_h`): per-step "
        "arrays are `[H, B]` and the recurrent matmuls put the weight on the left (`U^T h`, `U dz`), "
        "for which XLA:CPU runs a much faster kernel when 4H is large next to B; at small H it is slower.",
        "- From H = 256 (CPU, batch-major, B >= 16) each scan step runs the batch as two independent "
        "halves (`tuning.CPU.groups_from_h`): their small matmuls and gate kernels then run on both "
        "cores at once instead of one after another (0.82x to 0.95x the time at H = 256).",
        "- XLA:CPU fuses a scan's per-step `dynamic-slice` into the elementwise kernels that consume "
        "it, and those kernels run several times slower; the fused path reads each block of steps "
        "one iteration ahead into the carry instead, and unrolls 4 steps per iteration.",
        "- On CPU a separate pass over a `[B, T, 4H]` array costs about as much as the input matmul "
        "itself, so the bias is added inside the step, everything stays batch-major (no transposes), "
        "and no second `[B, T, 4H]` array is allocated.",
        "- The forward pass alone gains little over the reference: the input projection saves small "
        "per-step matmuls but writes and reads a `[B, T, 4H]` array. The gain is in the backward pass.",
        "- Tried and not adopted (training step, measured side by side on the development machine, "
        "2026-11-24): XLA flags through `jax.jit(..., compiler_options=...)`: "
        "`xla_cpu_experimental_ynn_fusion_type=\"\"` (Eigen instead of YNNPACK for dots) was faster "
        "only at B=16, H=1024 (285.7 against 334.5 ms, before the feature-major layout) and slower "
        "everywhere else (92.1 against 74.2 ms at B=32, H=256); YNNPACK elementwise fusion was slower "
        "at every shape (98.7 against 74.2 ms); the oneDNN and XNNPACK flags changed nothing. Eight "
        "steps per scan iteration instead of four: 16.5 against 12.9 ms at B=16, H=128. Splitting "
        "each recurrent matmul into two half-batch matmuls that rejoin before the gates: no gain "
        "(74.4 against 74.1 ms at B=32, H=256; the two independent half-batch recurrences above "
        "are what helps), slower at large H. All four gates in one tanh pass (sigmoid(x) = tanh(x/2)/2 + 1/2): "
        "within noise (0-5%), and it would move the fused path's sigmoid off the reference's. Larger "
        "glibc malloc thresholds (`MALLOC_MMAP_THRESHOLD_`, fewer page faults on fresh buffers) sped "
        "torch up more than memcell (B=64, H=512: torch 304 to 239 ms, fused 309 to 296).",
        "- Timings on a CPU shared with other jobs are noisy, torch's above all (its threads spin "
        "while waiting for a busy core); the rounds are interleaved so every implementation meets the "
        "same load, and the minimum is kept. Re-run on a quiet machine for final numbers.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small shapes, 3 rounds (about a minute)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5, quick 3)")
    parser.add_argument("--out", default="docs/benchmarks.md", help="markdown file to write ('' to skip)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 5)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    gpu = jax.default_backend() == "gpu"
    start = time.perf_counter()
    rate = matmul_rate(args.rounds)
    print(f"matmul rate: {rate / 1e9:.0f} GFLOP/s", flush=True)
    results = []
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        impls, train, fwd = bench_shape(shape, args.rounds, gpu)
        results.append((shape, impls, train, fwd))
        fl = floor_seconds(*shape, rate)
        print(f"\nB, T, D, H = {shape}  floor {_ms(fl)} ms", flush=True)
        for i in impls:
            print(
                f"  {i.name:30s} train {_ms(train[i.name]):>8s} ms  x torch "
                f"{train['torch.nn.LSTM'] / train[i.name]:5.2f}  x flax "
                f"{train['flax OptimizedLSTMCell'] / train[i.name]:5.2f}  floor {100 * fl / train[i.name]:4.0f}%"
                f"  fwd {_ms(fwd[i.name]):>8s} ms"
                + ("" if i.compile_s is None else f"  compile {i.compile_s:5.2f} s  temp {i.temp_mb or 0:7.1f} MiB"),
                flush=True,
            )
    matmuls = []
    print("\nrecurrent matmul alone (GFLOP/s):", flush=True)
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        B, T, D, H = shape
        r = recurrent_matmul_rates(B, T, H, args.rounds)
        matmuls.append((shape, r))
        print(f"  B={B} H={H} T={T}: XLA {r['xla'] / 1e9:.0f}  torch {r['torch'] / 1e9:.0f}", flush=True)
    text = render(results, matmuls, rate, args, time.perf_counter() - start)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
