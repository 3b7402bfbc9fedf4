"""Initialisers that draw the numbers JAX and Flax draw, at a fraction of the compile time.

Building a model draws each parameter eagerly, and XLA compiles `jax.random.truncated_normal`
once per shape: on the CPU about 0.4 s for a 2-D shape and 1-4 s for a convolution's 4-D
kernel (the threefry hash unrolled for that layout). A small world model spent 22 of its 23
seconds of construction there.

JAX's threefry draws (partitionable, the default) depend only on the key and each element's
position in the flattened array, so a longer flat draw begins with the same numbers. These
initialisers draw a flat array whose length is the next power of two, keep the first
`prod(shape)` numbers and reshape them: the values equal Flax's and JAX's exactly
(`tests/test_init.py`), and a process compiles one draw per power of two instead of
one per shape. (Under another PRNG, `jax_default_prng_impl` or a non-partitionable threefry,
the numbers are as random but not the same as Flax's.)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx


def _flat(draw, key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    size = math.prod(shape)
    bucket = 1 << max(size - 1, 0).bit_length()
    return draw(key, (bucket,), dtype)[:size].reshape(shape)


def normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """`jax.random.normal(key, shape, dtype)`, value for value."""
    return _flat(jax.random.normal, key, shape, dtype)


def lecun_normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """`flax.nnx.initializers.lecun_normal()(key, shape, dtype)`, value for value.

    Fan-in is every axis but the last (a kernel's input features times its receptive field);
    the draw is a normal truncated at two standard deviations, rescaled to variance 1/fan-in.
    """
    if len(shape) < 2:
        raise ValueError(f"lecun_normal needs a kernel of at least 2 axes (inputs..., outputs); got shape {shape}.")
    variance = jnp.array(1.0 / math.prod(shape[:-1]), dtype)
    stddev = jnp.sqrt(variance) / jnp.array(0.87962566103423978, dtype)  # the std of a unit normal cut at +-2
    draw = lambda key, shape, dtype: jax.random.truncated_normal(key, -2, 2, shape, dtype)  # noqa: E731
    return _flat(draw, key, shape, dtype) * stddev


Linear = functools.partial(nnx.Linear, kernel_init=lecun_normal)
"""`nnx.Linear` with its default initialiser drawn flat (`lecun_normal` above)."""
