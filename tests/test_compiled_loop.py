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

    config = parse(args(500) + ["--eval-dream", "4"])
    assert config.loop == "compiled" and config.env.proprio and not config.env.pixels
    summary = train(config)
    assert summary["env_steps"] == 500 and summary["updates"] > 0
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [line["train/loss"] for line in lines if "train/loss" in line]
    assert len(losses) >= 2 and np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    evaluation = [line for line in lines if "eval/return" in line]
    assert len(evaluation) == 1 and evaluation[0]["eval/dream_starts"] == 50 - 4 + 1  # debug episodes: 50 agent steps
    assert all(np.isfinite(evaluation[0][f"eval/dream_{k}"]) for k in ("real", "imagined", "bias", "error", "error_within", "error_beyond"))
    resumed = train(parse(args(700)))  # continues the step and update counters, with the saved replay
    assert resumed["env_steps"] == 700 and resumed["updates"] > summary["updates"]


def test_compiled_loop_rejects_configs_that_cannot_work():
    with pytest.raises(ValueError, match="env.pixels"):
        parse(["--preset", "debug", "--task", "mjx/cartpole-swingup", "--env.pixels"])
    with pytest.raises(ValueError, match="no MJX form"):
        parse(["--preset", "debug", "--task", "dmc/cartpole-swingup", "--loop", "compiled"])
    with pytest.raises(ValueError, match="replay.prefill_share"):
        parse(["--preset", "debug", "--task", "mjx/cartpole-swingup", "--replay.prefill-share", "0.25"])
    with pytest.raises(ValueError, match="loop='host' cannot run"):
        parse(["--preset", "debug", "--task", "mjx/cartpole-swingup", "--loop", "host"])


def test_compiled_loop_over_two_devices_equals_one_device():
    """Each device steps half the environments and holds their replay rows; training is data
    parallel. The sharded loop computes what the single-device loop computes."""
    import jax

    from experiments.compiled import CompiledLoop, make_env, spec_of
    from experiments.train import make_agent

    results = []
    for devices in (1, 2):
        config = parse(["--preset", "debug", "--task", "mjx/cartpole-swingup", "--devices", str(devices), "--env.envs", "2",
                        "--length", "8", "--prefill", "32", "--train-ratio", "16", "--env.time-limit", "10"])
        env = make_env(config)
        agent = make_agent(config, spec_of(env))
        loop = CompiledLoop(config, agent, env)
        carry = loop.place(loop.init(agent.init(0), jax.random.key(0)))
        carry, out = jax.jit(loop.run, static_argnums=1)(carry, 16)
        assert int(out["updates"]) > 0
        results.append(carry)
        if devices == 2:
            assert {tuple(s.data.shape) for s in carry.obs.addressable_shards} == {(1, env.observation_size)}
            assert {tuple(s.data.shape)[1] for s in carry.replay.data["proprio"].addressable_shards} == {1}
    one, two = results
    np.testing.assert_allclose(one.replay.data["action"], two.replay.data["action"], atol=1e-3)  # float sums in another order
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 one.agent.world_model.params, two.agent.world_model.params)
    np.testing.assert_allclose(one.obs, two.obs, rtol=1e-4, atol=1e-5)


def test_environments_must_split_over_the_devices():
    with pytest.raises(ValueError, match="env.envs"):
        parse(["--preset", "debug", "--task", "mjx/cartpole-swingup", "--devices", "2", "--env.envs", "3"])
