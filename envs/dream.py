"""A trained world model as a Gymnasium environment: train any agent inside the dream.

    env = gymnasium.make("reverie/Dream-v0", checkpoint="runs/dmc-cartpole-swingup-small-0")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

`reset` starts from the posterior state of a real episode's first step, taken
from a dataset (by default the run's own replay) or from observations passed as
`reset(options={"observations": obs})`. `step` advances the backbone one
recurrent step, samples the prior latent, and returns the reward head's
prediction; `terminated` when the continue head gives less than even odds;
`truncated` after `horizon` steps. Observations are the decoded frame (the
real task's spaces) or the latent features (a Box). A model trained with
`--model.decoder-skip` draws every dreamed frame from the episode's real start
frame as well as from the latent (and, with `--model.decoder-distance`, is told
how many steps lie between them), as its open-loop evaluation does.

`DreamVectorEnv` steps N copies in one compiled call (Gymnasium's vector API,
SAME_STEP autoreset: an ended copy restarts from a new real start inside the
same step, and `info["final_obs"]` holds its last observation).
"""

from __future__ import annotations

import pathlib
from typing import Any, Literal

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from embodied.nn.distributions import symexp
from embodied.replay import EpisodeStore
from embodied.worldmodel import ImagineState, WorldModel
from embodied.worldmodel.io import load

Observation = Literal["image", "latent"]


class Dream:
    """The compiled pieces both environments share: start states, one step, observations."""

    def __init__(self, model: WorldModel, observation: Observation):
        if observation not in ("image", "latent"):
            raise ValueError(f"observation must be 'image' or 'latent'; got {observation!r}.")
        if observation == "image" and model.spec.image is None:
            raise ValueError("This world model has no image decoder (it was trained on proprio only); use observation='latent'.")
        self.model, self.kind = model, observation
        self.spec = model.spec
        graphdef, state = nnx.split(model)
        merged = lambda: nnx.merge(graphdef, state)  # noqa: E731
        self.start = jax.jit(lambda obs: merged().start(obs, jax.random.key(0)))
        self.step = jax.jit(lambda s, a, k: merged().imagine_step(s, a, k))
        # `start_frame` (B, H, W, 3) uint8 and `steps` (B,) int: the real frame each dream started
        # from and the steps taken since; only a model with decoder_skip draws from them.
        self.observe = jax.jit(lambda s, start_frame, steps: _observe(merged(), s, observation, start_frame, steps))
        self.frame = jax.jit(lambda s, start_frame, steps: _frame(merged(), s, start_frame, steps))

    def observation_space(self) -> gym.spaces.Space:
        if self.kind == "latent":
            features = self.model.config.backbone.dim + self.model.latent
            return gym.spaces.Box(-np.inf, np.inf, (features,), np.float32)
        spaces = {"image": gym.spaces.Box(0, 255, self.spec.image, np.uint8)}
        if self.spec.proprio is not None:
            spaces["proprio"] = gym.spaces.Box(-np.inf, np.inf, (self.spec.proprio,), np.float32)
        return gym.spaces.Dict(spaces)

    def action_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-1.0, 1.0, (self.spec.action,), np.float32)

    def check_observations(self, obs: dict, batch: int | None) -> dict:
        """Real observations (one, or `batch` of them) -> model inputs [B, 1, ...]; clear errors on a mismatch."""
        inputs = {}
        for name, shape in (("image", self.spec.image), ("proprio", (self.spec.proprio,) if self.spec.proprio else None)):
            if shape is None:
                continue
            if name not in obs:
                raise ValueError(f"reset observations need {name!r} {shape}; got keys {sorted(obs)}.")
            value = np.asarray(obs[name])
            expected = tuple(shape) if batch is None else (batch, *shape)
            if value.shape != expected:
                raise ValueError(f"reset observation {name!r} has shape {value.shape}; this world model takes {expected}.")
            inputs[name] = value[None] if batch is None else value
        n = 1 if batch is None else batch
        inputs = {k: jnp.asarray(v)[:, None] for k, v in inputs.items()}
        inputs["action"] = jnp.zeros((n, 1, self.spec.action))
        inputs["is_first"] = jnp.ones((n, 1), bool)
        return inputs


def _observe(model: WorldModel, state: ImagineState, kind: Observation, start_frame, steps):
    if kind == "latent":
        return model.features(state.y, state.z)
    out = model.decode(state.z, start_frame, distance=steps, y=state.y)
    obs = {"image": _uint8(out["image"])}
    if "proprio" in out:
        obs["proprio"] = symexp(out["proprio"])  # the decoder predicts symlog(proprio)
    return obs


def _frame(model: WorldModel, state: ImagineState, start_frame, steps) -> jax.Array:
    return _uint8(model.decode(state.z, start_frame, distance=steps, y=state.y)["image"])


