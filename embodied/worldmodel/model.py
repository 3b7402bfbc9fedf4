"""An action-conditioned latent video predictor with a swappable temporal backbone.

Each frame is encoded on its own to a categorical latent z_t (posterior, from
o_t only), so the backbone sees the whole sequence [z_t, a_t] at once and
trains in parallel. Its output y_t parameterises the prior over z_{t+1}; the
features [y_t, z_{t+1}] predict the reward r_{t+1} and whether o_{t+1} is
terminal; a decoder reconstructs o_t from z_t. Losses follow DreamerV3
(Hafner et al., 2023): symlog / two-hot rewards, KL balancing with free bits.
The parallel-in-time latent design follows S5WM (Deng et al., 2023) and R2I
(Samsami et al., 2024); `posterior="filter"` makes the posterior read y_{t-1} as
well, as DreamerV3's RSSM does, at the cost of stepping the backbone in training.

Shapes: B batch, T time, V latent variables of K classes, D backbone width, A actions.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from embodied.config import require
from embodied.nn import distributions as dist
from embodied.nn import init
from embodied.nn.conv import Decoder, Encoder
from embodied.worldmodel.backbones import BackboneConfig, make_backbone

DISTANCES = 32
"""Distances to the context frame a decoder with `decoder_distance` tells apart (farther ones read as the last)."""


@dataclasses.dataclass(frozen=True)
class WorldModelConfig:
    backbone: BackboneConfig = BackboneConfig()
    depth: int = 8
    """Channels of the first conv layer; later layers multiply it by `mults`. 8 keeps a
    [16, 64] step near 57 GFLOP for 2-core CPUs; use 32+ on an accelerator."""
    mults: tuple[int, ...] = (1, 2, 4, 8)
    patch: int = 2
    """The encoder's first stride and the decoder's last upsampling factor. 2: a 4x4 convolution
    with stride 2 (DreamerV3's layout). 4: a 4x4 patch embedding with stride 4 (ConvNeXt's stem)
    in place of the first two layers, and a last decoder layer that draws 4x4 pixel patches in
    place of the last two; the latent sees the same resolutions from 1/4 down. On a CPU the
    full- and half-resolution layers cost most of the world model's update while holding the
    fewest parameters: 4 makes the small preset's whole agent update 1.6x faster (docs/agent-experiments.md)."""
    latent_vars: int = 32
    """V categorical latent variables per frame."""
    latent_classes: int = 16
    """K classes per latent variable."""
    hidden: int = 256
    """Width of the MLP heads."""
    unimix: float = 0.01
    """Uniform mixed into every categorical (keeps KLs finite)."""
    free_nats: float = 1.0
    dyn_scale: float = 0.5
    """KL weight that trains the prior towards the posterior."""
    rep_scale: float = 0.1
    """KL weight that trains the posterior towards the prior."""
    reward_bins: int = 255
    proprio_scale: float = 1.0
    """Weight of the proprio reconstruction loss (a symlog squared error summed over a handful of
    dimensions, small beside an image's). Higher asks the latent for a more precise state."""
    next_proprio: float = 0.0
    """Weight of a loss that asks the backbone output y_t to predict the next proprio observation
    o_{t+1} by regression (0 turns it off; needs proprio). Each latent z_t, encoded from its own
    frame, holds the state only to its quantisation (a few degrees of a pole's angle); this
    continuous target teaches y, which has seen every earlier z and the action, to carry the
    state and each action's effect on it precisely, and y is what the actor, critic and reward
    head read."""
    decoder_skip: bool = False
    """The decoder draws each frame from a real one as well as from z (a sequence's first frame in
    training; the last context frame when predicting): skip connections from that frame's encoder
    features and a mask that copies its pixels where nothing changed (`embodied.nn.conv.Decoder`).
    For video prediction: static content costs the latent nothing. Only decoding changes:
    imagination, rewards and agents do not decode, but decoding imagined frames then needs a real
    frame to start from, and the dream environments refuse such a model."""
    decoder_flow: bool = False
    """With `decoder_skip`: the real frame is warped by a predicted flow field before the mask
    composites it, so that moving parts are moved rather than redrawn."""
    decoder_distance: bool = False
    """With `decoder_skip`: the decoder also reads how many steps separate the frame it draws from
    the real one it draws from (one-hot, clipped to DISTANCES - 1). Trained from a sequence's first
    frame it sees every distance from 0 to T-1 equally often and cannot tell which one it is
    drawing, so it blends what it copies with what it draws as for an average distance; knowing
    the distance, it can copy more at 0 and 1 step and draw more far out."""
    frames: int = 1
    """Frames the encoder sees for each latent: 1, the frame o_t alone; 2, also the frame before it
    (o_{t-1}, as 3 more input channels; at an episode's first step, o_t again). One frame shows
    where things are but not how fast they move, so a latent of one frame leaves the backbone to
    work velocities out from differences of quantised positions; two frames let z_t hold them.
    Training takes o_{t-1} from the replayed sequence itself (at its first step, o_t again, as its
    fresh carry treats it as an episode start), and acting keeps the last real frame in the policy
    state. The decoder still draws o_t alone, so no loss asks z_t to hold a velocity: on cartpole
    balance from pixels it did not (`experiments.probe_features`, docs/agent-experiments.md), and the return moved
    within one seed's noise."""
    decode_previous: bool = False
    """With `frames=2`: the decoder draws o_{t-1} from z_t as well as o_t (6 output channels, both
    reconstruction losses summed), so that z_t must hold both frames' positions and with them
    the velocities, which one frame cannot show. Decoding for users still returns o_t."""
    posterior: Literal["frame", "filter"] = "frame"
    """What the posterior over z_t reads. frame: o_t alone (with `frames=2`, o_{t-1} too), so that
    every latent of a sequence is encoded at once and the backbone runs over all of them in
    parallel (S5WM, R2I). filter: also y_{t-1}, the backbone output before it, as DreamerV3's RSSM
    reads its recurrent state: z_t then has to hold only what y_{t-1} did not already predict, and
    what the backbone integrates is a correction of its own estimate rather than a fresh, noisy
    code of each frame (from positions alone on cartpole balance it lifted the agent from 580 to
    895 and y's read-out of the positions from R^2 0.90 to 0.95; docs/agent-experiments.md). Training then steps the backbone
    through time (`lax.scan`; the encoder and decoder still run on all frames at once); imagination
    and acting are unchanged, O(1) a step."""
    posterior_hidden: int = 0
    """With N > 0 the posterior reads its input ([encoder features, proprio features], and y_{t-1}
    with `posterior="filter"`) through a hidden layer of N units (Linear, LayerNorm, SiLU) before its
    logits, as DreamerV3's does; 0 maps the input to the logits with one linear layer. A linear
    posterior can only add what y_{t-1} predicts to what the frame shows; a hidden layer can weigh
    one against the other."""
    nonlinear_input: bool = False
    """The backbone reads [z_t, a_t] through a linear layer, then LayerNorm and SiLU (DreamerV3's
    input layer before its GRU), in place of the linear layer alone. An SSM is linear in its input,
    so behind a linear projection its first layer can only combine linear read-outs of the latents,
    which hold a position coarsely (a linear read-out of z_t: R^2 0.6-0.7 for cartpole's), and a
    velocity it takes from their differences is coarser still."""
    decode_from: Literal["latent", "features"] = "latent"
    """What the decoders read. latent: z_t alone. features: [y_{t-1}, z_t], what a policy sees, as
    DreamerV3's decoder reads its recurrent state beside z_t. z_t, encoded from its own frame, holds
    the state only to its quantisation, and the prior over it learns nothing of an effect too small
    to change a class: an action's effect within a step or two, or the whole effect of an action
    its state already predicts (a policy's own). With features the reconstruction also trains the
    backbone, through a continuous path, to carry what z_t misses and what the last action did.
    Decoding then needs the backbone output as well (`decode(..., y=)`). Measured (docs/agent-experiments.md): it did
    not teach an action's effect from LQR-balanced data, and the pixel cartpole agents with it
    learned nothing in 100k steps (the image loss then also reaches the backbone)."""

    image_focus: float = 0.0
    """Weight of the pixels that differ from the batch's mean frame in the image loss: each
    pixel's squared error is weighted by 1 + image_focus * d, d its distance (mean over channels,
    in [0, 1]) from that pixel's mean over every frame of the batch. 0 weighs every pixel alike.
    Under a fixed camera the mean frame is the background with the moving bodies blurred over
    it, so the weight falls on where the bodies are: cartpole's pole is a few dozen of 4,096
    pixels, and the unweighted loss pays little for drawing its angle coarsely. On pixel cartpole
    balance, 20 raised a linear read-out of the pole's angle from y to R^2 0.89-0.91 on three seeds
    (0.84-0.87 without), and the reward head learned sooner. The return did not gain: 467 +- 98
    over three seeds, against 519 +- 76 over two without it (docs/agent-experiments.md)."""

    def __post_init__(self):
        require(self, {"image_focus": (self.image_focus >= 0.0, ">= 0"),
                       "decoder_flow": (self.decoder_skip or not self.decoder_flow,
                                        "False unless decoder_skip is True (the flow warps the frame the skip decoder draws from)"),
                       "proprio_scale": (self.proprio_scale >= 0.0, ">= 0"),
                       "next_proprio": (self.next_proprio >= 0.0, ">= 0"),
                       "patch": (self.patch in (2, 4) and (self.patch == 2 or len(self.mults) >= 2),
                                 "2 or 4, and 4 needs at least two mults (it takes the place of the first two layers)"),
                       "frames": (self.frames in (1, 2) and (self.frames == 1 or not self.decoder_skip),
                                  "1 or 2, and 1 with decoder_skip (its skip input is one frame's encoding)"),
                       "decoder_distance": (self.decoder_skip or not self.decoder_distance,
                                            "False unless decoder_skip is True (the distance is to the frame it draws from)"),
                       "decode_previous": (self.frames == 2 or not self.decode_previous,
                                           "False unless frames is 2 (the previous frame is the encoder's second input)"),
                       "decode_from": (self.decode_from in ("latent", "features"), "'latent' or 'features'"),
                       "posterior": (self.posterior in ("frame", "filter"), "'frame' or 'filter'"),
                       "posterior_hidden": (self.posterior_hidden >= 0, ">= 0 (0: no hidden layer)")},
                prefix="model.")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the data looks like: fixed by the dataset, checked against checkpoints."""

    image: tuple[int, int, int] | None
    proprio: int | None
    action: int

    def __post_init__(self):
        if self.image is None and self.proprio is None:
            raise ValueError("A world model needs image or proprio observations; the data has neither.")


class ImagineState(NamedTuple):
    """Where imagination stands: the backbone carry, its last output y (B,D), and the current latent z (B,V,K)."""

    carry: object
    y: jax.Array
    z: jax.Array
    frame: jax.Array | None = None
    """The last real frame (B, H, W, 3) uint8 when the encoder also sees the previous frame
    (`frames=2`): acting and filtering encode the next frame beside it. None otherwise;
    imagination carries it along unchanged."""


class Observation(NamedTuple):
    """The world model's pass over real data [B, T]: posterior logits and samples, backbone outputs and carries."""

    post: jax.Array
    """(B, T, V, K) logits of z_t given o_t (and y_{t-1} with `posterior="filter"`)."""
    z: jax.Array
    """(B, T, V, K) one-hot samples (straight-through)."""
    y: jax.Array
    """(B, T, D) backbone output after [z_t, a_t]: it predicts z_{t+1}."""
    carries: object
    """The backbone carry after each step, every leaf (B, T, ...)."""


