"""Metrics to JSON lines and TensorBoard, side by side in a run directory."""

from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np


def resident_memory_gib() -> float:
    """This process's resident host memory (Linux /proc; NaN elsewhere): logged by the training loops
    as `host/rss_gib`, so memory that grows over a run shows in its curves before it kills it."""
    try:
        pages = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table: the benchmarks' and `experiments.curves`' output."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Logger:
    """`write(step, metrics)` appends a line to metrics.jsonl and scalars to TensorBoard.

    Each line also holds `time`, the Unix time it was written: the wall time to a return,
    across resumes too (the gap while a run was stopped shows between two lines).
    """

    def __init__(self, directory: str | os.PathLike, tensorboard: bool = True):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.directory / "metrics.jsonl", "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.directory / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "time": round(time.time(), 3), **scalars}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, int(step))
            self._tb.flush()

    @staticmethod
    def truncate(directory: str | os.PathLike, step: int) -> None:
        """Drops metrics.jsonl lines after `step`: a resumed run continues the curve from its checkpoint."""
        path = pathlib.Path(directory) / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
