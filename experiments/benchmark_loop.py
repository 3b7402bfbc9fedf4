"""The compiled loop against the host loop on the same task and preset, side by side in one run.

    python -m experiments.benchmark_loop                        # cartpole-swingup from proprio, small preset
    python -m experiments.benchmark_loop --envs 16 --steps 20000

Each loop trains from scratch for `prefill + steps` environment steps (proprio
observations, the same agent, train ratio and batch) and logs its speed every
`window` steps; the table gives the medians over the windows after prefill,
leaving out the first (which holds the compilation). Host: `dmc/<task>` in a
worker process, host replay, one jitted update at a time. Compiled:
`mjx/<task>`, device replay, everything in one jitted scan.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile

import jax
import tyro

from embodied.logging import table
from experiments.config import PRESETS, compiled_defaults
from experiments.curves import read, speeds
from experiments.train import train, validate


@dataclasses.dataclass(frozen=True)
class Args:
    task: str = "cartpole-swingup"
    preset: str = "small"
    envs: int = 1
    steps: int = 8000
    """Environment steps timed after prefill."""
    prefill: int = 2000
    window: int = 1000


def main(args: Args) -> None:
    base = PRESETS[args.preset]
    common = dict(steps=args.prefill + args.steps, prefill=args.prefill, log_every=args.window, eval_every=0,
                  save_every=10**9, env=dataclasses.replace(base.env, envs=args.envs, pixels=False, proprio=True))
    results = {}
    for loop, task in (("host", f"dmc/{args.task}"), ("compiled", f"mjx/{args.task}")):
        with tempfile.TemporaryDirectory() as run:
            config = dataclasses.replace(base, task=task, run=pathlib.Path(run), **common)
            if loop == "compiled":
                config = compiled_defaults(config)
            validate(config)
            train(config)
            results[loop] = speeds(read(run))
    host = results["host"]
    rows = [[loop, f"{r['env_steps_per_s']:,.1f}", f"{r['env_steps_per_s'] / host['env_steps_per_s']:.2f}x",
             f"{r['replayed_frames_per_s']:,.0f}", f"{r['updates_per_s']:.2f}"] for loop, r in results.items()]
    print(f"\n{args.task} from proprio, preset {args.preset}, {args.envs} env(s), train ratio {base.train_ratio:g}, "
          f"{jax.devices()[0].platform}; medians over {args.window}-step windows after prefill")
    print(table(["loop", "env steps/s", "vs host", "replayed frames/s", "updates/s"], rows))


if __name__ == "__main__":
    main(tyro.cli(Args))
