import json

import numpy as np
import pytest

from embodied.worldmodel import BackboneConfig, WorldModelConfig
from experiments.collect import Args as CollectArgs, collect
from experiments.config import EnvConfig
from experiments.evaluate_world_model import Args as EvalArgs, evaluate
from experiments.train_world_model import Args, load, train

TINY = WorldModelConfig(backbone=BackboneConfig(dim=32, state=16, layers=1), depth=4, latent_vars=8, latent_classes=8, hidden=32, reward_bins=31)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return collect(CollectArgs(task="dmc/cartpole-swingup", episodes=2, out=tmp_path_factory.mktemp("data"), env=EnvConfig(envs=2, proprio=True, time_limit=40, size=16)))


def args(data, run, **overrides):
    return Args(**{"data": data, "run": run, "model": TINY, "batch": 4, "length": 16, "updates": 30, "log_every": 10, "save_every": 10, **overrides})


def test_train_logs_falling_losses_checkpoints_and_resumes(data, tmp_path):
    run = tmp_path / "run"
    out = train(args(data, run, updates=30))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20, 30]
    assert all(np.isfinite(line["loss"]) for line in lines)
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert out["step"] == 30 and (run / "checkpoints" / "30").is_dir()
    assert list((run / "tensorboard").iterdir())

    resumed = train(args(data, run, updates=40))
    assert resumed["step"] == 40
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20, 30, 40], "a resume continues the counter, it does not start over"
    model, step = load(run)
    assert step == 40

    results = evaluate(EvalArgs(checkpoint=run, data=data, context=3, horizon=4, sequences=4, samples=2, gif=2))
    assert len(results["model"]["psnr"]) == 4 and all(np.isfinite(results["copy_last"]["psnr"]))
    assert all(np.isfinite(results["model"]["psnr_of_mean_mse"])) and results["samples"] == 2
    assert (run / "prediction.gif").is_file()


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(data, tmp_path):
    run = tmp_path / "run"
    train(args(data, run, updates=20))
    for f in (run / "checkpoints" / "20").rglob("*"):
        if f.is_file() and f.suffix != ".json" and "meta" not in str(f):
            f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="could not be read"):
        _, step = load(run)
    assert step == 10


def test_a_checkpoint_from_another_config_is_refused(data, tmp_path):
    run = tmp_path / "run"
    train(args(data, run, updates=10))
    other = WorldModelConfig(**{**TINY.__dict__, "latent_vars": 4})
    with pytest.raises(ValueError, match="another model or data layout"):
        train(args(data, run, updates=20, model=other))


def test_a_run_saved_before_a_config_field_existed_resumes(data, tmp_path):
    run = tmp_path / "run"
    train(args(data, run, updates=10))
    meta = run / "checkpoints" / "10" / "meta" / "metadata"
    saved = json.loads(meta.read_text())
    del saved["config"]["model"]["next_proprio"], saved["config"]["model"]["backbone"]["timescale"]  # as an older version wrote it
    meta.write_text(json.dumps(saved))
    assert train(args(data, run, updates=20))["step"] == 20


def test_data_shorter_than_the_sequence_and_missing_data(data, tmp_path):
    with pytest.raises(ValueError, match="fewer than --length 500"):
        train(args(data, tmp_path / "run", length=500))
    with pytest.raises(FileNotFoundError, match="is not a directory of episodes"):
        train(args(tmp_path / "nowhere", tmp_path / "run"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="No episodes"):
        train(args(empty, tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="holds no trained world model"):
        load(tmp_path)
