"""The pure steps: ``make_train_step`` (one optimizer update) and ``make_eval_step``."""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from memcell._checks import as_array
from memcell.train._args import check_callable, check_transformation
from memcell.train._state import TrainState, step_keys
from memcell.types import Array

LossFn = Callable[..., tuple[Array, dict]]  # loss_fn(params, batch, key) -> (loss, metrics)


def _tree_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _describe(out) -> str:
    if isinstance(out, tuple):
        return f"a tuple of {len(out)}" if len(out) != 2 else f"metrics of type {type(out[1]).__name__}"
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return f"one array of shape {tuple(out.shape)}"
    return type(out).__name__


def _checked(loss_fn: LossFn) -> LossFn:
    """``loss_fn`` with its output checked while it is traced (shapes and dtypes are static,
    so the check costs nothing at run time): a message naming ``loss_fn`` instead of one from
    inside ``jax.grad``."""

    def f(params, batch, key):
        out = loss_fn(params, batch, key)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)):
            raise TypeError(f"loss_fn must return (loss, metrics) with metrics a dict, got {_describe(out)}")
        loss = as_array(out[0])
        shape, dtype = tuple(loss.shape), loss.dtype
        if shape != ():
            raise ValueError(f"loss_fn must return a scalar loss, got shape {shape}")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"loss_fn must return a floating-point loss, got dtype {dtype}")
        return out

    return f


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation) -> Callable:
    """A pure, jit-able train step ``(state, batch) -> (state, metrics)``.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)``, with ``loss`` a floating
        scalar and ``metrics`` a dict of scalars; ``key`` is fresh each step (for dropout) and
        None at evaluation.
      tx: the optax optimizer; use ``memcell.train.optimizer`` (or wrap yours in
        ``optax.apply_if_finite``) so a non-finite gradient skips the update.

    Returns:
      ``train_step(state, batch) -> (state, metrics)``; ``metrics`` holds ``loss``,
      ``grad_norm`` (global norm before clipping), ``skipped`` (1.0 when the gradient was not
      finite) and the loss function's own metrics.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from memcell import train
      >>> loss_fn = lambda p, batch, key: (jnp.sum((p - batch) ** 2), {})
      >>> tx = train.optimizer(0.1)
      >>> state = train.init_state(0, lambda k: jnp.zeros(2), tx)
      >>> step = jax.jit(train.make_train_step(loss_fn, tx))
      >>> for _ in range(200):
      ...     state, metrics = step(state, jnp.array([1.0, -1.0]))
      >>> bool(metrics["loss"] < 1e-3), int(state.step)
      (True, 200)
    """
    check_callable("loss_fn", loss_fn, "(params, batch, key) -> (loss, metrics)")
    check_transformation("tx", tx)
    checked_loss = _checked(loss_fn)

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        _, loss_key = step_keys(state)
        (loss, aux), grads = jax.value_and_grad(checked_loss, has_aux=True)(state.params, batch, loss_key)
        return apply_gradients(tx, state, loss, aux, grads)

    return train_step


def apply_gradients(tx: optax.GradientTransformation, state: TrainState, loss, aux: dict, grads):
    """One optimizer update of ``state`` from ``grads``: the new state (``stream`` kept as it
    is) and the step's metrics (``loss``, ``grad_norm``, ``skipped`` and ``aux``)."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = _tree_finite(grads)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "skipped": 1.0 - finite.astype(jnp.float32)}
    metrics.update(aux)
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1), metrics


def make_eval_step(loss_fn: LossFn) -> Callable:
    """A pure, jit-able evaluation step ``(params, batch) -> metrics``: ``loss`` and the loss
    function's own metrics, computed with ``key=None`` (deterministic: no dropout).

    Example:
      >>> import jax.numpy as jnp
      >>> from memcell import train
      >>> ev = train.make_eval_step(lambda p, batch, key: (jnp.mean((p - batch) ** 2), {}))
      >>> float(ev(jnp.zeros(2), jnp.array([1.0, 3.0]))["loss"])
      5.0
    """
    check_callable("loss_fn", loss_fn, "(params, batch, key) -> (loss, metrics)")
    checked_loss = _checked(loss_fn)

    def eval_step(params, batch) -> dict:
        loss, aux = checked_loss(params, batch, None)
        return {"loss": loss, **aux}

    return eval_step
