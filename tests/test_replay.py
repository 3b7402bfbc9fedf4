import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from embodied.replay import EpisodeStore, Replay, ReplayConfig


def episode(length, value=0, image=8):
    t = np.arange(length)
    return dict(
        image=np.full((length, image, image, 3), value % 256, np.uint8),
        proprio=np.full((length, 3), value, np.float32),
        action=np.full((length, 2), value, np.float32),
        reward=t.astype(np.float32),
        is_first=t == 0,
        is_last=t == length - 1,
        is_terminal=np.zeros(length, bool),
    )


def test_round_trip_through_disk(tmp_path):
    store = EpisodeStore(tmp_path)
    original = episode(7, value=3)
    path = store.save(original)
    assert path.name.endswith("-7.npz")
    [(loaded_path, loaded)] = list(store.load())
    assert loaded_path == path
    for key in original:
        np.testing.assert_array_equal(loaded[key], original[key])
        assert loaded[key].dtype == original[key].dtype


def test_sample_shapes_and_sequences_are_consecutive_steps():
    replay = Replay(ReplayConfig(capacity=100))
    replay.add(episode(30, value=1))
    batch = replay.sample(4, 10, np.random.default_rng(0))
    assert batch["image"].shape == (4, 10, 8, 8, 3)
    assert batch["action"].shape == (4, 10, 2) and batch["reward"].shape == (4, 10)
    np.testing.assert_array_equal(np.diff(batch["reward"], axis=1), 1.0)


def test_eviction_drops_whole_oldest_episodes_and_bounds_memory():
    replay = Replay(ReplayConfig(capacity=25))
    for value in range(5):
        replay.add(episode(10, value=value))
    assert len(replay) == 20 and replay.num_episodes == 2
    batch = replay.sample(256, 1, np.random.default_rng(0))
    assert set(np.unique(batch["proprio"])) == {3.0, 4.0}
    assert all(array.shape[0] == 25 for array in replay._arrays.values())


def test_sequences_across_an_episode_boundary_carry_is_first():
    replay = Replay(ReplayConfig(capacity=100))
    replay.add(episode(5, value=0))
    replay.add(episode(5, value=1))
    batch = replay.sample(64, 10, np.random.default_rng(0))
    np.testing.assert_array_equal(batch["is_first"], np.tile(np.arange(10) % 5 == 0, (64, 1)))


def test_recent_sampling_favours_new_data():
    def mean_value(sampling):
        replay = Replay(ReplayConfig(capacity=1000, sampling=sampling, half_life=50))
        for value in range(10):
            replay.add(episode(100, value=value))
        return replay.sample(2000, 1, np.random.default_rng(0))["proprio"].mean()

    assert 4.0 < mean_value("uniform") < 5.0
    assert mean_value("recent") > 8.5


def test_restart_reloads_the_newest_episodes_that_fit(tmp_path):
    replay = Replay(ReplayConfig(capacity=1000), directory=tmp_path)
    for value in range(6):
        replay.add(episode(10, value=value))
    restarted = Replay(ReplayConfig(capacity=35), directory=tmp_path)
    assert restarted.num_episodes == 3 and len(restarted) == 30
    assert set(np.unique(restarted.sample(256, 1, np.random.default_rng(0))["proprio"])) == {3.0, 4.0, 5.0}
    assert len(list(tmp_path.glob("*.npz"))) == 6, "restarting must not rewrite or delete episodes"


def test_a_share_of_each_batch_comes_from_the_prefill_episodes():
    replay = Replay(ReplayConfig(capacity=1000, prefill_share=0.25))
    replay.add(episode(20, value=1))
    replay.add(episode(20, value=1))
    replay.sample(16, 8, np.random.default_rng(0))  # nothing marked yet: all alike
    replay.mark_prefill()
    for _ in range(40):
        replay.add(episode(20, value=2))
    assert replay.prefill_steps == 40
    rng = np.random.default_rng(0)
    counts = [np.sum(replay.sample(16, 8, rng)["proprio"].max(axis=(1, 2)) == 1) for _ in range(200)]
    # 4 of 16 from the 40 prefill steps, and the other 12 drawn from all 840 steps land there now and then.
    assert min(counts) >= 4 and 4.0 < np.mean(counts) < 5.0
    replay.mark_prefill()  # only the first call counts
    assert replay.prefill_steps == 40
    plain = Replay(ReplayConfig(capacity=1000))
    for value in [1, 1] + [2] * 40:
        plain.add(episode(20, value=value))
    assert np.mean(plain.sample(3200, 8, rng)["proprio"].max(axis=(1, 2)) == 1) < 0.06


def test_the_prefill_share_ends_when_its_episodes_are_evicted():
    replay = Replay(ReplayConfig(capacity=100, prefill_share=0.5))
    replay.add(episode(20, value=1))
    replay.mark_prefill()
    for _ in range(4):
        replay.add(episode(20, value=2))
    assert replay.prefill_steps == 20
    assert np.sum(replay.sample(64, 8, np.random.default_rng(0))["proprio"].max(axis=(1, 2)) == 1) >= 32
    replay.add(episode(20, value=2))  # evicts the prefill episode
    assert replay.prefill_steps == 0
    assert set(np.unique(replay.sample(64, 8, np.random.default_rng(0))["proprio"])) == {2.0}


