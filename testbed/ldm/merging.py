"""Latent feature merging (the paper's compression of the ES -> UE latent) and its inverse.

Geometry
--------
A latent ``[B, C, H, W]`` is cut into ``p x p`` patches (``p = 2``); each patch is a *token* of ``D = C*p*p`` values
(an SDXL 4x128x128 latent is ``T = 4096`` tokens of 16 values). Tokens form a ``H/p x W/p`` grid that is tiled by
2x2 *windows* of tokens (edge windows of an odd grid have fewer members). Each window has one *destination* token,
picked by a seeded hash of ``(seed, window index)``; the other members are *sources* (``S = T - #windows``, i.e.
``3T/4`` on an even grid).

Merging at ratio ``beta``: ``r = round(beta * T)`` sources -- those most similar (cosine) to their own window's
destination, ranked over the whole latent -- are averaged into that destination and dropped. What travels is the
``T - r`` kept tokens (in token order, destinations carrying the averages) plus a compact merge map: one bit per
source token (1 = merged away), packed little-endian into bytes. The destination choice is not sent: the receiver
recomputes it from the seed. Un-merging copies each destination back onto the sources merged into it.

``beta = 0`` is an exact identity (no arithmetic touches the values); the payload shrinks linearly with ``beta``
(``(T - r) * D`` values plus a constant ``ceil(S/8)``-byte map). ``beta`` is capped at 0.75 because at most
``3T/4`` tokens are sources.

The destination hash is SplitMix64, written out here rather than taken from a library RNG, so that two nodes with
different numpy / torch versions always agree on the layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 2
WINDOW = 2
MAX_BETA = 0.75
MAP_BITORDER = "little"

_WIRE_DTYPES = {"float16": np.float16, "float32": np.float32}


class MergeError(ValueError):
    """Bad merge input (ratio, latent shape) or a merge map that does not fit its tokens."""


def check_beta(beta: float) -> float:
    """Validate a merge ratio and return it as a float.

    Raises
    ------
    MergeError
        ``beta`` is not a finite number in ``[0, 0.75]``.
    """
    try:
        value = float(beta)
    except (TypeError, ValueError) as exc:
        raise MergeError(f"merge ratio beta={beta!r} is not a number") from exc
    if not math.isfinite(value) or not 0.0 <= value <= MAX_BETA:
        raise MergeError(f"merge ratio beta={beta!r} is outside [0, {MAX_BETA}]")
    return value


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class MergeLayout:
    """Token geometry of one latent shape and seed (identical on both nodes).

    Attributes
    ----------
    grid_h, grid_w : int
        Token grid (latent height / p, latent width / p).
    num_tokens : int
        ``T = grid_h * grid_w``.
    token_dim : int
        ``D = C * p * p`` values per token.
    dst_index : numpy.ndarray
        ``[num_windows]`` int64, token index of each window's destination.
    src_index : numpy.ndarray
        ``[S]`` int64, token indices of the sources, ascending.
    src_window : numpy.ndarray
        ``[S]`` int64, window (position in ``dst_index``) of each source.
    """

    grid_h: int
    grid_w: int
    num_tokens: int
    token_dim: int
    dst_index: np.ndarray
    src_index: np.ndarray
    src_window: np.ndarray
    _on_device: dict = field(default_factory=dict, compare=False, repr=False)

    def indices(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(src_index, dst_index, src_window)`` as int64 tensors on ``device`` (cached)."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = tuple(
                torch.tensor(a, dtype=torch.int64, device=device) for a in (self.src_index, self.dst_index, self.src_window)
            )
        return self._on_device[key]

    @property
    def num_sources(self) -> int:
        return int(self.src_index.size)

    @property
    def map_nbytes(self) -> int:
        """Bytes of one packed merge map (one bit per source)."""
        return (self.num_sources + 7) // 8

    def num_merged(self, beta: float) -> int:
        """``r = round(beta * T)``, capped at the number of sources."""
        return min(int(round(check_beta(beta) * self.num_tokens)), self.num_sources)


@lru_cache(maxsize=64)
def merge_layout(channels: int, height: int, width: int, seed: int) -> MergeLayout:
    """The layout for a ``[*, channels, height, width]`` latent; ``seed`` picks the destinations.

    Raises
    ------
    MergeError
        Odd latent height or width (tokens are 2x2 patches).
    """
    if channels < 1 or height < PATCH or width < PATCH or height % PATCH or width % PATCH:
        raise MergeError(
            f"latent {channels}x{height}x{width}: height and width must be even (tokens are {PATCH}x{PATCH} patches)"
        )
    gh, gw = height // PATCH, width // PATCH
    rows, cols = np.divmod(np.arange(gh * gw, dtype=np.int64), gw)
    ww = -(-gw // WINDOW)
    window = (rows // WINDOW) * ww + (cols // WINDOW)
    num_windows = int(window.max()) + 1
    # Members of a window, in token order; the destination is member number hash(seed, window) mod size.
    order = np.argsort(window, kind="stable")
    counts = np.bincount(window, minlength=num_windows)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    seeds = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ (np.arange(num_windows, dtype=np.uint64) * np.uint64(0x100000001B3))
    pick = (_splitmix64(seeds) % counts.astype(np.uint64)).astype(np.int64)
    dst_index = order[starts + pick]
    is_dst = np.zeros(gh * gw, dtype=bool)
    is_dst[dst_index] = True
    src_index = np.flatnonzero(~is_dst).astype(np.int64)
    for a in (dst_index, src_index):
        a.setflags(write=False)
    src_window = window[src_index]
    src_window.setflags(write=False)
    return MergeLayout(gh, gw, gh * gw, channels * PATCH * PATCH, dst_index, src_index, src_window)


def patchify(latent: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> tokens ``[B, T, C*p*p]`` (row-major token grid)."""
    b, c, h, w = latent.shape
    x = latent.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpatchify(tokens: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: tokens ``[B, T, C*p*p]`` -> ``[B, C, H, W]``."""
    b = tokens.shape[0]
    x = tokens.reshape(b, height // PATCH, width // PATCH, channels, PATCH, PATCH)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, height, width)


@dataclass
class MergedLatent:
    """A merged latent: what the ES sends instead of the full latent.

    Attributes
    ----------
    tokens : torch.Tensor
        ``[B, T - r, D]`` kept tokens in token order (destinations hold the averages), in the latent's dtype.
    merge_map : numpy.ndarray
        ``[B, ceil(S/8)]`` uint8, one bit per source token (1 = merged into its window's destination), packed
        little-endian.
    latent_shape : tuple[int, int, int]
        ``(C, H, W)`` of the original latent.
    beta : float
        Merge ratio.
    seed : int
        Seed of the destination choice.
    num_merged : int
        ``r``, tokens removed per latent.
    """

    tokens: torch.Tensor
    merge_map: np.ndarray
    latent_shape: tuple[int, int, int]
    beta: float
    seed: int
    num_merged: int

    @property
    def layout(self) -> MergeLayout:
        return merge_layout(*self.latent_shape, self.seed)

    @property
    def source_mask(self) -> torch.Tensor:
        """``[B, S]`` bool: which sources were merged away."""
        bits = np.unpackbits(self.merge_map, axis=1, count=self.layout.num_sources, bitorder=MAP_BITORDER)
        return torch.from_numpy(bits.astype(bool)).to(self.tokens.device)

    def to_meta(self) -> dict[str, Any]:
        """JSON fields the receiver needs besides the buffers."""
        return {
            "latent_shape": list(self.latent_shape), "beta": self.beta, "seed": self.seed,
            "num_merged": self.num_merged, "patch": PATCH, "window": WINDOW,
        }

    def to_buffers(self, wire_dtype: str = "float16", prefix: str = "merge.") -> dict[str, np.ndarray]:
        """Raw arrays to send: ``tokens`` (wire dtype, analog-tolerant values) and ``map`` (uint8, exact)."""
        if wire_dtype not in _WIRE_DTYPES:
            raise MergeError(f"wire dtype {wire_dtype!r} is not one of {sorted(_WIRE_DTYPES)}")
        tokens = self.tokens.detach().to("cpu", torch.float32).numpy().astype(_WIRE_DTYPES[wire_dtype], copy=False)
        return {f"{prefix}tokens": tokens, f"{prefix}map": np.ascontiguousarray(self.merge_map, dtype=np.uint8)}

    @classmethod
    def from_buffers(
        cls,
        meta: dict[str, Any],
        buffers: dict[str, np.ndarray],
        *,
        prefix: str = "merge.",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> MergedLatent:
        """Rebuild from :meth:`to_meta` / :meth:`to_buffers` output, checking that they agree.

        Raises
        ------
        MergeError
            Missing buffer, patch/window size from another format, shapes that do not fit the layout.
        """
        try:
            shape = tuple(int(v) for v in meta["latent_shape"])
            beta, seed, r = check_beta(meta["beta"]), int(meta["seed"]), int(meta["num_merged"])
            tokens_np, map_np = buffers[f"{prefix}tokens"], buffers[f"{prefix}map"]
        except KeyError as exc:
            raise MergeError(f"merged latent is missing {exc}") from exc
        if (meta.get("patch"), meta.get("window")) != (PATCH, WINDOW) or len(shape) != 3:
            raise MergeError(f"merged latent uses patch {meta.get('patch')} / window {meta.get('window')}, "
                             f"this node speaks patch {PATCH} / window {WINDOW}")
        layout = merge_layout(*shape, seed)
        b = tokens_np.shape[0] if tokens_np.ndim == 3 else -1
        want_tokens = (b, layout.num_tokens - r, layout.token_dim)
        if tokens_np.ndim != 3 or tokens_np.shape != want_tokens or not 0 <= r <= layout.num_sources:
            raise MergeError(f"merged tokens have shape {list(tokens_np.shape)}, expected {list(want_tokens)}")
        if map_np.dtype != np.uint8 or map_np.shape != (b, layout.map_nbytes):
            raise MergeError(f"merge map has shape {list(map_np.shape)} {map_np.dtype}, "
                             f"expected [{b}, {layout.map_nbytes}] uint8")
        tokens = torch.from_numpy(np.array(tokens_np, dtype=np.float32)).to(device=device, dtype=dtype)
        merged = cls(tokens, np.array(map_np), shape, beta, seed, r)
        counts = merged.source_mask.sum(dim=1)
        if bool((counts != r).any()):
            raise MergeError(f"merge map marks {counts.tolist()} merged sources, the tokens say {r}")
        return merged


def merged_payload_nbytes(latent_shape: tuple[int, int, int], beta: float, wire_dtype: str = "float16",
                          batch: int = 1) -> int:
    """Closed-form bytes of the merged buffers (tokens + map) for one latent shape, without merging anything."""
    layout = merge_layout(*latent_shape, 0)
    itemsize = np.dtype(_WIRE_DTYPES[wire_dtype]).itemsize
    kept = layout.num_tokens - layout.num_merged(beta)
    return batch * (kept * layout.token_dim * itemsize + layout.map_nbytes)


@torch.no_grad()
def merge(latent: torch.Tensor, beta: float, seed: int) -> MergedLatent:
    """Merge ``round(beta * T)`` tokens of each latent into their windows' destinations.

    Parameters
    ----------
    latent : torch.Tensor
        ``[B, C, H, W]``, H and W even. Any float dtype / device; similarities and averages are computed in float32.
    beta : float
        Merge ratio in ``[0, 0.75]``.
    seed : int
        Seed of the destination choice (the receiver needs the same one).

    Returns
    -------
    MergedLatent
        Kept tokens ``[B, T - r, D]`` in the latent's dtype and the packed merge map.
    """
    beta = check_beta(beta)
    if latent.ndim != 4:
        raise MergeError(f"latent must be [B, C, H, W], got shape {list(latent.shape)}")
    b, c, h, w = latent.shape
    layout = merge_layout(c, h, w, int(seed))
    r = layout.num_merged(beta)
    tokens = patchify(latent)
    device = latent.device
    src_index, dst_index, src_window = layout.indices(device)
    mask = torch.zeros(b, layout.num_sources, dtype=torch.bool, device=device)
    if r == 0:
        kept = tokens.contiguous()
    else:
        x = tokens.float()
        src, dst = x[:, src_index], x[:, dst_index]
        sim = F.cosine_similarity(src, dst[:, src_window], dim=-1)
        # Stable sort: equal similarities resolve to the lower token index on every platform.
        chosen = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :r]
        mask.scatter_(1, chosen, True)
        weight = mask.to(x.dtype)
        acc = dst.clone().scatter_add_(1, src_window.view(1, -1, 1).expand(b, -1, x.shape[-1]), src * weight[..., None])
        size = torch.ones(b, dst.shape[1], dtype=x.dtype, device=device).scatter_add_(
            1, src_window.view(1, -1).expand(b, -1), weight)
        x = x.clone()
        x[:, dst_index] = acc / size[..., None]
        keep = torch.ones(b, layout.num_tokens, dtype=torch.bool, device=device)
        keep[:, src_index] = ~mask
        kept = x[keep].view(b, layout.num_tokens - r, layout.token_dim).to(latent.dtype)
    bits = np.packbits(mask.cpu().numpy(), axis=1, bitorder=MAP_BITORDER)
    return MergedLatent(kept, bits, (c, h, w), beta, int(seed), r)


@torch.no_grad()
def unmerge(merged: MergedLatent) -> torch.Tensor:
    """Rebuild a ``[B, C, H, W]`` latent: kept tokens in place, merged sources copied from their destinations.

    Raises
    ------
    MergeError
        The merge map does not mark exactly ``num_merged`` sources per latent.
    """
    layout = merged.layout
    tokens = merged.tokens
    b, device = tokens.shape[0], tokens.device
    mask = merged.source_mask
    if tuple(tokens.shape[1:]) != (layout.num_tokens - merged.num_merged, layout.token_dim):
        raise MergeError(f"merged tokens have shape {list(tokens.shape)}, expected "
                         f"[{b}, {layout.num_tokens - merged.num_merged}, {layout.token_dim}]")
    if merged.num_merged == 0:
        if bool(mask.any()):
            raise MergeError("merge map marks merged sources but no token was merged")
        return unpatchify(tokens, *merged.latent_shape)
    if bool((mask.sum(dim=1) != merged.num_merged).any()):
        raise MergeError(f"merge map marks {mask.sum(dim=1).tolist()} merged sources, expected {merged.num_merged}")
    src_index, dst_index, src_window = layout.indices(device)
    keep = torch.ones(b, layout.num_tokens, dtype=torch.bool, device=device)
    keep[:, src_index] = ~mask
    full = torch.empty(b, layout.num_tokens, layout.token_dim, dtype=tokens.dtype, device=device)
    full[keep] = tokens.reshape(-1, layout.token_dim)
    from_dst = full[:, dst_index][:, src_window]
    full[:, src_index] = torch.where(mask[..., None], from_dst, full[:, src_index])
    return unpatchify(full, *merged.latent_shape)
