from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from megbed.megwire import Frame, FrameError, pack, unpack
from megbed.testbed.ldm.handoff import HANDOFF_VERSION, Handoff, HandoffError
from megbed.testbed.ldm.merging import merge, unmerge
from megbed.testbed.ldm.schedulers import SCHEDULERS, new_sampler
from megbed.testbed.request import Request, RequestError

BASE_CONFIG = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
SHAPE = (1, 4, 8, 8)


def _fake_model(x: torch.Tensor, i: int) -> torch.Tensor:
    return torch.sin(3 * x + i)


def _run(sampler, x, k0, k1):
    for i in range(k0, k1):
        t = sampler.timesteps[i]
        inp = sampler.scheduler.scale_model_input(x, t)
        x = sampler.scheduler.step(_fake_model(inp, i), t, x, **sampler.step_kwargs, return_dict=False)[0]
        sampler.step = i + 1
    return x


def _handoff(name="dpmpp_2m", n=6, k=3, beta=0.0, wire="float32"):
    req = Request("a red cube", n_steps=n, es_steps=k, merge_ratio=beta, seed=5, scheduler=name,
                  wire_dtype=wire, request_id="r-1")
    sampler = new_sampler(name, BASE_CONFIG, n, req.seed)
    x = _run(sampler, sampler.initial_noise(SHAPE, torch.device("cpu"), torch.float32), 0, k)
    return req, sampler, x, Handoff.build(req, merge(x, beta, req.seed), sampler)


@pytest.mark.parametrize("name", sorted(set(SCHEDULERS) - {"lcm"}))
@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_bytes_round_trip_resumes_bit_exactly(name, k):
    req, sampler, x, h = _handoff(name, k=k)
    data = h.to_bytes()
    assert len(data) == h.nbytes
    back = Handoff.from_bytes(data)
    assert back.request == req
    assert torch.equal(unmerge(back.merged), x)
    if k == req.n_steps:
        assert back.sampler_meta is None
        with pytest.raises(HandoffError, match="no sampler state"):
            back.resume_sampler()
        return
    resumed = back.resume_sampler()
    assert torch.equal(_run(resumed, unmerge(back.merged), k, 6), _run(sampler, x, k, 6))


def test_frame_layout_and_channel_roles():
    _, _, _, h = _handoff("unipc", k=2, beta=0.5, wire="float16")
    frame = h.to_frame()
    assert frame.kind == "handoff"
    assert frame.meta["handoff_version"] == HANDOFF_VERSION
    roles = frame.meta["channel_roles"]
    assert set(roles) == set(frame.buffers)
    assert roles["merge.tokens"] == "values" and roles["merge.map"] == "side"
    for name, role in roles.items():
        kind = frame.buffers[name].dtype.kind
        assert (role == "values") == (kind == "f"), name  # floats are values, everything integer is side
    assert frame.buffers["merge.tokens"].dtype == np.float16
    assert frame.buffers["solver.model_outputs.1"].dtype == np.float16
    # CFG / text embeddings never travel: the prompt does
    assert frame.meta["request"]["prompt"] == "a red cube"
    assert not any("embed" in n for n in frame.buffers)


def test_ancestral_sampler_carries_generator_state():
    _, sampler, x, h = _handoff("euler_a", k=2)
    assert h.channel_roles["solver.generator"] == "side"
    back = Handoff.from_bytes(h.to_bytes())
    assert torch.equal(_run(back.resume_sampler(), x.clone(), 2, 6), _run(sampler, x, 2, 6))
    _, _, _, plain = _handoff("euler", k=2)
    assert "solver.generator" not in plain.to_frame().buffers


def test_payload_shrinks_with_beta_and_fp16_halves_values():
    sizes = [_handoff("ddim", k=6, beta=b, wire="float16")[3].nbytes for b in (0.0, 0.25, 0.5, 0.75)]
    assert sizes == sorted(sizes, reverse=True)
    full32 = _handoff("ddim", k=6, wire="float32")[3]
    full16 = _handoff("ddim", k=6, wire="float16")[3]
    assert full32.nbytes - full16.nbytes == 4 * 8 * 8 * 2


def test_delivery_record_is_kept():
    _, _, _, h = _handoff()
    frame = h.to_frame()
    frame.meta["delivery"] = {"snr_db": 3.5, "corrupted": ["merge.tokens"]}
    frame.buffers["merge.tokens"] = frame.buffers["merge.tokens"] + np.float32(0.01)
    back = Handoff.from_frame(unpack(pack(frame)))
    assert back.delivery == {"snr_db": 3.5, "corrupted": ["merge.tokens"]}
    assert back.to_frame().meta["delivery"] == back.delivery


