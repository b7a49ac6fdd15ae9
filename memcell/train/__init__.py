"""Training with optax: a pure train step, an evaluation step, and a ``fit`` loop.

The pure pieces come first and compose with plain JAX:

- ``TrainState(params, opt_state, step, key, stream=None)``: everything a run needs to continue.
- ``optimizer(...)``: an optax chain (clip by global norm, Adam/SGD/..., an optional
  warmup/cosine schedule) inside ``optax.apply_if_finite``, so a non-finite gradient skips the
  update instead of poisoning the params, with the learning rate held in the optimizer state
  (``optax.inject_hyperparams``) so that models vmapped together can each have their own.
- ``make_train_step(loss_fn, optimizer)`` returns a jit-able ``(state, batch) -> (state, metrics)``.
- ``init_state`` / ``init_states``: one model, or N models stacked on a leading axis for
  ``jax.vmap`` (one key and optionally one learning rate each).

Truncated BPTT over long streams: ``make_stream_train_step`` carries the model's carry from
window to window in ``TrainState.stream`` (a ``StreamState(cursor, carry)``, with the sampler's
place in its streams), the gradient stopped at each window boundary; ``fit`` then draws from a
stateful sampler ``sample(key, cursor) -> (batch, cursor)``.

``fit`` runs the loop: batches drawn from a pure, seeded sampler (``sample(key) -> batch``,
with the key a function of the run's key and the step only, so a resumed run sees the same
data), several steps per jit call with ``lax.scan``, metrics of every step to JSONL, a progress
bar, periodic evaluation, early stopping, and orbax checkpoints that resume bit-identically
(``load_checkpoint`` reads the latest one back, e.g. to analyse a trained run).

One concern a module, all private and re-exported here: ``_optimizer``, ``_state``, ``_steps``,
``_stream``, ``_evaluate``, ``_early_stopping``, ``_metrics_log``, ``_checkpoint``, ``_loop`` (the loop of
``fit``), ``_fit`` (its argument checks and set-up), ``_keep_best`` (each model's best params,
``fit(..., keep_best=KeepBest(...))``) and ``_learning_rate_choice`` (a sweep's models and the rate
its validation values choose: ``sweep_models``, ``choose_learning_rate``); ``_args`` holds their argument checks;
``_mesh`` the device meshes of ``fit(..., mesh=...)`` and the set-up of multi-host runs.
"""

from memcell.train._checkpoint import load_checkpoint
from memcell.train._early_stopping import EarlyStopping, StopProgress
from memcell.train._evaluate import evaluate, summarize
from memcell.train._fit import FitResult, fit
from memcell.train._keep_best import KeepBest
from memcell.train._learning_rate_choice import LearningRateChoice, choose_learning_rate, sweep_models
from memcell.train._mesh import initialize_distributed, is_main_process, make_mesh, mesh_from_spec
from memcell.train._optimizer import learning_rate, optimizer
from memcell.train._state import TrainState, init_state, init_states
from memcell.train._steps import make_eval_step, make_train_step
from memcell.train._stream import StreamState, make_stream_train_step

__all__ = [
    "EarlyStopping",
    "FitResult",
    "KeepBest",
    "LearningRateChoice",
    "StopProgress",
    "StreamState",
    "TrainState",
    "choose_learning_rate",
    "evaluate",
    "fit",
    "init_state",
    "init_states",
    "initialize_distributed",
    "is_main_process",
    "learning_rate",
    "load_checkpoint",
    "make_eval_step",
    "make_mesh",
    "make_stream_train_step",
    "make_train_step",
    "mesh_from_spec",
    "optimizer",
    "summarize",
    "sweep_models",
]
