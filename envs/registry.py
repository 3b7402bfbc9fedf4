"""Task names -> constructors. `make("dmc/cartpole-swingup", size=64)`."""

from __future__ import annotations

import difflib
from collections.abc import Callable

import gymnasium as gym

from envs import dmc, gym_mujoco
from envs.base import check_steps

# suite prefix -> (constructor(task, **options), task names)
SUITES: dict[str, tuple[Callable[..., gym.Env], tuple[str, ...]]] = {
    "gym": (gym_mujoco.GymMujoco, gym_mujoco.TASKS),
    "dmc": (dmc.DMC, tuple(dmc.TASKS)),
}


def names() -> list[str]:
    """Every task name `make` accepts."""
    return [f"{suite}/{task}" for suite, (_, tasks) in SUITES.items() for task in tasks]


def make(
    name: str,
    *,
    size: int | tuple[int, int] = 64,
    pixels: bool = True,
    proprio: bool = True,
    action_repeat: int | None = None,
    time_limit: int | None = None,
    camera: int | str | None = None,
    velocities: bool = True,
    supersample: int = 1,
) -> gym.Env:
    """A Gymnasium environment for task `name`, e.g. `gym/HalfCheetah-v5` or `dmc/cheetah-run`.

    Observations are a dict: `image` uint8 [H,W,3] (`size` = H = W, or (H, W))
    when `pixels`, and `proprio` float32 [D] when `proprio`. Actions are float32
    in [-1, 1]. `action_repeat` and `time_limit` (in steps after repeat) default
    to the suite's usual values; `camera` is a model camera index or name.
    `velocities=False` leaves velocities out of `proprio` (dmc tasks only): the
    partially observed form of a task, whose agent must infer them from positions.
    `supersample` K > 1 renders each image at K times the size and averages K x K
    blocks: anti-aliasing, which keeps a thin body's small movements in the image.
    """
    suite, _, task = name.partition("/")
    if suite not in SUITES or task not in SUITES[suite][1]:
        close = difflib.get_close_matches(name, names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown task {name!r}.{hint} Known tasks: {', '.join(names())}.")
    check_steps("action_repeat", action_repeat)
    check_steps("time_limit", time_limit, " (steps after action repeat)")
    check_steps("supersample", supersample, " (1 renders without anti-aliasing)")
    constructor, _ = SUITES[suite]
    options = dict(size=size, pixels=pixels, proprio=proprio, time_limit=time_limit, camera=camera, supersample=supersample)
    if action_repeat is not None:
        options["action_repeat"] = action_repeat
    if not velocities:
        if suite != "dmc":
            raise ValueError(f"velocities=False is supported for dmc/ tasks (and mjx/ in the compiled loop); {name!r} is a {suite}/ task.")
        options["velocities"] = False
    return constructor(task, **options)
