"""The main loop end to end on the debug preset: learning signals, checkpoints, resume, evaluation, bad input."""

import json

import numpy as np
import pytest

from embodied.replay import Replay, ReplayConfig
from experiments import evaluate as evaluate_script
from experiments.train import dream_gap, parse, train

DEBUG = ["--preset", "debug", "--task", "dmc/cartpole-balance", "--env.size", "16", "--eval-every", "0", "--log-every", "100"]


def lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """400 environment steps (200 agent steps, 100 random, then one update per agent step),
    data parallel over 2 of the 4 forced CPU devices; the resume below runs on one."""
    run = tmp_path_factory.mktemp("agent") / "run"
    out = train(parse(DEBUG + ["--run", str(run), "--steps", "400", "--devices", "2"]))
    return run, out


def test_losses_are_finite_and_fall(run):
    run, out = run
    trained = [line for line in lines(run) if "train/loss" in line]
    assert len(trained) >= 2
    assert all(np.isfinite(v) for line in trained for v in line.values())
    assert trained[-1]["train/image_loss"] < trained[0]["train/image_loss"]
    assert out["updates"] > 50 and out["train/skipped"] == 0
    assert 0.1 < trained[-1]["host/rss_gib"] < 20  # host memory is logged with every window
    assert (run / "checkpoints" / "400").is_dir() and (run / "config.json").is_file()
    # 200 agent steps, all inside one unfinished 500-step episode: the stop writes it to the
    # replay, cut where it stands, so the resume below trains on every step collected so far.
    assert sum(int(p.stem.split("-")[-1]) for p in (run / "replay").glob("*.npz")) >= 200
    # When the prefill's 100 random steps ended, the loop marked the episodes they finished for
    # --replay.prefill-share: the first 50-step one only, as the vector env's autoreset takes a
    # step of its own, so the second was a step short of its end and takes one policy action.
    names = sorted(p.name for p in (run / "replay").glob("*.npz"))
    assert json.loads((run / "replay" / "prefill.json").read_text()) == {"last": names[0]}


def test_resume_continues_the_counters_and_keeps_the_replay_once(run):
    run, out = run
    on_disk = sum(int(p.stem.split("-")[-1]) for p in (run / "replay").glob("*.npz"))
    # Evaluation is a change a resume may make: here at 600, with a 3-step dream beside it.
    resumed = train(parse(DEBUG + ["--run", str(run), "--steps", "600", "--eval-every", "600", "--eval-dream", "3"]))
    assert resumed["env_steps"] == 600
    assert resumed["updates"] > out["updates"]
    steps = [line["step"] for line in lines(run) if "speed/env_steps_per_s" in line]
    assert steps == sorted(steps) and steps[-1] == 600 and 400 in steps, steps
    evaluation = [line for line in lines(run) if "eval/return" in line]
    assert [line["step"] for line in evaluation] == [600] and evaluation[0]["eval/dream_starts"] == 50 - 3 + 1
    assert all(np.isfinite(evaluation[0][f"eval/dream_{k}"]) for k in ("real", "imagined", "bias", "error", "error_within", "error_beyond"))
    times = [line["time"] for line in lines(run)]  # wall clock on every line, for the time to a return
    assert times == sorted(times) and times[-1] - times[0] > 1, times
    # The reloaded replay holds each stored episode once: memory does not double on resume.
    assert len(Replay(ReplayConfig(capacity=20_000), directory=run / "replay")) >= on_disk
    assert len(Replay(ReplayConfig(capacity=20_000), directory=run / "replay")) == sum(
        int(p.stem.split("-")[-1]) for p in (run / "replay").glob("*.npz"))


def test_evaluate_reports_mean_and_std_with_a_video(run, tmp_path):
    run, _ = run
    video = tmp_path / "eval.gif"
    result = evaluate_script.main(evaluate_script.Args(checkpoint=run, episodes=2, video=video))
    assert len(result["returns"]) == 2 and np.isfinite(result["mean"]) and result["std"] >= 0
    assert video.stat().st_size > 0


def test_evaluate_plans_with_mpc_settings_given_on_the_command_line(run, tmp_path):
    run, _ = run
    result = evaluate_script.main(evaluate_script.Args(checkpoint=run, episodes=1, planner="mpc", mpc_horizon=3,
                                                       mpc_samples=64, video=tmp_path / "mpc.gif"))
    assert result["planner"] == "mpc" and np.isfinite(result["mean"])
    assert result["mpc"]["horizon"] == 3 and result["mpc"]["samples"] == 64
    with pytest.raises(ValueError, match="take --planner mpc"):
        evaluate_script.main(evaluate_script.Args(checkpoint=run, mpc_horizon=3))
    with pytest.raises(ValueError, match="mpc.horizon"):
        evaluate_script.main(evaluate_script.Args(checkpoint=run, planner="mpc", mpc_horizon=0))


