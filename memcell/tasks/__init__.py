"""Benchmarks for recurrent cells: generators and loaders with a test split, a stated metric
and baselines computed from the data.

Long-term-dependency problems (``synthetic``): ``adding``, ``copy_memory``, ``temporal_order``, ``selective_copy``,
``mqar``.
Small real data, nothing downloaded: ``digits`` (sequential and permuted 8x8 digits,
scikit-learn), ``char_lm`` (Shakespeare, shipped), ``sunspots`` (statsmodels),
``japanese_vowels`` (speech, shipped).

Example:
  >>> import memcell
  >>> from memcell import tasks
  >>> task = tasks.make("adding", length=20)
  >>> model = tasks.sequence_model(memcell.lstm(16), task.output_size, task.readout)
  >>> result = tasks.train_task(task, model, seeds=[0, 1], steps=100)
  >>> sorted(result.summary["mse"]), result.beats["mean"] <= 2
  (['max', 'mean', 'min', 'n', 'std'], True)
"""

from memcell.tasks._base import (
    BEAT_FRACTION,
    CELLS,
    Model,
    ModelParams,
    Task,
    beat_threshold,
    beats,
    classification_loss,
    cross_entropy,
    eval_fn,
    features,
    gradient_flow_fn,
    loss_fn,
    make_cell,
    sequence_model,
)
from memcell.tasks._result import TaskResult
from memcell.tasks._training import initial_states, train_task, with_stream
from memcell.tasks._streams import TokenStreams, stream_eval_fn, stream_loss_fn, stream_sampler
from memcell.tasks._flow import gradient_norms_by_lag
from memcell.tasks.digits import digits
from memcell.tasks.sunspots import sunspots
from memcell.tasks.synthetic import adding, copy_memory, mqar, selective_copy, temporal_order
from memcell.tasks.text import char_lm, sample_text
from memcell.tasks.vowels import japanese_vowels, read_ts

# name -> (factory, the factory's "length" keyword or None when the length is fixed by the data)
TASKS = {
    "adding": (adding, "length"),
    "copy": (copy_memory, "length"),
    "selective_copy": (selective_copy, "length"),
    "mqar": (mqar, "length"),
    "temporal_order": (temporal_order, "length"),
    "digits": (digits, None),
    "permuted_digits": (lambda **kw: digits(permuted=True, **kw), None),
    "char_lm": (char_lm, "length"),
    "sunspots": (sunspots, "window"),
    "vowels": (japanese_vowels, None),
}


def make(name: str, length: int | None = None, **options) -> Task:
    """A task by name (``TASKS``); ``length`` is its sequence length where it has one
    (the lag for copy, the window for sunspots) and is rejected where the data fixes it.

    Every size is checked by the task's factory before anything is built; a ``ValueError``
    names the task and the argument, with its bounds.

    Example:
      >>> from memcell import tasks
      >>> tasks.make("selective_copy", 8)
      Traceback (most recent call last):
      ...
      ValueError: task 'selective_copy': length must be an int >= 16, got 8
    """
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    factory, length_arg = TASKS[name]
    if length is not None:
        if length_arg is None:
            raise ValueError(f"task {name!r} has a length fixed by its data; length must not be given, got {length!r}")
        options[length_arg] = length
    try:
        return factory(**options)
    except ValueError as e:
        alias = f" (its length is the {length_arg})" if length is not None and length_arg != "length" else ""
        raise ValueError(f"task {name!r}{alias}: {e}") from None


__all__ = [
    "BEAT_FRACTION",
    "CELLS",
    "Model",
    "ModelParams",
    "TASKS",
    "Task",
    "TaskResult",
    "TokenStreams",
    "adding",
    "beat_threshold",
    "beats",
    "char_lm",
    "classification_loss",
    "copy_memory",
    "cross_entropy",
    "digits",
    "eval_fn",
    "features",
    "gradient_flow_fn",
    "gradient_norms_by_lag",
    "initial_states",
    "japanese_vowels",
    "loss_fn",
    "make",
    "make_cell",
    "mqar",
    "read_ts",
    "sample_text",
    "selective_copy",
    "sequence_model",
    "stream_eval_fn",
    "stream_loss_fn",
    "stream_sampler",
    "sunspots",
    "temporal_order",
    "train_task",
    "with_stream",
]
