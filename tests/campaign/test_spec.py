from __future__ import annotations

import textwrap

import pytest

from megbed.testbed.campaign.spec import SpecError, load_spec, validate_spec


def _model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    return model


GOOD = {
    "name": "t",
    "model": "model",
    "prompts": ["a cat", "a dog"],
    "seeds": [0, 1],
    "schemes": ["meg", "ceg", "ue_local"],
    "grid": {"n_steps": [2, 4], "es_steps": [None, 1], "merge_ratio": [0.0, 0.5], "distance_m": [200, 300]},
    "repetitions": 2,
}


def _validate(tmp_path, data, **kw):
    return validate_spec(data, base_dir=tmp_path, source="t.yaml", **kw)


def test_good_spec_expands_grid(tmp_path):
    _model(tmp_path)
    spec = _validate(tmp_path, GOOD)
    points = spec.points()
    meg = [p for p in points if p.scheme == "meg"]
    ceg = [p for p in points if p.scheme == "ceg"]
    local = [p for p in points if p.scheme == "ue_local"]
    # MEG: N(2) x k(2: N and 1) x beta(2) x distance(2); CEG: N x distance; UE-local: N.
    assert len(meg) == 16 and len(ceg) == 4 and len(local) == 2
    assert {p.es_steps for p in meg if p.n_steps == 4} == {4, 1}
    assert len({p.point_id for p in points}) == len(points)
    reqs = spec.requests()
    assert len(reqs) == len(points) * 2 * 2 * 2
    assert len({r.request_id for r in reqs}) == len(reqs)
    # Stable ids: validating again gives the same ids.
    assert [r.request_id for r in _validate(tmp_path, GOOD).requests()] == [r.request_id for r in reqs]
    assert spec.config_hash() == _validate(tmp_path, GOOD).config_hash()


def test_every_problem_is_named(tmp_path):
    _model(tmp_path)
    bad = dict(GOOD)
    bad["grid"] = {"n_steps": [2, 0], "merge_ratio": [0.9], "es_steps": [3], "distance_m": [200], "snr_db": [3],
                   "link_model": ["rician"], "typo": 1}
    bad["repetitions"] = 0
    bad["seeds"] = [-1]
    bad["keep_images"] = "some"
    bad["nodes"] = {"es": "localhost:5555", "ue": ["tcp://127.0.0.1:5557"]}
    with pytest.raises(SpecError) as info:
        _validate(tmp_path, bad)
    text = str(info.value)
    for key in ("grid.n_steps[1]", "grid.merge_ratio[0]", "grid.es_steps[0]", "grid.distance_m", "grid.link_model[0]",
                "grid.typo", "repetitions", "seeds[0]", "keep_images", "nodes.es"):
        assert key in text, key


def test_missing_model_and_prompts(tmp_path):
    data = dict(GOOD)
    data.pop("prompts")
    with pytest.raises(SpecError) as info:
        _validate(tmp_path, data)
    assert "model:" in str(info.value) and "prompts:" in str(info.value)


def test_prompts_file_and_yaml(tmp_path):
    _model(tmp_path)
    (tmp_path / "prompts.txt").write_text("# comment\na cat\n\na dog\n")
    (tmp_path / "c.yaml").write_text(textwrap.dedent("""
        model: model
        prompts_file: prompts.txt
        schemes: [ue_local]
        grid: {n_steps: [2]}
    """))
    spec = load_spec(tmp_path / "c.yaml")
    assert spec.prompts == ("a cat", "a dog")
    (tmp_path / "broken.yaml").write_text("grid: [unclosed")
    with pytest.raises(SpecError, match="yaml"):
        load_spec(tmp_path / "broken.yaml")


def test_unknown_profile_fails(tmp_path):
    pytest.importorskip("megbed.firmware_profiles.loader")
    _model(tmp_path)
    data = dict(GOOD, profiles={"es": "no_such_board", "ue": None})
    with pytest.raises(SpecError, match="profiles.es"):
        _validate(tmp_path, data)


def test_frozen_spec_resolves_identically_elsewhere(tmp_path):
    import yaml

    _model(tmp_path)
    (tmp_path / "p.txt").write_text("a cat\n")
    data = {k: v for k, v in GOOD.items() if k != "prompts"} | {"prompts_file": "p.txt"}
    spec = _validate(tmp_path, data)
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "c.yaml").write_text(yaml.safe_dump(spec.frozen()))
    again = load_spec(other / "c.yaml")
    assert again.resolved() == spec.resolved() and again.config_hash() == spec.config_hash()
    assert [r.request_id for r in again.requests()] == [r.request_id for r in spec.requests()]


def test_broken_link_config_is_a_spec_error(tmp_path):
    _model(tmp_path)
    (tmp_path / "link.yaml").write_text("mode: telepathy\n")
    with pytest.raises(SpecError, match="link_config"):
        _validate(tmp_path, dict(GOOD, link_config="link.yaml"))
    (tmp_path / "good.yaml").write_text("mode: analog\npathloss: {tx_power_dbm: 20}\n")
    assert _validate(tmp_path, dict(GOOD, link_config="good.yaml")).tx_power_dbm() == 20.0


