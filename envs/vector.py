"""Many copies of a task stepped in parallel worker processes (Gymnasium's vector API)."""

from __future__ import annotations

import functools
import multiprocessing
import signal

import gymnasium as gym

from envs.registry import make


def make_vector(name: str, num_envs: int, *, asynchronous: bool = True, **options) -> gym.vector.VectorEnv:
    """`num_envs` copies of `make(name, **options)`.

    Asynchronous copies run in their own processes, started with `spawn`: the
    parent may already hold JAX's thread pools, which do not survive a fork.
    Episodes reset automatically on the step after they end (Gymnasium's
    `NEXT_STEP` mode): that step returns the first observation of the next
    episode, with reward 0, and ignores its action. Workers ignore SIGINT and
    SIGTERM: Ctrl-C reaches the whole process group, and the parent, not its
    workers, decides when to stop (the training loops finish their step, save and
    close the workers; a worker whose parent died exits when its pipe closes).
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an int >= 1; got {num_envs!r}.")
    make(name, **options).close()  # fail here, in this process, on a bad name or option
    factories = [functools.partial(make if not asynchronous else _make_in_worker, name, **options) for _ in range(num_envs)]
    mode = gym.vector.AutoresetMode.NEXT_STEP
    if asynchronous:
        return gym.vector.AsyncVectorEnv(factories, shared_memory=True, context="spawn", autoreset_mode=mode)
    return gym.vector.SyncVectorEnv(factories, autoreset_mode=mode)


def _make_in_worker(name: str, **options) -> gym.Env:
    # AsyncVectorEnv also calls the first factory once in the parent, to read the spaces: only a
    # worker may ignore the signals, or Ctrl-C would be lost on the parent from then on.
    if multiprocessing.parent_process() is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return make(name, **options)