def focus_weights(frames: jax.Array, focus: float) -> jax.Array | None:
    """Per-pixel weights of the image loss for frames [B, T, H, W, 3] scaled to a range of 1 (any
    offset: only differences count): 1 + focus * d, d the pixel's distance from its mean over the
    batch's frames (mean over channels, in [0, 1]); None when focus is 0. Data, not a parameter:
    no gradient flows through it."""
    if focus == 0:
        return None
    distance = jnp.abs(frames - frames.mean((0, 1))).mean(-1, keepdims=True)
    return 1.0 + focus * distance


class WorldModel(nnx.Module):
    def __init__(self, config: WorldModelConfig, spec: Spec, *, rngs: nnx.Rngs):
        self.config, self.spec = config, spec
        V, K, D, Hd = config.latent_vars, config.latent_classes, config.backbone.dim, config.hidden
        self.latent = V * K
        decoded = self.latent + D * (config.decode_from == "features")  # what the decoders read
        enc_features = 0
        if config.frames > 1 and spec.image is None:
            raise ValueError(f"model.frames={config.frames} stacks earlier image frames for the encoder, but the data has "
                             "no images: set it to 1 or add image observations.")
        if spec.image is not None:
            self.encoder = Encoder(spec.image[:2], config.depth, config.mults, channels=3 * config.frames,
                                   patch=config.patch, rngs=rngs)
            self.decoder = Decoder(decoded + DISTANCES * config.decoder_distance, spec.image[:2], config.depth, config.mults, skip=config.decoder_skip,
                                   flow=config.decoder_flow, patch=config.patch, colours=3 * (1 + config.decode_previous),
                                   rngs=rngs)
            enc_features += self.encoder.out_features
        if spec.proprio is not None:
            self.proprio_in = init.Linear(spec.proprio, Hd, rngs=rngs)
            self.proprio_out = nnx.Sequential(init.Linear(decoded, Hd, rngs=rngs), jax.nn.silu, init.Linear(Hd, spec.proprio, rngs=rngs))
            enc_features += Hd
        posterior_in = enc_features + D * (config.posterior == "filter")
        self.posterior = init.Linear(config.posterior_hidden or posterior_in, self.latent, rngs=rngs)
        self.in_proj = init.Linear(self.latent + spec.action, D, rngs=rngs)
        self.backbone = make_backbone(config.backbone, rngs=rngs)
        self.prior = nnx.Sequential(nnx.LayerNorm(D, rngs=rngs), init.Linear(D, Hd, rngs=rngs), jax.nn.silu, init.Linear(Hd, self.latent, rngs=rngs))
        self.reward = nnx.Sequential(init.Linear(D + self.latent, Hd, rngs=rngs), jax.nn.silu,
                                     init.Linear(Hd, config.reward_bins, kernel_init=nnx.initializers.zeros, rngs=rngs))
        self.cont = nnx.Sequential(init.Linear(D + self.latent, Hd, rngs=rngs), jax.nn.silu, init.Linear(Hd, 1, rngs=rngs))
        self.bins = nnx.Variable(dist.twohot_bins(config.reward_bins))
        if config.next_proprio > 0:  # last, so that the other parameters draw the same numbers either way
            if spec.proprio is None:
                raise ValueError(f"model.next_proprio={config.next_proprio} asks the backbone to predict the next proprio "
                                 "observation, but the data has none: set it to 0 or add proprio observations.")
            self.next_proprio = nnx.Sequential(nnx.LayerNorm(D, rngs=rngs), init.Linear(D, Hd, rngs=rngs), jax.nn.silu,
                                               init.Linear(Hd, spec.proprio, rngs=rngs))
        if config.posterior == "filter":
            self.posterior_norm = nnx.LayerNorm(D, rngs=rngs)
        if config.nonlinear_input:
            self.in_norm = nnx.LayerNorm(D, rngs=rngs)
        if config.posterior_hidden:  # last, so that without it the parameters and their draws are as before
            self.posterior_hidden = nnx.Sequential(init.Linear(posterior_in, config.posterior_hidden, rngs=rngs),
                                                   nnx.LayerNorm(config.posterior_hidden, rngs=rngs), jax.nn.silu)

    # Pieces. The model computes in the dtype of its parameters (float32, or bfloat16 when a
    # train step casts them: `embodied.nn.precision`); inputs are cast at these entry points.

    @property
    def dtype(self):
        return self.in_proj.kernel.dtype

    def encode(self, obs: dict, previous: jax.Array | None = None, y: jax.Array | None = None) -> jax.Array:
        """Posterior logits (..., V, K) of each frame; with `frames=2`, of each frame and `previous`,
        the frame before it (uint8, the image's shape); with `posterior="filter"`, also given `y`
        (..., D), the backbone output before the frame (zeros at an episode's start)."""
        return self.posterior_logits(self.evidence(obs, previous), y)

    def evidence(self, obs: dict, previous: jax.Array | None = None) -> jax.Array:
        """What the posterior reads of the observation (..., F): the encoder's and proprio features."""
        parts = []
        if self.spec.image is not None:
            image = obs["image"]
            if self.config.frames == 2:
                if previous is None:
                    raise ValueError("This world model encodes each frame with the one before it (frames=2): "
                                     "pass previous=, the earlier frame (the frame itself at an episode's start).")
                image = jnp.concatenate([jnp.broadcast_to(previous, image.shape), image], -1)
            parts.append(self.encoder(image))
        if self.spec.proprio is not None:
            parts.append(jax.nn.silu(self.proprio_in(dist.symlog(obs["proprio"]).astype(self.dtype))))
        return jnp.concatenate(parts, -1)

    def posterior_logits(self, evidence: jax.Array, y: jax.Array | None = None) -> jax.Array:
        """Posterior logits (..., V, K) from `evidence` and, with `posterior="filter"`, `y`."""
        if self.config.posterior == "filter":
            if y is None:
                raise ValueError("This world model's posterior reads the backbone output before each frame "
                                 "(posterior='filter'): pass y=, y_{t-1} (zeros at an episode's start).")
            y = jnp.broadcast_to(y, (*evidence.shape[:-1], y.shape[-1]))
            evidence = jnp.concatenate([evidence, self.posterior_norm(y.astype(self.dtype))], -1)
        if self.config.posterior_hidden:
            evidence = self.posterior_hidden(evidence)
        return self._shape_latent(self.posterior(evidence))

    def posterior_mode(self, obs: dict, previous: jax.Array | None = None, y: jax.Array | None = None) -> jax.Array:
        """The most likely latent of each frame (and `previous`, `y`: `encode`), one-hot (..., V, K)."""
        return jax.nn.one_hot(jnp.argmax(self.encode(obs, previous, y), -1), self.config.latent_classes)

    def previous_frames(self, batch: dict) -> jax.Array | None:
        """The frame before each step of real data [B, T] for `encode`: o_{t-1}, or o_t itself at
        an episode's first step and at the sequence's first step. None unless `frames=2`."""
        if self.config.frames == 1:
            return None
        image = batch["image"]
        shifted = jnp.concatenate([image[:, :1], image[:, :-1]], 1)
        return jnp.where(batch["is_first"][..., None, None, None], image, shifted)

    def _shape_latent(self, logits):
        logits = logits.reshape(*logits.shape[:-1], self.config.latent_vars, self.config.latent_classes)
        return dist.unimix_logits(logits, self.config.unimix)

    def prior_logits(self, y: jax.Array) -> jax.Array:
        return self._shape_latent(self.prior(y))

    def backbone_input(self, z: jax.Array, action: jax.Array) -> jax.Array:
        """[z, a] projected to the backbone's width (with `nonlinear_input`, then normalised and SiLU);
        actions are clipped to the action box [-1, 1], the only actions an environment applies (an
        actor may imagine with unclipped samples).
        The clip passes gradients straight through, so that a sample beyond the box still
        learns from the model's slope at its edge."""
        action = jax.lax.stop_gradient(jnp.clip(action, -1.0, 1.0)) + (action - jax.lax.stop_gradient(action))
        x = self.in_proj(jnp.concatenate([z.reshape(*z.shape[:-2], -1), action], -1).astype(self.dtype))
        return jax.nn.silu(self.in_norm(x)) if self.config.nonlinear_input else x

    def heads(self, y: jax.Array, z_next: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Reward logits (..., bins) and continue logits (...) of the step that z_next starts."""
        feat = self.features(y, z_next)
        return self.reward(feat).astype(jnp.float32), self.cont(feat)[..., 0].astype(jnp.float32)

    def decode(self, z: jax.Array, context: jax.Array | None = None, keep: jax.Array | None = None,
               distance: jax.Array | None = None, y: jax.Array | None = None) -> dict[str, jax.Array]:
        """Reconstructions of latents z (..., V, K). `y` (..., D): with `decode_from="features"`, the
        backbone output before each z (y_{t-1} beside z_t: the state's `y`, zeros at an episode's
        start; in a `Trajectory`, `features[:, 1:, :D]`). `context`: with `decoder_skip`, the real uint8
        frame (..., H, W, 3) each image is drawn from, leading dims broadcastable to z's; `keep`
        (z's leading dims) 0 where that frame is from another episode: the decoder's skip input is
        then all zeros (the frame too), and training teaches it to draw such frames from z.
        `distance` (int, broadcastable to z's leading dims): with `decoder_distance`, the steps
        from the context frame to each frame drawn."""
        flat = z.reshape(*z.shape[:-2], -1).astype(self.dtype)
        if self.config.decode_from == "features":
            if y is None:
                raise ValueError("This world model decodes from the features [y_{t-1}, z_t] (decode_from='features'): pass "
                                 "y=, the backbone output before each latent (zeros at an episode's start).")
            flat = jnp.concatenate([jnp.broadcast_to(y, (*flat.shape[:-1], y.shape[-1])).astype(self.dtype), flat], -1)
        out = {}
        if self.spec.image is not None:
            image_in = flat
            if self.config.decoder_distance:
                if distance is None:
                    raise ValueError("This world model was trained with decoder_distance: pass distance=, the steps from "
                                     "the context frame to each frame decoded (0 for the context frame itself).")
                steps = jnp.broadcast_to(jnp.clip(distance, 0, DISTANCES - 1), flat.shape[:-1])
                image_in = jnp.concatenate([flat, jax.nn.one_hot(steps, DISTANCES, dtype=flat.dtype)], -1)
            image = self.decoder(image_in, self._context_pyramid(context, keep))
            out["image"] = image[..., -3:]
            if self.config.decode_previous:  # drawn before o_t, as the encoder takes them
                out["previous_image"] = image[..., :3]
        if self.spec.proprio is not None:
            out["proprio"] = self.proprio_out(flat)
        return out

    def _context_pyramid(self, context: jax.Array | None, keep: jax.Array | None) -> list[jax.Array] | None:
        if not self.config.decoder_skip:
            return None
        if context is None:
            raise ValueError("This world model was trained with decoder_skip: decoding draws each frame from a real one "
                             "as well as from z, so pass context= (uint8 (..., H, W, 3), e.g. the last observed frame).")
        pyramid = self.encoder.pyramid(context)
        if keep is not None:
            pyramid = [level * keep[..., None, None, None].astype(level.dtype) for level in pyramid]
        return pyramid

    def features(self, y: jax.Array, z: jax.Array) -> jax.Array:
        """What a policy sees: [y_{t-1}, z_t] (..., D + V*K)."""
        return jnp.concatenate([y, z.reshape(*z.shape[:-2], -1)], -1).astype(self.dtype)

    # Whole passes.

    def observe(self, batch: dict, key: jax.Array, carry=None) -> Observation:
        """Runs the backbone over real data [B, T] from `carry` (default: a fresh one)."""
        B = batch["action"].shape[0]
        carry = self.backbone.init_carry(B) if carry is None else carry
        evidence = self.evidence(batch, self.previous_frames(batch))
        if self.config.posterior == "filter":
            return self._filter(batch, evidence, key, carry)
        post = self.posterior_logits(evidence)
        z = dist.sample_straight_through(key, post)
        y, carries = self.backbone.states(self.backbone_input(z, batch["action"]), carry, batch["is_first"])
        return Observation(post, z, y, carries)

    def _filter(self, batch: dict, evidence: jax.Array, key: jax.Array, carry) -> Observation:
        """`observe` with `posterior="filter"`: step by step, z_t from o_t and y_{t-1}, then [z_t, a_t]
        through the backbone (y_{t-1} is zeros at the sequence's first step, whose carry is taken
        as fresh, and at every episode start, as `act_step` has it)."""
        B, T = batch["action"].shape[:2]

        def body(state, inputs):
            carry, y_prev = state
            evidence, action, first, step_key = inputs
            y_prev = jnp.where(first[:, None], 0.0, y_prev).astype(y_prev.dtype)
            post = self.posterior_logits(evidence, y_prev)
            z = dist.sample_straight_through(step_key, post)
            y, carry = self.backbone.step(self.backbone_input(z, action), carry, first)
            y = y.astype(y_prev.dtype)
            return (carry, y), (post, z, y, carry)

        time_major = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
        xs = (time_major(evidence), time_major(batch["action"]), time_major(batch["is_first"]), jax.random.split(key, T))
        y0 = jnp.zeros((B, self.config.backbone.dim), self.dtype)
        _, (post, z, y, carries) = jax.lax.scan(body, (carry, y0), xs)
        post, z, y = map(time_major, (post, z, y))
        return Observation(post, z, y, jax.tree.map(time_major, carries))

    def loss(self, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        """Scalar loss and metrics for a batch of sequences [B, T]."""
        return self.loss_of(batch, self.observe(batch, key))

    def loss_of(self, batch: dict, observation: Observation) -> tuple[jax.Array, dict]:
        """The loss of an `observe` pass (so that an agent can reuse the pass for its imagination starts)."""
        c = self.config
        post, z, y = observation.post, observation.z, observation.y
        metrics = {}
        recon = self.reconstruct(batch, z, self.previous_outputs(batch, y) if c.decode_from == "features" else None)
        loss = 0.0
        if "image" in recon:
            for name, drawn, frames in [("image", recon["image"], batch["image"])] + (
                    [("previous_image", recon["previous_image"], self.previous_frames(batch))] if "previous_image" in recon else []):
                target = frames.astype(jnp.float32) / 255.0 - 0.5
                error = (drawn - target) ** 2
                metrics[f"{name}_loss"] = error.sum((-3, -2, -1)).mean()
                weight = focus_weights(target, c.image_focus)
                if weight is None:
                    loss += metrics[f"{name}_loss"]
                else:
                    metrics[f"{name}_focused_loss"] = (weight * error).sum((-3, -2, -1)).mean()
                    loss += metrics[f"{name}_focused_loss"]
        if "proprio" in recon:
            proprio_loss = ((recon["proprio"] - dist.symlog(batch["proprio"])) ** 2).sum(-1).mean()
            metrics["proprio_loss"] = proprio_loss
            loss += c.proprio_scale * proprio_loss
        # Dynamics: y_t predicts step t+1, except across an episode boundary.
        valid = 1.0 - batch["is_first"][:, 1:].astype(jnp.float32)
        count = jnp.maximum(valid.sum(), 1.0)
        masked = lambda x: (x * valid).sum() / count  # noqa: E731
        prior = self.prior_logits(y[:, :-1])
        post_next = post[:, 1:]
        dyn = dist.categorical_kl(jax.lax.stop_gradient(post_next), prior)
        rep = dist.categorical_kl(post_next, jax.lax.stop_gradient(prior))
        reward_logits, cont_logits = self.heads(y[:, :-1], z[:, 1:])
        reward_loss = masked(dist.twohot_loss(reward_logits, batch["reward"][:, 1:], self.bins[...]))
        cont_target = 1.0 - batch["is_terminal"][:, 1:].astype(jnp.float32)
        cont_loss = masked(-(cont_target * jax.nn.log_sigmoid(cont_logits) + (1 - cont_target) * jax.nn.log_sigmoid(-cont_logits)))
        loss += c.dyn_scale * masked(jnp.maximum(dyn, c.free_nats)) + c.rep_scale * masked(jnp.maximum(rep, c.free_nats))
        loss += reward_loss + cont_loss
        if c.next_proprio > 0:
            predicted = self.next_proprio(y[:, :-1]).astype(jnp.float32)
            next_loss = masked(((predicted - dist.symlog(batch["proprio"][:, 1:])) ** 2).sum(-1))
            metrics["next_proprio_loss"] = next_loss
            loss += c.next_proprio * next_loss
        # The free bits exempt a step whose KL is under them from both KL terms: `kl`, a mean over
        # steps, can sit near the clamp while most steps are exempt and a few pull hard.
        metrics["kl_exempt"] = masked((dyn <= c.free_nats).astype(jnp.float32))
        metrics.update(kl=masked(dyn), reward_loss=reward_loss, cont_loss=cont_loss, loss=loss,
                       post_entropy=-(jax.nn.softmax(post) * jax.nn.log_softmax(post)).sum((-2, -1)).mean())
        return loss, metrics

    def reconstruct(self, batch: dict, z: jax.Array, y_prev: jax.Array | None = None) -> dict[str, jax.Array]:
        """What training reconstructs every step of a batch [B, T] from: z_t alone, or with
        `decode_from="features"` y_{t-1} beside it (`y_prev`, `previous_outputs`); with `decoder_skip`,
        also the sequence's first frame, up to the first episode start inside the sequence."""
        if not self.config.decoder_skip or self.spec.image is None:
            return self.decode(z, y=y_prev)
        same_episode = jnp.cumsum(batch["is_first"][:, 1:], 1) == 0
        keep = jnp.concatenate([jnp.ones_like(same_episode[:, :1]), same_episode], 1)
        return self.decode(z, batch["image"][:, :1], keep, distance=jnp.arange(z.shape[1]), y=y_prev)

    @staticmethod
    def previous_outputs(batch: dict, y: jax.Array) -> jax.Array:
        """y_{t-1} at every step of real data [B, T] from the backbone outputs y (B, T, D): zeros at the
        sequence's first step (its carry is fresh) and at every episode's first step, as `act_step`
        and `starts` have it."""
        shifted = jnp.concatenate([jnp.zeros_like(y[:, :1]), y[:, :-1]], 1)
        return jnp.where(batch["is_first"][..., None], 0.0, shifted)

    def imagine_step(self, state: ImagineState, action: jax.Array, key: jax.Array):
        """One recurrent step under `action` (B, A): (next state, reward (B,), continue probability (B,)).

        Differentiable in the action: the prior latent is sampled with straight-through gradients,
        so an actor can learn by backpropagating imagined returns through the dynamics."""
        reset = jnp.zeros(action.shape[:1], bool)
        y, carry = self.backbone.step(self.backbone_input(state.z, action), state.carry, reset)
        z = dist.sample_straight_through(key, self.prior_logits(y))
        reward_logits, cont_logits = self.heads(y, z)
        return ImagineState(carry, y, z, state.frame), dist.twohot_mean(reward_logits, self.bins[...]), jax.nn.sigmoid(cont_logits)

    def start(self, batch: dict, key: jax.Array) -> ImagineState:
        """The state after observing a context [B, C]: the carry through step C-2 and the posterior z_{C-1}.

        The last context action is not consumed: imagination chooses the action at step C-1.
        """
        B, C = batch["action"].shape[:2]
        if C == 1:
            carry, y_last = self.backbone.init_carry(B), jnp.zeros((B, self.config.backbone.dim))
        else:
            observation = self.observe({k: v[:, :-1] for k, v in batch.items()}, key)
            carry = jax.tree.map(lambda c: c[:, -1], observation.carries)
            y_last = observation.y[:, -1]
        last = {k: v[:, -1] for k, v in batch.items()}
        previous = self.previous_frames(batch)
        z_last = self.posterior_mode(last, None if previous is None else previous[:, -1], y_last)
        return ImagineState(carry, y_last, z_last, last["image"] if self.config.frames == 2 else None)

    def filter_step(self, state: ImagineState, action: jax.Array, obs: dict) -> ImagineState:
        """Follows real data one step: [z_t, a_t] through the backbone, then z_{t+1} the posterior
        mode of the real observation o_{t+1} (inputs (B, ...)). With `start`, this gives a real
        episode the latent features a policy sees in the dream (`envs.dream.LatentObservation`)."""
        reset = jnp.zeros(action.shape[:1], bool)
        y, carry = self.backbone.step(self.backbone_input(state.z, action), state.carry, reset)
        z = self.posterior_mode(obs, state.frame, y)
        return ImagineState(carry, y, z, obs["image"] if self.config.frames == 2 else None)

    def starts(self, batch: dict, observation: Observation) -> ImagineState:
        """An imagination state at every step of real data, leaves (B, T, ...), gradients stopped.

        At step t: the carry and output after step t-1 and the posterior z_t, so that the
        policy chooses a_t from the features [y_{t-1}, z_t] it would see when acting. At an
        episode's first step the carry and output are fresh, as `act` would have them.
        """
        B, T = batch["action"].shape[:2]
        fresh = jax.tree.map(lambda c: jnp.broadcast_to(c[:, None], (B, 1, *c.shape[1:])), self.backbone.init_carry(B))
        shift = lambda init, x: jnp.concatenate([init, x[:, :-1]], 1)  # noqa: E731
        carry = jax.tree.map(shift, fresh, observation.carries)
        first = batch["is_first"]
        carry = jax.tree.map(lambda f, c: jnp.where(first.reshape(B, T, *[1] * (c.ndim - 2)), f, c), fresh, carry)
        y = self.previous_outputs(batch, observation.y)
        return jax.lax.stop_gradient(ImagineState(carry, y, observation.z))

    def initial_state(self, batch: int) -> ImagineState:
        """A state for `act_step` to start from (its first step's `is_first` replaces all of it but the shapes)."""
        c = self.config
        frame = jnp.zeros((batch, *self.spec.image), jnp.uint8) if c.frames == 2 else None
        return ImagineState(self.backbone.init_carry(batch), jnp.zeros((batch, c.backbone.dim)),
                            jnp.zeros((batch, c.latent_vars, c.latent_classes)), frame)

    def act_step(self, state: ImagineState, obs: dict, is_first: jax.Array, policy, key: jax.Array):
        """Acting in the real world: (carry, y_{t-1}) and observation o_t -> action a_t and the next state.

        `policy(state, key) -> action` sees the state before the action, ImagineState(carry_{t-1},
        y_{t-1}, z_t): the same kind of state imagination starts from, so that a planner can roll
        out from it. z_t is sampled from the posterior, as in training; `is_first` (B,) starts a
        fresh carry, exactly as `starts` and training do.
        """
        latent_key, policy_key = jax.random.split(key)
        B = is_first.shape[0]
        fresh = self.backbone.init_carry(B)
        carry = jax.tree.map(lambda f, c: jnp.where(is_first.reshape(B, *[1] * (c.ndim - 1)), f, c), fresh, state.carry)
        y_prev = jnp.where(is_first[:, None], 0.0, state.y)
        previous = frame = None
        if self.config.frames == 2:
            if state.frame is None:
                raise ValueError("This world model encodes each frame with the one before it (frames=2): the policy "
                                 "state must hold the last frame; start it with `initial_state`.")
            previous = jnp.where(is_first[:, None, None, None], obs["image"], state.frame)
            frame = obs["image"]
        z = jax.nn.one_hot(jax.random.categorical(latent_key, self.encode(obs, previous, y_prev)), self.config.latent_classes)
        action = policy(ImagineState(carry, y_prev, z), policy_key)
        y, carry = self.backbone.step(self.backbone_input(z, action), carry, jnp.zeros((B,), bool))
        return action, ImagineState(carry, y, z, frame)
