"""Campaign datasets -> the cost model: what is read, and clear errors for datasets that cannot be used."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from megbed.testbed.policy.costmodel import MeasuredCostModel
from megbed.testbed.policy.data import PolicyDatasetError, read_campaign_rows, request_table
from megbed.testing.parametric_campaign import SyntheticCampaign, synthetic_rows, write_synthetic_campaign


def _write(tmp_path, df: pd.DataFrame):
    (tmp_path / "dataset").mkdir(parents=True, exist_ok=True)
    df.to_parquet(tmp_path / "dataset" / "part-00000.parquet", index=False)
    (tmp_path / "manifest.json").write_text(json.dumps({"run_id": "t", "schema_version": "1.0"}))
    return tmp_path


def test_request_table_keeps_successful_meg_requests(synthetic_run):
    rows = read_campaign_rows(synthetic_run)
    table = request_table(rows)
    e2e = rows[(rows.stage == "end_to_end") & (rows.scheme == "meg")]
    assert len(table) == (e2e.status == "ok").sum() and len(table) < len(e2e)  # failed ones dropped
    assert set(table.n_steps) == {4, 8, 12} and set(table.merge_ratio) == {0.0, 0.375, 0.75}
    # The split of latency is consistent: airtime comes from the channel's link rows.
    assert np.all(table.airtime_s > 0) and np.all(table.airtime_s < table.latency_s)
    assert np.allclose(table.energy_j, e2e.set_index("request_id").loc[table.request_id, "energy_mj_total"] / 1e3)
    assert table.snr_db.notna().all()


def test_energy_scope_ue_sums_the_ue_rows(synthetic_run):
    rows = read_campaign_rows(synthetic_run)
    table = request_table(rows, energy_scope="ue")
    rid = table.request_id.iloc[0]
    expect = rows[(rows.request_id == rid) & (rows.node == "ue")].energy_mj_total.sum() / 1e3
    assert table.energy_j.iloc[0] == pytest.approx(expect)


def test_missing_columns_named(tmp_path):
    df = synthetic_rows(SyntheticCampaign(n_steps=(4, 8), merge_ratios=(0.0, 0.5), distances_m=(200.0,),
                                          repetitions=2)).drop(columns=["merge_ratio"])
    with pytest.raises(PolicyDatasetError, match="merge_ratio"):
        MeasuredCostModel.from_run_dir(_write(tmp_path, df))


def test_missing_required_schema_column_is_a_schema_error(tmp_path):
    df = synthetic_rows(SyntheticCampaign(n_steps=(4, 8), merge_ratios=(0.0, 0.5), distances_m=(200.0,),
                                          repetitions=2)).drop(columns=["latency_s"])
    with pytest.raises(PolicyDatasetError, match="latency_s"):
        MeasuredCostModel.from_run_dir(_write(tmp_path, df))


def test_empty_dataset(tmp_path):
    df = synthetic_rows(SyntheticCampaign(n_steps=(4, 8), merge_ratios=(0.0, 0.5), distances_m=(200.0,),
                                          repetitions=1)).iloc[0:0]
    with pytest.raises(PolicyDatasetError, match="empty"):
        MeasuredCostModel.from_run_dir(_write(tmp_path, df))


def test_no_dataset_parts(tmp_path):
    (tmp_path / "dataset").mkdir()
    with pytest.raises(PolicyDatasetError, match="part"):
        MeasuredCostModel.from_run_dir(tmp_path)
    with pytest.raises(PolicyDatasetError, match="does not exist"):
        MeasuredCostModel.from_run_dir(tmp_path / "nowhere")


def test_only_failed_requests(tmp_path):
    run = write_synthetic_campaign(tmp_path, SyntheticCampaign(n_steps=(4, 8), merge_ratios=(0.0, 0.5),
                                                               distances_m=(200.0,), repetitions=2,
                                                               failed_fraction=1.0, include_baselines=False))
    with pytest.raises(PolicyDatasetError, match="no successful"):
        MeasuredCostModel.from_run_dir(run)


def test_single_grid_point(tmp_path):
    run = write_synthetic_campaign(tmp_path, SyntheticCampaign(n_steps=(8,), merge_ratios=(0.5,),
                                                               distances_m=(250.0,), repetitions=4))
    with pytest.raises(PolicyDatasetError, match="single"):
        MeasuredCostModel.from_run_dir(run)


def test_single_value_of_one_action_dimension(tmp_path):
    run = write_synthetic_campaign(tmp_path, SyntheticCampaign(n_steps=(4, 8, 12), merge_ratios=(0.5,),
                                                               distances_m=(250.0,), repetitions=2))
    with pytest.raises(PolicyDatasetError, match="merge_ratio"):
        MeasuredCostModel.from_run_dir(run)


def test_incomplete_grid_names_the_missing_cell(tmp_path):
    df = synthetic_rows(SyntheticCampaign(n_steps=(4, 8), merge_ratios=(0.0, 0.5), distances_m=(200.0,),
                                          repetitions=2, include_baselines=False))
    df = df[~((df.n_steps == 8) & (df.merge_ratio == 0.5))]
    with pytest.raises(PolicyDatasetError, match=r"n_steps=8, merge_ratio=0\.5"):
        MeasuredCostModel.from_run_dir(_write(tmp_path, df))


def test_unchosen_configuration_that_varies_needs_fixing(tmp_path):
    df = synthetic_rows(SyntheticCampaign(n_steps=(4, 8), merge_ratios=(0.0, 0.5), distances_m=(200.0,),
                                          repetitions=4, include_baselines=False))
    df["tome_ratio_es"] = np.where(df.repetition % 2 == 0, 0.0, 0.5)
    run = _write(tmp_path, df)
    with pytest.raises(PolicyDatasetError, match="tome_ratio_es"):
        MeasuredCostModel.from_run_dir(run)
    model = MeasuredCostModel.from_run_dir(run, fixed={"tome_ratio_es": 0.5})
    assert model.describe()["requests"] == 8
    # ... or the policy chooses it
    model = MeasuredCostModel.from_run_dir(run, extra_action_columns=("tome_ratio_es",))
    assert [a.name for a in model.action_axes] == ["n_steps", "merge_ratio", "tome_ratio_es"]


def test_energy_limit_without_valid_energy(tmp_path):
    from megbed.testbed.policy.env import make_meg_env

    df = synthetic_rows(SyntheticCampaign(n_steps=(4, 8), merge_ratios=(0.0, 0.5), distances_m=(200.0,),
                                          repetitions=2, include_baselines=False))
    df["energy_valid"] = False
    df["energy_invalid_reason"] = "no probe"
    run = _write(tmp_path, df)
    env = make_meg_env(run, channel="dataset")
    assert env.cost_names == ("latency_s",)  # energy dropped by default
    with pytest.raises(PolicyDatasetError, match="energy"):
        make_meg_env(run, channel="dataset", costs=("latency_s", "energy_j"))
