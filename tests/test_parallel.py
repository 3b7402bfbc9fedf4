"""Data parallelism on 4 forced CPU devices (tests/conftest.py sets XLA_FLAGS)."""

import jax
import numpy as np
import pytest
from flax import nnx

from agents.dreamer import Dreamer, DreamerConfig
from embodied.parallel import data_parallel, make_mesh, shard_batch
from embodied.worldmodel import BackboneConfig, OptimConfig, Spec, WorldModel, WorldModelConfig, init_state, make_optimizer, make_train_step

SPEC = Spec(image=None, proprio=5, action=2)
MODEL = WorldModelConfig(backbone=BackboneConfig(dim=16, state=8, layers=1), hidden=16, latent_vars=4, latent_classes=4)


def batch(B=8, T=6):
    rng = np.random.default_rng(0)
    return {
        "proprio": rng.normal(size=(B, T, 5)).astype(np.float32),
        "action": rng.uniform(-1, 1, (B, T, 2)).astype(np.float32),
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": np.eye(B, T, dtype=bool) | (np.arange(T) == 0),
        "is_terminal": np.zeros((B, T), bool),
    }


def assert_trees_close(a, b, tol=1e-5):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol), a, b)


def test_four_devices_are_there():
    assert len(jax.devices()) == 4


def test_sharded_world_model_step_equals_the_single_device_step():
    optimizer = make_optimizer(OptimConfig())
    graphdef, state = init_state(WorldModel(MODEL, SPEC, rngs=nnx.Rngs(0)), optimizer)
    step = make_train_step(graphdef, optimizer)
    key, data = jax.random.key(1), batch()
    single_state, single_metrics = jax.jit(step)(state, data, key)
    mesh = make_mesh(4)
    sharded_state, sharded_metrics = data_parallel(step, mesh, donate=False)(state, shard_batch(data, mesh), key)
    assert_trees_close(single_state.params, sharded_state.params)
    assert_trees_close(single_metrics, sharded_metrics)
    leaf = jax.tree.leaves(sharded_state.params)[0]
    assert leaf.sharding.is_fully_replicated


def test_sharded_agent_step_equals_the_single_device_step():
    agent = Dreamer(SPEC, MODEL, DreamerConfig(units=16, layers=1, horizon=3))
    state = agent.init(0)
    key, data = jax.random.key(2), batch()
    single, _ = jax.jit(agent.train)(state, data, key)
    mesh = make_mesh(4)
    sharded, metrics = data_parallel(agent.train, mesh, donate=False)(state, shard_batch(data, mesh), key)
    assert_trees_close(single.actor.params, sharded.actor.params, tol=1e-4)
    assert_trees_close(single.critic.params, sharded.critic.params, tol=1e-4)
    assert np.isfinite(float(metrics["actor_loss"]))


def test_a_batch_that_does_not_split_is_refused_before_compiling():
    with pytest.raises(ValueError, match="multiple of 4"):
        shard_batch(batch(B=6), make_mesh(4))
    with pytest.raises(ValueError, match="more devices"):
        make_mesh(16)


def test_two_processes_train_together_and_end_with_identical_parameters(tmp_path, one_device_env):
    import pathlib
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    root = pathlib.Path(__file__).parent.parent
    # Output to files, not pipes: an unread pipe that fills up would stall one worker and, through
    # the collectives, the other.
    logs = [(open(tmp_path / f"out{i}", "w"), open(tmp_path / f"err{i}", "w")) for i in range(2)]
    workers = [subprocess.Popen([sys.executable, "-m", "tests.distributed_worker", f"localhost:{port}", str(i)], cwd=root,
                                env=one_device_env, stdout=out, stderr=err) for i, (out, err) in enumerate(logs)]
    for i, worker in enumerate(workers):
        assert worker.wait(timeout=300) == 0, (tmp_path / f"err{i}").read_text()[-2000:]
    lines = [(tmp_path / f"out{i}").read_text().strip().splitlines()[-1] for i in range(2)]
    assert all(line.startswith("devices=2") for line in lines), lines
    assert lines[0].split("params=")[1] == lines[1].split("params=")[1], lines
