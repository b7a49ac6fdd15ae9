"""``to_jax_export``: the model as a serialized ``jax.export`` program with symbolic batch and time."""

from __future__ import annotations

import os
import pathlib

import jax

from memcell.export import _program, _structure

__all__ = ["to_jax_export"]


def to_jax_export(
    model,
    params,
    *,
    input_size: int,
    with_lengths: bool = False,
    streaming: bool = False,
    platforms: tuple[str, ...] | None = None,
    path: str | os.PathLike | None = None,
) -> bytes:
    """Serializes ``model`` with ``params`` as a ``jax.export`` program, run in evaluation mode.

    The inputs and outputs are ``to_onnx``'s (sequence: ``xs [B, T, input_size]`` float32, then
    ``lengths [B]`` int32 with ``with_lengths``; returns ``ys`` then the final carry's leaves;
    ``streaming``: ``x [B, input_size]`` and the carry's leaves, returns ``y`` and the new leaves),
    except that complex leaves stay complex. B and T are symbolic: one file serves every size. The
    params are baked in. Plain JAX loads it, without memcell::

        exported = jax.export.deserialize(bytearray(open(path, "rb").read()))
        ys, *carry = exported.call(xs, lengths)

    Args:
      model: a ``Cell``, a ``Layer`` or a ``memcell.tasks.Model``.
      params: its params (any dtype JAX computes in).
      input_size: features of the inputs.
      with_lengths, streaming: as for ``to_onnx``.
      platforms: the platforms to lower for, e.g. ``("cpu", "cuda")`` (default: the default backend's).
      path: also write the bytes to this file.

    Returns:
      The serialized program (``bytes``).

    Example:
      >>> import jax, jax.numpy as jnp, memcell
      >>> from memcell import export
      >>> cell = memcell.lru(8)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> blob = export.to_jax_export(cell, params, input_size=3, with_lengths=True)
      >>> exported = jax.export.deserialize(bytearray(blob))
      >>> ys, carry_x = exported.call(jnp.ones((2, 5, 3)), jnp.array([5, 3], jnp.int32))
      >>> ys.shape, carry_x.dtype
      ((2, 5, 3), dtype('complex64'))
    """
    m = _structure.read(model)
    prog = _program.program(m, params, input_size=input_size, with_lengths=with_lengths, streaming=streaming)
    if platforms is not None:
        platforms = tuple(platforms)
        if not platforms or not all(isinstance(p, str) for p in platforms):
            raise ValueError(f"platforms must be a non-empty sequence of platform names such as ('cpu', 'cuda'), "
                             f"got {platforms!r}")
    exported = _program.symbolic(lambda: jax.export.export(jax.jit(prog.fn), platforms=platforms)(*prog.specs))
    blob = bytes(exported.serialize())
    if path is not None:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_bytes(blob)
    return blob
