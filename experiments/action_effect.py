"""Does a world model know what one action does? And the data that teaches it not to.

    python -m experiments.action_effect measure --runs RUN [RUN ...]
    python -m experiments.action_effect collect --out data/balance-lqr-0.15 --noise 0.15

`measure`: for each cartpole world model (the run directory of experiments.train or
experiments.train_world_model), the pole angle 10 agent steps after a
push of +m against one of -m, then no force, in the simulator and imagined, at 8 states of an
LQR-balanced episode (`probe_state.action_effect`), for m = 0.25, 0.5 and 1. The simulator is
linear there: its effect grows with m. A world model that imagines much less gives an actor
little reason to push. A model that decodes proprio observations reads the imagined angle from
them; one that sees pixels only, through a linear read-out of its features fitted on real episodes
(`angle_readout`), compared with the same read-out of the features after the model follows the
simulator's own frames of each push (the read-out's shrinking then cancels in the ratio).

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
    """Run directories with a cartpole world model (pixels, proprio or both)."""
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


def angle_readout(model, episodes: int = 6, noise: float = 1.0, seed: int = 0):
    """A ridge read-out of the pole angle from a cartpole world model's features [y_{t-1}, z_t],
    fitted on noisy-LQR episodes (`experiments.probe_features`): (features (N, F) -> angle (N,)
    in radians, its held-out R^2, its held-out slope). A ridge read-out shrinks towards the mean:
    the slope (the read angle's regression on the true one, below 1) is about how much of a real
    change in angle it reads. `measure` compares the imagined reading with the same read-out of
    the real push, so the shrinking cancels."""
    import jax.numpy as jnp

    from experiments.probe_features import features, ridge_fit, ridge_predict, ridge_r2

    size = model.spec.image[0] if model.spec.image is not None else 64
    y, z, state = features(model, episodes, noise, seed, size)
    x, angle = np.c_[y, z], state[:, 1:2]
    split = len(x) * 2 // 3
    r2 = float(ridge_r2(x[:split], angle[:split], x[split:], angle[split:])[0][0])
    held_out = ridge_predict(ridge_fit(x[:split], angle[:split]), x[split:])[:, 0]
    slope = float(np.cov(held_out, angle[split:, 0])[0, 1] / angle[split:, 0].var(ddof=1))
    fit = tuple(jnp.asarray(a, jnp.float32) for a in ridge_fit(x, angle))
    return (lambda f: ridge_predict(fit, f)[..., 0]), r2, slope


def measure(args: Measure) -> dict[str, dict]:
    from embodied.worldmodel.io import load
    from experiments.probe_state import action_effect

    results = {}
    for run in args.runs:
        loaded = load(run)
        spec = loaded.model.spec
        if spec.action != 1 or spec.proprio not in (None, 5) or (spec.image is not None and spec.image[2] != 3):
            raise ValueError(f"{run}: a cartpole world model (one action, proprio of 5 numbers if any, RGB frames if any) "
                             f"is needed; this one has spec {spec}.")
        readout, r2, slope = angle_readout(loaded.model, seed=args.seed) if spec.image is not None else (None, None, 1.0)
        effects = {m: action_effect(loaded.model, 2, points=args.points, seed=args.seed, push=m, readout=readout) for m in PUSHES}
        readings = [name for name in ("model_deg", "y_deg", "readout_deg", "posterior_deg") if name in effects[PUSHES[0]]]
        main_reading = readings[0]
        # What the imagined reading is compared with: the simulator's angle, or for a read-out, the same
        # read-out after following the simulator's own frames of the push.
        truth = "posterior_deg" if main_reading == "readout_deg" else "real_deg"
        results[str(run)] = {m: {"real_deg": float(np.mean(e["real_deg"])), **{name: float(np.mean(e[name])) for name in readings},
                                 "per_point": e[main_reading]} for m, e in effects.items()}
        if r2 is not None:
            results[str(run)]["readout"] = {"r2": r2, "slope": slope}
        print(f"{run} (step {loaded.step}): pole angle 10 steps after a push of +m against -m, mean of {args.points} states (degrees)"
              + (f"; read linearly from the features (held-out R^2 {r2:.2f}, slope {slope:.2f}), imagined and after "
                 "following the real frames" if r2 is not None else ""))
        labels = {"model_deg": "world model", "y_deg": "backbone output (next_proprio head)", "readout_deg": "imagined read-out",
                  "posterior_deg": "real read-out"}
        for m in PUSHES:
            r = results[str(run)][m]
            print(f"  m={m:<4}  simulator {r['real_deg']:6.2f}  " + "  ".join(f"{labels[name]} {r[name]:6.2f}" for name in readings)
                  + f"  ratio {r[main_reading] / r[truth]:5.2f}   per state " + " ".join(f"{x:5.1f}" for x in r["per_point"]))
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
