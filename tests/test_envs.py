import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs

GYM_TASKS = ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Reacher-v5", "InvertedPendulum-v5", "InvertedDoublePendulum-v5"]
DMC_TASKS = ["cartpole-swingup", "cartpole-balance", "reacher-easy", "cheetah-run", "walker-walk", "finger-spin", "pendulum-swingup", "cup-catch"]
TASKS = [f"gym/{t}" for t in GYM_TASKS] + [f"dmc/{t}" for t in DMC_TASKS]


@pytest.mark.parametrize("name", TASKS)
def test_task_follows_gymnasium_and_the_observation_contract(name):
    env = envs.make(name)
    check_env(env)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"image", "proprio"}
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["image"].std() > 0, "a blank frame: the camera sees nothing"
    assert obs["proprio"].dtype == np.float32 and obs["proprio"].ndim == 1
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, env.action_space.shape, np.float32)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space
        assert np.isfinite(reward) and isinstance(terminated, bool) and isinstance(truncated, bool)
    env.close()


def test_dmc_defaults_to_action_repeat_2_and_500_steps():
    env = envs.make("dmc/cartpole-balance", pixels=False)
    env.reset(seed=0)
    steps, truncated, rewards = 0, False, []
    while not truncated:
        _, reward, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
        assert not terminated
        rewards.append(reward)
        steps += 1
    assert steps == 500
    # Balance pays up to 1 per control step: two per agent step with repeat 2.
    assert 1.0 < max(rewards) <= 2.0


def test_time_limit_truncates_and_termination_is_not_truncation():
    env = envs.make("gym/InvertedPendulum-v5", pixels=False, time_limit=1000)
    env.reset(seed=0)
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(np.ones(1, np.float32))
    assert terminated and not truncated, "pushing the cart one way must topple the pole"

    env = envs.make("gym/HalfCheetah-v5", pixels=False, time_limit=5)
    env.reset(seed=0)
    flags = [env.step(np.zeros(6, np.float32))[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]


def test_options_size_pixels_and_proprio():
    env = envs.make("dmc/pendulum-swingup", size=(32, 48), proprio=False)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"image"} and obs["image"].shape == (32, 48, 3)
    env = envs.make("dmc/pendulum-swingup", pixels=False)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"proprio"}


def test_velocities_can_be_left_out_of_proprio_for_a_partially_observed_task():
    full = envs.make("dmc/cartpole-balance", pixels=False)
    positions = envs.make("dmc/cartpole-balance", pixels=False, velocities=False)
    assert positions.observation_space["proprio"].shape == (3,)  # cart position, cos and sin of the pole angle
    np.testing.assert_array_equal(positions.reset(seed=1)[0]["proprio"], full.reset(seed=1)[0]["proprio"][:3])
    action = np.array([0.5], np.float32)
    np.testing.assert_array_equal(positions.step(action)[0]["proprio"], full.step(action)[0]["proprio"][:3])
    with pytest.raises(ValueError, match="velocities=False is supported for dmc/ tasks.*'gym/Hopper-v5' is a gym/ task"):
        envs.make("gym/Hopper-v5", velocities=False)
    from envs.dmc import without_velocities

    assert without_velocities("manipulator-bring_ball", ["arm_pos", "arm_vel", "object_pos", "object_vel"]) == ["arm_pos", "object_pos"]
    with pytest.raises(ValueError, match="dmc/some-task has no velocity observation to leave out \\(its observations: position, touch\\)"):
        without_velocities("some-task", ["position", "touch"])


def test_supersample_averages_a_render_at_k_times_the_size():
    # Anti-aliasing: the frame at size 32 with supersample 2 is the block mean of the frame at size 64,
    # so a thin body's tilt moves pixel values by its covered share instead of flipping whole pixels.
    fine = envs.make("dmc/cartpole-balance", size=64, proprio=False)
    smooth = envs.make("dmc/cartpole-balance", size=32, proprio=False, supersample=2)
    action = np.array([0.7], np.float32)
    for env in (fine, smooth):
        env.reset(seed=2)
    for _ in range(3):
        big, small = fine.step(action)[0]["image"], smooth.step(action)[0]["image"]
        assert small.shape == (32, 32, 3) and small.dtype == np.uint8
        blocks = big.reshape(32, 2, 32, 2, 3).astype(np.float64).mean((1, 3))
        assert np.abs(small - blocks).max() <= 0.5
        assert len(np.unique(small)) > len(np.unique(big[::2, ::2]))  # in-between shades at edges
    with pytest.raises(ValueError, match=r"supersample must be an int >= 1 \(1 renders without anti-aliasing\); got 0"):
        envs.make("dmc/cartpole-balance", supersample=0)


def test_antialiasing_makes_a_small_pole_tilt_readable_from_the_pixels():
    from experiments.antialias import Args, main

    r2 = main(Args(supersample=(1, 2), states=300))
    assert r2[1]["cart position"] > 0.95 and r2[2]["cart position"] > 0.95
    assert r2[2]["pole angle"] > 0.7 and r2[2]["pole angle"] > r2[1]["pole angle"] + 0.3


def test_reset_with_a_seed_is_reproducible():
    env = envs.make("dmc/cartpole-swingup")
    first = env.reset(seed=3)[0]
    again = env.reset(seed=3)[0]
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["proprio"], again["proprio"])


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown task 'dmc/cartpole-swingp'.*Did you mean dmc/cartpole-swingup.*Known tasks: .*gym/HalfCheetah-v5"):
        envs.make("dmc/cartpole-swingp")


@pytest.mark.parametrize("size", [0, (64, 0), -3, (1.5, 2)])
def test_bad_image_size(size):
    with pytest.raises(ValueError, match="Image size must be"):
        envs.make("dmc/cartpole-swingup", size=size)


def test_wrong_action_shape_says_what_is_allowed():
    env = envs.make("dmc/cheetah-run", pixels=False)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\); this task takes shape \(6,\)"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(6, np.nan, np.float32))


def test_bad_options():
    with pytest.raises(ValueError, match="pixels=True or proprio=True"):
        envs.make("dmc/cartpole-swingup", pixels=False, proprio=False)
    with pytest.raises(ValueError, match="action_repeat"):
        envs.make("dmc/cartpole-swingup", action_repeat=0)
    with pytest.raises(ValueError, match="Unknown camera 'nope'"):
        envs.make("dmc/cartpole-swingup", camera="nope").reset(seed=0)
