"""Loading a trained model folder and measuring prompt adherence on the held-out prompts.

Used by ``megbed model eval``, the tests and ``benchmarks/default_model.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megbed.testbed.shapes.dataset import EvalPrompt
from megbed.testbed.shapes.score import AdherenceRates, ImageScore, adherence, score_image

# Files each component of a StableDiffusionPipeline folder needs (any one of a tuple will do).
REQUIRED_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "unet": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                                "diffusion_pytorch_model.bin")),
    "vae": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                               "diffusion_pytorch_model.bin")),
    "text_encoder": (("config.json",), ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin")),
    "tokenizer": (("vocab.json", "tokenizer.json"), ("merges.txt", "tokenizer.json")),
    "scheduler": (("scheduler_config.json",),),
}


class ModelFilesError(FileNotFoundError):
    """A model folder with a missing or unreadable file; the message names the file."""


def check_model_files(model_dir: str | Path) -> dict:
    """Check that a diffusers SD folder is complete before loading it; returns ``model_index.json``.

    Raises
    ------
    ModelFilesError
        Naming the first missing file (``.../unet/diffusion_pytorch_model.safetensors is missing``).
    """
    model_dir = Path(model_dir)
    index = model_dir / "model_index.json"
    if not model_dir.is_dir():
        raise ModelFilesError(f"model folder {model_dir} does not exist")
    if not index.is_file():
        raise ModelFilesError(f"{index} is missing: {model_dir} is not a diffusers model folder")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFilesError(f"{index} is unreadable: {exc}") from exc
    for component, groups in REQUIRED_FILES.items():
        if component not in data:
            continue
        for names in groups:
            if not any((model_dir / component / n).is_file() for n in names):
                raise ModelFilesError(f"{model_dir / component / names[0]} is missing (the {component} of "
                                      f"{model_dir} is incomplete)")
    return data


def load_sd_pipeline(model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """``StableDiffusionPipeline.from_pretrained(model_dir)`` offline, after :func:`check_model_files`."""
    from diffusers import StableDiffusionPipeline

    check_model_files(model_dir)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(model_dir), torch_dtype=dtype, local_files_only=True, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int, guidance_scale: float,
             batch_size: int = 8, scheduler=None) -> np.ndarray:
    """Images ``[N, H, W, 3]`` uint8, image ``i`` from ``prompts[i]`` with its own generator seeded ``seeds[i]``
    (so a prompt's image does not depend on its batch-mates)."""
    if scheduler is not None:
        pipe.scheduler = scheduler
    out = []
    for i in range(0, len(prompts), batch_size):
        p = list(prompts[i:i + batch_size])
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i:i + batch_size]]
        images = pipe(p, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gens,
                      output_type="np").images
        out.append(np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


@dataclass
class AdherenceResult:
    rates: AdherenceRates
    scores: list[ImageScore]
    images: np.ndarray
    prompts: list[EvalPrompt]


def evaluate_adherence(pipe, prompts: Sequence[EvalPrompt], *, steps: int, guidance_scale: float,
                       batch_size: int = 8) -> AdherenceResult:
    """Generate each held-out prompt with its own seed and score it against what the prompt names."""
    images = generate(pipe, [p.prompt for p in prompts], [p.seed for p in prompts], steps=steps,
                      guidance_scale=guidance_scale, batch_size=batch_size)
    scores = [score_image(img, p.objects) for img, p in zip(images, prompts, strict=True)]
    return AdherenceResult(adherence(scores), scores, images, list(prompts))


def save_grid(images: np.ndarray, path: str | Path, columns: int = 8) -> Path:
    """Tile ``[N, H, W, 3]`` uint8 images into one PNG."""
    from PIL import Image

    n, h, w, _ = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
