import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

from agents.dreamer import Dreamer, DreamerConfig
from agents.dreamer.networks import Actor
from agents.dreamer.returns import lambda_returns, replay_returns, return_scale, update_return_range
from agents.mpc import MPCConfig, plan
from embodied.worldmodel import BackboneConfig, ImagineState, Spec, WorldModelConfig


def test_lambda_returns_by_hand():
    rewards = jnp.array([[1.0, 2.0]])
    values = jnp.array([[0.0, 10.0, 20.0]])
    discounts = jnp.array([[0.5, 0.9]])
    lam = 0.8
    r1 = 2.0 + 0.9 * 20.0  # the last step bootstraps from v_2
    r0 = 1.0 + 0.5 * ((1 - lam) * 10.0 + lam * r1)
    np.testing.assert_allclose(lambda_returns(rewards, values, discounts, lam), [[r0, r1]], rtol=1e-6)


def test_replay_returns_by_hand_cut_at_episode_ends_and_terminals():
    # Row 0: one episode; row 1: a new episode starts at step 2; row 2: step 3 is terminal.
    batch = {
        "reward": jnp.array([[0.0, 1.0, 2.0, 3.0]] * 3),
        "is_first": jnp.array([[1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]], bool),
        "is_terminal": jnp.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], bool),
    }
    boot = jnp.array([[10.0, 20.0, 30.0, 40.0]] * 3)
    g, lam = 0.5, 0.8
    returns, weight = replay_returns(batch, boot, g, lam)
    r2 = 3.0 + g * 40.0
    r1 = 2.0 + g * ((1 - lam) * 30.0 + lam * r2)
    r0 = 1.0 + g * ((1 - lam) * 20.0 + lam * r1)
    np.testing.assert_allclose(returns[0], [r0, r1, r2], rtol=1e-6)
    np.testing.assert_allclose(returns[1, 0], 1.0 + g * 20.0, rtol=1e-6)  # step 1 ends its episode: bootstrap only
    np.testing.assert_allclose(weight[1], [1.0, 0.0, 1.0])  # no real transition from step 1 to step 2
    np.testing.assert_allclose(returns[2, 2], 3.0, rtol=1e-6)  # a terminal step has no future
    np.testing.assert_allclose(weight[0], [1.0, 1.0, 1.0])


def test_return_scale_is_an_ema_of_the_percentile_range_and_at_least_one():
    returns = jnp.arange(101.0)  # 5th percentile 5, 95th 95
    ema = update_return_range(jnp.zeros(2), returns, decay=0.9)
    np.testing.assert_allclose(ema, [0.5, 9.5], rtol=1e-6)
    assert float(return_scale(ema)) == pytest.approx(9.0)
    assert float(return_scale(jnp.array([0.0, 0.3]))) == 1.0


