"""Issue 17: general CVPO defaults on any --env, the CMDP's own threshold, evaluation of any environment."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from megbed.testbed.cli.main import main
from megbed.testbed.policy.api import GENERAL_OVERRIDES, effective_overrides, gym_env_spec, make_learner
from megbed.testbed.policy.evaluate import cmdp_summary_lines, mean_ci95
from megbed.testbed.policy.limits import Constraints
from megbed.testbed.policy.reference_cmdps import PricedLinkCMDP, TwoCostCMDP

ENV = "megbed.testbed.policy.reference_cmdps:PricedLinkCMDP"
TINY = ["--set", "hidden=16,16", "--set", "batch_size=32", "--set", "sample_actions=8", "--set", "buffer_size=2000",
        "--set", "episodes_per_collect=2", "--set", "warmup_steps=16"]


def test_reference_optima_bind_and_satisfy_the_kkt_conditions():
    for cls in (PricedLinkCMDP, TwoCostCMDP):
        opt = cls.constrained_optimum()
        for name, limit in cls.limits.items():
            assert opt["multipliers"][name] > 0.1  # binding
            assert opt["costs"][name] == pytest.approx(limit, rel=1e-4)
        # no feasible perturbation of the optimal policy's multipliers does better: a slightly cheaper
        # Lagrangian policy earns less, a slightly dearer one breaks a limit
        xs = (np.arange(4000) + 0.5) / 4000
        lam = np.array([opt["multipliers"][n] for n in cls.cost_names])
        for factor in (0.9, 1.1):
            u = cls._best_action(xs, lam * factor)
            r, c = cls.reward(u).mean(), cls.costs(xs, u).mean(0)
            limits = np.array([cls.limits[n] for n in cls.cost_names])
            assert (c > limits).any() if factor < 1 else r < opt["reward"]


def test_threshold_rule_stationary_by_default_fsrl_on_the_paper_preset():
    spec = gym_env_spec(ENV)
    cons = Constraints.from_mapping(("cost",), {"cost": 0.35}, 64)
    auto = make_learner("cvpo", 1, 2, cons, 0, effective_overrides("cvpo", spec, None, "auto"))
    paper = make_learner("cvpo", 1, 2, cons, 0, effective_overrides("cvpo", spec, None, "paper"))
    # the CMDP's constraint: mean cost per step = limit -> Q_c = limit / (1 - gamma) in limit units
    assert auto.cfg.threshold_rule == "stationary"
    assert auto.qc_threshold == pytest.approx(1.0 / (1.0 - auto.cfg.gamma))
    # FSRL's rule: (1 - gamma^T) of it, 0.858 at gamma 0.97, T 64
    assert paper.cfg.threshold_rule == "fsrl"
    assert paper.qc_threshold / (1.0 / (1.0 - 0.97)) == pytest.approx(1 - 0.97**64) == pytest.approx(0.858, abs=1e-3)
    # a constant per-step cost at the limit, discounted through truncation (the request stream goes on), sums to
    # the stationary threshold
    steps = np.arange(5000)
    assert float(np.sum(0.97**steps)) == pytest.approx(cons.q_threshold(0.97, "stationary"), rel=1e-6)
    # selectable by config flag
    flagged = make_learner("cvpo", 1, 2, cons, 0, effective_overrides("cvpo", spec, {"threshold_rule": "fsrl"}))
    assert flagged.qc_threshold == pytest.approx(paper.qc_threshold)


def test_warmup_and_bounds_apply_on_any_env(tmp_path):
    out = tmp_path / "auto"
    assert main(["train", "--env", ENV, "--env-kwargs", '{"episode_length": 8}', "--limit", "cost=0.35",
                 "--steps", "32", "--out", str(out), "--no-progress", "--eval-episodes", "1",
                 "--final-eval-episodes", "2", *TINY[:-2]]) == 0
    cfg = json.loads((out / "policy" / "policy.json").read_text())["config"]
    for key, value in GENERAL_OVERRIDES["cvpo"].items():
        assert cfg[key] == value, key
    assert cfg["warmup_steps"] > 0 and cfg["mu_max"] == 3.0 and cfg["log_std_max"] == -1.0
    paper = tmp_path / "paper"
    assert main(["train", "--env", ENV, "--env-kwargs", '{"episode_length": 8}', "--limit", "cost=0.35",
                 "--steps", "16", "--out", str(paper), "--no-progress", "--eval-episodes", "1", "--preset", "paper",
                 "--final-eval-episodes", "2", *TINY[:-2]]) == 0
    cfg = json.loads((paper / "policy" / "policy.json").read_text())["config"]
    assert cfg["warmup_steps"] == 0 and cfg["mu_max"] is None and cfg["threshold_rule"] == "fsrl"
    assert cfg["log_std_max"] == 2.0 and cfg["reward_norm"] is False and cfg["update_per_step"] == 0.2
    # FSRL's absolute Q_c threshold on the paper preset; the collected-policy reference by default on any --env
    assert cfg["cost_reference"] == "threshold" and cfg["cost_target"] == 1.0 and cfg["aim_mean_action"] is False
    assert GENERAL_OVERRIDES["cvpo"]["cost_reference"] == "collected"
    meg = effective_overrides("cvpo", {"type": "meg"}, None)
    assert meg["cost_reference"] == "threshold" and meg["cost_target"] == 1.0  # MEG keeps what it was validated with


def test_std_cap_keeps_the_evaluated_mean_action_near_the_trained_stochastic_policy():
    """The learner meets the limit with its stochastic policy, the evaluation (and the optimum) uses the mean action:
    the default cap on the std keeps the two executed actions close wherever the mean is; MEG keeps its own cap."""
    import torch

    spec = gym_env_spec(ENV)
    cons = Constraints.from_mapping(("cost",), {"cost": 0.35}, 64)
    gaps = {}
    for preset in ("auto", "paper"):
        agent = make_learner("cvpo", 1, 2, cons, 0, effective_overrides("cvpo", spec, None, preset))
        with torch.no_grad():
            agent.actor.sigma.bias.fill_(5.0)  # a std head driven far above any cap
            _, std = agent.actor(torch.zeros(1, 1))
        assert float(std.max()) == pytest.approx(np.exp(agent.cfg.log_std_max), rel=1e-5)
        # executed mean action of the stochastic policy vs the deterministic one, over interior means of u
        mu = torch.linspace(-2.0, 2.0, 81)[:, None]
        eps = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0))
        stochastic = torch.tanh(mu.T + float(std.max()) * eps).mean(0)
        gaps[preset] = float((stochastic - torch.tanh(mu[:, 0])).abs().max()) / 2  # in units of the [0, 1] box
    assert gaps["auto"] < 0.03 < 0.2 < gaps["paper"]
    meg = effective_overrides("cvpo", {"type": "meg"}, None)
    assert meg["log_std_max"] == 0.5 and GENERAL_OVERRIDES["cvpo"]["log_std_max"] == -1.0


def test_evaluate_any_env_round_trip_with_the_policys_episode_length(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--env", ENV, "--env-kwargs", '{"episode_length": 8}', "--limit", "cost=0.35",
                 "--steps", "32", "--out", str(run), "--no-progress", "--eval-episodes", "1",
                 "--final-eval-episodes", "3", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "final evaluation of cvpo" in printed and "of the oracle's" in printed and "vs limit 0.35" in printed
    ev = tmp_path / "eval"
    # no --episode-length, and the class's own default (64) differs: T comes from the policy (8)
    assert main(["evaluate", str(run), "--env", ENV, "--episodes", "5", "--out", str(ev)]) == 0
    printed = capsys.readouterr().out
    outcomes = pd.read_parquet(ev / "outcomes.parquet")
    assert len(outcomes) == 5 * 8 and outcomes.groupby("episode").size().eq(8).all()
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["episode_length"] == 8
    assert summary["oracle_reward_mean"] == pytest.approx(PricedLinkCMDP.constrained_optimum()["reward"])
    pol = summary["policies"]["cvpo:run"]
    assert pol["cost_ci_low_cost"] <= pol["cost_mean_cost"] <= pol["cost_ci_high_cost"]
    assert "of the oracle's" in printed and ("within limit" in printed or "over by" in printed)
    assert "per-request share over the per-request limit" in printed
    # the default episode count is 50
    from megbed.testbed.cli.main import build_parser

    assert build_parser().parse_args(["evaluate", "x", "--out", "y"]).episodes == 50
    assert main(["evaluate", str(run), "--env", "nonsense", "--out", str(ev)]) == 2


def test_cmdp_summary_says_within_or_over():
    cons = Constraints.from_mapping(("latency_s", "energy_j"), {"latency_s": 3.0, "energy_j": 100.0}, 64)
    s = {"reward_mean": 6.0, "episodes": 50, "cost_mean_latency_s": 2.9, "cost_ci_low_latency_s": 2.8,
         "cost_ci_high_latency_s": 3.0, "cost_mean_energy_j": 113.0, "cost_ci_low_energy_j": 110.0,
         "cost_ci_high_energy_j": 116.0, "episode_violation_rate": 0.5, "request_violation_rate": 0.6}
    lines = cmdp_summary_lines("cvpo", s, cons, oracle_reward=6.2)
    assert lines[0].startswith("cvpo: reward 6 per request (96.8 % of the oracle's 6.2), NOT WITHIN LIMITS")
    assert "latency_s 2.9 vs limit 3" in lines[1] and "within limit" in lines[1]
    assert "energy_j 113 vs limit 100" in lines[2] and "over by 13.0 %" in lines[2]
    lo, hi = mean_ci95([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 - 4.303 / np.sqrt(3), rel=1e-3) and hi == pytest.approx(2 + 4.303 / np.sqrt(3), rel=1e-3)


def test_train_on_a_campaign_that_compared_decoders_picks_the_policy_steps_decoder(tmp_path, capsys):
    from megbed.testing.parametric_campaign import SyntheticCampaign, synthetic_rows

    df = synthetic_rows(SyntheticCampaign(n_steps=(4, 8), merge_ratios=(0.0, 0.5), distances_m=(200.0,),
                                          repetitions=4, include_baselines=False))
    df["decoder"] = np.where(df.repetition % 2 == 0, "base", "auto")
    (tmp_path / "run" / "dataset").mkdir(parents=True)
    df.to_parquet(tmp_path / "run" / "dataset" / "part-00000.parquet", index=False)
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"run_id": "t", "schema_version": "1.0"}))
    out = tmp_path / "out"
    assert main(["train", "--dataset", str(tmp_path / "run"), "--limit", "latency_s=3", "--steps", "16",
                 "--episode-length", "8", "--channel", "dataset", "--out", str(out), "--no-progress",
                 "--eval-episodes", "1", "--final-eval-episodes", "2", *TINY]) == 0
    assert "training on decoder=auto, the one its policy step uses" in capsys.readouterr().out
    assert json.loads((out / "policy" / "policy.json").read_text())["env"]["fixed"] == {"decoder": "auto"}


def test_evaluate_live_on_a_campaigns_local_nodes(synthetic_run, tmp_path, capsys):
    """`megbed evaluate --env live --campaign SPEC.yaml`: local ES + broker + UE (synthetic engine) as `make run`
    starts them; the live requests are a dataset in --out."""
    pytest.importorskip("megbed.channel_emu.process")
    from megbed.measurements.dataset import read_dataset

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}")
    spec = tmp_path / "c.yaml"
    spec.write_text("model: model\nprompts: [a cat]\nimage: {height_px: 64, width_px: 64}\n"
                    "grid: {n_steps: [4], distance_m: [200]}\nreference: {n_steps: 4}\n")
    ev = tmp_path / "live"
    assert main(["evaluate", "fixed:N=4,beta=0.375", "--env", "live", "--campaign", str(spec), "--engine",
                 "synthetic", "--dataset", str(synthetic_run), "--limit", "latency_s=30", "--episode-length", "2",
                 "--episodes", "1", "--out", str(ev)]) == 0
    outcomes = pd.read_parquet(ev / "outcomes.parquet")
    assert len(outcomes) == 2 and (outcomes.n_steps == 4).all()
    rows = read_dataset(ev)
    assert {"live-000000", "live-000001"} <= set(rows.request_id)
    assert (ev / "manifest.json").is_file()
    assert "latency_s" in capsys.readouterr().out
    assert main(["evaluate", "oracle", "--env", "live", "--campaign", str(tmp_path / "missing.yaml"),
                 "--dataset", str(synthetic_run), "--limit", "latency_s=3", "--out", str(ev)]) == 2
