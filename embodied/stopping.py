"""Stop a training loop on SIGINT or SIGTERM at a point where its state is whole.

The loops hand their state to jitted steps that donate it (its buffers are reused
for the result). A KeyboardInterrupt raised while such a call is dispatched leaves
the old state deleted and the new one never assigned, and the closing checkpoint
then has nothing to save. So the first signal only asks the loop to stop: it
finishes the update (or compiled chunk) in flight, leaves its loop, and writes its
checkpoint. A second signal raises KeyboardInterrupt at once; the loop's `finally`
then saves only if its state is whole (`save_if_whole`), else its last checkpoint stands.

    with StopSignals() as stop:
        while step < total and not stop:
            state = train_step(state, ...)
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Self

import jax


class StopSignals:
    """A context in which SIGINT and SIGTERM set a flag (truthy once asked) rather than raise."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, what: str = "the current update"):
        self.what = what
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> Self:
        # A SIGINT the process was started ignoring stays ignored (a job that a script put in the
        # background, where the shell's Ctrl-C is not meant for it), as Python itself does.
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS
                          if not (s == signal.SIGINT and signal.getsignal(s) is signal.SIG_IGN)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt(f"signal {signum}, a second time")
        self.signal = signum
        print(f"{signal.Signals(signum).name}: stopping after {self.what} to write a checkpoint "
              "(send it again to stop at once).", file=sys.stderr, flush=True)


def is_whole(tree) -> bool:
    """False if a jitted call that was interrupted took any of `tree`'s arrays (donated, now deleted)."""
    return not any(isinstance(x, jax.Array) and x.is_deleted() for x in jax.tree.leaves(tree))


def save_if_whole(tree, step: int, saved: list[int], save: Callable[[], None]) -> None:
    """A loop's closing checkpoint of `tree` at `step`: written unless `saved` (the steps on disk)
    holds it already, or a jitted call that never finished took `tree` (then the newest stands)."""
    if not is_whole(tree):
        print(f"Stopped inside a jitted call that had taken the state; the checkpoint at {max(saved, default=0)} stands.",
              file=sys.stderr)
    elif step not in saved:
        save()
