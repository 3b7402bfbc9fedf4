"""Steps a Gymnasium vector environment with a policy and hands out finished episodes.

The mapping from Gymnasium to replay steps is made here and nowhere else:
reset -> `is_first`; `terminated` -> `is_terminal`; `terminated or truncated`
-> `is_last`. The vector environment must reset in Gymnasium's `NEXT_STEP`
mode: the step after an episode ends returns the next episode's first
observation (its action is ignored, its reward is 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import gymnasium as gym
import numpy as np

Policy = Callable[[dict[str, np.ndarray]], np.ndarray]
"""obs dict of [N, ...] (with `is_first` [N]) -> actions [N, A]."""


@dataclasses.dataclass
class EpisodeStats:
    worker: int
    length: int
    score: float


class Driver:
    """Runs `policy` in `envs` and calls `on_episode(episode, stats)` for each finished episode."""

    def __init__(self, envs: gym.vector.VectorEnv, on_episode: Callable[[dict, EpisodeStats], None]):
        mode = envs.metadata.get("autoreset_mode")
        if mode is not None and mode != gym.vector.AutoresetMode.NEXT_STEP:
            raise ValueError(f"Driver needs a vector env in NEXT_STEP autoreset mode; this one uses {mode}. Build it with envs.make_vector.")
        self.envs = envs
        self.on_episode = on_episode
        self._obs = None
        self._is_first = None
        self._buffers: list[list[dict]] = [[] for _ in range(envs.num_envs)]
        self._action_shape = envs.single_action_space.shape

    def reset(self, seed: int | None = None) -> None:
        self._obs, _ = self.envs.reset(seed=seed)
        n = self.envs.num_envs
        self._is_first = np.ones(n, bool)
        self._reward = np.zeros(n, np.float32)
        self._terminated = np.zeros(n, bool)
        self._last = np.zeros(n, bool)
        self._buffers = [[] for _ in range(n)]

    def step(self, policy: Policy, steps: int) -> int:
        """Takes `steps` vector steps; returns the number of episodes finished."""
        if self._obs is None:
            self.reset()
        finished = 0
        for _ in range(steps):
            obs = {**self._obs, "is_first": self._is_first}
            action = np.asarray(policy(obs), np.float32)
            if action.shape != (self.envs.num_envs, *self._action_shape):
                raise ValueError(f"Policy returned actions of shape {action.shape}; expected {(self.envs.num_envs, *self._action_shape)}.")
            recorded = np.where(self._last[:, None], 0.0, action).astype(np.float32)
            for i in range(self.envs.num_envs):
                step = {k: v[i] for k, v in self._obs.items()}
                step.update(
                    action=recorded[i],
                    reward=self._reward[i],
                    is_first=self._is_first[i],
                    is_last=self._last[i],
                    is_terminal=self._terminated[i],
                )
                self._buffers[i].append(step)
                if self._last[i]:
                    self._finish(i)
                    finished += 1
            obs, reward, terminated, truncated, _ = self.envs.step(action)
            self._is_first = self._last.copy()
            self._obs = obs
            self._reward = np.asarray(reward, np.float32)
            self._terminated = np.asarray(terminated, bool)
            self._last = self._terminated | np.asarray(truncated, bool)
        return finished

    def flush(self, save: Callable[[dict], None]) -> int:
        """Ends every episode in progress where it stands, as a truncation (the last observation
        is marked is_last, not terminal), and passes each with two or more steps to `save`; for a
        run that stops, so that the steps it collected reach the replay. The environments are
        reset before the next `step`. Returns the number of episodes saved."""
        saved = 0
        if self._obs is None:
            return saved
        for i, buffer in enumerate(self._buffers):
            if not buffer:
                continue
            step = {k: v[i] for k, v in self._obs.items()}
            step.update(action=np.zeros(self._action_shape, np.float32), reward=self._reward[i], is_first=self._is_first[i],
                        is_last=True, is_terminal=self._terminated[i])
            save({k: np.stack([s[k] for s in buffer + [step]]) for k in step})  # (a buffer is empty when the step is a reset's)
            saved += 1
        self._obs, self._buffers = None, [[] for _ in range(self.envs.num_envs)]
        return saved

    def _finish(self, worker: int) -> None:
        steps, self._buffers[worker] = self._buffers[worker], []
        episode = {k: np.stack([s[k] for s in steps]) for k in steps[0]}
        stats = EpisodeStats(worker=worker, length=len(steps) - 1, score=float(episode["reward"].sum()))
        self.on_episode(episode, stats)


def random_policy(action_space: gym.spaces.Box, seed: int | None = None) -> Policy:
    """Uniform actions for a batched Box action space."""
    rng = np.random.default_rng(seed)

    def policy(obs):
        n = len(obs["is_first"])
        return rng.uniform(action_space.low, action_space.high, (n, *action_space.shape)).astype(np.float32)

    return policy
