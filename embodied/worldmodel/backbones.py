"""Temporal backbones of the world model, all behind one interface (DESIGN.md):

    init_carry(batch)                   -> carry
    sequence(x (B,T,D), carry, reset)   -> y (B,T,D), carry     training; parallel where the model allows
    step(x (B,D), carry, reset)         -> y (B,D), carry       imagination; one step
    states(x (B,T,D), carry, reset)     -> y (B,T,D), carries   the carry after every step, each leaf (B,T,...)

`reset` (B,T) or (B,) is `is_first`: the state is cleared before that step.
`sequence` followed by `step` equals `step` throughout, and `states` gives the
carries `step` would have reached (tests/test_backbones.py). Every carry leaf
has the batch on axis 0, so carries of many starts flatten into one batch:
the agent imagines from every step of a replayed sequence this way.

- `ssm`: stacked S5 layers (parallel scan over time; O(1) state per step).
- `ssm-selective`: the same with input-dependent step sizes.
- `gru`: a GRU over time, the deterministic path of the RSSM baseline (sequential in T).
- `transformer`: a causal Transformer; its carry is a key/value cache of the last `context` steps.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from embodied.config import require
from embodied.nn import init
from embodied.nn.ssm import DiagonalSSM

Kind = Literal["ssm", "ssm-selective", "gru", "transformer"]


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    kind: Kind = "ssm"
    """Temporal layer: ssm (default), ssm-selective, gru, transformer."""
    dim: int = 256
    """Width D of the backbone's input, output and residual stream."""
    layers: int = 2
    """Stacked blocks (SSM and Transformer); the GRU has one recurrent layer."""
    state: int = 128
    """Complex states P per SSM layer."""
    heads: int = 4
    """Transformer attention heads."""
    context: int = 64
    """Transformer key/value cache: steps of history each step attends to."""
    scan: Literal["auto", "parallel", "sequential"] = "auto"
    """How the SSM's recurrence runs over time in training: an associative scan (parallel), a loop
    (sequential), or auto: sequential on CPU, parallel on accelerators (embodied/nn/ssm.py)."""
    timescale: float | Literal["auto"] | None = None
    """The SSMs' longest memory in steps: every state decays at least by exp(-1/timescale) per step.
    None leaves it as trained (S5's initialisation spans about 20 to 2,000 steps). A model trained
    on T-step sequences from a fresh carry and then run for a whole episode (an agent acting) sees
    carries it never trained on unless its memory is well under T; T/4 forgets all but 2% in T.
    auto: T/4 for an SSM and None for the GRU and the Transformer, resolved where T is known
    (`experiments.config.resolve`, the agent's presets); a backbone cannot be built from it."""

    conv: int = 0
    """Width K of a causal depthwise convolution over time before each SSM layer (Mamba's conv1d,
    H3's shift SSM): each feature sees its last K values directly, so that a difference of
    successive inputs, a velocity from positions, is one linear map rather than a filter the
    slowly decaying SSM states must learn. 0 leaves it out; SSM backbones only."""
    out_norm: bool = False
    """A LayerNorm on the output y, the final norm a pre-norm stack ends with (GPT-2, Mamba). Without
    it the SSM's and the Transformer's y is their residual stream, whose scale grows in training
    (RMS 6.4, largest |y| 29 in a swingup run), and the reward and continue heads and a features
    decoder (`model.decode_from`) read it as it is; the GRU's state is bounded by its tanh."""

    def __post_init__(self):
        require(self, {
            "timescale": (self.timescale in (None, "auto") or (self.timescale > 0 and self.kind.startswith("ssm")),
                          "None, 'auto', or > 0 with an SSM kind (the GRU and the Transformer have no decay to bound)"),
            "conv": (self.conv >= 0 and (self.conv == 0 or self.kind.startswith("ssm")), ">= 0, and 0 unless kind is an SSM"),
        }, prefix="model.backbone.")


class MLP(nnx.Module):
    def __init__(self, dim: int, hidden: int, rngs: nnx.Rngs):
        self.up = init.Linear(dim, hidden, rngs=rngs)
        self.down = init.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))


