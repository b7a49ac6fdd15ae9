"""Compiles the Pallas kernels for an H100 (sm_90) without a GPU, and reports their shared memory.

Pallas lowers a kernel to Triton IR in JAX on any machine; Triton compiles that IR to PTX and a
cubin on any machine too. On a GPU, XLA runs both steps when it compiles a program, so a kernel
whose shared memory exceeds the device's (227 KiB a block on an H100) fails only there. This
script runs both steps here, in two processes (jaxlib and the ``triton`` package each bundle
their own MLIR; ``triton`` is not a memcell dependency):

    PYTHONPATH=. .venv/bin/python benchmarks/triton_compile.py dump /tmp/memcell-ttir
    /path/to/python-with-triton benchmarks/triton_compile.py compile /tmp/memcell-ttir

``dump`` writes the Triton IR of every kernel (forward with residuals, backward) at the LSTM and
GRU shapes of benchmarks/run.py (float32 and bfloat16) and for the linear scan (real and complex),
with the GPU tuning of ``memcell.pallas.tuning``. ``compile`` compiles each for sm_90 and prints
its shared memory. The Triton of the ``triton`` package is not the one XLA embeds, so this checks
the kernels' IR and their resources, not XLA's own compilation; only a GPU run checks that.
"""

import json
import os
import sys

LIMIT_KIB = 227  # shared memory a block may use on an H100


def dump(out_dir: str) -> None:
    import jax
    import jax.numpy as jnp
    from jax._src.pallas.triton import pallas_call_registration as registration  # the lowering, to capture its IR

    from memcell.pallas import tuning
    from memcell.pallas.linear import linear_scan
    from memcell.pallas.recurrent import recurrence

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run import SHAPES

    captured = []
    lower = registration.lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = lower(*args, **kwargs)
        captured.append(result.module.operation.get_asm(enable_debug_info=False))
        return result

    registration.lowering.lower_jaxpr_to_triton_module = capture
    os.makedirs(out_dir, exist_ok=True)
    meta = {}

    def export(name, fn, *args):
        captured.clear()
        jax.export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=[
            jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*args)
        for i, text in enumerate(captured):
            path = f"{name}_{'forward' if i == 0 else 'backward'}"
            with open(os.path.join(out_dir, path + ".ttir"), "w") as f:
                f.write(text)
            meta[path] = dict(num_warps=tuning.GPU.num_warps, num_stages=tuning.GPU.num_stages)
        print(name, len(captured), "kernels", flush=True)

    T = 8  # the time length does not change a kernel's code
    for kind, G in (("lstm", 4), ("gru", 3)):
        for B, _, D, H in SHAPES:
            for dtype in (None, jnp.bfloat16):
                bh = jnp.zeros(G * H) if kind == "gru" else None
                carry = tuple(jnp.zeros((B, H)) for _ in range(2 if kind == "lstm" else 1))
                flags = jnp.ones((B, T), bool)
                run = lambda zx, w, c: jnp.sum(recurrence(kind, zx, w, bh, c, flags, flags, dtype=dtype,
                                                          tuning=tuning.GPU, platform="gpu")[0])
                export(f"{kind}_B{B}_H{H}_{'bf16' if dtype else 'f32'}", jax.grad(run, argnums=(0, 1, 2)),
                       jnp.ones((B, T, G, H)), jnp.ones((H, G * H)), carry)
    for name, a in (("linear_real", jnp.ones((16, T, 128))), ("linear_complex", jnp.ones((16, T, 128)) * (1 + 1j))):
        scan = lambda a, b, h0: jnp.sum(jnp.abs(linear_scan(a, b, h0, valid=jnp.ones((16, T), bool),
                                                            resets=jnp.ones((16, T), bool), platform="gpu")[0]))
        export(name, jax.grad(scan, argnums=(0, 1, 2)), a, a, a[:, 0])
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def compile_all(out_dir: str) -> int:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import compile as triton_compile

    import triton

    with open(os.path.join(out_dir, "meta.json")) as f:
        meta = json.load(f)
    print(f"triton {triton.__version__}, target sm_90, shared memory limit {LIMIT_KIB} KiB a block")
    over = 0
    for name, options in sorted(meta.items()):
        try:
            kernel = triton_compile(os.path.join(out_dir, name + ".ttir"), target=GPUTarget("cuda", 90, 32),
                                    options=options)
            kib = kernel.metadata.shared / 1024
            over += kib > LIMIT_KIB
            print(f"{name}: {kib:.0f} KiB{'  TOO LARGE' if kib > LIMIT_KIB else ''}", flush=True)
        except Exception as e:  # a kernel Triton cannot compile is reported, and the others still run
            over += 1
            print(f"{name}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
    print(f"{len(meta) - over} of {len(meta)} kernels compile within the limit")
    return 1 if over else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("dump", "compile"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(dump(sys.argv[2]) if sys.argv[1] == "dump" else compile_all(sys.argv[2]))
