"""Backbones side by side: training throughput and memory over sequence length, and imagination throughput.

    python -m experiments.benchmark_worldmodel

Widths are chosen so that the four backbones have parameter counts within 10%
of each other (printed). Training rows time one jitted update of the backbone
with an input projection and a regression loss over [B, T, D] (the part of the
world model that differs between backbones; the conv encoder and decoder cost
the same for all); the SSMs run once with each scan over time (`sequential`,
the CPU default, and `parallel`, the associative scan). Imagination rows run
the whole world model (prior, reward and continue heads, no decoding) in
`lax.scan`, batch 1024, horizon 16.
Peak memory is XLA's compiled temporary buffer size. GFLOP/s is XLA's count of
the update's floating-point operations over its median time; MFU divides it by
a 2048x2048 float32 matmul timed in the same run (the machine's ceiling).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys

import jax
import jax.numpy as jnp
import optax
import tyro
from flax import nnx

from embodied.logging import table
from embodied.worldmodel import BackboneConfig, ImagineState, Spec, WorldModel, WorldModelConfig, imagine, make_backbone
from experiments.benchmark import timings

WIDTHS = {"ssm": 256, "ssm-selective": 248, "gru": 280, "transformer": 224}


@dataclasses.dataclass(frozen=True)
class Args:
    lengths: tuple[int, ...] = (64, 256, 1024)
    frames: int = 4096
    """B * T per training update (B = frames / T)."""
    repeats: int = 5
    imagine_batch: int = 1024
    horizon: int = 16
    kinds: tuple[str, ...] = tuple(WIDTHS)
    scans: tuple[str, ...] = ("sequential", "parallel")
    """The SSM's scans over time to time in training (embodied/nn/ssm.py)."""


def timed(fn, *inputs, repeats):
    """Median seconds of `fn(*inputs)`, after a warm-up call."""
    return statistics.median(seconds for seconds, _ in timings(lambda: fn(*inputs), repeats))


def matmul_ceiling(repeats: int) -> float:
    """FLOP/s of a 2048x2048 float32 matmul in JAX on this machine, now."""
    x = jax.random.normal(jax.random.key(0), (2048, 2048))
    return 2 * 2048**3 / timed(jax.jit(lambda a: a @ a), x, repeats=max(repeats, 10))


def update_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def progress(row: list) -> None:
    """A measured row to stderr at once, so that a run cut short (a device lease, a timeout) keeps what it measured."""
    print("  measured: " + " | ".join(str(c) for c in row), file=sys.stderr, flush=True)


def count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


class Probe(nnx.Module):
    """A backbone alone, as a module to split into parameters."""

    def __init__(self, config: BackboneConfig, rngs: nnx.Rngs):
        self.backbone = make_backbone(config, rngs=rngs)


def train_rows(args: Args) -> str:
    ceiling = matmul_ceiling(args.repeats)
    rows = []
    variants = [(f"{kind} ({scan} scan)" if kind.startswith("ssm") else kind, BackboneConfig(kind=kind, dim=WIDTHS[kind], context=64, scan=scan))
                for kind in args.kinds for scan in (args.scans if kind.startswith("ssm") else ("auto",))]
    for name, config in variants:
        probe = Probe(config, nnx.Rngs(0))
        graphdef, params = nnx.split(probe)
        tx = optax.adam(1e-4)
        opt_state = tx.init(params)
        for T in args.lengths:
            B = max(1, args.frames // T)
            x = jax.random.normal(jax.random.key(0), (B, T, config.dim))
            reset = jnp.zeros((B, T), bool).at[:, 0].set(True)

            def loss(params, x):
                model = nnx.merge(graphdef, params)
                y, _ = model.backbone.sequence(x[:, :-1], model.backbone.init_carry(B), reset[:, :-1])
                return ((y - x[:, 1:]) ** 2).mean()

            @jax.jit
            def update(params, opt_state, x):
                grads = jax.grad(loss)(params, x)
                updates, opt_state = tx.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state

            compiled = update.lower(params, opt_state, x).compile()
            memory = compiled.memory_analysis()
            peak = memory.temp_size_in_bytes / 2**20 if memory is not None else float("nan")
            seconds = timed(compiled, params, opt_state, x, repeats=args.repeats)
            rate = update_flops(compiled) / seconds
            # XLA counts a loop's body once: the GRU's matmuls run inside its loop over time.
            flops = ["-", "-"] if config.kind == "gru" else [f"{rate / 1e9:.0f}", f"{rate / ceiling:.0%}"]
            rows.append([name, f"{count(params) / 1e3:.0f}k", T, B, f"{B * T / seconds:,.0f}", f"{peak:,.0f}", *flops])
            progress(rows[-1])
    by = {(r[0], r[2]): float(r[4].replace(",", "")) for r in rows}
    note = "\n".join(f"- T={T}: {ssm} trains {by[(ssm, T)] / by[('gru', T)]:.2f}x the frames/s of gru, {by[(ssm, T)] / by[('transformer', T)]:.2f}x transformer"
                     for ssm in dict.fromkeys(r[0] for r in rows if r[0].startswith("ssm"))
                     for T in args.lengths if (ssm, T) in by and ("gru", T) in by and ("transformer", T) in by)
    header = ["backbone", "params", "T", "B", "frames/s (fwd+bwd+adam)", "peak temp MiB", "GFLOP/s", "MFU"]
    note += ("\n\nGFLOP/s and MFU: XLA's operation count over the median time, against the matmul ceiling; not shown "
             "for the GRU, whose matmuls run inside a loop that XLA counts once (the SSM's sequential loop holds only "
             "elementwise products, under 1% of its operations).")
    return (f"### Backbone training, B*T = {args.frames} frames per update (matmul ceiling now: {ceiling / 1e9:.0f} GFLOP/s)\n\n"
            + table(header, rows) + "\n\n" + note)


def imagine_rows(args: Args) -> str:
    rows = []
    B, H = args.imagine_batch, args.horizon
    spec = Spec(image=None, proprio=8, action=2)
    for kind in args.kinds:
        config = WorldModelConfig(backbone=BackboneConfig(kind=kind, dim=WIDTHS[kind], context=64))
        model = WorldModel(config, spec, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)
        carry = model.backbone.init_carry(B)
        carry_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(carry)) / B
        start = dict(carry=carry, y=jnp.zeros((B, config.backbone.dim)), z=jnp.zeros((B, config.latent_vars, config.latent_classes)))

        @jax.jit
        def run(params, key):
            m = nnx.merge(graphdef, params)
            policy = lambda feat, k: jnp.tanh(feat[:, :2])  # noqa: E731
            return imagine(m, policy, ImagineState(**start), H, key).rewards

        seconds = timed(run, params, jax.random.key(0), repeats=args.repeats)
        rows.append([kind, f"{count(params) / 1e6:.2f}M", f"{B * H / seconds:,.0f}", f"{carry_bytes / 1024:.1f}"])
        progress(rows[-1])
    header = ["backbone", "world-model params", f"imagined steps/s (B={B}, H={H})", "carry KiB per sequence"]
    return ("### Imagination, recurrent mode in lax.scan, no decoding\n\n" + table(header, rows) +
            "\n\nThe SSM and GRU carry a fixed state; the Transformer carries a key/value cache that grows with its context (64 here).")


def main(args: Args) -> None:
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)\n")
    print(train_rows(args), end="\n\n", flush=True)
    print(imagine_rows(args), flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
