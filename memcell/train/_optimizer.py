"""The default optimizer: an optax chain that skips non-finite updates and keeps its learning
rate in its state, so that models vmapped together can each have their own."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from memcell._checks import check_choice, check_in
from memcell.train._args import check_count, check_positive_number
from memcell.types import Array

OPTIMIZERS = {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd, "rmsprop": optax.rmsprop}


def _check_options(name, learning_rate, clip_norm, warmup_steps, decay_steps, momentum, weight_decay) -> None:
    check_choice("name", name, OPTIMIZERS)
    check_positive_number("learning_rate", learning_rate)
    if clip_norm is not None:
        check_positive_number("clip_norm", clip_norm, "a positive finite number or None")
    check_count("warmup_steps", warmup_steps)
    if decay_steps is not None:
        check_count("decay_steps", decay_steps)
        if decay_steps <= warmup_steps:
            raise ValueError(f"decay_steps must exceed warmup_steps={warmup_steps}, got {decay_steps!r}")
    if momentum is not None:
        if name not in ("sgd", "rmsprop"):
            raise ValueError(f"momentum applies to name='sgd' or 'rmsprop' only, got momentum={momentum!r} with name={name!r}")
        check_in("momentum", momentum, 0.0, 1.0, hi_open=True)
    check_in("weight_decay", weight_decay, 0.0, float("inf"), hi_open=True)
    if weight_decay and name != "adamw":
        raise ValueError(f"weight_decay applies to name='adamw' only, got weight_decay={weight_decay!r} with name={name!r}")


def optimizer(
    learning_rate: float = 1e-3,
    *,
    name: str = "adam",
    clip_norm: float | None = 1.0,
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    momentum: float | None = None,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """The default optimizer: ``apply_if_finite(clip_by_global_norm -> name)`` with an injected learning rate.

    Args:
      learning_rate: the (peak) learning rate, > 0.
      name: ``"adam"``, ``"adamw"``, ``"sgd"`` or ``"rmsprop"``.
      clip_norm: clip gradients to this global norm (None: no clipping). RNNs need it:
        exploding gradients come in rare, huge spikes.
      warmup_steps: linear warmup from 0 over this many steps.
      decay_steps: if set, cosine decay to 0 at this step (counted from the start, warmup included).
      momentum: in [0, 1), for ``"sgd"`` (Nesterov off) and ``"rmsprop"`` only.
      weight_decay: >= 0, for ``"adamw"`` only.

    Returns:
      An ``optax.GradientTransformation``. Its state holds the current learning rate
      (``memcell.train.learning_rate(opt_state)``); an update whose gradient holds a NaN or
      an inf leaves params and moments unchanged (``optax.apply_if_finite``), and the train
      step reports it as ``metrics["skipped"]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from memcell import train
      >>> tx = train.optimizer(1e-2, warmup_steps=10, decay_steps=100)
      >>> round(float(train.learning_rate(tx.init(jnp.zeros(3)))), 6)
      0.01
    """
    _check_options(name, learning_rate, clip_norm, warmup_steps, decay_steps, momentum, weight_decay)

    def shape(count, peak):
        scale = jnp.ones((), jnp.float32)
        if warmup_steps:
            scale = jnp.minimum(1.0, (count + 1) / warmup_steps)
        if decay_steps is not None:
            frac = jnp.clip((count - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
            scale = scale * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        return peak * scale

    def factory(learning_rate):
        kw = {}
        if momentum is not None and name in ("sgd", "rmsprop"):
            kw["momentum"] = momentum
        if name == "adamw":
            kw["weight_decay"] = weight_decay
        # The schedule multiplies the injected peak rate, so a vmapped peak rate keeps its schedule.
        base = OPTIMIZERS[name](lambda count: shape(count, learning_rate), **kw)
        parts = ([optax.clip_by_global_norm(clip_norm)] if clip_norm is not None else []) + [base]
        # A huge error budget: apply_if_finite applies the NaN update once the budget is spent,
        # and ``fit`` stops a diverged run itself, so the budget must never run out.
        return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=2**30)

    return optax.inject_hyperparams(factory)(learning_rate=float(learning_rate))


def learning_rate(opt_state) -> Array:
    """The peak learning rate held in the state of an ``optimizer(...)``.

    Raises:
      TypeError: when ``opt_state`` does not come from ``memcell.train.optimizer``.
    """
    hyper = getattr(opt_state, "hyperparams", None)
    if not isinstance(hyper, dict) or "learning_rate" not in hyper:
        raise TypeError(
            "opt_state must come from memcell.train.optimizer (optax.inject_hyperparams with a "
            f"learning_rate), got {type(opt_state).__name__}"
        )
    return hyper["learning_rate"]


def set_learning_rate(opt_state, lr):
    """``opt_state`` of an ``optimizer(...)`` with its peak learning rate replaced by ``lr``."""
    learning_rate(opt_state)  # raises a clear TypeError otherwise
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(lr, hyper["learning_rate"].dtype)
    return opt_state._replace(hyperparams=hyper)
