from __future__ import annotations

import numpy as np
import pytest
import torch

from megbed.testbed.ldm.merging import (
    DEFAULT_MERGE_METHOD,
    LLOYD_ITERATIONS,
    MAX_BETA,
    MERGE_METHODS,
    MergedLatent,
    MergeError,
    index_bits,
    merge,
    merge_layout,
    merged_payload_nbytes,
    pack_indices,
    patchify,
    unmerge,
    unpack_indices,
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


@pytest.mark.parametrize("method", MERGE_METHODS)
def test_beta_zero_is_exact_identity(method):
    x = _latent()
    m = merge(x, 0.0, seed=3, method=method)
    assert m.num_merged == 0 and not m.merge_map.any() and m.dst_map.size == 0
    y = unmerge(m)
    assert y.dtype == x.dtype and torch.equal(y, x)
    half = x.half()
    assert torch.equal(unmerge(merge(half, 0.0, 3, method)), half)
    # through the wire buffers too (float32 on the wire: bit-exact)
    back = MergedLatent.from_buffers(m.to_meta(), m.to_buffers("float32"))
    assert torch.equal(unmerge(back), x)


@pytest.mark.parametrize("method", MERGE_METHODS)
@pytest.mark.parametrize("beta", [0.1, 0.25, 0.5, 0.75])
def test_merge_counts_shapes_and_unmerge_shape(beta, method):
    x = _latent()
    m = merge(x, beta, seed=1, method=method)
    r = round(beta * 64)
    assert m.num_merged == r
    assert m.tokens.shape == (2, 64 - r, 16)
    assert m.source_mask.sum(dim=1).tolist() == [r, r]
    y = unmerge(m)
    assert y.shape == x.shape and y.dtype == x.dtype


def test_window_merged_sources_are_the_most_similar_and_get_the_average():
    x = _latent((1, 4, 8, 8), seed=5)
    m = merge(x, 0.25, seed=2, method="window")
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


@pytest.mark.parametrize("method", MERGE_METHODS)
def test_identical_sources_merge_losslessly(method):
    # a latent constant over each 2x2 token window: merging anything loses nothing
    coarse = _latent((1, 4, 4, 4), seed=9)
    x = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    y = unmerge(merge(x, MAX_BETA, seed=4, method=method))
    torch.testing.assert_close(y, x, rtol=0, atol=1e-6)


def test_payload_bytes_shrink_linearly_with_beta():
    shape = (4, 128, 128)
    betas = np.linspace(0, 0.75, 16)
    sizes = np.array([merged_payload_nbytes(shape, b, "float16", method="window") for b in betas])
    assert sizes[0] == 4096 * 16 * 2 + 384
    assert np.all(np.diff(sizes) < 0)
    slope, intercept = np.polyfit(betas, sizes, 1)
    assert np.max(np.abs(sizes - (slope * betas + intercept))) <= 16 * 2  # rounding of r only
    assert slope == pytest.approx(-4096 * 16 * 2, rel=1e-3)
    # the closed form equals what to_buffers really produces
    x = _latent((1, 4, 32, 32))
    for method in MERGE_METHODS:
        for beta in (0.0, 0.3, 0.75):
            bufs = merge(x, beta, 0, method).to_buffers("float16")
            assert sum(b.nbytes for b in bufs.values()) == merged_payload_nbytes((4, 32, 32), beta, "float16",
                                                                                  method=method)


def test_global_side_information_costs_its_bits():
    # SDXL: 1024 destinations -> 10 bits per merged source, on top of the 384-byte source bitmap
    shape = (4, 128, 128)
    assert index_bits(1024) == 10 and index_bits(1) == 0 and index_bits(2) == 1 and index_bits(5) == 3
    for beta, r in ((0.25, 1024), (0.5, 2048), (0.75, 3072)):
        window = merged_payload_nbytes(shape, beta, method="window")
        for method in ("global", "global_l2"):
            assert merged_payload_nbytes(shape, beta, method=method) - window == (r * 10 + 7) // 8


@pytest.mark.parametrize("method", MERGE_METHODS)
def test_buffers_round_trip_and_roles_of_dtypes(method):
    x = _latent()
    m = merge(x, 0.4, seed=11, method=method)
    bufs = m.to_buffers("float32")
    assert bufs["merge.tokens"].dtype == np.float32 and bufs["merge.map"].dtype == np.uint8
    assert ("merge.dst" in bufs) == (method != "window")
    m2 = MergedLatent.from_buffers(m.to_meta(), bufs)
    assert torch.equal(unmerge(m2), unmerge(m))
    half = MergedLatent.from_buffers(m.to_meta(), m.to_buffers("float16"))
    torch.testing.assert_close(unmerge(half), unmerge(m), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("method", MERGE_METHODS)
def test_batch_rows_merge_independently(method):
    x = _latent((3, 4, 8, 8))
    m = merge(x, 0.5, 0, method)
    for i in range(3):
        single = merge(x[i:i + 1], 0.5, 0, method)
        assert torch.equal(single.tokens[0], m.tokens[i])
        assert np.array_equal(single.merge_map[0], m.merge_map[i])
        assert np.array_equal(single.dst_map[0], m.dst_map[i])
        assert torch.equal(unmerge(single)[0], unmerge(m)[i])


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


def test_index_packing_round_trips_at_every_width():
    rng = np.random.default_rng(0)
    for bits in range(1, 13):
        idx = rng.integers(0, 2**bits, size=(3, 37))
        packed = pack_indices(idx, bits)
        assert packed.dtype == np.uint8 and packed.shape == (3, (37 * bits + 7) // 8)
        assert np.array_equal(unpack_indices(packed, 37, bits), idx)


def _reference_global(tokens: np.ndarray, src_index, dst_index, r: int, metric: str, passes: int):
    """The rule written out as plain loops (no torch, nothing vectorised): per source, the best target over all
    destinations; the r best sources, ties to the lower source; every destination becomes the mean of itself and
    the sources merged into it (tomesd's ``mean`` with the destination included). ``passes`` more rounds match
    the sources against those means instead of the destinations (global_l2's Lloyd refinement)."""
    tokens = tokens.astype(np.float64)
    targets = [tokens[d] for d in dst_index]
    for _ in range(passes + 1):
        best_dst, best_score = [], []
        for s in src_index:
            scores = []
            for t in targets:
                a = tokens[s]
                if metric == "cosine":
                    scores.append(float(a @ t / (np.sqrt(a @ a) * np.sqrt(t @ t))))
                else:
                    scores.append(-float(((a - t) ** 2).sum()))
            j = int(np.argmax(scores))
            best_dst.append(j)
            best_score.append(scores[j])
        order = sorted(range(len(src_index)), key=lambda i: (-best_score[i], i))
        merged = sorted(order[:r])
        targets = []
        for j, d in enumerate(dst_index):
            members = [int(src_index[i]) for i in merged if best_dst[i] == j]
            targets.append(tokens[[int(d), *members]].mean(axis=0))
    out = tokens.copy()
    for j, d in enumerate(dst_index):
        out[d] = targets[j]
    for i in merged:
        out[src_index[i]] = targets[best_dst[i]]
    return merged, [best_dst[i] for i in merged], out


@pytest.mark.parametrize("method, metric", [("global", "cosine"), ("global_l2", "l2")])
def test_global_rule_matches_an_independent_reference(method, metric):
    x = _latent((1, 4, 12, 8), seed=21)  # 6x4 tokens: 6 windows, 18 sources
    layout = merge_layout(4, 12, 8, 5)
    tokens = patchify(x)[0].numpy()
    r = round(0.5 * layout.num_tokens)
    passes = LLOYD_ITERATIONS if method == "global_l2" else 0
    merged_src, merged_dst, expected = _reference_global(tokens, layout.src_index, layout.dst_index, r, metric,
                                                         passes)
    m = merge(x, 0.5, 5, method)
    assert m.num_merged == r == 12
    mask = m.source_mask[0].numpy()
    assert np.flatnonzero(mask).tolist() == merged_src
    assert m.merged_destinations()[0].tolist() == merged_dst
    # sources may land in a window other than their own: the rule is global
    assert any(layout.src_window[i] != d for i, d in zip(merged_src, merged_dst, strict=True))
    y = patchify(unmerge(m))[0].numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_l2_beats_cosine_on_magnitude_differences():
    # a source parallel to a far-away destination but 3x its size: cosine calls it a perfect match
    x = _latent((1, 4, 16, 16), seed=3)
    x = x * torch.linspace(0.2, 3.0, 16).view(1, 1, 16, 1)
    nmse = {}
    for method in MERGE_METHODS:
        y = unmerge(merge(x, 0.5, 1, method))
        nmse[method] = float(((y - x) ** 2).sum() / (x**2).sum())
    assert nmse["global_l2"] < nmse["global"] and nmse["global_l2"] < nmse["window"]
    assert DEFAULT_MERGE_METHOD == "global_l2"


@pytest.mark.parametrize("method", ["global", "global_l2"])
def test_truncated_extended_or_out_of_range_indices_are_merge_errors(method):
    x = _latent((1, 4, 12, 8), seed=2)  # 6 destinations -> 3-bit indices, 7 is out of range
    m = merge(x, 0.5, 0, method)
    bufs = m.to_buffers("float32")
    meta = m.to_meta()
    with pytest.raises(MergeError, match="destination indices have shape"):
        MergedLatent.from_buffers(meta, dict(bufs, **{"merge.dst": bufs["merge.dst"][:, :-1]}))
    with pytest.raises(MergeError, match="destination indices have shape"):
        MergedLatent.from_buffers(meta, dict(bufs, **{"merge.dst": np.pad(bufs["merge.dst"], ((0, 0), (0, 1)))}))
    with pytest.raises(MergeError, match="missing"):
        MergedLatent.from_buffers(meta, {k: v for k, v in bufs.items() if k != "merge.dst"})
    bad = np.full_like(bufs["merge.dst"], 0xFF)
    with pytest.raises(MergeError, match="out of range"):
        MergedLatent.from_buffers(meta, dict(bufs, **{"merge.dst": bad}))
    with pytest.raises(MergeError, match="unknown merge method"):
        MergedLatent.from_buffers(dict(meta, method="nearest"), bufs)


def test_lloyd_passes_never_raise_the_error():
    x = _latent((2, 4, 32, 32), seed=8)
    import megbed.testbed.ldm.merging as M

    errs = []
    for passes in range(4):
        old, M.LLOYD_ITERATIONS = M.LLOYD_ITERATIONS, passes
        try:
            errs.append(float(((unmerge(merge(x, 0.6, 2, "global_l2")) - x) ** 2).sum()))
        finally:
            M.LLOYD_ITERATIONS = old
    assert all(b <= a * (1 + 1e-6) for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < errs[0]
