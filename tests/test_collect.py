import pytest

from embodied.replay import Replay, ReplayConfig
from experiments.collect import Args, collect
from experiments.config import EnvConfig


def test_collect_writes_exactly_n_episodes_a_replay_can_read(tmp_path):
    out = collect(Args(task="dmc/cartpole-swingup", episodes=3, out=tmp_path / "data", env=EnvConfig(envs=2, proprio=True, time_limit=10, size=32)))
    replay = Replay(ReplayConfig(capacity=1000), directory=out)
    assert replay.num_episodes == 3 and len(replay) == 33
    assert replay.sample(2, 5, __import__("numpy").random.default_rng(0))["image"].shape == (2, 5, 32, 32, 3)


def test_collect_into_a_file_fails_clearly(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("x")
    with pytest.raises(NotADirectoryError):
        collect(Args(episodes=1, out=path))
