"""``megbed train`` / ``megbed evaluate`` end to end (tiny sizes), live evaluation through a LiveTestbed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fake_testbed import FakeTestbed
from policy_helpers import AR1Channel

from megbed.testbed.cli.main import main
from megbed.testbed.policy.baselines import FixedPolicy
from megbed.testbed.policy.env import make_meg_env
from megbed.testbed.policy.evaluate import run_episodes
from megbed.testbed.policy.live import LiveEnv

TINY_CVPO = ["--set", "hidden=16,16", "--set", "batch_size=32", "--set", "sample_actions=8",
             "--set", "buffer_size=2000", "--set", "episodes_per_collect=2"]


def test_train_on_a_gym_env_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--env", "known_optimum:KnownOptimumCMDP", "--env-kwargs", '{"episode_length": 8}',
            "--limit", "cost=0.5", "--steps", "32", "--seed", "1", "--out", str(out), "--no-progress",
            "--eval-episodes", "2", *TINY_CVPO]
    assert main(args) == 0
    for f in ("checkpoint/state.json", "checkpoint/state.safetensors", "policy/policy.json",
              "policy/policy.safetensors", "train_log.csv", "train_log.parquet", "train_summary.json"):
        assert (out / f).is_file(), f
    log = pd.read_parquet(out / "train_log.parquet")
    assert {"reward_mean", "cost_mean_cost", "cost_ratio_cost", "lambda_cost", "eta", "eval_reward_mean"} <= set(log)
    assert main(args) == 2 and "already" in capsys.readouterr().err  # no silent overwrite
    assert main([*args[:args.index("--steps") + 1], "64", *args[args.index("--steps") + 2:], "--resume"]) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["env_steps"] == 64


def test_train_and_evaluate_on_a_dataset(synthetic_run, tmp_path, capsys):
    out = tmp_path / "ppo"
    assert main(["train", "--dataset", str(synthetic_run), "--algo", "ppo-lag", "--limit", "latency_s=2.8",
                 "--limit", "energy_j=300", "--steps", "64", "--episode-length", "16", "--channel", "dataset",
                 "--out", str(out), "--no-progress", "--eval-episodes", "1", "--set", "episodes_per_collect=2",
                 "--set", "hidden=16,16"]) == 0
    spec = json.loads((out / "policy" / "policy.json").read_text())
    assert spec["env"]["type"] == "meg" and spec["constraints"]["limits"] == {"latency_s": 2.8, "energy_j": 300.0}
    ev = tmp_path / "eval"
    assert main(["evaluate", str(out), "oracle", "fixed:max_quality", "fixed:N=8,beta=0.375", "--episodes", "2",
                 "--out", str(ev)]) == 0  # env and limits come from the trained policy
    summary = json.loads((ev / "summary.json").read_text())["policies"]
    assert set(summary) == {"ppo-lag:ppo", "oracle", "fixed:max_quality", "fixed:N=8,beta=0.375"}
    assert summary["fixed:max_quality"]["reward_mean"] > summary["oracle"]["reward_mean"]
    outcomes = pd.read_parquet(ev / "outcomes.parquet")
    assert len(outcomes) == 4 * 2 * 16 and {"latency_s", "energy_j", "n_steps", "merge_ratio", "snr_db"} <= set(outcomes)
    assert "oracle" in capsys.readouterr().out


def test_bad_dataset_is_a_clear_cli_error(tmp_path, capsys):
    (tmp_path / "dataset").mkdir()
    assert main(["train", "--dataset", str(tmp_path), "--limit", "latency_s=3", "--steps", "10", "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("megbed: error:") and "no parts" in err and "Traceback" not in err
    assert main(["train", "--dataset", str(tmp_path), "--steps", "10", "--out", str(tmp_path / "o")]) == 2
    assert "--limit" in capsys.readouterr().err
    assert main(["evaluate", "nonsense-policy", "--dataset", str(tmp_path), "--out", str(tmp_path / "e")]) == 2


@pytest.mark.parametrize("flag, value, named", [
    ("--eval-episodes", "0", "eval_episodes"), ("--steps", "-5", "total_steps"), ("--max-wall-s", "-1", "max_wall_s"),
    ("--checkpoint-every", "0", "checkpoint_every"), ("--seed", "-2", "seed"), ("--final-eval-episodes", "0",
                                                                               "final_eval_episodes")])
def test_out_of_range_training_options_are_clear_errors_before_anything_runs(tmp_path, capsys, flag, value, named):
    # --eval-episodes 0 used to train and then die in the first evaluation (KeyError: 'episode'); --steps -5 trained
    # one iteration as if asked for it.
    out = tmp_path / "o"
    assert main(["train", "--env", "megbed.testbed.policy.reference_cmdps:PricedLinkCMDP", "--limit", "cost=0.5",
                 "--out", str(out), "--no-progress", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("megbed: error:") and named in err and value in err and "Traceback" not in err
    assert not out.exists()


def test_train_options_name_every_problem():
    from megbed.testbed.policy.trainer import TrainOptions, TrainOptionsError

    assert TrainOptions(total_steps=1, max_wall_s=3).max_wall_s == 3.0
    with pytest.raises(TrainOptionsError, match="episodes_per_collect.*bogus|bogus.*episodes_per_collect"):
        TrainOptions(total_steps=10, episodes_per_collect=0, bogus=1)
    with pytest.raises(TrainOptionsError, match="torch_threads"):
        TrainOptions(total_steps=10, torch_threads="many")


def test_live_env_runs_any_policy_through_the_testbed_interface(synthetic_run):
    sim = make_meg_env(synthetic_run, channel="dataset", episode_length=8)
    testbed = FakeTestbed(str(synthetic_run))
    live = LiveEnv(testbed, AR1Channel(seed=2), sim.space, episode_length=8)
    records = run_episodes(live, FixedPolicy(live, (8, 0.375)), 2, seed=0)
    assert len(records) == 16 and len(testbed.requests) == 16
    assert {r[:2] for r in testbed.requests} == {(8, 0.375)}
    assert np.allclose(records.snr_db, [r[2] for r in testbed.requests])
    assert {"cost_latency_s", "cost_energy_j", "latency_s"} <= set(records)
    with pytest.raises(TypeError, match="run_request"):
        LiveEnv(object(), AR1Channel(), sim.space)


def test_evaluate_live_from_the_cli(synthetic_run, tmp_path):
    pytest.importorskip("megbed.channel_emu.process")
    ev = tmp_path / "live"
    kwargs = json.dumps({"run_dir": str(synthetic_run)})
    assert main(["evaluate", "fixed:N=12,beta=0", "oracle", "--env", "live", "--testbed", "fake_testbed:FakeTestbed",
                 "--testbed-kwargs", kwargs, "--dataset", str(synthetic_run), "--limit", "latency_s=3",
                 "--episode-length", "4", "--episodes", "1", "--out", str(ev)]) == 0
    outcomes = pd.read_parquet(ev / "outcomes.parquet")
    assert len(outcomes) == 8 and set(outcomes.policy) == {"fixed:N=12,beta=0", "oracle"}
    assert main(["evaluate", "oracle", "--env", "live", "--dataset", str(synthetic_run), "--limit", "latency_s=3",
                 "--out", str(ev)]) == 2  # no binding given: a clear error