class CausalConv(nnx.Module):
    """Depthwise convolution over time, y_t = sum_k w_k * x_{t-k} for k < K, that never reaches
    across an episode start. Initialised to the identity (w_0 = 1, the rest 0).

    Carry: the last K-1 inputs (B, K-1, D) in float32, oldest first, zero where they precede a reset.
    """

    def __init__(self, dim: int, width: int):
        self.width = width
        self.kernel = nnx.Param(jnp.zeros((width, dim)).at[0].set(1.0))

    def init_carry(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.width - 1, self.kernel.shape[1]))

    def states(self, x, carry, reset):
        """x (B,T,D) -> y (B,T,D) and the carry after every step (B,T,K-1,D)."""
        K, T = self.width, x.shape[1]
        padded = jnp.concatenate([carry.astype(x.dtype), x], axis=1)  # x_{t-k} at padded[:, t + K-1-k]
        # x_{t-k} belongs to step t's episode when no reset lies in (t-k, t]: resets counted up to
        # each step (0 for the carry's steps) differ by nothing between t-k and t.
        count = jnp.cumsum(reset.astype(jnp.int32), axis=1)
        count = jnp.concatenate([jnp.zeros_like(count[:, :1]).repeat(K - 1, 1), count], axis=1)
        window = lambda k: jnp.where((count[:, K - 1:] == count[:, K - 1 - k:K - 1 - k + T])[..., None],  # noqa: E731
                                     padded[:, K - 1 - k:K - 1 - k + T], 0)
        past = [window(k) for k in range(K)]  # x_{t-k}, each (B,T,D)
        kernel = self.kernel[...].astype(x.dtype)
        y = sum(kernel[k] * past[k] for k in range(K))
        carries = jnp.stack(past[K - 2::-1], axis=2) if K > 1 else jnp.zeros((*x.shape[:2], 0, x.shape[2]))
        return y, carries.astype(jnp.float32)

    def step(self, x, carry, reset):
        """x (B,D) -> y (B,D), carry (B,K-1,D)."""
        window = jnp.concatenate([carry.astype(x.dtype) * (1 - reset.astype(x.dtype))[:, None, None], x[:, None]], axis=1)
        y = jnp.einsum("bkd,kd->bd", window, self.kernel[...][::-1].astype(x.dtype))
        return y, window[:, 1:].astype(jnp.float32)


class SSMBackbone(nnx.Module):
    """Pre-norm residual blocks: x + MLP(norm(x + SSM(conv(norm(x))))), the convolution only with
    `conv` > 0. Carry: per layer, the SSM's (B, P) complex state, or (state, convolution carry)."""

    def __init__(self, config: BackboneConfig, *, rngs: nnx.Rngs):
        selective = config.kind == "ssm-selective"
        self.norms = nnx.List([nnx.LayerNorm(config.dim, rngs=rngs) for _ in range(config.layers)])
        self.convs = nnx.List([CausalConv(config.dim, config.conv) for _ in range(config.layers)]) if config.conv else None
        self.ssms = nnx.List([DiagonalSSM(config.dim, config.state, selective=selective, scan=config.scan, timescale=config.timescale,
                                          rngs=rngs) for _ in range(config.layers)])
        self.mlp_norms = nnx.List([nnx.LayerNorm(config.dim, rngs=rngs) for _ in range(config.layers)])
        self.mlps = nnx.List([MLP(config.dim, 2 * config.dim, rngs) for _ in range(config.layers)])
        self.out_norm = nnx.LayerNorm(config.dim, rngs=rngs) if config.out_norm else None

    def init_carry(self, batch: int):
        if self.convs is None:
            return [ssm.init_carry(batch) for ssm in self.ssms]
        return [(ssm.init_carry(batch), conv.init_carry(batch)) for ssm, conv in zip(self.ssms, self.convs, strict=True)]

    def _blocks(self, x, carry, reset, method: str):
        new_carry = []
        convs = self.convs if self.convs is not None else [None] * len(self.ssms)
        for norm, conv, ssm, mlp_norm, mlp, c in zip(self.norms, convs, self.ssms, self.mlp_norms, self.mlps, carry, strict=True):
            u = norm(x)
            if conv is not None:
                c, conv_carry = c
                u, conv_carry = getattr(conv, "step" if method == "step" else "states")(u, conv_carry, reset)
                if method == "sequence":
                    conv_carry = conv_carry[:, -1]
            y, h = getattr(ssm, method)(u, c, reset)
            x = x + y
            x = x + mlp(mlp_norm(x))
            new_carry.append(h if conv is None else (h, conv_carry))
        return (x if self.out_norm is None else self.out_norm(x)), new_carry

    def sequence(self, x, carry, reset):
        return self._blocks(x, carry, reset, "sequence")

    def step(self, x, carry, reset):
        return self._blocks(x, carry, reset, "step")

    def states(self, x, carry, reset):
        return self._blocks(x, carry, reset, "states")