def _uint8(image: jax.Array) -> jax.Array:
    return (jnp.clip(image + 0.5, 0.0, 1.0) * 255).astype(jnp.uint8)


def episode_starts(directory: str | pathlib.Path, spec_keys: tuple[str, ...], limit: int = 256) -> dict[str, np.ndarray]:
    """First observations of up to `limit` stored episodes (the newest), as arrays [N, ...]."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Dataset {directory} is not a directory of episodes; pass dataset= (a replay or "
                                f"experiments.collect directory), or reset(options={{'observations': ...}}).")
    store = EpisodeStore(directory)
    episodes = [e for e in map(store.read, store.paths()[-limit:]) if e is not None]
    if not episodes:
        raise ValueError(f"Dataset {directory} holds no readable episodes.")
    missing = [k for k in spec_keys if k not in episodes[0]]
    if missing:
        raise ValueError(f"Dataset {directory} has no {missing} observations, which this world model needs.")
    return {k: np.stack([e[k][0] for e in episodes]) for k in spec_keys}


def _resolve(checkpoint, model: WorldModel | None, dataset):
    if (checkpoint is None) == (model is None):
        raise ValueError("Pass exactly one of checkpoint= (a run directory) or model= (a WorldModel).")
    if model is None:
        model = load(checkpoint).model
        if dataset is None and (pathlib.Path(checkpoint) / "replay").is_dir():
            dataset = pathlib.Path(checkpoint) / "replay"
    return model, dataset


class DreamEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, checkpoint: str | pathlib.Path | None = None, *, model: WorldModel | None = None,
                 dataset: str | pathlib.Path | None = None, observation: Observation = "image", horizon: int = 1000,
                 render_mode: str | None = "rgb_array"):
        model, dataset = _resolve(checkpoint, model, dataset)
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1 step; got {horizon}.")
        self.dream = Dream(model, observation)
        self.observation_space = self.dream.observation_space()
        self.action_space = self.dream.action_space()
        self.render_mode, self.horizon = render_mode, horizon
        self._keys = tuple(k for k in ("image", "proprio") if getattr(model.spec, k) is not None)
        self._starts = None if dataset is None else episode_starts(dataset, self._keys)
        self._state: ImagineState | None = None
        self._start_frame: jax.Array | None = None  # the real frame the dream started from (1, H, W, 3)
        self._key, self._steps = jax.random.key(0), 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._key = jax.random.key(seed)
        options = options or {}
        if "observations" in options:
            inputs = self.dream.check_observations(options["observations"], None)
        elif self._starts is not None:
            index = self.np_random.integers(len(next(iter(self._starts.values()))))
            inputs = self.dream.check_observations({k: v[index] for k, v in self._starts.items()}, None)
        else:
            raise ValueError("DreamEnv has no dataset to start from: pass dataset= when making it, "
                             "or reset(options={'observations': {...}}) with a real first observation.")
        self._state, self._steps = self.dream.start(inputs), 0
        self._start_frame = inputs["image"][:, 0] if "image" in inputs else None
        return self._observation(), {}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("Call reset() before step().")
        action = np.asarray(action, np.float32)
        if action.shape != self.action_space.shape or not np.all(np.isfinite(action)) or np.any(np.abs(action) > 1.0):
            raise ValueError(f"Action {action!r} is outside the action space: shape {self.action_space.shape}, values in [-1, 1].")
        self._key, key = jax.random.split(self._key)
        self._state, reward, cont = self.dream.step(self._state, jnp.asarray(action)[None], key)
        self._steps += 1
        terminated = bool(cont[0] < 0.5)
        truncated = not terminated and self._steps >= self.horizon
        return self._observation(), float(reward[0]), terminated, truncated, {"continue": float(cont[0])}

    def render(self):
        if self._state is None or self.dream.spec.image is None:
            return None
        return np.asarray(self.dream.frame(self._state, self._start_frame, self._distance())[0])

    def _distance(self) -> jax.Array:
        return jnp.full(1, self._steps, jnp.int32)

    def _observation(self):
        obs = jax.device_get(self.dream.observe(self._state, self._start_frame, self._distance()))
        if isinstance(obs, dict):
            return {k: np.asarray(v[0], self.observation_space[k].dtype) for k, v in obs.items()}
        return np.asarray(obs[0], np.float32)


class LatentObservation(gym.Wrapper):
    """A real environment seen through a world model: each observation becomes the latent features
    [y, z] that `DreamEnv(observation="latent")` gives, so a policy trained only in the dream acts in
    the real task. The episode's first observation starts the state as `DreamEnv.reset` does; each
    step feeds the action taken and encodes the next real observation (`WorldModel.filter_step`)."""

    def __init__(self, env: gym.Env, checkpoint: str | pathlib.Path | None = None, *, model: WorldModel | None = None):
        super().__init__(env)
        model, _ = _resolve(checkpoint, model, None)
        self.dream = Dream(model, "latent")
        self.observation_space = self.dream.observation_space()
        if env.action_space.shape != self.dream.action_space().shape:
            raise ValueError(f"The environment's actions {env.action_space.shape} are not the world model's "
                             f"{self.dream.action_space().shape}: it was trained on another task.")
        graphdef, state = nnx.split(model)
        self._filter = jax.jit(lambda s, a, obs: nnx.merge(graphdef, state).filter_step(s, a, obs))
        self._state: ImagineState | None = None

    def _inputs(self, obs) -> dict:
        return {k: v[:, 0] for k, v in self.dream.check_observations(obs, None).items() if k in ("image", "proprio")}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._state = self.dream.start(self.dream.check_observations(obs, None))
        return self._features(), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._state = self._filter(self._state, jnp.asarray(action, jnp.float32)[None], self._inputs(obs))
        return self._features(), reward, terminated, truncated, info

    def _features(self) -> np.ndarray:
        return np.asarray(self.dream.observe(self._state, None, None)[0], np.float32)  # latents: no frame is drawn


class DreamVectorEnv(gym.vector.VectorEnv):
    """`num_envs` dreams stepped together in one jit-compiled call, restarting from real starts."""

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, checkpoint: str | pathlib.Path | None = None, *, num_envs: int, model: WorldModel | None = None,
                 dataset: str | pathlib.Path | None = None, observation: Observation = "latent", horizon: int = 1000):
        model, dataset = _resolve(checkpoint, model, dataset)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1; got {num_envs}.")
        if dataset is None:
            raise ValueError("DreamVectorEnv restarts ended copies from real episode starts: pass dataset=.")
        dream = Dream(model, observation)
        self.num_envs, self.horizon, self.dream = num_envs, horizon, dream
        self.single_observation_space, self.single_action_space = dream.observation_space(), dream.action_space()
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        keys = tuple(k for k in ("image", "proprio") if getattr(model.spec, k) is not None)
        starts = episode_starts(dataset, keys)
        # Every start's posterior state (and real frame), computed once and kept on the device.
        self._pool = dream.start(dream.check_observations(starts, len(next(iter(starts.values())))))
        self._pool_frames = jnp.asarray(starts["image"]) if "image" in starts else None
        self._step = jax.jit(self._step_all)
        self._key = jax.random.key(0)
        self._state = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._key = jax.random.key(seed)
        self._key, key = jax.random.split(self._key)
        index = jax.random.randint(key, (self.num_envs,), 0, self._pool.y.shape[0])
        self._state = (jax.tree.map(lambda x: x[index], self._pool), jnp.zeros(self.num_envs, jnp.int32), index)
        return jax.device_get(self._observe(self._state)), {}

    def _observe(self, carry):
        """Observations of a carry (states, steps since each start, each start's index in the pool)."""
        state, steps, start = carry
        return self.dream.observe(state, None if self._pool_frames is None else self._pool_frames[start], steps)

    def _step_all(self, carry, action, key):
        state, steps, start = carry
        step_key, reset_key = jax.random.split(key)
        state, reward, cont = self.dream.step(state, action, step_key)
        steps = steps + 1
        terminated = cont < 0.5
        truncated = ~terminated & (steps >= self.horizon)
        done = terminated | truncated
        final_obs = self._observe((state, steps, start))
        index = jax.random.randint(reset_key, done.shape, 0, self._pool.y.shape[0])
        fresh = jax.tree.map(lambda x: x[index], self._pool)
        state = jax.tree.map(lambda f, s: jnp.where(done.reshape(-1, *[1] * (s.ndim - 1)), f, s), fresh, state)
        carry = (state, jnp.where(done, 0, steps), jnp.where(done, index, start))
        return carry, self._observe(carry), reward, terminated, truncated, final_obs

    def step(self, actions):
        if self._state is None:
            raise RuntimeError("Call reset() before step().")
        actions = np.asarray(actions, np.float32)
        if actions.shape != self.action_space.shape or not np.all(np.abs(actions) <= 1.0):
            raise ValueError(f"Actions of shape {actions.shape} are outside the action space: shape {self.action_space.shape}, values in [-1, 1].")
        self._key, key = jax.random.split(self._key)
        self._state, obs, reward, terminated, truncated, final_obs = self._step(self._state, jnp.asarray(actions), key)
        obs, reward, terminated, truncated, final_obs = jax.device_get((obs, reward, terminated, truncated, final_obs))
        done = terminated | truncated
        info = {"final_obs": final_obs, "_final_obs": done} if done.any() else {}
        return obs, np.asarray(reward, np.float32), terminated, truncated, info

    def render(self):
        if self._state is None or self.dream.spec.image is None:
            return None
        state, steps, start = self._state
        return np.asarray(self.dream.frame(state, self._pool_frames[start], steps))
