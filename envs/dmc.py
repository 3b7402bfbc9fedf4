"""DeepMind Control suite tasks (`dmc/<domain>-<task>`) behind `MujocoTask`.

Action repeat defaults to 2 and episodes to 1,000 control steps (500 agent
steps), the settings of the pixel-based control literature (PlaNet, Dreamer).
"""

from __future__ import annotations

import numpy as np

from envs.base import MujocoTask

# Domains whose camera 0 does not show the agent well (as in DreamerV3).
_CAMERAS = {"quadruped": 2}


# `domain-task` -> (domain, task) for the suite's benchmark set, written out so
# that listing the tasks does not import dm_control.
TASKS = {
    f"{domain}-{task}": (domain, task)
    for domain, tasks in {
        "acrobot": ("swingup", "swingup_sparse"),
        "ball_in_cup": ("catch",),
        "cartpole": ("balance", "balance_sparse", "swingup", "swingup_sparse"),
        "cheetah": ("run",),
        "finger": ("spin", "turn_easy", "turn_hard"),
        "fish": ("upright", "swim"),
        "hopper": ("stand", "hop"),
        "humanoid": ("stand", "walk", "run"),
        "manipulator": ("bring_ball",),
        "pendulum": ("swingup",),
        "point_mass": ("easy",),
        "reacher": ("easy", "hard"),
        "swimmer": ("swimmer6", "swimmer15"),
        "walker": ("stand", "walk", "run"),
    }.items()
    for task in tasks
}
TASKS["cup-catch"] = ("ball_in_cup", "catch")  # the name used by Dreamer and the issue tracker


ACTION_REPEAT = 2


def without_velocities(task: str, keys: list[str]) -> list[str]:
    """The observation keys of `task` that are not velocities (a `*velocity*` or `*_vel` key): the partially
    observed form of a task, whose agent must infer velocities from successive positions."""
    kept = [k for k in keys if "velocity" not in k and not k.endswith("_vel")]
    if len(kept) == len(keys):
        raise ValueError(f"dmc/{task} has no velocity observation to leave out (its observations: {', '.join(keys)}); "
                         "velocities=False needs one.")
    return kept


def default_time_limit(action_repeat: int) -> int:
    """1,000 control steps, in agent steps."""
    return -(-1000 // action_repeat)


class DMC(MujocoTask):
    """`dmc/<domain>-<task>`, e.g. `dmc/cartpole-swingup`."""

    def __init__(self, task: str, *, action_repeat: int = ACTION_REPEAT, time_limit: int | None = None,
                 velocities: bool = True, **options):
        from dm_control import suite

        domain, name = TASKS[task]
        self._domain = domain
        self._env = suite.load(domain, name)
        # The suite's own time limit is lifted (some tasks fix it, so it cannot
        # be passed to `load`): truncation is counted by `MujocoTask` in agent
        # steps, the same for every suite.
        self._env._step_limit = float("inf")
        if time_limit is None:
            time_limit = default_time_limit(action_repeat)
        spec = self._env.observation_spec()
        self._obs_keys = list(spec) if velocities else without_velocities(task, list(spec))
        self._obs_dim = sum(int(np.prod(spec[k].shape)) for k in self._obs_keys)
        super().__init__(action_repeat=action_repeat, time_limit=time_limit, **options)

    def _actuator_range(self):
        spec = self._env.action_spec()
        return spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)

    def _proprio_dim(self):
        return self._obs_dim

    def _control_dt(self):
        return float(self._env.control_timestep())

    def _reset_physics(self, seed):
        if seed is not None:
            self._env.task.random.seed(seed)
        return self._flatten(self._env.reset().observation)

    def _step_physics(self, action):
        step = self._env.step(action)
        # With the time limit lifted, an episode ends only at a true terminal
        # state, which dm_env marks with discount 0.
        terminated = step.last() and step.discount == 0.0
        return self._flatten(step.observation), float(step.reward or 0.0), bool(terminated)

    def _model_data(self):
        physics = self._env.physics
        return physics.model.ptr, physics.data.ptr

    def _default_camera(self):
        return _CAMERAS.get(self._domain, 0)

    def _flatten(self, observation) -> np.ndarray:
        return np.concatenate([np.asarray(observation[k], np.float64).ravel() for k in self._obs_keys])
