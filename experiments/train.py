"""Train a Dreamer agent on a task: collect, replay, learn a world model, learn to act in its imagination.

    python -m experiments.train --task dmc/cartpole-swingup
    python -m experiments.train --preset debug --task dmc/cartpole-balance --env.proprio True --env.pixels False

Everything lives in the run directory (default runs/<task>-<preset>-<seed>):
config.json (the resolved config), metrics.jsonl and tensorboard/, replay/
(finished episodes, one file each), checkpoints/ (orbax), and eval-<step>.gif.
Running the same command again resumes from the newest checkpoint: the agent
state (parameters, optimiser moments, normalisers), step counters, update
debt, the sampler's and the policy's random state. The replay is reloaded
from disk up to its capacity, never twice; episodes finished after the last
checkpoint are kept. A SIGTERM or Ctrl-C writes the episodes in progress to the
replay, cut where they stand (as truncations), and a checkpoint, before exiting.

Several hosts: start the same command on each with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set (`embodied.parallel.initialize`).
Each process steps its own environments into its own replay (replay/ on
process 0, replay-<i>/ on the others) and samples batch / processes rows of
every update; the update itself is one global step over all processes'
devices (`--devices` counts each process's). Process 0 logs, evaluates and
writes config.json; all take part in checkpoints.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib
import sys
import time
from collections import deque
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
import tyro

import envs
from agents.dreamer import Dreamer
from embodied.checkpoint import Checkpointer
from embodied.config import from_dict, to_dict, with_defaults
from embodied.driver import Driver, EpisodeStats, random_policy
from embodied.logging import Logger, resident_memory_gib
from embodied.parallel import data_parallel, initialize, make_mesh, replicate, shard_batch
from embodied.replay import Replay
from embodied.stopping import StopSignals, save_if_whole
from embodied.worldmodel import Spec
from embodied.worldmodel.io import read_record, write_record
from experiments.config import PRESETS, Config, cautions, resolve, task_defaults, validate

# Fields that may change between a run and its resume; everything else must match the checkpoint.
RESUMABLE_CHANGES = ("run", "steps", "log_every", "eval_every", "eval_episodes", "eval_dream", "save_every", "planner", "mpc", "devices", "compute_dtype")


def parse(argv: list[str] | None = None) -> Config:
    """`--preset NAME` chooses the defaults, then every other flag overrides them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="small", choices=sorted(PRESETS))
    pre.add_argument("--task", default=None)
    known, rest = pre.parse_known_args(argv)
    default = PRESETS[known.preset]
    if known.task is not None:
        rest = ["--task", known.task, *rest]
    default = task_defaults(default, known.task or default.task)
    config = tyro.cli(Config, default=default, args=rest,
                      description=f"{__doc__}\nPresets: {', '.join(sorted(PRESETS))} (--preset NAME before other flags).")
    config = resolve(config)
    validate(config)
    return config


def task_spec(vector) -> Spec:
    spaces = vector.single_observation_space.spaces
    return Spec(image=spaces["image"].shape if "image" in spaces else None,
                proprio=int(spaces["proprio"].shape[0]) if "proprio" in spaces else None,
                action=int(vector.single_action_space.shape[0]))


def make_agent(config: Config, spec: Spec) -> Dreamer:
    return Dreamer(spec, config.model, config.agent, config.model_optim, compute_dtype=config.compute_dtype)


