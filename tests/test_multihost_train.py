"""Two processes on localhost run `python -m experiments.train` together (CPU collectives)."""

import pathlib
import socket
import subprocess
import sys


def run_two_processes(run: pathlib.Path, logs: pathlib.Path, env: dict) -> list[str]:
    """Each process's closing line ("process i/2: ... parameters P, sampler S") of one training command."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "experiments.train", "--preset", "debug", "--task", "dmc/cartpole-balance",
               "--env.proprio", "--env.no-pixels", "--run", str(run), "--steps", "400", "--prefill", "200",
               "--eval-every", "0", "--save-every", "400", "--length", "8"]
    # Output to files, not pipes: an unread pipe that fills up would stall one process and, through
    # the collectives, the other.
    logs.mkdir()
    workers = []
    for i in range(2):
        process = {**env, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}
        with open(logs / f"out{i}", "w") as out, open(logs / f"err{i}", "w") as err:
            workers.append(subprocess.Popen(command, cwd=pathlib.Path(__file__).parent.parent, env=process, stdout=out, stderr=err))
    for i, worker in enumerate(workers):
        assert worker.wait(timeout=600) == 0, (logs / f"err{i}").read_text()[-3000:]
    return [next(line for line in (logs / f"out{i}").read_text().splitlines() if line.startswith("process ")) for i in range(2)]


def test_two_processes_run_the_training_command_together_and_resume_it(tmp_path, one_device_env):
    run = tmp_path / "run"
    lines = run_two_processes(run, tmp_path / "first", one_device_env)
    assert lines[0].startswith("process 0/2: 400 environment steps") and lines[1].startswith("process 1/2: 400 environment steps")
    assert lines[0].split("parameters ")[1].split(",")[0] == lines[1].split("parameters ")[1].split(",")[0], lines  # one global learner
    assert " 0 updates" not in lines[0]
    # Each process collected into its own replay; process 0 logged.
    assert list((run / "replay").glob("*.npz")) and list((run / "replay-1").glob("*.npz"))
    assert (run / "metrics.jsonl").is_file() and (run / "checkpoints").is_dir()

    # The same command again resumes at 400 steps, where it ends: every process gets back the parameters and
    # its own replay sampler's state as they were (process 1's sampler once restarted from its seed).
    resumed = run_two_processes(run, tmp_path / "again", one_device_env)
    assert resumed == lines, (resumed, lines)
