"""Data parallelism over a device mesh: one train step, any number of devices."""

from embodied.parallel.data import data_parallel, make_mesh, replicate, shard_batch
from embodied.parallel.distributed import initialize

__all__ = ["data_parallel", "initialize", "make_mesh", "replicate", "shard_batch"]
