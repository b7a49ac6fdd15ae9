"""The one GPU command (``make bench-gpu``): the GPU tests, then the GPU benchmark, in one process.

Runs with what a GPU machine already has (jax with CUDA, flax, optax, chex, torch) and memcell
from the working tree (``PYTHONPATH=.``), and stops starting new work once ``--budget`` seconds
(default 450: under 8 minutes with start-up) have passed, marking what it skipped.

1. Tests: the real cuDNN call against the reference (tests/test_cudnn.py), the Pallas path
   compiled through Triton against the reference (tests/test_pallas.py), and a check of the
   parallel and Pallas paths at sizes that span several blocks and chunks. Float32 checks run
   at ``jax.default_matmul_precision("highest")`` (no TF32) so their tolerances hold.
2. Benchmark, training step (gradient of the mean squared outputs w.r.t. the params) and forward:
   the LSTM and the GRU at the five shapes of benchmarks/run.py (memcell reference, fused, pallas,
   cuDNN through memcell for the LSTM, Flax ``nn.RNN`` over ``OptimizedLSTMCell``/``GRUCell``,
   torch.nn.LSTM/GRU); minGRU and LRU at T = 1k, 4k, 16k, 64k (reference, parallel, pallas) beside
   the fused LSTM at the same sizes. bfloat16 rows (matmuls in bfloat16, float32 accumulation and
   carry; torch: the module and inputs in bfloat16) beside float32. Timings are interleaved rounds,
   minimum kept (benchmarks/_common.race), so every ratio compares implementations of one run.
3. A short sweep of the Pallas block sizes, and a JSON of the measured tuning from which
   memcell/pallas/tuning.py and memcell/parallel/tuning.py are filled by hand.

Writes docs/benchmarks.md's GPU section (and, where ``$OUT`` is set, the section and the JSON
into it, so a lent machine sends them back). ``--cpu-smoke`` runs every step at tiny sizes on
the CPU (Pallas interpret mode) to show the script runs; it writes to /tmp, never to the docs.

Usage: ``PYTHONPATH=. python benchmarks/gpu.py [--cpu-smoke] [--budget S] [--rounds N] [--out PATH]``
"""

import argparse
import contextlib
import json
import os
import sys
import time
import traceback

# torch shares the GPU with JAX here: JAX must not take 75% of its memory up front. Set before
# jax initialises its backend.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import memcell  # noqa: E402
from memcell.pallas import tuning as pallas_tuning  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_section  # noqa: E402
from _gpu_report import END, START, _max_err, bf16_errors, render, tuning_json  # noqa: E402
from run import SHAPES  # noqa: E402  (the five shapes of make bench)

LONG_T = [1024, 4096, 16384, 65536]
LONG_BDH = (16, 64, 128)  # B, D, H of the minGRU / LRU / fused LSTM rows
SMOKE = dict(shapes=[(2, 5, 3, 8)], long_t=[16, 24], long_bdh=(2, 3, 8))
BF16 = jnp.bfloat16


class Clock:
    def __init__(self, budget: float):
        self.start, self.budget = time.time(), budget

    def left(self) -> float:
        return self.budget - (time.time() - self.start)


def _note(msg: str) -> None:
    print(msg, flush=True)


def _error(e: BaseException) -> str:
    return f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


# ----------------------------------------------------------------------------- tests


def _unroll_fn(cell, backend, **kw):
    def run(p, x):
        return memcell.unroll(cell, p, x, backend=backend, **kw)
    return run


