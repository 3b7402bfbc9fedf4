"""Image quality metrics for video prediction: PSNR and SSIM (Wang et al., 2004)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (..., H, W, C) -> (...)."""
    mse = ((a - b) ** 2).mean((-3, -2, -1))
    return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> jax.Array:
    x = jnp.arange(size) - (size - 1) / 2
    g = jnp.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean structural similarity of images in [0, 1] (..., H, W, C) -> (...), 11x11 Gaussian window, per channel."""
    lead, (H, W, C) = a.shape[:-3], a.shape[-3:]
    a = a.reshape(-1, H, W, C).transpose(0, 3, 1, 2).reshape(-1, 1, H, W)
    b = b.reshape(-1, H, W, C).transpose(0, 3, 1, 2).reshape(-1, 1, H, W)
    g = _gaussian_window()

    def blur(x):
        x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, -1, 1), (1, 1), "VALID")
        return jax.lax.conv_general_dilated(x, g.reshape(1, 1, 1, -1), (1, 1), "VALID")

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean((-3, -2, -1)).reshape(*lead, C).mean(-1)
