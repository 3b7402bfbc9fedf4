"""Learning curves of agent runs side by side, read from their metrics.jsonl: the evaluation return at
every evaluation, the last one over seeds, the wall time, and the loop's speed.

    python -m experiments.curves runs/balance-0 runs/balance-1 runs/balance-2
    python -m experiments.curves runs/balance-* --reach 700 --metric train/actor_entropy train/kl

- **Return**: `eval/return` (the policy's mode, `--eval-episodes` episodes) at each evaluation;
  the last column is the last evaluation +- its standard deviation over episodes. With several
  runs (seeds), the mean +- standard deviation (ddof 1) of their last evaluations follows the table,
  one line per setting: runs whose config.json files differ in more than the seed and the fields
  that do not change what a run learns (`NOT_THE_SETTING`) are averaged apart, each line naming the
  fields that tell its setting from the others.
- **Wall time**: the time between the run's first and last metrics lines (each line holds its
  Unix `time`), leaving out any pause longer than `--gap` seconds between two lines, which is a
  run stopped and resumed later. Startup and the first compile, before the first line, are not in it.
- **Speed**: medians over the log windows that trained, leaving out the first (it holds the
  compile of the train step), as in the README's tables.
- `--reach R`: the first evaluation at or above R, and the wall time to it.
- `--metric NAME ...`: each metric's value in the last log window at or before each
  evaluation (`train/actor_entropy`, `train/kl`, `host/rss_gib`, ...).

Nothing but the JSON lines is read; a line cut short by a killed process is skipped with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys

import numpy as np
import tyro

from embodied.logging import table

SPEEDS = ("env_steps_per_s", "replayed_frames_per_s", "updates_per_s")


@dataclasses.dataclass(frozen=True)
class Args:
    runs: tyro.conf.Positional[tuple[pathlib.Path, ...]]
    """Run directories of `experiments.train` (each holds metrics.jsonl)."""
    reach: float | None = None
    """Report the first evaluation at or above this return, and the wall time to it."""
    metric: tuple[str, ...] = ()
    """Other metrics to print at each evaluation step (the last log window at or before it)."""
    gap: float = 600.0
    """Seconds between two metrics lines above which the run counts as stopped, not running."""


def read(run: pathlib.Path) -> list[dict]:
    """The metrics lines of a run, in file order."""
    path = pathlib.Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass run directories written by experiments.train "
                                "(or experiments.train_world_model), each holding a metrics.jsonl.")
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            print(f"warning: {path}:{number} is not a whole JSON line (a killed process?); skipped.", file=sys.stderr)
            continue
        if isinstance(line, dict) and "step" in line:
            lines.append(line)
    return lines


def running_seconds(lines: list[dict], gap: float) -> np.ndarray:
    """Seconds the run had been running at each line: the sum of the intervals between consecutive
    lines, leaving out those longer than `gap` (a stop). NaN throughout for lines without `time`."""
    times = np.array([line.get("time", math.nan) for line in lines], float)
    steps = np.diff(times, prepend=times[:1])
    return np.cumsum(np.where(steps > gap, 0.0, steps))


def speeds(lines: list[dict]) -> dict[str, float]:
    """Medians of the log windows that made updates, the first of them (the compile) left out."""
    windows = [x for x in lines if x.get("speed/updates_per_s", 0) > 0][1:]
    return {k: float(np.median([w[f"speed/{k}"] for w in windows])) if windows else math.nan for k in SPEEDS}


@dataclasses.dataclass(frozen=True)
class Curve:
    run: str
    evals: dict[int, tuple[float, float]]
    """env step -> (mean, std over episodes) of the evaluation return."""
    wall: float
    """Running seconds from the first metrics line to the last."""
    speed: dict[str, float]
    reached: tuple[int, float] | None
    """(env step, running seconds) of the first evaluation at or above `reach`."""
    metrics: dict[str, dict[int, float]]
    """metric -> env step of each evaluation -> its value in the last window at or before it."""
    setting: dict[str, object] | None = None
    """The run's config.json as dotted fields, less `NOT_THE_SETTING`; None where the run has none."""


# What seeds of one command may differ in: the seed, where the run lives, how long it ran and how
# often it logged, saved and evaluated. Anything else (the planner, the devices, the compute dtype
# included) can change the returns, so runs that differ in it are not averaged together.
NOT_THE_SETTING = ("seed", "run", "steps", "log_every", "eval_every", "eval_episodes", "eval_dream", "save_every")


