"""Dreamer: a world model trained on replay, and an actor-critic trained on its imagination.

Follows DreamerV3 (Hafner et al., 2023) with the temporal backbone swapped for
any of `embodied.worldmodel.BACKBONES` (an S5-style SSM by default, as in S5WM
and R2I). One `train` call:

1. World model: its loss on a replayed batch [B, T]; the same pass gives an
   imagination start at every replayed step (B*T starts, gradients stopped; `starts` < 1
   imagines from a random subset of them).
2. Imagination: the actor rolls the world model H steps from every start in
   recurrent mode (`lax.scan`).
3. Actor: maximises imagined returns scaled by the 5-95th return percentile range,
   plus an entropy bonus; steps after a predicted termination are down-weighted.
   REINFORCE by default; for continuous actions `actor_grad="backprop"` follows
   the returns' gradient through the dynamics instead.
4. Critic: two-hot symlog regression onto the same TD(lambda) returns, pulled
   towards a slow EMA copy of itself.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from agents.dreamer import returns as ret
from agents.dreamer.config import DreamerConfig
from agents.dreamer.networks import Actor, Critic
from agents.mpc import MPCConfig, plan
from embodied.nn import precision
from embodied.worldmodel import ImagineState, OptimConfig, Spec, WorldModel, WorldModelConfig, imagine, make_optimizer


@flax.struct.dataclass
class Part:
    """One trained network: its parameters, its other variables, its optimiser state."""

    params: nnx.State
    rest: nnx.State
    opt_state: optax.OptState


@flax.struct.dataclass
class DreamerState:
    world_model: Part
    actor: Part
    critic: Part
    slow_critic: nnx.State
    """EMA of the critic's parameters."""
    return_range: jax.Array
    """EMA of the 5th and 95th percentiles of imagined returns (2,)."""
    step: jax.Array
    """Train calls so far."""