def test_continuous_actor_log_prob_and_entropy_match_the_normal():
    actor = Actor(6, 2, discrete=False, units=8, layers=1, rngs=__import__("flax").nnx.Rngs(0))
    features = jax.random.normal(jax.random.key(0), (5, 6))
    action = jax.random.uniform(jax.random.key(1), (5, 2), minval=-1, maxval=1)
    mean, std = actor._params(features)
    logp, entropy = actor.log_prob_entropy(features, action)
    np.testing.assert_allclose(logp, norm.logpdf(action, mean, std).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(entropy, (0.5 * jnp.log(2 * jnp.pi * jnp.e * std**2)).sum(-1), rtol=1e-5)
    assert np.all((0.1 <= std) & (std <= 1.0)) and np.all(np.abs(mean) <= 1.0)
    sample = actor.sample(features, jax.random.key(2))
    assert sample.shape == (5, 2) and np.all(np.abs(sample) <= 1.0)


def test_imagination_samples_unclipped_actions_and_the_world_model_clips_them():
    """The policy gradient needs the log-probability of the drawn sample, not of the box edge."""
    from flax import nnx

    actor = Actor(6, 2, discrete=False, units=8, layers=1, rngs=nnx.Rngs(0))
    features = jax.random.normal(jax.random.key(0), (256, 6))
    raw = actor.sample(features, jax.random.key(1), clip=False)
    clipped = actor.sample(features, jax.random.key(1))
    assert np.any(np.abs(raw) > 1.0) and np.all(np.abs(clipped) <= 1.0)
    np.testing.assert_array_equal(clipped, jnp.clip(raw, -1, 1))
    model = tiny_agent().module("world_model", tiny_agent().init(0).world_model)
    z = jax.nn.one_hot(jnp.zeros((256, 4), int), 4)
    np.testing.assert_array_equal(model.backbone_input(z, raw), model.backbone_input(z, clipped))


def test_discrete_actor_is_a_mixed_categorical_over_one_hot_actions():
    from flax import nnx

    actor = Actor(6, 3, discrete=True, units=8, layers=1, rngs=nnx.Rngs(0))
    features = jax.random.normal(jax.random.key(0), (4, 6))
    sample = actor.sample(features, jax.random.key(1))
    assert sample.shape == (4, 3) and np.all(sample.sum(-1) == 1)
    logits, _ = actor._params(features)
    probs = jax.nn.softmax(logits)
    assert np.all(probs >= 0.01 / 3 - 1e-6)  # the uniform mix
    logp, entropy = actor.log_prob_entropy(features, sample)
    np.testing.assert_allclose(logp, jnp.log((probs * sample).sum(-1)), rtol=1e-5)
    np.testing.assert_allclose(entropy, -(probs * jnp.log(probs)).sum(-1), rtol=1e-5)


def tiny_agent(discrete=False, kind="ssm", action=2, compute_dtype="float32", posterior="frame", nonlinear_input=False,
               posterior_hidden=0, **config):
    spec = Spec(image=None, proprio=5, action=action)
    model = WorldModelConfig(backbone=BackboneConfig(kind=kind, dim=16, state=8, layers=1, heads=2, context=4),
                             hidden=16, latent_vars=4, latent_classes=4, posterior=posterior,
                             nonlinear_input=nonlinear_input, posterior_hidden=posterior_hidden)
    return Dreamer(spec, model, DreamerConfig(**{"units": 16, "layers": 1, "horizon": 4, **config}), discrete=discrete,
                   compute_dtype=compute_dtype)


def tiny_batch(B=3, T=6, action=2, key=0):
    rng = np.random.default_rng(key)
    return {
        "proprio": jnp.asarray(rng.normal(size=(B, T, 5)), jnp.float32),
        "action": jnp.asarray(rng.uniform(-1, 1, (B, T, action)), jnp.float32),
        "reward": jnp.asarray(rng.normal(size=(B, T)), jnp.float32),
        "is_first": jnp.zeros((B, T), bool).at[:, 0].set(True).at[0, 3].set(True),
        "is_terminal": jnp.zeros((B, T), bool).at[1, 5].set(True),
    }


@pytest.mark.parametrize("kind", ["ssm", "gru", "transformer"])
def test_train_step_updates_every_network_and_reports_finite_metrics(kind):
    agent = tiny_agent(kind=kind)
    state = agent.init(0)
    new, metrics = jax.jit(agent.train)(state, tiny_batch(), jax.random.key(0))
    for name in ("world_model", "actor", "critic"):
        before, after = jax.tree.leaves(getattr(state, name).params), jax.tree.leaves(getattr(new, name).params)
        assert any(not np.allclose(a, b) for a, b in zip(before, after)), f"{name} did not change"
    assert all(np.isfinite(v) for v in jax.device_get(metrics).values()), metrics
    assert int(new.step) == 1 and float(metrics["skipped"]) == 0


@pytest.mark.parametrize("kind", ["ssm", "gru", "transformer"])
def test_dreaming_beside_the_actor_leaves_its_actions_and_state_as_they_are(kind):
    agent = tiny_agent(kind=kind)
    state, key = agent.init(0), jax.random.key(1)
    obs = {"proprio": jnp.asarray(np.random.default_rng(0).normal(size=(2, 5)), jnp.float32), "is_first": jnp.array([True, False])}
    action, policy_state = jax.jit(functools.partial(agent.policy, explore=False))(state, agent.init_policy(2), obs, key)
    for samples in (1, 3):  # each start's carry repeated 3 times over: every backbone's carry is batch-first
        dreamed_action, dreamed_state, dreamed = jax.jit(functools.partial(agent.dream, horizon=4, samples=samples))(
            state, agent.init_policy(2), obs, key)
        np.testing.assert_array_equal(dreamed_action, action)
        jax.tree.map(np.testing.assert_array_equal, dreamed_state, policy_state)
        assert dreamed.shape == (2,) and np.all(np.isfinite(dreamed))


def test_the_replay_value_loss_changes_only_the_critic_update():
    runs = {w: jax.jit(tiny_agent(replay_value=w).train)(tiny_agent().init(0), tiny_batch(), jax.random.key(0)) for w in (0.0, 0.3)}
    (off, off_metrics), (on, on_metrics) = runs[0.0], runs[0.3]
    jax.tree.map(np.testing.assert_array_equal, off.actor.params, on.actor.params)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(off.critic.params), jax.tree.leaves(on.critic.params)))
    assert np.isfinite(float(on_metrics["replay_return"])) and float(on_metrics["critic_loss"]) > float(off_metrics["critic_loss"])


