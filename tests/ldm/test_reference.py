from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import megbed.testbed.ldm.reference as reference
from megbed.testbed.ldm.metrics import quality
from megbed.testbed.ldm.reference import ReferenceCache, ReferenceKey, local_reference
from megbed.testbed.ldm.runner import run_split
from megbed.testbed.ldm.stages import image_to_uint8, uint8_to_image
from megbed.testbed.request import Request, RequestError


def _req(**kw):
    base = dict(prompt="a lamp", n_steps=2, es_steps=1, merge_ratio=0.5, seed=3, scheduler="ddim",
                tome_ratio_es=0.5, guidance_scale=3.0)
    base.update(kw)
    return Request(**base)


ENGINE = {"model_fingerprint": "abc123", "dtype": "float16", "device": "cuda:1"}


def test_the_key_drops_every_compression_and_keeps_what_sets_the_pixels():
    key = ReferenceKey.for_engine(ENGINE, _req(), 4)
    assert key == ReferenceKey.for_engine(ENGINE, _req(merge_ratio=0.0, es_steps=0, tome_ratio_es=0.0, n_steps=7), 4)
    assert (key.model, key.dtype, key.device_type) == ("abc123", "float16", "cuda")
    assert dict(key.request) == {"prompt": "a lamp", "negative_prompt": "", "seed": 3, "n_steps": 4, "height_px": None,
                                 "width_px": None, "guidance_scale": 3.0, "scheduler": "ddim"}
    for changed in (_req(prompt="a chair"), _req(seed=4), _req(guidance_scale=2.0), _req(negative_prompt="blur"),
                    _req(height_px=128), _req(scheduler="euler")):
        assert ReferenceKey.for_engine(ENGINE, changed, 4).digest() != key.digest()
    assert ReferenceKey.for_engine({**ENGINE, "dtype": "float32"}, _req(), 4) != key
    assert ReferenceKey.for_engine(ENGINE, _req(), 5) != key
    with pytest.raises(RequestError, match="N_max"):
        ReferenceKey.for_engine(ENGINE, _req(), 0)


def test_the_cache_computes_once_checks_the_stored_key_and_refuses_non_images(tmp_path, caplog):
    cache = ReferenceCache(tmp_path / "refs")
    key = ReferenceKey.for_engine(ENGINE, _req(), 4)
    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    calls = []

    def render():
        calls.append(1)
        return pixels

    assert np.array_equal(cache.get(key, render), pixels) and cache.computed == 1
    assert np.array_equal(cache.get(key, render), pixels) and len(calls) == 1  # memory
    again = ReferenceCache(tmp_path / "refs")  # a resumed run: read back from the PNG, lossless
    assert np.array_equal(again.get(key, render), pixels) and len(calls) == 1 and again.computed == 0
    path = cache.path_for(key)
    assert path.suffix == ".png" and len(list((tmp_path / "refs").iterdir())) == 1
    # a file holding another key (a hand-copied folder, a digest collision) is recomputed, not trusted
    other = ReferenceKey.for_engine(ENGINE, _req(seed=9), 4)
    elsewhere = ReferenceCache(tmp_path / "elsewhere")
    elsewhere.get(other, lambda: pixels[::-1].copy())
    path.write_bytes(elsewhere.path_for(other).read_bytes())
    fresh = ReferenceCache(tmp_path / "refs")
    assert np.array_equal(fresh.get(key, render), pixels) and len(calls) == 2 and "another key" in caplog.text
    # a damaged file likewise
    path.write_bytes(b"garbage")
    assert np.array_equal(ReferenceCache(tmp_path / "refs").get(key, render), pixels) and len(calls) == 3
    assert "unreadable" in caplog.text
    with Image.open(path) as img:
        assert json.loads(img.info["megbed-reference-key"]) == json.loads(key.to_json())
    # hostile files under the key's name: each is recomputed, nothing raises
    for name, data in _hostile_pngs().items():
        path.write_bytes(data)
        again = ReferenceCache(tmp_path / "refs")
        assert np.array_equal(again.get(key, render), pixels) and again.computed == 1, name
    # a path that cannot be written: the reference is still returned, kept in memory
    blocked = ReferenceCache(tmp_path / "blocked")
    blocked.path_for(key).mkdir(parents=True)
    assert np.array_equal(blocked.get(key, render), pixels) and blocked.get(key, render) is blocked.get(key, render)
    assert "kept in memory only" in caplog.text
    with pytest.raises(ValueError, match="uint8"):
        ReferenceCache(tmp_path / "bad").get(key, lambda: pixels.astype(np.float32))
    assert not list((tmp_path / "bad").glob("*.png"))


def test_local_reference_is_the_unsplit_n_max_image_at_8_bits(sd15, tmp_path, monkeypatch):
    cache = ReferenceCache(tmp_path / "refs")
    calls = []
    real = reference.compute_reference
    monkeypatch.setattr(reference, "compute_reference", lambda *a: calls.append(a) or real(*a))
    first = local_reference(sd15, _req(), 3, cache)
    again = local_reference(sd15, _req(merge_ratio=0.0, es_steps=0, tome_ratio_es=0.0), 3, cache)  # same reference
    assert len(calls) == 1 and torch.equal(first, again)
    assert first.shape == (1, 3, 64, 64) and first.dtype == torch.float32
    direct = run_split(_req(n_steps=3, es_steps=None, merge_ratio=0.0, tome_ratio_es=0.0), sd15,
                       scheme="ue_local").image
    assert torch.equal(first, uint8_to_image(image_to_uint8(direct)))
    assert (first - direct).abs().max().item() <= 0.5 / 255 + 1e-6
    local_reference(sd15, _req(prompt="a chair"), 3, cache)
    local_reference(sd15, _req(seed=4), 3, cache)
    local_reference(sd15, _req(), 2, cache)
    assert len(calls) == 4 and len(list((tmp_path / "refs").glob("*.png"))) == 4
    key = ReferenceKey.for_model(sd15, _req(), 3)
    assert (key.model, key.dtype, key.device_type) == (sd15.fingerprint(), "float32", "cpu")
    assert dict(key.request)["height_px"] == 64 and dict(key.request)["scheduler"]  # resolved by the model
    q = quality(run_split(_req(n_steps=3), sd15).image, first)
    assert q["mse"].item() > 0 and "ms_ssim" in q


def _hostile_pngs() -> dict[str, bytes]:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def png(width: int, height: int, extra: bytes = b"") -> bytes:
        header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        return (b"\x89PNG\r\n\x1a\n" + header + extra + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                + chunk(b"IEND", b""))

    text = b"tEXt", b"megbed-reference-key\0"
    return {
        "a decompression bomb header": png(60_000, 60_000),
        "truncated": png(4, 4)[:40],
        "empty": b"",
        "key text not JSON": png(4, 4, chunk(text[0], text[1] + b"{not json")),
        "key text nested 100,000 deep": png(4, 4, chunk(text[0], text[1] + b"[" * 100_000 + b"]" * 100_000)),
        "key text of another type": png(4, 4, chunk(text[0], text[1] + b"[1, 2]")),
    }
