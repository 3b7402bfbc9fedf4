"""Data-parallel scaling of the train steps over a device mesh.

    python -m experiments.benchmark_parallel              # 1, 2, 4 forced CPU devices
    python -m experiments.benchmark_parallel --devices 1 2 4 8   # on an accelerator host: real devices

Strong scaling: a fixed global batch split over 1, 2, 4 devices. Weak scaling:
a fixed batch per device. The world-model step (pixels, the small preset's
model) and the whole agent step, frames/s, medians of `repeats`. On CPU the
forced devices share the same cores, so this measures the overhead of
partitioning, not a speed-up; on GPUs it measures the speed-up. Two more tables
compare compute dtypes and the fraction of replayed steps imagination starts from,
on one device, and so do tables of the encoder's first stride and of what the
posterior reads.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import dataclasses  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

from agents.dreamer import Dreamer  # noqa: E402
from embodied.logging import table  # noqa: E402
from embodied.parallel import data_parallel, make_mesh, replicate, shard_batch  # noqa: E402
from embodied.worldmodel import Spec  # noqa: E402
from experiments.benchmark import timings  # noqa: E402
from experiments.config import PRESETS, resolve  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
    devices: tuple[int, ...] = (1, 2, 4)
    """Device counts for the scaling table (none: no table, only the comparisons below on one device)."""
    preset: str = "small"
    batch: int = 16
    """Global batch for strong scaling; batch / max(devices) per device for weak scaling."""
    length: int = 64
    repeats: int = 5
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    """Compute dtypes compared on one device at the global batch (`--compute-dtype` of the train scripts)."""
    starts: tuple[float, ...] = (1.0, 0.25)
    """Fractions of replayed steps imagination starts from (`--agent.starts`), compared on one device."""
    patches: tuple[int, ...] = (2, 4)
    """The encoder's first strides (`--model.patch`) compared on one device, at the last of `starts`."""
    posteriors: tuple[str, ...] = ("frame", "filter")
    """What the posterior reads (`--model.posterior`) compared on one device, at the last of `starts` and
    `patches`: frame runs the backbone over all steps at once, filter steps it through time."""


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
    state = replicate(agent.init(0), mesh)  # as the step returns it: the warm-up is the only compile
    batch = shard_batch(fake_batch(B, T, agent.spec.image[0], np.random.default_rng(0)), mesh)
    keys = iter(jax.random.split(jax.random.key(0), repeats + 1))

    def update():
        nonlocal state
        state, metrics = step(state, batch, next(keys))
        return metrics

    rate = B * T / statistics.median(seconds for seconds, _ in timings(update, repeats))
    print(f"  measured: {devices} device(s), batch {B}, dtype {jax.numpy.dtype(agent.dtype).name}, starts {agent.config.starts}, "
          f"patch {agent.model_config.patch}, posterior {agent.model_config.posterior}: {rate:,.0f} frames/s", file=sys.stderr, flush=True)
    return rate


def make_agent(preset: str, compute_dtype: str = "float32", starts: float | None = None, **model_changes) -> Dreamer:
    """The preset's agent for 64x64 pixels, with `starts` and any world-model fields (None: the preset's) changed."""
    config = resolve(PRESETS[preset])
    agent = config.agent if starts is None else dataclasses.replace(config.agent, starts=starts)
    model = dataclasses.replace(config.model, **{k: v for k, v in model_changes.items() if v is not None})
    return Dreamer(Spec(image=(64, 64, 3), proprio=None, action=1), model, agent, config.model_optim,
                   compute_dtype=compute_dtype)


def main(args: Args) -> None:
    agent = make_agent(args.preset)
    measured = {}  # (devices, batch) -> frames/s of the preset's own agent: each row compiles the whole step, so none twice

    def preset_rate(n: int, batch: int) -> float:
        if (n, batch) not in measured:
            measured[n, batch] = frames_per_second(agent, n, batch, args.length, args.repeats)
        return measured[n, batch]

    print(f"Agent train step (world model + imagination + actor-critic), preset {args.preset}, T={args.length}, "
          f"{jax.devices()[0].platform} x{len(jax.devices())}; frames/s, median of {args.repeats}")
    if args.devices:
        per_device = args.batch // max(args.devices)
        rows, base = [], {}
        for n in args.devices:
            strong, weak = preset_rate(n, args.batch), preset_rate(n, per_device * n)
            base.setdefault("strong", strong)
            base.setdefault("weak", weak / n)
            rows.append([n, f"{args.batch}", f"{strong:,.0f}", f"{strong / base['strong']:.2f}x",
                         f"{per_device * n}", f"{weak:,.0f}", f"{weak / n / base['weak']:.2f}"])
        print(table(["devices", "global batch", "frames/s", "vs 1", "weak batch", "frames/s", "efficiency"], rows))
    if args.dtypes:
        rates = {d: preset_rate(1, args.batch) if d == jax.numpy.dtype(agent.dtype).name
                 else frames_per_second(make_agent(args.preset, d), 1, args.batch, args.length, args.repeats) for d in args.dtypes}
        first = rates[args.dtypes[0]]
        print(f"\nCompute dtype, 1 device, batch {args.batch}; frames/s, median of {args.repeats}")
        print(table(["compute dtype", "frames/s", f"vs {args.dtypes[0]}"], [[d, f"{r:,.0f}", f"{r / first:.2f}x"] for d, r in rates.items()]))
    if args.starts:
        rates = {f: frames_per_second(make_agent(args.preset, starts=f), 1, args.batch, args.length, args.repeats) for f in args.starts}
        first = rates[args.starts[0]]
        print(f"\nImagination starts (--agent.starts), 1 device, batch {args.batch}; frames/s, median of {args.repeats}")
        print(table(["starts", "frames/s", f"vs {args.starts[0]}"], [[f, f"{r:,.0f}", f"{r / first:.2f}x"] for f, r in rates.items()]))
    if args.patches:
        starts = args.starts[-1] if args.starts else None
        agents = {p: make_agent(args.preset, starts=starts, patch=p) for p in args.patches}
        rates = {p: frames_per_second(agent, 1, args.batch, args.length, args.repeats) for p, agent in agents.items()}
        first = rates[args.patches[0]]
        print(f"\nEncoder's first stride (--model.patch), 1 device, batch {args.batch}, starts {starts}; frames/s, median of {args.repeats}")
        print(table(["patch", "world-model params", "frames/s", f"vs {args.patches[0]}"],
                    [[p, f"{agents[p].parameter_counts(agents[p].init(0))['world_model']:,}", f"{r:,.0f}", f"{r / first:.2f}x"]
                     for p, r in rates.items()]))
    if args.posteriors:
        starts = args.starts[-1] if args.starts else None
        patch = args.patches[-1] if args.patches else None
        rates = {p: frames_per_second(make_agent(args.preset, starts=starts, patch=patch, posterior=p), 1, args.batch, args.length,
                                      args.repeats) for p in args.posteriors}
        first = rates[args.posteriors[0]]
        print(f"\nWhat the posterior reads (--model.posterior), 1 device, batch {args.batch}, starts {starts}, patch {patch}; "
              f"frames/s, median of {args.repeats}")
        print(table(["posterior", "frames/s", f"vs {args.posteriors[0]}"], [[p, f"{r:,.0f}", f"{r / first:.2f}x"] for p, r in rates.items()]))


if __name__ == "__main__":
    main(tyro.cli(Args))
