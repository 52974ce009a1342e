"""Prompts (with their generation seeds) for the distillation set and the held-out evaluation.

* ``shapes``: the embedded default model's caption grammar (:mod:`megbed.testbed.shapes`). Training draws captions from the
  *train* split with varied phrasing; evaluation uses the fixed held-out prompts of ``megbed model eval``
  (:func:`megbed.testbed.shapes.dataset.heldout_prompts`, prompt ``i`` with seed ``i``), whose captions never occur in
  training.
* a text file: one prompt per line (blank lines and lines starting with ``#`` are skipped), for SD-1.5 / SDXL.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megbed.testbed.distill.errors import PromptSourceError

SHAPES = "shapes"
SEED_STRIDE = 100_003


@dataclass(frozen=True)
class PromptSpec:
    """One generation: the prompt and its seed (initial noise and merge layout)."""

    prompt: str
    seed: int


def digest(prompts: list[PromptSpec]) -> str:
    """A short hash of the prompts and seeds, in order (part of the latent cache's key)."""
    blob = json.dumps([[p.prompt, p.seed] for p in prompts], ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_prompt_file(path: str | Path) -> list[str]:
    """The prompts of a text file (one per line; blanks and ``#`` comments skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptSourceError(f"cannot read prompts from {path}: {exc}") from exc
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise PromptSourceError(f"{path} holds no prompt (one per line; '#' starts a comment)")
    return prompts


def _shapes_captions(n: int, seed: int) -> list[str]:
    from megbed.testbed.shapes.captions import caption
    from megbed.testbed.shapes.scene import sample_scene

    rng = np.random.default_rng([int(seed), 0])
    return [caption(sample_scene(rng, "train"), rng) for _ in range(n)]


def training_prompts(source: str, n: int, seed: int) -> list[PromptSpec]:
    """``n`` training prompts from ``source`` (``shapes`` or a file; a file gives its first ``n`` lines).

    Prompt ``i`` gets seed ``seed * 100_003 + i`` so that two prompt seeds never share generations.
    """
    if n < 1:
        raise PromptSourceError(f"need at least one training prompt, got n={n}")
    texts = _shapes_captions(n, seed) if source == SHAPES else read_prompt_file(source)[:n]
    return [PromptSpec(t, int(seed) * SEED_STRIDE + i) for i, t in enumerate(texts)]


def heldout_prompts(source: str, n: int) -> list[PromptSpec]:
    """``n`` evaluation prompts: the default model's fixed held-out set, or a file's first ``n`` lines (seed = i)."""
    if n < 1:
        raise PromptSourceError(f"need at least one evaluation prompt, got n={n}")
    if source == SHAPES:
        from megbed.testbed.shapes.dataset import heldout_prompts as shapes_heldout

        return [PromptSpec(p.prompt, int(p.seed)) for p in shapes_heldout(n)]
    return [PromptSpec(t, i) for i, t in enumerate(read_prompt_file(source)[:n])]
