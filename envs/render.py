"""Headless MuJoCo rendering tuned for small images on a CPU.

At 64x64 on a software rasteriser (Mesa llvmpipe through EGL) the frame rate is
set by what the GPU pipeline would do for free: multisampling, shadow and
reflection passes, and finely tessellated capsules. Turning those off takes a
HalfCheetah frame from about 50 to about 2,000 per second on a 2-core CPU
(`python -m experiments.benchmark`), with no visible difference at this size.

Without multisampling a thin body is drawn aliased: each pixel is in or out, so
the 64x64 frame holds a small rotation coarsely. `supersample=K` renders at K
times the height and width and averages each K x K block (a box filter), which
restores the sub-pixel detail at a fraction of the cost of the passes above.
Measured by `python -m experiments.antialias` (cartpole, 3,000 states with the
pole within a few degrees of upright): a linear read-out of the pole angle from
the 64x64 pixels explains 91% of its variance aliased, 98% with K=2 and 99.8%
with K=4; the cart's position, a wide body, 99.6% aliased.
"""

from __future__ import annotations

import mujoco
import numpy as np

# Geometry tessellation for spheres, capsules and cylinders. MuJoCo's defaults
# (28 slices, 16 stacks) are tuned for full-screen viewing; at 64x64 each
# facet covers a fraction of a pixel, so coarser meshes render the same image.
_NUM_SLICES = 8
_NUM_STACKS = 8
_NUM_QUADS = 1

_FLAGS_OFF = (
    mujoco.mjtRndFlag.mjRND_SHADOW,
    mujoco.mjtRndFlag.mjRND_REFLECTION,
    mujoco.mjtRndFlag.mjRND_SKYBOX,
    mujoco.mjtRndFlag.mjRND_FOG,
    mujoco.mjtRndFlag.mjRND_HAZE,
)

Camera = int | str | mujoco.MjvCamera


class FastRenderer:
    """Renders `data` of one `model` to uint8 [H,W,3] from a fixed camera.

    `camera` is a model camera (index or name) or a configured free
    `mujoco.MjvCamera`. The model's visual quality settings are changed in
    place: they affect rendering only, never the physics. `supersample` K > 1
    renders K times larger and averages K x K blocks (see the module docstring).
    """

    def __init__(self, model: mujoco.MjModel, height: int, width: int, camera: Camera, supersample: int = 1):
        if not isinstance(supersample, int) or isinstance(supersample, bool) or supersample < 1:
            raise ValueError(f"supersample must be an int >= 1 (1 renders without anti-aliasing); got {supersample!r}.")
        self._k = supersample
        height, width = height * supersample, width * supersample
        quality = model.vis.quality
        # Must be set before the GL context exists: the offscreen buffer is
        # created with this many samples.
        quality.offsamples = 0
        quality.numslices, quality.numstacks, quality.numquads = _NUM_SLICES, _NUM_STACKS, _NUM_QUADS
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        if isinstance(camera, str):
            camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if camera_id < 0:
                names = [model.camera(i).name for i in range(model.ncam)]
                raise ValueError(f"Unknown camera {camera!r}; this model has cameras {names}.")
            camera = camera_id
        if isinstance(camera, int) and not -1 <= camera < model.ncam:
            raise ValueError(f"Camera index {camera} is out of range; this model has {model.ncam} cameras (-1 is the free camera).")
        self.camera = camera
        self._renderer = mujoco.Renderer(model, height, width)
        for flag in _FLAGS_OFF:
            self._renderer.scene.flags[flag] = 0

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """Returns a fresh uint8 [H,W,3] frame of `data`."""
        self._renderer.update_scene(data, camera=self.camera)
        frame = self._renderer.render()
        k = self._k
        if k == 1:
            return frame
        h, w = frame.shape[0] // k, frame.shape[1] // k
        blocks = frame.reshape(h, k, w, k, 3).sum((1, 3), dtype=np.uint32)
        return ((blocks + k * k // 2) // (k * k)).astype(np.uint8)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __del__(self):
        # At interpreter shutdown the EGL library may be gone already; a frame
        # that cannot be freed then is freed by the process exiting.
        try:
            self.close()
        except Exception:
            pass
