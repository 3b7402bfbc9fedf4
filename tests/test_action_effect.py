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


def test_a_pixel_model_sees_the_environments_frames_and_its_push_effect_is_read_through_a_linear_read_out():
    import dataclasses

    import envs
    import pytest
    from flax import nnx

    from embodied.worldmodel.backbones import BackboneConfig
    from embodied.worldmodel.model import Spec, WorldModel, WorldModelConfig
    from envs.render import FastRenderer
    from experiments.action_effect import angle_readout
    from experiments.probe_state import action_effect

    config = WorldModelConfig(backbone=BackboneConfig(dim=16, state=8, layers=1), depth=4, latent_vars=4, latent_classes=4,
                              hidden=16, reward_bins=15)
    model = WorldModel(dataclasses.replace(config, frames=2), Spec(image=(16, 16, 3), proprio=None, action=1), rngs=nnx.Rngs(0))
    # The frames action_effect renders from the physics are the environment's own.
    env = envs.make("dmc/cartpole-balance", pixels=True, proprio=True, size=16)
    obs, _ = env.reset(seed=0)
    physics = env.unwrapped._env.physics
    renderer = FastRenderer(physics.model.ptr, 16, 16, camera=0)
    np.testing.assert_array_equal(renderer.render(physics.data.ptr), obs["image"])
    renderer.close()
    env.close()

    readout, r2, slope = angle_readout(model, episodes=3)
    assert np.isfinite(r2) and r2 <= 1.0 and np.isfinite(slope)
    effect = action_effect(model, action_repeat=2, points=2, samples=4, readout=readout)
    assert set(effect) == {"real_deg", "readout_deg", "posterior_deg"} and len(effect["readout_deg"]) == 2
    assert np.isfinite(effect["readout_deg"] + effect["posterior_deg"]).all() and -10 < effect["real_deg"][0] < -3
    with pytest.raises(ValueError, match="pass a `readout`"):
        action_effect(model, action_repeat=2, points=1, samples=2)
