"""A trained world model out of any run directory: `load(run) -> Loaded(model, task, step)`.

Both trainers write `world_model.json` beside their checkpoints: the model's
config, the data spec, the task when known, and where in the checkpointed
state the world model's variables live. Loading restores those arrays only
(an agent's actor, critic and optimiser states stay on disk), checks them
against the config, and never unpickles anything.
"""

from __future__ import annotations

import json
import pathlib
from typing import NamedTuple

import jax
from flax import nnx

from embodied.checkpoint import Checkpointer
from embodied.config import from_dict, to_dict
from embodied.worldmodel.model import Spec, WorldModel, WorldModelConfig

RECORD = "world_model.json"


class Loaded(NamedTuple):
    model: WorldModel
    task: str | None
    """The task the data came from, when the run recorded it."""
    step: int
    """The checkpoint's step (environment steps for an agent run, updates for a world-model run)."""


def write_record(run: pathlib.Path, config: WorldModelConfig, spec: Spec, task: str | None, path: tuple[str, ...]) -> None:
    record = {"model": to_dict(config), "spec": to_dict(spec), "task": task, "path": list(path)}
    (run / RECORD).write_text(json.dumps(record, indent=2))


def read_record(run: pathlib.Path) -> tuple[WorldModelConfig, Spec, str | None, list[str]]:
    run = pathlib.Path(run)
    if run.name == "checkpoints":
        run = run.parent
    path = run / RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{run} holds no trained world model ({RECORD} is missing). Pass the run directory of "
                                f"experiments.train or experiments.train_world_model.")
    record = json.loads(path.read_text())
    return from_dict(WorldModelConfig, record["model"]), from_dict(Spec, record["spec"]), record["task"], record["path"]


def load(run: str | pathlib.Path) -> Loaded:
    run = pathlib.Path(run)
    if run.name == "checkpoints":
        run = run.parent
    config, spec, task, path = read_record(run)
    checkpoints = Checkpointer(run / "checkpoints")
    restored = checkpoints.restore(None)
    checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{run / 'checkpoints'} holds no readable checkpoint.")
    step, state, _ = restored
    for key in path:
        state = state[key]
    abstract = nnx.eval_shape(lambda: WorldModel(config, spec, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    try:
        params, rest = _fill(params, state["params"]), _fill(rest, state["rest"])
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"The checkpoint in {run} does not match its {RECORD} ({type(e).__name__}: {e}).") from e
    return Loaded(nnx.merge(graphdef, params, rest), task, step)


def _fill(abstract, saved: dict):
    """The arrays of `saved` (nested dicts as orbax returns them) at the key paths of `abstract`, shapes checked."""

    def pick(path, leaf):
        node = saved
        for key in path:
            node = node[str(getattr(key, "key", getattr(key, "name", key)))]
        if node.shape != leaf.shape:
            raise ValueError(f"{jax.tree_util.keystr(path)} has shape {node.shape} on disk, {leaf.shape} in the config")
        return jax.numpy.asarray(node, leaf.dtype)

    return jax.tree_util.tree_map_with_path(pick, abstract)