def gru_cell(params: dict, h: jax.Array, x: jax.Array, reset: jax.Array) -> jax.Array:
    """One GRU step (Cho et al., 2014) with the state cleared where `reset`. h (B,D), x (B,D), reset (B,)."""
    h = h * (1.0 - reset[:, None])
    gates = x @ params["wx"] + h @ params["wh"] + params["b"]
    r, z, _ = jnp.split(gates, 3, axis=-1)
    r, z = jax.nn.sigmoid(r), jax.nn.sigmoid(z)
    # The candidate sees the reset-gated state through its own recurrent weights.
    d = h.shape[-1]
    n = jnp.tanh(x @ params["wx"][:, 2 * d :] + (r * h) @ params["wh"][:, 2 * d :] + params["b"][2 * d :])
    return (1.0 - z) * n + z * h


class GRUBackbone(nnx.Module):
    """A GRU over time, then a residual MLP. Carry: (B, D)."""

    def __init__(self, config: BackboneConfig, *, rngs: nnx.Rngs):
        D = config.dim
        self.wx = nnx.Param(init.lecun_normal(rngs.params(), (D, 3 * D)))
        self.wh = nnx.Param(nnx.initializers.orthogonal()(rngs.params(), (D, 3 * D)))
        self.b = nnx.Param(jnp.zeros((3 * D,)))
        self.norm = nnx.LayerNorm(D, rngs=rngs)
        self.mlp = MLP(D, 2 * D, rngs)
        self.dim = D
        self.out_norm = nnx.LayerNorm(D, rngs=rngs) if config.out_norm else None

    def init_carry(self, batch: int):
        return jnp.zeros((batch, self.dim), self.wh.dtype)  # the compute dtype (embodied.nn.precision)

    def _params(self):
        return {"wx": self.wx[...], "wh": self.wh[...], "b": self.b[...]}

    def _out(self, h):
        y = h + self.mlp(self.norm(h))
        return y if self.out_norm is None else self.out_norm(y)

    def sequence(self, x, carry, reset):
        y, hs = self.states(x, carry, reset)
        return y, hs[:, -1]

    def states(self, x, carry, reset):
        params = self._params()

        def body(h, inputs):
            h = gru_cell(params, h, *inputs)
            return h, h

        _, hs = jax.lax.scan(body, carry, (x.swapaxes(0, 1), reset.swapaxes(0, 1).astype(x.dtype)))
        hs = hs.swapaxes(0, 1)
        return self._out(hs), hs

    def step(self, x, carry, reset):
        h = gru_cell(self._params(), carry, x, reset.astype(x.dtype))
        return self._out(h), h


