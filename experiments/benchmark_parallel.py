"""Data-parallel scaling of the train steps over a device mesh.

    python -m experiments.benchmark_parallel              # 1, 2, 4 forced CPU devices
    python -m experiments.benchmark_parallel --devices 1 2 4 8   # on an accelerator host: real devices

Strong scaling: a fixed global batch split over 1, 2, 4 devices. Weak scaling:
a fixed batch per device. The world-model step (pixels, the small preset's
model) and the whole agent step, frames/s, medians of `repeats`. On CPU the
forced devices share the same cores, so this measures the overhead of
partitioning, not a speed-up; on GPUs it measures the speed-up.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import dataclasses  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

from agents.dreamer import Dreamer  # noqa: E402
from embodied.parallel import data_parallel, make_mesh, shard_batch  # noqa: E402
from embodied.worldmodel import Spec  # noqa: E402
from experiments.benchmark import table  # noqa: E402
from experiments.config import PRESETS  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
    devices: tuple[int, ...] = (1, 2, 4)
    preset: str = "small"
    batch: int = 16
    """Global batch for strong scaling; batch / max(devices) per device for weak scaling."""
    length: int = 64
    repeats: int = 5


def fake_batch(B: int, T: int, size: int, rng) -> dict:
    return {
        "image": rng.integers(0, 255, (B, T, size, size, 3), dtype=np.uint8),
        "action": rng.uniform(-1, 1, (B, T, 1)).astype(np.float32),
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": np.zeros((B, T), bool) | (np.arange(T) == 0),
        "is_terminal": np.zeros((B, T), bool),
    }


def frames_per_second(agent: Dreamer, devices: int, B: int, T: int, repeats: int) -> float:
    mesh = make_mesh(devices)
    step = data_parallel(agent.train, mesh)
    state = agent.init(0)
    batch = shard_batch(fake_batch(B, T, agent.spec.image[0], np.random.default_rng(0)), mesh)
    state, metrics = step(state, batch, jax.random.key(0))
    jax.block_until_ready(metrics)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, batch, jax.random.key(i))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return B * T / float(np.median(times))


def main(args: Args) -> None:
    config = PRESETS[args.preset]
    agent = Dreamer(Spec(image=(64, 64, 3), proprio=None, action=1), config.model, config.agent, config.model_optim)
    per_device = args.batch // max(args.devices)
    rows, base = [], {}
    for n in args.devices:
        strong = frames_per_second(agent, n, args.batch, args.length, args.repeats)
        weak = frames_per_second(agent, n, per_device * n, args.length, args.repeats)
        base.setdefault("strong", strong)
        base.setdefault("weak", weak / n)
        rows.append([n, f"{args.batch}", f"{strong:,.0f}", f"{strong / base['strong']:.2f}x",
                     f"{per_device * n}", f"{weak:,.0f}", f"{weak / n / base['weak']:.2f}"])
    print(f"Agent train step (world model + imagination + actor-critic), preset {args.preset}, T={args.length}, "
          f"{jax.devices()[0].platform} x{len(jax.devices())}; frames/s, median of {args.repeats}")
    print(table(["devices", "global batch", "frames/s", "vs 1", "weak batch", "frames/s", "efficiency"], rows))


if __name__ == "__main__":
    main(tyro.cli(Args))
