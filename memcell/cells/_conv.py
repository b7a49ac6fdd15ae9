"""The short causal depthwise convolution that Mamba and Gated DeltaNet put before their recurrence.

Its window, the last ``K - 1`` inputs before the current step (oldest first), is part of the
cell's carry, so a sequence can be continued from where another ended. ``conv_step`` is the one
step a cell's ``step`` runs; ``conv_sequence`` gives the same outputs for every step of a framed
sequence at once (lengths and resets included), for the cells' parallel forms.

Taps are stored ``w: [K, C]`` oldest first: ``y_t = b + sum_j w[j] * u_{t - K + 1 + j}``, so
``w[K - 1]`` multiplies the current input (PyTorch's ``Conv1d`` with ``K - 1`` steps of left padding,
as the Mamba code runs it; there ``weight[c, 0, j]`` is our ``w[j, c]``).
"""

import jax
import jax.numpy as jnp

from memcell.types import Array

__all__ = ["conv_sequence", "conv_step"]


def conv_step(window: Array, u: Array, w: Array, b: Array | None) -> tuple[Array, Array]:
    """One step: ``(window', y)`` for ``window: [*b, K - 1, C]`` (oldest first) and ``u: [*b, C]``."""
    full = jnp.concatenate([window, u[..., None, :].astype(window.dtype)], axis=-2)  # [*b, K, C]
    y = jnp.sum(full * w.astype(full.dtype), axis=-2)
    if b is not None:
        y = y + b.astype(y.dtype)
    return full[..., 1:, :], y


def _taps(window0: Array, us: Array, resets: Array | None, K: int) -> list[Array]:
    """``taps[l][..., t, :]``: the input ``l`` steps before step ``t`` as the step sees it, for
    ``t = 0..T`` (``t = T``: the window after the last step): ``us[t - l]`` where that lies in the
    step's segment (since its last reset, or the start), else the entry of ``window0`` it reads."""
    T = us.shape[-2]
    ext = jnp.concatenate([us, jnp.zeros_like(us[..., :1, :])], axis=-2)  # [*b, T + 1, C]
    t = jnp.arange(T + 1)
    if resets is None:
        since = jnp.broadcast_to(t, us.shape[:-2] + (T + 1,))  # steps since the segment began
    else:
        rs = jnp.concatenate([resets, jnp.zeros_like(resets[..., :1])], axis=-1)
        since = t - _last_true(rs, t)
    taps = [ext]
    for lag in range(1, K):
        shifted = jnp.concatenate([jnp.zeros_like(ext[..., :lag, :]), ext[..., :-lag, :]], axis=-2)
        idx = jnp.clip(K - 1 - lag + since, 0, K - 2)  # where window0 holds the input lag steps back
        from_window = jnp.take_along_axis(window0, idx[..., None].astype(jnp.int32), axis=-2)
        taps.append(jnp.where((lag <= since)[..., None], shifted, from_window))
    return taps


def _last_true(flags: Array, t: Array) -> Array:
    """The index of the last True at or before each position (0 where none)."""
    return jax.lax.cummax(jnp.where(flags, t, 0), axis=flags.ndim - 1)


def conv_sequence(window0: Array, us: Array, w: Array, b: Array | None, valid: Array | None = None,
                  resets: Array | None = None) -> tuple[Array, Array]:
    """Every step's output of ``conv_step`` over ``us: [*b, T, C]`` at once, and the final window.

    Args:
      window0: ``[*b, K - 1, C]``, the window before the first step (and after each reset).
      us: ``[*b, T, C]`` inputs in processing order (``T >= 1``).
      w, b: taps ``[K, C]`` (oldest first) and bias ``[C]`` (or None).
      valid: ``[*b, T]`` prefix mask or None; the window returned is the one after the last valid step.
      resets: ``[*b, T]`` or None: where set, the window restarts from ``window0`` before that step.

    Returns:
      ``(window, ys)``: the window after each sequence's last valid step, ``[*b, K - 1, C]``, and
      ``ys: [*b, T, C]`` (at padded steps: whatever the zeroed inputs give).
    """
    K, T = w.shape[0], us.shape[-2]
    us = us.astype(window0.dtype)
    window0 = jnp.broadcast_to(window0, us.shape[:-2] + window0.shape[-2:])
    taps = _taps(window0, us, resets, K)
    y = sum(taps[lag][..., :T, :] * w[K - 1 - lag].astype(us.dtype) for lag in range(K))
    if b is not None:
        y = y + b.astype(y.dtype)
    if K == 1:
        return window0, y
    end = jnp.full(us.shape[:-2], T) if valid is None else jnp.sum(valid, axis=-1)  # the step after the last
    at_end = lambda a: jnp.take_along_axis(a, end[..., None, None].astype(jnp.int32), axis=-2)[..., 0, :]
    window = jnp.stack([at_end(taps[lag]) for lag in range(K - 1, 0, -1)], axis=-2)  # oldest first
    return window, y
