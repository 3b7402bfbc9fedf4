"""Gymnasium environments for Reverie: MuJoCo v5, DeepMind Control, wrappers, and the world model itself.

`DreamEnv` and `DreamVectorEnv` (envs/dream.py) load lazily, so that environment
worker processes never import JAX; `gymnasium.make("reverie/Dream-v0", checkpoint=...)`
works once this package is imported.

Importing this package chooses headless EGL rendering unless the user chose a
backend already (`MUJOCO_GL=glfw` for a window, `osmesa`, ...).
"""

import os
import sys

if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import gymnasium  # noqa: E402

from envs.registry import make, names  # noqa: E402
from envs.vector import make_vector  # noqa: E402

if "reverie/Dream-v0" not in gymnasium.registry:
    gymnasium.register("reverie/Dream-v0", entry_point="envs.dream:DreamEnv", disable_env_checker=True)

__all__ = ["DreamEnv", "DreamVectorEnv", "LatentObservation", "make", "make_vector", "names"]


def __getattr__(name):
    if name in ("DreamEnv", "DreamVectorEnv", "LatentObservation"):
        from envs import dream

        return getattr(dream, name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")
