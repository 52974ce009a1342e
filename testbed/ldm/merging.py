"""Latent feature merging (the paper's compression of the ES -> UE latent) and its inverse.

Geometry
--------
A latent ``[B, C, H, W]`` is cut into ``p x p`` patches (``p = 2``); each patch is a *token* of ``D = C*p*p`` values
(an SDXL 4x128x128 latent is ``T = 4096`` tokens of 16 values: the shape the authors' code gives tomesd's
``bipartite_soft_matching_random2d`` -- 2x2 patches x 4 channels, so one token is one 2x2 patch of every channel,
which keeps the channels of one pixel together and gives the 4,096 tokens / 3,072-token cap of the paper). Tokens
form a ``H/p x W/p`` grid tiled by 2x2 *windows* of tokens (edge windows of an odd grid have fewer members). Each
window has one *destination* token, picked by a seeded hash of ``(seed, window index)``; the other members are
*sources* (``S = T - #windows``, i.e. ``3T/4`` on an even grid). ``r = round(beta * T)`` sources are merged (averaged
together with the destination they are assigned to, tomesd's ``mean`` with the destination included) and dropped.

Methods (:data:`MERGE_METHODS`, the request's ``merge_method``)
----------------------------------------------------------------
``global`` -- the paper's rule (tomesd's ``bipartite_soft_matching_random2d`` applied to the latent): every source
    is matched to its most similar destination *anywhere* in the latent (cosine similarity), and the ``r`` sources
    with the highest similarity are merged into their matches.
``global_l2`` -- the same bipartite matching with distortion as its metric: every source is matched to its nearest
    destination in Euclidean distance and the ``r`` sources with the smallest squared distance are merged; then
    :data:`LLOYD_ITERATIONS` Lloyd passes re-match every source to the nearest *merged* (averaged) value,
    re-select the ``r`` nearest and re-average. Cosine similarity ignores magnitude (a source and a destination
    twice as large are a perfect match, yet copying one onto the other costs their whole difference); the squared
    distance is the error the copy-back leaves, and each pass can only lower it. Same side information, same
    bytes; lower NMSE on every latent set measured (``benchmarks/merging.py``): the default.
``window`` -- the window-local rule: a source can merge only into its own window's destination; the ``r`` sources
    most similar (cosine) to their window's destination are merged.

Side information on the wire
----------------------------
What travels is the ``T - r`` kept tokens (in token order, destinations carrying the averages) plus:

* ``map``: one bit per source token (1 = merged away), packed little-endian into bytes (``ceil(S/8)`` bytes);
* ``dst`` (global methods only): the destination of every merged source, in ascending source order, as a
  ``ceil(log2(#destinations))``-bit unsigned integer (the destination's rank in token order), the ``r`` fields packed
  little-endian into ``ceil(r * bits / 8)`` bytes. ``window`` needs none: a source's destination is its window's.

The destination choice itself is not sent: the receiver recomputes it from the seed in the header. Un-merging
copies each destination's value back onto the sources merged into it. A map or index buffer that does not fit
(wrong length, wrong count of merged sources, an index past the last destination) is a :class:`MergeError`.

``beta = 0`` is an exact identity (no arithmetic touches the values). ``beta`` is capped at 0.75 because at most
``3T/4`` tokens are sources.

The destination hash is SplitMix64, written out here rather than taken from a library RNG, so that two nodes with
different numpy / torch versions always agree on the layout (tomesd draws it with ``torch.randint``, which is not
reproducible across devices and versions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from megbed.megwire.vocab import MAX_MERGE_RATIO, WIRE_DTYPES
from megbed.testbed.ldm.errors import MergeError
from megbed.testbed.ldm.merge_methods import DEFAULT_MERGE_METHOD, GLOBAL_METHODS, MERGE_METHODS

PATCH = 2
WINDOW = 2
MAX_BETA = MAX_MERGE_RATIO
MAP_BITORDER = "little"
LLOYD_ITERATIONS = 2  # global_l2's refinement passes (a third gained < 1 % NMSE on the benchmark's latents)

_WIRE_DTYPES = {name: np.dtype(name).type for name in WIRE_DTYPES}


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


def check_method(method: str) -> str:
    """Validate a merge method name (one of :data:`MERGE_METHODS`) and return it.

    Raises
    ------
    MergeError
        Not a string naming a known method.
    """
    if not isinstance(method, str) or method not in MERGE_METHODS:
        raise MergeError(f"unknown merge method {method!r}; known: {', '.join(MERGE_METHODS)}")
    return method


def index_bits(num_destinations: int) -> int:
    """``ceil(log2(num_destinations))``: bits of one destination index on the wire (0 for a single destination)."""
    return max(int(num_destinations) - 1, 0).bit_length()


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """``[B, r]`` non-negative ints < 2**bits -> ``[B, ceil(r*bits/8)]`` uint8, each index ``bits`` bits LSB first."""
    idx = np.asarray(indices, dtype=np.int64)
    b, r = idx.shape
    if bits == 0 or r == 0:
        return np.zeros((b, 0), dtype=np.uint8)
    fields = ((idx[:, :, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8).reshape(b, r * bits)
    return np.packbits(fields, axis=1, bitorder=MAP_BITORDER)


def unpack_indices(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`: ``[B, ceil(count*bits/8)]`` uint8 -> ``[B, count]`` int64."""
    b = packed.shape[0]
    if bits == 0 or count == 0:
        return np.zeros((b, count), dtype=np.int64)
    fields = np.unpackbits(packed, axis=1, count=count * bits, bitorder=MAP_BITORDER).reshape(b, count, bits)
    return (fields.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(axis=2)


def indices_nbytes(count: int, num_destinations: int) -> int:
    """Bytes of ``count`` packed destination indices (per latent)."""
    return (int(count) * index_bits(num_destinations) + 7) // 8


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
        ``[B, ceil(S/8)]`` uint8, one bit per source token (1 = merged away), packed little-endian.
    latent_shape : tuple[int, int, int]
        ``(C, H, W)`` of the original latent.
    beta : float
        Merge ratio.
    seed : int
        Seed of the destination choice.
    num_merged : int
        ``r``, tokens removed per latent.
    method : str
        One of :data:`MERGE_METHODS`.
    dst_map : numpy.ndarray
        ``[B, ceil(r * bits / 8)]`` uint8: destination (rank among the destinations) of each merged source, in
        ascending source order, ``bits = ceil(log2(#destinations))`` each (see :func:`pack_indices`). Empty
        (``[B, 0]``) for ``window``.
    """

    tokens: torch.Tensor
    merge_map: np.ndarray
    latent_shape: tuple[int, int, int]
    beta: float
    seed: int
    num_merged: int
    method: str = "window"
    dst_map: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.dst_map is None:
            self.dst_map = np.zeros((self.merge_map.shape[0], 0), dtype=np.uint8)

    @property
    def layout(self) -> MergeLayout:
        return merge_layout(*self.latent_shape, self.seed)

    @property
    def source_mask(self) -> torch.Tensor:
        """``[B, S]`` bool: which sources were merged away."""
        bits = np.unpackbits(self.merge_map, axis=1, count=self.layout.num_sources, bitorder=MAP_BITORDER)
        return torch.from_numpy(bits.astype(bool)).to(self.tokens.device)

    def merged_destinations(self) -> np.ndarray:
        """``[B, r]`` int64: destination (index into ``layout.dst_index``) of each merged source, ascending source order.

        Raises
        ------
        MergeError
            The index buffer is too short or too long for ``r`` indices, or an index is past the last destination.
        """
        layout, r = self.layout, self.num_merged
        num_dst = layout.dst_index.size
        b = self.merge_map.shape[0]
        if self.method not in GLOBAL_METHODS:
            mask = np.unpackbits(self.merge_map, axis=1, count=layout.num_sources, bitorder=MAP_BITORDER).astype(bool)
            return np.stack([layout.src_window[m] for m in mask]) if b else np.zeros((0, r), np.int64)
        want = indices_nbytes(r, num_dst)
        if self.dst_map.dtype != np.uint8 or self.dst_map.shape != (b, want):
            raise MergeError(f"merge destination indices have shape {list(self.dst_map.shape)} {self.dst_map.dtype}, "
                             f"expected [{b}, {want}] uint8 ({r} indices of {index_bits(num_dst)} bits)")
        idx = unpack_indices(self.dst_map, r, index_bits(num_dst))
        if idx.size and int(idx.max()) >= num_dst:
            raise MergeError(f"merge destination index {int(idx.max())} is out of range: the latent has {num_dst} "
                             "destinations")
        return idx

    @property
    def side_nbytes(self) -> int:
        """Bytes of side information (map + destination indices) for the whole batch."""
        return int(self.merge_map.nbytes + self.dst_map.nbytes)

    def to_meta(self) -> dict[str, Any]:
        """JSON fields the receiver needs besides the buffers."""
        return {
            "latent_shape": list(self.latent_shape), "beta": self.beta, "seed": self.seed,
            "num_merged": self.num_merged, "patch": PATCH, "window": WINDOW, "method": self.method,
        }

    def to_buffers(self, wire_dtype: str = "float16", prefix: str = "merge.") -> dict[str, np.ndarray]:
        """Raw arrays to send: ``tokens`` (wire dtype, analog-tolerant values), ``map`` and -- for the global
        methods -- ``dst`` (uint8, exact)."""
        if wire_dtype not in _WIRE_DTYPES:
            raise MergeError(f"wire dtype {wire_dtype!r} is not one of {sorted(_WIRE_DTYPES)}")
        tokens = self.tokens.detach().to("cpu", torch.float32).numpy().astype(_WIRE_DTYPES[wire_dtype], copy=False)
        out = {f"{prefix}tokens": tokens, f"{prefix}map": np.ascontiguousarray(self.merge_map, dtype=np.uint8)}
        if self.method in GLOBAL_METHODS:
            out[f"{prefix}dst"] = np.ascontiguousarray(self.dst_map, dtype=np.uint8)
        return out

    @staticmethod
    def side_buffer_names(method: str, prefix: str = "merge.") -> tuple[str, ...]:
        """Names of the buffers that must arrive exactly (the channel's ``side`` role)."""
        return (f"{prefix}map", f"{prefix}dst") if method in GLOBAL_METHODS else (f"{prefix}map",)

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

        A header without ``method`` is a window-local handoff (the format before the methods existed).

        Raises
        ------
        MergeError
            Missing buffer, unknown method, patch/window size from another format, shapes that do not fit the
            layout, a map or index buffer that does not fit ``r`` (truncated, extended, index out of range).
        """
        try:
            shape = tuple(int(v) for v in meta["latent_shape"])
            beta, seed, r = check_beta(meta["beta"]), int(meta["seed"]), int(meta["num_merged"])
            method = check_method(meta.get("method", "window"))
            tokens_np, map_np = buffers[f"{prefix}tokens"], buffers[f"{prefix}map"]
            dst_np = buffers[f"{prefix}dst"] if method in GLOBAL_METHODS else None
        except KeyError as exc:
            raise MergeError(f"merged latent is missing {exc}") from exc
        if (meta.get("patch"), meta.get("window")) != (PATCH, WINDOW) or len(shape) != 3:
            raise MergeError(f"merged latent uses patch {meta.get('patch')} / window {meta.get('window')}, "
                             f"this node speaks patch {PATCH} / window {WINDOW}")
        if not 0 <= seed < 2**64:
            raise MergeError(f"merge seed {seed} is outside [0, 2**64)")
        layout = merge_layout(*shape, seed)
        b = tokens_np.shape[0] if tokens_np.ndim == 3 else -1
        want_tokens = (b, layout.num_tokens - r, layout.token_dim)
        if tokens_np.ndim != 3 or tokens_np.shape != want_tokens or not 0 <= r <= layout.num_sources:
            raise MergeError(f"merged tokens have shape {list(tokens_np.shape)}, expected {list(want_tokens)}")
        if map_np.dtype != np.uint8 or map_np.shape != (b, layout.map_nbytes):
            raise MergeError(f"merge map has shape {list(map_np.shape)} {map_np.dtype}, "
                             f"expected [{b}, {layout.map_nbytes}] uint8")
        tokens = torch.from_numpy(np.array(tokens_np, dtype=np.float32)).to(device=device, dtype=dtype)
        dst = None if dst_np is None else np.array(dst_np)
        merged = cls(tokens, np.array(map_np), shape, beta, seed, r, method, dst)
        counts = merged.source_mask.sum(dim=1)
        if bool((counts != r).any()):
            raise MergeError(f"merge map marks {counts.tolist()} merged sources, the tokens say {r}")
        merged.merged_destinations()  # validates the index buffer's length and range
        return merged


def merged_payload_nbytes(latent_shape: tuple[int, int, int], beta: float, wire_dtype: str = "float16",
                          batch: int = 1, method: str = DEFAULT_MERGE_METHOD) -> int:
    """Closed-form bytes of the merged buffers (tokens + map + destination indices) for one latent shape, without
    merging anything."""
    layout = merge_layout(*latent_shape, 0)
    itemsize = np.dtype(_WIRE_DTYPES[wire_dtype]).itemsize
    r = layout.num_merged(beta)
    kept = layout.num_tokens - r
    side = layout.map_nbytes
    if check_method(method) in GLOBAL_METHODS:
        side += indices_nbytes(r, layout.dst_index.size)
    return batch * (kept * layout.token_dim * itemsize + side)


def _match(src: torch.Tensor, dst: torch.Tensor, method: str, src_window: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per source: its destination (``[B, S]`` int64 into the destinations) and a score (``[B, S]``, higher =
    merge first)."""
    if method == "window":
        dst_of = src_window.view(1, -1).expand(src.shape[0], -1)
        return dst_of, F.cosine_similarity(src, dst[:, src_window], dim=-1)
    if method == "global":
        # tomesd: normalise, scores = a @ b^T, each source's best destination; eps keeps an all-zero token finite.
        scores = F.normalize(src, dim=-1, eps=1e-12) @ F.normalize(dst, dim=-1, eps=1e-12).transpose(1, 2)
        best, dst_of = scores.max(dim=-1)
        return dst_of, best
    # global_l2: squared distance |s|^2 + |d|^2 - 2 s.d, minimised; the score is its negative.
    dist = (src.square().sum(-1, keepdim=True) + dst.square().sum(-1).unsqueeze(1)
            - 2.0 * src @ dst.transpose(1, 2))
    best, dst_of = dist.min(dim=-1)
    return dst_of, -best


def _select_and_average(src: torch.Tensor, dst: torch.Tensor, dst_of: torch.Tensor, score: torch.Tensor, r: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``r`` best-scoring sources (``[B, S]`` mask) and, per destination, the sum (``[B, Nd, D]``) and count
    (``[B, Nd]``) of itself and the sources merged into it."""
    b = src.shape[0]
    # Stable sort: equal scores resolve to the lower source index on every platform.
    chosen = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :r]
    mask = torch.zeros(score.shape, dtype=torch.bool, device=src.device).scatter_(1, chosen, True)
    weight = mask.to(src.dtype)
    acc = dst.clone().scatter_add_(1, dst_of.unsqueeze(-1).expand(b, -1, src.shape[-1]), src * weight[..., None])
    size = torch.ones(b, dst.shape[1], dtype=src.dtype, device=src.device).scatter_add_(1, dst_of, weight)
    return mask, acc, size


@torch.no_grad()
def merge(latent: torch.Tensor, beta: float, seed: int, method: str = DEFAULT_MERGE_METHOD) -> MergedLatent:
    """Merge ``round(beta * T)`` tokens of each latent into destinations chosen by ``method``.

    Parameters
    ----------
    latent : torch.Tensor
        ``[B, C, H, W]``, H and W even. Any float dtype / device; similarities and averages are computed in float32.
    beta : float
        Merge ratio in ``[0, 0.75]``.
    seed : int
        Seed of the destination choice (the receiver needs the same one).
    method : str
        ``global_l2`` (default), ``global`` (the paper's rule) or ``window`` (see the module docstring).

    Returns
    -------
    MergedLatent
        Kept tokens ``[B, T - r, D]`` in the latent's dtype, the packed merge map and (global methods) the packed
        destination indices.
    """
    beta, method = check_beta(beta), check_method(method)
    if latent.ndim != 4:
        raise MergeError(f"latent must be [B, C, H, W], got shape {list(latent.shape)}")
    b, c, h, w = latent.shape
    layout = merge_layout(c, h, w, int(seed))
    r = layout.num_merged(beta)
    tokens = patchify(latent)
    device = latent.device
    src_index, dst_index, src_window = layout.indices(device)
    mask = torch.zeros(b, layout.num_sources, dtype=torch.bool, device=device)
    dst_of_merged = np.zeros((b, 0), dtype=np.int64)
    if r == 0:
        kept = tokens.contiguous()
    else:
        x = tokens.float()
        src, dst = x[:, src_index], x[:, dst_index]
        dst_of, score = _match(src, dst, method, src_window)
        mask, acc, size = _select_and_average(src, dst, dst_of, score, r)
        if method == "global_l2":
            # Lloyd refinement: re-match every source to the nearest *merged* value, re-select, re-average. Each
            # pass cannot raise the squared error (nearest assignment, then the mean), and the side information is
            # the same: which sources merged, into which destination.
            for _ in range(LLOYD_ITERATIONS):
                dst_of, score = _match(src, acc / size[..., None], method, src_window)
                mask, acc, size = _select_and_average(src, dst, dst_of, score, r)
        x = x.clone()
        x[:, dst_index] = acc / size[..., None]
        keep = torch.ones(b, layout.num_tokens, dtype=torch.bool, device=device)
        keep[:, src_index] = ~mask
        kept = x[keep].view(b, layout.num_tokens - r, layout.token_dim).to(latent.dtype)
        dst_of_merged = dst_of[mask].view(b, r).cpu().numpy()
    bits = np.packbits(mask.cpu().numpy(), axis=1, bitorder=MAP_BITORDER)
    dst_map = (pack_indices(dst_of_merged, index_bits(layout.dst_index.size)) if method in GLOBAL_METHODS
               else np.zeros((b, 0), dtype=np.uint8))
    return MergedLatent(kept, bits, (c, h, w), beta, int(seed), r, method, dst_map)


@torch.no_grad()
def unmerge(merged: MergedLatent) -> torch.Tensor:
    """Rebuild a ``[B, C, H, W]`` latent: kept tokens in place, merged sources copied from their destinations.

    Raises
    ------
    MergeError
        The merge map does not mark exactly ``num_merged`` sources per latent, or the destination indices do not
        fit (see :meth:`MergedLatent.merged_destinations`).
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
    if merged.method in GLOBAL_METHODS:
        dst_of = torch.zeros(b, layout.num_sources, dtype=torch.int64, device=device)
        dst_of[mask] = torch.from_numpy(merged.merged_destinations()).to(device).reshape(-1)
    else:
        dst_of = src_window.view(1, -1).expand(b, -1)
    keep = torch.ones(b, layout.num_tokens, dtype=torch.bool, device=device)
    keep[:, src_index] = ~mask
    full = torch.empty(b, layout.num_tokens, layout.token_dim, dtype=tokens.dtype, device=device)
    full[keep] = tokens.reshape(-1, layout.token_dim)
    from_dst = full[:, dst_index].gather(1, dst_of.unsqueeze(-1).expand(-1, -1, layout.token_dim))
    full[:, src_index] = torch.where(mask[..., None], from_dst, full[:, src_index])
    return unpatchify(full, *merged.latent_shape)
