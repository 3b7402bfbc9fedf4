"""The compiled loop (experiments/compiled.py) end to end: trains, evaluates, checkpoints, resumes; bad configs."""

import json

import numpy as np
import pytest

from experiments.train import parse, train


def test_compiled_loop_trains_checkpoints_and_resumes(tmp_path):
    def args(steps):
        return ["--preset", "debug", "--task", "mjx/cartpole-swingup", "--run", str(tmp_path), "--steps", str(steps),
                "--prefill", "200", "--eval-every", "400", "--save-every", "400", "--env.envs", "2", "--length", "8",
                "--train-ratio", "16"]

    config = parse(args(500))
    assert config.loop == "compiled" and config.env.proprio and not config.env.pixels
    summary = train(config)
    assert summary["env_steps"] == 500 and summary["updates"] > 0
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [line["train/loss"] for line in lines if "train/loss" in line]
    assert len(losses) >= 2 and np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert any("eval/return" in line for line in lines)
    resumed = train(parse(args(700)))  # continues the step and update counters, with the saved replay
    assert resumed["env_steps"] == 700 and resumed["updates"] > summary["updates"]


def test_compiled_loop_rejects_configs_that_cannot_work():
    with pytest.raises(ValueError, match="env.pixels"):
        parse(["--preset", "debug", "--task", "mjx/cartpole-swingup", "--env.pixels"])
    with pytest.raises(ValueError, match="no MJX form"):
        parse(["--preset", "debug", "--task", "dmc/cartpole-swingup", "--loop", "compiled"])
    with pytest.raises(ValueError, match="loop='host' cannot run"):
        parse(["--preset", "debug", "--task", "mjx/cartpole-swingup", "--loop", "host"])
