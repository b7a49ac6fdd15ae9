"""Regularisers that respect the recurrence: variational dropout, zoneout, and a learnt initial carry.

``memcell.layer(cell, dropout=..., recurrent_dropout=..., zoneout=..., learn_initial_carry=...)``
is where these options are used; this module holds what they do, so that ``memcell.scan`` only
wires them in. Randomness comes from the ``key`` that ``Layer.apply`` takes: with a key the layer
is in training mode, without one in evaluation mode (deterministic).

- Variational dropout (Gal and Ghahramani 2016): one mask a sequence on the inputs (``dropout``)
  and one on the recurrent ``h`` (``recurrent_dropout``), the same at every step, with inverted
  scaling (kept units are divided by ``1 - rate``), so evaluation uses the plain cell.
- Zoneout (Krueger et al. 2017): at every step each unit of the carry keeps its previous value
  with probability ``rate`` (a fresh mask each step); evaluation takes the expectation
  ``rate * carry_{t-1} + (1 - rate) * carry_t``. Each carry leaf is zoned on its own, except
  where the cell's spec declares a ``log_scale`` (the xLSTM cells: ``c`` and ``n`` stored scaled
  by ``exp(-m)``): those fields and their stabiliser are one state, kept or updated together with
  one mask a unit of ``m``, and their expectation is taken on the true values ``c * exp(m)``, so
  zoneout never leaves a carry the cell could not be in. A cell of your own whose carry fields
  depend on each other that way should declare it the same way, or not be zoned out.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp

from memcell._checks import check_in
from memcell.cells import LSTMSpec, RNNSpec
from memcell.types import Array, Cell, PyTree

__all__ = ["LearntCarry", "check_zoneout", "recurrent_dropout_kind", "regularized"]

# Cells whose step reads carry.h only as the input of the recurrent matmul: masking carry.h
# before the step is exactly dropout on h where it enters the gates (for the LSTM, the memory
# cell c is not dropped). The GRU also reads h outside the matmul (h' = (1 - z) * n + z * h),
# so its spec declares a masked_step (its equations, written once in memcell/cells/gru.py).
# Exact spec types only: a subclass may read h elsewhere.
_H_THROUGH_MATMUL = (LSTMSpec, RNNSpec)


class LearntCarry(NamedTuple):
    """Params of a layer with ``learn_initial_carry=True``."""

    params: PyTree  # the cell's params
    carry: PyTree  # the initial carry, without batch axes: broadcast over the batch


def check_zoneout(zoneout) -> float | dict[str, float]:
    """Checks a zoneout option.

    Args:
      zoneout: a rate in ``[0, 1)`` for every carry leaf, or a dict ``{carry field: rate}``
        (e.g. ``{"c": 0.5, "h": 0.05}``; fields left out are not zoned out).

    Returns:
      The rate as a float, or the dict with float rates.
    """
    if isinstance(zoneout, Mapping):
        rates = {}
        for name, rate in zoneout.items():
            if not isinstance(name, str):
                raise TypeError(f"zoneout keys must be carry field names (str), got {name!r}")
            rates[name] = check_in(f"zoneout[{name!r}]", rate, 0.0, 1.0, hi_open=True)
        return rates
    return check_in("zoneout", zoneout, 0.0, 1.0, hi_open=True)


def recurrent_dropout_kind(cell: Cell) -> str:
    """How recurrent dropout reaches inside ``cell``'s step.

    Args:
      cell: the cell; its spec (a built-in cell's, describing its own step) decides.

    Returns:
      ``"h"`` (mask ``carry.h`` before the step: LSTM, RNN) or ``"masked_step"`` (the spec's
      ``masked_step``, the mask on the matmul input only: the GRU).

    Raises:
      ValueError: for any other cell (a user's own, or a wrapped step), where how ``h`` enters
        the step is unknown, so masking the carry could drop the state path as well.
    """
    spec = cell.spec
    if spec is not None and spec.describes(cell):
        if spec.masked_step is not None:
            return "masked_step"
        if type(spec) in _H_THROUGH_MATMUL:
            return "h"
    name = "None" if spec is None else type(spec).__name__
    raise ValueError(
        "recurrent_dropout needs a cell whose step is known to read h through its recurrent matmul "
        f"(memcell.lstm, memcell.rnn, memcell.gru); got a cell with spec {name}"
    )


def _log_scale(cell: Cell):
    """``(stabiliser field, scaled fields)`` the cell's spec declares for its carry (the xLSTM
    cells: ``c`` and ``n`` stored scaled by ``exp(-m)``), or None: every leaf stands alone."""
    spec = cell.spec
    if spec is not None and spec.describes(cell):
        return getattr(spec, "log_scale", None)
    return None


def _leaf_plan(zoneout, carry, log_scale) -> tuple[list[float], list[int]]:
    """The zoneout rate of each leaf of ``carry`` (in ``jax.tree.leaves`` order), and the leaf whose
    mask each one uses (itself, or the stabiliser for a field scaled by it). Leaves that are not
    floating point (counters, indices) get rate 0: they have no expectation to take."""
    floating = [jnp.issubdtype(leaf.dtype, jnp.inexact) for leaf in jax.tree.leaves(carry)]
    fields = getattr(carry, "_fields", None)
    if isinstance(zoneout, dict):
        if fields is None:
            raise ValueError(f"zoneout as a dict needs a NamedTuple carry, got {type(carry).__name__}")
        unknown = sorted(set(zoneout) - set(fields))
        if unknown:
            raise ValueError(f"zoneout names fields {unknown} that the carry has not; its fields are {list(fields)}")
        rates = [zoneout.get(f, 0.0) for f, v in zip(fields, carry) for _ in jax.tree.leaves(v)]
    else:
        rates = [zoneout] * len(floating)
    rates = [r if f else 0.0 for r, f in zip(rates, floating)]
    owners = list(range(len(rates)))
    if log_scale is None or not any(rates):
        return rates, owners
    # One state, not independent fields: c and n mean c * exp(m) and n * exp(m), so a unit keeps
    # (or takes the expectation of) all three together, with the one mask drawn for m.
    m_name, scaled = log_scale
    if fields is None or len(fields) != len(rates) or not {m_name, *scaled} <= set(fields):
        raise ValueError(f"the cell's spec says {list(scaled)} are scaled by exp(-{m_name}), but its carry "
                         f"{type(carry).__name__} does not hold them as one array a field")
    index = {f: i for i, f in enumerate(fields)}
    group = (m_name, *scaled)
    if len({rates[index[f]] for f in group}) > 1:
        got = {f: rates[index[f]] for f in group}
        raise ValueError(
            f"zoneout must give the carry fields {list(group)} one rate: {', '.join(scaled)} are stored scaled by "
            f"exp(-{m_name}), so a unit keeps or updates them together; got {got}"
        )
    for f in scaled:
        owners[index[f]] = index[m_name]
    return rates, owners


def _mix_log_scaled(old, new, w_old, m_name: str, scaled) -> dict:
    """Zoneout's expectation of a log-scaled state, taken on the true values ``field * exp(m)``:
    ``w_old`` (per unit of ``m``) of the old state plus ``1 - w_old`` of the new, stored again
    scaled by ``exp(-m')`` with ``m'`` the larger of the two weighted log scales (so no ``exp``
    overflows). The true cell and normaliser states are mixed with the same weights, so bounds the
    cell keeps between them (the sLSTM's ``|c| <= n``, hence ``|h| <= 1``) still hold."""
    m_old, m_new = getattr(old, m_name), getattr(new, m_name)
    lo = jnp.where(w_old > 0, jnp.log(jnp.maximum(w_old, 1e-30)) + m_old, -jnp.inf)
    ln = jnp.where(w_old < 1, jnp.log(jnp.maximum(1.0 - w_old, 1e-30)) + m_new, -jnp.inf)
    m = jnp.maximum(lo, ln)
    a_old, a_new = jnp.exp(lo - m), jnp.exp(ln - m)
    out = {m_name: m.astype(m_new.dtype)}
    for f in scaled:
        o, n = getattr(old, f), getattr(new, f)
        grow = lambda a: a.reshape(a.shape + (1,) * (n.ndim - a.ndim))
        out[f] = (grow(a_old) * o + grow(a_new) * n).astype(n.dtype)
    return out


class _Wrapped(NamedTuple):
    params: PyTree  # the cell's own params, wrapped so unroll does not compare xs (inputs + noise) to w_x


def regularized(cell: Cell, params, xs: Array, *, key, dropout: float, recurrent_dropout: float,
                zoneout) -> tuple[Cell, PyTree, Array]:
    """The cell, params and inputs to unroll for these options: ``(cell', params', xs')``.

    With ``key`` (training) it draws the masks: the input mask and the recurrent mask once for
    each sequence, the zoneout masks for every step (appended to ``xs'`` as extra features, so
    that they follow ``lengths``, ``resets`` and ``reverse`` with the inputs). Without ``key``
    dropout is the identity and zoneout its expectation. The returned cell has no spec: it runs
    on the reference path. Outputs: where the cell's output is a leaf of its new carry (``h``
    for the LSTM, GRU and RNN), it is that leaf after zoneout.

    Args:
      cell, params: the cell and its params.
      xs: ``[*b, T, d]`` inputs.
      key: a ``jax.random.key``, or None for evaluation.
      dropout, recurrent_dropout: rates in ``[0, 1)``; zoneout: a rate or ``{field: rate}``.

    Returns:
      ``(cell', params', xs')`` for ``memcell.unroll``; ``cell`` and ``params`` themselves
      when nothing is to be done.
    """
    batch_shape, T, d = tuple(xs.shape[:-2]), xs.shape[-2], xs.shape[-1]
    template = jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params)
    log_scale = _log_scale(cell) if zoneout else None
    rates, owners = _leaf_plan(zoneout, template, log_scale) if zoneout else ([], [])
    h_mask = noise = None
    if key is not None:
        k_x, k_h, k_z = jax.random.split(key, 3)
        if dropout > 0.0:
            keep = jax.random.bernoulli(k_x, 1.0 - dropout, batch_shape + (d,))
            xs = jnp.where(keep[..., None, :], xs / (1.0 - dropout), jnp.zeros_like(xs)).astype(xs.dtype)
        if recurrent_dropout > 0.0:
            h_shape = template.h.shape
            h_mask = jax.random.bernoulli(k_h, 1.0 - recurrent_dropout, h_shape) / (1.0 - recurrent_dropout)
        if any(rates):
            leaves = jax.tree.leaves(template)
            keys = jax.random.split(k_z, len(leaves))
            noise = [
                jax.random.bernoulli(k, r, batch_shape + (T, _size(s, len(batch_shape))))
                for i, (k, r, s) in enumerate(zip(keys, rates, leaves)) if r > 0.0 and owners[i] == i
            ]
            noise = jnp.concatenate(noise, axis=-1).astype(xs.dtype)
    if h_mask is None and not any(rates):
        return cell, params, xs
    kind = recurrent_dropout_kind(cell) if h_mask is not None else None
    extra = 0 if noise is None else noise.shape[-1]
    if noise is not None:
        xs = jnp.concatenate([xs, noise], axis=-1)
    zone = _Zoneout(rates, owners, log_scale, train=noise is not None)
    step = _make_step(cell, d, kind, h_mask, zone)
    wrapped = Cell(
        init=lambda k, n: _Wrapped(cell.init(k, n - extra)),
        initial_carry=lambda p, batch_shape=(): cell.initial_carry(p.params, batch_shape),
        step=step,
    )
    return wrapped, _Wrapped(params), xs


def _size(leaf, n_batch: int) -> int:
    """Units of a carry leaf per sequence (its size without the ``n_batch`` leading batch axes)."""
    n = 1
    for s in leaf.shape[n_batch:]:
        n *= int(s)
    return n


class _Zoneout(NamedTuple):
    rates: list  # a rate for each carry leaf
    owners: list  # the leaf whose mask each leaf uses
    log_scale: tuple | None  # (stabiliser field, scaled fields) from the cell's spec
    train: bool  # masks in the inputs' extra features (True) or the expectation (False)

    def apply(self, carry, new, noise):
        """The carry after zoneout: each unit the old value or the new (training), or their expectation."""
        old_leaves = jax.tree.leaves(carry)
        new_leaves, treedef = jax.tree.flatten(new)
        keep, offset = {}, 0  # per owner leaf: its mask (True: keep the old value) or its rate
        for i, (cur, rate) in enumerate(zip(new_leaves, self.rates)):
            if rate > 0.0 and self.owners[i] == i:
                if self.train:
                    size = _size(cur, noise.ndim - 1)
                    keep[i] = noise[..., offset : offset + size].reshape(cur.shape) > 0.5
                    offset += size
                else:
                    keep[i] = rate
        out = []
        for i, (old, cur, rate) in enumerate(zip(old_leaves, new_leaves, self.rates)):
            k = keep.get(self.owners[i])
            if rate == 0.0:
                out.append(cur)
            elif self.train:
                out.append(jnp.where(k.reshape(k.shape + (1,) * (cur.ndim - k.ndim)), old, cur))
            else:
                out.append((rate * old + (1.0 - rate) * cur).astype(cur.dtype))
        zoned = treedef.unflatten(out)
        if self.log_scale is not None and not self.train and any(self.rates):  # replaces the fields' own mixes
            # the expectation of a log-scaled state is taken on its true values, not field by field
            m_name, scaled = self.log_scale
            rate = self.rates[zoned._fields.index(m_name)]
            zoned = zoned._replace(**_mix_log_scaled(carry, new, jnp.asarray(rate, jnp.float32), m_name, scaled))
        return zoned, new_leaves


def _make_step(cell: Cell, d: int, kind, h_mask, zone: _Zoneout):
    def step(wp, carry, x):
        params = wp.params
        noise = None
        if zone.train:
            x, noise = x[..., :d], x[..., d:]
        if kind == "masked_step":
            new, y = cell.spec.masked_step(params, carry, x, h_mask)
        elif kind == "h":
            new, y = cell.step(params, carry._replace(h=(carry.h * h_mask).astype(carry.h.dtype)), x)
        else:
            new, y = cell.step(params, carry, x)
        if not any(zone.rates):
            return new, y
        zoned, new_leaves = zone.apply(carry, new, noise)
        # The output is the zoned value wherever the cell outputs a carry leaf (y = h').
        y = next((z for cur, z in zip(new_leaves, jax.tree.leaves(zoned)) if cur is y), y)
        return zoned, y

    return step
