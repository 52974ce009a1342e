"""Optional learned metrics: CLIP score, Fréchet distance on CLIP features, LPIPS -- only from local weights.

megbed never downloads weights. Each metric returns a :class:`MetricOutcome`; when its weights are not given (or
its package is absent) the outcome is *skipped* with a message saying what to provide, instead of raising. Weights
a user points at that cannot be loaded are an error (:class:`FeatureMetricError`).

* **CLIP score** (Hessel et al. 2021): ``100 * max(cos(E_image, E_text), 0)`` per image, from a transformers
  ``CLIPModel`` folder (config.json + safetensors + tokenizer files), e.g. a local copy of
  openai/clip-vit-large-patch14.
* **FD-CLIP**: the Fréchet distance between Gaussians fitted to CLIP image embeddings of two image sets
  (Kynkäänniemi et al. 2023 use CLIP features for FID). Inception-v3 FID needs torchvision and pickled weights,
  which megbed does not load; FD-CLIP is reported under its own name so the two are never mixed up. Like FID it
  needs many images per set to be meaningful (it is biased for small sets).
* **LPIPS** (Zhang et al. 2018) through the ``lpips`` package when installed, with its backbone weights already in
  the torch hub cache (``torch.hub.get_dir()/checkpoints``). Those files are torch checkpoints the user placed
  there; megbed does not fetch them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megbed.testbed.ldm.errors import FeatureMetricError
from megbed.testbed.ldm.metrics import as_image_batch

# OpenAI CLIP preprocessing constants (used when the folder has no preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth",
                        "squeeze": "squeezenet1_1-b8a52dc0.pth"}


@dataclass(frozen=True)
class MetricOutcome:
    """One optional metric's result.

    Attributes
    ----------
    name : str
        ``"clip_score"``, ``"fd_clip"`` or ``"lpips"``.
    value : float or None
        Mean over images (or the set distance); None when skipped.
    per_image : tuple[float, ...]
        Per-image values where the metric has them.
    skipped : str or None
        Why it was not computed.
    """

    name: str
    value: float | None
    per_image: tuple[float, ...] = ()
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.skipped is None


class ClipFeatures:
    """A local CLIP model: image and text embeddings (L2-normalised).

    Parameters
    ----------
    folder : str or Path
        A transformers ``CLIPModel`` folder.
    device : str or torch.device
    """

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu") -> None:
        from transformers import CLIPModel, CLIPTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FeatureMetricError(f"CLIP folder {folder} has no config.json")
        try:
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True).to(device)
            self.tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise FeatureMetricError(f"cannot load a CLIP model from {folder}: {exc}") from exc
        self.model.eval()
        self.device = torch.device(device)
        self.image_size = int(self.model.config.vision_config.image_size)
        mean, std = CLIP_MEAN, CLIP_STD
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            import json

            cfg = json.loads(pre.read_text(encoding="utf-8"))
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        x = as_image_batch(images, "images").float().to(self.device)
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)  # resize the shorter side, then centre-crop, as CLIP's processor does
        size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[..., top:top + self.image_size, left:left + self.image_size].clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> ``[B, D]`` unit vectors."""
        out = self.model.get_image_features(pixel_values=self._pixels(images))
        out = getattr(out, "pooler_output", out)
        return torch.nn.functional.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> ``[B, D]`` unit vectors (truncated to the model's context)."""
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        out = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        out = getattr(out, "pooler_output", out)
        return torch.nn.functional.normalize(out.float(), dim=-1)


def _skip(name: str, why: str) -> MetricOutcome:
    return MetricOutcome(name, None, (), f"{name} skipped: {why}")


def clip_score(images: torch.Tensor, prompts: Sequence[str], clip: ClipFeatures | str | Path | None) -> MetricOutcome:
    """CLIP score of each image against its prompt (``100 * max(cos, 0)``); skipped without CLIP weights."""
    if clip is None:
        return _skip("clip_score", "no local CLIP weights given (point clip_dir at a transformers CLIPModel folder)")
    clip = clip if isinstance(clip, ClipFeatures) else ClipFeatures(clip)
    if len(prompts) != as_image_batch(images, "images").shape[0]:
        raise FeatureMetricError(f"{len(prompts)} prompts for {as_image_batch(images, 'images').shape[0]} images")
    cos = (clip.image_embeds(images) * clip.text_embeds(prompts)).sum(dim=-1)
    values = (100.0 * cos.clamp_min(0)).double().cpu()
    return MetricOutcome("clip_score", float(values.mean()), tuple(values.tolist()))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` (the FID formula), float64.

    A singular product (fewer samples than dimensions) gets ``eps * I`` added to both covariances, as pytorch-fid
    does.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise FeatureMetricError(f"Fréchet distance needs matching shapes, got {mu1.shape}/{s1.shape} and "
                                 f"{mu2.shape}/{s2.shape}")
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    # Equal distributions give a tiny negative number from the square root's rounding: report 0 instead.
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)))


def _gaussian(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = features.double().cpu().numpy()
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fd_clip(images: torch.Tensor, references: torch.Tensor, clip: ClipFeatures | str | Path | None) -> MetricOutcome:
    """Fréchet distance between CLIP image-embedding distributions of two image sets (at least 2 images each)."""
    if clip is None:
        return _skip("fd_clip", "no local CLIP weights given (point clip_dir at a transformers CLIPModel folder)")
    n_a, n_b = as_image_batch(images, "images").shape[0], as_image_batch(references, "references").shape[0]
    if min(n_a, n_b) < 2:
        return _skip("fd_clip", f"needs at least 2 images per set, got {n_a} and {n_b}")
    clip = clip if isinstance(clip, ClipFeatures) else ClipFeatures(clip)
    value = frechet_distance(*_gaussian(clip.image_embeds(images)), *_gaussian(clip.image_embeds(references)))
    return MetricOutcome("fd_clip", value)


def lpips_distance(images: torch.Tensor, references: torch.Tensor, net: str = "alex") -> MetricOutcome:
    """LPIPS per image through the ``lpips`` package; skipped when it or its cached backbone weights are absent."""
    try:
        import lpips  # type: ignore[import-not-found]
    except ImportError:
        return _skip("lpips", "the lpips package is not installed (pip install lpips torchvision, and place the "
                              "backbone weights in the torch hub cache: megbed never downloads)")
    if net not in LPIPS_BACKBONE_FILES:
        raise FeatureMetricError(f"LPIPS backbone {net!r} is not one of {sorted(LPIPS_BACKBONE_FILES)}")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]
    if not cached.is_file():
        return _skip("lpips", f"backbone weights {cached} are not in the torch hub cache")
    x, y = as_image_batch(images, "images").float(), as_image_batch(references, "references").float()
    model: Any = lpips.LPIPS(net=net, verbose=False).eval()
    with torch.no_grad():
        values = model(x * 2 - 1, y.expand_as(x) * 2 - 1).flatten().double()
    return MetricOutcome("lpips", float(values.mean()), tuple(values.tolist()))


def optional_metrics(images: torch.Tensor, references: torch.Tensor, prompts: Sequence[str], *,
                     clip_dir: str | Path | None = None, lpips_net: str | None = None,
                     device: torch.device | str = "cpu") -> dict[str, MetricOutcome]:
    """CLIP score, FD-CLIP and LPIPS where their weights are available; each skipped cleanly otherwise."""
    clip = ClipFeatures(clip_dir, device) if clip_dir is not None else None
    out = {"clip_score": clip_score(images, prompts, clip), "fd_clip": fd_clip(images, references, clip)}
    out["lpips"] = (lpips_distance(images, references, lpips_net) if lpips_net
                    else _skip("lpips", "not requested (pass lpips_net='alex' with the lpips package installed)"))
    return out
