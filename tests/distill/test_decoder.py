"""The trainable decoder, its export and installation, and the geometry check on decoder folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from megbed.testbed.distill.decoder import (
    TrainableDecoder,
    check_folder_fits,
    export_decoder,
    install_decoder,
)
from megbed.testbed.distill.train import Distiller
from megbed.testbed.ldm.model import DecoderMismatchError, ModelLoadError, load_decoder, load_pipeline


def _latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_untrained_copy_decodes_exactly_like_the_base_decoder(sd15):
    dec = TrainableDecoder.from_model(sd15)
    x = _latents()
    assert torch.equal(dec.decode(x), sd15.base_decoder.decode(x))
    assert dec.vae is not sd15.pipe.vae
    trainable = {n.split(".")[0] for n, p in dec.vae.named_parameters() if p.requires_grad}
    assert trainable == {"decoder", "post_quant_conv"}


def test_export_loads_through_the_runtime_and_decodes_the_same(sd15, tmp_path):
    dec = TrainableDecoder.from_model(sd15)
    with torch.no_grad():
        dec.vae.decoder.conv_out.bias.add_(0.05)  # a "trained" decoder
    out = export_decoder(dec, tmp_path / "ue_decoder", dtype=torch.float32, meta={"note": "test"})
    assert json.loads((out / "distill.json").read_text())["note"] == "test"
    loaded = load_decoder(out)
    x = _latents(1)
    assert torch.equal(loaded.decode(x), dec.decode(x))
    assert not torch.equal(loaded.decode(x), sd15.base_decoder.decode(x))
    half = export_decoder(dec, tmp_path / "half", dtype=torch.float16)
    assert (half / "diffusion_pytorch_model.safetensors").stat().st_size < 0.6 * (
        out / "diffusion_pytorch_model.safetensors").stat().st_size


def test_install_and_select_per_ue_by_name(sd15, tiny_sd15_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_sd15_dir, model_dir)
    with pytest.raises(ModelLoadError, match="no distilled UE decoder"):
        load_pipeline(model_dir, device="cpu", decoder="distilled")
    before = load_pipeline(model_dir, device="cpu").fingerprint()
    dec = TrainableDecoder.from_model(sd15)
    with torch.no_grad():
        dec.vae.decoder.conv_out.bias.add_(0.05)
    target = install_decoder(export_decoder(dec, tmp_path / "exported", dtype=torch.float32), model_dir)
    assert target == model_dir / "ue_decoder" and (target / "config.json").is_file()
    distilled = load_pipeline(model_dir, device="cpu", decoder="distilled")
    base = load_pipeline(model_dir, device="cpu", decoder="base")
    x = _latents(2)
    assert torch.equal(distilled.decoder.decode(x), dec.decode(x))
    assert torch.equal(base.decoder.decode(x), sd15.base_decoder.decode(x))
    # The reference never uses the UE decoder, and the model's identity does not change with it.
    assert torch.equal(distilled.base_decoder.decode(x), sd15.base_decoder.decode(x))
    assert distilled.fingerprint() == base.fingerprint() == before


def _mismatched_folder(tmp_path, **changes):
    from diffusers import AutoencoderKL

    kw = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
              block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8)
    kw.update(changes)
    n = len(kw["block_out_channels"])
    kw["down_block_types"], kw["up_block_types"] = ["DownEncoderBlock2D"] * n, ["UpDecoderBlock2D"] * n
    folder = tmp_path / f"bad_{len(list(tmp_path.iterdir()))}"
    AutoencoderKL(**kw).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("changes, words", [
    ({"latent_channels": 16}, "16-channel latents"),
    ({"block_out_channels": [8, 16, 16]}, "upsampled x4"),
])
def test_a_decoder_folder_that_does_not_fit_the_latents_is_a_clear_error(sd15, tiny_sd15_dir, tmp_path, recipe,
                                                                         tiny_cache, changes, words):
    bad = _mismatched_folder(tmp_path, **changes)
    with pytest.raises(DecoderMismatchError, match=f"does not fit this model: it decodes .*{words}"):
        load_pipeline(tiny_sd15_dir, device="cpu", decoder=bad)
    with pytest.raises(DecoderMismatchError, match="4 channels and its VAE upsamples x8"):
        check_folder_fits(bad, tiny_sd15_dir)
    with pytest.raises(DecoderMismatchError):
        install_decoder(bad, tiny_sd15_dir)
    assert not (tiny_sd15_dir / "ue_decoder").exists()
    with pytest.raises(DecoderMismatchError):
        Distiller(sd15, tiny_cache, recipe, tmp_path / "run", init_decoder=bad)
