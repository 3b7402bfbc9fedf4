"""Convolutional encoder and decoder for 64x64 frames, written as matmuls.

The encoder halves the resolution four times while doubling depth (DreamerV3's
layout); the decoder mirrors it with sub-pixel convolutions (Shi et al., 2016).
Both are written as matmuls: a 4x4 stride-2 convolution is space-to-depth
followed by a 2x2 stride-1 one, an upsampling layer is a 3x3 convolution to 4x
the channels followed by depth-to-space, and each stride-1 convolution is one
im2col matmul. Same maths as XLA's convolutions; `python -m experiments.benchmark
--only conv` times both forms, forward and backward, and checks they agree. With
JAX 0.10.2 on the 2-core CPU the matmul form is 1.08-1.18x faster at depth 4
(the small preset) and equal within 6% at depth 16 (measured 2026-11-26, sharing
the CPU with a training run; the "about 20x" gap this form was first written to
close is not reproduced by that benchmark).
At these channel counts (4 to 32) both run far below the matmul rate: the
layers at 64x64 and 32x32 are bound by memory traffic, not arithmetic (XLA's CPU
code copies a tensor whose last axis holds 4 channels at about 1 ns an element).
`patch=4` replaces those two layers on each side: a 4x4 patch embedding with stride
4 (ConvNeXt's stem; the uint8 frame is cut into patches before the cast) and a last
decoder layer that draws 4x4 pixel patches (sub-pixel convolution with factor 4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from embodied.nn import init


def shifted_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'VALID' stride-1 convolution as one matmul over the k*k shifted copies (im2col).
    x (N, H, W, C), kernel (k, k, C, O) -> (N, H-k+1, W-k+1, O).

    One matmul with k*k*C inputs beats k*k matmuls with C inputs each: the channel
    counts here are small (4 to 64), and the gradient of a sum of k*k products
    makes k*k passes over the activations (2x slower, measured at depth 4).
    """
    k = kernel.shape[0]
    H, W = x.shape[1] - k + 1, x.shape[2] - k + 1
    columns = jnp.concatenate([x[:, dy : dy + H, dx : dx + W, :] for dy in range(k) for dx in range(k)], -1)
    # A 2-D matmul: XLA's CPU backend ran the kernel's gradient, a contraction over three leading
    # axes at once, slower than over one (a factor-4 upsampling layer at 16x16x8, 1,024 frames,
    # forward and backward: 265 against 131 ms).
    out = columns.reshape(-1, columns.shape[-1]) @ kernel.reshape(-1, kernel.shape[-1])
    return out.reshape(*columns.shape[:-1], -1)


