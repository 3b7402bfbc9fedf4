"""The world model as a Gymnasium environment: API conformance, vector form, errors, the imagine script."""

import io

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from embodied.worldmodel import BackboneConfig, WorldModelConfig
from experiments import imagine
from experiments.collect import Args as CollectArgs, collect
from experiments.config import EnvConfig
from experiments.train_world_model import Args, train

TINY = WorldModelConfig(backbone=BackboneConfig(dim=32, state=16, layers=1), depth=4, latent_vars=8, latent_classes=8, hidden=32, reward_bins=31)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = collect(CollectArgs(task="dmc/cartpole-swingup", episodes=2, out=tmp_path_factory.mktemp("data"), env=EnvConfig(envs=1, proprio=True, time_limit=20, size=16)))
    run = tmp_path_factory.mktemp("wm") / "run"
    train(Args(data=data, run=run, model=TINY, batch=2, length=8, updates=2, log_every=1, save_every=2))
    return run, data


def test_dream_env_passes_gymnasiums_checker_with_images_and_latents(run):
    run, data = run
    env = gym.make("reverie/Dream-v0", checkpoint=run, dataset=data, horizon=5)
    assert env.observation_space["image"].shape == (16, 16, 3)
    check_env(env.unwrapped, skip_render_check=False)
    obs, _ = env.reset(seed=1)
    for t in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs["image"].dtype == np.uint8 and np.isfinite(reward)
        if terminated:
            break
    assert terminated or truncated, "the horizon truncates"
    assert env.render().shape == (16, 16, 3)
    latent = envs.DreamEnv(checkpoint=run, dataset=data, observation="latent")
    check_env(latent)
    assert latent.observation_space.shape == (32 + 64,)  # backbone output and latents


def test_reset_from_passed_observations_and_the_same_seed_gives_the_same_dream(run):
    run, data = run
    env = envs.DreamEnv(checkpoint=run)
    real = envs.make("dmc/cartpole-swingup", size=16)
    first, _ = real.reset(seed=0)
    trajectories = []
    for _ in range(2):
        env.reset(seed=3, options={"observations": first})
        trajectories.append([env.step(np.full(1, 0.5, np.float32))[1] for _ in range(4)])
    assert trajectories[0] == trajectories[1]


def test_dream_vector_env_steps_all_copies_and_restarts_ended_ones(run):
    run, data = run
    vec = envs.DreamVectorEnv(checkpoint=run, dataset=data, num_envs=6, horizon=3)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (6, 96)
    ended = np.zeros(6, bool)
    for t in range(3):
        obs, reward, terminated, truncated, info = vec.step(vec.action_space.sample())
        assert reward.shape == (6,) and obs.shape == (6, 96)
        done = terminated | truncated
        ended |= done
        if done.any():
            assert info["final_obs"].shape == (6, 96) and np.array_equal(info["_final_obs"], done)
    assert ended.all(), "every copy ends by the horizon (an untrained continue head may end some sooner)"
    images = envs.DreamVectorEnv(checkpoint=run, dataset=data, num_envs=2, observation="image")
    obs, _ = images.reset(seed=0)
    assert obs["image"].shape == (2, 16, 16, 3)


def test_dreams_of_a_skip_decoder_draw_from_their_start_frame_at_the_steps_since(run, tmp_path):
    """A model with decoder_skip and decoder_distance draws each dreamed frame from the real frame
    its dream started from, k steps back; the vector env's copies change both when they restart."""
    import dataclasses

    import jax.numpy as jnp
    from flax import nnx

    from embodied.replay import EpisodeStore
    from embodied.worldmodel import WorldModel
    from embodied.worldmodel.io import load
    from envs.dream import episode_starts

    run, data = run
    spec = load(run).model.spec
    model = WorldModel(dataclasses.replace(TINY, decoder_skip=True, decoder_distance=True), spec, rngs=nnx.Rngs(0))
    # Starts that differ: cartpole's first frames look alike at 16x16, so four copies of a real
    # episode, each made brighter than the last.
    store, episode = EpisodeStore(tmp_path / "starts"), EpisodeStore(data).read(EpisodeStore(data).paths()[0])
    for i in range(4):
        store.save({**episode, "image": np.clip(episode["image"].astype(int) + 50 * i, 0, 255).astype(np.uint8)})
    data = store.directory
    starts = episode_starts(data, ("image", "proprio"))
    assert len({frame.tobytes() for frame in starts["image"]}) == 4

    decode = nnx.jit(lambda m, z, frame, steps: m.decode(z, frame, distance=steps)["image"])  # eagerly, each operation compiles apart

    def drawn(state, frame, steps):
        image = decode(model, state.z, jnp.asarray(frame), jnp.asarray(steps))
        return np.asarray((jnp.clip(image + 0.5, 0.0, 1.0) * 255).astype(jnp.uint8))

    env = envs.DreamEnv(model=model, dataset=data, horizon=3)
    first = {k: v[1] for k, v in starts.items()}
    obs, _ = env.reset(seed=0, options={"observations": first})
    np.testing.assert_array_equal(obs["image"], drawn(env._state, first["image"][None], [0])[0])
    for k in (1, 2):
        obs, *_ = env.step(np.zeros(1, np.float32))
        np.testing.assert_array_equal(obs["image"], drawn(env._state, first["image"][None], [k])[0])
        assert not np.array_equal(obs["image"], drawn(env._state, first["image"][None], [0])[0]), "the distance is read"
    np.testing.assert_array_equal(env.render(), obs["image"])

    vec = envs.DreamVectorEnv(model=model, dataset=data, num_envs=4, horizon=2, observation="image")
    obs, _ = vec.reset(seed=0)
    single = [env.reset(options={"observations": {k: v[j] for k, v in starts.items()}})[0]["image"] for j in range(len(starts["image"]))]
    np.testing.assert_array_equal(obs["image"], np.stack([single[j] for j in np.asarray(vec._state[2])]))
    ended = np.zeros(4, bool)
    for _ in range(2):
        obs, reward, terminated, truncated, info = vec.step(np.zeros((4, 1), np.float32))
        done, (state, steps, start) = terminated | truncated, vec._state
        np.testing.assert_array_equal(obs["image"], drawn(state, starts["image"][np.asarray(start)], steps))
        np.testing.assert_array_equal(obs["image"][done], np.stack([single[j] for j in np.asarray(start)])[done])  # restarted
        assert (np.asarray(steps)[done] == 0).all() and (np.asarray(steps)[~done] > 0).all()
        ended |= done
    assert ended.all(), "every copy ends by the horizon"


