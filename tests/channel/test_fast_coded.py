"""The fast coded chain's blocks against Sionna's: CRC, LDPC encoding + rate matching, QAM mapping bit for bit; APP
demapping to float rounding; the QC layered decoder against the serial min-sum core inside Sionna's rate recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megbed.channel_emu.crc_fast import crc24b_attach, crc24b_check
from megbed.channel_emu.ldpc_nr import Ldpc5gCode
from megbed.channel_emu.qam_fast import Qam

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("k", [16, 101, 3000, 8424])
def test_crc24b_matches_sionna(k):
    from sionna.phy.fec.crc import CRCEncoder

    u = RNG.integers(0, 2, (3, k)).astype(np.uint8)
    want = CRCEncoder("CRC24B")(torch.from_numpy(u.astype(np.float32))).numpy().astype(np.uint8)
    got = crc24b_attach(u)
    np.testing.assert_array_equal(got, want)
    assert crc24b_check(got).all()
    got[1, k // 2] ^= 1
    assert crc24b_check(got).tolist() == [True, False, True]


# (k, n, m): BG1 and BG2, fillers, every modulation, a rate near the 0.95 limit and one near 1/5.
SHAPES = [(8000, 15760, 2), (3824, 12000, 2), (500, 1000, 4), (4000, 6000, 6), (100, 300, 2), (2000, 2200, 8),
          (640, 3200, 2)]


@pytest.mark.parametrize("k,n,m", SHAPES)
def test_ldpc_encoding_and_rate_matching_match_sionna(k, n, m):
    code = Ldpc5gCode(k, n, m)
    u = RNG.integers(0, 2, (3, k)).astype(np.uint8)
    want = code.sionna_encoder(torch.from_numpy(u.astype(np.float32)), rv=[0, 1, 2, 3]).numpy().astype(np.uint8)
    for rv in range(4):
        np.testing.assert_array_equal(code.encode(u, rv), want[:, rv, :])


@pytest.mark.parametrize("m", [2, 4, 6, 8])
def test_qam_mapper_and_app_demapper_match_sionna(m):
    from sionna.phy.mapping import Demapper, Mapper

    q = Qam(m)
    b = RNG.integers(0, 2, 3000 * m).astype(np.uint8)
    x = q.map(b)
    np.testing.assert_array_equal(x, Mapper("qam", m)(torch.from_numpy(b.astype(np.float32))).numpy())
    y = (x + (RNG.standard_normal(x.size) + 1j * RNG.standard_normal(x.size)) * 0.2).astype(np.complex64)
    no = RNG.uniform(1e-3, 0.5, x.size).astype(np.float32)
    demapper = Demapper("app", "qam", m)
    for noise in (no, 0.05):
        want = demapper(torch.from_numpy(y), torch.as_tensor(noise, dtype=torch.float32)).numpy()
        got = q.demap(y, noise)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("ebno_db", [1.0, 2.0])
def test_layered_decoder_matches_the_serial_core_in_sionnas_rate_recovery(ebno_db):
    from megbed.channel_emu.ldpc_fast import FastLDPC5GDecoder

    k, n, m = 3000, 6000, 2
    code, q = Ldpc5gCode(k, n, m), Qam(m)
    u = RNG.integers(0, 2, (12, k)).astype(np.uint8)
    no = 10 ** (-(ebno_db + 10 * np.log10(m * k / n)) / 10)
    x = q.map(code.encode(u))
    y = (x + np.sqrt(no / 2) * (RNG.standard_normal(x.size) + 1j * RNG.standard_normal(x.size))).astype(np.complex64)
    llr = q.demap(y, no).reshape(12, n)
    got, iters = code.decode(llr)
    serial = FastLDPC5GDecoder(code.sionna_encoder, num_iter=20)
    with torch.no_grad():
        want = serial(torch.from_numpy(llr)).numpy().astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(iters, serial.last_iterations)


def test_harq_combining_decodes_what_one_version_cannot():
    k, n, m = 2000, 4000, 2
    code, q = Ldpc5gCode(k, n, m), Qam(m)
    u = RNG.integers(0, 2, (8, k)).astype(np.uint8)
    snr_db = -1.5  # Es/N0: below the rate-1/2 waterfall, above the combined (rate ~1/4) one
    no = 10 ** (-snr_db / 10)
    llrs = []
    for rv in (0, 2):
        x = q.map(code.encode(u, rv))
        y = (x + np.sqrt(no / 2) * (RNG.standard_normal(x.size) + 1j * RNG.standard_normal(x.size)))
        llrs.append(q.demap(y.astype(np.complex64), no).reshape(8, n))
    one, _ = code.decode(llrs[0], (0,))
    both, _ = code.decode(np.stack(llrs, axis=1), (0, 2))
    assert (one != u).any(axis=1).mean() > 0.5 and (both == u).all()


def test_a_cuda_device_runs_sionnas_chain_on_it(monkeypatch):
    # No GPU here: the choice is what is checked (the blocks are built on first use, on the chosen device).
    from megbed.channel_emu.coded import CodedChain
    from megbed.channel_emu.config import LinkConfig

    chain = CodedChain(LinkConfig(mode="coded", decoder={"device": "cuda:0"}))
    assert (chain.device, chain.impl, chain.decoder_kind) == ("cuda:0", "sionna", "sionna")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    chain = CodedChain(LinkConfig(mode="coded"))
    assert (chain.device, chain.impl) == ("cuda", "sionna")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    chain = CodedChain(LinkConfig(mode="coded"))
    assert (chain.device, chain.impl, chain.decoder_kind) == ("cpu", "fast", "fast")
