import signal

import numpy as np

import envs
from embodied.driver import Driver, random_policy


def collect(vector, steps):
    episodes = []
    driver = Driver(vector, lambda episode, stats: episodes.append((episode, stats)))
    driver.reset(seed=0)
    driver.step(random_policy(vector.single_action_space, seed=0), steps)
    return episodes


def test_gymnasium_flags_map_to_replay_flags_on_truncation():
    vector = envs.make_vector("dmc/cartpole-swingup", 2, asynchronous=False, pixels=False, time_limit=5)
    episodes = collect(vector, 13)
    # Each episode: reset + 5 steps = 6 records; two full rounds of 2 workers.
    assert len(episodes) == 4
    for episode, stats in episodes:
        assert stats.length == 5 and len(episode["reward"]) == 6
        np.testing.assert_array_equal(episode["is_first"], [1, 0, 0, 0, 0, 0])
        np.testing.assert_array_equal(episode["is_last"], [0, 0, 0, 0, 0, 1])
        assert not episode["is_terminal"].any(), "truncation is not termination"
        assert episode["reward"][0] == 0.0
        np.testing.assert_array_equal(episode["action"][-1], 0.0)
        assert np.isclose(stats.score, episode["reward"].sum())


def test_flush_saves_the_episodes_in_progress_as_truncations_and_the_next_step_resets():
    vector = envs.make_vector("dmc/cartpole-swingup", 2, asynchronous=False, pixels=False, time_limit=5)
    finished, flushed = [], []
    driver = Driver(vector, lambda episode, stats: finished.append(episode))
    driver.reset(seed=0)
    policy = random_policy(vector.single_action_space, seed=0)
    driver.step(policy, 9)  # 6 records finish each worker's first episode; 3 more are in progress
    assert len(finished) == 2
    assert driver.flush(flushed.append) == 2
    for episode in flushed:
        assert len(episode["reward"]) == 4  # the 3 recorded steps and the observation they led to
        np.testing.assert_array_equal(episode["is_first"], [1, 0, 0, 0])
        np.testing.assert_array_equal(episode["is_last"], [0, 0, 0, 1])
        assert not episode["is_terminal"].any()
        np.testing.assert_array_equal(episode["action"][-1], 0.0)
    assert driver.flush(flushed.append) == 0  # nothing is saved twice
    driver.step(policy, 6)  # a fresh reset, then whole episodes again
    assert len(finished) == 4 and all(len(e["reward"]) == 6 for e in finished)


def test_termination_is_marked_terminal():
    vector = envs.make_vector("gym/InvertedPendulum-v5", 1, asynchronous=False, pixels=False)
    episode, _ = collect(vector, 200)[0]
    assert episode["is_terminal"][-1] and episode["is_last"][-1]
    assert not episode["is_terminal"][:-1].any()


def test_async_vector_env_runs_workers_in_processes():
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    vector = envs.make_vector("dmc/cartpole-swingup", 2, time_limit=4)
    try:
        # The workers ignore Ctrl-C; the parent (where Gymnasium makes one copy to read the spaces) does not.
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
        episodes = collect(vector, 10)
    finally:
        vector.close()
    assert {stats.worker for _, stats in episodes} == {0, 1}
    episode, _ = episodes[0]
    assert episode["image"].shape == (5, 64, 64, 3) and episode["image"].dtype == np.uint8