def test_evaluate_can_start_the_policy_state_afresh_every_n_steps(run, tmp_path, monkeypatch):
    from experiments.train import Acting

    run, _ = run
    firsts, call = [], Acting.__call__

    def recording(self, obs):
        firsts.append(bool(obs["is_first"][0]))
        return call(self, obs)

    monkeypatch.setattr(Acting, "__call__", recording)
    evaluate_script.main(evaluate_script.Args(checkpoint=run, episodes=1, video=tmp_path / "eval.gif", fresh_every=16))
    assert len(firsts) == 50 and [t for t, first in enumerate(firsts) if first] == [0, 16, 32, 48]  # debug episodes: 50 steps
    with pytest.raises(ValueError, match="--fresh-every must be >= 1"):
        evaluate_script.main(evaluate_script.Args(checkpoint=run, fresh_every=0))
    with pytest.raises(ValueError, match="not with a --policy"):
        evaluate_script.main(evaluate_script.Args(checkpoint=run, fresh_every=8, policy="tests.dream_policy:load_policy"))


def test_evaluate_sets_the_dream_beside_the_world(run, tmp_path):
    run, _ = run
    plain = evaluate_script.main(evaluate_script.Args(checkpoint=run, episodes=2, video=tmp_path / "plain.gif"))
    result = evaluate_script.main(evaluate_script.Args(checkpoint=run, episodes=2, dream=5, video=tmp_path / "dream.gif"))
    gap = result["dream"]
    assert gap["starts"] == 2 * (50 - 5 + 1) and gap["horizon"] == 5  # debug episodes: 50 steps
    assert all(np.isfinite(gap[k]) for k in ("real", "imagined", "bias", "error"))
    assert gap["bias"] == pytest.approx(gap["imagined"] - gap["real"], abs=1e-9)
    assert gap["real"] >= 0 and gap["error"] >= abs(gap["bias"]) - 1e-9
    within = 2 * (16 - 5 + 1)  # the starts whose 5-step dream ends within the debug preset's 16-step sequences
    assert (within * gap["error_within"] + (gap["starts"] - within) * gap["error_beyond"]) / gap["starts"] == pytest.approx(gap["error"])
    # Dreaming does not change what the agent does: the same actions, the same key, the same returns.
    np.testing.assert_allclose(result["returns"], plain["returns"], rtol=1e-4)
    averaged = evaluate_script.main(evaluate_script.Args(checkpoint=run, episodes=2, dream=5, dream_samples=4,
                                                         video=tmp_path / "averaged.gif"))
    assert averaged["dream"]["starts"] == gap["starts"] and averaged["dream"]["real"] == pytest.approx(gap["real"])
    assert averaged["dream"]["imagined"] != gap["imagined"]  # four dreams a state, averaged, not the one
    with pytest.raises(ValueError, match="--dream-samples must be >= 1"):
        evaluate_script.main(evaluate_script.Args(checkpoint=run, dream=5, dream_samples=0))
    with pytest.raises(ValueError, match="only with --dream; got 4 without --dream"):
        evaluate_script.main(evaluate_script.Args(checkpoint=run, dream_samples=4))
    with pytest.raises(ValueError, match="--dream must be >= 1"):
        evaluate_script.main(evaluate_script.Args(checkpoint=run, dream=0))
    with pytest.raises(ValueError, match="--dream imagines with the actor.*'mpc'"):
        evaluate_script.main(evaluate_script.Args(checkpoint=run, dream=5, planner="mpc"))


def test_dream_gap_counts_the_starts_with_a_whole_window():
    real = np.array([1.0, 0.0, 1.0, 1.0])
    imagined = np.array([2.0, 1.0, 1.0, 9.0])  # the last start has 1 real step after it, not 2: left out
    gap = dream_gap([(real, imagined), (np.ones(1), np.ones(1))], horizon=2)  # the second is too short
    # Real 2-step windows: 1, 1, 2; imagined 2, 1, 1: deviations -1/3, -1/3, 2/3 against 2/3, -1/3, -1/3.
    assert gap == {"starts": 3, "real": pytest.approx(4 / 3), "imagined": pytest.approx(4 / 3),
                   "bias": pytest.approx(0.0), "error": pytest.approx(2 / 3), "correlation": pytest.approx(-0.5)}
    assert np.isnan(dream_gap([(np.ones(3), np.arange(3.0))], horizon=2)["correlation"])  # real constant
    assert dream_gap([(np.ones(1), np.ones(1))], horizon=2) == {"starts": 0}
    # Split by the training length L = 3: the dreams of starts 0 and 1 end within the first 3 steps, start 2's beyond.
    split = dream_gap([(real, imagined)], horizon=2, length=3)
    assert split["error_within"] == pytest.approx(0.5) and split["error_beyond"] == pytest.approx(1.0)  # errors 1, 0 | 1
    assert np.isnan(dream_gap([(real, imagined)], horizon=2, length=100)["error_beyond"])  # every dream ends within


