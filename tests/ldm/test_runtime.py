"""Stages, plans, the runner's hook and link seams, CEG, standalone halves, tomesd, decoders, bad inputs."""

from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pytest
import torch

from megbed.megwire import pack, unpack
from megbed.testbed.ldm.handoff import Handoff, HandoffError
from megbed.testbed.ldm.model import ModelLoadError, VaeDecoder, device_sync, load_decoder, load_pipeline
from megbed.testbed.ldm.plan import SplitPlan, build_stages, plan_for, ue_plan_for_frame
from megbed.testbed.ldm.runner import run_node, run_split
from megbed.testbed.ldm.stages import DenoiseStage, StageError
from megbed.testbed.request import Request, RequestError

N = 3


def _req(**kw) -> Request:
    base = dict(prompt="a blue sphere", n_steps=N, seed=2, scheduler="dpmpp_2m", wire_dtype="float32",
                guidance_scale=4.0, request_id="t-1")
    base.update(kw)
    return Request(**base)


# --- plans ---------------------------------------------------------------------------------------------------------

def test_plan_presets():
    meg = plan_for("meg", _req())
    assert meg.es == ("text_encode", "denoise", "merge", "serialize")
    assert meg.ue == ("deserialize", "unmerge", "decode") and not meg.hybrid and meg.transfer == "handoff_frame"
    hyb = plan_for("hybrid", _req(es_steps=1))
    assert hyb.scheme == "meg" and hyb.hybrid
    assert hyb.ue == ("deserialize", "unmerge", "text_encode", "denoise", "decode")
    assert hyb.nodes_of("denoise") == ("es", "ue")
    assert plan_for("meg", _req(es_steps=0)).es == ("denoise", "merge", "serialize")
    ceg = plan_for("ceg", _req())
    assert ceg.ue == ("image_decode",) and ceg.transfer == "image_frame"
    local = plan_for("ue_local", _req())
    assert local.es == () and local.transfer is None
    with pytest.raises(RequestError, match="hybrid split needs k < N"):
        plan_for("hybrid", _req())
    with pytest.raises(RequestError, match="unknown scheme"):
        plan_for("split", _req())
    with pytest.raises(RequestError, match="unknown stages"):
        SplitPlan("meg", ("encode",), ())


# --- the runner's seams ----------------------------------------------------------------------------------------------

def test_stage_hook_wraps_every_stage_and_link_sees_the_frame(sd15):
    calls, seen = [], []

    @contextlib.contextmanager
    def hook(node, stage):
        calls.append((node, stage, "enter"))
        yield
        calls.append((node, stage, "exit"))

    def noisy_link(frame):
        seen.append(frame)
        rng = np.random.default_rng(0)
        out = type(frame)(frame.kind, dict(frame.meta), dict(frame.buffers))
        for name, role in frame.meta["channel_roles"].items():
            if role == "values":
                b = out.buffers[name]
                out.buffers[name] = (b + rng.normal(0, 0.1, b.shape)).astype(b.dtype)
        out.meta["delivery"] = {"mode": "analog", "snr_db": 10.0}
        return out

    clean = run_split(_req(es_steps=2, merge_ratio=0.25), sd15)
    noisy = run_split(_req(es_steps=2, merge_ratio=0.25), sd15, stage_hook=hook, link=noisy_link)
    plan = noisy.plan
    expected = [(n, s) for n in ("es", "ue") for s in plan.stages_of(n)]
    assert [(n, s) for n, s, e in calls if e == "enter"] == expected
    assert [(n, s) for n, s, e in calls if e == "exit"] == expected
    assert [(t.node, t.stage) for t in noisy.timings] == expected and all(t.latency_s >= 0 for t in noisy.timings)
    assert len(seen) == 1 and seen[0].kind == "handoff"
    assert noisy.ue_state["handoff"].delivery == {"mode": "analog", "snr_db": 10.0}
    assert noisy.transfer_nbytes == len(pack(noisy.sent_frame))
    assert not torch.equal(noisy.image, clean.image)  # the corruption reached the image
    # side buffers (merge map, timesteps) arrived exactly: the UE's un-merge used the ES's map
    assert np.array_equal(noisy.received_frame.buffers["merge.map"], noisy.sent_frame.buffers["merge.map"])