def space_to_depth(x: jax.Array, factor: int = 2) -> jax.Array:
    """(N, fH, fW, C) -> (N, H, W, f*f*C): each f x f block of pixels becomes one position."""
    N, H, W, C = x.shape
    x = x.reshape(N, H // factor, factor, W // factor, factor, C).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(N, H // factor, W // factor, factor * factor * C)


def depth_to_space(x: jax.Array, factor: int = 2) -> jax.Array:
    """(N, H, W, f*f*C) -> (N, fH, fW, C), the inverse of `space_to_depth`."""
    N, H, W, C = x.shape
    x = x.reshape(N, H, W, factor, factor, C // factor**2).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(N, factor * H, factor * W, C // factor**2)


def warp(image: jax.Array, flow: jax.Array) -> jax.Array:
    """Backward warp: out[y, x] = image[y + flow_y, x + flow_x], bilinear, clamped at the borders.
    image (N, H, W, C), flow (N, H, W, 2) in pixels as (x, y) -> (N, H, W, C); differentiable in both."""
    N, H, W, C = image.shape
    ys, xs = jnp.meshgrid(jnp.arange(H, dtype=flow.dtype), jnp.arange(W, dtype=flow.dtype), indexing="ij")
    x = jnp.clip(xs + flow[..., 0], 0, W - 1)
    y = jnp.clip(ys + flow[..., 1], 0, H - 1)
    x0, y0 = jnp.floor(x), jnp.floor(y)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, W - 1), jnp.minimum(y0 + 1, H - 1)
    pixels = image.reshape(N, H * W, C)

    def at(yi, xi):
        return jnp.take_along_axis(pixels, (yi * W + xi).reshape(N, H * W, 1), 1).reshape(N, H, W, C)

    top = (1 - wx) * at(y0, x0) + wx * at(y0, x1)
    bottom = (1 - wx) * at(y1, x0) + wx * at(y1, x1)
    return (1 - wy) * top + wy * bottom


class Down(nnx.Module):
    """4x4 convolution, stride 2, 'SAME' padding: (N, 2H, 2W, C) -> (N, H, W, O)."""

    def __init__(self, channels: int, out: int, *, rngs: nnx.Rngs):
        # A 4x4 kernel over pixels is a 2x2 kernel over 2x2 blocks of 4C channels.
        self.kernel = nnx.Param(init.lecun_normal(rngs.params(), (2, 2, 4 * channels, out)))
        self.bias = nnx.Param(jnp.zeros((out,)))

    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return shifted_conv(space_to_depth(x), self.kernel[...]) + self.bias[...]


class Patch(nnx.Module):
    """Patch embedding, a 4x4 convolution with stride 4 (ConvNeXt's stem): (N, H/4, W/4, 16C) -> (N, H/4, W/4, O).
    It takes the frame already cut into patches (`space_to_depth(x, 4)`): cut before the cast,
    a uint8 frame moves a quarter of the bytes."""

    def __init__(self, channels: int, out: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(init.lecun_normal(rngs.params(), (1, 1, 16 * channels, out)))
        self.bias = nnx.Param(jnp.zeros((out,)))

    def __call__(self, patches):
        return shifted_conv(patches, self.kernel[...]) + self.bias[...]


class Up(nnx.Module):
    """Sub-pixel upsampling: 3x3 convolution to f*f times the channels, then depth-to-space:
    (N, H, W, C) -> (N, fH, fW, O)."""

    def __init__(self, channels: int, out: int, factor: int = 2, *, rngs: nnx.Rngs):
        self.factor = factor
        self.kernel = nnx.Param(init.lecun_normal(rngs.params(), (3, 3, channels, factor**2 * out)))
        self.bias = nnx.Param(jnp.zeros((factor**2 * out,)))

    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return depth_to_space(shifted_conv(x, self.kernel[...]) + self.bias[...], self.factor)


def check_patch(patch: int, mults: tuple[int, ...]) -> None:
    if patch not in (2, 4) or (patch == 4 and len(mults) < 2):
        raise ValueError(f"patch={patch} with mults={mults}: the first layer's stride must be 2 or 4, and 4 takes the "
                         "place of the first two layers, so it needs at least two mults.")


class Encoder(nnx.Module):
    """uint8 image (..., H, W, C) -> features (..., F). H and W must divide by 2**len(mults); C is
    `channels` (3, or a multiple of 3 for frames stacked on the channel axis).

    Each layer halves the resolution and has `depth * mults[i]` channels. With `patch=4` the first
    layer is a 4x4 patch embedding with stride 4 in place of the first two layers (the output
    resolution is the same): the two layers at full and half resolution, which cost most of the
    pass on a CPU while holding the fewest parameters, become one matmul per patch.
    """

    def __init__(self, size: tuple[int, int], depth: int, mults: tuple[int, ...], *, channels: int = 3, patch: int = 2,
                 rngs: nnx.Rngs):
        check_patch(patch, mults)
        scale = 2 ** len(mults)
        if size[0] % scale or size[1] % scale:
            raise ValueError(f"Image size {size} must divide by {scale} (2 ** number of conv layers).")
        widths = [depth * m for m in mults]
        if patch == 4:
            first, widths = Patch(channels, widths[1], rngs=rngs), widths[1:]
        else:
            first = Down(channels, widths[0], rngs=rngs)
        self.patch = patch
        self.convs = nnx.List([first] + [Down(c_in, c_out, rngs=rngs) for c_in, c_out in zip(widths, widths[1:])])
        self.norms = nnx.List([nnx.LayerNorm(c, rngs=rngs) for c in widths])
        self.out_features = (size[0] // scale) * (size[1] // scale) * widths[-1]

    def __call__(self, image: jax.Array) -> jax.Array:
        """Computes in the dtype of its parameters."""
        x = self.pyramid(image)[-1]
        return x.reshape(*x.shape[:-3], -1)

    def pyramid(self, image: jax.Array) -> list[jax.Array]:
        """The image in [-0.5, 0.5] and every layer's output, finest first: (..., H/s_i, W/s_i, C_i), s_i the
        layer's total stride (2, 4, 8, ...; 4, 8, ... with patch=4)."""
        lead = image.shape[:-3]
        dtype = self.convs[0].kernel.dtype
        raw = image.reshape(-1, *image.shape[-3:])
        normalise = lambda x: x.astype(dtype) / 255.0 - 0.5  # noqa: E731
        levels = [normalise(raw)]
        x = levels[0] if self.patch == 2 else normalise(space_to_depth(raw, 4))  # cut into patches before the cast
        for conv, norm in zip(self.convs, self.norms):
            x = jax.nn.silu(norm(conv(x)))
            levels.append(x)
        return [level.reshape(*lead, *level.shape[1:]) for level in levels]


class Decoder(nnx.Module):
    """features (..., F) -> image in [-0.5, 0.5] (..., H, W, 3), the mean of a unit Gaussian.

    With `skip`, it also takes a real frame's `Encoder.pyramid` and draws from that frame:
    each upsampling layer sees the frame's encoder features at its resolution beside its own
    (SVG's skip connections from the last context frame, Denton & Fergus 2018), and the last
    layer adds a mask that composites the frame with the drawn image, m * frame + (1 - m) * drawn
    (as CDNA and SV2P do, Finn et al. 2016, Babaeizadeh et al. 2018). The mask starts near 1,
    so an untrained decoder copies the frame; static content then costs the latent nothing.

    With `flow` as well, the frame is first warped by a flow field the last layer predicts
    (bilinear, `warp`), m * warp(frame, flow) + (1 - m) * drawn: moving parts can be moved
    rather than redrawn (as Deep Voxel Flow, Liu et al. 2017, and SDC-Net, Reda et al. 2018, do).
    The flow starts at zero.
    """

    COPY_LOGIT = 3.0
    """Added to the mask's logit: an untrained decoder copies with m = 0.95. (+6 did no better on
    cartpole: the error left is in the moving parts, which the drawn image blurs, not in static ones.)"""
    FLOW_SCALE = 4.0
    """Pixels of flow per unit of the last layer's output."""

    def __init__(self, features: int, size: tuple[int, int], depth: int, mults: tuple[int, ...], *, skip: bool = False,
                 flow: bool = False, patch: int = 2, colours: int = 3, rngs: nnx.Rngs):
        """`patch`: the last layer's upsampling factor, the encoder's first stride (with 4, it draws
        4x4 pixel patches in place of the last two layers). `colours`: output channels, 3, or a
        multiple of 3 for frames drawn side by side on the channel axis (not with `skip`)."""
        check_patch(patch, mults)
        if flow and not skip:
            raise ValueError("A flow decoder warps the real frame it draws from: it needs skip=True.")
        if colours % 3 or (skip and colours != 3):
            raise ValueError(f"colours={colours}: a decoder draws 3 channels per frame, and a skip decoder one frame.")
        scale = 2 ** len(mults)
        self.start = (size[0] // scale, size[1] // scale, depth * mults[-1])
        self.proj = init.Linear(features, self.start[0] * self.start[1] * self.start[2], rngs=rngs)
        out = colours + skip + 2 * flow  # rgb, the copy mask, the flow (x, y)
        channels = [depth * m for m in reversed(mults[patch // 2 - 1:])] + [out]
        factors = [2] * (len(channels) - 2) + [patch]
        self.skip, self.flow = skip, flow
        widen = 2 if skip else 1  # a skip doubles each layer's input: the encoder level has the same channels
        self.convs = nnx.List([Up(widen * c_in, c_out, f, rngs=rngs) for c_in, c_out, f in zip(channels, channels[1:], factors)])
        self.norms = nnx.List([nnx.LayerNorm(c, rngs=rngs) for c in channels[1:-1]])
        if flow:  # zero flow at the start: the last layer's flow outputs, in each of its patch**2 sub-pixel groups
            last = self.convs[-1]
            columns = jnp.arange(patch**2 * out).reshape(patch**2, out)[:, 4:].reshape(-1)
            last.kernel[...] = last.kernel[...].at[..., columns].set(0.0)

    def __call__(self, features: jax.Array, pyramid: list[jax.Array] | None = None) -> jax.Array:
        """`pyramid`: `Encoder.pyramid` of the frame to draw from, leading dims broadcastable to the features'."""
        if self.skip != (pyramid is not None):
            raise ValueError("This decoder was built with skip=True and needs the pyramid of a real frame." if self.skip
                             else "This decoder was built without skip connections; it takes no pyramid.")
        lead = features.shape[:-1]
        x = self.proj(features.reshape(-1, features.shape[-1])).reshape(-1, *self.start)
        flat = lambda level: jnp.broadcast_to(level, (*lead, *level.shape[-3:])).reshape(-1, *level.shape[-3:]).astype(x.dtype)  # noqa: E731
        for i, conv in enumerate(self.convs):
            if pyramid is not None:
                x = jnp.concatenate([x, flat(pyramid[-1 - i])], -1)
            x = conv(x)
            if i < len(self.norms):
                x = jax.nn.silu(self.norms[i](x))
        if pyramid is not None:
            frame = flat(pyramid[0])
            if self.flow:
                frame = warp(frame, self.FLOW_SCALE * x[..., 4:6])
            copy = jax.nn.sigmoid(x[..., 3:4] + self.COPY_LOGIT)
            x = copy * frame + (1 - copy) * x[..., :3]
        return x.reshape(*lead, *x.shape[1:])
