"""Phase 5: assemble the trained parts into a standard diffusers folder (fp16 safetensors by default).

The folder holds ``model_index.json``, ``unet/``, ``vae/`` (float16 weights by default), ``text_encoder/`` (float32,
see :func:`build_pipeline`), ``tokenizer/`` (the project's vocab.json / merges.txt) and ``scheduler/``, and loads offline with ``StableDiffusionPipeline.from_pretrained(folder)`` (no safety checker, no feature
extractor). ``megbed_model.json`` beside them records the intended defaults (sampler, steps, guidance), the recipe
and the training times; diffusers ignores it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from megbed.testbed.modeltrain.config import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_STEPS,
    DEFAULT_SCHEDULER_CLASS,
    TrainConfig,
    noise_schedule,
)

MODEL_META = "megbed_model.json"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def scheduler_config(cfg: TrainConfig | None = None) -> dict[str, Any]:
    """The exported scheduler: DPM++ 2M on the recipe's training noise schedule (other samplers build from its
    config); None: SD's (:data:`~megbed.testbed.modeltrain.config.NOISE_SCHEDULE`)."""
    return {**noise_schedule(cfg), "algorithm_type": "dpmsolver++", "solver_order": 2}


def build_pipeline(out_dir: str | Path, dtype: torch.dtype = torch.float16, cfg: TrainConfig | None = None):
    """A ``StableDiffusionPipeline`` from the trained parts in ``out_dir`` (vae_final, unet_final, tokenizer)."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    from megbed.testbed.modeltrain.tokenizer import load_tokenizer

    out_dir = Path(out_dir)
    vae = AutoencoderKL.from_pretrained(out_dir / "vae_final", local_files_only=True, torch_dtype=dtype)
    # The text encoder stays float32 (0.6 M parameters): transformers 5 keeps a checkpoint's dtype on load while
    # diffusers upcasts to float32, so an fp16 text encoder would break a plain from_pretrained(dir) on CPU.
    te = CLIPTextModel.from_pretrained(out_dir / "unet_final" / "text_encoder", local_files_only=True,
                                       dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(out_dir / "unet_final" / "unet", local_files_only=True,
                                                torch_dtype=dtype)
    tokenizer = load_tokenizer(out_dir / "tokenizer")
    if DEFAULT_SCHEDULER_CLASS != DPMSolverMultistepScheduler.__name__:  # pragma: no cover - config guard
        raise RuntimeError(f"export builds {DPMSolverMultistepScheduler.__name__}, config says {DEFAULT_SCHEDULER_CLASS}")
    scheduler = DPMSolverMultistepScheduler.from_config(scheduler_config(cfg))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe


def export_pipeline(out_dir: str | Path, model_dir: str | Path, cfg: TrainConfig, *,
                    dtype: torch.dtype = torch.float16, times: dict[str, Any] | None = None) -> Path:
    """Write the diffusers folder ``model_dir`` (replacing its standard components, keeping anything else, such
    as a distilled ``ue_decoder/``)."""
    model_dir = Path(model_dir)
    pipe = build_pipeline(out_dir, dtype, cfg)
    staging = model_dir.with_name(model_dir.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    pipe.save_pretrained(staging, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; ship the project's own CLIP-format files instead (one source).
    tok_dir = staging / "tokenizer"
    shutil.rmtree(tok_dir)
    shutil.copytree(Path(out_dir) / "tokenizer", tok_dir)
    meta = {
        "default_scheduler": DEFAULT_SCHEDULER_CLASS,
        "default_num_inference_steps": DEFAULT_NUM_STEPS,
        "default_guidance_scale": DEFAULT_GUIDANCE_SCALE,
        "image_size_px": cfg.image_size_px,
        "weights_dtype": str(dtype).removeprefix("torch."),
        "recipe": cfg.to_dict(),
        "training_times": times or {},
        "trained_by": "python -m megbed.testbed.modeltrain (megbed model train)",
    }
    (staging / MODEL_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in (*COMPONENTS, "model_index.json", MODEL_META):
        src, dst = staging / name, model_dir / name
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        if src.exists():
            shutil.move(str(src), str(dst))
    shutil.rmtree(staging)
    return model_dir


def read_model_meta(model_dir: str | Path) -> dict[str, Any]:
    """``megbed_model.json`` of a model folder, or ``{}`` for folders not trained by megbed (e.g. SD-1.5)."""
    path = Path(model_dir) / MODEL_META
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))