def enable_compile_cache() -> None:
    """Compiled programs persist across runs, so a resumed run does not compile again.

    In `~/.cache/reverie/jax`, unless `JAX_COMPILATION_CACHE_DIR` names another folder (the
    tests give each session its own), whose settings are then left as they are."""
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(pathlib.Path("~/.cache/reverie/jax").expanduser()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


@functools.lru_cache(maxsize=8)
def _jitted_policy(agent: Dreamer, explore: bool, planner, dream: int = 0, dream_samples: int = 1) -> Callable:
    """One jitted policy per agent and mode, so that each evaluation does not trace and compile it again.
    With `dream` H, the actor's mode and its H-step dream (`Dreamer.dream`, over `dream_samples` dreams)."""
    if dream:
        return jax.jit(functools.partial(agent.dream, horizon=dream, samples=dream_samples))
    return jax.jit(functools.partial(agent.policy, explore=explore, planner=planner))


class Acting:
    """The host-side policy the Driver calls: keeps the policy's recurrent state and its key.
    With `dream` H it acts with the actor's mode and keeps each step's imagined H-step reward in `dreamed`."""

    def __init__(self, agent: Dreamer, config: Config, num_envs: int, key: jax.Array, explore: bool, dream: int = 0,
                 dream_samples: int = 1):
        if dream and (explore or config.planner != "actor"):
            raise ValueError(f"A dream is imagined with the actor's mode: it takes --planner actor (got {config.planner!r}) "
                             "and no exploration.")
        self._policy = _jitted_policy(agent, explore, config.mpc if config.planner == "mpc" else None, dream, dream_samples)
        self.dreamed = None
        self._keys = set(k for k in ("image", "proprio") if getattr(agent.spec, k) is not None)
        self.state = agent.init_policy(num_envs)
        self.key = key
        self._agent_state = None

    @property
    def agent_state(self):
        return self._agent_state

    @agent_state.setter
    def agent_state(self, value) -> None:
        """The agent's parameters to act with. The policy's carry moves to their devices, so the
        jitted policy sees the same placements on every call and compiles once, not per placement."""
        self._agent_state = value
        sharding = jax.tree.leaves(value)[0].sharding if value is not None else None
        if sharding is not None and jax.tree.leaves(self.state)[0].sharding != sharding:
            self.state = jax.device_put(self.state, sharding)

    def __call__(self, obs: dict) -> np.ndarray:
        self.key, key = jax.random.split(self.key)
        inputs = {k: v for k, v in obs.items() if k in self._keys}
        inputs["is_first"] = np.asarray(obs["is_first"])
        action, self.state, *dreamed = self._policy(self.agent_state, self.state, inputs, key)
        self.dreamed = np.asarray(dreamed[0]) if dreamed else None
        return np.asarray(action)


def evaluate(agent: Dreamer, config: Config, agent_state, episodes: int, key: jax.Array, video: pathlib.Path | None = None,
             fresh_every: int | None = None, dream: int = 0, dream_samples: int = 1) -> tuple[list[float], dict | None]:
    """Runs `episodes` episodes with the policy's mode in a fresh environment; returns their scores,
    and with `dream` H the `dream_gap` of every state they visit (`Dreamer.dream`, the mean of
    `dream_samples` dreams from each), else None.

    An agent of an `mjx/` task runs in the task's dm-control form (same observations, rewards, timing).
    `fresh_every` N starts the policy's recurrent state afresh every N agent steps, as at an episode's
    start: no longer a history than a training sequence of N steps gives."""
    env = envs.make(config.task.replace("mjx/", "dmc/", 1), **config.env.options())
    acting = Acting(agent, config, 1, key, explore=False, dream=dream, dream_samples=dream_samples)
    acting.agent_state = agent_state
    played, frames = [], []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=10_000 + episode)
            done, rewards, dreams = False, [], []
            while not done:
                if video is not None and episode == 0:
                    frames.append(obs["image"] if "image" in obs else env.render())
                batched = {k: v[None] for k, v in obs.items()}
                t = len(rewards)
                fresh = t == 0 or (fresh_every is not None and t % fresh_every == 0)
                action = acting({**batched, "is_first": np.array([fresh])})[0]
                obs, reward, terminated, truncated, _ = env.step(action)
                rewards.append(float(reward))
                if dream:
                    dreams.append(float(acting.dreamed[0]))
                done = terminated or truncated
            played.append((np.array(rewards), np.array(dreams)))
    finally:
        env.close()
    if video is not None and frames:
        import imageio.v3 as iio

        iio.imwrite(video, np.stack(frames), duration=1000 / 30, loop=0)
    # With fresh_every the history restarts within an episode, so the split by the episode's step does not hold.
    return [float(real.sum()) for real, _ in played], dream_gap(played, dream, None if fresh_every else config.length) if dream else None


def dream_gap(episodes: list[tuple[np.ndarray, np.ndarray]], horizon: int, length: int | None = None) -> dict:
    """The imagined H-step rewards of episodes against the real ones that followed.

    Each episode is (real, imagined), both (T,): the reward of each agent step, and the H-step
    reward the world model imagined from the state before step t's action. Only the starts with
    H real steps after them (T - H + 1 an episode) count. `bias` is the mean of imagined - real
    (above 0: the dream promises more than the world gives), `error` the mean of |imagined - real|,
    `real` and `imagined` the two means, `correlation` their Pearson correlation over the starts
    (whether the dream tells the better states from the worse; NaN where either is constant).

    With the training sequence length L, `error_within` is the error of the starts whose dream ends
    within an episode's first L steps (t + H <= L: a history as long as training sequences show) and
    `error_beyond` that of the others; NaN where there are none."""
    windows = [(np.convolve(real, np.ones(horizon), "valid"), imagined) for real, imagined in episodes if len(real) >= horizon]
    if not windows:
        return {"starts": 0}
    real = np.concatenate([w for w, _ in windows])  # w[t] = real[t] + ... + real[t + H - 1]
    dreamed = np.concatenate([imagined[: len(w)] for w, imagined in windows])
    correlation = float(np.corrcoef(real, dreamed)[0, 1]) if real.std() > 0 and dreamed.std() > 0 else math.nan
    gap = {"starts": len(real), "real": float(real.mean()), "imagined": float(dreamed.mean()),
           "bias": float((dreamed - real).mean()), "error": float(np.abs(dreamed - real).mean()), "correlation": correlation}
    if length is not None:
        within = np.concatenate([np.arange(len(w)) + horizon <= length for w, _ in windows])
        error = np.abs(dreamed - real)
        gap |= {"error_within": float(error[within].mean()) if within.any() else math.nan,
                "error_beyond": float(error[~within].mean()) if (~within).any() else math.nan}
    return gap


