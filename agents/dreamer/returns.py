"""Returns of imagined trajectories and their normalisation (DreamerV3, Hafner et al., 2023, sec. 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lambda_returns(rewards: jax.Array, values: jax.Array, discounts: jax.Array, lam: float) -> jax.Array:
    """TD(lambda) returns, computed backwards. Shapes (N, H) for rewards r_{t+1} and discounts
    gamma * continue_{t+1}; values (N, H+1) for v(s_0) .. v(s_H). Returns R_0 .. R_{H-1} (N, H):

        R_H = v_H,   R_t = r_{t+1} + d_{t+1} ((1 - lam) v_{t+1} + lam R_{t+1}).
    """

    def body(next_return, inputs):
        reward, discount, next_value = inputs
        ret = reward + discount * ((1.0 - lam) * next_value + lam * next_return)
        return ret, ret

    xs = (rewards.T, discounts.T, values[:, 1:].T)
    _, returns = jax.lax.scan(body, values[:, -1], xs, reverse=True)
    return returns.T


def update_return_range(range_ema: jax.Array, returns: jax.Array, decay: float,
                        low: float = 5.0, high: float = 95.0) -> jax.Array:
    """EMA of the (low, high) percentiles of the returns: (2,) -> (2,)."""
    now = jnp.percentile(returns, jnp.array([low, high]))
    return decay * range_ema + (1.0 - decay) * now


def return_scale(range_ema: jax.Array) -> jax.Array:
    """Divide advantages by this: the percentile range, but never below 1, so that small
    returns are not blown up into noise (DreamerV3's max(1, S))."""
    return jnp.maximum(1.0, range_ema[1] - range_ema[0])
