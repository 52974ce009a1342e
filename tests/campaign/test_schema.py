"""The published JSON Schemas of campaign and link files, checked with a validator that is not the project's own
(``jsonschema``, Draft 2020-12): they accept the shipped files, refuse unknown keys, and are what the code generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megbed.megwire.safe_yaml import load_yaml_file
from megbed.testbed.cli.campaign import schema_text
from megbed.testbed.cli.main import main

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[2]
CAMPAIGNS = REPO / "campaigns"
CAMPAIGN_YAMLS = sorted(CAMPAIGNS.glob("*.yaml"))
LINK_YAMLS = sorted((CAMPAIGNS / "links").glob("*.yaml"))


def _validator(name: str):
    schema = json.loads((CAMPAIGNS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(("name", "link"), [("campaign.schema.json", False), ("link.schema.json", True)])
def test_committed_schema_is_the_generated_one(name, link, capsys, tmp_path):
    committed = (CAMPAIGNS / name).read_text(encoding="utf-8")
    assert committed == schema_text(link), f"regenerate: megbed campaign schema {'--link ' if link else ''}--out {name}"
    args = ["campaign", "schema"] + (["--link"] if link else [])
    assert main(args) == 0 and capsys.readouterr().out == committed
    assert main([*args, "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / name).read_text(encoding="utf-8") == committed


@pytest.mark.parametrize("path", CAMPAIGN_YAMLS, ids=lambda p: p.name)
def test_schema_accepts_the_shipped_campaigns(path):
    assert path.read_text(encoding="utf-8").startswith("# yaml-language-server: $schema=campaign.schema.json\n")
    assert list(_validator("campaign.schema.json").iter_errors(load_yaml_file(path))) == []


@pytest.mark.parametrize("path", LINK_YAMLS, ids=lambda p: p.name)
def test_schema_accepts_the_shipped_links(path):
    assert path.read_text(encoding="utf-8").startswith("# yaml-language-server: $schema=../link.schema.json\n")
    assert list(_validator("link.schema.json").iter_errors(load_yaml_file(path))) == []


def _error_paths(validator, data) -> set[str]:
    return {"/".join(map(str, e.absolute_path)) + ":" + e.validator for e in validator.iter_errors(data)}


def test_schema_rejects_unknown_keys_and_bad_values():
    campaign = _validator("campaign.schema.json")
    spec = load_yaml_file(CAMPAIGNS / "default.yaml")
    assert not campaign.is_valid({**spec, "repetition": 2})  # a typo of `repetitions`
    assert not campaign.is_valid({**spec, "grid": {**spec["grid"], "merge_ratios": [0.5]}})
    assert not campaign.is_valid({**spec, "grid": {**spec["grid"], "merge_ratio": [0.9]}})  # beta above the cap
    assert not campaign.is_valid({**spec, "schemes": ["meg", "edge"]})
    assert not campaign.is_valid({**spec, "nodes": "remote"})
    assert not campaign.is_valid({k: v for k, v in spec.items() if k != "grid"})  # the grid is required
    # Scalars stand for one-item lists and `nodes` is "local" or a mapping, as the validator reads them.
    assert campaign.is_valid({**spec, "seeds": 3, "nodes": {"es": "tcp://a:1", "ue": ["tcp://b:2"]}})
    link = _validator("link.schema.json")
    assert not link.is_valid({"mode": "shannon", "bandwith_hz": 1e6})
    assert not link.is_valid({"process": {"d_mn_m": 3}})
    assert not link.is_valid({"mcs": 1}) and link.is_valid({"mcs": "auto"}) and link.is_valid({"mcs": 9})
