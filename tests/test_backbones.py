import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from embodied.nn.ssm import apply_ssm, apply_ssm_sequential, ssm_step
from embodied.worldmodel.backbones import BACKBONES, BackboneConfig, make_backbone


def test_ssm_scan_matches_the_recurrence_by_hand():
    Lambda_bar = jnp.array([0.5 + 0.5j, 0.9 + 0.0j], jnp.complex64)
    Bu = jnp.array([[1, 2], [3, 4], [5, 6]], jnp.complex64)
    reset = jnp.array([0.0, 0.0, 1.0])
    h0 = jnp.array([1.0, -1.0], jnp.complex64)
    # h1 = L h0 + Bu0; h2 = L h1 + Bu1; h3 = Bu2 (reset).
    h1 = Lambda_bar * h0 + Bu[0]
    h2 = Lambda_bar * h1 + Bu[1]
    expected = jnp.stack([h1, h2, Bu[2]])
    np.testing.assert_allclose(apply_ssm(Lambda_bar, Bu, reset, h0), expected, rtol=1e-6)
    np.testing.assert_allclose(ssm_step(Lambda_bar, Bu[1], reset[1], h1), h2, rtol=1e-6)

    def parts(x):
        return x.real, x.imag

    # The sequential scan, on real and imaginary parts, for a batch of one.
    for a in (Lambda_bar, jnp.broadcast_to(Lambda_bar, Bu.shape)[None]):  # fixed, and varying over time
        h_re, h_im = apply_ssm_sequential(parts(a), parts(Bu[None]), reset[None], parts(h0[None]))
        np.testing.assert_allclose(h_re[0] + 1j * h_im[0], expected, rtol=1e-6)


@pytest.mark.parametrize("kind", ["ssm", "ssm-selective"])
def test_sequential_and_parallel_scans_agree_with_gradients(kind):
    B, T, D = 2, 20, 16
    reset = jnp.zeros((B, T), bool).at[:, 0].set(True).at[1, 7].set(True)
    x = jax.random.normal(jax.random.key(2), (B, T, D))

    def outputs_and_grads(scan):
        model = make_backbone(BackboneConfig(kind=kind, dim=D, layers=2, state=8, scan=scan), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)

        def loss(params):
            y, carry = nnx.merge(graphdef, params).sequence(x, model.init_carry(B), reset)
            return (y**2).mean() + sum(jnp.abs(h).mean() for h in carry), y

        (_, y), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)  # jitted: eagerly, each operation compiles apart
        return y, grads

    outputs, grads = zip(*map(outputs_and_grads, ("sequential", "parallel")), strict=True)
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["ssm", "ssm-selective"])
def test_ssm_timescale_bounds_the_memory_in_training_and_stepping_alike(kind):
    from embodied.nn.ssm import DiagonalSSM

    D, P, tau = 8, 16, 10.0
    u = jax.random.normal(jax.random.key(0), (3, D))
    magnitude = lambda layer: np.abs(np.asarray(layer._discretize(u)[0][0]) + 1j * np.asarray(layer._discretize(u)[0][1]))  # noqa: E731
    bounded = DiagonalSSM(D, P, selective=kind == "ssm-selective", timescale=tau, rngs=nnx.Rngs(0))
    free = DiagonalSSM(D, P, selective=kind == "ssm-selective", rngs=nnx.Rngs(0))
    assert (magnitude(bounded) <= np.exp(-1 / tau) + 1e-6).all()
    assert magnitude(free).max() > 0.99  # S5's initialisation remembers for hundreds of steps
    # An impulse is forgotten: after 10 timescales the state holds at most e^-10 of it.
    model = make_backbone(BackboneConfig(kind=kind, dim=D, layers=1, state=P, timescale=tau), rngs=nnx.Rngs(0))
    x = jnp.zeros((1, 101, D)).at[0, 0].set(1.0)
    _, carries = model.states(x, model.init_carry(1), jnp.zeros((1, 101), bool))
    h = np.abs(np.asarray(carries[0][0]))
    assert np.linalg.norm(h[100]) <= np.exp(-10) * np.linalg.norm(h[0]) * 1.01
    with pytest.raises(ValueError, match="model.backbone.timescale=0 cannot work"):
        BackboneConfig(timescale=0)
    with pytest.raises(ValueError, match="model.backbone.timescale=16 cannot work.*SSM kind"):
        BackboneConfig(kind="gru", timescale=16)


# Every backbone, and the SSM with a causal convolution before each layer.
KINDS = [(kind, 0) for kind in sorted(BACKBONES)] + [("ssm", 3)]


