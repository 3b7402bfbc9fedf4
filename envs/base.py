"""The shared shell of every MuJoCo task: dict observations, [-1, 1] actions,
action repeat, a time limit and rendering, on the Gymnasium API.

A suite (Gymnasium MuJoCo, DeepMind Control) supplies only its physics through
four small methods; everything a user can get wrong is checked here, once.
"""

from __future__ import annotations

import abc
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from envs.render import Camera, FastRenderer


def image_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    """(H, W) from an int or a pair; rejects sizes that cannot be rendered."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(height, int) and isinstance(width, int)) or height <= 0 or width <= 0:
        raise ValueError(f"Image size must be a positive int or a pair of positive ints (height, width); got {size!r}.")
    return height, width


def check_steps(name: str, value: int | None, unit: str = "") -> None:
    """Rejects a step count that is not a positive int (None means the default)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be an int >= 1{unit}; got {value!r}.")


class MujocoTask(gym.Env, abc.ABC):
    """A MuJoCo task seen from pixels and/or proprioception.

    Observation: dict with `image` uint8 [H,W,3] when `pixels`, and `proprio`
    float32 [D] when `proprio`. Action: float32 [A] in [-1, 1], rescaled to the
    actuators' range; values outside are clipped. One `step` applies the action
    for `action_repeat` physics steps, sums their rewards, and renders once.
    `truncated` is set after `time_limit` steps of the agent (after repeat).
    `supersample` K > 1 anti-aliases the image: it is rendered K times larger
    and each K x K block averaged (`envs.render`).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        *,
        size: int | tuple[int, int],
        pixels: bool,
        proprio: bool,
        action_repeat: int,
        time_limit: int,
        camera: Camera | None,
        render_mode: str | None = "rgb_array",
        supersample: int = 1,
    ):
        if not (pixels or proprio):
            raise ValueError("At least one of pixels=True or proprio=True is needed; both are False.")
        check_steps("action_repeat", action_repeat)
        check_steps("time_limit", time_limit, " (steps after action repeat)")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array'; got {render_mode!r}.")
        self.render_mode = render_mode
        self._size = image_shape(size)
        self._pixels, self._proprio = pixels, proprio
        self._repeat, self._time_limit = action_repeat, time_limit
        self._camera = self._default_camera() if camera is None else camera
        check_steps("supersample", supersample, " (1 renders without anti-aliasing)")
        self._supersample = supersample
        self._renderer: FastRenderer | None = None
        self._steps = 0

        low, high = self._actuator_range()
        self._act_low, self._act_scale = low, (high - low) / 2.0
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=low.shape, dtype=np.float32)
        spaces = {}
        if pixels:
            spaces["image"] = gym.spaces.Box(0, 255, (*self._size, 3), np.uint8)
        if proprio:
            dim = self._proprio_dim()
            spaces["proprio"] = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        self.metadata = {**self.metadata, "render_fps": round(1.0 / (self._control_dt() * action_repeat))}

    # The physics of a suite.

    @abc.abstractmethod
    def _actuator_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Low and high of the native action, float [A] each."""

    @abc.abstractmethod
    def _proprio_dim(self) -> int: ...

    @abc.abstractmethod
    def _control_dt(self) -> float:
        """Seconds of simulated time per native (unrepeated) step."""

    @abc.abstractmethod
    def _reset_physics(self, seed: int | None) -> np.ndarray:
        """Resets the simulation; returns the proprio vector."""

    @abc.abstractmethod
    def _step_physics(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """One native step: (proprio, reward, terminated)."""

    @abc.abstractmethod
    def _model_data(self) -> tuple[mujoco.MjModel, mujoco.MjData]: ...

    @abc.abstractmethod
    def _default_camera(self) -> Camera: ...

    # The Gymnasium API.

    @property
    def action_repeat(self) -> int:
        """Simulator steps per agent step: environment-step budgets count these."""
        return self._repeat

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        proprio = self._reset_physics(seed)
        self._steps = 0
        return self._observation(proprio), {}

    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape:
            raise ValueError(f"Action has shape {action.shape}; this task takes shape {self.action_space.shape} with values in [-1, 1].")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"Action contains NaN or inf: {action}.")
        native = self._act_low + (np.clip(action, -1.0, 1.0) + 1.0) * self._act_scale
        reward, terminated = 0.0, False
        for _ in range(self._repeat):
            proprio, r, terminated = self._step_physics(native)
            reward += r
            if terminated:
                break
        self._steps += 1
        truncated = not terminated and self._steps >= self._time_limit
        return self._observation(proprio), reward, terminated, truncated, {}

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        return self._render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def _render(self) -> np.ndarray:
        model, data = self._model_data()
        if self._renderer is None:
            # Created on first use, in the process that steps the task: a GL
            # context cannot cross a fork into vectorised workers.
            self._renderer = FastRenderer(model, *self._size, self._camera, self._supersample)
        return self._renderer.render(data)

    def _observation(self, proprio: np.ndarray) -> dict[str, np.ndarray]:
        obs = {}
        if self._pixels:
            obs["image"] = self._render()
        if self._proprio:
            obs["proprio"] = proprio.astype(np.float32)
        return obs
