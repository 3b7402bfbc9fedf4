"""Two processes on localhost run `python -m experiments.train` together (CPU collectives)."""

import pathlib
import socket
import subprocess
import sys


def test_two_processes_run_the_training_command_together(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    root = pathlib.Path(__file__).parent.parent
    run = tmp_path / "run"
    command = [sys.executable, "-m", "experiments.train", "--preset", "debug", "--task", "dmc/cartpole-balance",
               "--env.proprio", "--env.no-pixels", "--run", str(run), "--steps", "400", "--prefill", "200",
               "--eval-every", "0", "--save-every", "400", "--length", "8"]
    # Output to files, not pipes: an unread pipe that fills up would stall one process and, through
    # the collectives, the other.
    logs = [(open(tmp_path / f"out{i}", "w"), open(tmp_path / f"err{i}", "w")) for i in range(2)]
    workers = []
    for i, (out, err) in enumerate(logs):
        env = {**__import__("os").environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
               "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}
        workers.append(subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=err))
    for i, worker in enumerate(workers):
        assert worker.wait(timeout=600) == 0, (tmp_path / f"err{i}").read_text()[-3000:]
    lines = [next(line for line in (tmp_path / f"out{i}").read_text().splitlines() if line.startswith("process ")) for i in range(2)]
    assert lines[0].startswith("process 0/2: 400 environment steps") and lines[1].startswith("process 1/2: 400 environment steps")
    assert lines[0].split("parameters ")[1] == lines[1].split("parameters ")[1], lines  # one global learner
    assert " 0 updates" not in lines[0]
    # Each process collected into its own replay; process 0 logged.
    assert list((run / "replay").glob("*.npz")) and list((run / "replay-1").glob("*.npz"))
    assert (run / "metrics.jsonl").is_file() and (run / "checkpoints").is_dir()