class TransformerBackbone(nnx.Module):
    """Causal pre-norm Transformer whose carry is a key/value cache of the last `context` steps.

    Carry: keys and values (B, layers, context, heads, D/heads), `episode` (B, context) of each
    cached step, and `time` (B,), the steps seen so far: a query attends to cached and new keys
    of its own episode no more than `context - 1` steps back. Memory per imagined step is
    O(context), and so is compute, against O(1) for the SSM.
    """

    def __init__(self, config: BackboneConfig, *, rngs: nnx.Rngs):
        D, L = config.dim, config.layers
        if D % config.heads:
            raise ValueError(f"Transformer dim {D} must divide by heads {config.heads}.")
        self.heads, self.context, self.layers, self.dim = config.heads, config.context, L, D
        self.pos = nnx.Param(init.normal(rngs.params(), (config.context, D)) * 0.02)
        self.norms = nnx.List([nnx.LayerNorm(D, rngs=rngs) for _ in range(L)])
        self.qkv = nnx.List([init.Linear(D, 3 * D, rngs=rngs) for _ in range(L)])
        self.out = nnx.List([init.Linear(D, D, rngs=rngs) for _ in range(L)])
        self.mlp_norms = nnx.List([nnx.LayerNorm(D, rngs=rngs) for _ in range(L)])
        self.mlps = nnx.List([MLP(D, 2 * D, rngs) for _ in range(L)])
        self.out_norm = nnx.LayerNorm(D, rngs=rngs) if config.out_norm else None

    def init_carry(self, batch: int):
        shape = (batch, self.layers, self.context, self.heads, self.dim // self.heads)
        return {
            "k": jnp.zeros(shape, self.pos.dtype),  # the compute dtype (embodied.nn.precision)
            "v": jnp.zeros(shape, self.pos.dtype),
            # Episode -1 is an empty slot: no query ever belongs to it.
            "episode": jnp.full((batch, self.context), -1, jnp.int32),
            "time": jnp.zeros((batch,), jnp.int32),
        }

    def _attend(self, x, carry, reset):
        """y (B,T,D), and keys, values (B, layers, C+T, heads, D/heads) and episodes (B, C+T) of cache and new steps."""
        B, T, D = x.shape
        C, H = self.context, self.heads
        # Episode index of each new step, continuing the count of the newest cached step.
        last = carry["episode"][:, -1:]
        episode = jnp.maximum(last, 0) + jnp.cumsum(reset.astype(jnp.int32), axis=1)
        episode = jnp.where(last < 0, jnp.maximum(episode, 0), episode)
        keys_episode = jnp.concatenate([carry["episode"], episode], axis=1)  # (B, C+T)
        # Positions: cached slot j is C-j steps before the first new step.
        distance = jnp.arange(T)[:, None] - jnp.arange(-C, T)[None, :]
        mask = (distance >= 0) & (distance < C)
        mask = mask[None] & (episode[:, :, None] == keys_episode[:, None, :])  # (B, T, C+T)
        # A learned embedding of the step's position in the cache window.
        t = carry["time"][:, None] + jnp.arange(T)
        x = x + self.pos[...][t % C]
        ks, vs = [], []
        for i in range(self.layers):
            q, k, v = jnp.split(self.qkv[i](self.norms[i](x)), 3, axis=-1)
            q, k, v = (a.reshape(B, T, H, D // H) for a in (q, k, v))
            k_all = jnp.concatenate([carry["k"][:, i], k], axis=1)
            v_all = jnp.concatenate([carry["v"][:, i], v], axis=1)
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k_all) / jnp.sqrt(D // H)
            logits = jnp.where(mask[:, None], logits, -1e30)
            attn = jax.nn.softmax(logits, axis=-1)
            y = jnp.einsum("bhqk,bkhd->bqhd", attn, v_all).reshape(B, T, D)
            x = x + self.out[i](y)
            x = x + self.mlps[i](self.mlp_norms[i](x))
            ks.append(k_all)
            vs.append(v_all)
        x = x if self.out_norm is None else self.out_norm(x)
        return x, jnp.stack(ks, 1), jnp.stack(vs, 1), keys_episode

    def sequence(self, x, carry, reset):
        C, T = self.context, x.shape[1]
        y, k, v, episode = self._attend(x, carry, reset)
        return y, {"k": k[:, :, -C:], "v": v[:, :, -C:], "episode": episode[:, -C:], "time": carry["time"] + T}

    def step(self, x, carry, reset):
        y, carry = self.sequence(x[:, None], carry, reset[:, None])
        return y[:, 0], carry

    def states(self, x, carry, reset):
        """The cache after step t is the window of the C newest keys up to t: (B, T, layers, C, heads, D/heads)."""
        C, T = self.context, x.shape[1]
        y, k, v, episode = self._attend(x, carry, reset)
        window = jnp.arange(T)[:, None] + 1 + jnp.arange(C)[None, :]  # (T, C) into the C+T axis
        carries = {
            "k": k[:, :, window].swapaxes(1, 2),
            "v": v[:, :, window].swapaxes(1, 2),
            "episode": episode[:, window],
            "time": carry["time"][:, None] + 1 + jnp.arange(T),
        }
        return y, carries


BACKBONES: dict[str, type[nnx.Module]] = {
    "ssm": SSMBackbone,
    "ssm-selective": SSMBackbone,
    "gru": GRUBackbone,
    "transformer": TransformerBackbone,
}


def make_backbone(config: BackboneConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    if config.kind not in BACKBONES:
        raise ValueError(f"Unknown backbone {config.kind!r}; choose one of {sorted(BACKBONES)}.")
    if config.timescale == "auto":
        raise ValueError("model.backbone.timescale='auto' is a quarter of the training sequence length, which the backbone "
                         "does not know: resolve it first (experiments.config.resolve), or pass a number of steps or None.")
    return BACKBONES[config.kind](config, rngs=rngs)
