"""The oracle solves the constrained problem exactly on the cost model; fixed schemes do what they say."""

from __future__ import annotations

import numpy as np
import pytest
from policy_helpers import AR1Channel

from megbed.testbed.policy.baselines import FixedPolicy, OraclePolicy, candidate_actions
from megbed.testbed.policy.costmodel import MeasuredCostModel
from megbed.testbed.policy.env import MegEnv
from megbed.testbed.policy.evaluate import run_episodes, summarise
from megbed.testbed.policy.limits import Constraints


@pytest.fixture(scope="module")
def env(synthetic_run):
    model = MeasuredCostModel.from_run_dir(synthetic_run)
    return MegEnv(model, AR1Channel(mean_db=-1.0, sigma_db=3.0, seed=0), episode_length=32)


def _expected(env, oracle, policy_values):
    """Expected reward and cost ratios of a per-state action function over the oracle's state quantiles."""
    qs = np.quantile(oracle.states, (np.arange(256) + 0.5) / 256)
    r, c = [], []
    for s in qs:
        e = env.cost_model.expected(np.array([policy_values(s)]), s)
        r.append(e[env.reward_column][0])
        c.append([e[n][0] / lim for n, lim in zip(oracle.constraints.constrained, oracle.limits, strict=True)])
    return float(np.mean(r)), np.mean(c, axis=0)


def test_cmdp_oracle_is_the_lagrangian_optimum(env):
    cons = Constraints.from_mapping(env.cost_names, {"latency_s": 2.6}, env.episode_length)
    oracle = OraclePolicy(env, cons, mode="cmdp", state_episodes=16)
    assert oracle.expected_cost_ratio["latency_s"] <= 1.0 + 1e-4
    assert oracle.expected_cost_ratio["latency_s"] > 0.97  # the constraint binds
    # Independent check: bisection on the single multiplier over the same states and actions.
    cand = candidate_actions(env)
    qs = np.quantile(oracle.states, (np.arange(256) + 0.5) / 256)
    tabs = [env.cost_model.expected(cand, s) for s in qs]
    r = np.stack([t[env.reward_column] for t in tabs])
    c = np.stack([t["latency_s"] for t in tabs]) / 2.6
    lo, hi = 0.0, 100.0
    for _ in range(60):
        lam = 0.5 * (lo + hi)
        k = np.argmax(r - lam * c, axis=1)
        if c[np.arange(len(k)), k].mean() > 1.0:
            lo = lam
        else:
            hi = lam
    k = np.argmax(r - hi * c, axis=1)
    assert oracle.expected_reward == pytest.approx(r[np.arange(len(k)), k].mean(), abs=2e-3)
    # ... and no constant action meeting the limit does better
    best_fixed = FixedPolicy.parse(env, "best_fixed", cons, oracle.states)
    fr, fc = _expected(env, oracle, lambda s: best_fixed.values)
    assert fc[0] <= 1.0 + 1e-6
    assert oracle.expected_reward >= fr


def test_two_constraints_and_per_request_mode(env):
    cons = Constraints.from_mapping(env.cost_names, {"latency_s": 2.6, "energy_j": 280.0}, env.episode_length)
    oracle = OraclePolicy(env, cons, mode="cmdp", state_episodes=16)
    assert all(v <= 1.0 + 1e-4 for v in oracle.expected_cost_ratio.values())
    per_request = OraclePolicy(env, cons, mode="per_request")
    per_request.states = oracle.states
    pr, pc = _expected(env, oracle, per_request.best_values)
    assert oracle.expected_reward >= pr - 1e-9  # the CMDP optimum bounds the stricter per-request policy
    cand = candidate_actions(env)
    for snr in (-6.0, -1.0, 3.0):
        chosen = per_request.best_values(snr)
        e = env.cost_model.expected(cand, snr)
        ok = (e["latency_s"] <= 2.6) & (e["energy_j"] <= 280.0)
        ec = env.cost_model.expected(np.array([chosen]), snr)
        if ok.any():
            assert ec["latency_s"][0] <= 2.6 + 1e-9 and ec["energy_j"][0] <= 280.0 + 1e-9
            assert ec[env.reward_column][0] == pytest.approx(e[env.reward_column][ok].max())
        else:  # nothing meets both limits: the least-violating action
            worst = np.maximum(e["latency_s"] / 2.6, e["energy_j"] / 280.0)
            assert max(ec["latency_s"][0] / 2.6, ec["energy_j"][0] / 280.0) == pytest.approx(worst.min())


def test_oracle_in_the_environment_meets_the_limits_and_beats_fixed(env):
    cons = Constraints.from_mapping(env.cost_names, {"latency_s": 2.6, "energy_j": 280.0}, env.episode_length)
    oracle = OraclePolicy(env, cons, mode="cmdp", state_episodes=16)
    results = {}
    for policy in (oracle, FixedPolicy.parse(env, "best_fixed", cons, oracle.states),
                   FixedPolicy.parse(env, "max_quality"), FixedPolicy.parse(env, "N=8,beta=0.375")):
        results[policy.name] = summarise(run_episodes(env, policy, 12, seed=1), cons)
    o = results["oracle"]
    assert o["cost_ratio_latency_s"] < 1.04 and o["cost_ratio_energy_j"] < 1.04
    assert o["reward_mean"] > results["fixed:best_fixed"]["reward_mean"]
    mq = results["fixed:max_quality"]
    assert mq["reward_mean"] > o["reward_mean"] and mq["violation"] > 0.1  # best quality, far over the limits
    recs = run_episodes(env, FixedPolicy.parse(env, "N=8,beta=0.375"), 1, seed=0)
    assert set(recs.n_steps) == {8.0} and np.allclose(recs.merge_ratio, 0.375)


def test_fixed_scheme_parsing(env):
    assert FixedPolicy.parse(env, "max_quality").values == (12.0, 0.0)
    assert FixedPolicy.parse(env, "min_cost").values == (4.0, 0.75)
    assert FixedPolicy.parse(env, "n_steps=6, merge_ratio=0.2").values == (6.0, 0.2)
    with pytest.raises(ValueError, match="lacks"):
        FixedPolicy.parse(env, "N=8")


def test_near_and_far_are_the_oracles_actions_at_the_state_quantiles(env):
    from megbed.testbed.policy.quick import _oracle_line

    cons = Constraints.from_mapping(env.cost_names, {"latency_s": 2.6}, env.episode_length)
    oracle = OraclePolicy(env, cons, mode="cmdp", state_episodes=16)
    ends = oracle.near_and_far(quantile=0.1)
    names = env.unwrapped.space.action_names
    for end, q in (("far", 0.1), ("near", 0.9)):
        snr = float(np.quantile(oracle.states, q))
        assert ends[end]["snr_db"] == pytest.approx(snr)
        assert tuple(ends[end][n] for n in names) == pytest.approx(oracle.best_values(snr))
    assert ends["far"]["snr_db"] < ends["near"]["snr_db"]
    line = _oracle_line(ends)
    assert "far (SNR" in line and "near (SNR" in line
    same = all(ends["far"][n] == ends["near"][n] for n in names)
    assert ("the same at both ends" in line) == same
