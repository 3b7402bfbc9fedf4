"""The training run's configuration: frozen dataclasses, composed, with named presets.

    python -m experiments.train --preset debug --steps 2000 --agent.horizon 10

`--preset` picks an overlay of `PRESETS`; every field can then be overridden
from the command line (tyro builds it from the dataclasses). An unknown field
is rejected by the parser; a value that cannot work is rejected by
`validate` before any environment starts, with the field's name.

Budgets and ratios, stated once:

- `steps` counts environment (simulator) steps, as the DMC literature does:
  with action repeat 2, 100k environment steps are 50k agent decisions.
- `train_ratio` counts replayed steps per agent step (as DreamerV3 does). Each
  update replays `batch * length` steps, so there is one update every
  `batch * length / train_ratio` agent steps, summed over all environments.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Literal

from agents.dreamer import DreamerConfig
from agents.mpc import MPCConfig
from embodied.config import require
from embodied.replay import ReplayConfig
from embodied.worldmodel import BackboneConfig, OptimConfig, WorldModelConfig


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    envs: int = 1
    """Environment copies stepped in parallel, each in its own process."""
    size: int = 64
    """Image height and width."""
    pixels: bool = True
    proprio: bool = False
    """Proprioceptive observations (positions, velocities) as well as, or instead of, pixels."""
    velocities: bool = True
    """Off: proprio leaves velocities out (dmc/ and mjx/ tasks), and the agent must infer them from
    successive positions, as it must from pixels."""
    action_repeat: int | None = None
    """None: the suite's (2 for dmc, 1 for gym). The small preset sets 8 for dm-control's cartpole (`TASK_DEFAULTS`)."""
    time_limit: int | None = None
    """Episode length in agent steps; defaults to the suite's."""
    supersample: int = 1
    """Anti-aliasing: each image is rendered at this many times its height and width and every block
    averaged, so that a thin body's small movements (a pole's tilt) change pixels smoothly. 1: off."""

    def options(self) -> dict:
        """The keyword arguments of `envs.make` and `envs.make_vector` these fields give (all but `envs`)."""
        return dict(size=self.size, pixels=self.pixels, proprio=self.proprio, velocities=self.velocities,
                    action_repeat=self.action_repeat, time_limit=self.time_limit, supersample=self.supersample)


@dataclasses.dataclass(frozen=True)
class Config:
    task: str = "dmc/cartpole-swingup"
    """Task name; `python -c 'import envs; print(envs.names())'` lists them."""
    run: pathlib.Path | None = None
    """Run directory (config, metrics, checkpoints, replay, videos); defaults to runs/<task>-<preset>-<seed>."""
    preset: str = "small"
    """Recorded for the run directory's name; choose it with --preset before other flags."""
    env: EnvConfig = EnvConfig()
    model: WorldModelConfig = WorldModelConfig()
    model_optim: OptimConfig = OptimConfig()
    agent: DreamerConfig = DreamerConfig()
    replay: ReplayConfig = ReplayConfig(capacity=1_000_000)
    steps: int = 100_000
    """Environment steps (after action repeat) to train for."""
    train_ratio: float = 32.0
    """Replayed steps per agent step (see the module docstring); the small preset's is 96, 440 on cartpole (`TASK_DEFAULTS`)."""
    batch: int = 16
    length: int = 64
    """Sequence length T of each replayed sequence."""
    prefill: int = 5_000
    """Environment steps of uniformly random actions before training starts."""
    log_every: int = 2_000
    eval_every: int = 10_000
    """Environment steps between evaluations (0: never)."""
    eval_episodes: int = 5
    eval_dream: int = 0
    """At each evaluation, also imagine this many steps with the actor from every state the episodes
    visit and log the imagined reward against the real one that followed (eval/dream_error, _bias,
    _correlation; `experiments.evaluate --dream`). 0: off; it costs an imagination per evaluation step."""
    save_every: int = 10_000
    """Environment steps between checkpoints; one is also written at the end and on Ctrl-C."""
    planner: Literal["actor", "mpc"] = "actor"
    """How to act: the actor network, or MPPI in latent space (agents/mpc.py)."""
    mpc: MPCConfig = MPCConfig()
    devices: int = 1
    """Devices the train step runs over (data parallel: the batch splits over them; it must divide by this)."""
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    """bfloat16 computes the train step in bfloat16; parameters, optimiser state and acting stay float32."""
    loop: Literal["host", "compiled"] = "host"
    """host: Gymnasium environments in worker processes, replay in host memory. compiled: MJX environments,
    device replay and training in one jitted program (experiments/compiled.py; mjx/ tasks, the default for them)."""
    seed: int = 0

    @property
    def run_dir(self) -> pathlib.Path:
        return self.run or pathlib.Path("runs") / f"{self.task.replace('/', '-')}-{self.preset}-{self.seed}"


