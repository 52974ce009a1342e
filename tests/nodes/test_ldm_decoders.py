"""The UE's decoder per request: default, switching, a decoder the model lacks, the reference unaffected."""

from __future__ import annotations

import numpy as np
import pytest
from nodes_helpers import make_spec

from megbed.testbed.nodes import protocol as P
from megbed.testbed.nodes.records import StageRecorder
from megbed.testbed.request import Request, RequestError


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from megbed.testbed.nodes.ldm_engine import LdmEngine
    from megbed.testing.random_weight_models import add_stand_in_decoder, build_tiny_model

    model = build_tiny_model(tmp_path_factory.mktemp("m") / "sd15", "sd15", sample_size=8)
    add_stand_in_decoder(model)
    return LdmEngine(model, device="cpu")


def _local(engine, decoder):
    req = make_spec("ue_local", height_px=None, width_px=None, n_steps=2, decoder=decoder)
    used = engine.select_decoder(req.decoder, req.request_id)
    return used, engine.ue_local(req, StageRecorder("ue", None))


def test_switching_decoders_per_request(engine):
    assert engine.info["decoder"] == "base"
    used_b, base = _local(engine, "")
    used_d, dist = _local(engine, "distilled")
    assert (used_b, used_d) == ("base", "distilled") and not np.array_equal(base, dist)
    assert np.array_equal(_local(engine, "base")[1], base)
    # The quality reference is the stock decoder's, whatever decoder is in force.
    engine.select_decoder("distilled")
    req = make_spec("ue_local", height_px=None, width_px=None, n_steps=2)
    assert np.array_equal(engine.reference(req, 2), base)


def test_a_decoder_the_model_lacks_is_a_protocol_error(engine):
    with pytest.raises(P.ProtocolError, match="decoder 'nowhere'"):
        engine.select_decoder("nowhere", "r9")


def test_decoder_field_round_trips_and_is_checked():
    spec = make_spec("meg", decoder="distilled")
    assert Request.from_meta(spec.to_meta()).decoder == "distilled"
    old = spec.to_meta()
    del old["decoder"]  # a peer that predates the field: the UE's default
    assert Request.from_meta(old).decoder == ""
    with pytest.raises(RequestError, match="'decoder'"):
        Request.from_meta({**spec.to_meta(), "decoder": 3})


def test_decoders_are_chosen_by_name_never_by_path(engine):
    import shutil

    model_dir = engine.model.model_dir
    folder = model_dir / "ue_decoder"
    for path in (str(folder), str(folder.resolve()), "../" + model_dir.name + "/ue_decoder", "/etc", "ue_decoder/.."):
        with pytest.raises(P.ProtocolError) as err:
            engine.select_decoder(path, "r1")
        assert "/" not in str(err.value)
    # A decoder folder listed inside the model folder is offered by its name.
    shutil.copytree(folder, model_dir / "alt_decoder", dirs_exist_ok=True)
    assert "alt_decoder" in engine.decoder_names()
    assert engine.select_decoder("alt_decoder", "r2") == "alt_decoder"


def test_the_decoder_cache_is_bounded(engine, monkeypatch):
    import shutil

    from megbed.testbed.nodes import ldm_engine

    monkeypatch.setattr(ldm_engine, "MAX_CACHED_DECODERS", 1)
    folder = engine.model.model_dir / "ue_decoder"
    for i in range(3):
        shutil.copytree(folder, engine.model.model_dir / f"dec{i}", dirs_exist_ok=True)
        engine.select_decoder(f"dec{i}", "r3")
        assert len(engine._decoders) <= 1
    assert list(engine._decoders) == ["dec2"]
