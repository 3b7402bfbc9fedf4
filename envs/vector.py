"""Many copies of a task stepped in parallel worker processes (Gymnasium's vector API)."""

from __future__ import annotations

import functools

import gymnasium as gym

from envs.registry import make


def make_vector(name: str, num_envs: int, *, asynchronous: bool = True, **options) -> gym.vector.VectorEnv:
    """`num_envs` copies of `make(name, **options)`.

    Asynchronous copies run in their own processes, started with `spawn`: the
    parent may already hold JAX's thread pools, which do not survive a fork.
    Episodes reset automatically on the step after they end (Gymnasium's
    `NEXT_STEP` mode): that step returns the first observation of the next
    episode, with reward 0, and ignores its action.
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an int >= 1; got {num_envs!r}.")
    make(name, **options).close()  # fail here, in this process, on a bad name or option
    factories = [functools.partial(make, name, **options) for _ in range(num_envs)]
    mode = gym.vector.AutoresetMode.NEXT_STEP
    if asynchronous:
        return gym.vector.AsyncVectorEnv(factories, shared_memory=True, context="spawn", autoreset_mode=mode)
    return gym.vector.SyncVectorEnv(factories, autoreset_mode=mode)
