"""Helpers of the default-model tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

# Recipe overrides of the tiny training run: the real architectures, a few steps of each phase on a few images.
TINY = [
    "vae.steps=4", "vae.batch_size=4", "vae.crop_px=32", "vae.pool_images=8", "vae.checkpoint_every=2",
    "unet.steps=4", "unet.dataset_images=24", "unet.batch_size=4", "unet.encode_batch=8",
    "unet.checkpoint_every=2",
]
