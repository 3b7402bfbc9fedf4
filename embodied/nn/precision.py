"""Mixed precision: parameters stay float32; a step computes in a lower precision.

The train step casts its float32 parameters to the compute dtype before merging
them into the modules. Modules compute in the dtype of their parameters (their
inputs are cast at the model's entry points), the gradient of the cast carries
float32 gradients back to the float32 parameters and optimiser moments, and the
losses, logits and two-hot means are computed in float32
(`embodied.nn.distributions` casts up). Complex SSM parameters are left alone:
there is no bfloat16 complex type, and the scan runs in complex64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype={name!r} is not supported; allowed: {', '.join(COMPUTE_DTYPES)}.")
    return COMPUTE_DTYPES[name]


def cast(tree, dtype):
    """Every real floating-point leaf of `tree` in `dtype`; integer and complex leaves unchanged."""
    if dtype == jnp.float32:
        return tree

    def leaf(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(leaf, tree)
