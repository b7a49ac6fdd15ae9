"""The loop of ``fit``: its record, the pieces one call runs with (compiled steps, metrics log,
progress bar, checkpoints, early stopping), and the loop itself."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import numpy as np

from memcell.train._checkpoint import Checkpointer
from memcell.train._early_stopping import EarlyStopping, StopProgress
from memcell.train._placement import Placement
from memcell.train._metrics_log import MetricsLog
from memcell.train._state import TrainState, current_step, step_keys
from memcell.train._stream import sample_stream


@dataclasses.dataclass
class Record:
    """What the loop has seen so far, one entry a model where it is per model. Every checkpoint
    stores it (as its ``"book"``), so a resumed run continues it."""

    history: list  # one dict per evaluation: step and metrics
    stopping: StopProgress
    skipped: list  # updates skipped for a non-finite gradient
    nonfinite_run: list  # consecutive skipped updates up to now

    @classmethod
    def fresh(cls, n_models: int) -> Record:
        return cls([], StopProgress.fresh(n_models), [0] * n_models, [0] * n_models)

    @classmethod
    def from_book(cls, book: dict, n_models: int) -> Record:
        """The record from a checkpoint's ``"book"`` (fields it lacks keep their fresh values)."""
        fresh = cls.fresh(n_models)
        stopping = StopProgress(*(tuple(book.get(f, getattr(fresh.stopping, f))) for f in StopProgress._fields))
        return cls(list(book.get("history", [])), stopping, list(book.get("skipped", fresh.skipped)),
                   list(book.get("nonfinite_run", fresh.nonfinite_run)))

    def book(self) -> dict:
        """The JSON form stored in checkpoints; its keys are the checkpoint format."""
        s = self.stopping
        return {"history": self.history, "best": list(s.best), "bad_evals": list(s.bad_evals),
                "meets_target": list(s.meets_target), "solved_step": list(s.solved_step),
                "skipped": self.skipped, "nonfinite_run": self.nonfinite_run}

    def count_skipped(self, skipped) -> None:
        """Counts one step's ``skipped`` metric (one value a model)."""
        for i, s in enumerate(np.asarray(skipped, np.float64).reshape(len(self.skipped))):
            self.skipped[i] += int(s)
            self.nonfinite_run[i] = self.nonfinite_run[i] + 1 if s else 0

    def diverged(self, max_nonfinite: int) -> bool:
        return all(r >= max_nonfinite for r in self.nonfinite_run)

    def stop_reason(self) -> str:
        """Why early stopping stopped the run: every model meets the target, or some ran out of patience."""
        return "target" if all(self.stopping.meets_target) else "patience"

    def evaluated_at(self, step: int) -> bool:
        return bool(self.history) and self.history[-1]["step"] == step


@functools.lru_cache(maxsize=32)
def compiled_run(train_step: Callable, sample: Callable, multi: bool, placement: Placement) -> Callable:
    """``(state, n) -> (state, metrics of n steps)``, jit-compiled once per (step, sampler, placement)
    so that repeated and resumed ``fit`` calls reuse the compilation. The batch drawn inside the
    jit takes the placement's layout (on a mesh: sharded over its ``data`` axis)."""

    def one_step(s, _):
        data_key, _ = step_keys(s)
        if s.stream is None:
            batch = sample(data_key)
        else:  # truncated BPTT: the sampler keeps a cursor
            s, batch = sample_stream(sample, s, data_key)
        return train_step(s, placement.constrain_batch(batch))

    def run(s, n):
        return jax.lax.scan(one_step, s, None, length=n)

    return placement.compile_run(run, multi)


@functools.lru_cache(maxsize=32)
def compiled_eval(eval_fn: Callable, multi: bool, placement: Placement) -> Callable:
    return placement.compile_eval(eval_fn, multi)


def _to_host(tree):
    return jax.tree.map(lambda x: np.asarray(x).tolist(), jax.device_get(tree))


@dataclasses.dataclass
class Run:
    """The pieces one ``fit`` call runs with; its methods are the steps of the loop."""

    run_jit: Callable
    eval_jit: Callable | None
    multi: bool
    record: Record
    log: MetricsLog
    bar: object | None  # a tqdm bar
    checkpointer: Checkpointer | None
    early_stopping: EarlyStopping | None
    config: dict | None
    postfix: dict = dataclasses.field(default_factory=dict)

    def train(self, state: TrainState, step: int, n: int) -> TrainState:
        """``n`` updates from ``step`` in one jit call, each logged and counted."""
        state, metrics = self.run_jit(state, n)
        metrics = jax.device_get(metrics)  # leaves [n] or [models, n]
        for j in range(n):
            row = {k: (v[:, j] if self.multi else v[j]) for k, v in metrics.items()}
            self.log.write({"step": step + j + 1, "split": "train", **{k: np.asarray(v).tolist() for k, v in row.items()}})
            self.record.count_skipped(row["skipped"])
        if self.bar is not None:
            self.bar.update(n)
            self.postfix["loss"] = float(np.mean(metrics["loss"][..., -1]))
            self.bar.set_postfix(self.postfix, refresh=False)
        return state

    def evaluate(self, state: TrainState) -> bool:
        """Evaluates, logs and records; whether early stopping says stop."""
        m = _to_host(self.eval_jit(state.params))
        step = current_step(state)
        self.record.history.append({"step": step, **m})
        self.log.write({"step": step, "split": "eval", **m})
        if self.bar is not None:
            self.postfix.update({f"eval_{k}": float(np.mean(v)) for k, v in m.items()})
            self.bar.set_postfix(self.postfix, refresh=False)
        if self.early_stopping is None:
            return False
        self.record.stopping, done = self.early_stopping.update(self.record.stopping, m, step)
        return done

    def checkpoint(self, state: TrainState) -> None:
        if self.checkpointer is not None:
            self.log.sync()  # the log must never lag behind a checkpoint
            self.checkpointer.save(state, {"book": self.record.book(), "config": self.config})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.log.close()


def chunk_size(steps_per_call: int, *intervals: int) -> int:
    """The updates per jit call: ``steps_per_call`` reduced to divide every nonzero interval."""
    k = steps_per_call
    for n in intervals:
        if n:
            k = math.gcd(k, n)
    return max(k, 1)


def run_loop(run: Run, state: TrainState, *, start: int, steps: int, chunk: int, eval_every: int,
             checkpoint_every: int, max_nonfinite: int) -> tuple[TrainState, str]:
    """Trains from ``start`` to ``steps``; returns the final state and why the loop stopped."""
    stop_reason, step = "steps", start
    while step < steps:
        n = min(chunk - step % chunk, steps - step)
        state = run.train(state, step, n)
        step += n
        stop = False
        if run.eval_jit is not None and eval_every and step % eval_every == 0 and run.evaluate(state):
            stop, stop_reason = True, run.record.stop_reason()
        if run.record.diverged(max_nonfinite):
            stop, stop_reason = True, "diverged"
        if stop:
            break
        if checkpoint_every and step % checkpoint_every == 0 and step < steps:
            run.checkpoint(state)
    # The last evaluation, unless the loop just made it.
    if run.eval_jit is not None and not run.record.evaluated_at(step):
        if run.evaluate(state) and stop_reason == "steps":
            stop_reason = run.record.stop_reason()
    run.checkpoint(state)
    return state, stop_reason