def test_a_restarted_replay_keeps_its_prefill_mark(tmp_path):
    replay = Replay(ReplayConfig(capacity=1000, prefill_share=0.5), directory=tmp_path)
    for _ in range(2):
        replay.add(episode(10, value=1))
    replay.mark_prefill()
    for _ in range(3):
        replay.add(episode(10, value=2))
    restarted = Replay(ReplayConfig(capacity=1000, prefill_share=0.5), directory=tmp_path)
    assert restarted.prefill_steps == 20
    restarted.mark_prefill()  # a resumed loop calls it again: the mark from disk stands
    assert restarted.prefill_steps == 20
    assert Replay(ReplayConfig(capacity=35), directory=tmp_path).prefill_steps == 0  # the prefill episodes no longer fit
    assert Replay(ReplayConfig(capacity=45), directory=tmp_path).prefill_steps == 10  # one of them does

    # A mark made before any episode was stored (no prefill) still counts: nothing later is taken for random.
    empty = tmp_path / "empty"
    Replay(ReplayConfig(), directory=empty).mark_prefill()
    later = Replay(ReplayConfig(), directory=empty)
    later.add(episode(10, value=2))
    later.mark_prefill()
    assert later.prefill_steps == 0

    (tmp_path / "prefill.json").write_text("{not json")
    with pytest.warns(UserWarning, match="Unreadable prefill mark"):
        damaged = Replay(ReplayConfig(capacity=1000), directory=tmp_path)
    damaged.mark_prefill()
    assert damaged.prefill_steps == 0 and damaged.num_episodes == 5


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_lengths"])
def test_a_corrupt_chunk_is_skipped_with_a_warning_naming_it(tmp_path, damage):
    store = EpisodeStore(tmp_path)
    good = [store.save(episode(10, value=v)) for v in range(3)]
    bad = good[1]
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(b"not an npz file")
    else:
        broken = episode(10, value=1)
        broken["reward"] = broken["reward"][:4]
        np.savez(bad, **broken)
    with pytest.warns(UserWarning, match=bad.name):
        replay = Replay(ReplayConfig(capacity=100), directory=tmp_path)
    assert replay.num_episodes == 2 and len(replay) == 20


def test_pickled_objects_are_refused(tmp_path):
    store = EpisodeStore(tmp_path)
    path = store.save(episode(4))
    np.savez(path, **episode(4), evil=np.array([object()], dtype=object))
    with pytest.warns(UserWarning, match="Skipping unreadable"):
        assert list(store.load()) == []


WRITER = """
import sys, numpy as np
from embodied.replay import EpisodeStore
store = EpisodeStore(sys.argv[1])
rng = np.random.default_rng(0)
t = 400
while True:
    store.save(dict(image=rng.integers(0, 255, (t, 64, 64, 3), np.uint8), action=np.zeros((t, 1), np.float32),
                    reward=np.zeros(t, np.float32), is_first=np.arange(t) == 0, is_last=np.arange(t) == t - 1,
                    is_terminal=np.zeros(t, bool)))
"""


def test_a_process_killed_mid_write_leaves_nothing_partial(tmp_path):
    root = pathlib.Path(__file__).resolve().parents[1]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=root)
    try:
        deadline = time.monotonic() + 60
        # Kill while a second file is being written: one complete, one partial.
        while not (list(tmp_path.glob("*.npz")) and list(tmp_path.glob(".*.tmp"))):
            assert time.monotonic() < deadline and writer.poll() is None, "writer never got going"
            time.sleep(0.001)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert list(tmp_path.glob(".*.tmp")), "the kill should have caught a write in progress"
    replay = Replay(ReplayConfig(capacity=10_000), directory=tmp_path)
    assert replay.num_episodes == len(list(tmp_path.glob("*.npz"))) >= 1
    assert len(replay) % 400 == 0


def test_bad_input(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        Replay(directory=not_a_dir)
    replay = Replay(ReplayConfig(capacity=100))
    replay.add(episode(5))
    with pytest.raises(ValueError, match="fewer than the sequence length 8"):
        replay.sample(2, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="does not match the replay's layout"):
        replay.add(episode(5, image=16))
    with pytest.raises(ValueError, match="does not fit a replay of capacity 100"):
        replay.add(episode(101))
    with pytest.raises(ValueError, match="lacks keys"):
        replay.add({"image": np.zeros((3, 8, 8, 3), np.uint8)})
    with pytest.raises(ValueError, match="capacity must be"):
        Replay(ReplayConfig(capacity=0))
    with pytest.raises(ValueError, match=r"prefill_share must be in \[0, 1\); got 1.0"):
        Replay(ReplayConfig(prefill_share=1.0))
