"""How much of cartpole's true state the actor's features hold, for any world model, pixels included.

    python -m experiments.probe_features --runs RUN [RUN ...]

Every run sees the same `dmc/cartpole-balance` episodes: LQR on the true state plus Gaussian
action noise (`--noise`), which keeps the pole near upright and moves it enough to vary. Each
observation the world model reads (image and/or proprio) goes through `act_step` with the action
LQR took, as when acting, and the features the actor would see, [y_{t-1}, z_t], are kept beside
the true state: cart position, pole angle, cart velocity, pole angular velocity. A ridge
regression from the features to each state variable, fitted on the first two thirds of the
episodes, is scored on the rest: R^2 (the share of the variance explained) and the RMS error,
for z_t alone, y_{t-1} alone and both. A linear read-out is a lower bound on what the features
hold, but the actor and critic are small MLPs on the same features, so a variable a linear
probe cannot find is one they have to work hard for.

z_t comes from the frame (or with `--model.frames 2`, the frame and the one before it), so one
frame's z can hold positions but not velocities; y_{t-1} has seen every earlier z and action.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import tyro

STATE = ("cart position", "pole angle", "cart velocity", "pole angular velocity")


@dataclasses.dataclass(frozen=True)
class Args:
    runs: tuple[pathlib.Path, ...]
    """Run directories (experiments.train or experiments.train_world_model) of cartpole world models."""
    episodes: int = 6
    """Episodes of 500 agent steps; the last third of them score the probe."""
    noise: float = 1.0
    """Standard deviation of the Gaussian noise on LQR's action (before the clip to [-1, 1])."""
    seed: int = 0


def ridge_fit(x: np.ndarray, y: np.ndarray, strength: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge regression of each column of y on standardised x (penalty `strength` per feature):
    (mean, scale, weights), read out as `np.c_[(x - mean) / scale, 1] @ weights` (`ridge_predict`)."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    a = np.c_[(x - mean) / scale, np.ones(len(x))]
    return mean, scale, np.linalg.solve(a.T @ a + strength * x.shape[1] * np.eye(a.shape[1]), a.T @ y)


def ridge_predict(fit: tuple[np.ndarray, np.ndarray, np.ndarray], x):
    """`ridge_fit`'s read-out of x (..., F); works on NumPy and JAX arrays alike."""
    mean, scale, weights = fit
    return ((x - mean) / scale) @ weights[:-1] + weights[-1]


def ridge_r2(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
             strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """`ridge_fit` on the training rows: held-out R^2 and RMS error, one per column of y."""
    error = ridge_predict(ridge_fit(train_x, train_y, strength), test_x) - test_y
    rms = np.sqrt((error**2).mean(0))
    return 1.0 - rms**2 / test_y.var(0), rms


def features(model, episodes: int, noise: float, seed: int, size: int = 64,
             supersample: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y_{t-1} (N, D), z_t (N, V*K) and the true state (N, 4) at every step of `episodes` noisy-LQR episodes,
    rendered as the model was trained (`supersample`)."""
    import envs
    from experiments.probe_state import cartpole_state, lqr_gain, noisy_lqr

    keys = [k for k in ("image", "proprio") if getattr(model.spec, k) is not None]
    env = envs.make("dmc/cartpole-balance", pixels="image" in keys, proprio=True, size=size,
                    supersample=supersample)
    gain, rng = lqr_gain(env.action_repeat), np.random.default_rng(seed)
    step = jax.jit(lambda s, obs, action, key: model.act_step(s, obs, obs["is_first"], lambda *_: action, key)[1])
    ys, zs, states = [], [], []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            state, first, t, done = model.initial_state(1), True, 0, False
            while not done:
                true = cartpole_state(obs["proprio"])
                action = noisy_lqr(obs["proprio"], gain, noise, rng)
                ys.append(np.zeros(state.y.shape[1:]) if first else np.asarray(state.y[0]))
                # A model of the task without velocities reads the leading positions of proprio.
                seen = {"image": obs.get("image"), "proprio": obs["proprio"][:model.spec.proprio or 0]}
                inputs = {k: jnp.asarray(seen[k])[None] for k in keys} | {"is_first": jnp.array([first])}
                state = step(state, inputs, jnp.asarray(action)[None], jax.random.key(seed * 1_000_003 + episode * 10_007 + t))
                zs.append(np.asarray(state.z[0]).reshape(-1))
                states.append(true)
                obs, _, terminated, truncated, _ = env.step(action)
                first, t, done = False, t + 1, terminated or truncated
    finally:
        env.close()
    return np.stack(ys), np.stack(zs), np.stack(states)


def probe(model, episodes: int = 6, noise: float = 1.0, seed: int = 0, size: int = 64,
          supersample: int = 1) -> dict[str, dict[str, list[float]]]:
    """R^2 and RMS error of each `STATE` variable read linearly from z, y and [y, z]."""
    y, z, state = features(model, episodes, noise, seed, size, supersample)
    split = len(state) * 2 // 3  # episodes are equally long, so this splits between episodes when `episodes` divides by 3
    result = {}
    for name, x in (("z", z), ("y", y), ("y,z", np.c_[y, z])):
        r2, rms = ridge_r2(x[:split], state[:split], x[split:], state[split:])
        result[name] = {"r2": r2.tolist(), "rms": rms.tolist()}
    result["spread"] = state[split:].std(0).tolist()
    return result


def main(args: Args) -> dict:
    from embodied.worldmodel.io import load
    from experiments.config import recorded_env

    if args.episodes < 2 or args.noise < 0:
        raise ValueError(f"--episodes must be >= 2 and --noise >= 0; got {args.episodes} and {args.noise}.")
    results = {}
    for run in args.runs:
        loaded = load(run)
        spec = loaded.model.spec
        if spec.action != 1 or (spec.proprio not in (None, 3, 5)) or (spec.image is not None and spec.image[2] != 3):
            raise ValueError(f"{run}: a cartpole world model is needed (one action; proprio of 5 numbers, or 3 without velocities, if any); "
                             f"this one has spec {spec}.")
        size = spec.image[0] if spec.image is not None else 64
        supersample = recorded_env(run).get("supersample", 1)
        results[str(run)] = result = probe(loaded.model, args.episodes, args.noise, args.seed, size, supersample)
        seen = " and ".join(k for k in ("image", "proprio") if getattr(spec, k) is not None)
        print(f"{run} (step {loaded.step}, sees {seen}, frames {loaded.model.config.frames}): held-out R^2 (RMS error) of a linear read-out")
        print(f"  {'':5}" + "".join(f"{name:>26}" for name in STATE))
        for name in ("z", "y", "y,z"):
            print(f"  {name:5}" + "".join(f"{r:>15.3f} ({e:7.4f})" for r, e in zip(result[name]["r2"], result[name]["rms"])))
        print(f"  {'std':5}" + "".join(f"{s:>26.4f}" for s in result["spread"]))
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
