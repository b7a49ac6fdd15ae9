"""Device meshes for ``fit``: the batch over a ``data`` axis, the vmapped models over a ``seeds``
axis, and the set-up of a multi-host run. JAX's own sharding does the work (``Mesh``,
``NamedSharding``, ``with_sharding_constraint``, ``jax.distributed``); nothing here moves data
by hand.

What lives where on a mesh (``fit(..., mesh=...)``):

- every ``TrainState`` leaf of ``n`` vmapped models (``init_states``): its leading axis over
  ``seeds``, the rest replicated; a single model (``init_state``) is replicated everywhere;
- the batch of every step, drawn inside the jit by ``sample(key)``: its leading (batch) axis
  over ``data``; the compiler partitions the sampler (jax's threefry is partitionable), so each
  device, and so each process, computes only its own shard, with the same values as one device;
- gradients: the loss is a mean over the sharded batch, so the compiler reduces it (and its
  gradient) across ``data``; params and optimizer state stay replicated over ``data``;
- metrics: replicated, so every process reads them (and only process 0 writes them).
"""

from __future__ import annotations

import os
import re
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from memcell.train._stream import sampled_batch

AXES = ("data", "seeds")  # the axis names fit understands


def _check_size(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def make_mesh(data: int = 1, seeds: int = 1, *, devices: Sequence | None = None) -> Mesh:
    """A 2-D device mesh with axes ``("data", "seeds")`` for ``fit(..., mesh=...)``.

    Args:
      data: devices the batch of every step is split over (data parallelism).
      seeds: devices the vmapped models of ``init_states`` are split over.
      devices: the devices to use, exactly ``data * seeds`` of them; default the first
        ``data * seeds`` of ``jax.devices()`` (all processes' devices in a multi-host run, where
        the mesh must use every device).

    Returns:
      A ``jax.sharding.Mesh`` of shape ``(data, seeds)``.

    Example:
      >>> from memcell import train
      >>> mesh = train.make_mesh(data=1)
      >>> dict(mesh.shape)
      {'data': 1, 'seeds': 1}
    """
    data, seeds = _check_size("data", data), _check_size("seeds", seeds)
    size = data * seeds
    if devices is None:
        available = jax.devices()
        if size > len(available):
            raise ValueError(
                f"the mesh data={data}, seeds={seeds} needs {size} devices, but only {len(available)} exist "
                f"({available[0].platform}); on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count={size} "
                "before jax starts")
        if jax.process_count() > 1 and size != len(available):
            raise ValueError(
                f"a multi-host mesh must use every device: data * seeds must be {len(available)} "
                f"({jax.process_count()} processes), got data={data}, seeds={seeds} ({size} devices)")
        devices = available[:size]
    else:
        devices = list(devices)
        if len(devices) != size:
            raise ValueError(f"devices must hold data * seeds = {size} devices for the mesh data={data}, "
                             f"seeds={seeds}, got {len(devices)}")
    return Mesh(np.asarray(devices, dtype=object).reshape(data, seeds), AXES)


def mesh_from_spec(spec: str, *, devices: Sequence | None = None) -> Mesh:
    """The mesh of a spec such as ``"data=4,seeds=2"`` (the CLI's ``--mesh``); a missing axis has size 1.

    Args:
      spec: comma-separated ``axis=size`` pairs, with axes ``data`` and ``seeds``.
      devices: as for ``make_mesh``.

    Returns:
      ``make_mesh(**sizes, devices=devices)``.

    Example:
      >>> from memcell import train
      >>> dict(train.mesh_from_spec("data=1").shape)
      {'data': 1, 'seeds': 1}
    """
    if not isinstance(spec, str):
        raise TypeError(f"mesh spec must be a string such as 'data=4,seeds=2', got {type(spec).__name__}")
    sizes: dict = {}
    for part in spec.split(","):
        m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*=\s*(\d+)\s*", part)
        if m is None:
            raise ValueError(f"mesh spec must be comma-separated axis=size pairs such as 'data=4,seeds=2', "
                             f"got {spec!r}")
        name, size = m.group(1), int(m.group(2))
        if name not in AXES:
            raise ValueError(f"mesh axis names must be among {list(AXES)}, got {name!r} in {spec!r}")
        if name in sizes:
            raise ValueError(f"mesh axis {name!r} is given twice in {spec!r}")
        if size < 1:
            raise ValueError(f"mesh axis {name!r} must have a positive size, got {size} in {spec!r}")
        sizes[name] = size
    return make_mesh(**sizes, devices=devices)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, timeout: int = 300) -> None:
    """Joins a multi-host run with ``jax.distributed.initialize``; call it before anything else touches jax.

    With no argument, JAX detects the cluster itself (SLURM, Open MPI, Kubernetes, or the
    ``JAX_COORDINATOR_ADDRESS`` environment variable with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``). On CPU the processes reduce through gloo. A process that has joined
    already stays in its run (so ``fit`` may be called again, e.g. to resume).

    Args:
      coordinator: ``host:port`` of process 0's coordinator.
      num_processes: how many processes take part.
      process_id: this process's index, ``0 <= process_id < num_processes``.
      timeout: seconds to wait for every process to connect (``jax.distributed.initialize``'s
        ``initialization_timeout``). When it passes, JAX's coordination service ends the process
        itself (abort, not an exception); ``memcell train`` exits 2 with a message before that.
    """
    if jax.distributed.is_initialized():  # a second run in the same processes (e.g. a resume) joins the same run
        if num_processes is not None and num_processes != jax.process_count():
            raise ValueError(f"num_processes must match the run this process already joined "
                             f"({jax.process_count()} processes), got {num_processes}")
        return
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("coordinator, num_processes and process_id go together: give all three or none, got "
                         f"coordinator={coordinator!r}, num_processes={num_processes!r}, process_id={process_id!r}")
    if coordinator is not None:
        if not re.fullmatch(r"[^\s:]+:\d+|\[[0-9a-fA-F:]+\]:\d+", coordinator):
            raise ValueError(f"coordinator must be host:port, got {coordinator!r}")
        num_processes = _check_size("num_processes", num_processes)
        if isinstance(process_id, bool) or not isinstance(process_id, (int, np.integer)) or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be an int in [0, {num_processes}), got {process_id!r}")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):  # beside jax's own JAX_COORDINATOR_ADDRESS
        try:
            num_processes, process_id = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
        except (KeyError, ValueError):
            raise ValueError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must both be ints, got "
                             f"{os.environ.get('JAX_NUM_PROCESSES')!r} and {os.environ.get('JAX_PROCESS_ID')!r}") from None
    # CPU devices of several processes need a cross-process collective implementation; it only
    # applies to the CPU client, so it is harmless on accelerators.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=_check_size("timeout", timeout))