def path_checks(smoke: bool) -> list[tuple[str, float, float, bool]]:
    """Each fast path against the reference, values and gradients, at sizes spanning several blocks/chunks."""
    B, T, D = (3, 12, 5) if smoke else (33, 300, 20)
    H = 8 if smoke else 100
    lengths = jnp.array([T, 0, T // 2] + [T - i for i in range(B - 3)])
    resets = jax.random.bernoulli(jax.random.key(1), 0.05, (B, T))
    xs = jax.random.normal(jax.random.key(2), (B, T, D))
    cases = [("parallel", f(H), H) for f in (memcell.mingru, memcell.minlstm, memcell.lru, memcell.rglru)]
    cases += [("parallel", memcell.mlstm(H, num_heads=2), H)]
    cases += [("pallas", f(H), H) for f in (memcell.lstm, memcell.gru, memcell.rnn, memcell.mingru, memcell.lru)]
    if not smoke:  # above one tile of hidden units (128 on a GPU): the tiled kernels
        cases += [("pallas", memcell.lstm(300), 300), ("pallas", memcell.gru(300), 300)]
    out = []
    for backend, cell, width in cases:
        params = cell.init(jax.random.key(0), D)
        kw = dict(lengths=lengths, resets=resets, reverse=True)

        def loss(p, x, b):
            c, ys = _unroll_fn(cell, b, **kw)(p, x)
            return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree.leaves(c)), ys

        name = f"{backend} {type(cell.spec).__name__} H={width}"
        try:
            both = lambda b: jax.jit(jax.value_and_grad(lambda p, x: loss(p, x, b), argnums=(0, 1), has_aux=True))
            with jax.default_matmul_precision("highest"):
                got, want = both(backend)(params, xs), both("reference")(params, xs)
            scale = max(1.0, max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want[1])))
            err, gerr = _max_err(got[0][1], want[0][1]), _max_err(got[1], want[1]) / scale
            out.append((name, err, gerr, err < 1e-4 and gerr < 1e-4))
        except Exception as e:  # a failure is reported and the run goes on
            traceback.print_exc()
            out.append((name + " " + _error(e), float("nan"), float("nan"), False))
        _note(f"check {out[-1][0]}: outputs {out[-1][1]:.2e}, gradients (relative) {out[-1][2]:.2e}, "
              f"{'ok' if out[-1][3] else 'FAILED'}")
    return out


class _Outcomes:
    """A pytest plugin counting the outcomes of test calls (a skipped test is not a passed one)."""

    def __init__(self):
        self.counts = {}

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            self.counts[report.outcome] = self.counts.get(report.outcome, 0) + 1


def run_tests(smoke: bool) -> dict:
    import pytest

    runs = {"tests/test_cudnn.py -k real_cudnn": ["tests/test_cudnn.py", "-k", "real_cudnn"],
            "tests/test_pallas.py (not slow)": ["-m", "not slow", "tests/test_pallas.py"]
            + (["-k", "why_not or triton"] if smoke else [])}
    results = {}
    for name, argv in runs.items():
        outcomes = _Outcomes()
        with jax.default_matmul_precision("highest"):
            code = pytest.main(["-q", "-p", "no:cacheprovider"] + argv, plugins=[outcomes])
        counts = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.counts.items())) or "none ran"
        results[name] = f"{counts} (pytest exit {int(code)})"
        _note(f"tests {name}: {results[name]}")
    return results


# ----------------------------------------------------------------------------- implementations


def _compiled(run, params, xs):
    """(train thunk, forward thunk, outputs thunk): a jitted gradient of mean(ys^2), the forward, its ys."""
    loss = lambda p, x: jnp.mean(run(p, x).astype(jnp.float32) ** 2)
    grad = jax.jit(jax.grad(loss)).lower(params, xs).compile()
    fwd = jax.jit(run).lower(params, xs).compile()
    return (lambda: jax.block_until_ready(grad(params, xs))), (lambda: jax.block_until_ready(fwd(params, xs))), \
        (lambda: fwd(params, xs))


def memcell_builders(cell, backends, D, xs):
    params = cell.init(jax.random.key(0), D)
    out = {}
    for label, backend in backends:
        out[label] = lambda backend=backend: _compiled(lambda p, x: _unroll_fn(cell, backend)(p, x)[1], params, xs)
    return out


def flax_builder(kind, H, dtype, xs):
    import flax.linen as nn

    def build():
        cell = nn.OptimizedLSTMCell(H, dtype=dtype) if kind == "lstm" else nn.GRUCell(H, dtype=dtype)
        model = nn.RNN(cell)
        params = model.init(jax.random.key(0), xs)
        return _compiled(model.apply, params, xs)
    return build


def torch_builder(kind, D, H, dtype, xs):
    def build():
        import torch

        device = "cuda" if jax.default_backend() == "gpu" else "cpu"
        tdtype = torch.bfloat16 if dtype == BF16 else torch.float32
        model = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(D, H, batch_first=True).to(device, tdtype)
        x = torch.from_numpy(np.array(xs, np.float32)).to(device, tdtype)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def train():
            model.zero_grad(set_to_none=True)
            (model(x)[0].float() ** 2).mean().backward()
            sync()

        def forward():
            with torch.no_grad():
                model(x)
            sync()
        return train, forward, None
    return build


