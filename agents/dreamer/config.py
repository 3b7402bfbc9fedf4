"""The actor-critic's settings. The world model's live in `embodied.worldmodel`."""

from __future__ import annotations

import dataclasses
from typing import Literal

from embodied.config import require
from embodied.worldmodel import OptimConfig


@dataclasses.dataclass(frozen=True)
class DreamerConfig:
    horizon: int = 15
    """Imagined steps H from each imagination start."""
    starts: float = 1.0
    """Fraction of the replayed steps [B, T] that imagination starts from, drawn at random each
    update. 1 starts from every step, as DreamerV3 does; a smaller fraction with a longer
    `horizon` imagines as many steps further ahead for the same cost."""
    discount: float = 0.997
    """gamma, per policy step (an effective horizon of about 333 steps)."""
    lam: float = 0.95
    """lambda of the TD(lambda) returns."""
    units: int = 256
    layers: int = 2
    """Hidden layers of the actor and the critic."""
    entropy: float = 3e-4
    """Entropy bonus on normalised advantages."""
    actor_grad: Literal["reinforce", "backprop"] = "reinforce"
    """How the actor learns from imagined returns. reinforce: the score function on advantages
    (DreamerV3's current choice). backprop: the returns' own gradient through the world model's
    dynamics (reparameterised actions, straight-through latents), as Dreamer v1/v2 and the 2023
    DreamerV3 did for continuous actions; continuous actions only."""
    return_decay: float = 0.99
    """EMA decay of the 5th and 95th return percentiles that scale advantages."""
    slow_critic_decay: float = 0.98
    """EMA decay of the slow critic: the critic is pulled towards its predictions."""
    slow_critic_reg: float = 1.0
    replay_value: float = 0.0
    """Weight of a second critic loss on the replayed real sequences (DreamerV3's replay value loss,
    0.3 there): TD(lambda) returns of the real rewards over the replayed steps, bootstrapped at every
    step by the imagined return from it. 0 turns it off."""
    min_std: float = 0.1
    max_std: float = 1.0
    explore_noise: float = 0.0
    """Exploration while collecting (Dreamer v1's `expl_amount`): Gaussian noise of this standard
    deviation added to each sampled continuous action before the clip, or for discrete actions the
    chance of a uniform random one. Evaluation acts without it, and imagination never sees it. A
    policy that acts almost deterministically fills the replay with actions its states predict,
    and a world model trained on that replay learns little of what an action does (docs/agent-experiments.md)."""
    actor_optim: OptimConfig = OptimConfig(lr=3e-4, eps=1e-5, clip=100.0)
    critic_optim: OptimConfig = OptimConfig(lr=3e-4, eps=1e-5, clip=100.0)

    def __post_init__(self):
        require(self, {
            "horizon": (self.horizon >= 1, ">= 1"),
            "starts": (0.0 < self.starts <= 1.0, "in (0, 1]"),
            "discount": (0.0 < self.discount <= 1.0, "in (0, 1]"),
            "lam": (0.0 <= self.lam <= 1.0, "in [0, 1]"),
            "units": (self.units >= 1, ">= 1"),
            "layers": (self.layers >= 0, ">= 0"),
            "entropy": (self.entropy >= 0.0, ">= 0"),
            "replay_value": (self.replay_value >= 0.0 and (self.replay_value == 0.0 or self.starts == 1.0),
                             ">= 0, and 0 unless starts is 1 (it bootstraps every replayed step)"),
            "return_decay": (0.0 <= self.return_decay < 1.0, "in [0, 1)"),
            "slow_critic_decay": (0.0 <= self.slow_critic_decay < 1.0, "in [0, 1)"),
            "min_std": (0.0 < self.min_std <= self.max_std, f"in (0, max_std={self.max_std}]"),
            "explore_noise": (self.explore_noise >= 0.0, ">= 0"),
        }, prefix="agent.")
