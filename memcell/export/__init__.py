"""A trained model out of memcell: ONNX (ONNX Runtime, C++, phones) and serialized ``jax.export`` programs.

``to_onnx`` writes the default LSTM, GRU and Elman RNN layers (alone, bidirectional, stacked) with
ONNX's own LSTM/GRU/RNN operators, and every other model as the JAX program itself, lowered by
jax2onnx (its ``lax.scan`` becomes an ONNX ``Loop``); ``why_not_native`` says which and why.
``to_jax_export`` writes the same models as ``jax.export`` programs that plain JAX loads. Both write
a sequence model (``xs [B, T, D]``, optional ``lengths``) or a one-step streaming model. The
ONNX side needs the ``export`` extra (``pip install memcell[export]``: onnx, onnxruntime, jax2onnx).

One concern a module: ``_structure`` (what a model is made of), ``_program`` (the JAX function
exported, its inputs and names), ``_native`` (ONNX's operators), ``_rewrite`` (the program in the form
jax2onnx lowers: complex values as real pairs, reverse scans forward), ``_onnx`` (``to_onnx``) and ``_jax`` (``to_jax_export``).
"""

from memcell.export._jax import to_jax_export
from memcell.export._onnx import to_onnx, why_not_native

__all__ = ["to_jax_export", "to_onnx", "why_not_native"]
