from __future__ import annotations

import pytest
import torch

import megbed.testbed.ldm.reference as reference
from megbed.testbed.ldm.metrics import quality
from megbed.testbed.ldm.reference import ReferenceCache, ReferenceKey, reference_request
from megbed.testbed.ldm.runner import run_split
from megbed.testbed.request import Request, RequestError


def _req(**kw):
    base = dict(prompt="a lamp", n_steps=2, es_steps=1, merge_ratio=0.5, seed=3, scheduler="ddim",
                tome_ratio_es=0.5, guidance_scale=3.0)
    base.update(kw)
    return Request(**base)


def test_reference_request_drops_every_compression():
    ref = reference_request(_req(), 4)
    assert (ref.n_steps, ref.es_steps, ref.merge_ratio, ref.tome_ratio_es, ref.tome_ratio_ue) == (4, 4, 0.0, 0.0, 0.0)
    assert ref.wire_dtype == "float32" and ref.prompt == "a lamp" and ref.seed == 3
    with pytest.raises(RequestError, match="N_max"):
        reference_request(_req(), 0)


def test_cache_computes_once_and_keys_on_what_matters(sd15, tmp_path, monkeypatch):
    cache = ReferenceCache(tmp_path / "refs")
    calls = []
    real = reference.compute_reference
    monkeypatch.setattr(reference, "compute_reference", lambda *a: calls.append(a) or real(*a))
    first = cache.get(sd15, _req(), 3)
    again = cache.get(sd15, _req(merge_ratio=0.0, es_steps=0, tome_ratio_es=0.0), 3)  # same reference
    assert len(calls) == 1 and torch.equal(first, again)
    assert first.shape == (1, 3, 64, 64) and first.dtype == torch.float32
    # it is the unsplit N_max image
    direct = run_split(_req(n_steps=3, es_steps=None, merge_ratio=0.0, tome_ratio_es=0.0), sd15,
                       scheme="ue_local").image
    assert torch.equal(first, direct)
    cache.get(sd15, _req(prompt="a chair"), 3)
    cache.get(sd15, _req(seed=4), 3)
    cache.get(sd15, _req(), 2)
    assert len(calls) == 4 and len(list((tmp_path / "refs").glob("*.safetensors"))) == 4
    assert ReferenceKey.of(sd15, _req(), 3) != ReferenceKey.of(sd15, _req(guidance_scale=2.0), 3)
    # a damaged file is recomputed, not trusted
    path = cache.path_for(ReferenceKey.of(sd15, _req(), 3))
    path.write_bytes(b"garbage")
    assert torch.equal(cache.get(sd15, _req(), 3), first) and len(calls) == 5
    # quality of a compressed run against it
    q = quality(run_split(_req(n_steps=3), sd15).image, first)
    assert q["mse"].item() > 0 and "ms_ssim" in q
