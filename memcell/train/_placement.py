"""Where a run's arrays live, as one object ``fit`` asks instead of branching on ``mesh is None``.

``SingleDevice()`` leaves every array where JAX puts it; ``OnMesh(mesh)`` lays the state and each
step's batch out over a ``jax.sharding.Mesh`` (the rules are in ``memcell.train._mesh``: the batch
over ``data``, the vmapped models over ``seeds``). ``fit`` makes one with ``placement_of(mesh)``
and runs the same code either way: check, place, compile the run and the evaluation, constrain
each batch inside the jit, and ask whether this process writes the log.

Both are frozen dataclasses, so equal placements hash alike and the loop's compilation cache
(``compiled_run``, keyed by the placement) is reused across ``fit`` calls on the same mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import jax
from jax.sharding import Mesh

from memcell.train._mesh import check_mesh, constrain_batch, is_main_process, place, sharded_eval, sharded_run


class Placement(Protocol):
    """What ``fit`` needs to know about where its arrays live (``SingleDevice`` or ``OnMesh``)."""

    def check(self, n_models: int | None, sample: Callable, state) -> None:
        """Refuses a state or sampler this placement cannot lay out, naming what does not fit."""

    def place(self, state, multi: bool):
        """``state`` laid out for the run (a restored checkpoint takes the same layout)."""

    def constrain_batch(self, batch):
        """Inside the jit: the layout of one step's batch."""

    def compile_run(self, run: Callable, multi: bool) -> Callable:
        """``run(state, n) -> (state, metrics)`` jit-compiled (vmapped over the models with ``multi``)."""

    def compile_eval(self, eval_fn: Callable, multi: bool) -> Callable:
        """``params -> metrics`` jit-compiled (vmapped over the models with ``multi``)."""

    @property
    def writes(self) -> bool:
        """Whether this process writes the metrics log and shows the progress bar."""


@dataclasses.dataclass(frozen=True)
class SingleDevice:
    """One device (JAX's default): nothing is moved or constrained; this process writes."""

    def check(self, n_models, sample, state) -> None:
        return None

    def place(self, state, multi: bool):
        return state

    def constrain_batch(self, batch):
        return batch

    def compile_run(self, run: Callable, multi: bool) -> Callable:
        return jax.jit(jax.vmap(run, in_axes=(0, None)) if multi else run, static_argnums=1)

    def compile_eval(self, eval_fn: Callable, multi: bool) -> Callable:
        return jax.jit(jax.vmap(eval_fn) if multi else eval_fn)

    @property
    def writes(self) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class OnMesh:
    """A device mesh with axes among ``("data", "seeds")`` (``make_mesh``); in a multi-host run
    every process computes its own shards and only process 0 writes."""

    mesh: Mesh

    def check(self, n_models, sample, state) -> None:
        check_mesh(self.mesh, n_models, sample, state)

    def place(self, state, multi: bool):
        return place(state, self.mesh, multi)

    def constrain_batch(self, batch):
        return constrain_batch(batch, self.mesh)

    def compile_run(self, run: Callable, multi: bool) -> Callable:
        return sharded_run(run, self.mesh, multi)

    def compile_eval(self, eval_fn: Callable, multi: bool) -> Callable:
        return sharded_eval(eval_fn, self.mesh, multi)

    @property
    def writes(self) -> bool:
        return is_main_process()


def placement_of(mesh) -> Placement:
    """The placement of ``fit``'s ``mesh`` argument: ``SingleDevice()`` for None, else ``OnMesh(mesh)``."""
    if mesh is None:
        return SingleDevice()
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (e.g. from memcell.train.make_mesh), got {type(mesh).__name__}")
    return OnMesh(mesh)
