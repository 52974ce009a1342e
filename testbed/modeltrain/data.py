"""Training data: seeded streams, VAE crops, the encoded latent set, and caption sampling for the text side.

Randomness is *stateless per step*: every step draws from generators seeded with ``(seed, tag, step)``, so a
resumed run draws exactly what an uninterrupted one would, with no RNG state to checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from megbed.testbed.shapes.captions import caption
from megbed.testbed.shapes.dataset import generate
from megbed.testbed.shapes.scene import NamedObject

LATENT_CHUNK = 2000
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def derive_seed(seed: int, tag: str, *more: int) -> int:
    """A 63-bit seed for ``(seed, tag, *more)`` (SHA-256: stable across platforms and versions)."""
    text = ":".join([str(int(seed)), tag, *(str(int(m)) for m in more)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def step_rngs(seed: int, tag: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators of one training step."""
    s = derive_seed(seed, tag, step)
    return np.random.default_rng(s), torch.Generator().manual_seed(s)


def to_unit_range(images_u8: np.ndarray) -> torch.Tensor:
    """``[B, H, W, 3]`` uint8 -> ``[B, 3, H, W]`` float32 in [-1, 1] (the VAE's input range)."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def vae_crops(pool: np.ndarray, rng: np.random.Generator, batch: int, crop_px: int) -> torch.Tensor:
    """Random ``crop_px`` crops (and horizontal flips) of random pool images, ``[B, 3, c, c]`` in [-1, 1]."""
    n, h, w, _ = pool.shape
    idx = rng.integers(0, n, size=batch)
    ys = rng.integers(0, h - crop_px + 1, size=batch)
    xs = rng.integers(0, w - crop_px + 1, size=batch)
    flips = rng.uniform(size=batch) < 0.5
    out = np.empty((batch, crop_px, crop_px, 3), np.uint8)
    for i in range(batch):
        c = pool[idx[i], ys[i]:ys[i] + crop_px, xs[i]:xs[i] + crop_px]
        out[i] = c[:, ::-1] if flips[i] else c
    return to_unit_range(out)


# --- the encoded latent set -----------------------------------------------------------------------------------


@dataclass
class LatentSet:
    """Posterior mean and std of the VAE for each training scene, and what each scene shows.

    Attributes
    ----------
    mean, std : torch.Tensor
        ``[N, 4, h, w]`` float32 (stored as float16), *unscaled* VAE latents.
    objects : list[tuple[NamedObject, ...]]
        Named objects of scene ``i`` (captions are drawn from them at each step).
    """

    mean: torch.Tensor
    std: torch.Tensor
    objects: list[tuple[NamedObject, ...]]

    def __len__(self) -> int:
        return len(self.objects)


def _objects_to_json(objects: tuple[NamedObject, ...]) -> list[list[str | None]]:
    return [[o.shape, o.color, o.size, o.position] for o in objects]


def _objects_from_json(items: list[list[str | None]]) -> tuple[NamedObject, ...]:
    return tuple(NamedObject(*item) for item in items)


@torch.no_grad()
def build_latent_set(vae: torch.nn.Module, folder: str | Path, *, n_images: int, seed: int, size_px: int,
                     pair_fraction: float, batch: int = 64, log=None) -> LatentSet:
    """Render ``n_images`` train scenes and encode them, in chunks of :data:`LATENT_CHUNK` saved as
    ``latents_<k>.safetensors`` + ``latents_<k>.json``; chunks already on disk are reused (resumable)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vae.eval()
    means, stds, objects = [], [], []
    n_chunks = -(-n_images // LATENT_CHUNK)
    for k in range(n_chunks):
        count = min(LATENT_CHUNK, n_images - k * LATENT_CHUNK)
        tensors_path, meta_path = folder / f"latents_{k:03d}.safetensors", folder / f"latents_{k:03d}.json"
        if not (tensors_path.is_file() and meta_path.is_file()):
            ds = generate(count, seed=derive_seed(seed, "latents", k), split="train", size_px=size_px,
                          pair_fraction=pair_fraction)
            m_parts, s_parts = [], []
            for i in range(0, count, batch):
                post = vae.encode(to_unit_range(ds.images[i:i + batch])).latent_dist
                m_parts.append(post.mean.half())
                s_parts.append(post.std.half())
            tmp = tensors_path.with_name(tensors_path.name + ".tmp")
            save_file({"mean": torch.cat(m_parts).contiguous(), "std": torch.cat(s_parts).contiguous()}, str(tmp))
            tmp.replace(tensors_path)
            meta_path.write_text(json.dumps({"objects": [_objects_to_json(s.named) for s in ds.scenes]}))
            if log:
                log(f"[latents] chunk {k + 1}/{n_chunks}: encoded {count} scenes")
        t = load_file(str(tensors_path))
        means.append(t["mean"].float())
        stds.append(t["std"].float())
        objects += [_objects_from_json(o) for o in json.loads(meta_path.read_text())["objects"]]
    return LatentSet(torch.cat(means), torch.cat(stds), objects)


# --- captions ------------------------------------------------------------------------------------------------


def distractor_word(rng: np.random.Generator) -> str:
    """A random non-word (3-9 letters, now and then with a digit), standing for words the grammar lacks."""
    word = "".join(rng.choice(_LETTERS, size=int(rng.integers(3, 10))))
    if rng.uniform() < 0.2:
        pos = int(rng.integers(0, len(word) + 1))
        word = word[:pos] + str(int(rng.integers(0, 10))) + word[pos:]
    return word


def training_caption(objects: tuple[NamedObject, ...], rng: np.random.Generator, cfg_dropout: float,
                     distractor_prob: float) -> str:
    """One caption for a training scene: ``""`` with probability ``cfg_dropout`` (the unconditional branch of
    classifier-free guidance), else a varied phrasing, sometimes with one or two distractor words inserted."""
    if rng.uniform() < cfg_dropout:
        return ""
    words = caption(objects, rng).split()
    if rng.uniform() < distractor_prob:
        for _ in range(int(rng.integers(1, 3))):
            words.insert(int(rng.integers(0, len(words) + 1)), distractor_word(rng))
    return " ".join(words)
