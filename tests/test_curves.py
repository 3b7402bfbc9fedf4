"""experiments.curves on metrics files written by hand: the numbers below are worked out from them."""

import json

import pytest

from experiments import curves


def write(run, lines, tail=""):
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + tail)
    return run


def window(step, time, updates, env_steps=10.0):
    return {"step": step, "time": time, "speed/env_steps_per_s": env_steps, "speed/updates_per_s": updates,
            "speed/replayed_frames_per_s": updates * 1024, "train/actor_entropy": step / 1000}


@pytest.fixture
def runs(tmp_path):
    # Seed 0: prefill (no updates), the compile window (slow), then two windows; evaluations at 2k and 4k;
    # stopped for an hour after 3k and resumed.
    seed0 = write(tmp_path / "seed0", [
        window(1000, 1000.0, 0.0, env_steps=500.0),
        window(2000, 1100.0, 0.1, env_steps=1.0),
        {"step": 2000, "time": 1110.0, "eval/return": 300.0, "eval/return_std": 20.0},
        window(3000, 1200.0, 0.8),
        window(4000, 4800.0 + 1200.0, 1.0),
        {"step": 4000, "time": 6010.0, "eval/return": 710.0, "eval/return_std": 5.0},
    ], tail='{"step": 5000, "ti')  # a line cut short by a kill
    seed1 = write(tmp_path / "seed1", [
        window(2000, 0.0, 0.5),
        {"step": 2000, "time": 10.0, "eval/return": 500.0, "eval/return_std": 1.0},
        window(4000, 200.0, 0.5),
        {"step": 4000, "time": 210.0, "eval/return": 610.0, "eval/return_std": 3.0},
    ])
    return seed0, seed1


def test_curve_reads_returns_wall_time_speed_and_reach(runs, capsys):
    c = curves.curve(runs[0], reach=700, metrics=("train/actor_entropy",))
    assert "metrics.jsonl:7 is not a whole JSON line" in capsys.readouterr().err  # named, not fatal
    assert c.evals == {2000: (300.0, 20.0), 4000: (710.0, 5.0)}
    # 1000 -> 1110 -> 1200 run (200 s); the hour's pause is left out; 6000 -> 6010 runs (10 s).
    assert c.wall == pytest.approx(210.0)
    assert c.reached == (4000, pytest.approx(210.0))
    # The windows that trained are 0.1 (the compile, left out), 0.8 and 1.0.
    assert c.speed["updates_per_s"] == pytest.approx(0.9)
    assert c.speed["replayed_frames_per_s"] == pytest.approx(0.9 * 1024)
    assert c.metrics["train/actor_entropy"] == {2000: 2.0, 4000: 4.0}


def test_report_gives_the_mean_and_std_of_the_last_evaluations(runs):
    text = curves.report([curves.curve(run, reach=700) for run in runs], reach=700)
    assert "| 2k | 4k |" in text
    assert "**710 +- 5**" in text and "**610 +- 3**" in text
    assert "Last evaluations over 2 runs: 660 +- 71 (710, 610)." in text  # std with ddof 1: 100 / sqrt(2)
    assert "4k after 4 min" in text and "not reached" in text


def test_runs_of_different_tasks_are_averaged_per_task(tmp_path, runs):
    def run(name, task, final):
        path = write(tmp_path / name, [{"step": 1000, "time": 0.0, "eval/return": final, "eval/return_std": 0.0}])
        (path / "config.json").write_text(json.dumps({"task": task, "seed": 0}))
        return path

    balance = [run("b0", "dmc/cartpole-balance", 900.0), run("b1", "dmc/cartpole-balance", 800.0)]
    swingup = [run("s0", "dmc/cartpole-swingup", 100.0), run("s1", "dmc/cartpole-swingup", 300.0)]
    text = curves.report([curves.curve(r) for r in [*balance, *swingup, *runs]])
    assert "Last evaluations over 2 runs of dmc/cartpole-balance: 850 +- 71 (900, 800)." in text
    assert "Last evaluations over 2 runs of dmc/cartpole-swingup: 200 +- 141 (100, 300)." in text
    assert "Last evaluations over 2 runs without a config.json: 660 +- 71 (710, 610)." in text
    assert "over 6 runs" not in text


def test_a_directory_without_metrics_and_an_unknown_metric_are_refused(tmp_path, runs):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        curves.curve(tmp_path)
    with pytest.raises(ValueError, match="'train/kl' is in no line.*train/actor_entropy"):
        curves.curves(runs, metrics=("train/kl",))


def test_a_metric_some_runs_lack_is_blank_for_them(tmp_path, runs):
    dreamed = write(tmp_path / "dreamed", [
        {"step": 2000, "time": 10.0, "eval/return": 400.0, "eval/return_std": 1.0, "eval/dream_error": 1.5}])
    plain, with_dream = curves.curves((runs[1], dreamed), metrics=("eval/dream_error",))
    assert plain.metrics["eval/dream_error"] == {} and with_dream.metrics["eval/dream_error"] == {2000: 1.5}
    text = curves.report([plain, with_dream])
    assert f"| {runs[1]} |  |  |" in text and f"| {dreamed} | 1.5 |  |" in text


def test_runs_of_one_task_with_different_settings_are_averaged_apart(tmp_path):
    def run(name, seed, final, **env):
        path = write(tmp_path / name, [{"step": 1000, "time": 0.0, "eval/return": final, "eval/return_std": 0.0}])
        config = {"task": "mjx/cartpole-balance", "seed": seed, "run": str(path), "steps": 1000 * (seed + 1), "env": env}
        (path / "config.json").write_text(json.dumps(config))
        return path

    full = [run("full0", 0, 900.0), run("full1", 1, 800.0)]  # seeds, run directories and lengths differ
    positions = [run("pos0", 0, 500.0, velocities=False), run("pos1", 1, 300.0, velocities=False)]
    text = curves.report([curves.curve(r) for r in [*full, *positions]])
    assert "Last evaluations over 2 runs of mjx/cartpole-balance (env.velocities=True): 850 +- 71 (900, 800)." in text
    assert "Last evaluations over 2 runs of mjx/cartpole-balance (env.velocities=False): 400 +- 141 (500, 300)." in text
    assert "over 4 runs" not in text