def log_evaluation(logger: Logger, bar, step: int, returns, gap: dict | None, video: pathlib.Path | None = None) -> None:
    """Writes an evaluation's returns, and its dream against the world where measured (`eval/dream_*`)."""
    logger.write(step, {"eval/return": float(np.mean(returns)), "eval/return_std": float(np.std(returns))}
                 | ({f"eval/dream_{k}": float(v) for k, v in gap.items()} if gap else {}))
    line = f"eval at {step}: return {np.mean(returns):.1f} +- {np.std(returns):.1f}"
    if gap and gap["starts"]:
        line += f"; dream |imagined - real| {gap['error']:.2f} (bias {gap['bias']:+.2f}, correlation {gap['correlation']:.2f})"
    bar.write(line + (f" ({video.name})" if video is not None else ""))


def config_record(config: Config) -> dict:
    record = to_dict(config)
    for name in RESUMABLE_CHANGES:
        record.pop(name)
    return record


def local(tree):
    """This process's copy of a replicated state: acting and evaluation run on one process alone,
    and a jitted call on arrays that span several processes would need all of them."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def all_processes(flag: bool) -> bool:
    """True when `flag` holds on every process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag))))


def all_gathered(value) -> list:
    """`value` (anything JSON can hold) from every process, in process order (a collective)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    text = np.frombuffer(json.dumps(value).encode(), np.uint8)
    width = int(np.max(multihost_utils.process_allgather(np.asarray(len(text)))))
    rows = multihost_utils.process_allgather(np.pad(text, (0, width - len(text))))
    return [json.loads(bytes(row).rstrip(b"\0")) for row in np.asarray(rows).reshape(-1, width)]


def digest(data: bytes) -> str:
    """A short hash, printed by multi-host runs to show that processes agree."""
    import hashlib

    return hashlib.sha256(data).hexdigest()[:16]


def parameter_digest(state) -> str:
    """The parameters' digest: equal on every process of a multi-host run."""
    return digest(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(local(state))))


def open_run(config: Config) -> tuple[Checkpointer, dict | None]:
    """The run directory's checkpointer and newest metadata; a config that differs from the checkpoint's
    (beyond RESUMABLE_CHANGES) fails here, naming every differing field. Writes config.json."""
    run = config.run_dir
    checkpoints = Checkpointer(run / "checkpoints")
    meta = checkpoints.read_meta()
    changed = [] if meta is None else config_differences(meta["config"], config)
    if changed:
        differences = "\n".join(f"  {name}: checkpoint {old!r}, now {new!r}" for name, old, new in changed)
        raise ValueError(f"{run} holds a run with another config; resume it with the same flags or pass another --run. "
                         f"Only {', '.join(RESUMABLE_CHANGES)} may change on resume. Differences:\n{differences}")
    run.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (run / "config.json").write_text(json.dumps(to_dict(config), indent=2))
    return checkpoints, meta


