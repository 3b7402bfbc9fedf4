"""Data-parallel train steps: parameters replicated, the batch split over the mesh's `data` axis.

`data_parallel(train_step, mesh)` compiles any pure `(state, batch, key) ->
(state, metrics)` with `jax.jit` and shardings: the state and key are
replicated, the batch's leading axis is split over `data`. XLA partitions
the program (GSPMD) and inserts the cross-device mean of the gradients where
the loss averages over the batch. We chose this over `jax.shard_map` with a
hand-written `pmean` because the partitioned program computes exactly what
the single-device program computes, random draws included (JAX's
partitionable threefry), so a sharded step equals the single-device step on
the same global batch (tests/test_parallel.py), and the algorithm code never
names an axis. The same call runs on 1 CPU, N local devices, or every device
of several hosts after `jax.distributed.initialize`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh named `data` over the first `devices` devices (all of them by default)."""
    available = jax.devices()
    n = len(available) if devices is None else devices
    if not 1 <= n <= len(available):
        raise ValueError(f"--devices {devices} asks for more devices than the {len(available)} JAX sees "
                         f"({available[0].platform}); on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N fakes N.")
    return Mesh(np.asarray(available[:n]), ("data",))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Places a host batch on the mesh, split along its leading axis; the size must divide evenly.

    With several processes, `batch` holds this process's rows: the global batch is all
    processes' rows, each process's part on its own devices.
    """
    n = mesh.shape["data"] // jax.process_count()
    for name, value in batch.items():
        if value.shape[0] % n:
            raise ValueError(f"Batch {name!r} has {value.shape[0]} rows, which do not split over {n} devices: "
                             f"choose a batch size that is a multiple of {n}.")
    sharding = NamedSharding(mesh, P("data"))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def data_parallel(train_step: Callable, mesh: Mesh, *, donate: bool = True) -> Callable:
    """`train_step` compiled for `mesh`: state and key replicated, batch split over `data`."""
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(train_step, in_shardings=(replicated, split, replicated), out_shardings=(replicated, replicated),
                   donate_argnums=(0,) if donate else ())


def replicate(state, mesh: Mesh):
    """`state` replicated over `mesh`, placed as `data_parallel`'s step returns it. A freshly made
    (uncommitted) state is a different input to `jax.jit` than the step's own output, so without
    this the step compiles twice: for its first call and again for every later one."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(lambda tree: tree, in_shardings=replicated, out_shardings=replicated)(state)
