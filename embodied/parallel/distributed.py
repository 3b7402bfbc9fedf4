"""Multi-host start-up: every process runs its own environments and replay; the learner step is global.

`initialize()` calls `jax.distributed.initialize` from flags or the usual
environment variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID; on Slurm, TPU pods and other managed clusters JAX finds them
itself), and picks CPU collectives (gloo) when the devices are CPUs. After it,
`make_mesh()` spans every device of every process, and `shard_batch` builds the
global batch from each process's local rows.
"""

from __future__ import annotations

import os

import jax


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Joins the processes of a multi-host run; returns False (and does nothing) for a single process."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if coordinator is None and num_processes in (None, 1):
        return False
    if coordinator is None or num_processes is None or process_id is None:
        raise ValueError("A multi-host run needs the coordinator address, the number of processes and this process's id "
                         f"(got {coordinator!r}, {num_processes!r}, {process_id!r}): pass all three, or set "
                         "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used only where the devices are CPUs
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True