def train(config: Config) -> dict:
    """Runs (or resumes) the run described by `config`; returns a summary of the last window."""
    config = resolve(config)
    if jax.process_index() == 0:
        for note in cautions(config):
            print(f"note: {note}", file=sys.stderr)
    if config.loop == "compiled":
        from experiments.compiled import train_compiled

        return train_compiled(config, lambda spec: make_agent(config, spec))
    enable_compile_cache()
    run = config.run_dir
    checkpoints, meta = open_run(config)

    process, processes = jax.process_index(), jax.process_count()
    if config.batch % (config.devices * processes):
        raise ValueError(f"batch={config.batch} must divide over all {config.devices * processes} devices "
                         f"({processes} processes x devices={config.devices}).")
    vector = envs.make_vector(config.task, config.env.envs, **config.env.options())
    spec, repeat = task_spec(vector), vector.get_attr("action_repeat")[0]
    agent = make_agent(config, spec)
    state = agent.init(config.seed)
    if process == 0:
        write_record(run, config.model, spec, config.task, ("world_model",))
    replay = Replay(config.replay, directory=run / ("replay" if process == 0 else f"replay-{process}"))
    counters = {"env_steps": 0, "updates": 0, "debt": 0.0, "episodes": 0}
    sampler = np.random.default_rng([config.seed, process])
    key = jax.random.key(config.seed)
    log_dir = run if process == 0 else run / f"process-{process}"
    restored = checkpoints.restore(state) if meta is not None else None
    if restored is not None:
        _, state, meta = restored
        counters = meta["counters"]
        # Every process's sampler state, in process order (older checkpoints held process 0's alone). A process
        # the run did not have before starts its replay empty, and its sampler from its seed.
        samplers = meta.get("sampler_rngs", [meta.get("sampler_rng")])
        if process < len(samplers):
            sampler.bit_generator.state = samplers[process]
        key = jax.random.wrap_key_data(np.asarray(meta["key"], np.uint32))
        Logger.truncate(log_dir, counters["env_steps"])
        print(f"Resuming {run} at {counters['env_steps']} environment steps, {counters['updates']} updates; "
              f"replay holds {len(replay)} steps from disk.")

    mesh = make_mesh(config.devices * processes)
    train_step = data_parallel(agent.train, mesh)
    state = replicate(state, mesh)  # placed as train_step returns it: its first call compiles the program the rest use
    key, act_key, eval_key = jax.random.split(key, 3)
    acting = Acting(agent, config, config.env.envs, jax.random.fold_in(act_key, process), explore=True)
    acting.agent_state = local(state)
    env_seed = config.seed + counters["env_steps"] + 1_000_003 * process
    random_actions = random_policy(vector.single_action_space, seed=env_seed)
    logger = Logger(log_dir)
    scores: deque[float] = deque(maxlen=20)
    window = {"metrics": [], "start": time.perf_counter(), "env_steps": 0, "updates": 0}
    counts = agent.parameter_counts(state)
    print(f"{config.task}: world model {counts['world_model'] / 1e6:.2f}M, actor {counts['actor'] / 1e6:.2f}M, "
          f"critic {counts['critic'] / 1e6:.2f}M parameters; {config.batch}x{config.length} per update, "
          f"one update per {config.batch * config.length / config.train_ratio:.0f} agent steps.")

    def on_episode(episode: dict, stats: EpisodeStats) -> None:
        replay.add(episode)
        scores.append(stats.score)
        counters["episodes"] += 1
        logger.write(counters["env_steps"], {"episode/score": stats.score, "episode/length": stats.length})

    def save() -> None:
        checkpoints.save(counters["env_steps"], state, {
            "config": config_record(config), "counters": counters, "sampler_rngs": all_gathered(sampler.bit_generator.state),
            "key": np.asarray(jax.random.key_data(key)).tolist(),
        })

    driver = Driver(vector, on_episode)
    driver.reset(seed=env_seed)
    ready = False  # every process's replay holds a sequence; latched, so all processes agree when to train
    bar = tqdm.tqdm(total=config.steps, initial=counters["env_steps"], unit="step", desc=config.task, dynamic_ncols=True)
    summary = {}
    per_update = config.batch * config.length
    with StopSignals("this environment step and its updates") as stop:
        try:
            while counters["env_steps"] < config.steps:
                before = counters["env_steps"]
                if not ready:
                    ready = all_processes(len(replay) >= config.length)
                prefilling = counters["env_steps"] < config.prefill or not ready
                driver.step(random_actions if prefilling else acting, 1)
                counters["env_steps"] += config.env.envs * repeat
                window["env_steps"] += config.env.envs * repeat
                bar.update(config.env.envs * repeat)

                if not prefilling:
                    replay.mark_prefill()  # the episodes so far were random actions: prefill_share draws from them
                    counters["debt"] += config.env.envs * config.train_ratio / per_update
                    while counters["debt"] >= 1.0:
                        key, step_key = jax.random.split(key)
                        batch = {k: v for k, v in replay.sample(config.batch // processes, config.length, sampler).items() if k != "is_last"}
                        batch = shard_batch(batch, mesh)
                        state, metrics = train_step(state, batch, step_key)
                        acting.agent_state = local(state)
                        window["metrics"].append(metrics)
                        counters["updates"] += 1
                        window["updates"] += 1
                        counters["debt"] -= 1.0

                if _crossed(before, counters["env_steps"], config.log_every):
                    summary = _log(logger, counters, window, scores, per_update, bar)
                if process == 0 and config.eval_every and _crossed(before, counters["env_steps"], config.eval_every) and counters["updates"]:
                    eval_key, k = jax.random.split(eval_key)
                    video = run / f"eval-{counters['env_steps']}.gif"
                    returns, gap = evaluate(agent, config, local(state), config.eval_episodes, k, video=video, dream=config.eval_dream)
                    log_evaluation(logger, bar, counters["env_steps"], returns, gap, video)
                if _crossed(before, counters["env_steps"], config.save_every):
                    save()
                if processes == 1:
                    if stop:
                        break
                elif _crossed(before, counters["env_steps"], config.log_every) and not all_processes(not stop):
                    break  # a signal on any process stops them all, at the same step
        finally:
            bar.close()
            driver.flush(replay.add)  # the episodes in progress reach the replay on disk, cut where they stand
            save_if_whole(state, counters["env_steps"], checkpoints.steps(), save)
            checkpoints.close()
            logger.close()
            vector.close()
    sampler_digest = digest(json.dumps(sampler.bit_generator.state).encode())
    return {**summary, **counters, "parameters": parameter_digest(state), "sampler": sampler_digest}


def config_differences(saved: dict, config: Config) -> list[tuple[str, object, object]]:
    """(field, saved value, value now) for each field of a checkpoint's config record that `config`
    changes. A field added to Config since the run started counts as its default, which keeps the
    behaviour of the code before it, so that upgrading Reverie does not block resuming a run."""
    saved = {name: value for name, value in with_defaults(Config, saved).items() if name not in RESUMABLE_CHANGES}
    return list(_differences(saved, config_record(config)))


def _differences(old: dict, new: dict, prefix: str = ""):
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{name}.")
        elif a != b:
            yield f"{prefix}{name}", a, b


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and before // every != after // every


def _log(logger: Logger, counters: dict, window: dict, scores, per_update: int, bar) -> dict:
    seconds = time.perf_counter() - window["start"]
    out = {
        "speed/env_steps_per_s": window["env_steps"] / seconds,
        "speed/replayed_frames_per_s": window["updates"] * per_update / seconds,
        "speed/updates_per_s": window["updates"] / seconds,
        "replay/episodes": counters["episodes"],
        "host/rss_gib": resident_memory_gib(),
    }
    if window["metrics"]:
        stacked = jax.device_get(jax.tree.map(lambda *x: jnp.stack(x), *window["metrics"]))
        out.update({f"train/{k}": float(np.mean(v)) for k, v in stacked.items() if k != "skipped"})
        out["train/skipped"] = float(stacked["skipped"][-1])
    if scores:
        out["episode/recent_score"] = float(np.mean(scores))
    for k, v in out.items():
        if not math.isfinite(v):
            bar.write(f"warning: {k} is {v} at {counters['env_steps']} steps")
    logger.write(counters["env_steps"], out)
    bar.set_postfix(fps=f"{out['speed/env_steps_per_s']:.0f}", upd=counters["updates"],
                    ret=f"{out.get('episode/recent_score', float('nan')):.1f}")
    window.update(metrics=[], start=time.perf_counter(), env_steps=0, updates=0)
    return out


def load(run: pathlib.Path) -> tuple[Config, Dreamer, object, int]:
    """The config, agent, trained state and environment-step count of a run directory."""
    run = pathlib.Path(run)
    if run.name == "checkpoints":
        run = run.parent
    path = run / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run} is not a training run (no config.json); pass the run directory of experiments.train.")
    config = from_dict(Config, json.loads(path.read_text()))
    _, spec, _, _ = read_record(run)
    agent = make_agent(config, spec)
    checkpoints = Checkpointer(run / "checkpoints")
    template = agent.init(config.seed)
    if config.loop == "compiled":  # the checkpoint holds the device replay beside the agent
        from experiments.compiled import replay_template

        template = {"agent": template, "replay": replay_template(config, spec)}
    restored = checkpoints.restore(template)
    checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{run / 'checkpoints'} holds no readable checkpoint.")
    step, state, _ = restored
    return config, agent, state["agent"] if config.loop == "compiled" else state, step


def main(argv: list[str] | None = None) -> dict:
    multi = initialize()  # a no-op unless the JAX_* variables (or a cluster) say there are several processes
    config = parse(argv)
    summary = train(config)
    if multi:
        print(f"process {jax.process_index()}/{jax.process_count()}: {summary['env_steps']} environment steps, "
              f"{summary['updates']} updates, parameters {summary['parameters']}, sampler {summary['sampler']}", flush=True)
        jax.distributed.shutdown()
    return summary


if __name__ == "__main__":
    main()
