"""End to end on this machine: a tiny random-weight SD-1.5-shaped model, ES + channel broker + UE as separate
processes on 127.0.0.1, the smoke campaign (``campaigns/smoke.yaml``: MEG / CEG / UE-local, the hybrid split, both UE
decoders); the dataset and manifest must validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from megbed.measurements.dataset import read_dataset
from megbed.measurements.manifest import read_manifest
from megbed.measurements.schema import validate
from megbed.testbed.campaign.baselines import scheme_summary
from megbed.testbed.campaign.local import broker_available
from megbed.testbed.campaign.runner import CampaignRunner
from megbed.testbed.campaign.spec import read_spec_yaml, validate_spec

SMOKE = Path(__file__).resolve().parents[2] / "campaigns" / "smoke.yaml"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from megbed.testing.random_weight_models import add_stand_in_decoder, build_tiny_model

    model = build_tiny_model(tmp_path_factory.mktemp("model") / "sd15", "sd15", sample_size=8)
    add_stand_in_decoder(model)  # its images differ from the base decoder's
    return model


def test_tiny_campaign_over_processes_yields_valid_dataset_and_manifest(tmp_path, tiny_model):
    # The shipped smoke campaign, its model swapped for the tiny one.
    data = read_spec_yaml(SMOKE) | {"name": "tiny", "model": str(tiny_model)}
    spec = validate_spec(data, base_dir=SMOKE.parent, source=str(SMOKE))
    run = tmp_path / "run"
    summary = CampaignRunner(spec, run, progress=False).run()
    # MEG 2k x 2beta x 2 decoders, CEG (no UE decoder), UE-local x 2 decoders
    assert summary.failed == 0 and summary.ok == len(spec.requests()) == 11
    df = read_dataset(run)
    validate(df)
    e2e = df[df.stage == "end_to_end"]
    assert (e2e.status == "ok").all() and e2e.q_mse.notna().all()
    # Every row says which UE decoder ran; the distilled one changes the image at the same configuration.
    assert e2e.loc[e2e.scheme == "ceg", "decoder"].isna().all()
    assert set(e2e.loc[e2e.scheme != "ceg", "decoder"]) == {"base", "distilled"}
    assert df.loc[df.scheme == "meg", "decoder"].notna().all()
    by_dec = e2e[e2e.scheme == "ue_local"].set_index("decoder")["q_mse"]
    assert by_dec["distilled"] > by_dec["base"]  # the shifted bias moves it away from the base reference
    # The hybrid split (k=1 < N=2) denoises on the UE too.
    hybrid = df[(df.scheme == "meg") & (df.es_steps == 1)]
    assert {("es", "denoise"), ("ue", "denoise"), ("ue", "text_encode")} <= set(zip(hybrid.node, hybrid.stage,
                                                                                      strict=True))
    # UE-local and CEG run the reference's pipeline with fewer steps; MEG at beta = 0.5 changes the image.
    assert (e2e.q_psnr_db > 0).all()
    if broker_available():
        link = df[df.stage == "link"]
        assert link.ch_airtime_s.notna().all() and (link.ch_airtime_s > 0).all()
        assert (link.energy_method == "modeled").all()
    manifest = read_manifest(run)
    assert manifest["schema_version"] and manifest["config_hash"] == spec.config_hash()
    assert manifest["nodes"]["es"]["info"]["engine"]["engine"] == "ldm"
    assert {"es", "ue"} <= set(manifest["clock_sync"])
    table = scheme_summary(run)
    assert set(table["schemes"]) == {"meg", "ceg", "ue_local"} and "ceg" in table["meg_vs"]
