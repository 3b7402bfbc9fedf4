import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from embodied.nn import distributions as dist
from embodied.nn.conv import Decoder, Down, Encoder, Patch, Up, depth_to_space, shifted_conv, space_to_depth, warp
from embodied.nn.ssm import SSMEigen
from embodied.worldmodel.backbones import BackboneConfig
from embodied.worldmodel.imagine import imagine
from embodied.worldmodel.model import Spec, WorldModel, WorldModelConfig, focus_weights
from embodied.worldmodel.train import OptimConfig, decay_mask, init_state, make_optimizer, make_train_step, skipped_updates

TINY = WorldModelConfig(backbone=BackboneConfig(dim=16, state=8, layers=1), depth=4, latent_vars=4, latent_classes=4, hidden=16, reward_bins=15)
SPEC = Spec(image=(16, 16, 3), proprio=3, action=2)


def batch(B=2, T=6, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        image=rng.integers(0, 255, (B, T, 16, 16, 3), np.uint8),
        proprio=rng.normal(size=(B, T, 3)).astype(np.float32),
        action=rng.uniform(-1, 1, (B, T, 2)).astype(np.float32),
        reward=rng.normal(size=(B, T)).astype(np.float32),
        is_first=np.zeros((B, T), bool),
        is_terminal=np.zeros((B, T), bool),
    )