@pytest.mark.parametrize("kind, conv", KINDS)
def test_sequence_then_step_equals_step_throughout(kind, conv):
    B, T, D = 3, 12, 32
    config = BackboneConfig(kind=kind, dim=D, layers=2, state=16, heads=4, context=8, timescale=6.0 if "ssm" in kind else None,
                            conv=conv)
    model = make_backbone(config, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (B, T, D))
    reset = jnp.zeros((B, T), bool).at[:, 0].set(True).at[1, 5].set(True).at[2, 9].set(True)
    # Jitted, as imagination and training run them; eagerly, each operation compiles apart.
    sequence = nnx.jit(lambda m, x, carry, reset: m.sequence(x, carry, reset))
    step = nnx.jit(lambda m, x, carry, reset: m.step(x, carry, reset))

    y_seq, carry_seq = sequence(model, x[:, :7], model.init_carry(B), reset[:, :7])
    ys = [y_seq[:, t] for t in range(7)]
    carry = carry_seq
    for t in range(7, T):
        y, carry = step(model, x[:, t], carry, reset[:, t])
        ys.append(y)
    mixed = jnp.stack(ys, 1)

    carry = model.init_carry(B)
    stepped = []
    for t in range(T):
        y, carry = step(model, x[:, t], carry, reset[:, t])
        stepped.append(y)
    stepped = jnp.stack(stepped, 1)
    full, _ = sequence(model, x, model.init_carry(B), reset)

    np.testing.assert_allclose(mixed, stepped, atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(full, stepped, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("kind, conv", KINDS)
def test_reset_forgets_the_past(kind, conv):
    B, T, D = 2, 6, 16
    model = make_backbone(BackboneConfig(kind=kind, dim=D, layers=1, state=8, heads=2, context=8, conv=conv), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (B, T, D))
    reset = jnp.zeros((B, T), bool).at[:, 0].set(True).at[:, 3].set(True)
    other_past = x.at[:, :3].set(jax.random.normal(jax.random.key(5), (B, 3, D)))
    sequence = nnx.jit(lambda m, x: m.sequence(x, m.init_carry(B), reset)[0])  # eagerly, each operation compiles apart
    y1, y2 = sequence(model, x), sequence(model, other_past)
    assert not np.allclose(y1[:, :3], y2[:, :3])
    np.testing.assert_allclose(y1[:, 3:], y2[:, 3:], atol=1e-5)


@pytest.mark.parametrize("kind, conv", KINDS)
def test_states_are_the_carries_step_reaches(kind, conv):
    B, T, D = 2, 10, 16
    model = make_backbone(BackboneConfig(kind=kind, dim=D, layers=2, state=8, heads=2, context=4, conv=conv), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (B, T, D))
    reset = jnp.zeros((B, T), bool).at[:, 0].set(True).at[0, 4].set(True)
    y_all, carries = nnx.jit(lambda m: m.states(x, m.init_carry(B), reset))(model)  # jitted: eagerly, each operation compiles apart
    y_seq, final = nnx.jit(lambda m: m.sequence(x, m.init_carry(B), reset))(model)
    np.testing.assert_allclose(y_all, y_seq, atol=1e-5)
    jax.tree.map(lambda c, f: np.testing.assert_allclose(c[:, -1], f, atol=1e-5), carries, final)
    # Continuing from the carry after step 5 gives what stepping through gives.
    mid = jax.tree.map(lambda c: c[:, 5], carries)
    y_from_mid, _ = nnx.jit(lambda m, carry: m.step(x[:, 6], carry, reset[:, 6]))(model, mid)
    np.testing.assert_allclose(y_from_mid, y_seq[:, 6], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("kind", sorted(BACKBONES))
def test_out_norm_normalises_the_output_and_keeps_step_equal_to_sequence(kind):
    B, T, D = 2, 8, 16
    config = BackboneConfig(kind=kind, dim=D, layers=2, state=8, heads=2, context=4)
    plain = make_backbone(config, rngs=nnx.Rngs(0))
    normed = make_backbone(dataclasses.replace(config, out_norm=True), rngs=nnx.Rngs(0))  # the same other parameters
    x = 5.0 * jax.random.normal(jax.random.key(3), (B, T, D))
    reset = jnp.zeros((B, T), bool).at[:, 0].set(True).at[1, 4].set(True)
    y_plain, _ = plain.sequence(x, plain.init_carry(B), reset)
    y, _ = normed.sequence(x, normed.init_carry(B), reset)
    mean, var = y_plain.mean(-1, keepdims=True), y_plain.var(-1, keepdims=True)
    np.testing.assert_allclose(y, (y_plain - mean) / np.sqrt(var + 1e-6), atol=1e-4)
    carry, stepped = normed.init_carry(B), []
    for t in range(T):
        y_t, carry = normed.step(x[:, t], carry, reset[:, t])
        stepped.append(y_t)
    np.testing.assert_allclose(jnp.stack(stepped, 1), y, atol=2e-4, rtol=2e-4)


def test_the_causal_convolution_sees_the_last_k_inputs_of_the_episode_only():
    from embodied.worldmodel.backbones import CausalConv

    conv = CausalConv(1, 3)
    conv.kernel[...] = jnp.array([[1.0], [10.0], [100.0]])  # y_t = x_t + 10 x_{t-1} + 100 x_{t-2}
    x = jnp.arange(1.0, 7.0).reshape(1, 6, 1)
    reset = jnp.zeros((1, 6), bool).at[0, 3].set(True)  # a new episode at step 3
    y, carries = conv.states(x, conv.init_carry(1), reset)
    np.testing.assert_allclose(y[0, :, 0], [1, 2 + 10, 3 + 20 + 100, 4, 5 + 40, 6 + 50 + 400])
    np.testing.assert_allclose(carries[0, 3, :, 0], [0, 4])  # oldest first; step 2 is another episode's
    with pytest.raises(ValueError, match="model.backbone.conv=3 cannot work.*0 unless kind is an SSM"):
        BackboneConfig(kind="gru", conv=3)
