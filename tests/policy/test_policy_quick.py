"""quick_train_and_evaluate: the short run `make run` calls, end to end at tiny sizes."""

from __future__ import annotations

import json

from megbed.testbed.policy.quick import quick_train_and_evaluate


def test_quick_train_and_evaluate(synthetic_run, tmp_path):
    summary = quick_train_and_evaluate(
        synthetic_run, tmp_path / "quick", steps=64, max_wall_s=30, episodes=1, channel="dataset",
        overrides={"hidden": (16, 16), "batch_size": 32, "sample_actions": 8, "episodes_per_collect": 1})
    assert summary["synthetic"] is True and summary["limits_derived"] is True
    assert set(summary["limits"]) == {"latency_s", "energy_j"}
    assert set(summary["policies"]) == {"cvpo", "oracle", "oracle:per_request", "fixed:best_fixed",
                                        "fixed:max_quality"}
    for s in summary["policies"].values():
        assert {"reward_mean", "cost_ratio_latency_s", "cost_ratio_energy_j", "violation"} <= set(s)
    assert summary["train"]["steps"] >= 64 and summary["cvpo_reward_vs_oracle"] > 0
    assert json.loads((tmp_path / "quick" / "summary.json").read_text())["limits"] == summary["limits"]
    assert (tmp_path / "quick" / "train" / "policy" / "policy.json").is_file()
    # the CMDP's terms lead: reward vs the oracle's, each cost vs its limit with a CI, a plain verdict
    lines = summary["summary_lines"]
    assert "of the oracle's" in lines[0] and ("WITHIN LIMITS" in lines[0]) == summary["within_limits"]
    assert any("latency_s" in ln and "vs limit" in ln and "95 % CI" in ln for ln in lines)
    # over its limits with budget left, it trained more than one round
    assert summary["training_rounds"] >= 1 and summary["train"]["budget_s"] == 30


def test_a_campaign_comparing_decoders_trains_on_the_distilled_rows(monkeypatch, tmp_path):
    import pandas as pd

    import megbed.testbed.policy.data as data
    from megbed.testbed.policy.quick import fixed_decoder

    rows = pd.DataFrame({"scheme": ["meg", "meg", "ceg"], "decoder": ["base", "distilled", None]})
    monkeypatch.setattr(data, "read_campaign_rows", lambda run_dir: rows)
    assert fixed_decoder(tmp_path) == {"decoder": "distilled"}
    monkeypatch.setattr(data, "read_campaign_rows", lambda run_dir: rows.iloc[[0, 2]])
    assert fixed_decoder(tmp_path) is None  # one decoder: nothing to fix
