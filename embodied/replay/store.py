"""Episodes on disk: one `.npz` chunk file per episode, written atomically.

A chunk is written to a temporary name in the same directory and renamed into
place, so a reader sees a whole file or none: a process killed mid-write leaves
only a `.tmp` file, which readers ignore. Files load without pickle. A chunk
that is truncated or corrupt anyway (a disk fault, a copy cut short) is skipped
with a warning that names it; the other episodes load.

Names are `<time_ns>-<random>-<length>.npz`: they sort oldest first and carry
the length, so the newest episodes that fit a capacity are found without
opening a file.
"""

from __future__ import annotations

import os
import pathlib
import time
import uuid
import warnings
import zipfile
from collections.abc import Iterator

import numpy as np

Episode = dict[str, np.ndarray]

# Every episode carries these, each with a leading time axis [T, ...].
REQUIRED_KEYS = ("action", "reward", "is_first", "is_last", "is_terminal")
SUFFIX = ".npz"


def check_episode(episode: Episode) -> int:
    """Returns the episode's length T; raises ValueError naming what is wrong."""
    missing = [k for k in REQUIRED_KEYS if k not in episode]
    if missing:
        raise ValueError(f"Episode lacks keys {missing}; it has {sorted(episode)} and needs {list(REQUIRED_KEYS)} plus observations.")
    lengths = {k: (np.shape(v)[0] if np.ndim(v) else None) for k, v in episode.items()}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        raise ValueError(f"Episode arrays must share a leading time axis; lengths are {lengths}.")
    length = next(iter(lengths.values()))
    if length == 0:
        raise ValueError("Episode is empty.")
    return length


class EpisodeStore:
    """A directory of episode chunk files."""

    def __init__(self, directory: str | os.PathLike, compress: bool = True):
        self.directory = pathlib.Path(directory).expanduser()
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"Episode directory {str(self.directory)!r} exists and is not a directory; pass a directory (it is created if missing).")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.compress = compress

    def save(self, episode: Episode) -> pathlib.Path:
        """Writes `episode` atomically; returns its path."""
        length = check_episode(episode)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}-{length}{SUFFIX}"
        path = self.directory / name
        tmp = path.with_name(f".{name}.tmp")
        save = np.savez_compressed if self.compress else np.savez
        with open(tmp, "wb") as f:
            save(f, **episode)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def paths(self) -> list[pathlib.Path]:
        """Complete chunk files, oldest first."""
        return sorted(p for p in self.directory.glob(f"*{SUFFIX}") if not p.name.startswith("."))

    def load(self, max_steps: int | None = None) -> Iterator[tuple[pathlib.Path, Episode]]:
        """Yields (path, episode) oldest first: the newest episodes whose total
        length fits `max_steps` (all when None). Corrupt files are skipped with
        a warning."""
        paths = self.paths()
        if max_steps is not None:
            keep, total = [], 0
            for path in reversed(paths):
                length = _length_from_name(path)
                if length is None:
                    warnings.warn(f"Skipping episode file {path}: its name does not end in -<length>{SUFFIX}.", stacklevel=2)
                    continue
                if total + length > max_steps:
                    break
                keep.append(path)
                total += length
            paths = keep[::-1]
        for path in paths:
            episode = self.read(path)
            if episode is not None:
                yield path, episode

    def read(self, path: pathlib.Path) -> Episode | None:
        """One episode, or None (with a warning naming the file) if it is unreadable."""
        try:
            with np.load(path, allow_pickle=False) as data:
                episode = {k: data[k] for k in data.files}
            length = check_episode(episode)
            expected = _length_from_name(path)
            if expected is not None and expected != length:
                raise ValueError(f"name says {expected} steps, contents have {length}")
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
            warnings.warn(f"Skipping unreadable episode file {path}: {e}", stacklevel=2)
            return None
        return episode


def _length_from_name(path: pathlib.Path) -> int | None:
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None