def test_truncated_and_corrupted_bytes_are_rejected():
    _, _, _, h = _handoff()
    data = h.to_bytes()
    for cut in (5, len(data) // 2, len(data) - 1):
        with pytest.raises(HandoffError, match="truncated|rejected"):
            Handoff.from_bytes(data[:cut])
    flipped = bytearray(data)
    flipped[len(data) - 40] ^= 0xFF
    with pytest.raises(HandoffError, match="CRC"):
        Handoff.from_bytes(bytes(flipped))
    assert issubclass(HandoffError, FrameError)


def test_version_and_kind_mismatch_are_rejected():
    _, _, _, h = _handoff()
    frame = h.to_frame()
    frame.meta["handoff_version"] = HANDOFF_VERSION + 1
    with pytest.raises(HandoffError, match=f"version mismatch.*v{HANDOFF_VERSION + 1}.*v{HANDOFF_VERSION}"):
        Handoff.from_bytes(pack(frame))
    del frame.meta["handoff_version"]
    with pytest.raises(HandoffError, match="no handoff_version"):
        Handoff.from_frame(frame)
    with pytest.raises(HandoffError, match="expected a 'handoff' frame"):
        Handoff.from_frame(Frame(kind="image"))
    data = bytearray(h.to_bytes())
    data[4] = 9  # megwire protocol version
    with pytest.raises(HandoffError, match="protocol version mismatch"):
        Handoff.from_bytes(bytes(data))


def test_inconsistent_fields_are_rejected():
    _, _, _, h = _handoff(k=3)
    frame = h.to_frame()
    frame.meta["step"] = 2
    with pytest.raises(HandoffError, match="step 2"):
        Handoff.from_frame(frame)
    frame = h.to_frame()
    frame.meta["sampler"] = None
    with pytest.raises(HandoffError, match="no sampler state"):
        Handoff.from_frame(frame)
    frame = h.to_frame()
    del frame.buffers["solver.model_outputs.1"]
    with pytest.raises(HandoffError, match="solver.model_outputs.1"):
        Handoff.from_frame(frame).resume_sampler()
    frame = h.to_frame()
    frame.meta["request"]["merge_ratio"] = 0.9
    with pytest.raises(HandoffError, match="merge_ratio"):
        Handoff.from_frame(frame)


def test_request_validation_names_the_problem():
    with pytest.raises(RequestError, match="'n_steps'=0 outside"):
        Request("p", n_steps=0)
    with pytest.raises(RequestError, match=r"'es_steps'=5 outside \[0, 4\]"):
        Request("p", n_steps=4, es_steps=5)
    with pytest.raises(RequestError, match="'merge_ratio'"):
        Request("p", merge_ratio=0.8)
    with pytest.raises(RequestError, match="'scheduler'='pndm'"):
        Request("p", scheduler="pndm")
    with pytest.raises(RequestError, match="'tome_ratio_es'"):
        Request("p", tome_ratio_es=0.9)
    with pytest.raises(RequestError, match="'wire_dtype'"):
        Request("p", wire_dtype="bfloat16")
    with pytest.raises(RequestError, match="unknown field 'colour'"):
        Request.from_meta({**Request("p").to_meta(), "colour": 1})
    assert Request("p", n_steps=4).es_steps == 4


@pytest.mark.parametrize("method", ["global_l2", "global", "window"])
def test_merge_side_information_round_trips_through_the_bytes(method):
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    req = Request("a red cube", n_steps=4, merge_ratio=0.5, seed=9, merge_method=method,
                  wire_dtype="float32", request_id="r-side")
    merged = merge(x, 0.5, req.seed, method)
    h = Handoff.build(req, merged, None)
    data = h.to_bytes()
    assert len(data) == h.nbytes
    back = Handoff.from_bytes(data)
    assert back.request.merge_method == method and back.merged.method == method
    assert np.array_equal(back.merged.merge_map, merged.merge_map)
    assert np.array_equal(back.merged.dst_map, merged.dst_map)
    assert np.array_equal(back.merged.merged_destinations(), merged.merged_destinations())
    assert torch.equal(unmerge(back.merged), unmerge(merged))
    roles = h.channel_roles
    if method == "window":
        assert "merge.dst" not in roles
    else:  # 64 destinations: 6 bits for each of the 128 merged sources, counted in the bytes the link carries
        assert roles["merge.dst"] == "side" and h.to_frame().buffers["merge.dst"].nbytes == 128 * 6 // 8
        window = Handoff.build(req.replace(merge_method="window"), merge(x, 0.5, req.seed, "window"), None)
        # the indices and their buffer's framing are in the handoff's byte count (and so in the airtime)
        assert h.nbytes - window.nbytes >= 128 * 6 // 8


@pytest.mark.parametrize("method", ["global_l2", "global"])
def test_truncated_or_out_of_range_indices_are_handoff_errors(method):
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    req = Request("a red cube", n_steps=4, merge_ratio=0.5, seed=3, merge_method=method)
    frame = Handoff.build(req, merge(x, 0.5, req.seed, method), None).to_frame()
    frame.buffers["merge.dst"] = np.ascontiguousarray(frame.buffers["merge.dst"][:, :-1])
    with pytest.raises(HandoffError, match="destination indices have shape"):
        Handoff.from_bytes(pack(frame))
    # 6 destinations (an 8x12 latent: 4x6 tokens) need 3 bits; the value 7 is past the last destination
    x = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(4))
    req = Request("a", n_steps=4, merge_ratio=0.5, seed=1, merge_method=method, request_id="r-oor")
    frame = Handoff.build(req, merge(x, 0.5, 1, method), None).to_frame()
    frame.buffers["merge.dst"] = np.full_like(frame.buffers["merge.dst"], 0xFF)
    with pytest.raises(HandoffError, match="out of range"):
        Handoff.from_bytes(pack(frame))
    frame.buffers.pop("merge.dst")
    with pytest.raises(HandoffError, match="missing"):
        Handoff.from_bytes(pack(frame))


def test_request_and_merged_latent_must_agree_on_the_method():
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    req = Request("a", n_steps=4, merge_ratio=0.5, seed=3, merge_method="window")
    with pytest.raises(HandoffError, match="merge method"):
        Handoff.build(req, merge(x, 0.5, 3, "global"), None)
    with pytest.raises(RequestError, match="'merge_method'='nearest'"):
        Request("a", merge_method="nearest")