def is_main_process() -> bool:
    """Whether this is process 0, the one that writes logs, reports and progress."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------- what fit uses


def axis_size(mesh: Mesh, name: str) -> int:
    return int(dict(mesh.shape).get(name, 1))


def check_mesh(mesh, n_models: int | None, sample: Callable, state) -> None:
    """Refuses a mesh ``fit`` cannot use with this state and sampler, naming what does not fit."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (e.g. from memcell.train.make_mesh), got {type(mesh).__name__}")
    unknown = [a for a in mesh.axis_names if a not in AXES]
    if unknown:
        raise ValueError(f"mesh axis names must be among {list(AXES)}, got {list(mesh.axis_names)}")
    if jax.process_count() > 1 and mesh.devices.size != jax.device_count():
        raise ValueError(f"a multi-host mesh must use every device ({jax.device_count()} over "
                         f"{jax.process_count()} processes), got a mesh of {mesh.devices.size}")
    seeds = axis_size(mesh, "seeds")
    if seeds > 1 and n_models is None:
        raise ValueError(f"a mesh with seeds={seeds} splits vmapped models; state must come from init_states, "
                         "got a single model's state (from init_state)")
    if n_models is not None and n_models % seeds:
        raise ValueError(f"the mesh's seeds axis ({seeds}) must divide the number of models, got {n_models} models")
    data = axis_size(mesh, "data")
    if data == 1:
        return
    batch = sampled_batch(sample, state, n_models)  # a truncated-BPTT sampler takes the cursor too
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
        shape = tuple(leaf.shape)
        if not shape or shape[0] % data:
            got = f"batch size {shape[0]}" if shape else "a scalar"
            raise ValueError(
                f"the mesh's data axis ({data}) must divide the batch size (the leading axis of every batch "
                f"leaf), got {got} (shape {shape} at batch{jax.tree_util.keystr(path)})")


