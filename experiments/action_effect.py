"""Does a world model know what one action does? And the data that teaches it not to.

    python -m experiments.action_effect measure --runs RUN [RUN ...]
    python -m experiments.action_effect collect --out data/balance-lqr-0.15 --noise 0.15

`measure`: for each cartpole world model with proprio observations (the run directory of
experiments.train or experiments.train_world_model), the pole angle 10 agent steps after a
push of +m against one of -m, then no force, in the simulator and imagined, at 8 states of an
LQR-balanced episode (`probe_state.action_effect`), for m = 0.25, 0.5 and 1. The simulator is
linear there: its effect grows with m. A world model that imagines much less gives an actor
little reason to push.

`collect`: `dmc/cartpole-balance` episodes under LQR plus Gaussian action noise, a stand-in
for a good policy that acts almost deterministically, for experiments.train_world_model.
When the data's actions follow from its states, a model can predict every next state from
the states alone, and the actions carry only the noise's share of what happens next.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tyro

PUSHES = (0.25, 0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class Measure:
    runs: tuple[pathlib.Path, ...]
    """Run directories with a cartpole world model that reads proprio observations."""
    points: int = 8
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Collect:
    out: pathlib.Path
    """Dataset directory (chunk files, as experiments.collect writes)."""
    noise: float = 0.15
    """Standard deviation of the Gaussian noise added to LQR's action before the clip to [-1, 1]."""
    episodes: int = 100
    seed: int = 0


def measure(args: Measure) -> dict[str, dict]:
    from embodied.worldmodel.io import load
    from experiments.probe_state import action_effect

    results = {}
    for run in args.runs:
        loaded = load(run)
        if loaded.model.spec.proprio != 5 or loaded.model.spec.action != 1:
            raise ValueError(f"{run}: a cartpole world model with proprio observations (5 numbers) and one action is needed; "
                             f"this one has proprio {loaded.model.spec.proprio} and {loaded.model.spec.action} actions.")
        effects = {m: action_effect(loaded.model, 2, points=args.points, seed=args.seed, push=m) for m in PUSHES}
        results[str(run)] = {m: {"real_deg": float(np.mean(e["real_deg"])), "model_deg": float(np.mean(e["model_deg"])),
                                 "model_deg_per_point": e["model_deg"],
                                 **({"y_deg": float(np.mean(e["y_deg"]))} if "y_deg" in e else {})} for m, e in effects.items()}
        print(f"{run} (step {loaded.step}): pole angle 10 steps after a push of +m against -m, mean of {args.points} states (degrees)")
        for m, r in results[str(run)].items():
            print(f"  m={m:<4}  simulator {r['real_deg']:6.2f}  world model {r['model_deg']:6.2f}  "
                  f"ratio {r['model_deg'] / r['real_deg']:5.2f}   per state " + " ".join(f"{x:5.1f}" for x in r["model_deg_per_point"])
                  + (f"   backbone output (next_proprio head) {r['y_deg']:6.2f}" if "y_deg" in r else ""))
    return results


def collect(args: Collect) -> pathlib.Path:
    import envs
    from embodied.driver import Driver
    from embodied.replay import EpisodeStore
    from experiments.probe_state import lqr_gain, noisy_lqr

    if args.noise < 0 or args.episodes < 1:
        raise ValueError(f"--noise must be >= 0 and --episodes >= 1; got {args.noise} and {args.episodes}.")
    store, gain, rng, scores = EpisodeStore(args.out), lqr_gain(2), np.random.default_rng(args.seed), []

    def policy(obs: dict) -> np.ndarray:
        return noisy_lqr(obs["proprio"], gain, args.noise, rng)

    def on_episode(episode: dict, stats) -> None:
        if len(scores) < args.episodes:
            store.save(episode)
            scores.append(stats.score)

    vector = envs.make_vector("dmc/cartpole-balance", 2, pixels=False, proprio=True)
    try:
        driver = Driver(vector, on_episode)
        driver.reset(seed=args.seed)
        while len(scores) < args.episodes:
            driver.step(policy, 100)
    finally:
        vector.close()
    print(f"Wrote {len(scores)} episodes to {args.out}: LQR with action noise {args.noise}, return {np.mean(scores):.1f} +- {np.std(scores):.1f}.")
    return args.out


def main() -> dict | pathlib.Path:
    command = tyro.extras.subcommand_cli_from_dict({"measure": Measure, "collect": Collect})
    return measure(command) if isinstance(command, Measure) else collect(command)


if __name__ == "__main__":
    main()
