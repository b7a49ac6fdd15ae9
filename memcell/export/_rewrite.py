"""The traced program, evaluated again in the form jax2onnx lowers: complex values as pairs of real arrays,
reverse scans as forward scans over reversed inputs.

ONNX Runtime has no complex kernels (and ONNX's ``Loop`` no complex state), and jax2onnx lowers no
reverse ``scan`` (memcell's backward direction without lengths). ``realify(closed_jaxpr)`` returns
a function of real arrays computing the program: each complex value is a ``Pair(re, im)``, each
complex input is given, and each complex output returned, as its real part then its imaginary part.
Primitives that only move data (reshape, broadcast, select, slices, concatenation) run on both
parts; arithmetic runs on the pair by its definition; ``scan``, ``cond``, ``while`` and inner calls
are rewritten inside. A primitive not covered here raises a ``NotImplementedError`` naming it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

__all__ = ["has_complex", "inner_jaxprs", "realify"]


class Pair(NamedTuple):
    re: jax.Array
    im: jax.Array


def _is_complex(aval) -> bool:
    return hasattr(aval, "dtype") and jnp.issubdtype(aval.dtype, jnp.complexfloating)


def _real_dtype(dtype):
    return jnp.finfo(dtype).dtype  # complex64 -> float32, complex128 -> float64


_SUBJAXPRS = ("jaxpr", "call_jaxpr", "fun_jaxpr", "branches", "cond_jaxpr", "body_jaxpr")


def inner_jaxprs(eqn) -> list:
    out = []
    for k in _SUBJAXPRS:
        v = eqn.params.get(k)
        for j in (v if isinstance(v, tuple) else (v,)):
            if j is not None and (hasattr(j, "eqns") or hasattr(j, "jaxpr")):
                out.append(j.jaxpr if hasattr(j, "jaxpr") else j)
    return out


def has_complex(jaxpr) -> bool:
    """Whether any value of ``jaxpr`` (a Jaxpr or ClosedJaxpr), inner programs included, is complex."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    vs = list(jaxpr.invars) + list(jaxpr.constvars) + list(jaxpr.outvars)
    for eqn in jaxpr.eqns:
        vs += list(eqn.invars) + list(eqn.outvars)
        if any(has_complex(j) for j in inner_jaxprs(eqn)):
            return True
    return any(_is_complex(getattr(v, "aval", None)) for v in vs)


def _pair(x):
    """A complex value as a Pair (a real one stays as it is)."""
    if isinstance(x, Pair):
        return x
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.complexfloating):
        if isinstance(x, (np.ndarray, np.generic, complex)):
            return Pair(np.real(x), np.imag(x))
        return Pair(jnp.real(x), jnp.imag(x))
    return x


def _as_pair(x) -> Pair:
    x = _pair(x)
    return x if isinstance(x, Pair) else Pair(x, jnp.zeros_like(x))


def _both(prim, params, args, n_pairs=None):
    """Runs a data-moving primitive on the real parts, then on the imaginary parts."""
    args = [_as_pair(a) if (n_pairs is None or i in n_pairs) else a for i, a in enumerate(args)]
    pick = lambda part: [getattr(a, part) if isinstance(a, Pair) else a for a in args]  # noqa: E731
    return Pair(prim.bind(*pick("re"), **params), prim.bind(*pick("im"), **params))


def _mul(a, b):
    if not isinstance(a, Pair):
        return Pair(a * b.re, a * b.im)
    if not isinstance(b, Pair):
        return Pair(a.re * b, a.im * b)
    return Pair(a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re)


def _div(a, b):
    a = _as_pair(a)
    if not isinstance(b, Pair):
        return Pair(a.re / b, a.im / b)
    d = b.re * b.re + b.im * b.im
    return Pair((a.re * b.re + a.im * b.im) / d, (a.im * b.re - a.re * b.im) / d)


def _dot(a, b, params):
    params = dict(params)
    pet = params.get("preferred_element_type")
    if pet is not None and jnp.issubdtype(pet, jnp.complexfloating):
        params["preferred_element_type"] = _real_dtype(pet)
    dot = lambda x, y: lax.dot_general_p.bind(x, y, **params)  # noqa: E731
    if not isinstance(a, Pair):
        return Pair(dot(a, b.re), dot(a, b.im))
    if not isinstance(b, Pair):
        return Pair(dot(a.re, b), dot(a.im, b))
    return Pair(dot(a.re, b.re) - dot(a.im, b.im), dot(a.re, b.im) + dot(a.im, b.re))


def _convert(x, params, out_aval):
    new = params["new_dtype"]
    if jnp.issubdtype(new, jnp.complexfloating):
        x = _as_pair(x)
        real = _real_dtype(new)
        return Pair(x.re.astype(real), x.im.astype(real))
    return (x.re if isinstance(x, Pair) else x).astype(new)


_MOVERS = {"broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose", "slice", "dynamic_slice",
           "concatenate", "rev", "copy", "copy_p", "gather", "reduce_sum", "pad", "dynamic_update_slice",
           "cumsum", "split"}


