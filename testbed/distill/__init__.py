"""Offline distillation of the merge- and noise-robust UE decoder (the paper's "backbone meta-architecture").

One decoder (``post_quant_conv`` + VAE decoder, initialised from the base VAE) is trained for every option the
policy may pick: any ES step count N, any merging ratio beta, any link noise. Inputs are the ES latents after N
steps, merged / sent through the link / un-merged exactly as the runtime does it; targets are the N_ref-step
reference images (same prompt and seed). The result ships as ``<model>/ue_decoder`` and is picked per UE with
``decoder="distilled"`` (:func:`megbed.testbed.ldm.model.load_pipeline`).

Modules:

* ``config``: :class:`DistillConfig` / :class:`NoiseConfig` (JSON-able recipe, validated).
* ``prompts``: training prompts (the default model's grammar or a file) and the held-out evaluation prompts.
* ``cache``: :func:`build_cache` / :class:`LatentCache` -- ES latents and references precomputed as safetensors.
* ``link``: :class:`TrainingLink` -- merge, handoff frame, channel emulator (or the paper's sigma), un-merge.
* ``decoder``: :class:`TrainableDecoder`, :func:`export_decoder`, :func:`install_decoder`, :func:`check_folder_fits`.
* ``checkpoint``: safetensors + JSON checkpoints (no pickle).
* ``train``: :class:`Distiller` (AdamW, warm-up + cosine, seeded per-step draws, resumable) and :func:`lr_at`.
* ``evaluate``: the base-vs-distilled distortion table (:func:`evaluate`, :func:`summarize`, :func:`format_tables`).

The command line is ``megbed distill train | precompute | eval | install`` (:mod:`megbed.testbed.cli.distill`).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DistillConfig": "megbed.testbed.distill.config", "NoiseConfig": "megbed.testbed.distill.config",
    "DistillConfigError": "megbed.testbed.distill.config",
    "PromptSpec": "megbed.testbed.distill.prompts", "training_prompts": "megbed.testbed.distill.prompts",
    "heldout_prompts": "megbed.testbed.distill.prompts",
    "LatentCache": "megbed.testbed.distill.cache", "LatentCacheError": "megbed.testbed.distill.cache",
    "build_cache": "megbed.testbed.distill.cache",
    "TrainingLink": "megbed.testbed.distill.link", "NoiseDraw": "megbed.testbed.distill.link",
    "TrainableDecoder": "megbed.testbed.distill.decoder", "export_decoder": "megbed.testbed.distill.decoder",
    "install_decoder": "megbed.testbed.distill.decoder", "check_folder_fits": "megbed.testbed.distill.decoder",
    "CheckpointError": "megbed.testbed.distill.checkpoint",
    "Distiller": "megbed.testbed.distill.train", "lr_at": "megbed.testbed.distill.train",
    "evaluate": "megbed.testbed.distill.evaluate", "summarize": "megbed.testbed.distill.evaluate",
    "paired": "megbed.testbed.distill.evaluate", "format_tables": "megbed.testbed.distill.evaluate",
    "conditions": "megbed.testbed.distill.evaluate", "Condition": "megbed.testbed.distill.evaluate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'megbed.testbed.distill' has no attribute {name!r}")