def test_dream_error_holds_the_episodes_and_actions_the_same_for_every_model(run):
    from experiments import dream_error

    run, _ = run
    result = dream_error.main(dream_error.Args(runs=(run, run), horizon=5, episodes=1))
    assert result["starts"] == 50 - 5 + 1 and result["episodes"] == 1  # debug episodes: 50 steps
    first, second = result["runs"]
    assert len(first["per_step"]) == 5 and all(np.isfinite(first["per_step"])) and np.isfinite(first["window"])
    assert first["per_step"] == second["per_step"] and first["window"] == second["window"]  # same model, same data, same keys
    assert first["kl"] == second["kl"] and first["posterior"] == second["posterior"]
    assert np.isfinite(first["posterior"]) and first["kl"] >= 0 and 0 <= first["kl_exempt"] <= 1
    with pytest.raises(ValueError, match="No episode was as long as --horizon 60"):
        dream_error.main(dream_error.Args(runs=(run,), horizon=60, episodes=1))
    with pytest.raises(ValueError, match="--horizon and --episodes must be >= 1"):
        dream_error.main(dream_error.Args(runs=(run,), horizon=0))


def test_reward_differences_set_each_imagined_step_against_the_real_one_k_steps_on():
    from experiments.dream_error import reward_differences

    rewards = np.array([1.0, 2.0, 3.0, 4.0])
    imagined = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 5.0]])  # from starts 0, 1, 2: the rewards 1 and 2 steps on
    np.testing.assert_allclose(reward_differences(imagined, rewards), [[0.0, 0.0], [0.0, -1.0], [0.0, 1.0]])


def test_by_history_splits_the_steps_by_the_inputs_the_backbone_had_read():
    from experiments.dream_error import by_history

    # Two episodes of 9 and 4 steps, training length 4: inputs 1-3 within it, then 4-7, 8-15.
    kl = [np.arange(9, dtype=float), np.arange(4, dtype=float)]
    posterior = [np.ones(9), np.zeros(4)]
    spans = by_history(kl, posterior, 4)
    assert [s["inputs"] for s in spans] == ["1-3", "4-7", "8-9"]
    assert [s["steps"] for s in spans] == [6, 5, 2]
    np.testing.assert_allclose([s["kl"] for s in spans], [(0 + 1 + 2) * 2 / 6, (3 + 4 + 5 + 6 + 3) / 5, (7 + 8) / 2])
    np.testing.assert_allclose([s["posterior"] for s in spans], [0.5, 0.8, 1.0])


def test_resume_with_another_config_names_the_difference(run):
    run, _ = run
    with pytest.raises(ValueError, match="batch: checkpoint 4, now 8"):
        train(parse(DEBUG + ["--run", str(run), "--batch", "8"]))


def test_a_field_added_since_the_run_started_counts_as_its_default():
    from experiments.train import config_differences, config_record

    config = parse(DEBUG)
    saved = config_record(config)
    del saved["model"]["next_proprio"]  # a run written before the field existed
    assert config_differences(saved, config) == []
    assert config_differences(saved, parse(DEBUG + ["--model.next-proprio", "1"])) == [("model.next_proprio", 0.0, 1.0)]
    assert config_differences(saved, parse(DEBUG + ["--batch", "8"])) == [("batch", 4, 8)]
    saved["model"]["retired"] = 1  # a field removed since: named, not ignored
    assert ("model.retired", 1, None) in config_differences(saved, config)


