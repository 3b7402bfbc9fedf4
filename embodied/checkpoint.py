"""Checkpoints with orbax: a pytree of arrays (parameters, optimiser state, counters) plus JSON metadata (config, RNG state).

`restore` tries the newest checkpoint first and falls back to older ones when
one cannot be read (a run killed while writing, a damaged disk), saying so:
a resume never silently starts over, and never loads a half-written step.
Nothing is unpickled.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        self.directory = pathlib.Path(directory).expanduser().absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"Checkpoint directory {str(self.directory)!r} is a file; pass a directory.")
        self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        self._manager.wait_until_finished()

    def restore(self, abstract_state: Any | None) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of the newest readable checkpoint, or None if there is none.

        With `abstract_state` None, the arrays come back as saved: nested dicts of arrays
        (to pick one part of a larger state, as the world model out of an agent's).
        """
        for step in reversed(self.steps()):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
            except Exception as e:  # orbax raises many kinds; each means "this step is unreadable"
                warnings.warn(f"Checkpoint {self.directory / str(step)} could not be read ({type(e).__name__}: {e}); trying an older one.", stacklevel=2)
                continue
            return step, restored.state, restored.meta
        return None

    def read_meta(self) -> dict | None:
        """The metadata of the newest checkpoint, without its arrays (to check a config before building a model)."""
        for step in reversed(self.steps()):
            try:
                return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            except Exception as e:
                warnings.warn(f"Checkpoint metadata {self.directory / str(step)} could not be read ({e}).", stacklevel=2)
        return None

    def close(self) -> None:
        self._manager.close()
