"""How precisely a trained agent's world model holds the state: decode real observations' latents.

    python -m experiments.probe_state --checkpoint runs/mjx-cartpole-balance-small-0 --steps 400

Acts with the run's policy (exploring, as in training) in the task's dm-control form,
encodes each proprio observation to its posterior mode z_t, decodes z_t, and prints the
root-mean-square error per observation dimension beside the observations' spread. For
cartpole it also prints the pole angle's error in degrees. A world model whose latent
loses the state this way gives its actor a coarse view of it (docs/agent-experiments.md).

For cartpole it then asks whether that view suffices to balance, and whether the actor
uses it, on `dmc/cartpole-balance` (`--episodes` episodes each): an LQR controller,
linearised at the upright pole, acting on the true state and on the decoded posterior
mode; the run's actor (its mode), and the same with its backbone carry started afresh every
training-sequence length (as long a history as training saw); and, on the states of the actor's own episodes with
the pole within 20 degrees of upright, the correlation between the actor's action and
LQR's. A latent that lets LQR balance under an actor that does not separates what the
world model cannot hold from what the agent did not learn. Last, one action's effect: the
pole angle 10 steps after a push of +1 against a push of -1, in the simulator and imagined
from the same states (`action_effect`): a world model that shrinks it gives its actor
little reason to push.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs
from envs.render import FastRenderer
from embodied.nn import distributions as dist
from embodied.worldmodel import WorldModel, imagine
from experiments.train import load


@dataclasses.dataclass(frozen=True)
class Args:
    checkpoint: pathlib.Path
    """A run directory of experiments.train whose world model sees proprio observations."""
    steps: int = 400
    """Agent steps to act and probe."""
    episodes: int = 3
    """cartpole: balance episodes for each controller of the control check (0 skips it)."""
    seed: int = 0


def decode_error(model: WorldModel, proprio: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """proprio (N, P) -> its reconstruction from each posterior mode (N, P) and the RMS error per dimension (P,)."""
    if model.spec.proprio is None or model.spec.image is not None:
        raise ValueError("probe_state needs a world model of proprio observations only (this one sees "
                         f"image={model.spec.image}, proprio={model.spec.proprio}).")
    decoded = np.asarray(dist.symexp(model.decode(model.posterior_mode({"proprio": proprio}))["proprio"]))
    return decoded, np.sqrt(((decoded - np.asarray(proprio)) ** 2).mean(0))


def cartpole_state(proprio: np.ndarray) -> np.ndarray:
    """dm-control cartpole observations (..., 5): cart position, pole cos, sin, cart velocity, pole
    angular velocity -> the state (..., 4): cart position, pole angle, their velocities."""
    return np.stack([proprio[..., 0], np.arctan2(proprio[..., 2], proprio[..., 1]), proprio[..., 3], proprio[..., 4]], -1)


def noisy_lqr(proprio: np.ndarray, gain: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """LQR's action (..., 1) on cartpole observations (..., 5), plus Gaussian noise of std `noise`, clipped
    to [-1, 1]: the data and probe episodes of `experiments.action_effect` and `experiments.probe_features`."""
    state = cartpole_state(proprio)
    action = -(state @ gain.T) + noise * rng.standard_normal(state.shape[:-1] + (1,))
    return np.clip(action, -1.0, 1.0).astype(np.float32)


def lqr_gain(action_repeat: int) -> np.ndarray:
    """The discrete-time LQR gain K (1, 4) of dm-control's cartpole linearised at the upright pole,
    per agent step of `action_repeat` control steps: the action is -K @ `cartpole_state`."""
    import mujoco
    import scipy.linalg
    from dm_control import suite

    task = suite.load("cartpole", "balance")
    physics = task.physics
    model, data = physics.model.ptr, physics.data.ptr
    mujoco.mj_resetData(model, data)
    integrator, model.opt.integrator = model.opt.integrator, mujoco.mjtIntegrator.mjINT_EULER  # finite differences need it
    A, B = np.zeros((2 * model.nv, 2 * model.nv)), np.zeros((2 * model.nv, model.nu))
    mujoco.mjd_transitionFD(model, data, 1e-6, True, A, B, None, None)
    model.opt.integrator = integrator
    steps = action_repeat * round(task.control_timestep() / physics.timestep())  # physics steps per agent step
    A_step = np.linalg.matrix_power(A, steps)
    B_step = sum(np.linalg.matrix_power(A, i) @ B for i in range(steps))
    Q, R = np.diag([1.0, 10.0, 0.1, 0.1]), np.eye(1)
    P = scipy.linalg.solve_discrete_are(A_step, B_step, Q, R)
    return np.linalg.solve(R + B_step.T @ P @ B_step, B_step.T @ P @ A_step)


def balance_episode(env, choose, seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    """One episode of `choose(proprio, first) -> action (A,)`: its return, observations and actions."""
    obs, _ = env.reset(seed=seed)
    total, seen, actions, first = 0.0, [], [], True
    while True:
        action = np.asarray(choose(obs["proprio"], first), np.float32)
        seen.append(obs["proprio"])
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        total, first = total + reward, False
        if terminated or truncated:
            return total, np.stack(seen), np.stack(actions)


def control_check(agent, state, action_repeat: int, episodes: int, seed: int, reset_every: int = 64) -> dict:
    """Balance returns of LQR on the true and on the decoded state, and of the actor, also with its
    backbone carry started afresh every `reset_every` steps (the training sequence length: no older
    history than training saw); the actor's agreement with LQR near upright (module docstring)."""
    model = agent.module("world_model", state.world_model)
    gain = lqr_gain(action_repeat)
    decode = jax.jit(lambda x: dist.symexp(model.decode(model.posterior_mode({"proprio": x}))["proprio"]))
    lqr = lambda proprio: np.clip(-cartpole_state(proprio) @ gain.T, -1.0, 1.0)  # noqa: E731
    act = jax.jit(lambda s, o, k: agent.policy(state, s, o, k, explore=False))
    policy_state, steps = [None], [0]

    def actor(proprio, first, every=None):
        if first:
            policy_state[0], steps[0] = agent.init_policy(1), 0
        fresh = first or (every is not None and steps[0] % every == 0)
        steps[0] += 1
        obs = {"proprio": jnp.asarray(proprio)[None], "is_first": jnp.array([fresh])}
        action, policy_state[0] = act(policy_state[0], obs, jax.random.key(0))
        return action[0]

    env = envs.make("dmc/cartpole-balance", pixels=False, proprio=True, action_repeat=action_repeat)
    controllers = {"lqr_true_state": lambda p, first: lqr(p),
                   "lqr_decoded_state": lambda p, first: lqr(np.asarray(decode(jnp.asarray(p)[None]))[0]),
                   "actor": actor,
                   "actor_reset": lambda p, first: actor(p, first, reset_every)}
    result, near = {}, []
    for name, choose in controllers.items():
        returns = []
        for episode in range(episodes):
            total, seen, actions = balance_episode(env, choose, seed + episode)
            returns.append(total)
            if name == "actor":
                upright = np.abs(cartpole_state(seen)[:, 1]) < np.radians(20)
                near.append((lqr(seen[upright])[:, 0], actions[upright, 0]))
        result[name] = float(np.mean(returns))
    wanted, taken = (np.concatenate(x) for x in zip(*near))
    result["actor_lqr_correlation"] = float(np.corrcoef(wanted, taken)[0, 1]) if len(wanted) > 2 else float("nan")
    return result


