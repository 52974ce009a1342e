"""FLOP counting on configs and the linear cost model recovering the synthetic run's known coefficients."""

from __future__ import annotations

import numpy as np
import pytest

from megbed.analysis.costfit import fit_cost_model, node_steps, ols
from megbed.analysis.load import load_run
from megbed.analysis.model_folder import find_model_dir
from megbed.testbed.ldm import flops
from megbed.testbed.ldm.flops import stage_flops, unet_step_flops, vae_decode_flops
from megbed.testing.ground_truth_run import STEP_S_ES, UE_SLOWDOWN, write_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny-ldm")


def test_ols_closed_form():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    slope, intercept, r2, rmse = ols(x, 2.5 * x + 0.5)
    assert (slope, intercept, r2) == pytest.approx((2.5, 0.5, 1.0))
    assert rmse == pytest.approx(0.0, abs=1e-12)
    # constant work: the model is the mean
    assert ols(np.ones(3), np.array([1.0, 2.0, 3.0]))[:2] == (0.0, 2.0)


def test_flops_scale_as_the_networks_do(tiny_model):
    one = unet_step_flops(str(tiny_model), 64, 64, cfg=False)
    two = unet_step_flops(str(tiny_model), 64, 64, cfg=True)
    assert two == pytest.approx(2 * one)  # classifier-free guidance doubles the batch
    merged = unet_step_flops(str(tiny_model), 64, 64, cfg=False, tome_ratio=0.5)
    assert merged < one  # tomesd removes tokens before attention
    small, big = vae_decode_flops(str(tiny_model), 64, 64), vae_decode_flops(str(tiny_model), 128, 128)
    # convolutions scale with pixels (x4); the mid-block attention adds a little more than that
    assert 4.0 <= big / small < 5.0
    f = stage_flops(tiny_model, 64, 64, cfg=True)
    assert f.text_encode > 0 and f.vae_decode == small and f.unet_step == two


def test_model_folder_is_found_from_the_manifest(tiny_model, tmp_path, monkeypatch):
    assert find_model_dir({"config": {"model_dir": str(tiny_model)}})[0] == tiny_model
    found, tried = find_model_dir({"config": {"model": "tiny-ldm"}}, run_dir=tmp_path)
    assert found is None and tmp_path / "models" / "tiny-ldm" in tried
    monkeypatch.setenv("MEGBED_MODEL_ROOTS", str(tiny_model.parent))
    assert find_model_dir({"config": {"model": "tiny-ldm"}})[0] == tiny_model
    # a folder the caller knows by name (`megbed report` passes the embedded default model this way)
    monkeypatch.delenv("MEGBED_MODEL_ROOTS")
    assert find_model_dir({"config": {"model": "default"}}, named={"default": tiny_model})[0] == tiny_model
    assert find_model_dir({"config": {"model": "default"}})[0] is None


def test_steps_per_node():
    assert node_steps("meg", "es", 8, 8) == 8 and node_steps("meg", "ue", 8, 8) == 0
    assert node_steps("meg", "ue", 8, 5) == 3
    assert node_steps("ceg", "ue", 8, 8) == 0 and node_steps("ue_local", "ue", 8, 0) == 8


def test_fit_recovers_the_synthetic_cost_model(full_run):
    res = fit_cost_model(load_run(full_run, with_traces=False), flop_counter=flops)
    assert res.basis == "flops" and res.work_unit == "TFLOP"
    assert "decode rows of other decoders (distilled) are left out" in res.note
    es, ue = res.fit("es", "latency_s"), res.fit("ue", "latency_s")
    f = stage_flops(full_run / "models" / "tiny-ldm", 64, 64, cfg=True)
    truth_es = STEP_S_ES / (f.unet_step / 1e12)  # the generator's seconds per TFLOP on the ES
    assert es.slope == pytest.approx(truth_es, rel=0.03)
    assert ue.slope / es.slope == pytest.approx(UE_SLOWDOWN, rel=0.05)
    assert es.r2 > 0.99 and ue.r2 > 0.99
    assert res.fit("es", "energy_j") is not None
    assert np.nanmean(res.rows["latency_s_residual"]) == pytest.approx(0.0, abs=1e-3)


def test_without_a_flop_counter_the_fit_falls_back_and_says_so(full_run):
    res = fit_cost_model(load_run(full_run, with_traces=False))  # analysis alone never builds a network
    assert res.basis == "steps" and "no FLOP counter was given" in res.note


def test_fallback_without_the_model_folder_says_so(bare_run):
    res = fit_cost_model(load_run(bare_run, with_traces=False), flop_counter=flops)
    assert res.basis == "steps" and res.work_unit == "U-Net steps"
    assert "FLOPs not counted" in res.note and "not on this machine" in res.note
    assert set(res.rows["stage"]) == {"denoise"}
    es = res.fit("es", "latency_s")
    assert es.slope == pytest.approx(STEP_S_ES, rel=0.05)  # seconds per step in the generator


def test_flop_disk_cache_is_keyed_by_the_model_configs(tiny_model, tmp_path):
    import json

    cache = tmp_path / "flops_cache.json"
    first = stage_flops(tiny_model, 64, 64, cfg=True, disk_cache=cache)
    stored = json.loads(cache.read_text())
    assert len(stored) == 1 and next(iter(stored.values()))["unet_step"] == first.unet_step
    key = next(iter(stored))
    stored[key]["unet_step"] = 123.0  # a cached count is used as is
    cache.write_text(json.dumps(stored))
    assert stage_flops(tiny_model, 64, 64, cfg=True, disk_cache=cache).unet_step == 123.0
    cache.write_text("{broken")  # a damaged cache is recounted, not trusted
    assert stage_flops(tiny_model, 64, 64, cfg=True, disk_cache=cache).unet_step == first.unet_step
