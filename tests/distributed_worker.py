"""One process of tests/test_parallel.py's two-process run: python -m tests.distributed_worker ADDRESS PROCESS_ID."""

import hashlib
import os
import sys

import jax
import numpy as np

from embodied.parallel import data_parallel, initialize, make_mesh, shard_batch


def main(address: str, process_id: int) -> None:
    initialize(address, 2, process_id)
    from tests.test_parallel import MODEL, SPEC, batch
    from agents.dreamer import Dreamer, DreamerConfig

    agent = Dreamer(SPEC, MODEL, DreamerConfig(units=16, layers=1, horizon=3))
    mesh = make_mesh()
    step = data_parallel(agent.train, mesh)
    state = agent.init(0)
    rows = batch(B=8)
    for i in range(3):
        local = {k: v[4 * process_id: 4 * process_id + 4] for k, v in rows.items()}  # each host its own data
        state, metrics = step(state, shard_batch(local, mesh), jax.random.key(i))
    leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.actor.params)]
    digest = hashlib.sha256(b"".join(x.tobytes() for x in leaves)).hexdigest()
    print(f"devices={len(jax.devices())} loss={float(metrics['loss'].addressable_data(0)):.4f} params={digest}", flush=True)
    # The result is out. Skip interpreter teardown: with CPU (gloo) collectives it can wait on the
    # other process's shutdown barrier for minutes.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
