import dataclasses

import numpy as np
from flax import nnx

from embodied.worldmodel.backbones import BackboneConfig
from embodied.worldmodel.model import Spec, WorldModel, WorldModelConfig
from experiments.probe_features import STATE, probe, ridge_r2

TINY = WorldModelConfig(backbone=BackboneConfig(dim=16, state=8, layers=1), depth=4, latent_vars=4, latent_classes=4, hidden=16, reward_bins=15)


def test_ridge_r2_finds_a_linear_read_out_and_nothing_in_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20))
    y = np.c_[x @ rng.normal(size=20), rng.normal(size=600)]  # a linear function of x, and noise
    r2, rms = ridge_r2(x[:400], y[:400], x[400:], y[400:], strength=1e-3)
    assert r2[0] > 0.999 and rms[0] < 0.05 * y[400:, 0].std()
    assert r2[1] < 0.1


def test_probe_scores_every_state_variable_on_the_same_episodes_for_any_model():
    pixels = WorldModel(dataclasses.replace(TINY, frames=2), Spec(image=(16, 16, 3), proprio=None, action=1), rngs=nnx.Rngs(0))
    proprio = WorldModel(TINY, Spec(image=None, proprio=5, action=1), rngs=nnx.Rngs(1))
    positions = WorldModel(TINY, Spec(image=None, proprio=3, action=1), rngs=nnx.Rngs(2))  # the task without velocities
    a, b, c = (probe(model, episodes=3, noise=1.0, seed=0, size=16) for model in (pixels, proprio, positions))
    np.testing.assert_allclose(a["spread"], b["spread"])  # the episodes do not depend on the model
    np.testing.assert_allclose(a["spread"], c["spread"])
    assert np.all(np.array(a["spread"]) > 0.01)  # the noise moves every state variable
    for result in (a, b, c):
        for name in ("z", "y", "y,z"):
            assert len(result[name]["r2"]) == len(STATE) and np.all(np.isfinite(result[name]["r2"]))
            assert np.all(np.array(result[name]["r2"]) <= 1.0)
