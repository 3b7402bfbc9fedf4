"""Open-loop video prediction: from C context frames, predict the next K under the recorded actions.

    python -m experiments.evaluate_world_model --checkpoint runs/wm-cartpole --data data/cartpole

Prints PSNR and SSIM per horizon step for the model and two trivial
predictors (copy the last context frame; the mean frame of the data), writes
them to <checkpoint>/eval.json, and a GIF of truth | prediction | error to
<checkpoint>/prediction.gif.

Predictions are rounded to 8 bits, as the recorded frames are. PSNR comes two
ways: the mean over sequences of each frame's PSNR (the usual report; a frame
predicted exactly counts as 100 dB, and copy-last predicts some exactly where
nothing moved), and the PSNR of the mean squared error over sequences, which
no exact frame can dominate.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import tyro

from embodied.metrics import psnr, ssim
from embodied.replay import Replay, ReplayConfig
from embodied.worldmodel import imagine
from experiments.train_world_model import load


@dataclasses.dataclass(frozen=True)
class Args:
    checkpoint: pathlib.Path
    """Run directory of experiments.train_world_model."""
    data: pathlib.Path
    """Episodes to evaluate on (ideally not the training set)."""
    context: int = 5
    horizon: int = 15
    sequences: int = 64
    seed: int = 0
    samples: int = 1
    """Imagined futures per sequence; the prediction is their mean frame (the point prediction with
    the least expected squared error under the model). 1: a single sample, as an agent imagines."""
    gif: int = 4
    """Sequences shown in the GIF."""


def sample_within_episodes(replay: Replay, count: int, length: int, rng: np.random.Generator) -> dict:
    """Sequences that do not cross an episode start (after their first step)."""
    chosen = {}
    kept = 0
    for _ in range(100):
        batch = replay.sample(4 * count, length, rng)
        ok = ~batch["is_first"][:, 1:].any(1)
        for k, v in batch.items():
            chosen.setdefault(k, []).append(v[ok])
        kept += int(ok.sum())
        if kept >= count:
            break
    if kept < count:
        raise ValueError(f"Could not find {count} sequences of {length} steps inside episodes; are the episodes shorter than context + horizon?")
    return {k: np.concatenate(v)[:count] for k, v in chosen.items()}


def evaluate(args: Args) -> dict:
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1; got {args.samples}.")
    model, step = load(args.checkpoint)
    if model.spec.image is None:
        raise ValueError(f"{args.checkpoint} is a proprio-only model; video prediction needs images.")
    replay = Replay(ReplayConfig(), directory=args.data)
    rng = np.random.default_rng(args.seed)
    C, K = args.context, args.horizon
    batch = sample_within_episodes(replay, args.sequences, C + K, rng)
    inputs = {k: jnp.asarray(v) for k, v in batch.items() if k in ("image", "proprio", "action", "is_first", "reward", "is_terminal")}

    @jax.jit
    def predict(inputs, key):
        start_key, key = jax.random.split(key)
        start = model.start({k: v[:, :C] for k, v in inputs.items()}, start_key)
        # Actions a_{C-1} .. a_{C+K-2} lead to frames o_C .. o_{C+K-1}.
        future = lambda k: imagine(model, None, start, K, k, actions=inputs["action"][:, C - 1 : C + K - 1],  # noqa: E731
                                   decode=True, context=inputs["image"][:, C - 1]).frames
        return jax.lax.map(future, jax.random.split(key, args.samples)).mean(0)

    predicted = jnp.round(predict(inputs, jax.random.key(args.seed)) * 255) / 255
    truth = jnp.asarray(batch["image"][:, C:], jnp.float32) / 255.0
    last = jnp.broadcast_to(jnp.asarray(batch["image"][:, C - 1 : C], jnp.float32) / 255.0, truth.shape)
    mean = jnp.broadcast_to(jnp.asarray(batch["image"], jnp.float32).mean((0, 1)) / 255.0, truth.shape)
    results = {"update": step, "context": C, "horizon": K, "sequences": args.sequences, "samples": args.samples}
    for name, guess in (("model", predicted), ("copy_last", last), ("mean_frame", mean)):
        over_sequences = lambda x: jnp.swapaxes(x, 0, 1).reshape(K, -1, *x.shape[-2:])  # noqa: E731  (K, N*H, W, 3)
        results[name] = {"psnr": np.asarray(psnr(guess, truth).mean(0)).round(3).tolist(),
                         "psnr_of_mean_mse": np.asarray(psnr(over_sequences(guess), over_sequences(truth))).round(3).tolist(),
                         "ssim": np.asarray(ssim(guess, truth).mean(0)).round(4).tolist()}
    print(f"Open-loop prediction, {args.checkpoint} at update {step}: {C} context frames, {K} predicted, {args.sequences} sequences, "
          f"mean of {args.samples} sample(s)")
    names, metrics = ("model", "copy_last", "mean_frame"), ("psnr", "psnr_of_mean_mse", "ssim")
    print("| step | PSNR model / copy-last / mean | PSNR of mean MSE, same | SSIM, same |")
    print("|---|---|---|---|")
    for k in range(K):
        cells = [" / ".join(f"{results[n][m][k]:.{3 if m == 'ssim' else 2}f}" for n in names) for m in metrics]
        print(f"| {k + 1} | " + " | ".join(cells) + " |")
    for m in ("psnr", "psnr_of_mean_mse"):
        beats = [results["model"][m][k] > results["copy_last"][m][k] for k in range(K)]
        results[f"beats_copy_last_{m}_every_step"] = all(beats)
        print(f"Model {m} above copy-last at {sum(beats)}/{K} steps.")
    (args.checkpoint / "eval.json").write_text(json.dumps(results, indent=2))
    n = min(args.gif, args.sequences)
    error = jnp.abs(predicted[:n] - truth[:n])
    panel = jnp.concatenate([truth[:n], predicted[:n], error], axis=3)  # (n, K, H, 3W, 3)
    frames = np.asarray(jnp.concatenate(list(panel), axis=1) * 255).astype(np.uint8)  # (K, n*H, 3W, 3)
    iio.imwrite(args.checkpoint / "prediction.gif", frames, duration=200, loop=0)
    return results


if __name__ == "__main__":
    evaluate(tyro.cli(Args))