def test_twohot_by_hand():
    bins = jnp.array([-1.0, 0.0, 1.0, 2.0])
    # symlog(e - 1) = 1: all weight on bin 2; symlog(x) = 0.25: 3/4 on bin 1, 1/4 on bin 2.
    np.testing.assert_allclose(dist.twohot(jnp.e - 1.0, bins), [0, 0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(dist.twohot(dist.symexp(0.25), bins), [0, 0.75, 0.25, 0], atol=1e-6)
    logits = jnp.log(jnp.array([0.0, 0.75, 0.25, 0.0]) + 1e-30)
    np.testing.assert_allclose(dist.twohot_mean(logits, bins), dist.symexp(0.25), rtol=1e-5)


def test_matmul_convolutions_equal_xla_convolutions():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    kernel = jax.random.normal(jax.random.key(1), (4, 4, 3, 5))
    expected = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    down = Down(3, 5, rngs=nnx.Rngs(0))
    # Rearrange the 4x4 pixel kernel into Down's 2x2 kernel over 2x2 blocks.
    down.kernel[...] = kernel.reshape(2, 2, 2, 2, 3, 5).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 12, 5)
    np.testing.assert_allclose(down(x), expected, atol=1e-4)
    k3 = jax.random.normal(jax.random.key(2), (3, 3, 3, 5))
    np.testing.assert_allclose(shifted_conv(x, k3), jax.lax.conv_general_dilated(x, k3, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")), atol=1e-4)
    np.testing.assert_array_equal(depth_to_space(space_to_depth(x)), x)


def test_patch_embedding_is_a_stride_4_convolution_and_the_patch_4_model_keeps_the_resolutions():
    x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
    kernel = jax.random.normal(jax.random.key(1), (4, 4, 3, 5))
    expected = jax.lax.conv_general_dilated(x, kernel, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    patch = Patch(3, 5, rngs=nnx.Rngs(0))
    patch.kernel[...] = kernel.reshape(1, 1, 48, 5)  # space_to_depth's channel order is the kernel's (dy, dx, c)
    np.testing.assert_allclose(patch(space_to_depth(x, 4)), expected, atol=1e-4)
    np.testing.assert_array_equal(depth_to_space(space_to_depth(x, 4), 4), x)
    assert Up(5, 3, 4, rngs=nnx.Rngs(0))(expected).shape == (2, 8, 12, 3)

    # The same features and the same frame size as the stride-2 layout, with two layers fewer on each side.
    frame = jax.random.randint(jax.random.key(2), (3, 32, 32, 3), 0, 255).astype(jnp.uint8)
    two, four = (Encoder((32, 32), 4, (1, 2, 4), patch=p, rngs=nnx.Rngs(0)) for p in (2, 4))
    assert two(frame).shape == four(frame).shape == (3, 4 * 4 * 16) and (len(two.convs), len(four.convs)) == (3, 2)
    assert [level.shape[1] for level in four.pyramid(frame)] == [32, 8, 4]
    assert Decoder(8, (32, 32), 4, (1, 2, 4), patch=4, rngs=nnx.Rngs(0))(jnp.zeros((3, 8))).shape == (3, 32, 32, 3)
    with pytest.raises(ValueError, match="patch=4 with mults=\\(1,\\)"):
        Encoder((32, 32), 4, (1,), patch=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.patch=3 cannot work"):
        dataclasses.replace(TINY, patch=3)


def test_warp_moves_pixels_by_whole_and_half_pixels_and_clamps_at_the_border():
    image = jax.random.uniform(jax.random.key(0), (2, 6, 7, 3))
    right = jnp.zeros((2, 6, 7, 2)).at[..., 0].set(1.0)  # out[y, x] = image[y, x + 1]
    np.testing.assert_allclose(warp(image, right)[:, :, :-1], image[:, :, 1:], atol=1e-6)
    np.testing.assert_allclose(warp(image, right)[:, :, -1], image[:, :, -1], atol=1e-6)  # clamped
    half_up = jnp.zeros((2, 6, 7, 2)).at[..., 1].set(-0.5)  # out[y, x] = mean of image[y - 1, x], image[y, x]
    np.testing.assert_allclose(warp(image, half_up)[:, 1:], (image[:, 1:] + image[:, :-1]) / 2, atol=1e-6)
    np.testing.assert_allclose(warp(image, jnp.zeros_like(right)), image, atol=1e-6)
    # The image's gradient in the flow: moving a ramp right by a pixel adds its slope.
    ramp = jnp.broadcast_to(jnp.arange(7.0)[None, None, :, None], (1, 6, 7, 1))
    grad = jax.grad(lambda f: warp(ramp, f)[0, 2, 3, 0])(jnp.full((1, 6, 7, 2), 0.25))
    np.testing.assert_allclose(grad[0, 2, 3], [1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("patch", [2, 4])
def test_flow_decoder_starts_at_zero_flow_and_needs_the_skip_decoder(patch):
    groups = patch**2  # the last layer's sub-pixel groups
    encoder = Encoder((16, 16), 4, (1, 2), patch=patch, rngs=nnx.Rngs(0))
    decoder = Decoder(8, (16, 16), 4, (1, 2), skip=True, flow=True, patch=patch, rngs=nnx.Rngs(1))
    last = decoder.convs[-1].kernel[...].reshape(3, 3, -1, groups, 6)
    assert np.abs(last[..., 4:]).max() == 0 and np.abs(last[..., :4]).max() > 0
    frame = jax.random.randint(jax.random.key(2), (3, 16, 16, 3), 0, 255).astype(jnp.uint8)
    plain = Decoder(8, (16, 16), 4, (1, 2), skip=True, patch=patch, rngs=nnx.Rngs(1))
    # Zero flow: the warp is the identity, so it draws what the skip decoder with the same other weights draws.
    kernel = plain.convs[-1].kernel[...].reshape(3, 3, -1, groups, 4)
    decoder.convs[-1].kernel[...] = jnp.concatenate([kernel, last[..., 4:]], -1).reshape(decoder.convs[-1].kernel.shape)
    decoder.convs[-1].bias[...] = jnp.concatenate([plain.convs[-1].bias[...].reshape(groups, 4), jnp.zeros((groups, 2))], -1).reshape(-1)
    features = jax.random.normal(jax.random.key(3), (3, 8))
    draw = nnx.jit(lambda d: d(features, encoder.pyramid(frame)))  # jitted here and below: an eager pass compiles each operation apart
    np.testing.assert_allclose(draw(decoder), draw(plain), atol=1e-5)

    # The flow learns from the start: its weights get a gradient at zero.
    grads = nnx.jit(nnx.grad(lambda d: (d(features, encoder.pyramid(frame)) ** 2).sum()))(decoder)
    grad = grads["convs"][len(decoder.convs) - 1]["kernel"][...].reshape(3, 3, -1, groups, 6)
    assert (np.abs(grad[..., 4:]).sum((0, 1, 2)) > 0).all()
    with pytest.raises(ValueError, match="skip=True"):
        Decoder(8, (16, 16), 4, (1, 2), flow=True, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="model.decoder_flow=True cannot work"):
        dataclasses.replace(TINY, decoder_flow=True)


def test_posterior_hidden_adds_a_layer_and_leaves_the_other_parameters_as_drawn():
    filter_ = dataclasses.replace(TINY, posterior="filter")
    plain = nnx.state(WorldModel(filter_, SPEC, rngs=nnx.Rngs(0)), nnx.Param).flat_state()
    hidden = nnx.state(WorldModel(dataclasses.replace(filter_, posterior_hidden=24), SPEC, rngs=nnx.Rngs(0)), nnx.Param).flat_state()
    plain, hidden = dict(plain), dict(hidden)
    added = {path for path in hidden if path[0] == "posterior_hidden"}
    assert added and set(hidden) - added == set(plain)  # the layout without it is unchanged
    assert hidden[("posterior", "kernel")][...].shape == (24, 4 * 4)  # logits of 4 variables of 4 classes
    same = [path for path in plain if path[0] != "posterior"]
    assert all(np.array_equal(plain[path][...], hidden[path][...]) for path in same)
    with pytest.raises(ValueError, match="model.posterior_hidden"):
        dataclasses.replace(TINY, posterior_hidden=-1)


# Each option's path trains in one of these (each variant is a compile of 15-20 s on 2 CPU cores).
VARIANTS = {
    "plain": {},
    "skip-flow-distance": dict(decoder_skip=True, decoder_flow=True, decoder_distance=True),
    "patch4-nonlinear-input": dict(patch=4, nonlinear_input=True),
    "filter-hidden": dict(posterior="filter", posterior_hidden=16),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_step_lowers_the_loss_and_skips_nan_batches(variant):
    config = dataclasses.replace(TINY, **VARIANTS[variant])
    model = WorldModel(config, SPEC, rngs=nnx.Rngs(0))
    optimizer = make_optimizer(OptimConfig(lr=3e-3))
    graphdef, state = init_state(model, optimizer)
    step = jax.jit(make_train_step(graphdef, optimizer))
    data = batch()
    losses = []
    for i in range(30):
        state, metrics = step(state, data, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]
    bad = {**data, "proprio": data["proprio"].copy()}
    bad["proprio"][0, 0, 0] = np.nan
    before = state.params
    state, metrics = step(state, bad, jax.random.key(99))
    assert int(skipped_updates(state)) == 1 and int(metrics["skipped"]) == 1
    jax.tree.map(np.testing.assert_array_equal, before, state.params)


def test_proprio_scale_weights_only_the_proprio_reconstruction():
    data, key = batch(), jax.random.key(0)
    losses = {}
    for scale in (1.0, 3.0):
        model = WorldModel(dataclasses.replace(TINY, proprio_scale=scale), SPEC, rngs=nnx.Rngs(0))
        losses[scale] = nnx.jit(lambda m: m.loss(data, key))(model)  # jitted: an eager pass compiles each operation apart
    (one, metrics), (three, _) = losses[1.0], losses[3.0]
    np.testing.assert_allclose(three, one + 2 * metrics["proprio_loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="model.proprio_scale=-1.0 cannot work"):
        dataclasses.replace(TINY, proprio_scale=-1.0)


def test_image_focus_weights_the_pixels_that_differ_from_the_batch_mean_frame():
    frames = np.full((2, 4, 16, 16, 3), 100, np.uint8)
    frames[:, :2, 3, 5] = 255  # one pixel lit in half the frames: 0.5 * 155 / 255 from its mean
    weight = focus_weights(jnp.asarray(frames) / 255.0, 4.0)
    expected = np.ones((2, 4, 16, 16, 1), np.float32)
    expected[:, :, 3, 5] = 1 + 4.0 * 0.5 * 155 / 255
    np.testing.assert_allclose(weight, expected, rtol=1e-6)
    assert focus_weights(jnp.asarray(frames) / 255.0, 0.0) is None

    data, key = batch(), jax.random.key(0)
    plain, plain_metrics = WorldModel(TINY, SPEC, rngs=nnx.Rngs(0)).loss(data, key)
    focused_model = WorldModel(dataclasses.replace(TINY, image_focus=4.0), SPEC, rngs=nnx.Rngs(0))
    loss, metrics = focused_model.loss(data, key)
    assert "image_focused_loss" not in plain_metrics
    np.testing.assert_allclose(metrics["image_loss"], plain_metrics["image_loss"], rtol=1e-6)  # logged unweighted
    drawn = focused_model.reconstruct(data, focused_model.observe(data, key).z)["image"]
    error = (drawn - (data["image"] / 255.0 - 0.5)) ** 2
    np.testing.assert_allclose(metrics["image_focused_loss"], (focus_weights(data["image"] / 255.0, 4.0) * error).sum((2, 3, 4)).mean(), rtol=1e-5)
    np.testing.assert_allclose(loss, plain - plain_metrics["image_loss"] + metrics["image_focused_loss"], rtol=1e-5)
    # A batch of one repeated frame has nothing to focus on: the weights are all 1.
    data["image"][:] = data["image"][:1, :1]
    np.testing.assert_allclose(focused_model.loss(data, key)[0], WorldModel(TINY, SPEC, rngs=nnx.Rngs(0)).loss(data, key)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="model.image_focus=-1.0 cannot work"):
        dataclasses.replace(TINY, image_focus=-1.0)


def test_next_proprio_regresses_the_next_observation_from_the_backbone_output_within_episodes():
    data, key = batch(T=6), jax.random.key(0)
    data["is_first"][0, 3] = True  # step 2 -> 3 crosses an episode boundary: not a target
    model = WorldModel(dataclasses.replace(TINY, next_proprio=2.0), SPEC, rngs=nnx.Rngs(0))
    loss, metrics = nnx.jit(lambda m: m.loss(data, key))(model)  # jitted here and below: an eager pass compiles each operation apart
    y = nnx.jit(lambda m: m.observe(data, key).y)(model)
    error = ((model.next_proprio(y[:, :-1]) - dist.symlog(data["proprio"][:, 1:])) ** 2).sum(-1)
    valid = 1.0 - data["is_first"][:, 1:]
    np.testing.assert_allclose(metrics["next_proprio_loss"], (error * valid).sum() / valid.sum(), rtol=1e-5)
    plain, _ = nnx.jit(lambda m: m.loss(data, key))(WorldModel(TINY, SPEC, rngs=nnx.Rngs(0)))
    np.testing.assert_allclose(loss, plain + 2.0 * metrics["next_proprio_loss"], rtol=1e-5)
    # It trains the backbone: the gradient reaches the SSM's parameters.
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    grads = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p, rest).loss(data, key)[1]["next_proprio_loss"]))(params)
    assert float(optax.tree.norm(grads["backbone"])) > 0
    with pytest.raises(ValueError, match="model.next_proprio=2.0 asks the backbone to predict the next proprio"):
        WorldModel(dataclasses.replace(TINY, next_proprio=2.0), Spec(image=(16, 16, 3), proprio=None, action=2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.next_proprio=-1.0 cannot work"):
        dataclasses.replace(TINY, next_proprio=-1.0)


def test_kl_exempt_is_the_share_of_steps_within_an_episode_whose_kl_the_free_bits_clamp():
    data, key = batch(B=2, T=8), jax.random.key(0)
    data["is_first"][1, 4] = True  # step 3 -> 4 crosses an episode boundary: not counted
    model = WorldModel(TINY, SPEC, rngs=nnx.Rngs(0))

    @nnx.jit  # jitted here and below: an eager pass compiles each operation apart
    def kl_of(m):
        observation = m.observe(data, key)
        return dist.categorical_kl(observation.post[:, 1:], m.prior_logits(observation.y[:, :-1]))

    kl = np.asarray(kl_of(model))
    valid = ~data["is_first"][:, 1:]
    free = float(np.median(kl[valid]))
    metrics = nnx.jit(lambda m: m.loss(data, key)[1])(WorldModel(dataclasses.replace(TINY, free_nats=free), SPEC, rngs=nnx.Rngs(0)))
    expected = (kl[valid] <= free).mean()
    assert 0 < expected < 1
    np.testing.assert_allclose(metrics["kl_exempt"], expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["kl"], kl[valid].mean(), rtol=1e-5)


def test_ssm_eigenvalues_get_no_weight_decay():
    model = WorldModel(TINY, SPEC, rngs=nnx.Rngs(0))
    _, params, _ = nnx.split(model, nnx.Param, ...)
    mask = decay_mask(params)
    flags = {jax.tree_util.keystr(path): flag for path, flag in jax.tree_util.tree_leaves_with_path(mask)}
    eigen = {jax.tree_util.keystr(path) for path, v in jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable)) if isinstance(v, SSMEigen)}
    assert eigen and all(not flags[p] for p in eigen)
    assert sum(flags.values()) == len(flags) - len(eigen)
    # And the optimiser really leaves them alone when gradients are zero.
    tx = optax.adamw(1.0, weight_decay=0.5, mask=decay_mask)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)  # jitted: eagerly, each leaf's operations compile apart
    values = dict(jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    for path, u in jax.tree_util.tree_leaves_with_path(updates, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        if jnp.any(values[path][...] != 0):  # decay of a zero parameter is zero anyway
            assert bool(jnp.all(u[...] == 0)) == (jax.tree_util.keystr(path) in eigen)


@pytest.mark.parametrize("kind", ["ssm", "gru", "transformer"])
def test_imagine_shapes_and_open_loop_actions(kind):
    config = WorldModelConfig(**{**TINY.__dict__, "backbone": BackboneConfig(kind=kind, dim=16, state=8, layers=1, heads=2, context=16)})
    model = WorldModel(config, SPEC, rngs=nnx.Rngs(0))
    data = batch(B=3, T=4)
    start = nnx.jit(lambda m: m.start(data, jax.random.key(0)))(model)  # jitted here and below: an eager pass compiles each operation apart
    H = 5
    policy = lambda feat, key: jnp.tanh(feat[:, :2])  # noqa: E731
    traj = jax.jit(lambda s, k: imagine(model, policy, s, H, k, decode=True))(start, jax.random.key(1))
    assert traj.latents.shape == (3, H, 4, 4) and traj.actions.shape == (3, H, 2)
    assert traj.rewards.shape == (3, H) and traj.continues.shape == (3, H)
    assert traj.frames.shape == (3, H, 16, 16, 3) and float(traj.frames.min()) >= 0.0
    recorded = jnp.ones((3, H, 2)) * 0.5
    traj = jax.jit(lambda s, k: imagine(model, None, s, H, k, actions=recorded))(start, jax.random.key(1))
    np.testing.assert_array_equal(traj.actions, recorded)


def test_model_needs_some_observation():
    with pytest.raises(ValueError, match="image or proprio"):
        Spec(image=None, proprio=None, action=1)


@pytest.mark.parametrize("kind", ["ssm", "gru", "transformer"])
def test_bfloat16_compute_keeps_float32_parameters_and_tracks_the_float32_step(kind):
    """Mixed precision: the step computes in bfloat16 (the activations are bfloat16), parameters
    and optimiser moments stay float32, losses are finite, fall, and stay near float32's."""
    from embodied.nn import precision

    config = WorldModelConfig(backbone=BackboneConfig(kind=kind, dim=16, state=8, layers=1, heads=2, context=8), depth=4,
                              latent_vars=4, latent_classes=4, hidden=16, reward_bins=15)
    spec = SPEC if kind == "ssm" else Spec(image=None, proprio=3, action=2)  # the convolutions once
    model = WorldModel(config, spec, rngs=nnx.Rngs(0))
    optimizer = make_optimizer(OptimConfig(lr=3e-3))
    graphdef, state = init_state(model, optimizer)
    data = batch()
    observe = lambda params: nnx.merge(graphdef, params, state.rest).observe(data, jax.random.key(0)).y  # noqa: E731
    assert jax.eval_shape(observe, precision.cast(state.params, jnp.bfloat16)).dtype == jnp.bfloat16
    losses = {}
    for dtype in ("float32", "bfloat16"):
        step = jax.jit(make_train_step(graphdef, optimizer, compute_dtype=dtype))
        s, losses[dtype] = state, []
        for i in range(12):
            s, metrics = step(s, data, jax.random.key(i))
            losses[dtype].append(float(metrics["loss"]))
        assert {x.dtype for x in jax.tree.leaves(s.params)} <= {jnp.dtype(jnp.float32)}
        assert {x.dtype for x in jax.tree.leaves(s.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    assert np.isfinite(losses["bfloat16"]).all() and losses["bfloat16"][-1] < 0.8 * losses["bfloat16"][0]
    np.testing.assert_allclose(losses["bfloat16"][0], losses["float32"][0], rtol=0.02)
    np.testing.assert_allclose(losses["bfloat16"][-1], losses["float32"][-1], rtol=0.1)


def test_unknown_compute_dtype_is_rejected_with_the_choices():
    from embodied.nn import precision

    with pytest.raises(ValueError, match="float16.*allowed: float32, bfloat16"):
        precision.compute_dtype("float16")


def test_decoder_skip_draws_from_the_first_frame_until_an_episode_starts():
    model = WorldModel(dataclasses.replace(TINY, decoder_skip=True), SPEC, rngs=nnx.Rngs(0))
    data = batch(T=6)
    data["is_first"][:, 3] = True
    other = {**data, "image": data["image"].copy()}
    other["image"][:, 0] = 255 - other["image"][:, 0]
    z = jax.nn.one_hot(jax.random.randint(jax.random.key(0), (2, 6, TINY.latent_vars), 0, TINY.latent_classes), TINY.latent_classes)
    reconstruct = nnx.jit(lambda m, d: m.reconstruct(d, z)["image"])
    a, b = reconstruct(model, data), reconstruct(model, other)
    assert np.abs(a[:, :3] - b[:, :3]).min() > 0  # drawn from the first frame ...
    np.testing.assert_array_equal(a[:, 3:], b[:, 3:])  # ... but not across the episode start
    with pytest.raises(ValueError, match="context="):
        model.decode(z)

    @nnx.jit  # an eager pass compiles each operation apart
    def dream(m):
        start = m.start({k: jnp.asarray(v[:, :3]) for k, v in data.items()}, jax.random.key(1))
        return imagine(m, None, start, 4, jax.random.key(2), actions=jnp.zeros((2, 4, 2)), decode=True, context=jnp.asarray(data["image"][:, 2]))

    assert dream(model).frames.shape == (2, 4, 16, 16, 3)


def test_decoder_distance_reads_the_steps_from_the_context_frame():
    model = WorldModel(dataclasses.replace(TINY, decoder_skip=True, decoder_distance=True), SPEC, rngs=nnx.Rngs(0))
    data = batch(T=6)
    z = jax.nn.one_hot(jax.random.randint(jax.random.key(0), (2, 6, TINY.latent_vars), 0, TINY.latent_classes), TINY.latent_classes)
    context = jnp.asarray(data["image"][:, :1])
    trained = model.reconstruct(data, z)["image"]  # training: step t is t steps after the sequence's first frame
    np.testing.assert_allclose(trained, model.decode(z, context, distance=jnp.arange(6))["image"], atol=1e-6)
    assert np.abs(trained - model.decode(z, context, distance=jnp.zeros(6, int))["image"]).max() > 0
    np.testing.assert_array_equal(model.decode(z, context, distance=jnp.full(6, 31))["image"],
                                  model.decode(z, context, distance=jnp.full(6, 500))["image"])  # far ones read as the last
    with pytest.raises(ValueError, match="distance="):
        model.decode(z, context)
    start = model.start({k: jnp.asarray(v[:, :3]) for k, v in data.items()}, jax.random.key(1))
    traj = imagine(model, None, start, 4, jax.random.key(2), actions=jnp.zeros((2, 4, 2)), decode=True, context=jnp.asarray(data["image"][:, 2]))
    assert traj.frames.shape == (2, 4, 16, 16, 3)
    with pytest.raises(ValueError, match="model.decoder_distance=True cannot work"):
        dataclasses.replace(TINY, decoder_distance=True)


def test_two_frame_encoder_sees_the_previous_frame_within_episodes_and_acting_encodes_as_training_does():
    model = WorldModel(dataclasses.replace(TINY, frames=2), SPEC, rngs=nnx.Rngs(0))
    data = batch(T=6)
    data["is_first"][:, 3] = True
    other = {**data, "image": data["image"].copy()}
    other["image"][:, 2] = 255 - other["image"][:, 2]  # o_2 is the previous frame of step 3 (an episode start) only
    other["image"][:, 4] = 255 - other["image"][:, 4]  # o_4 is the previous frame of step 5
    post = lambda d: np.asarray(model.encode(d, model.previous_frames(d)))  # noqa: E731
    a, b = post(data), post(other)
    changed = np.abs(a - b).max((0, 2, 3)) > 0
    np.testing.assert_array_equal(changed, [False, False, True, False, True, True])
    # Acting keeps the last frame: step by step it encodes each frame beside the one before it,
    # exactly as training does, from the episode start at step 3 on as well.
    B, key = 2, jax.random.key(3)
    state = model.initial_state(B)
    for t in range(6):
        obs = {"image": jnp.asarray(data["image"][:, t]), "proprio": jnp.asarray(data["proprio"][:, t])}
        step_key = jax.random.fold_in(key, t)
        _, state = model.act_step(state, obs, jnp.asarray(data["is_first"][:, t]) | (t == 0), lambda s, k: jnp.zeros((B, 2)), step_key)
        expected = jax.nn.one_hot(jax.random.categorical(jax.random.split(step_key)[0], a[:, t]), TINY.latent_classes)
        np.testing.assert_array_equal(state.z, expected)
        np.testing.assert_array_equal(state.frame, data["image"][:, t])
    # Filtering a real episode (the dream environments' latent observations) does the same.
    first = {k: jnp.asarray(v[:, :1]) for k, v in data.items()}
    state = model.start(first, key)
    for t in range(1, 3):
        state = model.filter_step(state, jnp.asarray(data["action"][:, t - 1]), {k: jnp.asarray(data[k][:, t]) for k in ("image", "proprio")})
        np.testing.assert_array_equal(state.z, jax.nn.one_hot(a[:, t].argmax(-1), TINY.latent_classes))
    traj = imagine(model, None, state, 3, key, actions=jnp.zeros((2, 3, 2)))  # imagination carries the frame along
    assert traj.latents.shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="previous="):
        model.encode({k: v[:, 0] for k, v in data.items()})


def test_filter_posterior_reads_the_previous_backbone_output_within_episodes_and_acting_encodes_as_training_does():
    model = WorldModel(dataclasses.replace(TINY, posterior="filter"), SPEC, rngs=nnx.Rngs(0))
    data = batch(T=6)
    data["is_first"][:, 3] = True
    key = jax.random.key(1)
    seen = model.observe(data, key)
    # The pass equals a hand-written loop: z_t from o_t and y_{t-1} (zeros at starts), then the backbone step.
    carry, y_prev = model.backbone.init_carry(2), jnp.zeros((2, TINY.backbone.dim))
    for t in range(6):
        first = jnp.asarray(data["is_first"][:, t]) | (t == 0)
        y_prev = jnp.where(first[:, None], 0.0, y_prev)
        obs = {k: jnp.asarray(data[k][:, t]) for k in ("image", "proprio")}
        np.testing.assert_allclose(model.encode(obs, y=y_prev), seen.post[:, t], atol=1e-5)
        y_prev, carry = model.backbone.step(model.backbone_input(seen.z[:, t], jnp.asarray(data["action"][:, t])), carry, first)
        np.testing.assert_allclose(y_prev, seen.y[:, t], atol=1e-5)
    # A change to o_1 reaches the posteriors after it through y, up to the episode start at step 3.
    other = {**data, "proprio": data["proprio"].copy()}
    other["proprio"][:, 1] += 1.0
    changed = np.abs(np.asarray(model.observe(other, key).post - seen.post)).max((0, 2, 3)) > 0
    np.testing.assert_array_equal(changed, [False, True, True, False, False, False])
    # Acting samples z_t from the same posterior, given the y_{t-1} it carries.
    state = model.initial_state(2)
    for t in range(6):
        obs = {k: jnp.asarray(data[k][:, t]) for k in ("image", "proprio")}
        first = jnp.asarray(data["is_first"][:, t]) | (t == 0)
        y_prev = jnp.where(first[:, None], 0.0, state.y)
        step_key = jax.random.fold_in(key, t)
        _, state = model.act_step(state, obs, first, lambda s, k: jnp.zeros((2, 2)), step_key)
        expected = jax.nn.one_hot(jax.random.categorical(jax.random.split(step_key)[0], model.encode(obs, y=y_prev)), TINY.latent_classes)
        np.testing.assert_array_equal(state.z, expected)
    # Filtering a real episode does the same with the posterior's mode.
    state = model.start({k: jnp.asarray(v[:, :1]) for k, v in data.items()}, key)
    state = model.filter_step(state, jnp.asarray(data["action"][:, 0]), {k: jnp.asarray(data[k][:, 1]) for k in ("image", "proprio")})
    expected = model.posterior_mode({k: jnp.asarray(data[k][:, 1]) for k in ("image", "proprio")}, y=state.y)
    np.testing.assert_array_equal(state.z, expected)
    with pytest.raises(ValueError, match="y="):
        model.encode({k: v[:, 0] for k, v in data.items()})


def test_decode_previous_draws_the_frame_before_from_z_and_adds_its_loss():
    model = WorldModel(dataclasses.replace(TINY, frames=2, decode_previous=True, patch=4), SPEC, rngs=nnx.Rngs(0))
    data = batch(T=6)
    data["is_first"][:, 3] = True
    z = jax.nn.one_hot(jax.random.randint(jax.random.key(0), (2, 6, TINY.latent_vars), 0, TINY.latent_classes), TINY.latent_classes)
    drawn = model.decode(z)
    assert drawn["image"].shape == drawn["previous_image"].shape == (2, 6, 16, 16, 3)
    observation = model.observe(data, jax.random.key(1))
    loss, metrics = model.loss_of(data, observation)
    previous = (np.asarray(model.previous_frames(data)) / 255.0 - 0.5).astype(np.float32)
    recon = model.decode(observation.z)["previous_image"]
    expected = ((np.asarray(recon) - previous) ** 2).sum((-3, -2, -1)).mean()
    np.testing.assert_allclose(metrics["previous_image_loss"], expected, rtol=1e-5)
    np.testing.assert_array_equal(previous[:, 3], (data["image"][:, 3] / 255.0 - 0.5).astype(np.float32))  # o_3 itself at an episode start
    with pytest.raises(ValueError, match="model.decode_previous=True cannot work"):
        dataclasses.replace(TINY, decode_previous=True)
    with pytest.raises(ValueError, match="model.frames=3 cannot work.*1 or 2"):
        dataclasses.replace(TINY, frames=3)
    with pytest.raises(ValueError, match="model.frames=2 cannot work.*decoder_skip"):
        dataclasses.replace(TINY, frames=2, decoder_skip=True)
    with pytest.raises(ValueError, match="model.frames=2 stacks earlier image frames.*no images"):
        WorldModel(dataclasses.replace(TINY, frames=2), Spec(image=None, proprio=3, action=2), rngs=nnx.Rngs(0))


def test_probe_state_reports_the_decoded_posterior_modes_error_per_dimension():
    from experiments.probe_state import decode_error

    model = WorldModel(TINY, Spec(image=None, proprio=3, action=2), rngs=nnx.Rngs(0))
    proprio = jax.random.normal(jax.random.key(0), (50, 3))
    decoded, rms = decode_error(model, proprio)
    z = jax.nn.one_hot(jnp.argmax(model.encode({"proprio": proprio}), -1), TINY.latent_classes)
    np.testing.assert_allclose(decoded, dist.symexp(model.decode(z)["proprio"]), rtol=1e-5)
    np.testing.assert_allclose(rms, np.sqrt(((decoded - proprio) ** 2).mean(0)), rtol=1e-5)
    assert rms.shape == (3,) and (rms > 0).all()
    with pytest.raises(ValueError, match="proprio observations only"):
        decode_error(WorldModel(TINY, SPEC, rngs=nnx.Rngs(0)), proprio)


def test_decoding_from_features_reads_the_previous_backbone_output_and_trains_the_backbone():
    model = WorldModel(dataclasses.replace(TINY, decode_from="features"), SPEC, rngs=nnx.Rngs(0))
    data, key = batch(T=6), jax.random.key(0)
    data["is_first"][:, 3] = True
    observation = nnx.jit(lambda m: m.observe(data, key))(model)
    loss, metrics = nnx.jit(lambda m, o: m.loss_of(data, o))(model, observation)
    # o_t is drawn from [y_{t-1}, z_t]: y_{t-1} zero at the sequence's start and at an episode's start.
    y_prev = np.asarray(model.previous_outputs(data, observation.y))
    np.testing.assert_array_equal(y_prev[:, [0, 3]], 0.0)
    np.testing.assert_array_equal(y_prev[:, 4], np.asarray(observation.y)[:, 3])
    recon = model.decode(observation.z, y=y_prev)
    expected = ((np.asarray(recon["image"]) - (data["image"] / 255.0 - 0.5)) ** 2).sum((-3, -2, -1)).mean()
    np.testing.assert_allclose(metrics["image_loss"], expected, rtol=1e-5)
    # The reconstruction trains the backbone (with decode_from="latent" only the KL and the heads do).
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    grads = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p, rest).loss(data, key)[1]["image_loss"]))(params)
    assert float(optax.tree.norm(grads["backbone"])) > 0
    # Imagination and acting states carry the y each latent was drawn from.
    start = model.start(data, key)
    traj = imagine(model, lambda feat, k: jnp.tanh(feat[:, :2]), start, 4, key, decode=True)
    assert traj.frames.shape == (2, 4, 16, 16, 3)
    with pytest.raises(ValueError, match="decodes from the features.*pass y="):
        model.decode(observation.z)
    with pytest.raises(ValueError, match="model.decode_from='both' cannot work.*'latent' or 'features'"):
        dataclasses.replace(TINY, decode_from="both")
