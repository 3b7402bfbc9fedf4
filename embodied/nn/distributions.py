"""Distributions and transforms of DreamerV3 (Hafner et al., 2023): symlog, two-hot, categorical latents.

Functions of logits compute in float32 whatever the logits' dtype (see `embodied.nn.precision`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def symlog(x):
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x):
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


def twohot_bins(count: int = 255, low: float = -20.0, high: float = 20.0) -> jax.Array:
    """Bin centres in symlog space."""
    return jnp.linspace(low, high, count)


def twohot(x: jax.Array, bins: jax.Array) -> jax.Array:
    """Encodes symlog(x) (...) as weights (..., K) on its two nearest bins."""
    y = jnp.clip(symlog(x), bins[0], bins[-1])
    above = jnp.clip(jnp.searchsorted(bins, y, side="right"), 1, len(bins) - 1)
    below = above - 1
    weight_above = (y - bins[below]) / (bins[above] - bins[below])
    return jax.nn.one_hot(below, len(bins)) * (1 - weight_above)[..., None] + jax.nn.one_hot(above, len(bins)) * weight_above[..., None]


def twohot_loss(logits: jax.Array, x: jax.Array, bins: jax.Array) -> jax.Array:
    """Cross-entropy of logits (..., K) against two-hot(x) (...)."""
    return -(twohot(x, bins) * jax.nn.log_softmax(_f32(logits))).sum(-1)


def twohot_mean(logits: jax.Array, bins: jax.Array) -> jax.Array:
    """The expected value, mapped back through symexp."""
    return symexp((jax.nn.softmax(_f32(logits)) * bins).sum(-1))


def unimix_logits(logits: jax.Array, unimix: float) -> jax.Array:
    """Mixes each categorical with a uniform: probabilities never reach zero, so KLs stay finite."""
    probs = jax.nn.softmax(_f32(logits))
    probs = (1 - unimix) * probs + unimix / logits.shape[-1]
    return jnp.log(probs)


def sample_straight_through(key: jax.Array, logits: jax.Array) -> jax.Array:
    """One-hot samples (..., V, K) whose gradient is that of the probabilities."""
    sample = jax.nn.one_hot(jax.random.categorical(key, logits), logits.shape[-1])
    probs = jax.nn.softmax(logits)
    return probs + jax.lax.stop_gradient(sample - probs)


def categorical_kl(lhs_logits: jax.Array, rhs_logits: jax.Array) -> jax.Array:
    """KL(lhs || rhs) summed over the V variables of (..., V, K) -> (...)."""
    lhs = jax.nn.log_softmax(_f32(lhs_logits))
    rhs = jax.nn.log_softmax(_f32(rhs_logits))
    return (jnp.exp(lhs) * (lhs - rhs)).sum((-2, -1))