def action_effect(model: WorldModel, action_repeat: int, horizon: int = 10, points: int = 8, samples: int = 64,
                  seed: int = 0, push: float = 1.0, readout: Callable[[jax.Array], jax.Array] | None = None) -> dict:
    """How far one action moves the pole `horizon` agent steps later, in the simulator and in the world
    model: the pole angle after a push of +`push` and then nothing, minus the angle after -`push` and
    then nothing, from the same state (imagination: the mean over `samples` rollouts from the episode
    so far), at `points` states 20 agent steps apart of an LQR-balanced episode. Degrees, one per point.
    `model_deg` reads the angle from the last imagined latent (decoded); a model with a `next_proprio`
    head also gives `y_deg`, the angle that head reads from the backbone output before it, which is
    continuous where the latent is quantised. A model that sees pixels is shown the frames rendered as
    its environment renders them; `readout(features (N, F)) -> angle (N,)` in radians, a linear
    read-out fitted on real features (`experiments.action_effect`), gives `readout_deg` from the
    last imagined features [y_{H-1}, z_H], for a model whose decoder draws no proprio, and
    `posterior_deg`, the same read-out of the features after following the simulator's own
    observations of each push: what the read-out sees of the real effect, to compare with."""
    from dm_control import suite

    env = suite.load("cartpole", "balance", task_kwargs={"random": seed})
    physics, gain = env.physics, lqr_gain(action_repeat)
    substeps = round(env.control_timestep() / physics.timestep())
    observe = lambda: np.concatenate(list(env.task.get_observation(physics).values())).astype(np.float32)  # noqa: E731
    renderer = None if model.spec.image is None else FastRenderer(physics.model.ptr, *model.spec.image[:2], camera=0)
    decodes = model.spec.proprio is not None

    def agent_step(action: float) -> None:
        physics.set_control([action])
        for _ in range(action_repeat):
            physics.step(substeps)

    @jax.jit
    def imagined(batch, key):
        start = jax.tree.map(lambda x: jnp.repeat(x, 2 * samples, 0), model.start(batch, key))
        pushes = jnp.repeat(jnp.array([push, -push]), samples)
        actions = jnp.zeros((2 * samples, horizon, model.spec.action)).at[:, 0, 0].set(pushes)
        traj = imagine(model, None, start, horizon, key, actions=actions)
        y = traj.features[:, -1, :model.config.backbone.dim]  # y_{H-1}, which the prior drew z_H from
        ends = [dist.symexp(model.decode(traj.latents[:, -1], y=y)["proprio"])] if decodes else []
        if model.config.next_proprio > 0:  # the next_proprio head regresses y_{H-1} onto o_H
            ends.append(dist.symexp(model.next_proprio(y)))
        angles = [jnp.arctan2(end[:, 2], end[:, 1]) for end in ends]
        if readout is not None:
            angles.append(readout(traj.features[:, -1]))
        angles = [angle.reshape(2, samples).mean(1) for angle in angles]
        return {name: angle[0] - angle[1] for name, angle in zip(names, angles)}

    @jax.jit
    def filtered(batch, key):  # the read-out of the features [y, z] after following real observations to the end
        start = model.start(batch, key)
        return readout(model.features(start.y, start.z))[0]

    def as_batch(observations: list, frames: list, actions: list) -> dict:
        batch = {"action": jnp.asarray(actions + [[0.0]], jnp.float32)[None], "is_first": (jnp.arange(len(observations)) == 0)[None]}
        if model.spec.proprio is not None:
            batch["proprio"] = jnp.asarray(np.stack(observations))[None]
        if renderer is not None:
            batch["image"] = jnp.asarray(np.stack(frames))[None]
        return batch

    names = ["model_deg"] * decodes + ["y_deg"] * (model.config.next_proprio > 0) + ["readout_deg"] * (readout is not None)
    if not names:
        raise ValueError("This world model draws no proprio observation: pass a `readout` of the pole angle from its features.")
    env.reset()
    render = (lambda: renderer.render(physics.data.ptr)) if renderer is not None else lambda: None
    seen, frames, actions, real, effects, posterior = [observe()], [render()], [], [], {name: [] for name in names}, []
    for t in range(1, 20 * points + 1):
        action = float(np.clip(-(gain @ cartpole_state(seen[-1]))[0], -1.0, 1.0))
        if t % 20 == 0:
            saved, ends, read = physics.get_state().copy(), [], []
            for signed in (push, -push):
                physics.set_state(saved)
                physics.forward()
                branch, branch_frames = [], []
                for pushed in [signed] + [0.0] * (horizon - 1):
                    agent_step(pushed)
                    branch.append(observe())
                    branch_frames.append(render())
                ends.append(cartpole_state(branch[-1])[1])
                if readout is not None:
                    pushes = [[signed]] + [[0.0]] * (horizon - 1)
                    read.append(filtered(as_batch(seen + branch, frames + branch_frames, actions + pushes), jax.random.key(seed + t)))
            physics.set_state(saved)
            physics.forward()
            real.append(np.degrees(ends[0] - ends[1]))
            if read:
                posterior.append(float(np.degrees(read[0] - read[1])))
            for name, effect in imagined(as_batch(seen, frames, actions), jax.random.key(seed + t)).items():
                effects[name].append(float(np.degrees(effect)))
        actions.append([action])
        agent_step(action)
        seen.append(observe())
        frames.append(render())
    if renderer is not None:
        renderer.close()
    return {"real_deg": [float(x) for x in real], **effects, **({"posterior_deg": posterior} if posterior else {})}


