"""Several runs' world models on the same real episodes: the open-loop reward error at each imagined step.

    python -m experiments.dream_error runs/A runs/B --horizon 15 --episodes 2

The first run's actor (its mode) plays the episodes in the real task. Each run's
world model then filters the recorded observations under the recorded actions,
and from the state before every action imagines `horizon` steps playing the
actions that really followed. Its imagined reward k steps ahead is set against
the real reward k steps ahead; the table gives the mean |imagined - real| at each
k, and |imagined - real| of the reward summed over the whole window (with its
mean, imagined - real, as `bias`).

Beside them, one step ahead and with nothing imagined: `posterior` is the mean
|predicted - real| reward when the reward head reads the posterior's z_{t+1}, the
latent of the real next observation, as training's reward loss has it, where the
k = 1 column reads a sample of the prior's; and `kl` is the mean KL(posterior ||
prior) over z_{t+1}, with `exempt` the share of steps whose KL is under the run's
free bits (`model.free_nats`), which train neither. A model whose k = 1 error is
large but whose posterior error is small has a reward head that is fine and a
prior that is loose. Both are also given by how many inputs the backbone had read
before the step, in spans that double from the run's training length L: training
fits the prior from outputs that have read at most L - 1 inputs (a replayed
sequence starts from a fresh carry), where acting reads whole episodes, so a
model that is good within L and worse beyond it has a carry that leaves what
training saw (an SSM whose memory is longer than L: `model.backbone.timescale`).

`experiments.evaluate --dream H` asks whether an agent's dream holds while its
actor chooses in it. This asks whether one world model is worse than another,
with the states and the actions held the same for all: a model that only looks
worse because its actor visits harder states does not look worse here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from embodied.nn import distributions as dist
from embodied.worldmodel.imagine import imagine
from experiments.train import Acting, load


@dataclasses.dataclass(frozen=True)
class Args:
    runs: tyro.conf.Positional[tuple[pathlib.Path, ...]]
    """Run directories of experiments.train, all of one task; the first run's actor plays."""
    horizon: int = 15
    episodes: int = 2
    seed: int = 0


def play(agent, config, agent_state, episodes: int, key: jax.Array) -> list[dict]:
    """Episodes of the actor's mode in the real task: observations (T, ...), is_first (T,), actions (T, A), rewards (T,)."""
    import envs

    env = envs.make(config.task.replace("mjx/", "dmc/", 1), **config.env.options())
    acting = Acting(agent, config, 1, key, explore=False)
    acting.agent_state = agent_state
    inputs = [k for k in ("image", "proprio") if getattr(agent.spec, k) is not None]
    played = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=10_000 + episode)
            steps, done = [], False
            while not done:
                seen = {k: obs[k] for k in inputs} | {"is_first": np.array(not steps)}
                action = acting({k: np.asarray(v)[None] for k, v in seen.items()})[0]
                obs, reward, terminated, truncated, _ = env.step(action)
                steps.append((seen, action, reward))
                done = terminated or truncated
            played.append({**{k: np.stack([s[k] for s, _, _ in steps]) for k in (*inputs, "is_first")},
                           "actions": np.stack([a for _, a, _ in steps]).astype(np.float32),
                           "rewards": np.array([r for _, _, r in steps], np.float32)})
    finally:
        env.close()
    return played


class OpenLoop(NamedTuple):
    imagined: np.ndarray
    """(S, horizon): the imagined reward k + 1 steps after each start (S = T - horizon + 1)."""
    posterior: np.ndarray
    """(T - 1,): the reward of each action t < T - 1 as the reward head reads it from y_t and the
    posterior's z_{t+1}, as in training."""
    kl: np.ndarray
    """(T - 1,): KL(posterior || prior) over z_{t+1}."""


def open_loop(agent, agent_state, episode: dict, horizon: int, key: jax.Array) -> OpenLoop:
    """The episode filtered under its own actions; from every start with `horizon` real steps after
    it, its actions replayed in imagination; and each step's posterior reward and KL."""
    inputs = {k: v[:, None] for k, v in episode.items() if k not in ("actions", "rewards")}  # (T, 1, ...): batch 1
    outputs = _open_loop_program(agent, horizon)(agent_state, inputs, jnp.asarray(episode["actions"]), key)
    return OpenLoop(*map(np.asarray, outputs))


@functools.lru_cache(maxsize=8)
def _open_loop_program(agent, horizon: int):
    @jax.jit
    def run(agent_state, inputs, actions, key):
        model = agent.module("world_model", agent_state.world_model)
        filter_key, imagine_key = jax.random.split(key)
        T = actions.shape[0]
        S = T - horizon + 1

        def step(policy_state, xs):
            obs, action, k = xs
            starts = []

            def replay(start, _):  # the recorded action, and the state before it
                starts.append(start)
                return action
            _, policy_state = model.act_step(policy_state, obs, obs["is_first"], replay, k)
            return policy_state, starts[0]

        _, starts = jax.lax.scan(step, agent.init_policy(1), (inputs, actions[:, None], jax.random.split(filter_key, T)))
        starts = jax.tree.map(lambda x: x[:, 0], starts)  # at step t: y_{t-1} and the posterior's z_t
        # One step on with the posterior's latent: y_t and z_{t+1} are in the start of step t + 1.
        y_next, z_next = starts.y[1:], starts.z[1:]
        posterior = dist.twohot_mean(model.heads(y_next, z_next)[0], model.bins[...])
        observed = {k: v[1:, 0] for k, v in inputs.items() if k != "is_first"}
        previous = inputs["image"][:-1, 0] if model.config.frames == 2 else None
        kl = dist.categorical_kl(model.encode(observed, previous, y_next), model.prior_logits(y_next))
        windows = jnp.stack([actions[k:k + S] for k in range(horizon)], 1)  # windows[t, k] = actions[t + k]
        imagined = imagine(model, None, jax.tree.map(lambda x: x[:S], starts), horizon, imagine_key, actions=windows).rewards
        return imagined, posterior, kl

    return run


