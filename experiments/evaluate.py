"""Run a trained agent in its real task and report its return.

    python -m experiments.evaluate --checkpoint runs/dmc-cartpole-swingup-small-0 --episodes 10
    python -m experiments.evaluate --checkpoint runs/... --planner mpc --video eval.gif

`--checkpoint` is a run directory of experiments.train (or its checkpoints/
folder). The policy acts with its mode (no exploration noise) unless
`--explore`; `--planner mpc` plans in latent space instead of using the actor.
Prints the mean and standard deviation of the return and writes a video of the
first episode.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Literal

import jax
import numpy as np
import tyro

from experiments.train import evaluate, load


@dataclasses.dataclass(frozen=True)
class Args:
    checkpoint: pathlib.Path
    """Run directory of experiments.train."""
    episodes: int = 10
    planner: Literal["actor", "mpc"] | None = None
    """Defaults to the run's own planner."""
    video: pathlib.Path | None = None
    """GIF of the first episode; defaults to <run>/evaluate.gif."""
    seed: int = 0


def main(args: Args) -> dict:
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1; got {args.episodes}.")
    config, agent, state, step = load(args.checkpoint)
    if args.planner is not None:
        config = dataclasses.replace(config, planner=args.planner)
    run = config.run_dir if args.checkpoint.name == "checkpoints" else args.checkpoint
    video = args.video or pathlib.Path(run) / "evaluate.gif"
    scores = evaluate(agent, config, state, args.episodes, jax.random.key(args.seed), video=video)
    result = {"task": config.task, "env_steps": step, "planner": config.planner, "episodes": args.episodes,
              "mean": float(np.mean(scores)), "std": float(np.std(scores)), "returns": [float(s) for s in scores]}
    print(json.dumps(result))
    print(f"{config.task} after {step} environment steps ({config.planner}): return {result['mean']:.1f} +- {result['std']:.1f} "
          f"over {args.episodes} episodes; video {video}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