def timed(builders: dict, rounds: int, clock: Clock) -> dict:
    """Builds (compiles) each implementation, then times all interleaved: name -> {train, forward} s or an error."""
    built, out = {}, {}
    for name, build in builders.items():
        if clock.left() <= 0:
            out[name] = "skipped: time budget"
            continue
        try:
            built[name] = build()
            for thunk in built[name][:2]:
                thunk()  # warm-up: the first call of a compiled program, and torch's cuDNN plans
        except Exception as e:
            out[name] = _error(e)
            _note(f"  {name}: {out[name]}")
    best = {(n, i): float("inf") for n in built for i in (0, 1)}
    for r in range(rounds):
        if r and clock.left() <= 0:
            break
        for (n, i) in best:
            t0 = time.perf_counter()
            built[n][i]()
            best[n, i] = min(best[n, i], time.perf_counter() - t0)
    for n in built:
        out[n] = {"train": best[n, 0], "forward": best[n, 1], "fwd": built[n][2]}
    return out


# ----------------------------------------------------------------------------- rows


def recurrent_rows(kind, dtype, shapes, rounds, clock, rows):
    for (B, T, D, H) in shapes:
        if clock.left() <= 0:
            rows.append(dict(section=kind, shape=(B, T, D, H), dtype=_dt(dtype), impls="skipped: time budget"))
            continue
        xs = jax.random.normal(jax.random.key(1), (B, T, D))
        cell = (memcell.lstm if kind == "lstm" else memcell.gru)(H, dtype=dtype)
        backends = [("memcell reference", "reference"), ("memcell fused", "fused"), ("memcell pallas", "pallas")]
        if kind == "lstm" and dtype is None:
            backends.append(("memcell cuDNN", "cudnn"))
        builders = memcell_builders(cell, backends, D, xs)
        builders[f"flax {'OptimizedLSTMCell' if kind == 'lstm' else 'GRUCell'}"] = flax_builder(kind, H, dtype, xs)
        builders[f"torch.nn.{kind.upper()}"] = torch_builder(kind, D, H, dtype, xs)
        _note(f"{kind} {_dt(dtype)} B={B} T={T} D={D} H={H} ({clock.left():.0f} s left)")
        rows.append(dict(section=kind, shape=(B, T, D, H), dtype=_dt(dtype), impls=timed(builders, rounds, clock)))


def long_rows(dtype, long_t, bdh, rounds, clock, rows):
    B, D, H = bdh
    for T in long_t:
        for name, factory in (("mingru", memcell.mingru), ("lru", memcell.lru)):
            if clock.left() <= 0:
                rows.append(dict(section=name, shape=(B, T, D, H), dtype=_dt(dtype), impls="skipped: time budget"))
                continue
            xs = jax.random.normal(jax.random.key(1), (B, T, D))
            backends = [("memcell reference", "reference"), ("memcell parallel", "parallel"), ("memcell pallas", "pallas")]
            builders = memcell_builders(factory(H, dtype=dtype), backends, D, xs)
            builders.update(memcell_builders(memcell.lstm(H, dtype=dtype), [("fused LSTM", "fused")], D, xs))
            _note(f"{name} {_dt(dtype)} B={B} T={T} D={D} H={H} ({clock.left():.0f} s left)")
            impls = timed(builders, rounds, clock)
            for v in impls.values():  # keep the long rows' outputs off the device
                if isinstance(v, dict) and T > 4096:
                    v["fwd"] = None
            rows.append(dict(section=name, shape=(B, T, D, H), dtype=_dt(dtype), impls=impls))


@contextlib.contextmanager
def gpu_tuning(t):
    platform = jax.default_backend()
    old = pallas_tuning.BY_PLATFORM.get(platform)
    pallas_tuning.BY_PLATFORM[platform] = t
    try:
        yield
    finally:
        pallas_tuning.BY_PLATFORM[platform] = old


