"""A replay of whole episodes in a fixed-size ring, mirrored on disk, sampled as [B,T] sequences.

Each step t of an episode holds the observation o_t (`image`, `proprio`), the
action a_t chosen after seeing it (zeros at the last step, where none is
taken), the reward r_t received on arriving at o_t (0 at the first step), and
the flags `is_first`, `is_last`, `is_terminal`. A world model reads [z_t, a_t]
and predicts z_{t+1}, r_{t+1}, and whether o_{t+1} is terminal.

Episodes are laid end to end in insertion order. A sampled sequence is any T
consecutive steps of what is stored, so it may run across an episode boundary;
`is_first` marks where the model must reset its state (as in DreamerV3).
Eviction drops whole episodes, oldest first, so memory never exceeds
`capacity` steps. With a `directory`, every added episode is written there as a
chunk file, and a new replay on the same directory reloads the newest episodes
that fit its capacity: a killed run resumes with its data, and no more memory.

`mark_prefill()` marks the episodes stored so far (a training loop's prefill of
uniformly random actions), and `prefill_share` of every batch is then drawn from
them for as long as they are held. Once a policy acts nearly deterministically,
its states alone predict its actions, and a world model trained only on its
episodes learns little of what an action does; the random episodes keep showing it.
The mark is kept beside the episodes (`prefill.json`, the last marked file's name).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import warnings
from typing import Literal

import numpy as np

from embodied.replay.store import Episode, EpisodeStore, check_episode

PREFILL_MARK = "prefill.json"


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    capacity: int = 1_000_000
    """Steps held in memory (and reloaded from disk); the oldest episodes go first."""
    sampling: Literal["uniform", "recent"] = "uniform"
    """`uniform` over all stored sequences, or `recent`: sequence ages (in steps back from the newest) drawn from an exponential with `half_life`."""
    half_life: int = 50_000
    """With `recent`: a sequence this many steps old is half as likely as the newest one."""
    prefill_share: float = 0.0
    """Share of each batch drawn from the prefill's episodes of random actions (see `Replay.mark_prefill`), while the replay holds them; 0 draws every sequence alike."""