def test_halves_run_standalone_from_request_and_frame_bytes(sd15, tiny_sd15_dir):
    req = sd15.resolve(_req(es_steps=1, merge_ratio=0.5, scheduler="euler_a"))
    plan = plan_for("meg", req)
    es_state, _ = run_node(build_stages(plan, "es", sd15), {"request": req}, "es")
    data = pack(es_state["handoff_frame"])
    # a second model object stands in for the UE machine: it gets nothing but the bytes
    ue_model = load_pipeline(tiny_sd15_dir, device="cpu")
    frame = unpack(data)
    ue_plan = ue_plan_for_frame(frame)
    assert ue_plan == plan
    ue_state, _ = run_node(build_stages(ue_plan, "ue", ue_model), {"handoff_frame": frame}, "ue")
    assert ue_state["request"] == req
    together = run_split(req, sd15)
    assert torch.equal(ue_state["image"], together.image)


def test_merging_shrinks_the_handoff_and_changes_the_image_gracefully(sd15):
    base = run_split(_req(), sd15)
    sizes = []
    for beta in (0.25, 0.5, 0.75):
        r = run_split(_req(merge_ratio=beta), sd15)
        sizes.append(r.transfer_nbytes)
        err = ((r.image - base.image) ** 2).mean().item()
        assert 0 < err < 0.1
    assert base.transfer_nbytes > sizes[0] > sizes[1] > sizes[2]


def test_ceg_sends_the_png_image(sd15):
    meg = run_split(_req(), sd15)
    ceg = run_split(_req(), sd15, scheme="ceg")
    assert ceg.plan.scheme == "ceg" and ceg.sent_frame.kind == "image"
    assert ceg.sent_frame.meta["channel_roles"] == {"png": "side"}
    assert ceg.transfer_nbytes == len(pack(ceg.sent_frame))
    png = ceg.sent_frame.buffers["png"]
    assert png.dtype == np.uint8 and bytes(png[:8]) == b"\x89PNG\r\n\x1a\n"
    # same image up to 8-bit quantisation
    assert (ceg.image - meg.image).abs().max().item() <= 0.5 / 255 + 1e-6
    assert [t.stage for t in ceg.timings] == ["text_encode", "denoise", "decode", "image_encode", "image_decode"]


# --- tomesd ---------------------------------------------------------------------------------------------------------

def test_tomesd_on_off(sd15):
    seen_patched = []

    @contextlib.contextmanager
    def hook(node, stage):
        yield
        if stage == "denoise":
            seen_patched.append(any(type(m).__name__ == "ToMeBlock" for m in sd15.unet.modules()))

    off = run_split(_req(es_steps=1), sd15)
    zero = run_split(_req(es_steps=1, tome_ratio_es=0.0, tome_ratio_ue=0.0), sd15)
    on = run_split(_req(es_steps=1, tome_ratio_es=0.5, tome_ratio_ue=0.5), sd15)
    on_again = run_split(_req(es_steps=1, tome_ratio_es=0.5, tome_ratio_ue=0.5), sd15)
    es_only = run_split(_req(es_steps=1, tome_ratio_es=0.5), sd15)
    assert torch.equal(off.image, zero.image)
    assert not torch.equal(on.image, off.image)
    assert torch.equal(on.image, on_again.image)  # use_rand=False: reproducible
    assert not torch.equal(es_only.image, on.image) and not torch.equal(es_only.image, off.image)
    # the patch lives only inside the denoise stage: afterwards the U-Net is exactly what it was
    assert not any(type(m).__name__ == "ToMeBlock" for m in sd15.unet.modules())
    assert torch.equal(run_split(_req(es_steps=1), sd15).image, off.image)
    patched = []

    class Probe(DenoiseStage):
        def run(self, state):
            with self.model.tome(0.5):
                patched.append(any(type(m).__name__ == "ToMeBlock" for m in self.model.unet.modules()))
            return super().run(state)

    Probe(sd15, stop="end")({"request": _req(n_steps=1), "text": sd15.encode_text(sd15.resolve(_req()))})
    assert patched == [True]
    assert sd15.tome_max_downsample == 1


def test_sdxl_tome_targets_its_first_attention_level(sdxl):
    assert sdxl.tome_max_downsample == 2
    off = run_split(_req(n_steps=2), sdxl)
    on = run_split(_req(n_steps=2, tome_ratio_es=0.5), sdxl)
    assert not torch.equal(on.image, off.image)


