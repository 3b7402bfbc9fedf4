"""Train a world model on a dataset of collected episodes.

    python -m experiments.collect --task dmc/cartpole-swingup --episodes 40 --out data/cartpole
    python -m experiments.train_world_model --data data/cartpole --run runs/wm-cartpole

Metrics go to <run>/metrics.jsonl and <run>/tensorboard; an orbax checkpoint
is written every `--save-every` updates to <run>/checkpoints. Running the same
command again resumes from the newest checkpoint: parameters, optimiser state,
update counter and the sampler's RNG state.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Literal

import jax
import numpy as np
import tqdm
import tyro

from embodied.checkpoint import Checkpointer
from embodied.config import with_defaults
from embodied.logging import Logger
from embodied.replay import Replay, ReplayConfig
from embodied.stopping import StopSignals, save_if_whole
from embodied.worldmodel import OptimConfig, Spec, WorldModel, WorldModelConfig, init_state, make_optimizer, make_train_step
from embodied.worldmodel.io import load as load_world_model, write_record
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Args:
    data: pathlib.Path
    """Directory of episode chunk files (from experiments.collect)."""
    run: pathlib.Path = pathlib.Path("runs/world-model")
    """Run directory: metrics, TensorBoard, checkpoints, config.json."""
    model: WorldModelConfig = WorldModelConfig()
    optim: OptimConfig = OptimConfig()
    batch: int = 16
    length: int = 64
    """Sequence length T of each training sequence."""
    updates: int = 2000
    """Total updates; a resumed run continues up to this count."""
    minutes: float | None = None
    """Stop after this much wall time (a checkpoint is written at the stop)."""
    log_every: int = 25
    save_every: int = 250
    capacity: int = 1_000_000
    """Replay capacity in steps (the newest episodes that fit are loaded)."""
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    """bfloat16 computes the train step in bfloat16; parameters and optimiser state stay float32."""
    seed: int = 0


def data_spec(batch: dict) -> Spec:
    image = tuple(batch["image"].shape[2:]) if "image" in batch else None
    proprio = int(batch["proprio"].shape[-1]) if "proprio" in batch else None
    return Spec(image=image, proprio=proprio, action=int(batch["action"].shape[-1]))


def config_record(args: Args, spec: Spec) -> dict:
    """What must match between a checkpoint and the run that resumes it."""
    # Through JSON, so that it compares equal to what a checkpoint read back (lists, not tuples).
    return json.loads(json.dumps({"model": dataclasses.asdict(args.model), "spec": dataclasses.asdict(spec)}))


def load_data(args: Args) -> Replay:
    if not args.data.is_dir():
        raise FileNotFoundError(f"--data {args.data} is not a directory of episodes; create one with python -m experiments.collect --out {args.data}.")
    replay = Replay(ReplayConfig(capacity=args.capacity), directory=args.data)
    if replay.num_episodes == 0:
        raise ValueError(f"No episodes in {args.data}: collect some with python -m experiments.collect --out {args.data}.")
    if len(replay) < args.length:
        raise ValueError(f"{args.data} holds {len(replay)} steps, fewer than --length {args.length}: collect more or train on shorter sequences.")
    return replay


def train(args: Args) -> dict:
    replay = load_data(args)
    rng = np.random.default_rng(args.seed)
    sample = lambda: {k: v for k, v in replay.sample(args.batch, args.length, rng).items() if k != "is_last"}  # noqa: E731
    spec = data_spec(sample())
    record = config_record(args, spec)

    checkpoints = Checkpointer(args.run / "checkpoints")
    meta = checkpoints.read_meta()
    if meta is not None and {**meta["config"], "model": with_defaults(WorldModelConfig, meta["config"]["model"])} != record:
        raise ValueError(
            f"The checkpoint in {args.run} was trained with another model or data layout:\n  checkpoint: {json.dumps(meta['config'])}\n"
            f"  this run:   {json.dumps(record)}\nUse another --run, or the same config and data."
        )
    model = WorldModel(args.model, spec, rngs=nnx.Rngs(args.seed))
    optimizer = make_optimizer(args.optim)
    graphdef, state = init_state(model, optimizer)
    key = jax.random.key(args.seed)
    restored = checkpoints.restore(state) if meta is not None else None
    if restored is not None:
        step, state, meta = restored
        rng.bit_generator.state = meta["sampler_rng"]
        key = jax.random.wrap_key_data(np.asarray(meta["key"], np.uint32))
        print(f"Resuming {args.run} from update {step}.")
    args.run.mkdir(parents=True, exist_ok=True)
    write_record(args.run, args.model, spec, None, ())
    (args.run / "config.json").write_text(json.dumps({**record, "args": json.loads(json.dumps(dataclasses.asdict(args), default=str))}, indent=2))

    train_step = jax.jit(make_train_step(graphdef, optimizer, args.compute_dtype), donate_argnums=0)
    logger = Logger(args.run)
    step = int(state.step)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    bar = tqdm.tqdm(total=args.updates, initial=step, unit="upd", desc=f"train {args.model.backbone.kind} ({params / 1e6:.2f}M params)")
    start, window_start, window_steps = time.perf_counter(), time.perf_counter(), 0
    metrics = {}

    def save():
        checkpoints.save(step, state, {"config": record, "sampler_rng": rng.bit_generator.state, "key": np.asarray(jax.random.key_data(key)).tolist()})

    with StopSignals("this update") as stop:
        try:
            while step < args.updates and not stop:
                key, step_key = jax.random.split(key)
                state, metrics = train_step(state, sample(), step_key)
                step += 1
                window_steps += 1
                bar.update(1)
                if step % args.log_every == 0 or step == args.updates:
                    metrics = jax.device_get(metrics)
                    fps = window_steps * args.batch * args.length / (time.perf_counter() - window_start)
                    logger.write(step, {**metrics, "frames_per_s": fps})
                    bar.set_postfix(loss=f"{metrics['loss']:.1f}", image=f"{metrics.get('image_loss', 0):.1f}", kl=f"{metrics['kl']:.2f}", fps=f"{fps:.0f}")
                    window_start, window_steps = time.perf_counter(), 0
                if step % args.save_every == 0:
                    save()
                if args.minutes is not None and time.perf_counter() - start > 60 * args.minutes:
                    break
        finally:
            bar.close()
            if step > 0:
                save_if_whole(state, step, checkpoints.steps(), save)
            checkpoints.close()
            logger.close()
    return {"step": step, **{k: float(v) for k, v in jax.device_get(metrics).items()}}


if __name__ == "__main__":
    train(tyro.cli(Args))


def load(run: pathlib.Path) -> tuple[WorldModel, int]:
    """The trained model of a run directory and its update count; clear errors when there is none."""
    loaded = load_world_model(run)
    return loaded.model, loaded.step
