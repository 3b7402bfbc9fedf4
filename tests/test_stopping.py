"""SIGINT and SIGTERM stop a training run at a whole state: it finishes the update in flight, saves, exits cleanly."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from embodied.stopping import StopSignals, is_whole, save_if_whole

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_first_signal_asks_and_the_second_stops_at_once():
    before = signal.getsignal(signal.SIGTERM), signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with StopSignals() as stop:
            assert not stop
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop and stop.signal == signal.SIGTERM
            with pytest.raises(KeyboardInterrupt, match="second time"):
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGTERM) is before[0]
        # A process started with SIGINT ignored (a script's background job) keeps ignoring it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before[1])


def test_an_array_donated_to_a_call_is_not_whole():
    state = {"w": jnp.ones(4), "step": jnp.zeros((), jnp.int32)}
    assert is_whole(state)
    step = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
    new = step(state)
    assert is_whole(new)
    assert not is_whole(state)  # what an interrupted `state = step(state)` would leave behind
    written = []
    save_if_whole(state, 5, [3], lambda: written.append(5))  # taken: the checkpoint at 3 stands
    save_if_whole(new, 5, [3, 5], lambda: written.append(5))  # already on disk
    assert written == []
    save_if_whole(new, 5, [3], lambda: written.append(5))
    assert written == [5]


@pytest.mark.parametrize("task", ["dmc/cartpole-balance", "mjx/cartpole-balance"])
def test_ctrl_c_saves_where_the_run_stands_and_exits_cleanly(task, tmp_path, one_device_env):
    """Ctrl-C reaches the whole process group (the environment workers too). The run finishes
    its step (or compiled chunk), writes a checkpoint there with its replay, and exits 0."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "experiments.train", "--preset", "debug", "--task", task, "--run", str(run),
               "--steps", "100000", "--prefill", "200", "--log-every", "100", "--eval-every", "0", "--save-every", "1000000"]
    if task.startswith("dmc"):
        command += ["--env.size", "16"]
    else:
        command += ["--env.envs", "2", "--length", "8", "--train-ratio", "16"]
    # The run starts with SIGINT at its default, as from a terminal (a pytest worker may ignore it,
    # and an ignored signal would be inherited).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True, env=one_device_env)
    finally:
        signal.signal(signal.SIGINT, before)
    try:
        deadline = time.monotonic() + 240
        metrics = run / "metrics.jsonl"
        while not (metrics.exists() and any("train/loss" in line for line in metrics.read_text().splitlines())):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, err[-3000:]
    assert "SIGINT: stopping after" in err and "Traceback" not in err, err[-3000:]
    saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert len(saved) == 1 and saved[0] >= max(logged) > 0  # saved where it stopped, not at a save_every mark
    if task.startswith("dmc"):  # the episode in progress reached the replay on disk
        assert sum(int(p.stem.split("-")[-1]) for p in (run / "replay").glob("*.npz")) * 2 >= saved[0]