def test_decoder_axis_crosses_meg_and_ue_local_only(tmp_path):
    model = _model(tmp_path)
    plain = _validate(tmp_path, GOOD)
    both = {**GOOD, "grid": {**GOOD["grid"], "decoder": ["base", "distilled"]}}
    with pytest.raises(SpecError, match=r"grid.decoder.*no distilled UE decoder"):
        _validate(tmp_path, both)
    (model / "ue_decoder").mkdir()
    spec = _validate(tmp_path, both)
    points = spec.points()
    assert len([p for p in points if p.scheme == "meg"]) == 32 and len([p for p in points if p.scheme == "ue_local"]) == 4
    assert {(p.decoder, p.decoder_axis) for p in points if p.scheme == "ceg"} == {("", False)}
    assert len(points) == 32 + 4 + 4
    assert {r.decoder for r in spec.requests() if r.scheme != "ceg"} == {"base", "distilled"}
    assert {r.decoder for r in plain.requests()} == {""}  # no axis: each UE's own --decoder
    # A spec without the axis keeps its point ids (runs made before the axis existed still resume).
    assert "decoder" not in plain.points()[0].to_dict()
    with pytest.raises(SpecError, match=r"grid.decoder\[0\]"):
        _validate(tmp_path, {**GOOD, "grid": {**GOOD["grid"], "decoder": ["tiny"]}})


def test_auto_decoder_needs_a_calibrated_gate(tmp_path):
    """'auto' validates only when the model's distilled decoder carries a gate; the error names the key."""
    import json

    model = _model(tmp_path)
    (model / "ue_decoder").mkdir()
    (model / "ue_decoder" / "distill.json").write_text(json.dumps({"summary": {}}))
    spec = {**GOOD, "grid": {**GOOD["grid"], "decoder": ["base", "auto"]}}
    with pytest.raises(SpecError, match=r"grid\.decoder.*no calibrated gate"):
        _validate(tmp_path, spec)
    (model / "ue_decoder" / "distill.json").write_text(json.dumps({"gate": {"noise_ratio_max": 0.25}}))
    assert list(_validate(tmp_path, spec).grid["decoder"]) == ["base", "auto"]


def test_the_shipped_default_campaign_validates():
    """`make run`'s spec against the shipped model (its distilled decoder and the calibrated gate included)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = load_spec(root / "campaigns" / "default.yaml")
    assert spec.model == "default" and set(spec.schemes) == {"meg", "ceg", "ue_local"}
    assert "auto" in spec.grid["decoder"]  # the gate (sized for ~10 min: one decoder)
    # The paper's link and accounting, scaled to SDXL's payload; the UE emulated 2x slower (issue 15).
    from megbed.channel_emu.config import LinkConfig

    link = LinkConfig.load(spec.link_config)
    assert link.mode == "shannon" and link.scale_to_latent == [4, 128, 128] and link.bandwidth_hz == 1e6
    assert set(spec.grid["tx_mode"]) == {"shannon"} and spec.profiles["ue"] == "emulate:2x"
    assert spec.reference_n_steps >= max(spec.grid["n_steps"])


def test_merge_method_axis_crosses_merging_meg_points_only(tmp_path):
    _model(tmp_path)
    plain = _validate(tmp_path, GOOD)
    both = {**GOOD, "grid": {**GOOD["grid"], "merge_method": ["global_l2", "window"]}}
    spec = _validate(tmp_path, both)
    meg = [p for p in spec.points() if p.scheme == "meg"]
    # beta 0 merges nothing: one point per (N, k, distance) whatever the method; beta 0.5: one per method
    assert len(meg) == 8 + 16
    assert all("merge_method" not in p.to_dict() for p in meg if p.merge_ratio == 0.0)
    assert {p.to_dict()["merge_method"] for p in meg if p.merge_ratio == 0.5} == {"global_l2", "window"}
    reqs = spec.requests()
    assert {r.merge_method for r in reqs if r.scheme == "meg" and r.merge_ratio == 0.5} == {"global_l2", "window"}
    assert {r.merge_method for r in reqs if r.scheme == "meg" and r.merge_ratio == 0.0} == {"global_l2"}  # default
    assert {r.merge_method for r in reqs if r.scheme != "meg"} == {"none"}  # as the dataset records it
    assert {r.columns()["merge_method"] for r in reqs} == {"global_l2", "window", "none"}
    # No axis: ids as before the axis existed, requests carry the default method.
    assert "merge_method" not in plain.points()[0].to_dict()
    assert {r.merge_method for r in plain.requests() if r.scheme == "meg"} == {"global_l2"}
    with pytest.raises(SpecError, match=r"grid.merge_method\[1\].*not one of"):
        _validate(tmp_path, {**GOOD, "grid": {**GOOD["grid"], "merge_method": ["global", "nearest"]}})


def test_node_plans_follow_the_grid(tmp_path):
    """What local nodes get as --plans: the ES serves references besides its share of the grid's plans."""
    _model(tmp_path)
    plans = _validate(tmp_path, GOOD).node_plans()
    assert plans == {"es": ["meg", "hybrid", "ceg", "reference"], "ue": ["meg", "hybrid", "ceg", "ue_local"]}
    only_meg = _validate(tmp_path, {**GOOD, "schemes": ["meg"], "grid": {**GOOD["grid"], "es_steps": [None]}})
    assert only_meg.node_plans() == {"es": ["meg", "reference"], "ue": ["meg"]}