def test_imagining_from_a_subset_of_starts_changes_only_the_actor_critic_update():
    full, _ = jax.jit(tiny_agent().train)(tiny_agent().init(0), tiny_batch(), jax.random.key(0))
    part, metrics = jax.jit(tiny_agent(starts=1 / 3, horizon=12).train)(tiny_agent().init(0), tiny_batch(), jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, full.world_model.params, part.world_model.params)
    for name in ("actor", "critic"):
        assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(getattr(full, name).params), jax.tree.leaves(getattr(part, name).params)))
    assert all(np.isfinite(v) for v in jax.device_get(metrics).values()), metrics


def test_bfloat16_train_keeps_float32_state_and_finite_metrics():
    agent = tiny_agent(compute_dtype="bfloat16")
    state = agent.init(0)
    train = jax.jit(agent.train)
    for i in range(3):
        state, metrics = train(state, tiny_batch(key=i), jax.random.key(i))
        assert all(np.isfinite(v) for v in jax.device_get(metrics).values()), metrics
    floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}
    action, _ = agent.policy(state, agent.init_policy(2), {"proprio": jnp.zeros((2, 5)), "is_first": jnp.ones(2, bool)},
                             jax.random.key(1))
    assert action.dtype == jnp.float32


def test_discrete_actions_train_and_act():
    agent = tiny_agent(discrete=True, action=3)
    state = agent.init(0)
    batch = tiny_batch(action=3)
    batch["action"] = jax.nn.one_hot(jnp.argmax(batch["action"], -1), 3)
    state, metrics = jax.jit(agent.train)(state, batch, jax.random.key(0))
    assert np.isfinite(float(metrics["actor_loss"]))
    obs = {"proprio": jnp.zeros((2, 5)), "is_first": jnp.ones(2, bool)}
    action, _ = agent.policy(state, agent.init_policy(2), obs, jax.random.key(1))
    assert action.shape == (2, 3) and np.all(action.sum(-1) == 1)


@pytest.mark.parametrize("discrete", [False, True])
def test_exploration_noise_perturbs_collected_actions_only(discrete):
    """Collecting adds `explore_noise`; evaluation (the mode) is untouched, and noise of 10 puts
    nearly every continuous action on the box edge, or for discrete actions makes them uniform."""
    action = 3 if discrete else 2
    quiet, noisy = tiny_agent(discrete, action=action), tiny_agent(discrete, action=action, explore_noise=10.0)
    state = quiet.init(0)
    obs = {"proprio": jnp.zeros((4000, 5)), "is_first": jnp.ones(4000, bool)}

    def act(agent, explore):
        return np.asarray(agent.policy(state, agent.init_policy(4000), obs, jax.random.key(1), explore=explore)[0])

    np.testing.assert_array_equal(act(quiet, False), act(noisy, False))
    if discrete:
        counts = {name: np.bincount(act(agent, True).argmax(-1), minlength=3) / 4000 for name, agent in (("quiet", quiet), ("noisy", noisy))}
        np.testing.assert_allclose(counts["noisy"], 1 / 3, atol=0.03)
        assert np.abs(counts["quiet"] - 1 / 3).max() > 0.05, counts  # the untrained actor alone is not uniform
        assert np.all(act(noisy, True).sum(-1) == 1)
    else:
        assert np.all(np.abs(act(noisy, True)) <= 1.0)
        assert np.mean(np.abs(act(noisy, True)) == 1.0) > 0.9 > np.mean(np.abs(act(quiet, True)) == 1.0)


