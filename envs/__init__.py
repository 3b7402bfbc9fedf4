"""Gymnasium environments for Reverie: MuJoCo v5, DeepMind Control, and wrappers.

Importing this package chooses headless EGL rendering unless the user chose a
backend already (`MUJOCO_GL=glfw` for a window, `osmesa`, ...).
"""

import os
import sys

if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from envs.registry import make, names  # noqa: E402
from envs.vector import make_vector  # noqa: E402

__all__ = ["make", "make_vector", "names"]
