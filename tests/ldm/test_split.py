"""Split == unsplit, bit for bit (fp32 on the wire, CPU), for every resumable sampler at several k."""

from __future__ import annotations

import pytest
import torch

from megbed.testbed.ldm.runner import run_split
from megbed.testbed.request import Request

N = 4
SAMPLERS = ["ddim", "euler", "euler_a", "dpmpp_2m", "unipc"]


def _request(scheduler: str, **kw) -> Request:
    base = dict(prompt="a small red cube", n_steps=N, seed=11, scheduler=scheduler, wire_dtype="float32",
                guidance_scale=5.0)
    base.update(kw)
    return Request(**base)


@pytest.mark.parametrize("scheduler", SAMPLERS)
def test_split_equals_unsplit_bit_for_bit_sd15(sd15, scheduler):
    unsplit = run_split(_request(scheduler), sd15, scheme="ue_local")
    for k in (0, 1, 3, N):
        split = run_split(_request(scheduler, es_steps=k), sd15)
        assert split.plan.hybrid == (k < N)
        assert torch.equal(split.image, unsplit.image), f"{scheduler} k={k}"
        assert torch.equal(split.ue_state["latents"], unsplit.ue_state["latents"]), f"{scheduler} k={k}"


@pytest.mark.parametrize("scheduler,k", [("dpmpp_2m", 2), ("euler_a", 1), ("unipc", 0), ("ddim", N)])
def test_split_equals_unsplit_bit_for_bit_sdxl(sdxl, scheduler, k):
    assert sdxl.family == "sdxl"
    unsplit = run_split(_request(scheduler), sdxl, scheme="ue_local")
    split = run_split(_request(scheduler, es_steps=k), sdxl)
    assert torch.equal(split.image, unsplit.image)


@pytest.mark.parametrize("family,scheduler", [("sd15", "ddim"), ("sd15", "dpmpp_2m"), ("sdxl", "euler_a")])
def test_stage_path_matches_stock_pipeline(request, family, scheduler):
    # Our stage code against diffusers' own pipe(...): same embeddings (the pipeline's encode_prompt), same noise
    # (CPU generator), same loop. On CPU fp32 the two agree exactly; the assertion allows 1e-6 for BLAS ordering.
    from megbed.testbed.ldm.schedulers import build_scheduler

    model = request.getfixturevalue(family)
    req = model.resolve(_request(scheduler))
    ours = run_split(req, model, scheme="ue_local").image
    pipe = model.pipe
    original = pipe.scheduler
    try:
        pipe.scheduler = build_scheduler(scheduler, original.config)
        stock = pipe(req.prompt, num_inference_steps=N, guidance_scale=req.guidance_scale, height=req.height_px,
                     width=req.width_px, generator=torch.Generator("cpu").manual_seed(req.seed), output_type="pt").images
    finally:
        pipe.scheduler = original
    assert stock.shape == ours.shape
    assert (stock - ours).abs().max().item() <= 1e-6


def test_fp16_wire_changes_the_image_a_little(sd15):
    exact = run_split(_request("dpmpp_2m", es_steps=2), sd15)
    half = run_split(_request("dpmpp_2m", es_steps=2, wire_dtype="float16"), sd15)
    diff = (exact.image - half.image).abs().max().item()
    assert 0 < diff <= 1e-2
    assert half.transfer_nbytes < exact.transfer_nbytes
