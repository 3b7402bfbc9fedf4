"""MJX tasks against dm-control, and the device replay."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from embodied.replay import device as device_replay
from envs.mjx import TASKS, MJXEnv, State, check_task


def _dm_state(env: MJXEnv, physics, base: State, task: str, forward) -> State:
    d = base.data.replace(qpos=jnp.asarray(physics.data.qpos, jnp.float32), qvel=jnp.asarray(physics.data.qvel, jnp.float32),
                          ctrl=jnp.asarray(physics.data.ctrl, jnp.float32))
    target = jnp.asarray(physics.named.model.geom_pos["target", :2], jnp.float32) if task == "reacher-easy" else jnp.zeros(2)
    return State(forward(env.model, d), target, base.t)


@pytest.mark.parametrize("task", list(TASKS))
def test_observations_rewards_and_steps_match_dm_control(task):
    """On the same physics states, the MJX task gives dm-control's observation and reward, and
    one agent step under the same action lands on dm-control's next observation and reward."""
    from dm_control import suite

    env = MJXEnv(f"mjx/{task}", action_repeat=1)
    dm = suite.load(*TASKS[task], task_kwargs={"random": 0})
    dm.reset()
    # Start where the reward is not 0, so that the rewards compared mean something.
    physics = dm.physics
    if task == "pendulum-swingup":
        physics.named.data.qpos["hinge"] = 0.05
    elif task == "reacher-easy":
        physics.forward()
        physics.named.model.geom_pos["target", :2] = physics.named.data.geom_xpos["finger", :2]
    elif task == "cheetah-run":
        physics.named.data.qvel["rootx"] = 3.0
    physics.forward()
    from mujoco import mjx

    base = jax.jit(env.reset)(jax.random.key(0))
    observe, reward, step, forward = jax.jit(env.observe), jax.jit(env.reward), jax.jit(env.step), jax.jit(mjx.forward)
    rng = np.random.default_rng(0)
    rewards = []
    for _ in range(4):
        state = _dm_state(env, dm.physics, base, task, forward)
        action = rng.uniform(-1, 1, env.action_size).astype(np.float32)
        next_state, r = step(state, jnp.asarray(action))
        ts = dm.step(action)
        expected = np.concatenate([np.asarray(v, np.float64).ravel() for v in ts.observation.values()])
        np.testing.assert_allclose(observe(next_state), expected, atol=1e-3, rtol=1e-3)
        assert float(r) == pytest.approx(ts.reward, abs=1e-4)
        assert float(reward(_dm_state(env, dm.physics, base, task, forward))) == pytest.approx(ts.reward, abs=1e-5)
        rewards.append(ts.reward)
    assert max(rewards) > 0, "the states compared should include a rewarded one"


def test_without_velocities_the_observation_is_the_dmc_one_less_its_velocity_key():
    import envs

    env = MJXEnv("mjx/walker-walk", velocities=False)
    full = MJXEnv("mjx/walker-walk")
    state = jax.jit(env.reset)(jax.random.key(0))
    assert env.observation_size == full.observation_size - int(full.host_model.nv)
    np.testing.assert_array_equal(env.observe(state), full.observe(state)[:env.observation_size])
    dmc = envs.make("dmc/walker-walk", pixels=False, velocities=False)
    assert dmc.observation_space["proprio"].shape == (env.observation_size,)


def test_resets_follow_the_dm_control_initial_distributions():
    swingup = jax.jit(jax.vmap(MJXEnv("mjx/cartpole-swingup").reset))(jax.random.split(jax.random.key(0), 64))
    qpos = np.asarray(swingup.data.qpos)
    assert np.all(np.abs(qpos[:, 0]) < 0.05) and np.all(np.abs(qpos[:, 1] - np.pi) < 0.05)
    assert qpos[:, 1].std() > 1e-3  # random, not fixed
    balance = jax.jit(jax.vmap(MJXEnv("mjx/cartpole-balance").reset))(jax.random.split(jax.random.key(0), 64))
    qpos = np.asarray(balance.data.qpos)
    assert np.all(np.abs(qpos[:, 0]) <= 0.1) and np.all(np.abs(qpos[:, 1]) <= 0.034)


def test_tasks_without_an_mjx_form_are_named_in_the_error():
    with pytest.raises(ValueError, match="has no MJX form.*mjx/cartpole-swingup"):
        check_task("mjx/humanoid-run")
    with pytest.raises(ValueError, match="use mjx/cartpole-swingup"):
        check_task("dmc/cartpole-swingup")


def test_device_replay_writes_rows_and_samples_contiguous_sequences_behind_the_head():
    step = {"x": jax.ShapeDtypeStruct((), jnp.int32), "is_first": jax.ShapeDtypeStruct((), bool)}
    replay = device_replay.init(step, capacity=20, envs=2)  # 10 rows of 2 environments
    for t in range(13):  # wraps: rows hold t = 3..12
        replay = device_replay.add(replay, {"x": jnp.array([t, 100 + t]), "is_first": jnp.array([t == 0, t == 0])})
    assert replay.rows == 10 and int(replay.written) == 13
    batch = jax.jit(device_replay.sample, static_argnums=(2, 3))(replay, jax.random.key(0), 256, 4)
    x = np.asarray(batch["x"]) % 100
    assert batch["x"].shape == (256, 4)
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # consecutive steps, never across the write head
    assert x.min() == 3 and x.max() == 12  # only the rows still held, all of them reachable
    env = np.asarray(batch["x"]) >= 100
    assert np.all(env == env[:, :1]) and 0.3 < env[:, 0].mean() < 0.7  # one environment per sequence, both sampled
