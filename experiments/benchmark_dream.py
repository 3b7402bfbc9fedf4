"""How fast the dream runs, against the real simulator, side by side in one run.

    python -m experiments.benchmark_dream                                   # a fresh small-preset model
    python -m experiments.benchmark_dream --checkpoint runs/dmc-cartpole-swingup-small-0

Rows: the real task's step+render rate (one process, 64x64); one DreamEnv with
decoded images (median step latency: the interactive case); DreamVectorEnv with
latent observations at 1,024 copies (imagined steps/s); DreamVectorEnv with
decoded 64x64 images at 64 copies (frames/s). Speed does not depend on the
weights, so without a checkpoint the model of `--preset` is built untrained.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile

import numpy as np
import tyro
from flax import nnx

import envs
from embodied.driver import Driver, random_policy
from embodied.logging import table
from embodied.replay import EpisodeStore
from embodied.worldmodel import Spec, WorldModel
from embodied.worldmodel.io import load
from envs.dream import DreamEnv, DreamVectorEnv
from experiments.benchmark import timings
from experiments.config import PRESETS, resolve


@dataclasses.dataclass(frozen=True)
class Args:
    task: str = "dmc/cartpole-swingup"
    checkpoint: pathlib.Path | None = None
    preset: str = "small"
    steps: int = 200
    """Steps timed per row (after a warm-up)."""


def timed(step, steps: int) -> np.ndarray:
    """Seconds of each of `steps` calls, after a warm-up call."""
    return np.asarray([seconds for seconds, _ in timings(step, steps)])


def main(args: Args) -> None:
    real = envs.make(args.task)
    if args.checkpoint is not None:
        model = load(args.checkpoint).model
    else:
        spec = Spec(image=(64, 64, 3), proprio=int(real.observation_space["proprio"].shape[0]), action=int(real.action_space.shape[0]))
        model = WorldModel(resolve(PRESETS[args.preset]).model, spec, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    rows = []

    real.reset(seed=0)
    t = timed(lambda: real.step(rng.uniform(-1, 1, real.action_space.shape).astype(np.float32)), args.steps)
    rows.append(["real MuJoCo env, step+render 64x64", 1, f"{1 / np.median(t):,.0f} steps/s", f"{np.median(t) * 1e3:.2f} ms"])

    with tempfile.TemporaryDirectory() as data:
        store = EpisodeStore(data)
        vector = envs.make_vector(args.task, 1, asynchronous=False, time_limit=20)
        driver = Driver(vector, lambda episode, _: store.save(episode))
        driver.step(random_policy(vector.single_action_space, seed=0), 45)
        vector.close()

        dream = DreamEnv(model=model, dataset=data, observation="image")
        dream.reset(seed=0)
        action = np.zeros(dream.action_space.shape, np.float32)
        t = timed(lambda: dream.step(action), args.steps)
        rows.append(["DreamEnv, decoded image", 1, f"{1 / np.median(t):,.0f} steps/s", f"{np.median(t) * 1e3:.2f} ms"])

        for observation, copies, unit in (("latent", 1024, "imagined steps/s"), ("image", 64, "frames/s")):
            vec = DreamVectorEnv(model=model, dataset=data, num_envs=copies, observation=observation)
            vec.reset(seed=0)
            actions = rng.uniform(-1, 1, vec.action_space.shape).astype(np.float32)
            t = timed(lambda vec=vec: vec.step(actions), max(10, args.steps // 10))
            rows.append([f"DreamVectorEnv, {observation}", copies, f"{copies / np.median(t):,.0f} {unit}", f"{np.median(t) * 1e3:.2f} ms"])
    real.close()
    params = sum(x.size for x in __import__("jax").tree.leaves(nnx.state(model, nnx.Param)))
    print(f"{args.task}; world model {params / 1e6:.2f}M parameters ({'checkpoint' if args.checkpoint else 'preset ' + args.preset}); medians")
    print(table(["", "copies", "rate", "step latency"], rows))


if __name__ == "__main__":
    main(tyro.cli(Args))