def reward_differences(imagined: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """imagined - real (S, H): imagined[t, k] is the reward k + 1 steps after start t; rewards (T,)."""
    S, H = imagined.shape
    real = np.stack([rewards[t:t + H] for t in range(S)])
    return imagined - real


def by_history(kl: list[np.ndarray], posterior: list[np.ndarray], length: int) -> list[dict]:
    """Mean KL and posterior reward error of each episode's steps t (arrays (T - 1,)), by the inputs
    y_t has read (t + 1): 1 to L - 1, as training's priors read, then spans doubling from L."""
    edges = [1, length]
    while edges[-1] <= max(len(k) for k in kl):
        edges.append(2 * edges[-1])
    inputs = np.concatenate([np.arange(1, len(k) + 1) for k in kl])
    kl, posterior = np.concatenate(kl), np.concatenate(posterior)
    spans = []
    for low, high in zip(edges, edges[1:]):
        inside = (inputs >= low) & (inputs < high)
        if inside.any():
            spans.append({"inputs": f"{low}-{min(high - 1, inputs.max())}", "steps": int(inside.sum()),
                          "kl": float(kl[inside].mean()), "posterior": float(posterior[inside].mean())})
    return spans


def main(args: Args) -> dict:
    if not args.runs:
        raise ValueError("Name at least one run directory.")
    if args.horizon < 1 or args.episodes < 1:
        raise ValueError(f"--horizon and --episodes must be >= 1; got {args.horizon} and {args.episodes}.")
    loaded = [load(run) for run in args.runs]
    config, first, state, _ = loaded[0]
    for run, (other, agent, _, _) in zip(args.runs[1:], loaded[1:]):
        if other.task != config.task or agent.spec != first.spec:
            raise ValueError(f"{run} is a run of {other.task} ({agent.spec}); {args.runs[0]} of {config.task} ({first.spec}): "
                             "the runs must share a task and its observations.")
    key = jax.random.key(args.seed)
    episodes = [e for e in play(first, config, state, args.episodes, key) if len(e["rewards"]) >= args.horizon]
    if not episodes:
        raise ValueError(f"No episode was as long as --horizon {args.horizon}.")
    rows = []
    for run, (run_config, agent, agent_state, step) in zip(args.runs, loaded):
        passes = [open_loop(agent, agent_state, episode, args.horizon, jax.random.fold_in(key, i)) for i, episode in enumerate(episodes)]
        differences = np.concatenate([reward_differences(p.imagined, e["rewards"]) for p, e in zip(passes, episodes)])
        posterior = [np.abs(p.posterior - e["rewards"][:-1]) for p, e in zip(passes, episodes)]
        kl = np.concatenate([p.kl for p in passes])
        rows.append({"run": str(run), "env_steps": step, "length": run_config.length, "per_step": np.abs(differences).mean(0).tolist(),
                     "window": float(np.abs(differences.sum(1)).mean()), "window_bias": float(differences.sum(1).mean()),
                     "posterior": float(np.concatenate(posterior).mean()), "kl": float(kl.mean()),
                     "kl_exempt": float((kl <= run_config.model.free_nats).mean()),
                     "by_history": by_history([p.kl for p in passes], posterior, run_config.length)})
    result = {"task": config.task, "actor": str(args.runs[0]), "horizon": args.horizon, "episodes": len(episodes),
              "starts": sum(len(e["rewards"]) - args.horizon + 1 for e in episodes), "runs": rows}
    print(json.dumps(result))
    shown = sorted({1, min(5, args.horizon), min(10, args.horizon), args.horizon})
    print(f"{config.task}: mean |imagined - real| reward k steps ahead, the real actions replayed from "
          f"{result['starts']} states of {args.runs[0]}'s episodes; one step on with the posterior's latent, "
          "its reward error and KL(posterior || prior)")
    print(f"{'run':48s} " + " ".join(f"{'k=' + str(k):>7s}" for k in shown) + f" {'all ' + str(args.horizon):>8s} {'bias':>7s}"
          + f" {'posterior':>9s} {'kl':>6s} {'exempt':>6s}")
    for row in rows:
        print(f"{pathlib.Path(row['run']).name[-48:]:48s} " + " ".join(f"{row['per_step'][k - 1]:7.3f}" for k in shown)
              + f" {row['window']:8.2f} {row['window_bias']:+7.2f} {row['posterior']:9.3f} {row['kl']:6.2f} {row['kl_exempt']:6.2f}")
    print("One step on, by the inputs the backbone had read (training fits the prior within its length L): KL / posterior reward error")
    for row in rows:
        print(f"{pathlib.Path(row['run']).name[-48:]:48s} L={row['length']:<4d} "
              + "  ".join(f"{span['inputs']}: {span['kl']:.2f} / {span['posterior']:.3f}" for span in row["by_history"]))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