def test_bad_input_gets_clear_errors(run, tmp_path):
    run, data = run
    with pytest.raises(FileNotFoundError, match="world_model.json"):
        envs.DreamEnv(checkpoint=tmp_path)
    env = envs.DreamEnv(checkpoint=run)
    with pytest.raises(ValueError, match="no dataset"):
        env.reset()
    with pytest.raises(ValueError, match="has shape"):
        env.reset(options={"observations": {"image": np.zeros((64, 64, 3), np.uint8), "proprio": np.zeros(5, np.float32)}})
    with pytest.raises(ValueError, match="need 'proprio'"):
        env.reset(options={"observations": {"image": np.zeros((16, 16, 3), np.uint8)}})
    env = envs.DreamEnv(checkpoint=run, dataset=data)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(np.array([2.0], np.float32))
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(np.zeros(3, np.float32))


def test_imagine_script_writes_side_by_side_video_and_keyboard_drives_it(run, tmp_path):
    run, _ = run
    out = imagine.main(imagine.Args(checkpoint=run, task="dmc/cartpole-swingup", steps=5, out=tmp_path / "r.gif"))
    assert out["steps"] == 5 and len(out["psnr"]) == 5 and (tmp_path / "r.gif").stat().st_size > 0
    screen = io.StringIO()
    keys = io.StringIO("d\na\n \nq\n")
    out = imagine.main(imagine.Args(checkpoint=run, task="dmc/cartpole-swingup", policy="keyboard", out=tmp_path / "k.gif"), stdin=keys, stdout=screen)
    assert out["steps"] == 3 and "\u2580" in screen.getvalue()
    assert imagine.key_action("d", 1).tolist() == [1.0] and imagine.key_action("q", 1) is None
    with pytest.raises(ValueError, match="pass --task"):
        imagine.main(imagine.Args(checkpoint=run))


def test_a_policy_trained_only_in_the_dream_runs_in_the_real_task(run, tmp_path, monkeypatch):
    """Random search over linear policies on DreamEnv's latent features (the dream only), then
    experiments/evaluate.py runs the best in the real task through envs.LatentObservation."""
    from experiments import evaluate

    run, data = run
    dream = envs.DreamEnv(checkpoint=run, dataset=data, observation="latent", horizon=10)
    rng = np.random.default_rng(0)
    best, best_return = None, -np.inf
    for _ in range(4):
        weights = rng.normal(0, 0.1, (dream.observation_space.shape[0], 1)).astype(np.float32)
        obs, _ = dream.reset(seed=0)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = dream.step(np.tanh(obs @ weights))
            total, done = total + reward, terminated or truncated
        if total > best_return:
            best, best_return = weights, total
    np.save(tmp_path / "policy.npy", best)
    monkeypatch.setenv("REVERIE_TEST_POLICY", str(tmp_path / "policy.npy"))

    # The real episode starts where the dream starts from the same observation.
    real = envs.LatentObservation(envs.make("dmc/cartpole-swingup", size=16), run)
    features, _ = real.reset(seed=0)
    first, _ = envs.make("dmc/cartpole-swingup", size=16).reset(seed=0)
    dreamed, _ = dream.reset(options={"observations": first})
    np.testing.assert_allclose(features, dreamed, atol=1e-5)
    assert real.observation_space.contains(features)

    result = evaluate.main(evaluate.Args(checkpoint=run, policy="tests.dream_policy:load_policy", observation="latent",
                                         task="dmc/cartpole-swingup", episodes=1))
    assert result["task"] == "dmc/cartpole-swingup" and np.isfinite(result["mean"]) and result["mean"] > 0
    with pytest.raises(ValueError, match="MODULE:FUNCTION"):
        evaluate.main(evaluate.Args(checkpoint=run, policy="no_colon"))
