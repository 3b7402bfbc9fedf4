"""What every agent provides: the signatures are the contract (compare DreamerV3's `base.py`).

    init(seed)                                            -> state
    train(state, batch [B,T], key)                        -> state, metrics       pure; jit (and shard) it outside
    init_policy(batch)                                    -> policy_state
    policy(state, policy_state, obs [B], key, explore)    -> action [B,A], policy_state

`state` holds everything that training changes (parameters, optimiser states,
normalisers, counters) as one pytree: a checkpoint is that pytree. The agent
never mentions devices; `embodied.parallel` adds sharding around `train`.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax


class Agent(Protocol):
    def init(self, seed: int) -> Any: ...

    def train(self, state: Any, batch: dict[str, jax.Array], key: jax.Array) -> tuple[Any, dict[str, jax.Array]]: ...

    def init_policy(self, batch: int) -> Any: ...

    def policy(self, state: Any, policy_state: Any, obs: dict[str, jax.Array], key: jax.Array,
               explore: bool) -> tuple[jax.Array, Any]: ...