def validate(config: Config) -> None:
    """Raises ValueError naming the field whose value cannot work."""
    import envs  # the task list; imported here so that configs stay light

    if config.loop == "compiled" or config.task.startswith("mjx/"):
        _validate_compiled(config)
    elif config.task not in envs.names():
        import difflib

        close = difflib.get_close_matches(config.task, envs.names(), n=3)
        raise ValueError(f"task={config.task!r} is not a known task{' (did you mean ' + ', '.join(close) + '?)' if close else ''}. "
                         f"Known: {', '.join(envs.names())}, and with --loop compiled: {', '.join(_mjx_names())}.")
    halvings = len(config.model.mults)
    require(config, {
        "steps": (config.steps >= 1, ">= 1"),
        "train_ratio": (config.train_ratio > 0, "> 0"),
        "batch": (config.batch >= 1, ">= 1"),
        "length": (config.length >= 2, ">= 2 (a transition needs two steps)"),
        "prefill": (config.prefill >= 0, ">= 0"),
        "log_every": (config.log_every >= 1, ">= 1"),
        "eval_every": (config.eval_every >= 0, ">= 0"),
        "eval_episodes": (config.eval_episodes >= 1, ">= 1"),
        "eval_dream": (config.eval_dream >= 0 and (config.eval_dream == 0 or config.planner == "actor"),
                       ">= 0, and 0 with --planner mpc (the dream is the actor's)"),
        "save_every": (config.save_every >= 1, ">= 1"),
        "env.envs": (config.env.envs >= 1, ">= 1"),
        "env.size": (config.env.size >= 16 and config.env.size % 2**halvings == 0,
                     f"a multiple of {2**halvings} (the encoder halves it {halvings} times), >= 16"),
        "env.pixels": (config.env.pixels or config.env.proprio, "on, or proprio on (at least one of the two)"),
        "env.supersample": (config.env.supersample >= 1, ">= 1 (1 renders without anti-aliasing)"),
        "env.velocities": (config.env.velocities or (config.env.proprio and config.task.split("/")[0] in ("dmc", "mjx")),
                           "on, unless proprio is on and the task is a dmc/ or mjx/ one (it thins the proprio vector)"),
        "replay.capacity": (config.replay.capacity >= config.length, f">= length ({config.length})"),
        "replay.prefill_share": (0 <= config.replay.prefill_share < 1 and (config.replay.prefill_share == 0 or config.prefill > 0),
                                 "in [0, 1), and 0 unless prefill > 0 (it draws from the prefill's episodes)"),
        "devices": (config.devices >= 1 and config.batch % config.devices == 0, f">= 1 and divide batch ({config.batch})"),
    })


def resolve(config: Config) -> Config:
    """The config with its length-relative values made concrete: `model.backbone.timescale='auto'` becomes
    a quarter of `length` for an SSM backbone and None for the others. Idempotent; a run records the result."""
    backbone = config.model.backbone
    if backbone.timescale != "auto":
        return config
    timescale = config.length / 4 if backbone.kind.startswith("ssm") else None
    model = dataclasses.replace(config.model, backbone=dataclasses.replace(backbone, timescale=timescale))
    return dataclasses.replace(config, model=model)


