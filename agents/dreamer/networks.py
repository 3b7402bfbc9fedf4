"""The actor and the critic: MLPs on world-model features (DreamerV3, Hafner et al., 2023).

- Actor, continuous actions: a bounded Gaussian (mean tanh-squashed into [-1, 1],
  standard deviation in [min_std, max_std]); actions sent to an environment are
  clipped to the action box.
- Actor, discrete actions: a categorical with 1% uniform mixed in, actions one-hot.
- Critic: a two-hot distribution over symlog-spaced bins; its output layer starts
  at zero, so the first value estimates are 0 rather than noise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from embodied.nn import distributions as dist
from embodied.nn import init


class MLP(nnx.Module):
    """Linear -> LayerNorm -> SiLU, `layers` times, then a linear output."""

    def __init__(self, inputs: int, outputs: int, units: int, layers: int, *, zero_out: bool = False, rngs: nnx.Rngs):
        sizes = [inputs] + [units] * layers
        self.hidden = nnx.List([init.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.norms = nnx.List([nnx.LayerNorm(b, rngs=rngs) for b in sizes[1:]])
        self.out = init.Linear(sizes[-1], outputs, kernel_init=nnx.initializers.zeros if zero_out else init.lecun_normal, rngs=rngs)

    def __call__(self, x):
        for linear, norm in zip(self.hidden, self.norms):
            x = jax.nn.silu(norm(linear(x)))
        return self.out(x)


class Actor(nnx.Module):
    """features (..., F) -> an action distribution over (..., A)."""

    def __init__(self, features: int, actions: int, *, discrete: bool, units: int, layers: int,
                 min_std: float = 0.1, max_std: float = 1.0, unimix: float = 0.01, rngs: nnx.Rngs):
        self.discrete, self.actions = discrete, actions
        self.min_std, self.max_std, self.unimix = min_std, max_std, unimix
        self.net = MLP(features, actions if discrete else 2 * actions, units, layers, rngs=rngs)

    def _params(self, features):
        out = self.net(features).astype(jnp.float32)
        if self.discrete:
            return dist.unimix_logits(out, self.unimix), None
        mean, std = jnp.split(out, 2, -1)
        return jnp.tanh(mean), (self.max_std - self.min_std) * jax.nn.sigmoid(std + 2.0) + self.min_std

    def sample(self, features: jax.Array, key: jax.Array, clip: bool = True) -> jax.Array:
        """An action; continuous samples are clipped to the action box unless `clip` is False.

        Training imagines with unclipped samples (the world model clips what it is given), so
        that the policy gradient takes the log-probability of what was drawn: at a clipped
        action, the log-probability of the box edge would bias the mean and shrink the std."""
        a, b = self._params(features)
        if self.discrete:
            return jax.nn.one_hot(jax.random.categorical(key, a), self.actions)
        sample = a + b * jax.random.normal(key, a.shape)
        return jnp.clip(sample, -1.0, 1.0) if clip else sample

    def mode(self, features: jax.Array) -> jax.Array:
        a, _ = self._params(features)
        return jax.nn.one_hot(jnp.argmax(a, -1), self.actions) if self.discrete else a

    def log_prob_entropy(self, features: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        """log pi(action | features) and the entropy of pi, each (...)."""
        a, b = self._params(features)
        if self.discrete:
            logp = jax.nn.log_softmax(a)
            return (logp * action).sum(-1), -(jnp.exp(logp) * logp).sum(-1)
        logp = -0.5 * ((action - a) / b) ** 2 - jnp.log(b) - 0.5 * math.log(2 * math.pi)
        entropy = jnp.log(b) + 0.5 * math.log(2 * math.pi * math.e)
        return logp.sum(-1), entropy.sum(-1)


class Critic(nnx.Module):
    """features (..., F) -> logits over two-hot symlog bins (..., bins)."""

    def __init__(self, features: int, *, units: int, layers: int, bins: int = 255, rngs: nnx.Rngs):
        self.net = MLP(features, bins, units, layers, zero_out=True, rngs=rngs)
        self.bins = nnx.Variable(dist.twohot_bins(bins))

    def __call__(self, features: jax.Array) -> jax.Array:
        return self.net(features)

    def value(self, features: jax.Array) -> jax.Array:
        return dist.twohot_mean(self(features), self.bins[...])

    def loss(self, features: jax.Array, target: jax.Array) -> jax.Array:
        return dist.twohot_loss(self(features), target, self.bins[...])
