"""Latent model-predictive control: MPPI over action sequences in the world model's imagination.

Each control step, from the state after observing o_t, for every environment:
sample `samples` action sequences of length H around a mean (seeded by the
actor's own imagined rollout), roll them all out in the world model at once,
score each by its discounted imagined reward plus the critic's value at the
horizon (both weighted by the predicted chance of not having terminated),
and refit the mean and spread to the best `elites`, weighted by
exp(temperature * (score - best)), as TD-MPC2 does (Hansen et al., 2024).
After `iterations` refits, the first action of the mean is taken (plus
the final spread's noise when exploring). Continuous actions only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from embodied.config import require
from embodied.worldmodel import ImagineState, WorldModel, imagine


@dataclasses.dataclass(frozen=True)
class MPCConfig:
    horizon: int = 8
    samples: int = 256
    """Action sequences scored per environment and iteration."""
    elites: int = 32
    iterations: int = 4
    temperature: float = 0.5
    init_std: float = 1.0
    min_std: float = 0.05

    def __post_init__(self):
        require(self, {
            "horizon": (self.horizon >= 1, ">= 1"),
            "samples": (self.samples >= 1, ">= 1"),
            "iterations": (self.iterations >= 1, ">= 1"),
            "elites": (1 <= self.elites <= self.samples, f"in [1, samples={self.samples}]"),
        }, prefix="mpc.")


def score(model: WorldModel, value, start: ImagineState, actions: jax.Array, key: jax.Array, discount: float) -> jax.Array:
    """Discounted imagined return of each action sequence (N, H, A) from `start` (N, ...) -> (N,)."""
    traj = imagine(model, None, start, actions.shape[1], key, actions=actions)
    H = actions.shape[1]
    alive = jnp.cumprod(traj.continues, 1)  # chance of not having terminated after each step
    gammas = discount ** jnp.arange(H)
    rewards = (gammas * jnp.concatenate([jnp.ones_like(alive[:, :1]), alive[:, :-1]], 1) * traj.rewards).sum(1)
    return rewards + discount**H * alive[:, -1] * value(traj.features[:, -1])


def plan(config: MPCConfig, model: WorldModel, actor, value, state: ImagineState, key: jax.Array,
         *, discount: float, explore: bool) -> jax.Array:
    """The first action (B, A) of the refined plan from each state in `state` (B, ...)."""
    B = state.y.shape[0]
    N, H, E = config.samples, config.horizon, config.elites
    seed_key, noise_key, *iter_keys = jax.random.split(key, 2 + config.iterations)
    # The actor's own plan seeds the mean.
    seed = imagine(model, lambda f, _: actor.mode(f), state, H, seed_key)
    mean, std = seed.actions, jnp.full_like(seed.actions, config.init_std)  # (B, H, A)
    repeat = lambda x: jnp.repeat(x, N, axis=0)  # noqa: E731
    starts = jax.tree.map(repeat, state)

    def refine(carry, key):
        mean, std = carry
        sample_key, model_key = jax.random.split(key)
        noise = jax.random.normal(sample_key, (B, N, *mean.shape[1:]))
        actions = jnp.clip(mean[:, None] + std[:, None] * noise, -1.0, 1.0)
        actions = actions.at[:, 0].set(mean)  # keep the current mean among the candidates
        returns = score(model, value, starts, actions.reshape(B * N, *mean.shape[1:]), model_key, discount).reshape(B, N)
        top, index = jax.lax.top_k(returns, E)
        elite = jnp.take_along_axis(actions, index[:, :, None, None], 1)  # (B, E, H, A)
        weight = jax.nn.softmax(config.temperature * (top - top[:, :1]), axis=1)[:, :, None, None]
        mean = (weight * elite).sum(1)
        std = jnp.sqrt((weight * (elite - mean[:, None]) ** 2).sum(1)).clip(config.min_std, config.init_std)
        return (mean, std), returns.max(1)

    (mean, std), _ = jax.lax.scan(refine, (mean, std), jnp.stack(iter_keys))
    action = mean[:, 0]
    if explore:
        action = jnp.clip(action + std[:, 0] * jax.random.normal(noise_key, action.shape), -1.0, 1.0)
    return action
