"""A sequence replay that lives in device memory: a ring buffer of fixed capacity, pure functions.

The compiled loop (experiments/compiled.py) writes one row per agent step for
all N environments at once and samples [B, T] sequences inside the same jitted
program, so no step ever leaves the device. Rows are the same steps the host
`Driver` records (`is_first` at a reset, reward 0 there, the action 0 at an
episode's last step); a sequence may cross an episode boundary, which the
world model handles through `is_first` exactly as it does for host replay.

Layout: every field (rows, N, ...), rows = capacity // N. `written` counts rows
ever written; the newest `min(written, rows)` rows are sampled uniformly by
start (one environment per sequence), never across the write head.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class DeviceReplay:
    data: dict[str, jax.Array]
    """Each field (rows, N, ...)."""
    written: jax.Array
    """Rows written so far (int32 scalar); the next row goes to written % rows."""

    @property
    def rows(self) -> int:
        return next(iter(self.data.values())).shape[0]


def nbytes(step: dict[str, jax.ShapeDtypeStruct], capacity: int) -> int:
    """Device memory a replay of `capacity` steps of `step` (fields (...) of one environment) takes."""
    return capacity * sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in step.values())


def init(step: dict[str, jax.ShapeDtypeStruct], capacity: int, envs: int) -> DeviceReplay:
    """An empty replay for steps shaped like `step` (one environment's fields), `capacity` steps in all."""
    rows = capacity // envs
    if rows < 2:
        raise ValueError(f"replay capacity {capacity} holds fewer than 2 rows of {envs} environments.")
    data = {k: jnp.zeros((rows, envs, *s.shape), s.dtype) for k, s in step.items()}
    return DeviceReplay(data, jnp.zeros((), jnp.int32))


def add(replay: DeviceReplay, step: dict[str, jax.Array]) -> DeviceReplay:
    """Writes one row: every field (N, ...)."""
    row = replay.written % replay.rows
    data = {k: v.at[row].set(step[k].astype(v.dtype)) for k, v in replay.data.items()}
    return replay.replace(data=data, written=replay.written + 1)


def sample(replay: DeviceReplay, key: jax.Array, batch: int, length: int) -> dict[str, jax.Array]:
    """`batch` sequences of `length` consecutive rows, each from one environment: fields (B, T, ...).

    The caller guarantees that `length` rows are filled (the loop's prefill does)."""
    rows = replay.rows
    envs = next(iter(replay.data.values())).shape[1]
    filled = jnp.minimum(replay.written, rows)
    start_key, env_key = jax.random.split(key)
    offset = jax.random.randint(start_key, (batch,), 0, jnp.maximum(filled - length + 1, 1))
    first = replay.written - filled + offset
    index = (first[:, None] + jnp.arange(length)) % rows  # (B, T)
    env = jax.random.randint(env_key, (batch,), 0, envs)[:, None]  # (B, 1)
    return {k: v[index, env] for k, v in replay.data.items()}
