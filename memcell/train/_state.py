"""``TrainState``: everything a run needs to continue, for one model or ``n`` stacked for
``jax.vmap``, and the keys of each step (a function of the run's key and the step only)."""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from memcell._checks import as_array
from memcell.train._args import check_callable, check_transformation
from memcell.train._optimizer import set_learning_rate
from memcell.types import Array, Key, PyTree


class TrainState(NamedTuple):
    """What a training run needs to continue: a pytree, so it jits, vmaps and checkpoints.

    With N models trained together every leaf has a leading axis of size N.
    """

    params: PyTree
    opt_state: PyTree
    step: Array  # int32 [] (or [n] for n vmapped models): number of updates attempted
    key: Key  # the run's key; the key of step t is derived from (key, t), never advanced
    stream: PyTree = None  # truncated BPTT: a StreamState (cursor, carry) carried from window to window


def as_key(name: str, key) -> Key:
    """A typed PRNG key from a key, raw ``uint32[..., 2]`` key data or an int seed."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if not hasattr(key, "dtype"):
        raise TypeError(f"{name} must be a jax.random.key or an int seed, got {type(key).__name__}")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype == jnp.uint32 and key.shape[-1:] == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"{name} must be a jax.random.key or an int seed, got dtype {key.dtype} shape {key.shape}")


def init_state(key, init_params: Callable[[Key], PyTree], tx: optax.GradientTransformation) -> TrainState:
    """A fresh ``TrainState``: params from ``init_params(key)``, step 0.

    Args:
      key: a ``jax.random.key`` or an int seed; split into a params key and the run's key.
      init_params: ``key -> params``.
      tx: the optax optimizer.

    Returns:
      ``TrainState(params, tx.init(params), step=0, key)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from memcell import train
      >>> state = train.init_state(0, lambda k: jnp.zeros(2), train.optimizer(1e-3))
      >>> state.params.shape, int(state.step)
      ((2,), 0)
    """
    key = as_key("key", key)
    if key.shape != ():
        raise ValueError(f"key must be a single key (shape ()), got shape {key.shape}; use init_states for several")
    check_callable("init_params", init_params, "key -> params")
    check_transformation("tx", tx)
    k_params, k_run = jax.random.split(key)
    params = init_params(k_params)
    return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), k_run)


def _stacked_keys(keys) -> Key:
    if isinstance(keys, (list, tuple)):
        if not keys:
            raise ValueError("keys must hold at least one key or int seed, got an empty sequence")
        keys = jnp.stack([as_key(f"keys[{i}]", k) for i, k in enumerate(keys)])
    else:
        keys = as_key("keys", keys)
    if keys.ndim != 1 or keys.shape[0] < 1:
        raise ValueError(f"keys must be a 1-d array of at least one key, got shape {keys.shape}")
    return keys


def _learning_rates(learning_rates, n: int) -> np.ndarray:
    if isinstance(learning_rates, (str, bytes)) or not isinstance(learning_rates, Iterable):
        raise TypeError(f"learning_rates must be a sequence of {n} numbers (or None), got {type(learning_rates).__name__}")
    values = list(learning_rates)
    try:
        lrs = np.asarray(values, np.float32)
    except (TypeError, ValueError):
        raise TypeError(f"learning_rates must be numbers, got {values!r}") from None
    if lrs.shape != (n,):
        raise ValueError(f"learning_rates must hold one value a model ({n}), got shape {lrs.shape}")
    if not (np.all(lrs > 0) and np.all(np.isfinite(lrs))):
        raise ValueError(f"learning_rates must be positive and finite, got {lrs.tolist()}")
    return lrs


def init_states(
    keys,
    init_params: Callable[[Key], PyTree],
    tx: optax.GradientTransformation,
    learning_rates: Iterable[float] | None = None,
) -> TrainState:
    """``n`` independent ``TrainState``s stacked on a leading axis, ready for ``jax.vmap``.

    Model ``i`` is exactly ``init_state(keys[i], ...)`` (same params, same data stream).

    Args:
      keys: ``[n]`` keys, or a sequence of int seeds.
      init_params, tx: as for ``init_state``.
      learning_rates: optional ``n`` peak learning rates, one a model (``tx`` must come from
        ``memcell.train.optimizer``, which keeps the rate in its state).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from memcell import train
      >>> tx = train.optimizer(1e-2)
      >>> states = train.init_states([0, 1, 2], lambda k: jax.random.normal(k, (3,)), tx,
      ...                            learning_rates=[1e-3, 1e-2, 1e-1])
      >>> states.params.shape, train.learning_rate(states.opt_state).shape
      ((3, 3), (3,))
    """
    keys = _stacked_keys(keys)
    check_callable("init_params", init_params, "key -> params")
    check_transformation("tx", tx)
    lrs = None if learning_rates is None else _learning_rates(learning_rates, keys.shape[0])
    # Not jit-compiled: jax.jit(jax.vmap(init)) of an LSTM model (orthogonal init, so QR via
    # LAPACK) hung XLA:CPU within 50 calls here (jax 0.10.2); the eager vmap did not in 300.
    states = jax.vmap(lambda k: init_state(k, init_params, tx))(keys)
    if lrs is not None:
        states = states._replace(opt_state=set_learning_rate(states.opt_state, jnp.asarray(lrs)))
    return states


def step_keys(state: TrainState) -> tuple[Key, Key]:
    """The (data, loss) keys of the current step: a function of (run key, step) only."""
    data_key, loss_key = jax.random.split(jax.random.fold_in(state.key, state.step))
    return data_key, loss_key


def current_step(state: TrainState) -> int:
    """The step a (possibly vmapped) state has reached, on the host."""
    step = state.step
    if isinstance(step, jax.Array) and not step.is_fully_addressable:
        # Models sharded over several hosts: they step together, so this process's shards suffice.
        return int(max(np.max(np.asarray(s.data)) for s in step.addressable_shards))
    return int(np.max(jax.device_get(step)))


def check_state(state) -> int | None:
    """Refuses anything but a ``TrainState`` of one model or of ``n`` stacked ones.

    Returns:
      None for one model, ``n`` for ``n`` vmapped models.
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a memcell.train.TrainState, got {type(state).__name__}")
    step_shape = np.shape(state.step)
    if len(step_shape) not in (0, 1):
        raise ValueError(f"state.step must be a scalar (one model) or [n] (vmapped models), got shape {step_shape}")
    dtype = as_array(state.step).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"state.step must be an integer array, got dtype {dtype}")
    key_dtype = getattr(state.key, "dtype", None)
    if key_dtype is None or not jax.dtypes.issubdtype(key_dtype, jax.dtypes.prng_key):
        raise TypeError(f"state.key must be a typed jax.random.key array, got {type(state.key).__name__} of dtype {key_dtype}")
    if tuple(state.key.shape) != step_shape:
        raise ValueError(f"state.key must have the shape of state.step {step_shape}, got shape {tuple(state.key.shape)}")
    if not step_shape:
        return None
    n = step_shape[0]
    for part in ("params", "opt_state", "stream"):
        for path, leaf in jax.tree_util.tree_leaves_with_path(getattr(state, part)):
            if np.shape(leaf)[:1] != (n,):
                raise ValueError(
                    f"state leaves must have a leading axis of n={n} models (state.step has shape {step_shape}), "
                    f"got shape {np.shape(leaf)} at state.{part}{jax.tree_util.keystr(path)}"
                )
    return n
