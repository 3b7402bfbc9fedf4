"""Throughput benchmarks, printed as Markdown tables. Medians over repeats, side by side in one run.

    python -m experiments.benchmark                  # everything
    python -m experiments.benchmark --only envs replay
    python -m experiments.benchmark --only conv       # the pixel encoder and decoder: matmul form against XLA's convolutions
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from collections.abc import Callable
from typing import Literal

import jax
import numpy as np
import tyro

import envs
from embodied.logging import table
from embodied.replay import Replay, ReplayConfig

Section = Literal["envs", "replay", "conv"]


@dataclasses.dataclass(frozen=True)
class Args:
    only: tuple[Section, ...] = ("envs", "replay")
    """Sections to run."""
    repeats: int = 5
    """Timed repeats per row; the table shows the median."""
    env_steps: int = 400
    """Agent steps per timed repeat of an environment."""
    tasks: tuple[str, ...] = ("gym/HalfCheetah-v5", "dmc/cheetah-run")
    conv_frames: int = 1024
    """64x64 frames per timed encoder or decoder pass (the small preset's 16 x 64 batch)."""
    conv_depths: tuple[int, ...] = (4, 16)
    """Channels of the first conv layer (`--model.depth`: 4 in the small preset, 8 in medium; 16 is wider still)."""


def timings(run: Callable[[], object], repeats: int) -> list[tuple[float, object]]:
    """(seconds, result) of `repeats` calls of `run`, after one warm-up call (compilation).
    A result that is a JAX array is waited for inside the timing."""
    jax.block_until_ready(run())
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(run())
        out.append((time.perf_counter() - start, result))
    return out


def median_rate(run: Callable[[], int], repeats: int) -> float:
    """Median of (units done / seconds) over `repeats` calls of `run`, after one warm-up call."""
    return statistics.median(units / seconds for seconds, units in timings(run, repeats))


def bench_envs(args: Args) -> str:
    rows = []
    for task in args.tasks:
        for repeat in (1, 2):
            env = envs.make(task, action_repeat=repeat)
            env.reset(seed=0)
            actions = np.random.default_rng(0).uniform(-1, 1, (args.env_steps, *env.action_space.shape)).astype(np.float32)

            def run_single():
                for action in actions:
                    _, _, terminated, truncated, _ = env.step(action)
                    if terminated or truncated:
                        env.reset()
                return len(actions)

            cpu_start, wall_start = time.process_time(), time.perf_counter()
            single = median_rate(run_single, args.repeats)
            # Mesa's rasteriser renders on threads of its own: one process
            # already keeps more than one core busy, which bounds what a
            # second process can add on a 2-core machine.
            cores = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
            env.close()
            vector = envs.make_vector(task, 2, action_repeat=repeat)
            vector.reset(seed=0)
            batched = np.repeat(actions[:, None], 2, axis=1)

            def run_vector():
                for action in batched:
                    vector.step(action)
                return 2 * len(batched)

            double = median_rate(run_vector, args.repeats)
            vector.close()
            rows.append([task, repeat, f"{single:,.0f}", f"{single * repeat:,.0f}", f"{cores:.2f}", f"{double:,.0f}", f"{double / single:.2f}x"])
    header = ["task (64x64 pixels + proprio)", "action repeat", "steps/s, 1 process", "physics steps/s, 1 process", "cores busy, 1 process",
              "steps/s, 2 processes", "scaling"]
    return "### Environments: step + render\n\n" + table(header, rows)


def bench_replay(args: Args) -> str:
    rows = []
    capacity, length = 100_000, 500
    replay = Replay(ReplayConfig(capacity=capacity))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (length, 64, 64, 3), np.uint8)
    t = np.arange(length)
    for i in range(capacity // length):
        replay.add(dict(image=frames, proprio=np.full((length, 17), i, np.float32), action=np.zeros((length, 6), np.float32),
                        reward=np.zeros(length, np.float32), is_first=t == 0, is_last=t == length - 1, is_terminal=np.zeros(length, bool)))
    for sampling in ("uniform", "recent"):
        replay.config = ReplayConfig(capacity=capacity, sampling=sampling, half_life=20_000)

        def run():
            for _ in range(20):
                replay.sample(16, 64, rng)
            return 20

        rate = median_rate(run, args.repeats)
        mb = 16 * 64 * 64 * 64 * 3 / 1e6
        rows.append([f"{len(replay):,}", sampling, "[16, 64] of 64x64x3", f"{rate:,.0f}", f"{rate * mb:,.0f}"])
    header = ["steps stored", "sampling", "batch", "batches/s", "image MB/s"]
    return "### Replay: sampling from memory, one process\n\n" + table(header, rows)


def bench_conv(args: Args) -> str:
    """Encoder and decoder (embodied/nn/conv.py), forward and backward over `conv_frames` frames, as the model
    writes them (each convolution one im2col matmul) against the same layers as XLA convolutions."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from embodied.nn import conv

    mults = (1, 2, 4, 8)
    model_forms = conv.Down.__call__, conv.Up.__call__
    dims = ("NHWC", "HWIO", "NHWC")

    def xla_down(self, x):  # the 4x4 stride-2 kernel that the 2x2 kernel over 2x2 blocks equals
        k = self.kernel[...].reshape(2, 2, 2, 2, -1, self.kernel.shape[-1]).transpose(0, 2, 1, 3, 4, 5)
        k = k.reshape(4, 4, -1, self.kernel.shape[-1])
        return jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=dims) + self.bias[...]

    def xla_up(self, x):
        y = jax.lax.conv_general_dilated(x, self.kernel[...], (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims)
        return conv.depth_to_space(y + self.bias[...])

    def frames_per_second(module, x, grad_input: bool) -> float:
        graphdef, params = nnx.split(module)

        def loss(p, x):
            return jnp.mean(nnx.merge(graphdef, p)(x).astype(jnp.float32) ** 2)

        step = jax.jit(jax.grad(loss, argnums=(0, 1) if grad_input else 0))

        def run() -> int:
            jax.block_until_ready(step(params, x))
            return len(x)

        return median_rate(run, args.repeats)

    rows = []
    for depth in args.conv_depths:
        rngs = nnx.Rngs(0)
        encoder = conv.Encoder((64, 64), depth, mults, rngs=rngs)
        decoder = conv.Decoder(1024, (64, 64), depth, mults, rngs=rngs)
        image = jnp.zeros((args.conv_frames, 64, 64, 3), jnp.uint8).at[:, 10:20].set(200)
        features = jax.random.normal(jax.random.key(0), (args.conv_frames, 1024))
        rates, outputs = {}, {}
        for form, down, up in (("matmul", *model_forms), ("xla", xla_down, xla_up)):
            conv.Down.__call__, conv.Up.__call__ = down, up
            try:
                rates[form] = frames_per_second(encoder, image, False), frames_per_second(decoder, features, True)
                outputs[form] = encoder(image[:8]), decoder(features[:8])
            finally:
                conv.Down.__call__, conv.Up.__call__ = model_forms
        for a, b in zip(outputs["matmul"], outputs["xla"]):  # the two forms compute the same layers
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)
        for i, part in enumerate(("encoder", "decoder")):
            m, x = rates["matmul"][i], rates["xla"][i]
            rows.append([depth, part, f"{m:,.0f}", f"{x:,.0f}", f"{m / x:.2f}x"])
    return ("### Pixel encoder and decoder, forward + backward, frames/s\n\n" +
            table(["depth", "part", "im2col matmuls (the model)", "XLA convolutions", "speed-up"], rows))


SECTIONS = {"envs": bench_envs, "replay": bench_replay, "conv": bench_conv}


def main(args: Args) -> None:
    print(f"Machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs, Python {platform.python_version()}\n")
    for section in args.only:
        print(SECTIONS[section](args), end="\n\n", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
