"""Seeded datasets of rendered scenes with captions, and the fixed held-out evaluation prompts.

``generate(n, seed, split)`` is a pure function of its arguments: the same call gives the same images and
captions on every machine (numpy's PCG64 stream, SHA-256 split, float32 rendering).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megbed.testbed.shapes.captions import caption
from megbed.testbed.shapes.render import DEFAULT_SIZE_PX, render
from megbed.testbed.shapes.scene import SPLITS, NamedObject, Scene, SceneError, make_scene, sample_scene

EVAL_SEED = 20240707
DEFAULT_EVAL_PROMPTS = 64


@dataclass
class ShapesDataset:
    """Rendered scenes.

    Attributes
    ----------
    images : numpy.ndarray
        ``[N, H, W, 3]`` uint8 RGB.
    captions : list[str]
        One caption per image (varied phrasing for ``train``, canonical for ``heldout``).
    scenes : list[Scene]
        Ground truth of each image.
    """

    images: np.ndarray
    captions: list[str]
    scenes: list[Scene]

    def __len__(self) -> int:
        return len(self.captions)


def generate(n: int, seed: int, split: str = "train", size_px: int = DEFAULT_SIZE_PX,
             pair_fraction: float = 0.5, vary_captions: bool | None = None) -> ShapesDataset:
    """Render ``n`` random scenes of one split.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int
        Seed of the scene / jitter / background / phrasing stream.
    split : str
        ``"train"`` or ``"heldout"``; a scene's split depends only on what its caption says.
    size_px : int
        Image side in pixels.
    pair_fraction : float
        Probability that a scene holds two shapes.
    vary_captions : bool, optional
        Varied phrasing (object order, omitted sizes, synonyms); default True for train, False for held-out.
    """
    if split not in SPLITS:
        raise SceneError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    vary = (split == "train") if vary_captions is None else vary_captions
    rng = np.random.default_rng([int(seed), SPLITS.index(split)])
    images = np.empty((n, size_px, size_px, 3), np.uint8)
    captions: list[str] = []
    scenes: list[Scene] = []
    for i in range(n):
        scene = sample_scene(rng, split, pair_fraction)
        images[i] = render(scene, size_px)
        captions.append(caption(scene, rng if vary else None))
        scenes.append(scene)
    return ShapesDataset(images, captions, scenes)


@dataclass(frozen=True)
class EvalPrompt:
    """One held-out evaluation prompt: the text, what it names, and the generation seed to use."""

    prompt: str
    objects: tuple[NamedObject, ...]
    seed: int


def heldout_prompts(n: int = DEFAULT_EVAL_PROMPTS, seed: int = EVAL_SEED) -> list[EvalPrompt]:
    """The fixed evaluation set: ``n`` distinct held-out captions, alternately one and two shapes.

    One-shape held-out keys are few (about 40 of 240); when they run out the rest are two-shape prompts. The
    prompts and their order are a pure function of ``(n, seed)``; prompt ``i`` is generated with seed ``i``.
    """
    rng = np.random.default_rng(seed)
    singles = _distinct_heldout(rng, 1, (n + 1) // 2)
    pairs = _distinct_heldout(rng, 2, n - len(singles))
    out: list[EvalPrompt] = []
    while len(out) < n:
        for pool in (singles, pairs):
            if pool and len(out) < n:
                objects = pool.pop(0)
                out.append(EvalPrompt(caption(objects), objects, len(out)))
    return out


def _distinct_heldout(rng: np.random.Generator, n_objects: int, want: int) -> list[tuple[NamedObject, ...]]:
    seen: dict[str, tuple[NamedObject, ...]] = {}
    tries = 0
    while len(seen) < want and tries < 50 * want + 1000:
        tries += 1
        scene = sample_scene(rng, "heldout", n_objects=n_objects)
        canonical = make_scene(scene.named)  # drawing order (larger first) fixes the caption's object order
        seen.setdefault(canonical.key(), canonical.named)
    return list(seen.values())
