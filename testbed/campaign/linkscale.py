"""The campaign's link as the broker gets it: ``scale_to_latent`` resolved against the model's latent.

A link file may say ``scale_to_latent: [4, 128, 128]`` (the paper's SDXL latent); the bandwidth is then scaled by
model latent elements / reference elements so the model's latent takes the airtime the reference latent would
take at ``bandwidth_hz`` (:attr:`megbed.channel_emu.config.LinkConfig.bandwidth_scale`). The model's latent shape
``[C, H/f, W/f]`` is read from its folder (U-Net ``in_channels`` and ``sample_size``, VAE factor from the VAE's
``block_out_channels``) and written into a resolved copy of the link file in the run folder (``link.yaml``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megbed.channel_emu.config import LinkConfig


def model_latent(model_dir: Path, height_px: int | None = None, width_px: int | None = None) -> list[int]:
    """``[C, H, W]`` of the model's latent at the requested size (None: the model's default size)."""
    unet = json.loads((Path(model_dir) / "unet" / "config.json").read_text())
    vae = json.loads((Path(model_dir) / "vae" / "config.json").read_text())
    factor = 2 ** max(len(vae.get("block_out_channels", [0])) - 1, 0)
    side = int(unet["sample_size"]) if not isinstance(unet["sample_size"], list) else int(unet["sample_size"][0])
    h = int(height_px) // factor if height_px else side
    w = int(width_px) // factor if width_px else side
    return [int(unet["in_channels"]), h, w]


def resolve_link(link_config: Path | None, model_dir: Path, run_dir: Path, height_px: int | None = None,
                 width_px: int | None = None) -> tuple[Path | None, dict[str, Any], dict[str, Any]]:
    """(link file for the broker, manifest section, per-row columns)."""
    cfg = LinkConfig.load(link_config) if link_config is not None else LinkConfig()
    path = link_config
    if cfg.scale_to_latent and not cfg.model_latent:
        cfg = cfg.replace(model_latent=model_latent(model_dir, height_px, width_px))
        import yaml

        path = Path(run_dir) / "link.yaml"
        header = f"# {link_config} with model_latent filled in from {model_dir} (scale_to_latent)\n"
        path.write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    section = {"file": None if path is None else str(path), "mode": cfg.mode,
               "bandwidth_physical_hz": cfg.bandwidth_hz, "bandwidth_scale": cfg.bandwidth_scale,
               "bandwidth_hz": cfg.effective_bandwidth_hz, "scale_to_latent": cfg.scale_to_latent,
               "model_latent": cfg.model_latent,
               "note": ("airtime charged at bandwidth_hz = physical x scale, so the model's latent takes the "
                        "reference latent's airtime at the physical bandwidth") if cfg.scale_to_latent else
                       "physical link, unscaled"}
    columns = {"ch_bandwidth_hz": cfg.effective_bandwidth_hz, "ch_bandwidth_scale": cfg.bandwidth_scale,
               "ch_bandwidth_physical_hz": cfg.bandwidth_hz}
    return path, section, columns
