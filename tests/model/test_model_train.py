"""The training entry point: tokenizer, a few steps of each phase, checkpoints, resume, export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from model_helpers import TINY

from megbed.testbed.modeltrain.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_modules,
    save_checkpoint,
)
from megbed.testbed.modeltrain.config import TrainConfig
from megbed.testbed.modeltrain.data import derive_seed, step_rngs, training_caption, vae_crops
from megbed.testbed.modeltrain.runner import TrainError, main, train
from megbed.testbed.modeltrain.tokenizer import EOW, UNK, load_tokenizer, write_tokenizer
from megbed.testbed.shapes.dataset import generate
from megbed.testbed.shapes.scene import NamedObject
from megbed.testbed.shapes.vocab import WORDS


def test_tokenizer_clip_format_every_word_one_token(tmp_path):
    folder = write_tokenizer(tmp_path / "tok", list(WORDS), 32)
    assert {p.name for p in folder.iterdir()} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    assert (folder / "merges.txt").read_text().startswith("#version")
    vocab = json.loads((folder / "vocab.json").read_text())
    tok = load_tokenizer(folder)
    ids = tok("A large RED circle on the left, and a small blue square at the top.").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(ids[1:5]) == ["a" + EOW, "large" + EOW, "red" + EOW, "circle" + EOW]
    # unknown words and characters never fail: letters become pieces, anything else <|unk|>
    odd = tok("zebra 42 café ☃", padding="max_length", max_length=32, truncation=True).input_ids
    assert len(odd) == 32 and vocab[UNK] in odd
    assert tok("", padding="max_length", max_length=32).input_ids[:2] == [tok.bos_token_id, tok.eos_token_id]


def test_training_captions_dropout_and_distractors():
    objs = (NamedObject("circle", "red", "large", "left"),)
    rng = np.random.default_rng(0)
    caps = [training_caption(objs, rng, cfg_dropout=0.2, distractor_prob=0.5) for _ in range(400)]
    assert 0.12 < caps.count("") / 400 < 0.28
    assert any(len(c.split()) > 7 for c in caps)  # distractor words were inserted
    assert all("red" in c for c in caps if c)


def test_step_randomness_is_stateless_and_seeded():
    a, b = step_rngs(1, "vae", 7), step_rngs(1, "vae", 7)
    assert a[0].integers(1 << 30) == b[0].integers(1 << 30)
    assert torch.equal(torch.randn(3, generator=a[1]), torch.randn(3, generator=b[1]))
    assert derive_seed(1, "vae", 7) != derive_seed(1, "vae", 8) != derive_seed(2, "vae", 7)
    pool = generate(4, seed=0).images
    x = vae_crops(pool, np.random.default_rng(0), 3, 32)
    assert x.shape == (3, 3, 32, 32) and float(x.min()) >= -1 and float(x.max()) <= 1


def test_tiny_run_all_phases(tiny_run):
    out, lines, state = tiny_run
    phases = state["phases"]
    assert all(phases[p]["done"] for p in ("tokenizer", "vae", "latents", "unet", "export"))
    assert math.isfinite(phases["vae"]["final_loss"]) and math.isfinite(phases["unet"]["final_loss"])
    assert phases["vae"]["scaling_factor"] > 0
    assert any(line.startswith("[vae] step 4/4") for line in lines)
    assert any(line.startswith("[unet] step 4/4") for line in lines)
    assert state["total"]["cpu_s"] > 0 and state["total"]["wall_s"] > 0
    model = out / "model"
    assert {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= {
        p.name for p in model.iterdir()}
    assert (model / "tokenizer" / "vocab.json").is_file() and (model / "tokenizer" / "merges.txt").is_file()


def test_checkpoints_load_into_fresh_models(tiny_run):
    from megbed.testbed.modeltrain.unet_train import new_networks
    from megbed.testbed.modeltrain.vae_train import new_vae

    out, _, _ = tiny_run
    cfg = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    ck = load_checkpoint(out / "vae_ckpt")
    assert ck.state["step"] == 4 and ck.optim is not None
    vae = new_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters())
    restore_modules(ck, {"vae": vae}, opt)
    assert opt.state_dict()["state"][0]["exp_avg"].shape == next(vae.parameters()).shape
    te, unet = new_networks(cfg, load_tokenizer(out / "tokenizer"))
    ck = load_checkpoint(out / "unet_ckpt")
    restore_modules(ck, {"text_encoder": te, "unet": unet})
    assert set(ck.ema) == {"text_encoder", "unet"}
    # only the newest checkpoint is kept, and nothing in the folder is a pickle
    assert len(list((out / "unet_ckpt").glob("ckpt_*.safetensors"))) == 1
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))


def test_losses_fall_on_a_fixed_batch():
    """A few optimiser steps on one batch reduce each phase's loss (the training signal is wired correctly)."""
    from megbed.testbed.modeltrain.tokenizer import write_tokenizer as wt
    from megbed.testbed.modeltrain.unet_train import alphas_cumprod, diffusion_loss, new_networks, tokenize
    from megbed.testbed.modeltrain.vae_train import new_vae, vae_loss

    cfg = TrainConfig()
    vae = new_vae(cfg)
    x = vae_crops(generate(4, seed=1).images, np.random.default_rng(0), 4, 32)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss, _ = vae_loss(vae, x, torch.Generator().manual_seed(0), cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(wt(d, list(WORDS), cfg.text.max_length))
    te, unet = new_networks(cfg, tok)
    ids = tokenize(tok, ["a large red circle on the left"] * 4, cfg.text.max_length)
    z = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    acp = alphas_cumprod()
    params = list(te.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(6):
        loss, _ = diffusion_loss(te, unet, z, ids, acp, torch.Generator().manual_seed(2), 5.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


class _Stop(Exception):
    pass


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """An interrupted VAE phase resumed from its checkpoint ends with the weights of an uninterrupted run."""
    import megbed.testbed.modeltrain.vae_train as vt

    cfg = TrainConfig(seed=5).with_overrides(**{"vae.steps": 4, "vae.batch_size": 2, "vae.crop_px": 32,
                                                "vae.pool_images": 4, "vae.checkpoint_every": 2})
    quiet = lambda line: None  # noqa: E731
    vt.train_vae(cfg, tmp_path / "straight", log=quiet)

    real = vt.save_checkpoint

    def crash_after_first(folder, step, **kw):
        real(folder, step, **kw)
        if step == 2:
            raise _Stop

    monkeypatch.setattr(vt, "save_checkpoint", crash_after_first)
    with pytest.raises(_Stop):
        vt.train_vae(cfg, tmp_path / "resumed", log=quiet)
    monkeypatch.setattr(vt, "save_checkpoint", real)
    lines: list[str] = []
    vt.train_vae(cfg, tmp_path / "resumed", log=lines.append)
    assert any("resuming at step 2" in line for line in lines)
    a = load_checkpoint(tmp_path / "straight" / "vae_ckpt").modules["vae"]
    b = load_checkpoint(tmp_path / "resumed" / "vae_ckpt").modules["vae"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_existing_run_needs_resume_and_same_recipe(tiny_run, tmp_path):
    out, _, _ = tiny_run
    with pytest.raises(TrainError, match="--resume"):
        train(out, phases=("tokenizer",))
    with pytest.raises(TrainError, match="differs"):
        train(out, cfg=TrainConfig(seed=99), resume=True, phases=("tokenizer",))
    with pytest.raises(TrainError, match="not been run"):
        train(tmp_path / "fresh", phases=("unet",))
    assert main(["--out", str(tmp_path / "bad"), "--set", "vae.nope=1"]) == 2
    assert main(["--out", str(tmp_path / "bad2"), "--set", "novalue"]) == 2


def test_truncated_checkpoint_is_refused(tmp_path):
    m = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 1, modules={"m": m})
    f = next(tmp_path.glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_tiny_args_are_real_settings():
    TrainConfig().with_overrides(**{k: json.loads(v) for k, v in (kv.split("=") for kv in TINY)})


def test_text_encoder_frozen_for_its_first_steps(tiny_run, tmp_path):
    """With ``unet.text_freeze_steps`` the text encoder keeps its initial weights while the U-Net trains."""
    import shutil

    from megbed.testbed.modeltrain.checkpoint import load_checkpoint
    from megbed.testbed.modeltrain.runner import _load_latents
    from megbed.testbed.modeltrain.tokenizer import load_tokenizer
    from megbed.testbed.modeltrain.unet_train import new_networks, train_unet

    src, _, _ = tiny_run
    out = tmp_path / "run"
    for part in ("tokenizer", "vae_final", "latents"):
        shutil.copytree(src / part, out / part)
    cfg = TrainConfig.from_dict(json.loads((src / "config.json").read_text())).with_overrides(
        **{"unet.text_freeze_steps": 2, "unet.steps": 2, "unet.checkpoint_every": 1})
    scale = float(json.loads((out / "vae_final" / "config.json").read_text())["scaling_factor"])
    train_unet(cfg, out, _load_latents(cfg, out, lambda _: None), scale, log=lambda _: None)
    ck = load_checkpoint(out / "unet_ckpt")
    te0, unet0 = new_networks(cfg, load_tokenizer(out / "tokenizer"))
    assert all(torch.equal(v, ck.modules["text_encoder"][k]) for k, v in te0.state_dict().items())
    assert any(not torch.equal(v, ck.modules["unet"][k]) for k, v in unet0.state_dict().items())


def test_recipe_noise_schedule_reaches_training_and_export():
    """``unet.prediction_type`` / ``zero_terminal_snr`` set the schedule training uses and the exported scheduler."""
    from megbed.testbed.modeltrain.config import noise_schedule
    from megbed.testbed.modeltrain.export import scheduler_config
    from megbed.testbed.modeltrain.unet_train import alphas_cumprod, diffusion_loss, new_networks, tokenize

    v = TrainConfig()  # the shipped recipe: zero terminal SNR, v-prediction
    sd = v.with_overrides(**{"unet.prediction_type": "epsilon", "unet.zero_terminal_snr": False})
    assert noise_schedule(sd)["prediction_type"] == "epsilon" and float(alphas_cumprod(sd)[-1]) > 1e-3
    acp = alphas_cumprod(v)
    assert float(acp[-1]) == 0.0 and bool((acp[1:] <= acp[:-1]).all())
    sc = scheduler_config(v)
    assert sc["prediction_type"] == "v_prediction" and sc["rescale_betas_zero_snr"] is True
    for bad in ({"unet.prediction_type": "sample"}, {"unet.zero_terminal_snr": True}):
        with pytest.raises(ValueError, match="prediction_type"):
            noise_schedule(sd.with_overrides(**bad))
    # the v-prediction loss is finite at SNR 0 and falls on a fixed batch
    import tempfile

    from megbed.testbed.modeltrain.tokenizer import write_tokenizer as wt

    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(wt(d, list(WORDS), v.text.max_length))
    te, unet = new_networks(v, tok)
    ids = tokenize(tok, ["a small blue square at the top"] * 4, v.text.max_length)
    z = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(list(te.parameters()) + list(unet.parameters()), lr=1e-3)
    losses = []
    for _ in range(6):
        loss, _ = diffusion_loss(te, unet, z, ids, acp, torch.Generator().manual_seed(2), 5.0, "v_prediction")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_lr_schedule_warm_restart():
    """``unet.lr_restart_steps``: the decay first ends at the restart, then follows the decay over all the steps --
    what resuming a finished 2000-step run with ``steps`` 2600 did for the shipped model."""
    from megbed.testbed.modeltrain.schedule import cycle_total, lr_at

    kw = {"lr": 1e-3, "lr_min": 1e-5, "warmup": 10}
    lrs = [lr_at(s, total=cycle_total(s, 260, (200,)), **kw) for s in range(260)]
    assert lrs[:200] == [lr_at(s, total=200, **kw) for s in range(200)]
    assert lrs[199] < 1.1e-5 and lrs[200] == pytest.approx(lr_at(200, total=260, **kw)) and lrs[200] > 10 * lrs[199]
    assert all(b <= a for a, b in zip(lrs[200:-1], lrs[201:], strict=True))
    plain = [lr_at(s, total=260, **kw) for s in range(260)]
    assert [lr_at(s, total=cycle_total(s, 260), **kw) for s in range(260)] == plain
    assert [lr_at(s, total=cycle_total(s, 260, (260, 400)), **kw) for s in range(260)] == plain
    assert TrainConfig().unet.lr_restart_steps == (2000,) and TrainConfig().unet.steps == 2600


def test_out_of_range_recipe_settings_are_refused_naming_the_key():
    from megbed.testbed.modeltrain.config import TrainConfig, TrainConfigError

    cfg = TrainConfig()
    for key, value, words in [("vae.steps", 0, ">= 1"), ("unet.lr", -1.0, "> 0"), ("unet.cfg_dropout", 1.5, "<= 1"),
                              ("seed", -1, ">= 0"), ("vae.grad_clip", 0.0, "> 0"), ("text.num_hidden_layers", 0, ">= 1")]:
        with pytest.raises(TrainConfigError, match=rf"{key.replace('.', '[.]')}: .*{words}"):
            cfg.with_overrides(**{key: value})
    # Settings where 0 means "off" stay open: min-SNR weighting off, no warm-up, no weight decay.
    cfg.with_overrides(**{"unet.min_snr_gamma": 0.0, "unet.warmup_steps": 0, "vae.weight_decay": 0.0})
