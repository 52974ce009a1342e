"""Role- and plan-aware loading, partial model folders (``megbed model slice``) and their bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megbed.testbed.assets import default_model_dir
from megbed.testbed.cli.main import main
from megbed.testbed.ldm.components import MissingComponentError, components_for
from megbed.testbed.ldm.model import load_pipeline
from megbed.testbed.ldm.slicing import slice_model
from megbed.testbed.nodes import protocol as P
from megbed.testbed.nodes.ldm_engine import LdmEngine
from megbed.testbed.nodes.records import StageRecorder
from megbed.testbed.request import Request, RequestError

MODEL = default_model_dir()


def _spec(rid: str, es_steps: int, **kw) -> Request:
    return Request(request_id=rid, scheme=kw.pop("scheme", "meg"), prompt="a red circle", seed=2, n_steps=3,
                   es_steps=es_steps, merge_ratio=0.25, link_model="awgn", tx_mode="analog", distance_m=20.0, snr_db_set=None,
                   height_px=64, width_px=64, point_id=rid, repetition=0, **kw)


@pytest.fixture(scope="module")
def es_engine():
    return LdmEngine(MODEL, role="es", plans=["meg", "hybrid"])


@pytest.fixture(scope="module")
def ue_meg_slice(tmp_path_factory):
    out = tmp_path_factory.mktemp("slices") / "ue_meg"
    slice_model(MODEL, out, role="ue", plans=["meg"])
    return out


def test_component_table_follows_the_plans():
    assert list(components_for("sd", "ue", ["meg"])) == ["vae"]
    assert set(components_for("sd", "ue", ["hybrid"])) == {"vae", "unet", "scheduler", "text_encoder", "tokenizer"}
    assert "vae" not in components_for("sd", "es", ["meg", "hybrid"])
    assert "vae" in components_for("sd", "es", ["ceg"])
    assert set(components_for("sdxl", "ue", ["ue_local"])) >= {"text_encoder_2", "tokenizer_2"}
    assert list(components_for("sd", "ue", ["meg"], decoder="distilled")) == ["ue_decoder"]
    assert components_for("sd", "ue", ["meg", "hybrid"])["unet"] == "hybrid"


def test_decode_only_ue_loads_only_the_vae_and_matches_the_whole_pipeline(es_engine):
    ue = LdmEngine(MODEL, role="ue", plans=["meg"])
    assert ue.model.loaded_components == []  # nothing but configs at start-up
    spec = _spec("meg", 3)
    frame = es_engine.es(spec, StageRecorder("es"))
    assert "vae" not in es_engine.model.loaded_components  # the ES serves no CEG: no VAE
    ue.select_decoder("", spec.request_id)
    rec = StageRecorder("ue")
    image = ue.ue_receive(frame, rec)
    assert ue.model.loaded_components == ["vae"]
    whole = LdmEngine(MODEL)  # eager, the whole pipeline
    assert np.array_equal(image, whole.ue_receive(frame, StageRecorder("ue")))
    decode = [r for r in rec.finish() if r["stage"] == "decode"][0]
    assert decode["mem_peak_mb"] > 0 and decode["mem_method"] in ("vmhwm_reset", "rss_sampled", "ru_maxrss")


def test_hybrid_ue_adds_unet_scheduler_and_text(es_engine):
    ue = LdmEngine(MODEL, role="ue", plans=["meg", "hybrid"])
    frame = es_engine.es(_spec("hyb", 1), StageRecorder("es"))
    image = ue.ue_receive(frame, StageRecorder("ue"))
    assert image.shape == (64, 64, 3)
    assert set(ue.model.loaded_components) == {"vae", "unet", "scheduler", "text_encoder", "tokenizer"}


def test_slice_writes_a_loadable_partial_folder(ue_meg_slice, es_engine):
    info = json.loads((ue_meg_slice / "megbed_slice.json").read_text())
    assert info["role"] == "ue" and info["plans"] == ["meg"] and set(info["components"]) == {"vae", "ue_decoder"}
    index = json.loads((ue_meg_slice / "model_index.json").read_text())
    assert index["unet"] == [None, None] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert not (ue_meg_slice / "unet").exists()
    eager = load_pipeline(ue_meg_slice)  # the normal (whole-pipeline) path loads it too
    assert eager.pipe.unet is None and eager.latent_channels == 4 and eager.default_size() == (128, 128)
    ue = LdmEngine(ue_meg_slice, role="ue", plans=["meg"], decoder="auto")
    frame = es_engine.es(_spec("sl", 3), StageRecorder("es"))
    assert ue.ue_receive(frame, StageRecorder("ue")).shape == (64, 64, 3)


def test_sliced_folder_used_for_a_plan_it_does_not_cover(ue_meg_slice, es_engine):
    with pytest.raises(MissingComponentError) as err:
        load_pipeline(ue_meg_slice, role="ue", plans=["meg", "hybrid"])
    msg = str(err.value)
    assert "'unet'" in msg and "'hybrid'" in msg and "slice" in msg
    # Without plans at start-up the same error comes with the first request that needs the U-Net.
    ue = LdmEngine(ue_meg_slice, role="ue")
    frame = es_engine.es(_spec("late", 1), StageRecorder("es"))
    with pytest.raises(P.ProtocolError, match="plan 'hybrid' on the UE.*'text_encoder'|plan 'hybrid'.*'unet'"):
        ue.ue_receive(frame, StageRecorder("ue"))


def test_ue_given_a_folder_without_a_vae(tmp_path, es_engine):
    es_only = tmp_path / "es_only"
    slice_model(MODEL, es_only, role="es", plans=["meg"])
    assert not (es_only / "vae").exists()
    with pytest.raises(MissingComponentError, match=r"'vae' \(needed by the UE for plan 'meg'\)"):
        LdmEngine(es_only, role="ue", plans=["meg"])
    ue = LdmEngine(es_only, role="ue")
    frame = es_engine.es(_spec("novae", 3), StageRecorder("es"))
    with pytest.raises(P.ProtocolError, match="plan 'meg' on the UE.*'vae'"):
        ue.ue_receive(frame, StageRecorder("ue"))


def test_node_start_up_names_the_missing_component(ue_meg_slice, capsys):
    rc = main(["node", "ue", "--model", str(ue_meg_slice), "--plans", "meg,hybrid", "--probe", "none",
               "--idle-s", "0", "--bind", "tcp://127.0.0.1:0"])
    err = capsys.readouterr().err
    assert rc == 2 and "'unet'" in err and "'hybrid'" in err


def test_slice_of_a_non_diffusers_folder_writes_nothing(tmp_path, capsys):
    src = tmp_path / "not_a_model"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"\0" * 16)
    out = tmp_path / "out"
    assert main(["model", "slice", str(src), str(out), "--role", "ue"]) == 2
    assert "not a diffusers model folder" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["not_a_model"]


def test_slice_refuses_a_non_empty_out_dir_and_a_source_lacking_components(tmp_path, ue_meg_slice, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["model", "slice", str(MODEL), str(out), "--role", "ue"]) == 2
    assert (out / "keep.txt").read_text() == "x" and len(list(out.iterdir())) == 1
    assert main(["model", "slice", str(ue_meg_slice), str(tmp_path / "x"), "--role", "es"]) == 2
    assert "'unet'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_vae_tiling_is_a_request_option(es_engine):
    ue = LdmEngine(MODEL, role="ue", plans=["meg"])
    frame = es_engine.es(_spec("tile", 3), StageRecorder("es"))
    ue.select_decoder("", "tile")
    ue.set_vae_tiling(True)
    tiled = ue.ue_receive(frame, StageRecorder("ue"))
    assert ue.model.base_decoder.vae.use_tiling
    ue.set_vae_tiling(False)
    assert not ue.model.base_decoder.vae.use_tiling
    plain = ue.ue_receive(frame, StageRecorder("ue"))
    # 64 px is below the VAE's tile size: tiling changes nothing here (its effect is measured in the benchmark).
    assert np.array_equal(tiled, plain)
    spec = Request.from_meta({**_spec("t", 3, vae_tiling=True).to_meta()})
    assert spec.vae_tiling and spec.columns()["vae_tiling"] is True
    with pytest.raises(RequestError, match="vae_tiling"):
        Request.from_meta({**_spec("t", 3).to_meta(), "vae_tiling": "yes"})


def test_vae_tiling_caps_the_tile_at_512_px_so_an_sdxl_latent_is_tiled():
    """SDXL's VAE config asks for 1024 px tiles: its own 1024 px output would be decoded in one piece."""
    from diffusers import AutoencoderKL

    from megbed.testbed.ldm.model import VAE_TILE_PX, set_vae_tiling

    small = dict(block_out_channels=[8, 8, 8, 8], down_block_types=["DownEncoderBlock2D"] * 4,
                 up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, norm_num_groups=4, latent_channels=4)
    sdxl_like = AutoencoderKL(sample_size=1024, **small)
    set_vae_tiling(sdxl_like, True)
    assert sdxl_like.use_tiling
    assert (sdxl_like.tile_sample_min_size, sdxl_like.tile_latent_min_size) == (VAE_TILE_PX, VAE_TILE_PX // 8)
    set_vae_tiling(sdxl_like, False)
    assert not sdxl_like.use_tiling
    native_small = AutoencoderKL(sample_size=256, **small)  # already below the cap: its own tile is kept
    set_vae_tiling(native_small, True)
    assert (native_small.tile_sample_min_size, native_small.tile_latent_min_size) == (256, 32)
