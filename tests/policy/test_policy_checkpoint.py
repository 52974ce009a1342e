"""Checkpoints round-trip through safetensors + JSON, and a resumed run continues exactly like an uninterrupted one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from known_optimum import KnownOptimumCMDP

from megbed.testbed.policy.api import make_learner
from megbed.testbed.policy.checkpoint import CheckpointError, LearnedPolicy
from megbed.testbed.policy.limits import Constraints
from megbed.testbed.policy.trainer import Trainer, TrainOptions

TINY = {
    "cvpo": {"hidden": (16, 16), "batch_size": 32, "sample_actions": 8, "buffer_size": 500, "estep_iters": 2,
             "mstep_iters": 2, "update_per_step": 0.25},
    "ppo-lag": {"hidden": (16, 16), "batch_size": 16, "repeat": 2},
}


def _trainer(algo, out, steps, extra=None):
    env = KnownOptimumCMDP(episode_length=8)
    cons = Constraints.from_mapping(("cost",), {"cost": 0.25}, 8)
    learner = make_learner(algo, 1, 2, cons, seed=3, overrides={**TINY[algo], **(extra or {})})
    opts = TrainOptions(total_steps=steps, seed=3, episodes_per_collect=2, eval_every=0, eval_episodes=2,
                        checkpoint_every=1, progress=False)
    return Trainer(learner, env, cons, out, opts, env_spec={"type": "gym", "entry": "known_optimum:KnownOptimumCMDP",
                                                           "kwargs": {"episode_length": 8}})


FEEDBACK = {"cost_target": 0.95, "cost_reference": "collected", "cost_slack_gain": 0.5, "dual_avg": 0.2}


@pytest.mark.parametrize("algo,extra", [("cvpo", None), ("ppo-lag", None), ("cvpo", FEEDBACK)],
                         ids=["cvpo", "ppo-lag", "cvpo-feedback"])
def test_resume_continues_exactly(tmp_path, algo, extra):
    straight = _trainer(algo, tmp_path / "a", 64, extra)
    straight.run()
    first = _trainer(algo, tmp_path / "b", 32, extra)
    first.run()
    resumed = _trainer(algo, tmp_path / "b", 64, extra)
    resumed.run(resume=True)
    assert resumed.iteration == straight.iteration == 4
    a, b = straight.learner.state_tensors(), resumed.learner.state_tensors()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if extra:  # the reference policy and its measured cost are set afresh by each collection
        la, lb = straight.learner, resumed.learner
        assert np.array_equal(la.measured_cost, lb.measured_cost) and np.isfinite(la.measured_cost).all()
        assert torch.equal(la.cost_thresholds, lb.cost_thresholds)
    log_a = (tmp_path / "a" / "train_log.csv").read_text().splitlines()
    log_b = (tmp_path / "b" / "train_log.csv").read_text().splitlines()
    strip = [[c for i, c in enumerate(line.split(",")) if i != log_a[0].split(",").index("wall_s")] for line in log_a]
    strip_b = [[c for i, c in enumerate(line.split(",")) if i != log_b[0].split(",").index("wall_s")] for line in log_b]
    assert strip == strip_b  # same rows (minus wall time), none duplicated by the resume
    assert (tmp_path / "b" / "train_log.parquet").is_file()
    meta = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert meta["iteration"] == 4 and meta["env_steps"] == 64
    # no pickle anywhere in a run folder
    for f in (tmp_path / "b").rglob("*"):
        assert f.suffix not in (".pt", ".pth", ".pkl", ".pickle")


def test_resume_after_a_critic_warm_up_writes_the_log(tmp_path):
    """Warm-up rows have no actor statistics: read back from the CSV they are missing values, not text, so the
    Parquet log of the resumed run still writes (make run's train-until-within-limits resumes like this)."""
    first = _trainer("cvpo", tmp_path, 32, extra={"warmup_steps": 16})
    first.run()
    resumed = _trainer("cvpo", tmp_path, 64, extra={"warmup_steps": 16})
    resumed.run(resume=True)
    import pandas as pd

    log = pd.read_parquet(tmp_path / "train_log.parquet")
    assert len(log) == 4 and log["actor_loss"].dtype.kind == "f"
    assert log["actor_loss"].isna().iloc[0] and log["actor_loss"].notna().iloc[-1]


def test_fresh_run_refuses_an_existing_one_and_resume_checks_the_setup(tmp_path):
    _trainer("cvpo", tmp_path, 16).run()
    with pytest.raises(CheckpointError, match="already"):
        _trainer("cvpo", tmp_path, 32).run()
    other = _trainer("ppo-lag", tmp_path, 32)
    with pytest.raises(CheckpointError, match="cvpo"):
        other.run(resume=True)


@pytest.mark.parametrize("extra", [{}, {"mu_max": 0.3}], ids=["unbounded", "bounded-mean"])
def test_exported_policy_acts_like_the_learner(tmp_path, extra):
    tr = _trainer("cvpo", tmp_path, 16, extra)
    tr.run()
    policy = LearnedPolicy.load(tmp_path)  # finds policy/ inside the run folder
    assert policy.meta["mu_max"] == extra.get("mu_max") and policy.actor.mu_max == extra.get("mu_max")
    assert policy.meta["constraints"]["limits"] == {"cost": 0.25}
    assert policy.meta["env"]["entry"] == "known_optimum:KnownOptimumCMDP"
    for x in np.linspace(-1, 1, 5):
        obs = np.array([x], dtype=np.float32)
        raw, _ = tr.learner.act(obs, deterministic=True)
        assert np.allclose(policy.action(obs), tr.scaler.to_env(tr.learner.unit_action(raw)))
        assert ((policy.action(obs) >= 0) & (policy.action(obs) <= 1)).all()


def test_bad_policy_folder(tmp_path):
    with pytest.raises(CheckpointError, match="policy.json"):
        LearnedPolicy.load(tmp_path)
    (tmp_path / "policy.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="megbed-policy"):
        LearnedPolicy.load(tmp_path)
