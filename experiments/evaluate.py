"""Run a trained agent in its real task and report its return.

    python -m experiments.evaluate --checkpoint runs/dmc-cartpole-swingup-small-0 --episodes 10
    python -m experiments.evaluate --checkpoint runs/... --planner mpc --video eval.gif

`--checkpoint` is a run directory of experiments.train (or its checkpoints/
folder).

A policy trained elsewhere, for instance only inside `DreamEnv`, runs in the
real task with `--policy MODULE:FUNCTION`: `FUNCTION(observation_space,
action_space)` returns `act(observation) -> action`. `--checkpoint` then names
the world model's run, and `--observation latent` shows the policy the latent
features it saw in the dream (`envs.LatentObservation`); `image` shows the real
observations, which have the dream's spaces:

    python -m experiments.evaluate --checkpoint runs/wm --policy my_agent:load_policy --observation latent

The policy acts with its mode (no exploration noise); `--planner mpc` plans in
latent space instead of using the actor, with the run's `mpc` settings or
`--mpc-horizon` and `--mpc-samples` in their place. Prints the mean and standard deviation
of the return and writes a video of the first episode.

`--dream H` checks the dream against the world: from every state the actor's
episodes visit, the world model imagines H steps with the same actor, and the
imagined H-step reward is set beside the real one that followed. An imagined
reward well above the real one is an actor exploiting its world model's errors,
which its imagined returns alone cannot show. `--eval-dream H` in training logs
the same at every evaluation (`eval/dream_*`):

    python -m experiments.evaluate --checkpoint runs/... --episodes 2 --dream 15
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Literal

import jax
import numpy as np
import tyro

from experiments.config import recorded_env
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
    policy: str | None = None
    """MODULE:FUNCTION of a policy trained elsewhere (e.g. in DreamEnv) instead of the run's agent."""
    observation: Literal["latent", "image"] = "latent"
    """With --policy: what the policy sees (the observation kind of the DreamEnv it was trained in)."""
    task: str | None = None
    """With --policy: the real task; defaults to the world model's (world_model.json)."""
    fresh_every: int | None = None
    """Start the agent's recurrent state afresh every N agent steps (e.g. the training length, 64):
    whether acting from longer histories than training saw is what fails."""
    dream: int | None = None
    """Imagine this many steps with the actor from every state of the episodes, and report the
    imagined H-step reward against the real one that followed (the actor only, not with MPC)."""
    dream_samples: int = 1
    """With --dream: the mean of this many dreams from each state (the prior's samples differ), so that
    the error left is not their spread."""
    mpc_horizon: int | None = None
    """With --planner mpc: decisions planned ahead, instead of the run's `mpc.horizon`."""
    mpc_samples: int | None = None
    """With --planner mpc: action sequences scored per iteration, instead of the run's `mpc.samples`."""


def load_policy(spec: str):
    """`package.module:function` -> the function (imported, never unpickled)."""
    import importlib

    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--policy must be MODULE:FUNCTION (e.g. my_agent:load_policy); got {spec!r}.")
    function = getattr(importlib.import_module(module), name, None)
    if not callable(function):
        raise ValueError(f"--policy {spec!r}: {module} has no function {name!r}.")
    return function


def evaluate_foreign(args: Args) -> dict:
    """Runs a policy trained elsewhere in the real task, through the world model of `--checkpoint` when latent."""
    import envs
    from embodied.worldmodel.io import read_record

    make_policy = load_policy(args.policy)
    _, spec, task, _ = read_record(args.checkpoint)
    task = args.task or task
    if task is None:
        raise ValueError(f"{args.checkpoint} does not record its task; pass --task.")
    env = envs.make(task.replace("mjx/", "dmc/", 1), size=spec.image[0] if spec.image else 64,
                    pixels=spec.image is not None, proprio=spec.proprio is not None, **recorded_env(args.checkpoint))
    if args.observation == "latent":
        env = envs.LatentObservation(env, args.checkpoint)
    act = make_policy(env.observation_space, env.action_space)
    scores = []
    try:
        for episode in range(args.episodes):
            obs, _ = env.reset(seed=args.seed + episode)
            done, score = False, 0.0
            while not done:
                obs, reward, terminated, truncated, _ = env.step(np.asarray(act(obs), np.float32))
                score, done = score + reward, terminated or truncated
            scores.append(score)
    finally:
        env.close()
    result = {"task": task, "policy": args.policy, "observation": args.observation, "episodes": args.episodes,
              "mean": float(np.mean(scores)), "std": float(np.std(scores)), "returns": [float(s) for s in scores]}
    print(json.dumps(result))
    print(f"{task}, policy {args.policy} ({args.observation}): return {result['mean']:.1f} +- {result['std']:.1f} "
          f"over {args.episodes} episodes")
    return result


