"""How finely a rendered frame holds a small pole tilt, with and without anti-aliasing.

    python -m experiments.antialias [--supersample 1 2 4] [--states 3000]

Renders `dmc/cartpole-balance` at random states near the upright, as a balancing agent sees
them (cart position uniform in +-0.3 m, pole angle normal with standard deviation 0.07 rad,
about 4 degrees), at 64x64 with each `--supersample` factor (`envs.make(..., supersample=K)`:
rendered K times larger and every K x K block averaged; 1 is the aliased default). A ridge
regression from the pixels to the cart position and the pole angle is fitted on two thirds of
the states and scored on the rest (held-out R^2). A linear read-out bounds from below what an
encoder can take from the frame; a pole a pixel wide that flips whole pixels as it tilts holds
its angle coarsely. Also prints the render time per frame on this machine.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tyro


@dataclasses.dataclass(frozen=True)
class Args:
    supersample: tuple[int, ...] = (1, 2, 4)
    states: int = 3000
    size: int = 64
    seed: int = 0


def frames(supersample: int, states: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Frames (N, size*size*3) of cartpole at `states` (N, 2: cart position, pole angle), at rest,
    and the median seconds a frame took."""
    import mujoco
    from dm_control import suite

    from envs.render import FastRenderer

    physics = suite.load("cartpole", "balance").physics
    model, data = physics.model.ptr, physics.data.ptr
    renderer = FastRenderer(model, size, size, 0, supersample)
    out, times = [], []
    try:
        for qpos in states:
            data.qpos[:], data.qvel[:] = qpos, 0.0
            mujoco.mj_forward(model, data)
            start = time.perf_counter()
            out.append(renderer.render(data).reshape(-1))
            times.append(time.perf_counter() - start)
    finally:
        renderer.close()
    return np.stack(out).astype(np.float64) / 255.0, float(np.median(times))


def held_out_r2(x: np.ndarray, y: np.ndarray, train: int, strength: float = 1e-2) -> np.ndarray:
    """Ridge regression of y on x (in its dual form: N x N, not pixels x pixels), fitted on the first
    `train` rows, R^2 of each column of y on the others."""
    mean_x, mean_y = x[:train].mean(0), y[:train].mean(0)
    a, b = x[:train] - mean_x, y[:train] - mean_y
    coef = np.linalg.solve(a @ a.T + strength * np.eye(train), b)
    pred = (x[train:] - mean_x) @ (a.T @ coef) + mean_y
    return 1.0 - ((pred - y[train:]) ** 2).mean(0) / y[train:].var(0)


def main(args: Args) -> dict[int, dict[str, float]]:
    if args.states < 30 or min(args.supersample) < 1:
        raise ValueError(f"--states must be >= 30 and every --supersample >= 1; got {args.states} and {args.supersample}.")
    rng = np.random.default_rng(args.seed)
    states = np.c_[rng.uniform(-0.3, 0.3, args.states), rng.normal(0.0, 0.07, args.states)]
    train = args.states * 2 // 3
    print(f"dmc/cartpole-balance, {args.states} states near upright, {args.size}x{args.size}: held-out R^2 of a linear "
          "read-out from the pixels")
    print(f"{'supersample':>12} {'cart position':>14} {'pole angle':>11} {'render ms':>10}")
    results = {}
    for k in args.supersample:
        x, seconds = frames(k, states, args.size)
        cart, angle = held_out_r2(x, states, train)
        results[k] = {"cart position": float(cart), "pole angle": float(angle), "render_ms": seconds * 1e3}
        print(f"{k:>12} {cart:>14.3f} {angle:>11.3f} {seconds * 1e3:>10.2f}", flush=True)
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
