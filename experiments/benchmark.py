"""Throughput benchmarks, printed as Markdown tables. Medians over repeats, side by side in one run.

    python -m experiments.benchmark                  # everything
    python -m experiments.benchmark --only envs replay
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import tyro

import envs
from embodied.replay import Replay, ReplayConfig

Section = Literal["envs", "replay"]


@dataclasses.dataclass(frozen=True)
class Args:
    only: tuple[Section, ...] = ("envs", "replay")
    """Sections to run."""
    repeats: int = 5
    """Timed repeats per row; the table shows the median."""
    env_steps: int = 400
    """Agent steps per timed repeat of an environment."""
    tasks: tuple[str, ...] = ("gym/HalfCheetah-v5", "dmc/cheetah-run")


def median_rate(run: Callable[[], int], repeats: int) -> float:
    """Median of (units done / seconds) over `repeats` calls of `run`, after one warm-up call."""
    run()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        units = run()
        rates.append(units / (time.perf_counter() - start))
    return statistics.median(rates)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


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


SECTIONS = {"envs": bench_envs, "replay": bench_replay}


def main(args: Args) -> None:
    print(f"Machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs, Python {platform.python_version()}\n")
    for section in args.only:
        print(SECTIONS[section](args), end="\n\n", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