def cautions(config: Config) -> list[str]:
    """What a valid config does that its user may not expect; a run prints these as it starts."""
    backbone, length = config.model.backbone, config.length
    notes = []
    if backbone.kind.startswith("ssm") and (backbone.timescale is None or backbone.timescale > length / 2):
        memory = "up to about 2,000 steps (S5's initialisation)" if backbone.timescale is None else f"{backbone.timescale:g} steps"
        notes.append(
            f"model.backbone.timescale={backbone.timescale}: the SSM's states remember {memory}, but it trains on "
            f"{length}-step sequences from a fresh carry, so past step {length} of an episode the agent acts from carries "
            f"training never produced (on positions-only cartpole balance the prior's KL grew 4-26x past 64 steps: "
            f"docs/agent-experiments.md, \"The SSM's dream beyond its training length\"). "
            f"--model.backbone.timescale {max(1, length // 4)} bounds the memory to a quarter of the sequence.")
    return notes


def _mjx_names() -> list[str]:
    from envs.mjx import names

    return names()


def _validate_compiled(config: Config) -> None:
    from envs.mjx import check_task

    if config.loop != "compiled":
        raise ValueError(f"loop={config.loop!r} cannot run task={config.task!r}: mjx/ tasks run in the compiled loop "
                         f"(--loop compiled), or use its dm-control form for the host loop.")
    try:
        check_task(config.task)
    except ValueError as e:
        raise ValueError(f"task={config.task!r} cannot run with loop='compiled': {e}") from None
    require(config, {
        "env.pixels": (not config.env.pixels, "False: MJX tasks observe proprio only"),
        "env.proprio": (config.env.proprio, "True: MJX tasks observe proprio"),
        "env.envs": (config.env.envs % config.devices == 0,
                     f"a multiple of devices ({config.devices}): each device steps env.envs / devices environments"),
        "prefill": (config.prefill >= config.length * config.env.envs * 2,
                    f">= length * env.envs * 2 ({config.length * config.env.envs * 2}): the device replay needs "
                    f"`length` rows before the first update"),
        "replay.capacity": (config.replay.capacity // config.env.envs >= config.length,
                            f">= length * env.envs ({config.length * config.env.envs})"),
        "replay.prefill_share": (config.replay.prefill_share == 0, "0: the compiled loop's device replay draws all rows alike"),
    })


def recorded_env(run: pathlib.Path) -> dict:
    """The environment options an agent run recorded in its config.json that change what the task gives
    (action repeat, time limit, velocities, anti-aliasing), for `envs.make`; {} where the run records none."""
    run = pathlib.Path(run)
    path = (run.parent if run.name == "checkpoints" else run) / "config.json"
    env = json.loads(path.read_text()).get("env", {}) if path.is_file() else {}
    return {k: env[k] for k in ("action_repeat", "time_limit", "velocities", "supersample") if k in env}


def compiled_defaults(config: Config) -> Config:
    """The defaults an mjx/ task changes: proprio observations, the compiled loop."""
    return dataclasses.replace(config, env=dataclasses.replace(config.env, pixels=False, proprio=True), loop="compiled")


# What a task changes in a preset's defaults, before the command line's flags override them: (preset, task) ->
# (action repeat, train ratio). The small preset acts on cartpole every 8 physics steps, PlaNet's choice for it,
# at 440 replayed steps per decision (55 per environment step; 48 at the preset's repeat of 2 and ratio 96).
# From pixels at 100k steps: swingup 470, 341 and 215 (mean 342) where repeat 2 gave 143-219 (mean 191), three
# seeds each; balance 596, 535 and 562 (mean 564) where it gave 465-573 (mean 501); 1 h 16 min to 2 h 56 min a run,
# by the day's machine speed (docs/agent-experiments.md, "Coarser control on cartpole from pixels").
TASK_DEFAULTS: dict[tuple[str, str], tuple[int, float]] = {
    ("small", "dmc/cartpole-swingup"): (8, 440.0),
    ("small", "dmc/cartpole-balance"): (8, 440.0),
}