class Dreamer:
    """Builds the networks once; `train` and `policy` are pure functions of a `DreamerState`."""

    def __init__(self, spec: Spec, model: WorldModelConfig = WorldModelConfig(), config: DreamerConfig = DreamerConfig(),
                 model_optim: OptimConfig = OptimConfig(), *, discrete: bool = False, compute_dtype: str = "float32"):
        """`compute_dtype="bfloat16"`: `train` computes in bfloat16 from float32 parameters
        (`embodied.nn.precision`); acting stays in float32."""
        self.spec, self.model_config, self.config, self.discrete = spec, model, config, discrete
        self.dtype = precision.compute_dtype(compute_dtype)
        if discrete and config.actor_grad == "backprop":
            raise ValueError("agent.actor_grad='backprop' needs continuous actions (it differentiates the sampled "
                             "action); this task's are discrete: use 'reinforce'.")
        self.features = model.backbone.dim + model.latent_vars * model.latent_classes
        self.optimizers = {
            "world_model": make_optimizer(model_optim),
            "actor": make_optimizer(config.actor_optim),
            "critic": make_optimizer(config.critic_optim),
        }
        # Shapes only, no parameters: the graphs that pure functions merge parameters into.
        self._abstract = nnx.eval_shape(lambda: self._modules(0))
        self._graphs = {name: nnx.split(module, nnx.Param, ...)[0] for name, module in self._abstract.items()}

    def _modules(self, seed: int) -> dict[str, nnx.Module]:
        rngs = nnx.Rngs(seed)
        c = self.config
        return {
            "world_model": WorldModel(self.model_config, self.spec, rngs=rngs),
            "actor": Actor(self.features, self.spec.action, discrete=self.discrete, units=c.units, layers=c.layers,
                           min_std=c.min_std, max_std=c.max_std, rngs=rngs),
            "critic": Critic(self.features, units=c.units, layers=c.layers, rngs=rngs),
        }

    def init(self, seed: int) -> DreamerState:
        parts = {}
        for name, module in self._modules(seed).items():
            _, params, rest = nnx.split(module, nnx.Param, ...)
            parts[name] = Part(params, rest, self.optimizers[name].init(params))
        return DreamerState(**parts, slow_critic=jax.tree.map(jnp.copy, parts["critic"].params), return_range=jnp.zeros(2),
                            step=jnp.zeros((), jnp.int32))

    def module(self, name: str, part: Part, params: nnx.State | None = None) -> nnx.Module:
        return nnx.merge(self._graphs[name], part.params if params is None else params, part.rest)

    def _compute(self, name: str, part: Part, params: nnx.State | None = None) -> nnx.Module:
        """The module with its parameters cast to the compute dtype (gradients flow back to float32)."""
        return self.module(name, part, precision.cast(part.params if params is None else params, self.dtype))

    def parameter_counts(self, state: DreamerState) -> dict[str, int]:
        return {name: sum(x.size for x in jax.tree.leaves(getattr(state, name).params)) for name in self.optimizers}

    # Training.

    def train(self, state: DreamerState, batch: dict, key: jax.Array) -> tuple[DreamerState, dict]:
        c = self.config
        wm_key, imagine_key = jax.random.split(key)

        # World model.
        def wm_loss(params):
            model = self._compute("world_model", state.world_model, params)
            observation = model.observe(batch, wm_key)
            loss, metrics = model.loss_of(batch, observation)
            return loss, (metrics, model.starts(batch, observation))

        (_, (metrics, starts)), grads = jax.value_and_grad(wm_loss, has_aux=True)(state.world_model.params)
        world_model = self._apply("world_model", state.world_model, grads)
        metrics["wm_grad_norm"] = optax.tree.norm(grads)

        # Imagination, from every replayed step, under the world model the batch was scored with.
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        starts = jax.tree.map(flat, starts)
        first_cont = 1.0 - flat(batch["is_terminal"]).astype(jnp.float32)
        if c.starts < 1.0:
            count = first_cont.shape[0]
            chosen = jax.random.choice(jax.random.fold_in(key, 1), count, (max(1, round(c.starts * count)),), replace=False)
            starts, first_cont = jax.tree.map(lambda x: x[chosen], (starts, first_cont))
        model = self._compute("world_model", state.world_model)
        critic = self._compute("critic", state.critic)
        backprop = c.actor_grad == "backprop"

        def rollout(actor):
            """Imagine from every start and score it: the trajectory, its returns, values, weights,
            the updated return range and the normalised advantages (differentiable in the actor
            through the dynamics; REINFORCE stops them)."""
            traj = imagine(model, functools.partial(actor.sample, clip=False), starts, c.horizon, imagine_key)
            values = critic.value(traj.features)
            returns = ret.lambda_returns(traj.rewards, values, c.discount * traj.continues, c.lam)
            weight = jax.lax.stop_gradient(jnp.cumprod(jnp.concatenate([first_cont[:, None], traj.continues[:, :-1]], 1), 1))
            return_range = ret.update_return_range(state.return_range, jax.lax.stop_gradient(returns), c.return_decay)
            advantage = (returns - jax.lax.stop_gradient(values[:, :-1])) / ret.return_scale(return_range)
            return traj, returns, values, weight, return_range, advantage

        # Actor. With backprop, imagination runs inside the loss and the normalised returns are the
        # objective; with REINFORCE, it runs once outside and only log-probabilities are differentiated.
        def actor_loss(params, scored=None):
            actor = self._compute("actor", state.actor, params)
            traj, returns, values, weight, return_range, advantage = rollout(actor) if scored is None else scored
            logp, entropy = actor.log_prob_entropy(jax.lax.stop_gradient(traj.features[:, :-1]), jax.lax.stop_gradient(traj.actions))
            objective = advantage if scored is None else logp * advantage
            loss = -(weight * (objective + c.entropy * entropy)).mean()
            return loss, (jax.lax.stop_gradient((traj, returns, values, weight)), return_range, entropy.mean())

        scored = None if backprop else jax.lax.stop_gradient(rollout(self._compute("actor", state.actor)))
        (a_loss, ((traj, returns, values, weight), return_range, entropy)), grads = jax.value_and_grad(
            actor_loss, has_aux=True)(state.actor.params, scored)
        actor_part = self._apply("actor", state.actor, grads)
        features = traj.features

        # Critic: on imagined trajectories, and (replay_value > 0) on the replayed real sequences,
        # whose features are the imagination starts' and whose bootstrap is the imagined return.
        slow_critic = self._compute("critic", state.critic, state.slow_critic)
        slow_values = slow_critic.value(features[:, :-1])
        if c.replay_value > 0:
            B, T = batch["is_first"].shape
            replay_features = features[:, 0].reshape(B, T, -1)[:, :-1]
            replay_targets, replay_weight = ret.replay_returns(batch, returns[:, 0].reshape(B, T), c.discount, c.lam)
            replay_slow = slow_critic.value(replay_features)
            metrics["replay_return"] = (replay_weight * replay_targets).sum() / jnp.maximum(replay_weight.sum(), 1.0)

        def critic_loss(params):
            net = self._compute("critic", state.critic, params)
            regressed = lambda f, target, slow: net.loss(f, target) + c.slow_critic_reg * net.loss(f, slow)  # noqa: E731
            loss = (weight * regressed(features[:, :-1], returns, slow_values)).mean()
            if c.replay_value > 0:
                loss += c.replay_value * (replay_weight * regressed(replay_features, replay_targets, replay_slow)).mean()
            return loss

        c_loss, grads = jax.value_and_grad(critic_loss)(state.critic.params)
        critic_part = self._apply("critic", state.critic, grads)
        slow = jax.tree.map(lambda s, p: c.slow_critic_decay * s + (1 - c.slow_critic_decay) * p, state.slow_critic, critic_part.params)

        metrics.update(
            actor_loss=a_loss, critic_loss=c_loss, actor_entropy=entropy, imagined_reward=traj.rewards.mean(),
            imagined_return=returns.mean(), value=values.mean(), return_scale=ret.return_scale(return_range),
        )
        new = DreamerState(world_model, actor_part, critic_part, slow, return_range, state.step + 1)
        metrics["skipped"] = self.skipped(new)
        return new, metrics

    @staticmethod
    def skipped(state: DreamerState) -> jax.Array:
        """Updates skipped so far for a non-finite loss or gradient, over the three networks."""
        return sum(getattr(state, name).opt_state.total_notfinite for name in ("world_model", "actor", "critic"))

    def _apply(self, name: str, part: Part, grads) -> Part:
        updates, opt_state = self.optimizers[name].update(grads, part.opt_state, part.params)
        return part.replace(params=optax.apply_updates(part.params, updates), opt_state=opt_state)

    # Acting.

    def init_policy(self, batch: int) -> ImagineState:
        return self._abstract["world_model"].initial_state(batch)

    def policy(self, state: DreamerState, policy_state: ImagineState, obs: dict, key: jax.Array,
               explore: bool = True, planner: MPCConfig | None = None) -> tuple[jax.Array, ImagineState]:
        """obs: `image` and/or `proprio` (B, ...) and `is_first` (B,). Samples the actor when
        exploring, takes its mode otherwise; with a `planner`, plans in latent space instead
        (the actor's rollout seeds the plan)."""
        model = self.module("world_model", state.world_model)
        actor = self.module("actor", state.actor)
        if planner is not None:
            critic = self.module("critic", state.critic)

            def choose(s, key):
                return plan(planner, model, actor, critic.value, s, key, discount=self.config.discount, explore=explore)
        elif explore:
            choose = lambda s, key: actor.sample(model.features(s.y, s.z), key)  # noqa: E731
        else:
            choose = lambda s, key: actor.mode(model.features(s.y, s.z))  # noqa: E731
        if explore and self.config.explore_noise > 0:
            choose = functools.partial(self._add_noise, choose)
        return model.act_step(policy_state, obs, obs["is_first"], choose, key)

    def dream(self, state: DreamerState, policy_state: ImagineState, obs: dict, key: jax.Array,
              horizon: int, samples: int = 1) -> tuple[jax.Array, ImagineState, jax.Array]:
        """`policy` with the actor's mode, and the dream it acts in: from the state before the action,
        the world model imagines `horizon` steps with the same actor (latents sampled from the prior,
        as in training). Returns the action, the next policy state, and the imagined reward of those
        steps (B,), each step weighted by the predicted chance that the episode still runs; with
        `samples` K, the mean over K dreams from the same state (what is left of the error is not
        the spread of the prior's samples)."""
        model = self.module("world_model", state.world_model)
        actor = self.module("actor", state.actor)
        dreamed = []

        def choose(start, key):
            B = start.y.shape[0]
            tiled = jax.tree.map(lambda x: jnp.repeat(x, samples, 0), start)  # (B * K, ...), each start K times over
            traj = imagine(model, lambda features, _: actor.mode(features), tiled, horizon, key)
            alive = jnp.cumprod(jnp.concatenate([jnp.ones_like(traj.continues[:, :1]), traj.continues[:, :-1]], 1), 1)
            dreamed.append((alive * traj.rewards).sum(1).reshape(B, samples).mean(1))
            return actor.mode(model.features(start.y, start.z))

        action, policy_state = model.act_step(policy_state, obs, obs["is_first"], choose, key)
        return action, policy_state, dreamed[0]

    def _add_noise(self, choose, s: ImagineState, key: jax.Array) -> jax.Array:
        """`choose`'s action with `explore_noise`: Gaussian noise then the clip for continuous
        actions, a uniform random action with that chance for discrete ones."""
        choose_key, noise_key, pick_key = jax.random.split(key, 3)
        action, amount = choose(s, choose_key), self.config.explore_noise
        if not self.discrete:
            return jnp.clip(action + amount * jax.random.normal(noise_key, action.shape), -1.0, 1.0)
        uniform = jax.nn.one_hot(jax.random.randint(noise_key, action.shape[:-1], 0, action.shape[-1]), action.shape[-1])
        return jnp.where(jax.random.uniform(pick_key, action.shape[:-1] + (1,)) < amount, uniform, action)