def main(args: Args) -> dict:
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1; got {args.episodes}.")
    if args.fresh_every is not None and args.fresh_every < 1:
        raise ValueError(f"--fresh-every must be >= 1; got {args.fresh_every}.")
    if args.dream is not None and args.dream < 1:
        raise ValueError(f"--dream must be >= 1 (imagined steps from each state); got {args.dream}.")
    if args.dream_samples < 1 or (args.dream_samples != 1 and args.dream is None):
        raise ValueError(f"--dream-samples must be >= 1, and is used only with --dream; got {args.dream_samples}"
                         f"{'' if args.dream is not None else ' without --dream'}.")
    if args.policy is not None:
        if args.fresh_every is not None or args.dream is not None:
            raise ValueError("--fresh-every and --dream act with the run's own agent, not with a --policy (which keeps its own state).")
        return evaluate_foreign(args)
    config, agent, state, step = load(args.checkpoint)
    if args.planner is not None:
        config = dataclasses.replace(config, planner=args.planner)
    planning = {name: value for name, value in (("horizon", args.mpc_horizon), ("samples", args.mpc_samples)) if value is not None}
    if planning:
        if config.planner != "mpc":
            raise ValueError(f"--mpc-horizon and --mpc-samples set the planner: they take --planner mpc (the run's is {config.planner!r}).")
        config = dataclasses.replace(config, mpc=dataclasses.replace(config.mpc, **planning))
    if args.dream is not None and config.planner != "actor":
        raise ValueError(f"--dream imagines with the actor from the states it visits: it takes --planner actor (the run's is {config.planner!r}).")
    run = config.run_dir if args.checkpoint.name == "checkpoints" else args.checkpoint
    video = args.video or pathlib.Path(run) / "evaluate.gif"
    scores, gap = evaluate(agent, config, state, args.episodes, jax.random.key(args.seed), video=video,
                           fresh_every=args.fresh_every, dream=args.dream or 0, dream_samples=args.dream_samples)
    result = {"task": config.task, "env_steps": step, "planner": config.planner, "episodes": args.episodes,
              "fresh_every": args.fresh_every,
              "mean": float(np.mean(scores)), "std": float(np.std(scores)), "returns": [float(s) for s in scores]}
    if config.planner == "mpc":
        result["mpc"] = dataclasses.asdict(config.mpc)
    if gap is not None:
        result["dream"] = {"horizon": args.dream, "samples": args.dream_samples, **gap}
    print(json.dumps(result))
    print(f"{config.task} after {step} environment steps ({config.planner}): return {result['mean']:.1f} +- {result['std']:.1f} "
          f"over {args.episodes} episodes; video {video}")
    if gap is not None and gap["starts"]:
        print(f"{args.dream}-step reward from {gap['starts']} states: real {gap['real']:.2f}, imagined {gap['imagined']:.2f} "
              f"(imagined - real {gap['bias']:+.2f}, mean |imagined - real| {gap['error']:.2f}, correlation {gap['correlation']:.2f})")
        if "error_within" in gap:
            print(f"  mean |imagined - real| of the dreams that end within the first {config.length} steps of an episode "
                  f"(the training sequences' length): {gap['error_within']:.2f}; of the others: {gap['error_beyond']:.2f}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