def test_imagination_is_differentiable_in_the_actions_even_beyond_the_box():
    """What the backprop actor needs: gradients from imagined outcomes to earlier actions,
    through the backbone and the straight-through prior latents, also at a clipped action."""
    from embodied.worldmodel import imagine

    agent = tiny_agent()
    model = agent.module("world_model", agent.init(0).world_model)
    start = ImagineState(model.backbone.init_carry(4), jnp.zeros((4, 16)), jax.nn.one_hot(jnp.zeros((4, 4), int), 4))

    def last_continue(actions):
        return imagine(model, None, start, 3, jax.random.key(0), actions=actions).continues[:, -1].sum()

    for value in (0.3, 1.5):
        grads = jax.grad(last_continue)(jnp.full((4, 3, 2), value))
        assert np.all(np.abs(grads[:, 0]).sum(-1) > 0), f"no gradient to the first action at {value}"


@pytest.mark.parametrize("discrete", [False, True])
def test_both_actor_gradients_learn_and_backprop_refuses_discrete_actions(discrete):
    import dataclasses

    batch = tiny_batch(action=3)
    if discrete:
        batch["action"] = jax.nn.one_hot(jnp.argmax(batch["action"], -1), 3)
    base = tiny_agent(discrete=discrete, action=3)
    assert base.config.actor_grad == "reinforce"
    results = {}
    for grad in ("reinforce", "backprop"):
        config = dataclasses.replace(base.config, actor_grad=grad)
        if discrete and grad == "backprop":
            with pytest.raises(ValueError, match="actor_grad='backprop' needs continuous actions"):
                Dreamer(base.spec, base.model_config, config, discrete=True)
            continue
        agent = Dreamer(base.spec, base.model_config, config, discrete=discrete)
        state = agent.init(0)
        new, metrics = jax.jit(agent.train)(state, batch, jax.random.key(0))
        assert np.isfinite(float(metrics["actor_loss"]))
        results[grad] = jax.tree.leaves(new.actor.params)
        assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.actor.params), results[grad]))
    if not discrete:
        assert any(not np.allclose(a, b) for a, b in zip(results["backprop"], results["reinforce"]))


def test_imagination_starts_are_fresh_at_episode_starts():
    agent = tiny_agent()
    state = agent.init(0)
    batch = tiny_batch()

    @jax.jit  # eagerly, each operation of the world model compiles apart
    def starts(part, batch):
        model = agent.module("world_model", part)
        return model.starts(batch, model.observe(batch, jax.random.key(0)))

    starts = starts(state.world_model, batch)
    first = np.asarray(batch["is_first"])
    assert np.all(np.asarray(starts.y)[first] == 0)
    assert np.all(np.asarray(starts.carry[0])[first] == 0)
    assert not np.all(np.asarray(starts.y)[~first] == 0)


@pytest.mark.parametrize("model", ["default", "filter", "nonlinear-input", "filter-hidden"])
def test_acting_step_by_step_matches_the_starts_of_training(model):
    """The state the policy sees when acting equals the imagination start built from the same data."""
    from embodied.worldmodel.model import Observation

    agent = tiny_agent(posterior="filter" if model.startswith("filter") else "frame", nonlinear_input=model == "nonlinear-input",
                       posterior_hidden=8 * (model == "filter-hidden"))
    state = agent.init(0)
    model = agent.module("world_model", state.world_model)
    batch = tiny_batch(B=2, T=5)
    policy_state, seen = agent.init_policy(2), []
    for t in range(5):
        def replay_action(s, key, t=t):
            seen.append(s)
            return batch["action"][:, t]

        obs = {"proprio": batch["proprio"][:, t]}
        _, policy_state = model.act_step(policy_state, obs, batch["is_first"][:, t], replay_action, jax.random.key(t))
    # The training pass over the latents that acting sampled.
    z = jnp.stack([s.z for s in seen], 1)
    y, carries = model.backbone.states(model.backbone_input(z, batch["action"]), model.backbone.init_carry(2), batch["is_first"])
    starts = model.starts(batch, Observation(None, z, y, carries))
    for t, s in enumerate(seen):
        np.testing.assert_allclose(s.y, starts.y[:, t], atol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b[:, t], atol=1e-5), s.carry, starts.carry)


