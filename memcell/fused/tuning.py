"""The tuning constants of the fused path, per platform.

Each constant was chosen by measurement, and a measurement holds for the platform it was taken on:
the CPU values were measured on a 2-core CPU (XLA:CPU), the GPU values on one NVIDIA H100
(``benchmarks/fused_layouts.py``, which times every layout side by side on the platform it runs
on). On TPU nothing was measured yet, so there the fused path runs the plain layout (batch-major,
one group) until a measurement says otherwise. The platform is ``jax.default_backend()``, read when a fused layer is traced.
"""

from typing import NamedTuple

import jax


class Tuning(NamedTuple):
    """How the fused path lays out its work; a threshold of None means never."""

    scan_unroll: int  # steps run per scan iteration (unrolled)
    feature_major_from_h: int | None  # from this hidden size on, per-step arrays are [h, B], not [B, h]
    groups_from_h: int | None  # from this hidden size on (batch-major), the batch runs as two halves
    groups_min_b: int  # ... for batches of at least this many sequences


CPU = Tuning(
    # Steps per scan iteration amortise XLA:CPU's while-loop overhead. Measured on the 2-core CPU:
    # 8 was slower than 4 at B = 16, H = 128 (16.5 against 12.9 ms a training step).
    scan_unroll=4,
    # Feature-major: the recurrent matmuls put the weight on the left (``U^T h^T`` forward,
    # ``U dz^T`` backward). XLA:CPU's kernel is much faster for that operand shape when 4h is large
    # next to B: a loop of the recurrent matmuls alone measured, batch-major (the faster of its two
    # weight layouts) against feature-major, at B = 16, H = 1024 173 against 294 GFLOP/s forward and
    # 132 against 276 backward; at B = 64, H = 512 293 against 347 forward; at B = 32, H = 256 221
    # against 186 (slower); at B = 16, H = 128 171 against 159. Training steps: B = 16, H = 1024
    # 216.5 against 286.7 ms; B = 64, H = 512 within 3%. The transposes into and out of the layout
    # cost one pass over xs, ys and dxs.
    feature_major_from_h=512,
    # Two independent batch halves a scan step: XLA:CPU runs their small per-step matmuls and gate
    # kernels side by side on two cores. Training step, two groups against one, T = 64, D = 128:
    # H = 256 0.82x the time at B = 16, 0.84x at 32, 0.92x at 64, 0.95x at 128; H = 384 0.93x to
    # 1.00x; H = 128 0.95x to 1.03x (not used there). Feature-major it was slower (B = 16,
    # H = 1024: 275 against 235 ms), so groups apply batch-major only.
    groups_from_h=256,
    groups_min_b=16,
)

# Platforms not measured: batch-major throughout, one group; the scan unroll as on CPU.
PLAIN = Tuning(scan_unroll=CPU.scan_unroll, feature_major_from_h=None, groups_from_h=None, groups_min_b=CPU.groups_min_b)

# Measured on one NVIDIA H100 (jax 0.11.2, `python benchmarks/fused_layouts.py --rounds 7`, training
# step at make bench's five shapes, each layout's time over plain batch-major with unroll 4):
# feature-major 0.96 to 1.05 (no gain: not used); two batch groups 1.19 to 1.28 (slower: not used);
# scan unroll 8 0.90, 0.92, 0.94, 0.90, 1.00 (used); unroll 16 0.86 to 1.02, slower than 8 at
# 64,100,512,512; unroll 1 1.32 to 1.95. The fused step there took 0.33 to 0.43x the reference's.
GPU = PLAIN._replace(scan_unroll=8)

# jax.default_backend() -> tuning; a platform not listed (TPU: not measured) gets PLAIN.
BY_PLATFORM = {"cpu": CPU, "gpu": GPU, "tpu": PLAIN}


def for_platform(platform: str | None = None) -> Tuning:
    """The tuning of ``platform`` (``"cpu"``, ``"gpu"``, ``"tpu"``; None: ``jax.default_backend()``).

    Example:
      >>> from memcell.fused import tuning
      >>> tuning.for_platform("cpu").feature_major_from_h, tuning.for_platform("gpu").feature_major_from_h
      (512, None)
      >>> tuning.for_platform("gpu").scan_unroll, tuning.for_platform("tpu").scan_unroll
      (8, 4)
    """
    return BY_PLATFORM.get(jax.default_backend() if platform is None else platform, PLAIN)
