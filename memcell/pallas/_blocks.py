"""What the Pallas kernels share: padding to power-of-two blocks, the time loop, and the call.

Triton (the GPU lowering) needs every array a kernel loads or stores to have a power-of-two size,
and reads past the end of an array unmasked; so each kernel pads its channel, hidden and batch
axes to whole blocks before the call and crops after. Time is never padded: it is the loop inside
a program, which loads one step's row at a time.
"""

from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from memcell.pallas.tuning import Tuning
from memcell.types import Array


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def round_up(n: int, block: int) -> int:
    return -(-n // block) * block


def pad_to(a: Array, axis: int, size: int) -> Array:
    """``a`` zero-padded at the end of ``axis`` to ``size``."""
    extra = size - a.shape[axis]
    if extra == 0:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis % a.ndim] = (0, extra)
    return jnp.pad(a, widths)


def time_loop(T: int, unroll: int, body: Callable, carry, *, reverse: bool = False):
    """``carry = body(t, carry)`` for t = 0 .. T-1 (T-1 .. 0 with ``reverse``) inside a kernel.

    ``unroll`` steps run per loop iteration, written out: their loads do not depend on the carry,
    so the compiler can issue them ahead of the carry's arithmetic. The last ``T % unroll`` steps
    follow the loop, so T needs no padding.
    """
    n, tail = divmod(T, unroll)
    index = (lambda s: T - 1 - s) if reverse else (lambda s: s)

    def block(j, c):
        for u in range(unroll):
            c = body(index(j * unroll + u), c)
        return c

    if n:
        carry = jax.lax.fori_loop(0, n, block, carry)
    for u in range(tail):
        carry = body(index(n * unroll + u), carry)
    return carry


def call(kernel: Callable, *, name: str, grid: tuple, in_specs, out_specs, out_shape, platform: str,
         tuning: Tuning, aliases: dict | None = None):
    """``pl.pallas_call`` for ``platform``: interpreted on a CPU, lowered through Triton on a GPU."""
    interpret = platform == "cpu"
    params = None if interpret else pltriton.CompilerParams(num_warps=tuning.num_warps, num_stages=tuning.num_stages)
    return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          input_output_aliases=aliases or {}, interpret=interpret, compiler_params=params,
                          name=name)


def where(flag, new, old):
    """``new`` where the step's flag (0/1, broadcastable) is set, else ``old``; tuples elementwise."""
    return tuple(jnp.where(flag > 0, n, o) for n, o in zip(new, old))
