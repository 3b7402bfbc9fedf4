"""Returns of imagined trajectories and their normalisation (DreamerV3, Hafner et al., 2023, sec. 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lambda_returns(rewards: jax.Array, values: jax.Array, discounts: jax.Array, lam: float | jax.Array) -> jax.Array:
    """TD(lambda) returns, computed backwards. Shapes (N, H) for rewards r_{t+1} and discounts
    gamma * continue_{t+1}; values (N, H+1) for v(s_0) .. v(s_H). Returns R_0 .. R_{H-1} (N, H):

        R_H = v_H,   R_t = r_{t+1} + d_{t+1} ((1 - lam_t) v_{t+1} + lam_t R_{t+1}).

    `lam` is a number or (N, H): 0 at a step cuts the return there to its bootstrap value.
    """

    def body(next_return, inputs):
        reward, discount, next_value, lam = inputs
        ret = reward + discount * ((1.0 - lam) * next_value + lam * next_return)
        return ret, ret

    xs = (rewards.T, discounts.T, values[:, 1:].T, jnp.broadcast_to(lam, rewards.shape).T)
    _, returns = jax.lax.scan(body, values[:, -1], xs, reverse=True)
    return returns.T


def replay_returns(batch: dict, boot: jax.Array, discount: float, lam: float) -> tuple[jax.Array, jax.Array]:
    """TD(lambda) returns along replayed real sequences [B, T], for the critic (DreamerV3's replay value loss).

    The real rewards r_{t+1} and terminals drive the return; `boot` (B, T), a value of each replayed
    state (the imagined return from it), bootstraps it, at the sequence's end and wherever an episode
    ends. Returns R_0 .. R_{T-2} (B, T-1) and their weights: 0 for a step whose successor starts a new
    episode (no real transition follows it).
    """
    first = batch["is_first"].astype(jnp.float32)
    discounts = discount * (1.0 - batch["is_terminal"][:, 1:].astype(jnp.float32))
    # Step t+1 is an episode's last when step t+2 starts the next one: cut the return there.
    ends = jnp.concatenate([first[:, 2:], jnp.zeros_like(first[:, :1])], 1)
    returns = lambda_returns(batch["reward"][:, 1:].astype(jnp.float32), boot, discounts, lam * (1.0 - ends))
    return returns, 1.0 - first[:, 1:]


def update_return_range(range_ema: jax.Array, returns: jax.Array, decay: float,
                        low: float = 5.0, high: float = 95.0) -> jax.Array:
    """EMA of the (low, high) percentiles of the returns: (2,) -> (2,)."""
    now = jnp.percentile(returns, jnp.array([low, high]))
    return decay * range_ema + (1.0 - decay) * now


def return_scale(range_ema: jax.Array) -> jax.Array:
    """Divide advantages by this: the percentile range, but never below 1, so that small
    returns are not blown up into noise (DreamerV3's max(1, S))."""
    return jnp.maximum(1.0, range_ema[1] - range_ema[0])
