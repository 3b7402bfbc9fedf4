"""The compiled loop: MJX environments, an on-device replay, world-model and actor-critic updates in one jitted program.

    python -m experiments.train --task mjx/cartpole-swingup            # --loop compiled is the default for mjx/ tasks

One iteration, for all N environments at once (`--env.envs`): the agent acts
(`Dreamer.policy`, the same function the host loop calls), the environments
step (`envs.mjx`, vmapped), the step is written to the device replay
(`embodied.replay.device`), and the train-ratio debt is paid with
`Dreamer.train` updates on sequences sampled from that replay. `lax.scan` runs
`log_every` environment steps of iterations per call; nothing returns to the
host in between but the summed metrics. Step counts, prefill, train ratio and
evaluation mean what they mean in the host loop (experiments/config.py).

A checkpoint holds the agent state, the whole device replay and the counters:
a killed run resumes with its replay intact and new episodes in every
environment (the episodes in progress at the kill are cut, as in the host loop).
Evaluation runs `eval_episodes` episodes of the policy's mode in MJX; the
same checkpoint can be evaluated in dm-control with experiments/evaluate.py.
"""

from __future__ import annotations

import os
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from agents.dreamer import Dreamer, DreamerState
from embodied.logging import Logger, resident_memory_gib
from embodied.parallel import make_mesh
from embodied.replay import device as device_replay
from embodied.stopping import StopSignals, save_if_whole
from embodied.worldmodel import ImagineState, Spec
from embodied.worldmodel.io import write_record
from envs.mjx import MJXEnv, State
from experiments.config import Config


@flax.struct.dataclass
class Carry:
    """Everything the loop threads from one iteration to the next; leaves with a leading N are per environment."""

    agent: DreamerState
    env: State
    obs: jax.Array
    reward: jax.Array
    is_first: jax.Array
    last: jax.Array
    """(N,) the current step is its episode's last (all environments end together)."""
    score: jax.Array
    """(N,) return of the episode so far."""
    policy: ImagineState
    replay: device_replay.DeviceReplay
    env_steps: jax.Array
    debt: jax.Array
    updates: jax.Array
    key: jax.Array


def spec_of(env: MJXEnv) -> Spec:
    return Spec(image=None, proprio=env.observation_size, action=env.action_size)


def make_env(config: Config) -> MJXEnv:
    repeat = {} if config.env.action_repeat is None else {"action_repeat": config.env.action_repeat}
    return MJXEnv(config.task, time_limit=config.env.time_limit, velocities=config.env.velocities, **repeat)


def _step_fields(env: MJXEnv | Spec) -> dict[str, jax.ShapeDtypeStruct]:
    """One replay row of one environment."""
    spec = spec_of(env) if isinstance(env, MJXEnv) else env
    f32 = jnp.float32
    return {"proprio": jax.ShapeDtypeStruct((spec.proprio,), f32), "action": jax.ShapeDtypeStruct((spec.action,), f32),
            "reward": jax.ShapeDtypeStruct((), f32), "is_first": jax.ShapeDtypeStruct((), bool),
            "is_terminal": jax.ShapeDtypeStruct((), bool)}


def replay_template(config: Config, spec: Spec) -> device_replay.DeviceReplay:
    """The abstract device replay of a run (to restore its checkpoint)."""
    return jax.eval_shape(lambda: device_replay.init(_step_fields(spec), config.replay.capacity, config.env.envs))


def check_memory(config: Config, env: MJXEnv) -> None:
    """A replay that cannot fit in device memory fails here, before anything compiles."""
    need = device_replay.nbytes(_step_fields(env), config.replay.capacity) // config.devices  # split over the devices
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    where = f"{jax.devices()[0].device_kind} memory"
    if limit is None:  # CPU: the machine's RAM
        limit, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host RAM"
    if need > 0.5 * limit:
        raise ValueError(f"replay.capacity={config.replay.capacity:,} steps needs {need / 2**30:.1f} GiB of device memory; "
                         f"at most half of the {limit / 2**30:.1f} GiB of {where} is allowed. Lower replay.capacity.")


