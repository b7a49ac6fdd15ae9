"""How the Pallas kernels cut their work, per platform, and where ``backend="auto"`` may run them.

Every number here holds for the platform it was measured on; a value not measured says so.

- GPU (Triton lowering): the block sizes below are first choices, not measurements (no GPU was
  lent when the kernels were written). ``make bench-gpu`` times the kernels against the other
  paths, sweeps these sizes and prints a JSON from which this table is filled by hand.
- CPU: the kernels run in Pallas interpret mode, which exists to check them against the
  reference path (``make test``), never to be fast: the sizes only keep the interpreted
  programs small (few grid programs, a short unrolled loop body).
- TPU: the kernels are written for the Triton lowering (power-of-two blocks of any width, a
  time loop per program); Mosaic TPU's block rules differ and nothing was run there, so the
  path refuses a TPU (``memcell.pallas.path.why_not``).

``AUTO`` is what ``backend="auto"`` reads: per platform, the benchmark that measured the Pallas
path faster than the path ``auto`` runs otherwise, or None. None everywhere today: ``auto``
never picks a kernel that no benchmark measured faster on its platform.
"""

from typing import NamedTuple

import jax

__all__ = ["AUTO", "CPU", "GPU", "Tuning", "auto_runs_pallas", "for_platform"]


class Tuning(NamedTuple):
    """How a Pallas kernel cuts its work (every block size a power of two, as Triton requires)."""

    channel_block: int  # linear scan: channels (batch x hidden units) a grid program runs
    batch_block: int  # LSTM / GRU / RNN: batch rows a grid program runs (>= 16: Triton's smallest dot)
    unroll: int  # time steps a loop iteration runs: their loads are independent of the carry, so issued together
    num_warps: int  # Triton: warps a program
    resident_bytes: int  # LSTM / GRU / RNN: recurrent weights up to this size are loaded once, before the time loop
    tile: int = 128  # LSTM / GRU / RNN: above this many hidden units a step runs in tiles of this many
    num_stages: int = 1  # Triton: software-pipelining stages of a loop's loads


# First choices, unmeasured in time (no GPU was lent): 64 channels a program gives a [16, T, 128]
# problem 32 programs; 16 batch rows is Triton's smallest matmul tile; 4 steps an iteration lets
# the loads of a step run ahead of the carry; weights of up to 64 KiB (an H = 64 LSTM or an H = 128
# RNN in float32) stay in registers for the whole loop, larger ones are read a step (from L2).
# Measured in shared memory only (benchmarks/triton_compile.py, Triton 3.9 for sm_90; an H100 block
# has 227 KiB): a whole [h, h] weight operand took the LSTM 72 KiB at H = 128 and 272 KiB at
# H = 256 (float32), so tiles of 128; with these settings every kernel at make bench's shapes takes
# 72 KiB or less. One pipeline stage: two took the tiled LSTM's backward from 24 to 288 KiB.
GPU = Tuning(channel_block=64, batch_block=16, unroll=4, num_warps=4, resident_bytes=64 * 1024, tile=128, num_stages=1)

# Interpret mode (tests only): one program for small problems, one step an iteration (small
# interpreted programs; the tests that unroll more say so).
CPU = Tuning(channel_block=128, batch_block=16, unroll=1, num_warps=4, resident_bytes=64 * 1024, tile=128, num_stages=1)

BY_PLATFORM = {"gpu": GPU, "cpu": CPU}

# platform -> the measurement that showed the Pallas path faster there (what auto then runs), or
# None: auto never runs it. Unmeasured on every platform (no GPU or TPU was lent).
AUTO: dict[str, str | None] = {"cpu": None, "gpu": None, "tpu": None}


def for_platform(platform: str | None = None) -> Tuning:
    """The tuning of ``platform`` (``"gpu"``, ``"cpu"``; None: ``jax.default_backend()``).

    Example:
      >>> from memcell.pallas import tuning
      >>> tuning.for_platform("gpu").batch_block
      16
    """
    platform = jax.default_backend() if platform is None else platform
    return BY_PLATFORM.get(platform, GPU)


def auto_runs_pallas(platform: str | None = None) -> bool:
    """Whether ``backend="auto"`` may run the Pallas path on ``platform`` (a benchmark measured it faster there).

    Example:
      >>> from memcell.pallas import tuning
      >>> tuning.auto_runs_pallas("gpu"), tuning.auto_runs_pallas("cpu")
      (False, False)
    """
    platform = jax.default_backend() if platform is None else platform
    return AUTO.get(platform) is not None
