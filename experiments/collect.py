"""Collect a dataset of episodes with a random policy, from pixels, into chunk files.

    python -m experiments.collect --task dmc/cartpole-swingup --episodes 20 --out data/cartpole

The directory can be read by `embodied.replay.Replay(directory=...)` and by
the world-model trainer. Collecting again into the same directory adds to it.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import numpy as np
import tqdm
import tyro

import envs
from embodied.driver import Driver, EpisodeStats, random_policy
from embodied.replay import EpisodeStore
from experiments.config import EnvConfig


@dataclasses.dataclass(frozen=True)
class Args:
    task: str = "dmc/cartpole-swingup"
    """Task name; `python -c 'import envs; print(envs.names())'` lists them."""
    episodes: int = 10
    """Episodes to write."""
    out: pathlib.Path | None = None
    """Dataset directory; defaults to data/<task with / replaced by ->."""
    env: EnvConfig = EnvConfig(envs=2, proprio=True)
    """The environments, as experiments.train's `--env.*` flags; here proprio is on by default (datasets keep both)."""
    seed: int = 0


def collect(args: Args) -> pathlib.Path:
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1; got {args.episodes}.")
    out = args.out or pathlib.Path("data") / args.task.replace("/", "-")
    store = EpisodeStore(out)
    vector = envs.make_vector(args.task, args.env.envs, **args.env.options())
    policy = random_policy(vector.single_action_space, seed=args.seed)
    scores: list[float] = []
    bar = tqdm.tqdm(total=args.episodes, unit="ep", desc=f"collect {args.task}")
    steps, start = 0, time.perf_counter()

    def on_episode(episode: dict, stats: EpisodeStats) -> None:
        nonlocal steps
        if len(scores) >= args.episodes:
            return  # other workers may finish in the same step; keep exactly N
        store.save(episode)
        scores.append(stats.score)
        steps += stats.length
        bar.update(1)
        bar.set_postfix(steps_per_s=f"{steps / (time.perf_counter() - start):.0f}", steps=steps, ret=f"{np.mean(scores[-10:]):.1f}")

    driver = Driver(vector, on_episode)
    driver.reset(seed=args.seed)
    try:
        while len(scores) < args.episodes:
            driver.step(policy, 100)
    finally:
        bar.close()
        vector.close()
    print(f"Wrote {len(scores)} episodes ({steps} steps) to {out}; return {np.mean(scores):.1f} +- {np.std(scores):.1f}.")
    return out


if __name__ == "__main__":
    collect(tyro.cli(Args))
