"""Imagination: the world model rolled forward in recurrent mode inside `jax.lax.scan`.

Memory per step is the backbone carry (O(1) for the SSM and GRU; the
Transformer's key/value cache is O(context)), never the whole history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from embodied.worldmodel.model import ImagineState, WorldModel

Policy = Callable[[jax.Array, jax.Array], jax.Array]
"""(features (B, F), key) -> action (B, A)."""


class Trajectory(NamedTuple):
    """Imagined steps, each (B, H, ...): z_{t+1}, a_t, r_{t+1}, continue_{t+1}; and features (B, H+1, F)
    at t = 0..H: what the policy saw before each action, then the final state's (for bootstrapping)."""

    latents: jax.Array
    actions: jax.Array
    rewards: jax.Array
    continues: jax.Array
    features: jax.Array
    frames: jax.Array | None


def imagine(model: WorldModel, policy: Policy | None, start: ImagineState, horizon: int, key: jax.Array,
            *, actions: jax.Array | None = None, decode: bool = False, context: jax.Array | None = None) -> Trajectory:
    """Rolls `horizon` steps from `start`, choosing actions with `policy` or playing `actions` (B, H, A).

    `decode` also draws the imagined frames; a model with `decoder_skip` draws them from `context`,
    the last real frame (B, H, W, 3) uint8."""
    if (policy is None) == (actions is None):
        raise ValueError("imagine needs exactly one of policy or actions.")

    def body(state: ImagineState, inputs):
        step_key, recorded = inputs
        policy_key, model_key = jax.random.split(step_key)
        feat = model.features(state.y, state.z)
        action = policy(jax.lax.stop_gradient(feat), policy_key) if recorded is None else recorded
        state, reward, cont = model.imagine_step(state, action, model_key)
        return state, (state.z, action, reward, cont, feat)

    keys = jax.random.split(key, horizon)
    xs = (keys, None if actions is None else jnp.swapaxes(actions, 0, 1))
    final, (z, a, r, c, f) = jax.lax.scan(body, start, xs)
    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    z, a, r, c, f = map(swap, (z, a, r, c, f))
    f = jnp.concatenate([f, model.features(final.y, final.z)[:, None]], 1)
    frames = None
    if decode and model.spec.image is not None:
        distance = jnp.arange(1, z.shape[1] + 1)  # imagined step k is k steps after the start's frame
        y = f[:, 1:, : model.config.backbone.dim]  # the output each latent was drawn from
        frames = jnp.clip(model.decode(z, None if context is None else context[:, None], distance=distance, y=y)["image"] + 0.5, 0.0, 1.0)
    return Trajectory(z, a, r, c, f, frames)