class CompiledLoop:
    def __init__(self, config: Config, agent: Dreamer, env: MJXEnv):
        self.config, self.agent, self.env = config, agent, env
        self.envs = config.env.envs
        self.per_iteration = self.envs * env.action_repeat  # environment steps
        self.per_update = config.batch * config.length
        self.mesh = make_mesh(config.devices)
        # Jitted once: run eagerly, the vmapped MJX reset compiles each of its hundreds of operations
        # apart (`init` took 18.4 s against 3.9 s on the debug preset's cartpole, at every run's start).
        self._start = jax.jit(self.start)

    # State.

    def shardings(self, carry: Carry) -> Carry:
        """Where each leaf lives on the mesh: per-environment leaves (N, ...) and the replay's
        environment axis split over `data`, the agent state and counters replicated. Each device
        steps its environments and holds their replay rows; `Dreamer.train` runs data parallel
        on batches split the same way (as `embodied.parallel.data_parallel` does)."""
        split, replicated = NamedSharding(self.mesh, P("data")), NamedSharding(self.mesh, P())

        def per_env(tree):
            return jax.tree.map(lambda _: split, tree)

        return carry.replace(
            agent=jax.tree.map(lambda _: replicated, carry.agent), env=per_env(carry.env), obs=split, reward=split,
            is_first=split, last=split, score=split, policy=per_env(carry.policy),
            replay=carry.replay.replace(data=jax.tree.map(lambda _: NamedSharding(self.mesh, P(None, "data")), carry.replay.data),
                                        written=replicated),
            env_steps=replicated, debt=replicated, updates=replicated, key=replicated)

    def place(self, carry: Carry) -> Carry:
        return jax.device_put(carry, self.shardings(carry))

    def init(self, agent_state: DreamerState, key: jax.Array, replay=None, env_steps: int = 0, debt: float = 0.0,
             updates: int = 0) -> Carry:
        key, reset_key = jax.random.split(key)
        env, obs = self._start(jax.random.split(reset_key, self.envs))
        if replay is None:
            replay = device_replay.init(_step_fields(self.env), self.config.replay.capacity, self.envs)
        N = self.envs
        return Carry(
            agent=agent_state, env=env, obs=obs, reward=jnp.zeros(N),
            is_first=jnp.ones(N, bool), last=jnp.zeros(N, bool), score=jnp.zeros(N), policy=self.agent.init_policy(N),
            replay=replay, env_steps=jnp.asarray(env_steps, jnp.int32), debt=jnp.asarray(debt, jnp.float32),
            updates=jnp.asarray(updates, jnp.int32), key=key)

    def start(self, keys: jax.Array) -> tuple[State, jax.Array]:
        """New episodes in the environments, one a key, and their first observations."""
        env = jax.vmap(self.env.reset)(keys)
        return env, jax.vmap(self.env.observe)(env)

    # One iteration: act, record, step (or reset), train.

    def iteration(self, carry: Carry) -> tuple[Carry, dict]:
        c, env = self.config, self.env
        key, act_key, random_key, reset_key, train_key = jax.random.split(carry.key, 5)
        prefilling = carry.env_steps < c.prefill
        obs = {"proprio": carry.obs, "is_first": carry.is_first}
        action, policy = self.agent.policy(carry.agent, carry.policy, obs, act_key, explore=True)
        random_action = jax.random.uniform(random_key, action.shape, minval=-1.0, maxval=1.0)
        action = jnp.where(prefilling, random_action, action)
        replay = device_replay.add(carry.replay, {
            "proprio": carry.obs, "action": jnp.where(carry.last[:, None], 0.0, action), "reward": carry.reward,
            "is_first": carry.is_first, "is_terminal": jnp.zeros(self.envs, bool)})
        finished = carry.last[0]
        score = carry.score + carry.reward

        def reset(_):
            state = jax.vmap(env.reset)(jax.random.split(reset_key, self.envs))
            N = self.envs
            return state, jnp.zeros(N), jnp.ones(N, bool), jnp.zeros(N, bool)

        def step(_):
            state, reward = jax.vmap(env.step)(carry.env, action)
            return state, reward, jnp.zeros(self.envs, bool), state.t >= env.time_limit

        env_state, reward, is_first, last = jax.lax.cond(finished, reset, step, None)
        env_steps = carry.env_steps + self.per_iteration
        ready = ~prefilling & (replay.written >= c.length)
        debt = carry.debt + jnp.where(ready, self.envs * c.train_ratio / self.per_update, 0.0)
        count = jnp.floor(debt).astype(jnp.int32)

        def train(i, inner):
            agent_state, sums = inner
            k_sample, k_train = jax.random.split(jax.random.fold_in(train_key, i))
            batch = device_replay.sample(replay, k_sample, c.batch, c.length)
            batch = jax.lax.with_sharding_constraint(batch, NamedSharding(self.mesh, P("data")))
            agent_state, metrics = self.agent.train(agent_state, batch, k_train)
            return agent_state, jax.tree.map(jnp.add, sums, metrics)

        agent_state, sums = jax.lax.fori_loop(0, count, train, (carry.agent, self._zero_metrics(carry.agent)))
        out = {"metrics": sums, "updates": count, "episodes": finished.astype(jnp.int32) * self.envs,
               "score": jnp.where(finished, score.sum(), 0.0)}
        carry = carry.replace(
            agent=agent_state, env=env_state, obs=jax.vmap(env.observe)(env_state), reward=reward, is_first=is_first,
            last=last, score=jnp.where(finished, 0.0, score), policy=policy, replay=replay, env_steps=env_steps,
            debt=debt - count, updates=carry.updates + count, key=key)
        return carry, out

    def _zero_metrics(self, agent_state: DreamerState) -> dict:
        B, T = self.config.batch, self.config.length
        batch = {k: jax.ShapeDtypeStruct((B, T, *s.shape), s.dtype) for k, s in _step_fields(self.env).items()}
        shapes = jax.eval_shape(self.agent.train, agent_state, batch, jax.random.key(0))[1]
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def run(self, carry: Carry, iterations: int) -> tuple[Carry, dict]:
        """`iterations` iterations in one `lax.scan`; outputs summed over them."""
        def body(carry, _):
            carry, out = self.iteration(carry)
            return jax.lax.with_sharding_constraint(carry, self.shardings(carry)), out

        carry, outs = jax.lax.scan(body, carry, None, length=iterations)
        return carry, jax.tree.map(lambda x: x.sum(0), outs)

    def evaluate(self, agent_state: DreamerState, key: jax.Array, episodes: int, dream: int = 0) -> tuple[jax.Array, jax.Array]:
        """`episodes` episodes of the policy's mode, one MJX environment each: their rewards (T, episodes),
        and with `dream` H the H-step reward imagined before each step (`Dreamer.dream`), else zeros."""
        env = self.env
        reset_key, key = jax.random.split(key)
        state = jax.vmap(env.reset)(jax.random.split(reset_key, episodes))

        def body(inner, k):
            state, policy, first = inner
            obs = {"proprio": jax.vmap(env.observe)(state), "is_first": first}
            if dream:
                action, policy, dreamed = self.agent.dream(agent_state, policy, obs, k, dream)
            else:
                action, policy = self.agent.policy(agent_state, policy, obs, k, explore=False)
                dreamed = jnp.zeros(episodes)
            state, reward = jax.vmap(env.step)(state, action)
            return (state, policy, jnp.zeros_like(first)), (reward, dreamed)

        init = (state, self.agent.init_policy(episodes), jnp.ones(episodes, bool))
        _, (rewards, dreamed) = jax.lax.scan(body, init, jax.random.split(key, env.time_limit))
        return rewards, dreamed


