"""Watch what a world model imagines: the real simulator and the dream side by side, under the same actions.

    python -m experiments.imagine --checkpoint runs/dmc-cartpole-swingup-small-0 --policy random
    python -m experiments.imagine --checkpoint runs/... --policy checkpoint      # the run's trained actor
    python -m experiments.imagine --checkpoint runs/... --policy keyboard        # drive the dream yourself

Both start from the same real first observation (the dream from its
posterior); every action goes to both. Writes a GIF of real | dream | error
and a JSON of per-frame PSNR, and prints the error as it goes. With
`keyboard`, frames are drawn in the terminal (24-bit colour half-blocks) as
they come: a/d push action 0 down/up, w/s action 1 up/down, j/l action 2,
i/k action 3, space is the zero action, q stops.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Literal, TextIO

import jax
import numpy as np
import tyro

import envs
from embodied.metrics import psnr
from embodied.worldmodel.io import load
from envs.dream import DreamEnv
from experiments.config import recorded_env

KEYS = {"a": (0, -1.0), "d": (0, 1.0), "s": (1, -1.0), "w": (1, 1.0), "j": (2, -1.0), "l": (2, 1.0), "k": (3, -1.0), "i": (3, 1.0)}


@dataclasses.dataclass(frozen=True)
class Args:
    checkpoint: pathlib.Path
    """Run directory of experiments.train or experiments.train_world_model."""
    policy: Literal["random", "checkpoint", "keyboard"] = "random"
    task: str | None = None
    """The real task; defaults to the one the run recorded (world-model runs record none)."""
    steps: int = 100
    seed: int = 0
    out: pathlib.Path | None = None
    """GIF path; defaults to <checkpoint>/imagine-<policy>.gif (and .json beside it)."""


def terminal_frame(image: np.ndarray, width: int = 64) -> str:
    """An RGB image as 24-bit-colour half-block characters: two pixel rows per text row."""
    step = max(1, image.shape[1] // width)
    image = image[::step, ::step]
    if image.shape[0] % 2:
        image = np.concatenate([image, np.zeros_like(image[:1])])
    rows = []
    for top, bottom in zip(image[0::2], image[1::2]):
        cells = (f"\x1b[38;2;{t[0]};{t[1]};{t[2]}m\x1b[48;2;{b[0]};{b[1]};{b[2]}m\u2580" for t, b in zip(top, bottom))
        rows.append("".join(cells) + "\x1b[0m")
    return "\n".join(rows)


def read_key(stream: TextIO) -> str:
    """One key press: raw from a terminal, else the first character of the next line (so keys can be piped)."""
    if stream.isatty():
        import termios
        import tty

        fd = stream.fileno()
        old = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            return stream.read(1)
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)
    line = stream.readline()
    return line[:1] if line else "q"


def key_action(key: str, dims: int) -> np.ndarray | None:
    """The action a key stands for, or None for q (stop)."""
    if key == "q":
        return None
    action = np.zeros(dims, np.float32)
    if key in KEYS and KEYS[key][0] < dims:
        index, value = KEYS[key]
        action[index] = value
    return action


def make_policy(args: Args, real, stdin: TextIO):
    dims = real.action_space.shape[0]
    if args.policy == "random":
        rng = np.random.default_rng(args.seed)
        return lambda obs, first: rng.uniform(-1, 1, dims).astype(np.float32)
    if args.policy == "keyboard":
        return lambda obs, first: key_action(read_key(stdin), dims)
    from experiments.train import Acting, load as load_agent

    config, agent, state, _ = load_agent(args.checkpoint)
    acting = Acting(agent, config, 1, jax.random.key(args.seed), explore=False)
    acting.agent_state = state
    return lambda obs, first: acting({**{k: v[None] for k, v in obs.items()}, "is_first": np.array([first])})[0]


def main(args: Args, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> dict:
    loaded = load(args.checkpoint)
    spec = loaded.model.spec
    task = args.task or loaded.task
    if task is None:
        raise ValueError(f"{args.checkpoint} does not record its task (a world-model run): pass --task.")
    if spec.image is None:
        raise ValueError("This world model has no image decoder (trained on proprio only): there is no dream to watch.")
    options = recorded_env(args.checkpoint) if loaded.task is not None else {}
    real = envs.make(task, size=spec.image[:2], pixels=True, proprio=spec.proprio is not None, **options)
    if real.action_space.shape != (spec.action,):
        raise ValueError(f"Task {task} takes actions of shape {real.action_space.shape}; this world model was trained on {(spec.action,)}.")
    dream = DreamEnv(model=loaded.model, observation="image")
    policy = make_policy(args, real, stdin)
    obs, _ = real.reset(seed=args.seed)
    dream.reset(seed=args.seed, options={"observations": {k: v for k, v in obs.items() if k in ("image", "proprio")}})
    frames, errors, first = [], [], True
    for t in range(args.steps):
        action = policy(obs, first)
        if action is None:
            break
        obs, _, terminated, truncated, _ = real.step(action)
        dream_obs, *_ = dream.step(action)
        truth, imagined = obs["image"], dream_obs["image"]
        error = np.abs(truth.astype(np.int16) - imagined.astype(np.int16)).astype(np.uint8)
        frames.append(np.concatenate([truth, imagined, error], axis=1))
        errors.append(float(psnr(truth[None] / 255.0, imagined[None] / 255.0)[0]))
        if args.policy == "keyboard":
            stdout.write("\x1b[H\x1b[2J" + terminal_frame(frames[-1]) + f"\nstep {t + 1}  PSNR {errors[-1]:.1f} dB  (real | dream | error; q quits)\n")
            stdout.flush()
        first = False
        if terminated or truncated:
            break
    real.close()
    out = args.out or pathlib.Path(args.checkpoint) / f"imagine-{args.policy}.gif"
    result = {"task": task, "policy": args.policy, "steps": len(frames), "psnr": errors,
              "mean_psnr": float(np.mean(errors)) if errors else None}
    if frames:
        import imageio.v3 as iio

        iio.imwrite(out, np.stack(frames), duration=1000 / 30, loop=0)
        out.with_suffix(".json").write_text(json.dumps(result))
    print(f"{len(frames)} steps of {task}: dream PSNR {result['mean_psnr'] or float('nan'):.1f} dB on average; wrote {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