def test_mpc_finds_the_best_action_of_a_known_reward():
    """A toy model whose reward is -(a - 0.5)^2: the plan's first action must approach 0.5."""

    class Toy:
        spec = Spec(image=None, proprio=1, action=1)

        def features(self, y, z):
            return y

        def imagine_step(self, state, action, key):
            return state, -((action[:, 0] - 0.5) ** 2), jnp.ones(action.shape[0])

    class ZeroActor:
        def mode(self, features):
            return jnp.zeros((features.shape[0], 1))

    start = ImagineState(carry=jnp.zeros((2, 1)), y=jnp.zeros((2, 3)), z=jnp.zeros((2, 1, 1)))
    config = MPCConfig(horizon=3, samples=128, elites=16, iterations=5)
    action = plan(config, Toy(), ZeroActor(), lambda f: jnp.zeros(f.shape[0]), start, jax.random.key(0), discount=0.99, explore=False)
    np.testing.assert_allclose(action, 0.5, atol=0.1)


def test_config_rejects_values_that_cannot_work():
    with pytest.raises(ValueError, match="agent.lam"):
        DreamerConfig(lam=1.5)
    with pytest.raises(ValueError, match="agent.starts=0.0 cannot work: it must be in \\(0, 1\\]"):
        DreamerConfig(starts=0.0)
    with pytest.raises(ValueError, match="agent.replay_value=0.3 .* 0 unless starts is 1"):
        DreamerConfig(starts=0.5, replay_value=0.3)
    with pytest.raises(ValueError, match="agent.explore_noise=-0.1 cannot work: it must be >= 0"):
        DreamerConfig(explore_noise=-0.1)
    with pytest.raises(ValueError, match="mpc.elites"):
        MPCConfig(samples=8, elites=16)


def test_probe_state_refuses_a_model_that_decodes_from_the_features_before_it_acts(monkeypatch, tmp_path):
    import dataclasses

    from experiments import probe_state
    from experiments.config import Config

    config = Config()
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, decode_from="features"))
    agent = tiny_agent(action=1)
    monkeypatch.setattr(probe_state, "load", lambda run: (config, agent, agent.init(0), 0))
    with pytest.raises(ValueError, match="--model.decode-from features"):
        probe_state.main(probe_state.Args(checkpoint=tmp_path))


def test_probe_state_control_check_balances_with_lqr_and_scores_the_actor():
    import envs
    from experiments.probe_state import action_effect, balance_episode, cartpole_state, control_check, lqr_gain

    gain = lqr_gain(2)
    assert gain.shape == (1, 4) and gain[0, 1] < 0  # the cart is pushed the way the pole leans: the angle's sign
    env = envs.make("dmc/cartpole-balance", pixels=False, proprio=True)
    total, seen, actions = balance_episode(env, lambda p, first: np.clip(-cartpole_state(p) @ gain.T, -1, 1), seed=0)
    assert total > 950 and seen.shape == (500, 5) and actions.shape == (500, 1)
    np.testing.assert_allclose(cartpole_state(seen[:1])[0, 1], np.arctan2(seen[0, 2], seen[0, 1]))
    agent = tiny_agent(action=1)  # untrained: its view of the state and its actions are noise
    check = control_check(agent, agent.init(0), action_repeat=2, episodes=1, seed=0)
    assert check["lqr_true_state"] > 950 and check["actor"] < 900
    assert set(check) == {"lqr_true_state", "lqr_decoded_state", "actor", "actor_reset", "actor_lqr_correlation"}
    # One push's effect: the simulator's is the same at every balanced state, and pushing +1 tips the pole back.
    effect = action_effect(agent.module("world_model", agent.init(0).world_model), action_repeat=2, points=2, samples=4)
    assert len(effect["real_deg"]) == len(effect["model_deg"]) == 2 and np.isfinite(effect["model_deg"]).all()
    assert -10 < effect["real_deg"][0] < -3 and abs(effect["real_deg"][1] - effect["real_deg"][0]) < 1