def train_compiled(config: Config, agent_for) -> dict:
    """Runs (or resumes) a compiled-loop run; `agent_for(spec)` builds the agent (experiments.train.make_agent)."""
    from experiments.train import _crossed, config_record, dream_gap, enable_compile_cache, log_evaluation, open_run

    enable_compile_cache()
    env = make_env(config)
    check_memory(config, env)
    run = config.run_dir
    checkpoints, meta = open_run(config)
    spec = spec_of(env)
    agent = agent_for(spec)
    write_record(run, config.model, spec, config.task, ("agent", "world_model"))
    loop = CompiledLoop(config, agent, env)
    key = jax.random.key(config.seed)
    carry = loop.init(agent.init(config.seed), key)
    if meta is not None:
        restored = checkpoints.restore({"agent": carry.agent, "replay": carry.replay})
        if restored is not None:
            _, saved, meta = restored
            counters = meta["counters"]
            key = jax.random.wrap_key_data(np.asarray(meta["key"], np.uint32))
            carry = loop.init(saved["agent"], key, saved["replay"], counters["env_steps"], counters["debt"], counters["updates"])
            Logger.truncate(run, counters["env_steps"])
            print(f"Resuming {run} at {counters['env_steps']} environment steps, {counters['updates']} updates; "
                  f"device replay holds {min(int(carry.replay.written), carry.replay.rows) * loop.envs} steps, one per action "
                  f"({loop.per_iteration // loop.envs} environment steps each).")
    carry = loop.place(carry)
    iterations = max(1, config.log_every // loop.per_iteration)
    run_chunk = jax.jit(loop.run, static_argnums=1, donate_argnums=0)
    evaluate = jax.jit(loop.evaluate, static_argnums=(2, 3))
    logger = Logger(run)
    counts = agent.parameter_counts(carry.agent)
    print(f"{config.task} (compiled loop, {loop.envs} MJX environments on {config.devices} device(s)): world model {counts['world_model'] / 1e6:.2f}M "
          f"parameters; {config.batch}x{config.length} per update, {loop.envs * config.train_ratio / loop.per_update:.3f} "
          f"updates per iteration, {iterations} iterations per call.")

    def save(carry: Carry) -> None:
        checkpoints.save(int(carry.env_steps), {"agent": carry.agent, "replay": carry.replay}, {
            "config": config_record(config),
            "counters": {"env_steps": int(carry.env_steps), "debt": float(carry.debt), "updates": int(carry.updates)},
            "key": np.asarray(jax.random.key_data(carry.key)).tolist()})

    with StopSignals("this chunk of the compiled loop") as stop:
        bar = tqdm.tqdm(total=config.steps, initial=int(carry.env_steps), unit="step", desc=config.task, dynamic_ncols=True)
        summary, scores = {}, []
        eval_key = jax.random.key(config.seed + 1)
        after = int(carry.env_steps)  # the steps the carry holds, read on the host after each chunk
        try:
            while int(carry.env_steps) < config.steps and not stop:
                before, start = int(carry.env_steps), time.perf_counter()
                carry, out = run_chunk(carry, iterations)
                out = jax.device_get(out)
                seconds = time.perf_counter() - start
                after = int(carry.env_steps)
                bar.update(after - before)
                updates = int(out["updates"])
                if out["episodes"]:
                    scores = (scores + [float(out["score"]) / int(out["episodes"])])[-20:]
                summary = {"speed/env_steps_per_s": (after - before) / seconds, "speed/updates_per_s": updates / seconds,
                           "speed/replayed_frames_per_s": updates * loop.per_update / seconds,
                           "host/rss_gib": resident_memory_gib()}
                if updates:
                    summary.update({f"train/{k}": float(v) / updates for k, v in out["metrics"].items() if k != "skipped"})
                    summary["train/skipped"] = float(agent.skipped(carry.agent))  # a running count, as in the host loop
                if scores:
                    summary["episode/recent_score"] = float(np.mean(scores))
                logger.write(after, summary)
                bar.set_postfix(fps=f"{summary['speed/env_steps_per_s']:.0f}", upd=int(carry.updates),
                                ret=f"{summary.get('episode/recent_score', float('nan')):.1f}")
                if config.eval_every and _crossed(before, after, config.eval_every) and int(carry.updates):
                    eval_key, k = jax.random.split(eval_key)
                    rewards, dreamed = (np.asarray(x) for x in evaluate(carry.agent, k, config.eval_episodes, config.eval_dream))
                    gap = dream_gap(list(zip(rewards.T, dreamed.T)), config.eval_dream, config.length) if config.eval_dream else None
                    log_evaluation(logger, bar, after, rewards.sum(0), gap)
                if _crossed(before, after, config.save_every):
                    save(carry)
        finally:
            bar.close()
            save_if_whole(carry, after, checkpoints.steps(), lambda: save(carry))
            checkpoints.close()
            logger.close()
    return {**summary, "env_steps": int(carry.env_steps), "updates": int(carry.updates)}
