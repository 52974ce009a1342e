"""The shipped default model: loads with the stock pipeline, generates, handles bad input, follows prompts.

These tests check the folder in ``testbed/assets/default_model/``. They skip (saying why) only while that folder has
no ``model_index.json``, i.e. before the trained weights are committed; once they are, every test here runs.
"""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from megbed.testbed.assets import default_model_dir
from megbed.testbed.modeltrain.evaluate import (
    ModelFilesError,
    check_model_files,
    evaluate_adherence,
    generate,
    load_sd_pipeline,
)
from megbed.testbed.shapes.dataset import heldout_prompts

MODEL = default_model_dir()

pytestmark = pytest.mark.skipif(
    not (MODEL / "model_index.json").is_file(),
    reason=f"the default model is not installed yet ({MODEL / 'model_index.json'} does not exist; train and install "
           "it with `megbed model train --out DIR --install`)",
)


@pytest.fixture(scope="module")
def pipe():
    return load_sd_pipeline(MODEL)


def test_shipped_folder_is_standard_small_and_fp16():
    index = check_model_files(MODEL)
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (MODEL / part).is_dir()
    assert (MODEL / "tokenizer" / "vocab.json").is_file() and (MODEL / "tokenizer" / "merges.txt").is_file()
    # 30 MB in all, the distilled ue_decoder/ included.
    total = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert total <= 30e6, f"default model is {total / 1e6:.1f} MB"
    from safetensors import safe_open

    for part in ("unet", "vae"):
        with safe_open(str(MODEL / part / "diffusion_pytorch_model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}, part
    assert not list(MODEL.rglob("*.bin")) and not list(MODEL.rglob("*.pkl"))
    meta = json.loads((MODEL / "megbed_model.json").read_text())
    assert meta["default_num_inference_steps"] >= 1 and meta["default_guidance_scale"] > 1


def test_plain_from_pretrained_generates_128px():
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(str(MODEL))
    assert p.safety_checker is None
    p.set_progress_bar_config(disable=True)
    img = p("a large red circle on the left", num_inference_steps=4, output_type="np",
            generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 128, 128, 3) and np.isfinite(img).all()


def test_unknown_words_and_empty_prompt_generate(pipe):
    tok = pipe.tokenizer
    # Words outside the vocabulary still tokenize (sub-word / letter pieces or <|unk|>), never to nothing.
    ids = tok("zebra 42 café ☃ photorealistic").input_ids
    assert len(ids) > 2 and all(0 <= i < tok.vocab_size for i in ids)
    images = generate(pipe, ["a large red circle on the left, zebra 42 café ☃ photorealistic", "", "???"],
                      [0, 1, 2], steps=4, guidance_scale=5.0)
    assert images.shape == (3, 128, 128, 3)
    assert images.std(axis=(1, 2, 3)).min() > 0  # not blank


@pytest.mark.parametrize("name", ["ddim", "euler", "euler_a", "dpmpp_2m", "unipc"])
def test_runtime_samplers_build_from_the_config(pipe, name):
    from megbed.testbed.ldm.schedulers import build_scheduler

    sch = build_scheduler(name, pipe.scheduler.config)
    original = pipe.scheduler
    try:
        img = generate(pipe, ["a small blue square at the top"], [3], steps=4, guidance_scale=5.0, scheduler=sch)
    finally:
        pipe.scheduler = original
    assert img.shape == (1, 128, 128, 3) and img.std() > 0


def test_missing_weights_file_names_the_file(tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(MODEL, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelFilesError, match=r"unet/diffusion_pytorch_model\.safetensors is missing"):
        load_sd_pipeline(broken)
    from megbed.testbed.cli.main import CliError
    from megbed.testbed.cli.model import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["model", "eval", "--model", str(broken), "--prompts", "1"])
    with pytest.raises(CliError, match="diffusion_pytorch_model.safetensors"):
        args.func(args)


def test_adherence_on_a_held_out_subset(pipe):
    """8 held-out prompts (4 with one shape, 4 with two), 10 steps: far above chance (color 1/8, position 1/5)."""
    res = evaluate_adherence(pipe, heldout_prompts(8), steps=10, guidance_scale=5.0)
    assert res.rates.n_objects == 12
    assert res.rates.color >= 0.6, res.rates
    assert res.rates.position >= 0.5, res.rates


def test_quality_falls_with_fewer_steps_and_more_merging():
    """Through the runtime (MEG, k = N, float16 wire): -ln MSE against the 12-step reference drops as N falls and as
    beta rises -- the trade-off the policy learns (benchmarks/default_model.py measures the whole table)."""
    from megbed.testbed.ldm.metrics import neg_log_mse
    from megbed.testbed.ldm.model import load_pipeline
    from megbed.testbed.ldm.reference import compute_reference
    from megbed.testbed.ldm.runner import run_split
    from megbed.testbed.request import Request

    model = load_pipeline(MODEL, device="cpu", dtype=torch.float32)
    scores: dict[tuple[int, float], list[float]] = {}
    for p in heldout_prompts(2):
        req = Request(p.prompt, n_steps=12, seed=p.seed, guidance_scale=5.0)
        ref = compute_reference(model, req, 12)
        for n, beta in ((12, 0.0), (12, 0.75), (3, 0.0)):
            img = run_split(req.replace(n_steps=n, merge_ratio=beta), model, scheme="meg").image
            scores.setdefault((n, beta), []).append(float(neg_log_mse(img, ref)[0]))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean[12, 0.0] > 12.0, mean  # only the float16 wire separates it from the reference
    assert mean[12, 0.0] > mean[12, 0.75] + 1.0, mean
    assert mean[12, 0.0] > mean[3, 0.0] + 1.0, mean


def test_cli_eval_prints_rates(tmp_path, capsys):
    from megbed.testbed.cli.model import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "eval.json"
    args = parser.parse_args(["model", "eval", "--prompts", "2", "--steps", "2", "--threads", "1",
                              "--json", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "color correct:" in text and "position correct:" in text
    data = json.loads(out.read_text())
    assert data["rates"]["n_images"] == 2 and len(data["prompts"]) == 2