def _apply(eqn, invals):
    """One equation on Pairs; returns its outputs as a list."""
    name, p = eqn.primitive.name, eqn.params
    x = [_pair(v) for v in invals]
    if name == "complex":
        return [Pair(x[0], x[1])]
    if name == "real":
        return [x[0].re]
    if name == "imag":
        return [x[0].im]
    if name == "conj":
        return [Pair(x[0].re, -x[0].im)]
    if name in ("add", "add_any"):
        a, b = _as_pair(x[0]), _as_pair(x[1])
        return [Pair(a.re + b.re, a.im + b.im)]
    if name == "sub":
        a, b = _as_pair(x[0]), _as_pair(x[1])
        return [Pair(a.re - b.re, a.im - b.im)]
    if name == "neg":
        return [Pair(-x[0].re, -x[0].im)]
    if name == "mul":
        return [_mul(x[0], x[1])]
    if name == "div":
        return [_div(x[0], x[1])]
    if name == "dot_general":
        return [_dot(x[0], x[1], p)]
    if name == "abs":
        return [jnp.sqrt(x[0].re * x[0].re + x[0].im * x[0].im)]
    if name == "exp":
        r = jnp.exp(x[0].re)
        return [Pair(r * jnp.cos(x[0].im), r * jnp.sin(x[0].im))]
    if name == "convert_element_type":
        return [_convert(x[0], p, eqn.outvars[0].aval)]
    if name == "select_n":  # the predicate is real; the cases are pairs
        return [_both(eqn.primitive, p, x, n_pairs=set(range(1, len(x))))]
    if name in ("dynamic_slice", "dynamic_update_slice", "gather"):  # indices stay real
        n = 2 if name == "dynamic_update_slice" else 1
        return [_both(eqn.primitive, p, x, n_pairs=set(range(n)))]
    if name in _MOVERS:
        outs = [_both(eqn.primitive, p, x)]
        return outs if not eqn.primitive.multiple_results else list(map(Pair, outs[0].re, outs[0].im))
    raise NotImplementedError(
        f"the model's complex arithmetic uses the primitive {name!r}, which memcell.export cannot rewrite in real "
        "numbers (ONNX Runtime has no complex kernels)")


def _higher(eqn, invals):
    """Equations holding programs (scan, calls, cond, while), rewritten inside."""
    name, p = eqn.primitive.name, eqn.params
    if name == "scan":
        nc, nk = p["num_consts"], p["num_carry"]
        consts, init, xs = invals[:nc], invals[nc:nc + nk], invals[nc + nk:]
        body = p["jaxpr"]

        def step(carry, x):
            outs = _eval(body.jaxpr, body.consts, *consts, *carry, *x)
            return list(outs[:nk]), list(outs[nk:])

        # The length from the inputs where there are some: it may be a symbolic size of this trace.
        length = None if jax.tree.leaves(list(xs)) else p["length"]
        flip = (lambda a: jax.tree.map(lambda x: jnp.flip(x, 0), a)) if p["reverse"] else (lambda a: a)  # noqa: E731
        carry, ys = lax.scan(step, list(init), flip(list(xs)), length=length, unroll=p["unroll"])
        return list(carry) + list(flip(list(ys)))
    if name == "cond":
        branches = [lambda *a, b=b: _eval(b.jaxpr, b.consts, *a) for b in p["branches"]]
        return list(lax.switch(invals[0], branches, *invals[1:]))
    if name == "while":
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cc, bc, init = invals[:cn], invals[cn:cn + bn], invals[cn + bn:]
        cj, bj = p["cond_jaxpr"], p["body_jaxpr"]
        return list(lax.while_loop(lambda c: _eval(cj.jaxpr, cj.consts, *cc, *c)[0],
                                   lambda c: _eval(bj.jaxpr, bj.consts, *bc, *c), list(init)))
    for k in ("jaxpr", "call_jaxpr", "fun_jaxpr"):  # pjit, closed_call, custom_jvp/vjp calls, remat: inline
        inner = p.get(k)
        if inner is not None:
            j, consts = (inner.jaxpr, inner.consts) if hasattr(inner, "consts") else (inner, ())
            return _eval(j, consts, *invals)
    raise NotImplementedError(f"memcell.export cannot rewrite the primitive {name!r} holding complex values")


def _eval(jaxpr, consts, *args) -> list:
    env = {}

    def read(v):
        return _pair(v.val) if isinstance(v, jcore.Literal) else env[v]

    for v, val in zip(jaxpr.constvars, consts):
        env[v] = _pair(val)
    for v, val in zip(jaxpr.invars, args):
        env[v] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        inner = inner_jaxprs(eqn)
        avals = [getattr(v, "aval", None) for v in list(eqn.invars) + list(eqn.outvars)]
        if eqn.primitive.name == "scan" or (inner and any(has_complex(j) for j in inner)):
            outs = _higher(eqn, invals)
        elif any(_is_complex(a) for a in avals) or any(isinstance(v, Pair) for v in invals):
            outs = _apply(eqn, invals)
        else:
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        for v, val in zip(eqn.outvars, outs):
            env[v] = val
    return [read(v) for v in jaxpr.outvars]


def realify(closed):
    """``f(*real_args) -> list of real outputs`` computing ``closed`` (a ClosedJaxpr), with every complex
    input and output split into its real part then its imaginary part."""
    in_complex = [_is_complex(v.aval) for v in closed.jaxpr.invars]

    def f(*args):
        args, k = list(args), 0
        vals = []
        for c in in_complex:
            vals.append(Pair(args[k], args[k + 1]) if c else args[k])
            k += 2 if c else 1
        outs = _eval(closed.jaxpr, closed.consts, *vals)
        flat = []
        for o in outs:
            flat += [o.re, o.im] if isinstance(o, Pair) else [o]
        return flat

    return f