# --- decoders --------------------------------------------------------------------------------------------------------

def test_decoder_is_swappable(sd15, tiny_sd15_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_sd15_dir, model_dir)
    shutil.copytree(model_dir / "vae", model_dir / "ue_decoder")
    copy = load_pipeline(model_dir, device="cpu", decoder="ue_decoder")
    assert isinstance(copy.decoder, VaeDecoder) and copy.decoder.vae is not copy.pipe.vae
    base = run_split(_req(), sd15)
    assert torch.equal(run_split(_req(), copy).image, base.image)

    class Flat:
        def decode(self, latents):
            return torch.full((latents.shape[0], 3, latents.shape[2] * 8, latents.shape[3] * 8), 0.5)

    flat = run_split(_req(), sd15, ue_decoder=Flat())
    assert torch.equal(flat.image, torch.full_like(base.image, 0.5))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_decoder(tmp_path / "nowhere")


def test_fp16_vae_with_force_upcast_decodes_in_fp32(sdxl):
    import copy

    vae = copy.deepcopy(sdxl.pipe.vae).half()
    dec = VaeDecoder(vae)
    assert dec.dtype == torch.float32  # SDXL's config sets force_upcast
    image = dec.decode(torch.randn(1, 4, 8, 8, dtype=torch.float16))
    assert image.dtype == torch.float32 and image.shape == (1, 3, 64, 64)


def test_device_sync_calls_cuda_synchronize(monkeypatch):
    called = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: called.append(device))
    device_sync("cpu")
    device_sync(None)
    assert called == []
    device_sync("cuda:0")
    assert called == [torch.device("cuda:0")]


# --- bad input ------------------------------------------------------------------------------------------------------

def test_bad_model_folders(tmp_path, tiny_sd15_dir):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers model folder"):
        load_pipeline(tmp_path / "empty")
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="FluxPipeline"):
        load_pipeline(other)
    (other / "model_index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_pipeline(other)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd15_dir, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelLoadError, match="cannot load the pipeline"):
        load_pipeline(broken)


def test_model_dependent_request_errors(sd15):
    with pytest.raises(RequestError, match="multiple of 16"):
        sd15.resolve(_req(height_px=72))
    from diffusers import PNDMScheduler

    original = sd15.pipe.scheduler
    try:
        sd15.pipe.scheduler = PNDMScheduler.from_config(original.config)
        with pytest.raises(RequestError, match="PNDMScheduler cannot be stopped"):
            sd15.resolve(_req(scheduler=""))
    finally:
        sd15.pipe.scheduler = original
    assert sd15.resolve(_req(scheduler="")).scheduler == "ddim"  # the model's own


def test_stage_errors_name_what_is_missing(sd15):
    stages = build_stages(plan_for("meg", _req()), "ue", sd15)
    with pytest.raises(StageError, match="needs \\['handoff_frame'\\]"):
        stages[0]({})
    with pytest.raises(StageError, match="need 'text'"):
        DenoiseStage(sd15)({"request": _req()})
    es = sd15.resolve(_req(es_steps=1))
    plan = plan_for("meg", es)
    state, _ = run_node(build_stages(plan, "es", sd15), {"request": es}, "es")
    frame = state["handoff_frame"]
    frame.meta["handoff_version"] = 99
    with pytest.raises(HandoffError, match="version mismatch"):
        run_node(build_stages(plan, "ue", sd15), {"handoff_frame": frame}, "ue")
    with pytest.raises(HandoffError, match="CRC"):
        bad = bytearray(pack(state["handoff"].to_frame()))
        bad[-10] ^= 1
        Handoff.from_bytes(bytes(bad))


@pytest.mark.gpu
def test_split_on_cuda_fp16_is_close_to_cpu(tiny_sd15_dir, sd15):
    gpu = load_pipeline(tiny_sd15_dir, device="cuda")
    assert gpu.dtype == torch.float16
    req = _req(es_steps=1, wire_dtype="float16")
    on_gpu = run_split(req, gpu)
    on_cpu = run_split(req, sd15)
    assert on_gpu.image.device.type == "cuda"
    assert (on_gpu.image.cpu() - on_cpu.image).abs().max().item() < 0.05
