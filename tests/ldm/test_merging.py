from __future__ import annotations

import numpy as np
import pytest
import torch

from testbed.ldm.merging import (
    MAX_BETA,
    MergedLatent,
    MergeError,
    merge,
    merge_layout,
    merged_payload_nbytes,
    patchify,
    unmerge,
    unpatchify,
)


def _latent(shape=(2, 4, 16, 16), seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_patchify_round_trip_and_token_layout():
    x = _latent((1, 4, 8, 6))
    tokens = patchify(x)
    assert tokens.shape == (1, 12, 16)
    # token (i, j) holds the 2x2 patch of every channel, channel-major
    assert torch.equal(tokens[0, 1 * 3 + 2].view(4, 2, 2), x[0, :, 2:4, 4:6])
    assert torch.equal(unpatchify(tokens, 4, 8, 6), x)


def test_layout_sdxl_numbers_and_one_destination_per_window():
    layout = merge_layout(4, 128, 128, seed=7)
    assert (layout.num_tokens, layout.token_dim) == (4096, 16)
    assert layout.dst_index.size == 1024 and layout.num_sources == 3072
    assert layout.map_nbytes == 384
    # every destination lies in its own 2x2 window of the 64x64 token grid
    rows, cols = np.divmod(layout.dst_index, 64)
    windows = (rows // 2) * 32 + cols // 2
    assert np.array_equal(windows, np.arange(1024))
    # the seed changes the choice, the same seed reproduces it
    assert not np.array_equal(layout.dst_index, merge_layout(4, 128, 128, seed=8).dst_index)
    assert np.array_equal(layout.dst_index, merge_layout.__wrapped__(4, 128, 128, 7).dst_index)


def test_odd_token_grid_has_partial_windows():
    layout = merge_layout(4, 10, 6, seed=0)  # 5x3 tokens -> 3x2 windows, some with 1 or 2 members
    assert layout.num_tokens == 15 and layout.dst_index.size == 6
    assert layout.num_sources == 9


def test_beta_zero_is_exact_identity():
    x = _latent()
    m = merge(x, 0.0, seed=3)
    assert m.num_merged == 0 and not m.merge_map.any()
    y = unmerge(m)
    assert y.dtype == x.dtype and torch.equal(y, x)
    half = x.half()
    assert torch.equal(unmerge(merge(half, 0.0, 3)), half)


@pytest.mark.parametrize("beta", [0.1, 0.25, 0.5, 0.75])
def test_merge_counts_shapes_and_unmerge_shape(beta):
    x = _latent()
    m = merge(x, beta, seed=1)
    r = round(beta * 64)
    assert m.num_merged == r
    assert m.tokens.shape == (2, 64 - r, 16)
    assert m.source_mask.sum(dim=1).tolist() == [r, r]
    y = unmerge(m)
    assert y.shape == x.shape and y.dtype == x.dtype


def test_merged_sources_are_the_most_similar_and_get_the_average():
    x = _latent((1, 4, 8, 8), seed=5)
    m = merge(x, 0.25, seed=2)
    layout = m.layout
    src_index, dst_index, src_window = layout.indices("cpu")
    tokens = patchify(x)[0]
    src = tokens[src_index]
    dst = tokens[dst_index][src_window]
    sim = torch.nn.functional.cosine_similarity(src, dst, dim=-1)
    mask = m.source_mask[0]
    assert sim[mask].min() >= sim[~mask].max()
    y = patchify(unmerge(m))[0]
    for w, d in enumerate(layout.dst_index):
        members = layout.src_index[(layout.src_window == w) & mask.numpy()]
        expected = tokens[[int(d), *members.tolist()]].mean(dim=0)
        torch.testing.assert_close(y[d], expected)
        for s in members:  # un-merge copies the destination back
            assert torch.equal(y[s], y[d])
    kept = src_index[~mask]
    assert torch.equal(y[kept], tokens[kept])


def test_identical_sources_merge_losslessly():
    # a latent constant over each 2x2 token window: merging anything loses nothing
    coarse = _latent((1, 4, 4, 4), seed=9)
    x = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    y = unmerge(merge(x, MAX_BETA, seed=4))
    torch.testing.assert_close(y, x, rtol=0, atol=1e-6)


def test_payload_bytes_shrink_linearly_with_beta():
    shape = (4, 128, 128)
    betas = np.linspace(0, 0.75, 16)
    sizes = np.array([merged_payload_nbytes(shape, b, "float16") for b in betas])
    assert sizes[0] == 4096 * 16 * 2 + 384
    assert np.all(np.diff(sizes) < 0)
    slope, intercept = np.polyfit(betas, sizes, 1)
    assert np.max(np.abs(sizes - (slope * betas + intercept))) <= 16 * 2  # rounding of r only
    assert slope == pytest.approx(-4096 * 16 * 2, rel=1e-3)
    # the closed form equals what to_buffers really produces
    x = _latent((1, 4, 32, 32))
    for beta in (0.0, 0.3, 0.75):
        bufs = merge(x, beta, 0).to_buffers("float16")
        assert sum(b.nbytes for b in bufs.values()) == merged_payload_nbytes((4, 32, 32), beta, "float16")


def test_buffers_round_trip_and_roles_of_dtypes():
    x = _latent()
    m = merge(x, 0.4, seed=11)
    bufs = m.to_buffers("float32")
    assert bufs["merge.tokens"].dtype == np.float32 and bufs["merge.map"].dtype == np.uint8
    m2 = MergedLatent.from_buffers(m.to_meta(), bufs)
    assert torch.equal(unmerge(m2), unmerge(m))
    half = MergedLatent.from_buffers(m.to_meta(), m.to_buffers("float16"))
    torch.testing.assert_close(unmerge(half), unmerge(m), rtol=2e-3, atol=2e-3)


def test_batch_rows_merge_independently():
    x = _latent((3, 4, 8, 8))
    m = merge(x, 0.5, 0)
    for i in range(3):
        single = merge(x[i:i + 1], 0.5, 0)
        assert torch.equal(single.tokens[0], m.tokens[i])
        assert np.array_equal(single.merge_map[0], m.merge_map[i])


@pytest.mark.parametrize("beta", [-0.01, 0.76, 1.0, float("nan"), "x"])
def test_bad_beta_is_rejected(beta):
    with pytest.raises(MergeError, match="beta"):
        merge(_latent(), beta, 0)


def test_bad_shapes_and_inconsistent_maps_are_rejected():
    with pytest.raises(MergeError, match="even"):
        merge(torch.zeros(1, 4, 7, 8), 0.1, 0)
    with pytest.raises(MergeError, match=r"\[B, C, H, W\]"):
        merge(torch.zeros(4, 8, 8), 0.1, 0)
    m = merge(_latent(), 0.25, 0)
    bufs = m.to_buffers("float32")
    broken = dict(bufs, **{"merge.map": np.zeros_like(bufs["merge.map"])})
    with pytest.raises(MergeError, match="merge map marks"):
        MergedLatent.from_buffers(m.to_meta(), broken)
    short = dict(bufs, **{"merge.tokens": bufs["merge.tokens"][:, 1:]})
    with pytest.raises(MergeError, match="merged tokens have shape"):
        MergedLatent.from_buffers(m.to_meta(), short)
    with pytest.raises(MergeError, match="missing"):
        MergedLatent.from_buffers(m.to_meta(), {"merge.map": bufs["merge.map"]})
