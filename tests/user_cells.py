"""User-defined cells shared by the Flax wrapper tests (tests/ is on sys.path under pytest)."""

import jax
import jax.numpy as jnp

import memcell


def leaky_cell(hidden_size):
    """A user-defined cell with dict params and a bare-array carry: h' = a * h + tanh(x W)."""

    def init(key, input_size):
        w = jax.random.normal(key, (input_size, hidden_size)) / input_size**0.5
        return {"w": w, "a": jnp.full((hidden_size,), 0.5)}

    def initial_carry(params, batch_shape=()):
        return jnp.zeros(tuple(batch_shape) + (params["w"].shape[1],))

    def step(params, h, x):
        h = params["a"] * h + jnp.tanh(x @ params["w"])
        return h, h

    return memcell.Cell(init, initial_carry, step)