def setting_of(run: pathlib.Path) -> dict[str, object] | None:
    """The run's config.json (written by `experiments.train`) as {dotted field: value}, less
    `NOT_THE_SETTING`, with fields added to the config since the run was written at their defaults
    (which keep the behaviour of the code before them); None where the run has no readable config.json."""
    try:
        record = json.loads((pathlib.Path(run) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    from embodied.config import with_defaults  # imported here: the Config brings JAX, which only a config needs
    from experiments.config import Config

    def flat(tree: dict, prefix: str = "") -> dict[str, object]:
        out = {}
        for name, value in tree.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{name}."))
            else:
                out[f"{prefix}{name}"] = tuple(value) if isinstance(value, list) else value
        return out

    record = {k: v for k, v in with_defaults(Config, record).items() if k not in NOT_THE_SETTING}
    return flat(record)


def label(setting: dict[str, object] | None, others: list[dict[str, object] | None]) -> str:
    """How `setting` reads beside `others`: its task, then each field whose value is not the same
    in all of them (`env.velocities=False`)."""
    if setting is None:
        return "without a config.json"
    settings = [s for s in others if s is not None]  # a run without a config.json tells nothing apart
    differing = [k for k in setting if k != "task" and any(s.get(k, object()) != setting[k] for s in settings)]
    fields = ", ".join(f"{k}={setting[k]}" for k in differing)
    task = setting.get("task", "")
    return f"of {task}" + (f" ({fields})" if fields else "") if task else f"with {fields}"


def curve(run: pathlib.Path, reach: float | None = None, metrics: tuple[str, ...] = (), gap: float = 600.0) -> Curve:
    lines = read(run)
    seconds = running_seconds(lines, gap)
    evals, reached = {}, None
    for line, t in zip(lines, seconds):
        if "eval/return" in line:
            evals[line["step"]] = (line["eval/return"], line.get("eval/return_std", math.nan))
            if reach is not None and reached is None and line["eval/return"] >= reach:
                reached = (line["step"], float(t))
    values = {}
    for name in metrics:
        seen = [(line["step"], line[name]) for line in lines if name in line]  # none: blank in the report
        values[name] = {step: next((v for s, v in reversed(seen) if s <= step), math.nan) for step in evals} if seen else {}
    return Curve(str(run), evals, float(seconds[-1]) if lines else math.nan, speeds(lines), reached, values, setting_of(run))


def _steps(value: int) -> str:
    return f"{value / 1000:g}k" if value % 100 == 0 else str(value)


def _clock(seconds: float) -> str:
    if math.isnan(seconds):
        return ""
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def report(curves: list[Curve], reach: float | None = None) -> str:
    steps = sorted({step for c in curves for step in c.evals})
    header = ["run", *map(_steps, steps), "last", "wall time", "env steps/s", "replayed frames/s", "updates/s"]
    if reach is not None:
        header.append(f"first >= {reach:g}")
    rows = []
    for c in curves:
        last = c.evals[max(c.evals)] if c.evals else None
        row = [c.run, *(f"{c.evals[s][0]:.0f}" if s in c.evals else "" for s in steps),
               f"**{last[0]:.0f} +- {last[1]:.0f}**" if last else "", _clock(c.wall),
               f"{c.speed['env_steps_per_s']:.1f}", f"{c.speed['replayed_frames_per_s']:,.0f}", f"{c.speed['updates_per_s']:.2f}"]
        if reach is not None:
            row.append(f"{_steps(c.reached[0])} after {_clock(c.reached[1])}" if c.reached else "not reached")
        rows.append(row)
    out = [table(header, rows)]
    groups: dict[str, tuple[dict | None, list[float]]] = {}  # a mean over runs of different settings means nothing
    for c in curves:
        if c.evals:
            key = json.dumps(c.setting, sort_keys=True, default=str)
            groups.setdefault(key, (c.setting, []))[1].append(c.evals[max(c.evals)][0])
    settings = [setting for setting, _ in groups.values()]
    for setting, finals in groups.values():
        if len(finals) > 1:
            of = "" if len(groups) == 1 else " " + label(setting, settings)
            out.append(f"\nLast evaluations over {len(finals)} runs{of}: {np.mean(finals):.0f} +- "
                       f"{np.std(finals, ddof=1):.0f} ({', '.join(f'{x:.0f}' for x in finals)}).")
    for name in curves[0].metrics if curves else ():
        rows = [[c.run, *(f"{c.metrics[name][s]:.3g}" if s in c.metrics[name] else "" for s in steps)] for c in curves]
        out.append(f"\n{name} at each evaluation:\n" + table(["run", *map(_steps, steps)], rows))
    return "\n".join(out)


def curves(runs: tuple[pathlib.Path, ...], reach: float | None = None, metrics: tuple[str, ...] = (), gap: float = 600.0) -> list[Curve]:
    """Each run's `curve`. A metric some runs lack (e.g. eval/dream_error, logged only with --eval-dream)
    is blank for them; one that no run has is refused, with the metrics they have."""
    found = [curve(run, reach, metrics, gap) for run in runs]
    for name in metrics:
        if not any(c.metrics[name] for c in found):
            known = sorted({k for run in runs for line in read(run) for k in line} - {"step", "time"})
            raise ValueError(f"metric {name!r} is in no line of {', '.join(f'{run}/metrics.jsonl' for run in runs)}; "
                             f"their metrics are: {', '.join(known)}.")
    return found


def main(args: Args) -> None:
    print(report(curves(args.runs, args.reach, args.metric, args.gap), args.reach))


if __name__ == "__main__":
    main(tyro.cli(Args))