def sweep(shapes, long_t, bdh, rounds, clock, smoke: bool) -> list[dict]:
    """Pallas training-step time for a few block sizes: the linear scan (minGRU) and the LSTM."""
    base = pallas_tuning.for_platform()
    out = []
    B, D, H = bdh
    plans = [("mingru", (B, long_t[min(2, len(long_t) - 1)], D, H), base._replace(channel_block=c, unroll=u))
             for c in (32, 64, 128, 256) for u in (1, 4, 8)]
    plans += [("lstm", shapes[0], base._replace(batch_block=b, num_warps=w, unroll=u))  # the carry in registers
              for b in (16, 32) for w in (4, 8) for u in (1, 4)]
    plans += [("lstm", shapes[min(2, len(shapes) - 1)], base._replace(tile=c, num_warps=w, num_stages=n))  # tiled
              for c in (64, 128) for w in (4, 8) for n in (1, 2)]
    if smoke:  # two of each: the code path, not the numbers
        plans = plans[:2] + plans[12:14]
    for name, (B_, T, D_, H_), t in plans:
        if clock.left() <= 0:
            out.append(dict(cell=name, shape=(B_, T, D_, H_), tuning=t._asdict(), train="skipped: time budget"))
            continue
        cell = (memcell.mingru if name == "mingru" else memcell.lstm)(H_)
        xs = jax.random.normal(jax.random.key(1), (B_, T, D_))
        with gpu_tuning(t):
            res = timed(memcell_builders(cell, [("pallas", "pallas")], D_, xs), rounds, clock)["pallas"]
        out.append(dict(cell=name, shape=(B_, T, D_, H_), tuning=t._asdict(),
                        train=res["train"] if isinstance(res, dict) else res))
        _note(f"sweep {name} {(B_, T, D_, H_)} {t}: {out[-1]['train']}")
    return out


def _dt(dtype) -> str:
    return "bfloat16" if dtype == BF16 else "float32"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny sizes on the CPU (interpret mode): checks the script runs")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds after which no new work starts")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5; smoke 1)")
    parser.add_argument("--out", default=None,
                        help="markdown file whose GPU section is written (default docs/benchmarks.md; "
                        "smoke: /tmp/memcell-bench-gpu-smoke.md)")
    parser.add_argument("--skip-tests", action="store_true", help="the benchmark only (no tests, no path checks)")
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    if jax.default_backend() != "gpu" and not smoke:
        print(f"make bench-gpu needs a GPU (jax.default_backend() is {jax.default_backend()!r}); "
              "use --cpu-smoke to check the script on a CPU", file=sys.stderr)
        return 2
    clock = Clock(args.budget)
    rounds = args.rounds or (1 if smoke else 5)
    shapes, long_t, bdh = (SMOKE["shapes"], SMOKE["long_t"], SMOKE["long_bdh"]) if smoke else (SHAPES, LONG_T, LONG_BDH)
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
    _note(f"device: {device}; budget {args.budget:.0f} s")
    tests = {} if args.skip_tests else run_tests(smoke)
    checks = [] if args.skip_tests else path_checks(smoke)
    rows = []
    for dtype in (None, BF16):  # float32 first: the rows most targets read
        recurrent_rows("lstm", dtype, shapes, rounds, clock, rows)
        long_rows(dtype, long_t, bdh, rounds, clock, rows)
        recurrent_rows("gru", dtype, shapes, rounds, clock, rows)
    rows.sort(key=lambda r: (["lstm", "gru", "mingru", "lru"].index(r["section"]), r["dtype"] != "float32", r["shape"][1]))
    errs = bf16_errors(rows)
    swept = sweep(shapes, long_t, bdh, max(1, rounds // 2), clock, smoke)
    tj = tuning_json(rows, swept, device)
    section = render(rows, errs, tests, checks, swept, tj, device, clock, smoke)
    out = args.out or ("/tmp/memcell-bench-gpu-smoke.md" if smoke else "docs/benchmarks.md")
    write_section(out, section, START, END)
    if os.environ.get("OUT"):  # a lent machine sends back only what is under $OUT
        with open(os.path.join(os.environ["OUT"], "gpu_section.md"), "w") as f:
            f.write(section)
        with open(os.path.join(os.environ["OUT"], "gpu_tuning.json"), "w") as f:
            json.dump(tj, f, indent=1, default=str)
    print(section)
    _note(f"wrote {out}; {time.time() - clock.start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