def _state_spec(leaf, multi: bool, mesh: Mesh) -> P:
    if multi and np.ndim(leaf) >= 1 and axis_size(mesh, "seeds") > 1:
        return P("seeds")
    return P()


def state_shardings(state, mesh: Mesh, multi: bool):
    """One ``NamedSharding`` a leaf: the models' leading axis over ``seeds``, everything else replicated.
    Generic over the state's fields: any pytree of arrays is sharded by the same rule."""
    return jax.tree.map(lambda x: NamedSharding(mesh, _state_spec(x, multi, mesh)), state)


def _place_leaf(x, sharding: NamedSharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        # Already global (a state a sharded fit returned): JAX reshards it where it lies.
        return x if x.sharding == sharding else jax.device_put(x, sharding)
    is_key = jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    impl = jax.random.key_impl(x) if is_key else None
    host = np.asarray(jax.device_get(jax.random.key_data(x) if is_key else x))
    # From the host value every process holds (the same on each: init is seeded), each process
    # builds its own devices' shards; no collective, no assumption of a single controller.
    y = jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
    return jax.random.wrap_key_data(y, impl=impl) if is_key else y


def place(state, mesh: Mesh, multi: bool):
    """``state`` laid out on ``mesh`` by ``state_shardings``."""
    return jax.tree.map(_place_leaf, state, state_shardings(state, mesh, multi))


def _constrain(tree, specs_of: Callable, mesh: Mesh):
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, specs_of(x))), tree)


def constrain_batch(batch, mesh: Mesh):
    """Inside the jit: the batch's leading axis over ``data`` (under ``jax.vmap`` with
    ``spmd_axis_name="seeds"`` the models' axis goes over ``seeds`` too)."""
    if axis_size(mesh, "data") == 1:
        return batch
    return _constrain(batch, lambda x: P("data"), mesh)


def _vmapped(fn: Callable, mesh: Mesh, **kw) -> Callable:
    spmd = "seeds" if axis_size(mesh, "seeds") > 1 else None
    return jax.vmap(fn, spmd_axis_name=spmd, **kw)


def sharded_run(run: Callable, mesh: Mesh, multi: bool) -> Callable:
    """``run(state, n) -> (state, metrics)`` jit-compiled for ``mesh``: the state keeps its
    layout, the metrics come back replicated (readable by every process)."""
    body = _vmapped(run, mesh, in_axes=(0, None)) if multi else run

    def wrapped(state, n):
        spec = lambda x: _state_spec(x, multi, mesh)
        state, metrics = body(_constrain(state, spec, mesh), n)
        return _constrain(state, spec, mesh), _constrain(metrics, lambda x: P(), mesh)

    return jax.jit(wrapped, static_argnums=1)


def sharded_eval(eval_fn: Callable, mesh: Mesh, multi: bool) -> Callable:
    """``params -> metrics`` jit-compiled for ``mesh``, with the metrics replicated."""
    body = _vmapped(eval_fn, mesh) if multi else eval_fn
    return jax.jit(lambda params: _constrain(body(params), lambda x: P(), mesh))
