"""Gymnasium's MuJoCo v5 tasks (HalfCheetah, Hopper, ...) behind `MujocoTask`.

The Gymnasium environment supplies the physics, reward and termination; this
file adds pixels from a camera that follows the body, and the shared options.
"""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np

from envs.base import MujocoTask
from envs.render import Camera

TASKS = (
    "Ant-v5",
    "HalfCheetah-v5",
    "Hopper-v5",
    "Humanoid-v5",
    "InvertedDoublePendulum-v5",
    "InvertedPendulum-v5",
    "Reacher-v5",
    "Swimmer-v5",
    "Walker2d-v5",
)


class GymMujoco(MujocoTask):
    """`gym/<Task>-v5`. Default action repeat 1 and time limit from the task's spec."""

    def __init__(self, task: str, *, action_repeat: int = 1, time_limit: int | None = None, **options):
        spec = gym.spec(task)
        # The raw environment: the time limit and order checks of
        # `gymnasium.make` are re-done by `MujocoTask`, counting repeated steps.
        self._env = gym.make(task, max_episode_steps=None, disable_env_checker=True).unwrapped
        if time_limit is None:
            time_limit = -(-spec.max_episode_steps // action_repeat)
        super().__init__(action_repeat=action_repeat, time_limit=time_limit, **options)

    def _actuator_range(self):
        space = self._env.action_space
        return space.low.astype(np.float64), space.high.astype(np.float64)

    def _proprio_dim(self):
        return int(np.prod(self._env.observation_space.shape))

    def _control_dt(self):
        return float(self._env.dt)

    def _reset_physics(self, seed):
        obs, _ = self._env.reset(seed=seed)
        return obs

    def _step_physics(self, action):
        obs, reward, terminated, _, _ = self._env.step(action)
        return obs, float(reward), bool(terminated)

    def _model_data(self):
        return self._env.model, self._env.data

    def _default_camera(self) -> Camera:
        model = self._env.model
        # The locomotion models carry a "track" camera that follows the centre
        # of mass; without it the runner leaves the frame within seconds.
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "track") >= 0:
            return "track"
        # Otherwise the free camera Gymnasium's own renderer would use.
        camera = mujoco.MjvCamera()
        camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        camera.lookat[:] = np.median(self._env.data.geom_xpos, axis=0)
        camera.distance = model.stat.extent
        for key, value in (self._env.mujoco_renderer.default_cam_config or {}).items():
            if isinstance(value, np.ndarray):
                getattr(camera, key)[:] = value
            else:
                setattr(camera, key, value)
        return camera

    def close(self):
        super().close()
        self._env.close()