class Replay:
    """Episodes in memory up to `capacity` steps, optionally mirrored to `directory`."""

    def __init__(self, config: ReplayConfig = ReplayConfig(), directory: str | os.PathLike | None = None):
        if config.capacity < 1:
            raise ValueError(f"Replay capacity must be >= 1 step; got {config.capacity}.")
        if config.sampling not in ("uniform", "recent"):
            raise ValueError(f"Replay sampling must be 'uniform' or 'recent'; got {config.sampling!r}.")
        if config.half_life < 1:
            raise ValueError(f"Replay half_life must be >= 1 step; got {config.half_life}.")
        if not 0.0 <= config.prefill_share < 1.0:
            raise ValueError(f"Replay prefill_share must be in [0, 1); got {config.prefill_share}.")
        self.config = config
        self.store = EpisodeStore(directory) if directory is not None else None
        self._arrays: dict[str, np.ndarray] | None = None
        self._specs: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
        self._episodes: collections.deque[tuple[int, int]] = collections.deque()  # (start, length), logical
        self._end = 0  # logical index one past the newest step; physical index = logical % capacity
        self._marked = False  # whether mark_prefill has run (here or, read from disk, in an earlier process)
        self._prefill_steps = 0  # steps held of the prefill's episodes: always the oldest ones
        self._last_path: pathlib.Path | None = None
        if self.store is not None:
            last = self._read_mark()
            for path, episode in self.store.load(max_steps=config.capacity):
                self._insert(episode)
                if last is not None and path.name <= last:  # names sort in insertion order
                    self._prefill_steps += self._episodes[-1][1]
                self._last_path = path

    def __len__(self) -> int:
        """Steps stored."""
        return self._end - self._episodes[0][0] if self._episodes else 0

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def add(self, episode: Episode) -> None:
        """Stores a finished episode (dict of arrays [T, ...]) and writes it to disk."""
        self._insert(episode)
        if self.store is not None:
            self._last_path = self.store.save(episode)

    @property
    def prefill_steps(self) -> int:
        """Steps held of the episodes `mark_prefill` marked."""
        return self._prefill_steps

    def mark_prefill(self) -> None:
        """Marks the episodes stored so far as the prefill's, for `prefill_share`; only the first call counts,
        in this process or, through the directory, in an earlier one (a resumed run keeps its mark)."""
        if self._marked:
            return
        self._marked, self._prefill_steps = True, len(self)
        if self.store is not None:  # written even with nothing marked, so that a resumed run does not mark its policy's episodes
            marker = self.store.directory / PREFILL_MARK
            tmp = marker.with_name(f".{PREFILL_MARK}.tmp")
            tmp.write_text(json.dumps({"last": self._last_path.name if self._last_path else None}))
            os.replace(tmp, marker)

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A batch of sequences: dict of arrays [B, T, ...]."""
        size = len(self)
        if size < length:
            raise ValueError(f"Replay holds {size} steps, fewer than the sequence length {length}: collect more data or sample shorter sequences.")
        prefill = self.prefill_steps
        from_prefill = round(self.config.prefill_share * batch) if prefill >= length else 0
        starts = self._sample_starts(batch - from_prefill, size - length + 1, rng)
        if from_prefill:
            oldest = self._episodes[0][0]
            starts = rng.permutation(np.concatenate([starts, oldest + rng.integers(0, prefill - length + 1, size=from_prefill)]))
        index = (starts[:, None] + np.arange(length)) % self.config.capacity
        return {key: array[index] for key, array in self._arrays.items()}

    def _read_mark(self) -> str | None:
        """The name of the last prefill episode file, from the directory's mark; None if there is none."""
        marker = self.store.directory / PREFILL_MARK
        if not marker.exists():
            return None
        self._marked = True  # even if unreadable: marking again now would take the policy's episodes for random ones
        try:
            last = json.loads(marker.read_text())["last"]
            if not isinstance(last, str | None):
                raise TypeError(f"'last' is {type(last).__name__}, not a file name")
            return last
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(f"Unreadable prefill mark {marker} ({type(e).__name__}: {e}): no episodes count as the prefill's, "
                          f"so prefill_share draws nothing from them. Delete the file to mark afresh.", stacklevel=3)
            return None

    def _sample_starts(self, batch: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """Logical start indices of `batch` sequences, among `count` possible."""
        newest = self._end - (len(self) - count) - 1  # the latest start that still fits
        if self.config.sampling == "uniform":
            age = rng.integers(0, count, size=batch)
        else:
            # An exponential truncated to [0, count): inverse-CDF sampling.
            rate = np.log(2.0) / self.config.half_life
            u = rng.random(batch)
            age = np.floor(-np.log1p(-u * -np.expm1(-rate * count)) / rate).astype(np.int64)
            age = np.minimum(age, count - 1)
        return newest - age

    def _insert(self, episode: Episode) -> None:
        length = check_episode(episode)
        capacity = self.config.capacity
        if length > capacity:
            raise ValueError(f"Episode of {length} steps does not fit a replay of capacity {capacity}.")
        specs = {k: (np.shape(v)[1:], np.asarray(v).dtype) for k, v in episode.items()}
        if self._specs is None:
            self._specs = specs
            # np.empty does not touch the pages: memory grows with the data up
            # to capacity, never beyond.
            self._arrays = {k: np.empty((capacity, *shape), dtype) for k, (shape, dtype) in specs.items()}
        elif specs != self._specs:
            raise ValueError(f"Episode does not match the replay's layout: got {_describe(specs)}, stored episodes have {_describe(self._specs)}.")
        while self._episodes and len(self) + length > capacity:
            _, dropped = self._episodes.popleft()
            self._prefill_steps = max(self._prefill_steps - dropped, 0)
        index = (self._end + np.arange(length)) % capacity
        for key, array in self._arrays.items():
            array[index] = episode[key]
        self._episodes.append((self._end, length))
        self._end += length


def _describe(specs) -> str:
    return ", ".join(f"{k}: {shape} {dtype}" for k, (shape, dtype) in sorted(specs.items()))
