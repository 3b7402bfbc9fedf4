"""Diagonal state-space layers: S5 (Smith et al., 2023) and an input-selective variant (Mamba-style step sizes, Gu & Dao, 2023).

For one sequence, with a complex diagonal state matrix Lambda (P,):

    Lambda_bar = exp(Lambda * step)                      (zero-order hold)
    B_bar      = (Lambda_bar - 1) / Lambda * B            (P, H)
    h_t        = Lambda_bar * h_{t-1} * (1 - reset_t) + B_bar u_t
    y_t        = Re(C h_t) + D * u_t                      (H,)

Training computes the projections B u and C h for all steps at once (matmuls
over B*T rows); only the elementwise recurrence h_t = a_t h_{t-1} + b_t runs
over time, one of two ways (`scan`):

- "parallel": `jax.lax.associative_scan`, O(log T) depth, for accelerators
  with idle parallel lanes (what S5 and R2I use on GPU);
- "sequential": `jax.lax.scan` in time-major order with the complex numbers
  split into real and imaginary float32 parts; on a CPU the recurrence is a
  few multiply-adds per state and step, and the associative scan's log T
  passes over memory cost more than it saves (experiments/benchmark_worldmodel.py);
- "auto" (default): sequential on CPU, parallel elsewhere.

Imagination runs `ssm_step`, O(1) per step. A reset zeroes the state before
step t; folding it into the decay (a_t = Lambda_bar * (1 - reset_t)) keeps the
scan operator the plain linear-recurrence one. In the selective variant the
step size depends on the input, so Lambda_bar and B_bar vary with t; both
scans handle both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from embodied.nn import init

SCANS = ("auto", "parallel", "sequential")


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


def apply_ssm_sequential(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array], reset: jax.Array,
                         h0: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """`apply_ssm` for a batch, stepping through time, on real and imaginary parts.

    a: Lambda_bar's parts, (B, T, P) each or (P,); b: B_bar u's, (B, T, P); reset (B, T);
    h0: the carry's, (B, P) -> h's parts, (B, T, P) each. Everything is float32:
    XLA's CPU code for complex64 elementwise products runs several times slower
    than the four real products they amount to.
    """
    keep = (1.0 - reset).T[:, :, None]  # (T, B, 1)

    def time_major(x):
        return jnp.moveaxis(x, 1, 0)

    varying = a[0].ndim == 3
    inputs = (keep, *map(time_major, b), *(map(time_major, a) if varying else ()))

    def body(h, inputs):
        keep_t, b_re, b_im, *a_t = inputs
        a_re, a_im = a_t if varying else a
        h_re, h_im = h[0] * keep_t, h[1] * keep_t
        h = (a_re * h_re - a_im * h_im + b_re, a_re * h_im + a_im * h_re + b_im)
        return h, h

    _, h = jax.lax.scan(body, h0, inputs)
    return tuple(jnp.moveaxis(x, 0, 1) for x in h)


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

    def __init__(self, features: int, state: int, *, selective: bool = False, scan: str = "auto",
                 timescale: float | None = None, rngs: nnx.Rngs):
        """`timescale`: the longest memory in steps; each state's decay per step is held to at least
        exp(-1/timescale) (None: as trained, up to about 2,000 steps at initialisation)."""
        if scan not in SCANS:
            raise ValueError(f"Unknown SSM scan {scan!r}; choose one of {SCANS}.")
        H, P = features, state
        log_re, im = init_lambda(P)
        self.lambda_log_re = SSMEigen(jnp.asarray(log_re))
        self.lambda_im = SSMEigen(jnp.asarray(im))
        self.log_step = SSMEigen(init_log_step(rngs.params(), P))
        scale_b, scale_c = 1.0 / np.sqrt(H), 1.0 / np.sqrt(P)
        self.B_re = nnx.Param(init.normal(rngs.params(), (P, H)) * scale_b)
        self.B_im = nnx.Param(init.normal(rngs.params(), (P, H)) * scale_b)
        self.C_re = nnx.Param(init.normal(rngs.params(), (H, P)) * scale_c)
        self.C_im = nnx.Param(init.normal(rngs.params(), (H, P)) * scale_c)
        self.D = nnx.Param(jnp.ones((H,)))
        self.selective = selective
        self.step_proj = nnx.Linear(H, P, kernel_init=nnx.initializers.zeros, rngs=rngs) if selective else None
        self.state = P
        self.scan = scan
        self.timescale = timescale

    def _discretize(self, u: jax.Array) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
        """u (..., H) -> Lambda_bar and B_bar u, each as (real, imaginary) float32 parts: (P,) or (..., P) for
        Lambda_bar (it varies with u only when selective), (..., P) for B_bar u."""
        re, im = -jnp.exp(self.lambda_log_re[...].astype(jnp.float32)), self.lambda_im[...].astype(jnp.float32)
        log_step = self.log_step[...].astype(jnp.float32)
        B_re, B_im = self.B_re[...], self.B_im[...]
        if not self.selective:
            # Fixed step sizes: fold the gain into B, so B_bar u is one real matmul with [B_bar_re; B_bar_im].
            step = jnp.exp(log_step)
            Lambda = self._bounded(re, step) + 1j * im
            Lambda_bar, gain = discretize_zoh(Lambda, step)
            B_bar = gain[:, None] * (B_re + 1j * B_im)
            Bu = u @ jnp.concatenate([B_bar.real, B_bar.imag]).T.astype(u.dtype)
            return (Lambda_bar.real, Lambda_bar.imag), _halves(Bu)
        # Step sizes per input: the same zero-order hold elementwise in real arithmetic,
        # exp(L s) = e^(Re L s) (cos(Im L s) + i sin(Im L s)), gain = (Lambda_bar - 1) / L.
        step = jnp.exp(log_step + self.step_proj(u).astype(jnp.float32))
        re = self._bounded(re, step)
        magnitude, angle = jnp.exp(re * step), im * step
        a_re, a_im = magnitude * jnp.cos(angle), magnitude * jnp.sin(angle)
        norm = re ** 2 + im ** 2  # 1 / Lambda = conj(Lambda) / |Lambda|^2
        gain = _mul((a_re - 1.0, a_im), (re / norm, -im / norm))
        Bu = _halves(u @ jnp.concatenate([B_re, B_im]).T)
        return (a_re, a_im), _mul(gain, Bu)

    def _bounded(self, re: jax.Array, step: jax.Array) -> jax.Array:
        """Re(Lambda) held to at most -1 / (timescale * step), so that a state decays at least by
        exp(-1/timescale) per step (the gradient stops where the bound holds)."""
        return re if self.timescale is None else jnp.minimum(re, -1.0 / (self.timescale * step))

    def _output(self, h: tuple[jax.Array, jax.Array], u: jax.Array) -> jax.Array:
        # Re(C h) = C_re h_re - C_im h_im: one real matmul over the 2P stacked parts.
        C = jnp.concatenate([self.C_re[...], -self.C_im[...]], axis=1)
        h = jnp.concatenate(h, axis=-1).astype(C.dtype)
        return (h @ C.T).astype(u.dtype) + self.D[...] * u

    def _sequential(self) -> bool:
        return self.scan == "sequential" or (self.scan == "auto" and jax.default_backend() == "cpu")

    def init_carry(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.state), jnp.complex64)

    def sequence(self, u: jax.Array, carry: jax.Array, reset: jax.Array) -> tuple[jax.Array, jax.Array]:
        """u (B, T, H), carry (B, P), reset (B, T) -> y (B, T, H), carry (B, P)."""
        y, h = self.states(u, carry, reset)
        return y, h[:, -1]

    def states(self, u: jax.Array, carry: jax.Array, reset: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Like `sequence`, but returns the state after every step: y (B, T, H), h (B, T, P)."""
        a, b = self._discretize(u)
        reset = reset.astype(jnp.float32)
        if self._sequential():
            h = apply_ssm_sequential(a, b, reset, (carry.real, carry.imag))
        else:
            scan = jax.vmap(apply_ssm, in_axes=(0 if self.selective else None, 0, 0, 0))
            h = scan(jax.lax.complex(*a), jax.lax.complex(*b), reset, carry)
            h = (h.real, h.imag)
        return self._output(h, u), jax.lax.complex(*h)

    def step(self, u: jax.Array, carry: jax.Array, reset: jax.Array) -> tuple[jax.Array, jax.Array]:
        """u (B, H), carry (B, P), reset (B,) -> y (B, H), carry (B, P)."""
        a, b = self._discretize(u)
        h = ssm_step(jax.lax.complex(*a), jax.lax.complex(*b), reset.astype(jnp.float32)[:, None], carry)
        return self._output((h.real, h.imag), u), h


def _halves(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two halves of the last axis, in float32: a matmul's output over stacked real and imaginary rows."""
    re, im = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return re, im


def _mul(x: tuple[jax.Array, jax.Array], y: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """The complex product of two numbers given as (real, imaginary) parts."""
    return x[0] * y[0] - x[1] * y[1], x[0] * y[1] + x[1] * y[0]
