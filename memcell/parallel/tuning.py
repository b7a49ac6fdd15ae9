"""How the parallel path cuts time into chunks, per platform, with the measurement behind each choice.

The chunked scan (``memcell.parallel.linear``) trades a sequential loop of ``T`` steps for two
loops of about ``sqrt(T)`` steps over ``sqrt(T)`` times more data a step, plus extra passes over
memory (the chunk layout, the correction by each chunk's incoming state). It pays where a loop
step has a fixed cost far above its work (GPU kernel launches, TPU), and costs where the work is
bound by memory bandwidth, as on a CPU:

- CPU (2-core AMD EPYC, B=16, H=128, T=4096, gradient of the recurrence alone, float32): chunks
  of 64 steps 194 ms (custom_vjp) to 319 ms (custom_jvp, the one kept: it gives every order of
  derivative); the plain sequential ``lax.scan`` over the same precomputed coefficients 120 ms.
  So on CPU the parallel path is one chunk: every coefficient of every step (the input
  projections, the gates, which is where the work is) is computed at once, outside the loop,
  and only the elementwise recurrence runs step by step.
- GPU and TPU: chunks of ``round(sqrt(T))`` steps. Not measured yet (no accelerator was lent
  when this was written): the choice follows the launch-cost argument above.

What ``backend="auto"`` runs, per platform and kind of cell (``AUTO``):

- CPU, the diagonal ``LinearSpec`` cells (minGRU, minLSTM, LRU, RG-LRU): the reference. Measured
  (same machine, B=16, D=64, H=128, T=4096, training step, interleaved rounds, load ~5): minGRU
  reference 416 ms, parallel 668 ms; blocks of 32 or 128 steps (coefficients of a block at once,
  then its steps) 448 and 560 ms. The reference's step (one small matmul, the gates and the
  update, fused by XLA, all in cache) beats computing the coefficients of every step at once,
  which is bound by memory bandwidth on this CPU. See docs/benchmarks.md for every cell.
- CPU, the mLSTM: the chunkwise form (``memcell.parallel.mlstm``): 1.9x the reference's speed at
  T=256 and 2.3x at T=1024 (gradient; its matrix memory makes the recurrent step costly).
- GPU and TPU: the parallel path for every cell that has one (unmeasured, as above).
"""

import jax

from memcell.parallel.linear import chunk_size_for

__all__ = ["AUTO", "auto_runs_parallel", "chunk_size"]

# platform -> True where the measured best is one chunk (the sequential scan over the coefficients).
ONE_CHUNK = {"cpu": True}


def chunk_size(T: int, platform: str | None = None) -> int:
    """The chunk length the parallel path uses for ``T`` steps on ``platform`` (default: JAX's backend)."""
    platform = jax.default_backend() if platform is None else platform
    return max(T, 1) if ONE_CHUNK.get(platform, False) else chunk_size_for(T)


# platform -> the spec kinds (class names) that backend="auto" runs on the parallel path there;
# a platform not listed runs every spec kind that has a parallel path.
AUTO = {"cpu": frozenset({"MLSTMSpec"})}


def auto_runs_parallel(spec, platform: str | None = None) -> bool:
    """Whether ``backend="auto"`` runs the parallel path for a cell with this spec on ``platform``."""
    platform = jax.default_backend() if platform is None else platform
    kinds = AUTO.get(platform)
    return kinds is None or type(spec).__name__ in kinds