def task_defaults(config: Config, task: str) -> Config:
    """`config`, a preset, with the defaults `task` changes in it (`compiled_defaults`, `TASK_DEFAULTS`)."""
    if task.startswith("mjx/"):
        return compiled_defaults(config)
    if (config.preset, task) in TASK_DEFAULTS:
        repeat, ratio = TASK_DEFAULTS[config.preset, task]
        return dataclasses.replace(config, env=dataclasses.replace(config.env, action_repeat=repeat), train_ratio=ratio)
    return config


def _preset(**changes) -> Config:
    return dataclasses.replace(Config(), **changes)


# DreamerV3's own choices at its smallest widths (0.71M-parameter world model): REINFORCE, gamma 0.997,
# imagination from every replayed step at train ratio 32, an SSM memory as trained, 16 latents, two
# stride-2 convolutions at full resolution. The small preset until 2026-12-06; the README's figures
# labelled v3-small were measured with it.
_V3_SMALL = _preset(
    preset="v3-small",
    model=WorldModelConfig(backbone=BackboneConfig(dim=128, state=64, layers=2), depth=4, hidden=128,
                           latent_vars=16, latent_classes=16),
    agent=DreamerConfig(units=128),
)

PRESETS: dict[str, Config] = {
    # Seconds to compile and run: the test suite's end-to-end run, and a smoke test of a new machine.
    "debug": _preset(
        preset="debug",
        env=EnvConfig(size=32, time_limit=50), steps=600, prefill=200, batch=4, length=16, train_ratio=64.0,
        log_every=100, eval_every=400, eval_episodes=1, save_every=200,
        model=WorldModelConfig(backbone=BackboneConfig(dim=64, state=16, layers=1), depth=4, hidden=64,
                               latent_vars=8, latent_classes=8, mults=(1, 2)),
        agent=DreamerConfig(units=64, layers=1, horizon=5),
        replay=ReplayConfig(capacity=20_000),
    ),
    # The default: v3-small where this machine's runs said to change it (docs/agent-experiments.md, "The
    # small preset's choices"): the actor learns by backpropagation through the dream, imagination starts
    # from a quarter of the replayed steps so that three times the updates fit in the same time, the SSM's
    # memory is bounded to a quarter of the training sequence, 64 latents (a 1.9M-parameter world model)
    # and the patch stem. 100k environment steps from pixels in 1.3 hours on 2 CPU cores at repeat 2, about 2 at
    # the cartpole tasks' repeat of 8 and ratio 440 (`TASK_DEFAULTS`).
    "small": dataclasses.replace(
        _V3_SMALL, preset="small", train_ratio=96.0,
        model=dataclasses.replace(_V3_SMALL.model, latent_vars=64, patch=4,
                                  backbone=dataclasses.replace(_V3_SMALL.model.backbone, timescale="auto")),
        agent=dataclasses.replace(_V3_SMALL.agent, actor_grad="backprop", discount=0.99, starts=0.25,
                                  critic_optim=dataclasses.replace(_V3_SMALL.agent.critic_optim, lr=1e-3)),
    ),
    "v3-small": _V3_SMALL,
    # The world model of the world-model benchmarks (WorldModelConfig's defaults, 2.8M parameters).
    "medium": _preset(preset="medium", train_ratio=64.0, env=EnvConfig(envs=2)),
    # For an accelerator.
    "large": _preset(
        preset="large", train_ratio=256.0, env=EnvConfig(envs=8),
        model=WorldModelConfig(backbone=BackboneConfig(dim=512, state=256, layers=3), depth=32, hidden=512,
                               latent_vars=32, latent_classes=32),
        agent=DreamerConfig(units=512, layers=3),
    ),
}