def main(args: Args) -> dict:
    if args.steps < 1 or args.episodes < 0:
        raise ValueError(f"--steps must be >= 1 and --episodes >= 0; got {args.steps} and {args.episodes}.")
    config, agent, state, _ = load(args.checkpoint)
    model = agent.module("world_model", state.world_model)
    if config.model.decode_from == "features":
        raise ValueError(f"{args.checkpoint}: probe_state decodes each observation's posterior without its history, and this "
                         "world model decodes from the features [y_{t-1}, z_t] (--model.decode-from features). "
                         "experiments.probe_features and experiments.action_effect follow the history and take it.")
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
        difference = cartpole_state(decoded)[:, 1] - cartpole_state(proprio)[:, 1]
        error = np.degrees(np.abs(np.angle(np.exp(1j * difference))))
        result["pole_angle_error_deg"] = {"median": float(np.median(error)), "p90": float(np.percentile(error, 90))}
        print(f"  pole angle error: median {np.median(error):.1f} degrees, 90th percentile {np.percentile(error, 90):.1f}")
        if args.episodes > 0:
            check = control_check(agent, state, env.action_repeat, args.episodes, args.seed, reset_every=config.length)
            result["control"] = check
            print(f"dmc/cartpole-balance, mean return of {args.episodes} episodes: LQR on the true state "
                  f"{check['lqr_true_state']:.0f}, LQR on the decoded posterior mode {check['lqr_decoded_state']:.0f}, "
                  f"the actor {check['actor']:.0f}, the actor with a fresh carry every {config.length} steps "
                  f"{check['actor_reset']:.0f}")
            print(f"  near upright (within 20 degrees), correlation of the actor's action with LQR's: "
                  f"{check['actor_lqr_correlation']:.2f}")
            effect = action_effect(model, env.action_repeat, seed=args.seed)
            result["action_effect"] = effect
            print("  one push of +1 against -1, pole angle 10 steps later, at states 20 steps apart of an LQR episode (degrees):")
            print("    simulator   " + " ".join(f"{x:6.1f}" for x in effect["real_deg"]))
            print("    world model " + " ".join(f"{x:6.1f}" for x in effect["model_deg"]))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