@pytest.mark.parametrize("flags, message", [
    (["--batch", "0"], "batch=0"),
    (["--length", "1"], "length=1"),
    (["--task", "dmc/cartpol-swingup"], "did you mean dmc/cartpole-swingup"),
    (["--env.size", "18"], "env.size=18"),
    (["--agent.lam", "2"], "agent.lam"),
    (["--mpc.elites", "999"], "mpc.elites"),
    (["--devices", "3"], "devices=3"),
    (["--replay.prefill-share", "0.3", "--prefill", "0"], "replay.prefill_share=0.3"),
    (["--env.no-velocities"], "env.velocities=False"),  # pixels only: no proprio to thin
    (["--env.supersample", "0"], "env.supersample=0"),
    (["--eval-dream", "-1"], "eval_dream=-1"),
    (["--eval-dream", "5", "--planner", "mpc"], "eval_dream=5"),  # the dream is the actor's
    (["--task", "gym/Hopper-v5", "--env.proprio", "--env.no-velocities"], "env.velocities=False"),
])
def test_bad_config_fails_before_any_work_with_the_field_name(flags, message, capsys):
    # Checks inside a nested config run while tyro builds it: tyro prints them and exits.
    with pytest.raises((ValueError, SystemExit)) as error:
        parse(["--preset", "debug", *flags])
    assert message in str(error.value) + capsys.readouterr().err


def test_an_ssm_whose_memory_outlasts_the_training_sequences_is_cautioned_against():
    from experiments.config import cautions

    (note,) = cautions(parse(["--model.backbone.timescale", "None"]))  # an unbounded SSM, 64-step sequences
    assert "model.backbone.timescale=None" in note and "--model.backbone.timescale 16" in note
    assert "40 steps" in cautions(parse(["--model.backbone.timescale", "40"]))[0]
    assert cautions(parse(["--model.backbone.timescale", "32"])) == []  # half the sequence: a state reaches 86% of its response within it
    assert "--model.backbone.timescale 64" in cautions(parse(["--length", "256", "--model.backbone.timescale", "200"]))[0]
    assert cautions(parse([])) == []  # the small preset bounds it


def test_the_presets_length_relative_timescale_resolves_for_every_backbone_kind():
    from flax import nnx

    from embodied.worldmodel.backbones import BackboneConfig, make_backbone
    from experiments.config import PRESETS, resolve

    assert PRESETS["small"].model.backbone.timescale == "auto"
    assert parse([]).model.backbone.timescale == 16  # a quarter of the 64-step sequences, recorded as a number
    assert parse(["--length", "256", "--batch", "4"]).model.backbone.timescale == 64
    assert parse(["--model.backbone.kind", "gru"]).model.backbone.timescale is None  # no decay to bound: the preset still works
    assert parse(["--model.backbone.kind", "transformer"]).model.backbone.timescale is None
    assert parse(["--model.backbone.timescale", "None"]).model.backbone.timescale is None  # an explicit choice stands
    assert resolve(resolve(PRESETS["small"])) == resolve(PRESETS["small"])
    with pytest.raises(ValueError, match="timescale='auto'.*resolve it first"):
        make_backbone(BackboneConfig(dim=8, state=4, layers=1, timescale="auto"), rngs=nnx.Rngs(0))


def test_the_small_preset_acts_on_cartpole_every_8_steps_unless_told_otherwise():
    for argv in ([], ["--task", "dmc/cartpole-balance"], ["--seed", "3", "--task", "dmc/cartpole-swingup"]):
        config = parse(argv)
        assert (config.env.action_repeat, config.train_ratio) == (8, 440.0), argv
    assert parse(["--env.action-repeat", "2", "--train-ratio", "96"]).env.action_repeat == 2  # a flag overrides it
    assert parse(["--env.action-repeat", "None"]).env.action_repeat is None  # the suite's own, as before
    for argv in (["--task", "dmc/cartpole-swingup_sparse"], ["--task", "dmc/cheetah-run"]):
        config = parse(argv)
        assert (config.env.action_repeat, config.train_ratio) == (None, 96.0), argv
    for preset in ("v3-small", "debug"):  # DreamerV3's choices, and the tests' preset, keep the suite's repeat
        assert parse(["--preset", preset, "--task", "dmc/cartpole-swingup"]).env.action_repeat is None
    assert parse(["--task", "mjx/cartpole-swingup"]).loop == "compiled"


def test_unknown_field_is_rejected():
    with pytest.raises(SystemExit):
        parse(["--preset", "debug", "--agent.horizonn", "3"])


def test_evaluation_makes_the_task_as_the_run_recorded_it(run, tmp_path):
    # evaluate, imagine and probe_features rebuild the task from config.json: an anti-aliased or
    # velocity-free run is evaluated on the observations it was trained on.
    from experiments.config import recorded_env

    run, _ = run
    assert recorded_env(run) == {"action_repeat": None, "time_limit": 50, "velocities": True, "supersample": 1}  # the debug preset's
    config = json.loads((run / "config.json").read_text())
    config["env"].update(supersample=4, velocities=False)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert recorded_env(tmp_path / "checkpoints") == {"action_repeat": None, "time_limit": 50, "velocities": False, "supersample": 4}
