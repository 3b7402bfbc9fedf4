"""Diagonal state-space layers: S5 (Smith et al., 2023) and an input-selective variant (Mamba-style step sizes, Gu & Dao, 2023).

For one sequence, with a complex diagonal state matrix Lambda (P,):

    Lambda_bar = exp(Lambda * step)                      (zero-order hold)
    B_bar      = (Lambda_bar - 1) / Lambda * B            (P, H)
    h_t        = Lambda_bar * h_{t-1} * (1 - reset_t) + B_bar u_t
    y_t        = Re(C h_t) + D * u_t                      (H,)

Training runs all steps at once with `jax.lax.associative_scan` (O(log T)
depth); imagination runs `ssm_step`, O(1) per step. A reset zeroes the state
before step t; folding it into the decay (a_t = Lambda_bar * (1 - reset_t))
keeps the scan operator the plain linear-recurrence one. In the selective
variant the step size depends on the input, so Lambda_bar and B_bar vary
with t; the same scan handles both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


# Pure helpers.


def discretize_zoh(Lambda: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Zero-order hold. Lambda (complex64) (P,), step (..., P) -> Lambda_bar (..., P), gain (..., P).

    B_bar = gain[:, None] * B is diagonal-times-B, so B_bar u = gain * (B u): the
    (P, H) matrix per step is never formed, which matters when `step` varies with t.
    """
    Lambda_bar = jnp.exp(Lambda * step)
    return Lambda_bar, (Lambda_bar - 1.0) / Lambda


def binary_operator(left, right):
    """Composes two affine maps h -> a h + b; `right` applies after `left`."""
    a_l, b_l = left
    a_r, b_r = right
    return a_r * a_l, a_r * b_l + b_r


def apply_ssm(Lambda_bar: jax.Array, Bu: jax.Array, reset: jax.Array, h0: jax.Array) -> jax.Array:
    """All states at once. Lambda_bar (T, P) or (P,), Bu (T, P), reset (T,), h0 (P,) -> h (T, P)."""
    a = jnp.broadcast_to(Lambda_bar, Bu.shape) * (1.0 - reset[:, None])
    b = Bu.at[0].add(a[0] * h0)  # the carried-in state enters through step 0
    _, h = jax.lax.associative_scan(binary_operator, (a, b))
    return h


def ssm_step(Lambda_bar: jax.Array, Bu: jax.Array, reset: jax.Array, h: jax.Array) -> jax.Array:
    """One step. Lambda_bar (P,), Bu (P,), reset (), h (P,) -> h (P,)."""
    return Lambda_bar * h * (1.0 - reset) + Bu


# Initialisation (S5's HiPPO-free variant: eigenvalues on a grid, as in S4D-Lin).


def init_lambda(state: int) -> tuple[np.ndarray, np.ndarray]:
    """S4D-Lin: Lambda_n = -1/2 + i pi n. Returns (log(-Re), Im) so that Re stays negative."""
    return np.log(np.full(state, 0.5, np.float32)), (np.pi * np.arange(state)).astype(np.float32)


def init_log_step(key: jax.Array, state: int, low: float = 1e-3, high: float = 1e-1) -> jax.Array:
    """Step sizes log-uniform in [low, high], one per state (P,)."""
    return jax.random.uniform(key, (state,), minval=np.log(low), maxval=np.log(high))


class SSMEigen(nnx.Param):
    """The eigenvalues and step sizes: trained, but excluded from weight decay."""


class DiagonalSSM(nnx.Module):
    """One S5 layer over H features with P complex states. `selective` makes the step size input-dependent.

    Carry: h (complex64) (B, P).
    """

    def __init__(self, features: int, state: int, *, selective: bool = False, rngs: nnx.Rngs):
        H, P = features, state
        log_re, im = init_lambda(P)
        self.lambda_log_re = SSMEigen(jnp.asarray(log_re))
        self.lambda_im = SSMEigen(jnp.asarray(im))
        self.log_step = SSMEigen(init_log_step(rngs.params(), P))
        scale_b, scale_c = 1.0 / np.sqrt(H), 1.0 / np.sqrt(P)
        self.B_re = nnx.Param(jax.random.normal(rngs.params(), (P, H)) * scale_b)
        self.B_im = nnx.Param(jax.random.normal(rngs.params(), (P, H)) * scale_b)
        self.C_re = nnx.Param(jax.random.normal(rngs.params(), (H, P)) * scale_c)
        self.C_im = nnx.Param(jax.random.normal(rngs.params(), (H, P)) * scale_c)
        self.D = nnx.Param(jnp.ones((H,)))
        self.selective = selective
        self.step_proj = nnx.Linear(H, P, kernel_init=nnx.initializers.zeros, rngs=rngs) if selective else None
        self.state = P

    def _matrices(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        """u (..., H) -> Lambda_bar (..., P) [or (P,) when not selective], B_bar u (..., P)."""
        Lambda = -jnp.exp(self.lambda_log_re[...]) + 1j * self.lambda_im[...]
        B = self.B_re[...] + 1j * self.B_im[...]
        log_step = self.log_step[...]
        if self.selective:
            log_step = log_step + self.step_proj(u)
        Lambda_bar, gain = discretize_zoh(Lambda, jnp.exp(log_step))
        return Lambda_bar, gain * (u.astype(B.dtype) @ B.T)

    def _output(self, h: jax.Array, u: jax.Array) -> jax.Array:
        C = self.C_re[...] + 1j * self.C_im[...]
        return (h @ C.T).real.astype(u.dtype) + self.D[...] * u

    def init_carry(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.state), jnp.complex64)

    def sequence(self, u: jax.Array, carry: jax.Array, reset: jax.Array) -> tuple[jax.Array, jax.Array]:
        """u (B, T, H), carry (B, P), reset (B, T) -> y (B, T, H), carry (B, P)."""
        y, h = self.states(u, carry, reset)
        return y, h[:, -1]

    def states(self, u: jax.Array, carry: jax.Array, reset: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Like `sequence`, but returns the state after every step: y (B, T, H), h (B, T, P)."""
        Lambda_bar, Bu = self._matrices(u)
        scan = jax.vmap(apply_ssm, in_axes=(0 if self.selective else None, 0, 0, 0))
        h = scan(Lambda_bar, Bu, reset.astype(jnp.float32), carry)
        return self._output(h, u), h

    def step(self, u: jax.Array, carry: jax.Array, reset: jax.Array) -> tuple[jax.Array, jax.Array]:
        """u (B, H), carry (B, P), reset (B,) -> y (B, H), carry (B, P)."""
        Lambda_bar, Bu = self._matrices(u)
        h = ssm_step(Lambda_bar, Bu, reset.astype(jnp.float32)[:, None], carry)
        return self._output(h, u), h
