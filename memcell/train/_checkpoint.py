"""Orbax checkpoints of a ``TrainState`` with the JSON record of the loop, refused with a
message naming the file when they are corrupted, of another model or of another config."""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from memcell.train._state import TrainState, current_step


def _fingerprint(tree) -> list:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [[jax.tree_util.keystr(p), list(np.shape(x)), str(np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype)]
            for p, x in leaves]


def _sharding(x):
    """A leaf's sharding when it is a ``jax.Array`` laid out on a mesh, else None (orbax's default)."""
    sharding = getattr(x, "sharding", None)
    return sharding if isinstance(sharding, jax.sharding.NamedSharding) else None


def _storable(state: TrainState) -> TrainState:
    # Typed PRNG keys are stored as their raw uint32 data.
    return state._replace(key=jax.random.key_data(state.key))


def _config_diff(path, saved: dict, config: dict) -> str:
    changed = sorted(k for k in set(config) | set(saved) if config.get(k) != saved.get(k))
    return (f"checkpoint {path} was written with a different configuration: "
            + ", ".join(f"{k}: checkpoint {saved.get(k)!r}, now {config.get(k)!r}" for k in changed))


def _fingerprint_diff(path, saved: list, expected: list) -> str:
    diff = next(((a, b) for a, b in zip(saved, expected) if a != b), (f"{len(saved)} leaves", f"{len(expected)} leaves"))
    return (f"checkpoint {path} does not match this run's state: the checkpoint holds {diff[0]}, "
            f"this run expects {diff[1]} (different model, optimizer or number of seeds?)")


def _check_storage(path: pathlib.Path) -> None:
    """Reads every record of a checkpoint's OCDBT store (orbax's format) and waits for all of them,
    so damage is found with nothing left in flight. Restoring a damaged store directly fails on its
    first bad read while orbax's other reads go on after its event loop closed, and each of those
    printed a "RuntimeError: Event loop is closed" traceback under the clear error."""
    if not (path / "manifest.ocdbt").is_file():
        return  # not an OCDBT store: orbax reads it as it is
    import tensorstore as ts  # orbax's own storage layer

    try:
        store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{path}/"}).result()
        reads = [store.read(key) for key in store.list().result()]
    except Exception as e:  # tensorstore raises ValueError for damaged data, others for I/O
        raise ValueError(f"checkpoint {path.parent} is corrupted or unreadable: {type(e).__name__}: {e}") from None
    errors = []
    for r in reads:  # every read finishes before the first error is raised
        try:
            r.result()
        except Exception as e:
            errors.append(e)
    if errors:
        e = errors[0]
        raise ValueError(f"checkpoint {path.parent} is corrupted or unreadable: {type(e).__name__}: {e}") from None


class Checkpointer:
    """Orbax CheckpointManager around a TrainState plus JSON metadata (the loop's record, the config)."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        import orbax.checkpoint as ocp  # lazily: orbax is slow to import

        self.ocp = ocp
        self.dir = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True),
        )

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, meta: dict) -> None:
        step = current_step(state)
        if self.latest() == step:
            return
        tree = _storable(state)
        meta = dict(meta, fingerprint=_fingerprint(tree))
        args = self.ocp.args
        self.manager.save(step, args=args.Composite(state=args.StandardSave(tree), meta=args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def _meta(self, step: int, path) -> dict:
        args = self.ocp.args
        try:
            meta = self.manager.restore(step, args=args.Composite(meta=args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises many types; all mean "unreadable"
            raise ValueError(f"checkpoint {path} is corrupted or unreadable (its metadata): {type(e).__name__}: {e}") from e
        if not isinstance(meta, dict) or "fingerprint" not in meta:
            raise ValueError(f"checkpoint {path} is corrupted or was not written by memcell.train.fit (no fingerprint)")
        return meta

    def restore(self, template: TrainState, config: dict | None) -> tuple[TrainState, dict]:
        """The latest checkpoint's state (shaped like ``template``) and metadata."""
        step = self.latest()
        path = self.dir / str(step)
        meta = self._meta(step, path)
        if config is not None and meta.get("config") is not None and meta["config"] != config:
            raise ValueError(_config_diff(path, meta["config"], config))
        tree = _storable(template)
        expected = _fingerprint(tree)
        if meta["fingerprint"] != expected:
            raise ValueError(_fingerprint_diff(path, meta["fingerprint"], expected))
        # Restored with the template's shardings (on a mesh: every process reads its own shards).
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=_sharding(x)), tree)
        _check_storage(path / "state")
        args = self.ocp.args
        try:
            restored = self.manager.restore(step, args=args.Composite(state=args.StandardRestore(abstract)))["state"]
        except Exception as e:
            raise ValueError(f"checkpoint {path} is corrupted or unreadable: {type(e).__name__}: {e}") from e
        restored = jax.tree.map(jnp.asarray, restored)
        return restored._replace(key=jax.random.wrap_key_data(restored.key)), meta


def load_checkpoint(checkpoint_dir: str | os.PathLike, template: TrainState, *, config: dict | None = None) -> TrainState:
    """The latest checkpoint that ``fit`` wrote in ``checkpoint_dir``, read without training.

    Args:
      checkpoint_dir: the ``checkpoint_dir`` given to ``fit`` (e.g. a CLI run's ``checkpoints/``).
      template: a ``TrainState`` of the same model, optimizer and number of models (its values
        are not used), e.g. the state the run started from.
      config: if given, must equal the config the checkpoint was written with.

    Returns:
      The checkpoint's ``TrainState``.

    Raises:
      FileNotFoundError: ``checkpoint_dir`` is not a directory.
      ValueError: it holds no checkpoint; or the checkpoint is corrupted, of another model or
        of another config (the message names the file and the difference).
    """
    path = pathlib.Path(checkpoint_dir)
    if not path.is_dir():  # checked first: orbax would create the directory
        raise FileNotFoundError(f"checkpoint_dir {str(path)!r} is not a directory")
    checkpointer = Checkpointer(path)
    if checkpointer.latest() is None:
        raise ValueError(f"checkpoint_dir {str(path)!r} holds no checkpoint")
    return checkpointer.restore(template, config)[0]
