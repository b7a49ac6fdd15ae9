"""The paths an unroll can take, the one rule that picks one, and the unroll itself on the one frame.

A path (``memcell.types.Path``) is a small value: ``why_not(cell, params, frame)`` says in a sentence
why it cannot run a cell, ``run(cell, params, frame)`` runs it on a framed sequence. ``run`` below
checks the arguments once, frames the sequence once (``memcell._frame``) and resolves the backend
once into a path:

- a named backend runs its path, or raises a ``ValueError`` with the path's reason;
- ``"auto"`` runs the first path of the platform's ``ORDER`` whose ``why_not`` is None and whose
  ``auto_why_not`` (each path's measured tuning table for that platform) is None too.

No path sees the word ``"auto"``. A new path is one module exposing a ``Path`` and one entry in
``PATHS`` and ``ORDER``.
"""

from types import MappingProxyType
from typing import Mapping

import jax

from memcell import _checks, _frame, _reference, cudnn
from memcell.fused import path as fused_path
from memcell.pallas import path as pallas_path
from memcell.parallel import path as parallel_path
from memcell.types import BACKENDS, Cell, Frame, Path, PyTree

__all__ = ["ORDER", "PATHS", "choose", "order", "resolve", "run", "which", "why_not"]

PATHS: Mapping[str, Path] = MappingProxyType({
    p.name: p for p in (_reference.PATH, parallel_path.PATH, cudnn.PATH, fused_path.PATH, pallas_path.PATH)
})

# What "auto" tries, per platform, first to last. The reference runs every cell, so it ends each
# list. Whether a path that could run is taken is its own measured table's call (``auto_why_not``):
# memcell.parallel.tuning (the parallel path: measured slower than the reference on CPU except for
# the mLSTM), memcell.fused.tuning (measured faster on CPU and one H100). cuDNN has not been measured
# (no GPU was lent since it was written); it is tried first on a GPU, as it always was. The Pallas
# kernels head the GPU's list, but memcell.pallas.tuning.AUTO skips them everywhere until make
# bench-gpu measures them faster (no GPU has been lent since they were written: unmeasured).
_DEFAULT_ORDER = ("parallel", "cudnn", "fused", "reference")
ORDER: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "cpu": _DEFAULT_ORDER, "gpu": ("pallas", *_DEFAULT_ORDER), "tpu": _DEFAULT_ORDER,
})


def order(platform: str | None = None) -> tuple[str, ...]:
    """The paths ``backend="auto"`` tries on ``platform`` (default: ``jax.default_backend()``), in order."""
    return ORDER.get(jax.default_backend() if platform is None else platform, _DEFAULT_ORDER)


def _options_frame(xs=None, *, resets=None, remat=False) -> Frame:
    """A frame that holds only what ``why_not`` reads, for a question asked before any array is framed."""
    return Frame(xs=xs, carry0=None, valid=None, resets=resets, lengths=None, remat=_checks.check_remat(remat),
                 unroll=1, reverse=False)


def why_not(backend: str, cell: Cell, params: PyTree = None, xs=None, *, resets=None,
            remat: bool | str | int = False) -> str | None:
    """Why ``memcell.unroll(cell, params, xs, resets=resets, remat=remat, backend=backend)`` would refuse,
    or None if it runs. ``params`` and ``xs`` are optional: without them only the cell and the options
    are judged. For ``"auto"``, always None (the reference runs what nothing else does).

    Example:
      >>> import memcell
      >>> memcell.paths.why_not("fused", memcell.gru(4, reset_after=False))
      'the fused GRU implements reset_after=True only'
      >>> memcell.paths.why_not("parallel", memcell.mingru(4), remat="sqrt")[:45]
      "remat='sqrt' is not implemented by the parall"
    """
    _checks.check_backend(backend)
    if backend == "auto":
        return None
    return PATHS[backend].why_not(cell, params, _options_frame(xs, resets=resets, remat=remat))


def choose(cell: Cell, params: PyTree, fr: Frame, platform: str | None = None) -> Path:
    """The path ``backend="auto"`` runs for this cell and frame on ``platform``."""
    platform = jax.default_backend() if platform is None else platform
    for name in order(platform):
        path = PATHS[name]
        if path.why_not(cell, params, fr) is None and path.auto_why_not(cell, platform) is None:
            return path
    return PATHS["reference"]


def resolve(backend: str, cell: Cell, params: PyTree, fr: Frame) -> Path:
    """The path that runs ``backend`` for this cell and frame; a ``ValueError`` with the reason where
    the named path cannot."""
    if backend == "auto":
        return choose(cell, params, fr)
    path = PATHS[backend]
    reason = path.why_not(cell, params, fr)
    if reason is not None:
        raise ValueError(f"backend={backend!r} cannot run this unroll: {reason}; use backend='auto' or 'reference'")
    return path


def which(cell: Cell, params: PyTree, xs, carry: PyTree | None = None, *, lengths=None, resets=None,
          reverse: bool = False, remat: bool | str | int = False, backend: str = "auto") -> str:
    """The name of the path ``memcell.unroll`` would run with these arguments (nothing is run).

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> cell = memcell.lstm(4)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> memcell.paths.which(cell, params, jnp.ones((3, 5, 2)))  # on CPU: the fused path
      'fused'
      >>> peephole = memcell.lstm(4, peephole=True)
      >>> memcell.paths.which(peephole, peephole.init(jax.random.key(0), 2), jnp.ones((3, 5, 2)))
      'reference'
    """
    _checks.check_backend(backend)
    fr = _frame.frame(cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse, remat=remat)
    return resolve(backend, cell, params, fr).name


def run(cell: Cell, params: PyTree, xs, carry: PyTree | None = None, *, lengths=None, resets=None,
        reverse: bool = False, unroll: int | bool = 1, remat: bool | str | int = False, backend: str = "reference",
        **path_options):
    """``memcell.unroll``: check once, frame once, resolve the path once, run it, unframe.

    ``path_options`` go to the path's ``run`` (the parallel path's ``chunk_size``).
    """
    _checks.check_backend(backend)
    fr = _frame.frame(cell, params, xs, carry, lengths=lengths, resets=resets, reverse=reverse, remat=remat,
                      unroll=unroll)
    path = resolve(backend, cell, params, fr)
    if fr.xs.shape[-2] == 0:  # no step: the initial carry, and no outputs, on every path
        return fr.carry0, _frame.empty_outputs(cell, params, fr)
    carry, ys = path.run(cell, params, fr, **path_options)
    return _frame.unframe(fr, carry, ys)


assert set(PATHS) | {"auto"} == set(BACKENDS), "every backend name has its path"
