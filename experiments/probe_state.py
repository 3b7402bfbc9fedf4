"""How precisely a trained agent's world model holds the state: decode real observations' latents.

    python -m experiments.probe_state --checkpoint runs/mjx-cartpole-balance-small-0 --steps 400

Acts with the run's policy (exploring, as in training) in the task's dm-control form,
encodes each proprio observation to its posterior mode z_t, decodes z_t, and prints the
root-mean-square error per observation dimension beside the observations' spread. For
cartpole it also prints the pole angle's error in degrees. A world model whose latent
loses the state this way gives its actor a coarse view of it (README, the agent section).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs
from embodied.nn import distributions as dist
from embodied.worldmodel import WorldModel
from experiments.train import load


@dataclasses.dataclass(frozen=True)
class Args:
    checkpoint: pathlib.Path
    """A run directory of experiments.train whose world model sees proprio observations."""
    steps: int = 400
    """Agent steps to act and probe."""
    seed: int = 0


def decode_error(model: WorldModel, proprio: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """proprio (N, P) -> its reconstruction from each posterior mode (N, P) and the RMS error per dimension (P,)."""
    if model.spec.proprio is None or model.spec.image is not None:
        raise ValueError("probe_state needs a world model of proprio observations only (this one sees "
                         f"image={model.spec.image}, proprio={model.spec.proprio}).")
    decoded = np.asarray(dist.symexp(model.decode(model.posterior_mode({"proprio": proprio}))["proprio"]))
    return decoded, np.sqrt(((decoded - np.asarray(proprio)) ** 2).mean(0))


def main(args: Args) -> dict:
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1; got {args.steps}.")
    config, agent, state, _ = load(args.checkpoint)
    model = agent.module("world_model", state.world_model)
    task = config.task.replace("mjx/", "dmc/", 1)
    env = envs.make(task, pixels=False, proprio=True, action_repeat=config.env.action_repeat)
    act = jax.jit(lambda s, o, k: agent.policy(state, s, o, k, explore=True))
    obs, _ = env.reset(seed=args.seed)
    policy_state, seen, first = agent.init_policy(1), [], True
    for t in range(args.steps):
        seen.append(obs["proprio"])
        action, policy_state = act(policy_state, {"proprio": jnp.asarray(obs["proprio"])[None], "is_first": jnp.array([first])},
                                   jax.random.key(args.seed * 100_003 + t))
        obs, _, terminated, truncated, _ = env.step(np.asarray(action[0]))
        first = terminated or truncated
        if first:
            obs, _ = env.reset()
    proprio = np.stack(seen).astype(np.float32)
    decoded, rms = decode_error(model, jnp.asarray(proprio))
    result = {"task": task, "steps": args.steps, "spread": proprio.std(0).tolist(), "rms_error": rms.tolist()}
    print(f"{task}, {args.steps} steps of the run's policy: per proprio dimension, spread (std) / RMS error of the decoded posterior mode")
    print("  " + "  ".join(f"{s:.3f} / {e:.3f}" for s, e in zip(result["spread"], result["rms_error"])))
    if task.startswith("dmc/cartpole"):  # observations: cart position, pole cos, pole sin, cart velocity, pole angular velocity
        angle = lambda x: np.arctan2(x[:, 2], x[:, 1])  # noqa: E731
        error = np.degrees(np.abs(np.angle(np.exp(1j * (angle(decoded) - angle(proprio))))))
        result["pole_angle_error_deg"] = {"median": float(np.median(error)), "p90": float(np.percentile(error, 90))}
        print(f"  pole angle error: median {np.median(error):.1f} degrees, 90th percentile {np.percentile(error, 90):.1f}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
