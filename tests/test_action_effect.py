import numpy as np

from embodied.replay import EpisodeStore
from experiments.action_effect import Collect, collect
from experiments.probe_state import cartpole_state, lqr_gain


def test_collect_writes_lqr_episodes_with_the_asked_action_noise(tmp_path):
    collect(Collect(out=tmp_path, noise=0.3, episodes=2))
    episodes = [episode for _, episode in EpisodeStore(tmp_path).load()]
    assert len(episodes) == 2
    gain = lqr_gain(2)
    for episode in episodes:
        assert episode["proprio"].shape == (501, 5) and episode["reward"][1:].sum() > 800  # the pole stays up
        lqr, action = -(cartpole_state(episode["proprio"][:-1]) @ gain.T), episode["action"][:-1]  # the last step acts not
        residual = (action - lqr)[np.abs(action) < 1.0]
        assert 0.25 < residual.std() < 0.35 and abs(residual.mean()) < 0.05
