"""Inference: the forward pass of a 2-layer bidirectional LSTM (H=128, D=64) at B = 1 and 32, T = 100 and
1000, memcell (jit) against ONNX Runtime running ``memcell.export.to_onnx``'s native form (ONNX's LSTM
operator) and its Loop form (jax2onnx's lowering of memcell's scan), and torch.nn.LSTM, in one process.

All four run the same weights (torch's through ``memcell.convert.to_torch``), on the CPU, with their
default threads. Timings are interleaved rounds, the minimum kept; each row also gives the largest
|output - memcell's| of the ONNX forms and torch. Written into docs/benchmarks.md between the
``inference`` markers.

Usage: ``python benchmarks/inference.py [--rounds N] [--out docs/benchmarks.md]``.
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
from memcell import convert, export

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_name, race, write_section  # noqa: E402

D, H, LAYERS = 64, 128, 2
SHAPES = ((1, 100), (1, 1000), (32, 100), (32, 1000))
START, END = "<!-- inference:start -->", "<!-- inference:end -->"


def model_and_params():
    model = memcell.stack([memcell.bidirectional(memcell.lstm(H), memcell.lstm(H), backend="auto")
                           for _ in range(LAYERS)])
    return model, model.init(jax.random.key(0), D)


def memcell_fn(model, params, xs):
    f = jax.jit(lambda x: model.apply(params, x)[1])
    x = jnp.asarray(xs)
    return lambda: np.asarray(jax.block_until_ready(f(x)))


def ort_fn(proto, xs):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # ONNX Runtime's threads spin-wait after each run by default, taking the cores from whichever
    # implementation runs next in the interleaved rounds; off, every implementation gets the same machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(["ys"], {"xs": xs})[0]


def torch_fn(model, params, xs):
    import torch

    torch.set_num_threads(os.cpu_count())
    module = torch.nn.LSTM(D, H, num_layers=LAYERS, bidirectional=True, batch_first=True)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in convert.to_torch(model, params).items()})
    module.eval()
    x = torch.from_numpy(xs)

    def run():
        with torch.no_grad():
            return module(x)[0].numpy()

    return run


def measure(rounds: int) -> list[dict]:
    model, params = model_and_params()
    native = export.to_onnx(model, params, input_size=D)
    loop = export.to_onnx(model, params, input_size=D, native=False)
    rows = []
    for B, T in SHAPES:
        xs = np.random.default_rng(B * T).normal(size=(B, T, D)).astype(np.float32)
        fns = {
            "memcell jit": memcell_fn(model, params, xs),
            "onnxruntime native LSTM": ort_fn(native, xs),
            "onnxruntime Loop": ort_fn(loop, xs),
            "torch.nn.LSTM": torch_fn(model, params, xs),
        }
        want = fns["memcell jit"]()
        diffs = {k: float(np.max(np.abs(f() - want))) for k, f in fns.items() if k != "memcell jit"}
        rows.append(dict(B=B, T=T, best=race(fns, rounds), diffs=diffs))
        print(B, T, {k: f"{1e3 * v:.2f} ms" for k, v in rows[-1]["best"].items()}, diffs, flush=True)
    return rows


def render(rows: list[dict], rounds: int, elapsed: float) -> str:
    names = list(rows[0]["best"])
    lines = [
        START,
        "## Inference: exported models in ONNX Runtime (`benchmarks/inference.py`)",
        "",
        f"Forward pass of a {LAYERS}-layer bidirectional LSTM, H={H}, D={D}, the same weights in every row "
        f"(`memcell.export.to_onnx`'s two forms, `memcell.convert.to_torch`), CPU, default threads; ms, minimum of "
        f"{rounds} interleaved rounds; `x memcell` is memcell's time over the row's (higher is faster); `max diff` "
        f"is the largest |output - memcell's| over the B x T x {2 * H} outputs. Run {datetime.date.today()} on "
        f"{cpu_name()} ({os.cpu_count()} cores, shared), jax {jax.__version__}, {elapsed / 60:.1f} min. "
        "GPU: unmeasured.",
        "",
        "| B | T | implementation | ms | x memcell | max diff |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        ref = r["best"]["memcell jit"]
        for name in names:
            t = r["best"][name]
            diff = "-" if name == "memcell jit" else f"{r['diffs'][name]:.1e}"
            lines.append(f"| {r['B']} | {r['T']} | {name} | {1e3 * t:.2f} | {ref / t:.2f} | {diff} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="docs/benchmarks.md", help="markdown file whose section to write ('' to skip)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    start = time.perf_counter()
    rows = measure(args.rounds)
    section = render(rows, args.rounds, time.perf_counter() - start)
    print(section)
    if args.out:
        write_section(args.out, section, START, END)
        print(f"wrote the inference section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
