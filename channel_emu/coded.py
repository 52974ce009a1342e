"""The simulated 5G coded chain: bits -> CRC24B -> LDPC + rate matching -> QAM -> link -> APP demapping -> LDPC
decoding -> CRC check, with HARQ incremental redundancy (see :mod:`megbed.channel_emu.digital` for the modes and the
accounting).

Two implementations of the same chain, chosen by ``LinkConfig.impl``:

* ``fast`` (CPU default): :mod:`megbed.channel_emu.crc_fast`, :mod:`megbed.channel_emu.ldpc_nr` (encoder, rate matching, rate
  recovery and the QC layered min-sum decoder) and :mod:`megbed.channel_emu.qam_fast` -- bit-exact to Sionna's encoder,
  CRC and mapper, Sionna's demapper to float rounding -- on numpy arrays, with no torch tensor but the link's.
* ``sionna``: Sionna's ``CRCEncoder`` / ``LDPC5GEncoder`` / ``Mapper`` / ``Demapper("app")`` / ``CRCDecoder``
  used as they come (cached per block shape so that nothing is rebuilt per call), decoded by Sionna's
  ``LDPC5GDecoder`` in chunks of 8 codewords or, with ``decoder.kind = fast``, by Sionna's rate recovery on the
  numba serial min-sum core (:class:`megbed.channel_emu.ldpc_fast.FastLDPC5GDecoder`).

``decoder.kind = sionna`` with ``impl = fast`` decodes the fast chain's LLRs with Sionna's ``LDPC5GDecoder`` (the
LLR layout is the same). On a CUDA device (``decoder.device``: ``auto`` with a GPU, or ``cuda``) the whole chain
is Sionna's on the GPU with its batched decoder: numba runs on the CPU only.

Each transfer also reports where its time went (``DigitalResult.timings_s``: setup -- building the code of a block
shape seen for the first time --, crc, encode, map, channel, demap, decode), which the benchmark prints.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import torch

from megbed.channel_emu.config import LinkConfig
from megbed.channel_emu.digital import RV_SEQUENCE, DigitalResult, bits_to_blocks
from megbed.channel_emu.links import SymbolLink
from megbed.channel_emu.mcs import segment
from megbed.channel_emu.noise import NoiseSource
from megbed.channel_emu.numba_setup import kernel_threads, prefer_workqueue

prefer_workqueue()


_CODES: dict[tuple[int, int, int, int], object] = {}
_CODES_LOCK = threading.Lock()


class _Timer:
    """Accumulates perf_counter time per stage name."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.s[name] = self.s.get(name, 0.0) + now - self._t
        self._t = now


class CodedChain:
    """The simulated 5G LDPC chain of one link configuration; per-shape codes, modems and CRCs are cached."""

    SIONNA_CHUNK = 8  # Sionna's decoder is ~3x faster on chunks of ~8 codewords than on one large batch

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        dev = config.decoder.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = dev
        on_gpu = dev.startswith("cuda")
        self.impl = "sionna" if on_gpu else config.impl
        self.decoder_kind = "sionna" if on_gpu else config.decoder.kind
        self.threads = config.decoder.threads or (os.cpu_count() or 1)
        self._cache: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def _cached(self, key: tuple, build):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    # --- the pieces ---------------------------------------------------------------------------------------------

    def code(self, k: int, n: int, m: int):
        """The fast chain's :class:`~megbed.channel_emu.ldpc_nr.Ldpc5gCode` for one block geometry (shared by every chain
        of the process: building one takes ~0.25 s, mostly Sionna's encoder set-up)."""
        from megbed.channel_emu.ldpc_nr import Ldpc5gCode

        key = (int(k), int(n), int(m), self.config.decoder.num_iter)
        with _CODES_LOCK:
            if key not in _CODES:
                _CODES[key] = Ldpc5gCode(*key)
            return _CODES[key]

    def qam(self, m: int):
        from megbed.channel_emu.qam_fast import Qam

        return self._cached(("qam", m), lambda: Qam(m))

    def sionna_modem(self, m: int):
        """Sionna's (Mapper, Demapper("app")) for ``m`` bits per symbol."""
        from sionna.phy.mapping import Demapper, Mapper

        return self._cached(("modem", m), lambda: (Mapper("qam", m, device=self.device),
                                                   Demapper("app", "qam", m, device=self.device)))

    def sionna_crc(self, k_info: int):
        """Sionna's (CRCEncoder, CRCDecoder) for CRC24B over ``k_info`` bits (built once per length)."""
        from sionna.phy.fec.crc import CRCDecoder, CRCEncoder

        def build():
            enc = CRCEncoder("CRC24B", k=k_info, device=self.device)
            return enc, CRCDecoder(enc, device=self.device)

        return self._cached(("crc", k_info), build)

    def sionna_codec(self, k: int, n: int, m: int, harq: bool):
        """(LDPC5GEncoder, decoder) for one block geometry: Sionna's ``LDPC5GDecoder`` or, for
        ``decoder.kind = fast``, its rate recovery on the numba core."""
        from sionna.phy.fec.ldpc import LDPC5GDecoder, LDPC5GEncoder

        def build():
            enc = LDPC5GEncoder(k, n, num_bits_per_symbol=m, device=self.device)
            it = self.config.decoder.num_iter
            if self.decoder_kind == "fast":
                from megbed.channel_emu.ldpc_fast import FastLDPC5GDecoder

                return enc, FastLDPC5GDecoder(enc, num_iter=it, harq_mode=harq)
            return enc, LDPC5GDecoder(enc, num_iter=it, harq_mode=harq, device=self.device)

        return self._cached(("codec", k, n, m, harq, self.decoder_kind), build)

    def _sionna_decode(self, dec, llr: torch.Tensor, rv: list[int] | None) -> torch.Tensor:
        kw = {"rv": rv} if rv is not None else {}
        if self.decoder_kind == "fast":
            return dec(llr, **kw)
        return torch.cat([dec(llr[i:i + self.SIONNA_CHUNK], **kw) for i in range(0, llr.shape[0], self.SIONNA_CHUNK)])

    def warm_up(self, link: SymbolLink, mcs: int = 5, payload_bits: tuple[int, ...] = (),
                mcs_list: tuple[int, ...] = ()) -> None:
        """Run a small HARQ transfer at a hopeless SNR so that every kernel of the chain runs once (numba compiles
        them, or loads them from its disk cache), and build the codes of the block shapes that payloads of
        ``payload_bits`` take at each MCS of ``mcs_list`` (otherwise each new shape costs ~0.25 s on first use)."""
        self.transfer(np.zeros(2000, np.uint8), mcs, link, -20.0, NoiseSource(0), 1 + 0j, harq=True,
                      max_retransmissions=1)
        for bits in payload_bits:
            for idx in mcs_list:
                seg = segment(int(bits), int(idx), self.config.max_cb_bits)
                if self.impl == "fast":
                    self.code(seg.k, seg.n, seg.bits_per_symbol)
                else:
                    self.sionna_codec(seg.k, seg.n, seg.bits_per_symbol, self.config.residual == "harq")

    # --- transfer -----------------------------------------------------------------------------------------------

    def transfer(self, bits: np.ndarray, mcs: int, link: SymbolLink, snr_db: float, noise: NoiseSource,
                 fading: complex, harq: bool, max_retransmissions: int) -> DigitalResult:
        """Send ``bits`` (uint8 0/1) at MCS ``mcs``; returns the delivered bits and the accounting."""
        seg = segment(int(bits.size), int(mcs), self.config.max_cb_bits)
        rounds = 1 + (max_retransmissions if harq else 0)
        if self.impl == "fast":
            return self._transfer_fast(bits, seg, link, snr_db, noise, fading, harq, rounds)
        return self._transfer_sionna(bits, seg, link, snr_db, noise, fading, harq, rounds)

    def _transfer_fast(self, bits, seg, link, snr_db, noise, fading, harq, rounds) -> DigitalResult:
        import numba

        from megbed.channel_emu.crc_fast import crc24b_attach, crc24b_check

        tm = _Timer()
        m, k, n = seg.bits_per_symbol, seg.k, seg.n
        code, qam = self.code(k, n, m), self.qam(m)
        sionna_dec = self.sionna_codec(k, n, m, harq)[1] if self.decoder_kind == "sionna" else None
        numba.set_num_threads(kernel_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS), seg.num_blocks))
        tm.lap("setup")  # ~0 once the block shape has been seen; see warm_up(payload_bits=...)
        u_crc = crc24b_attach(bits_to_blocks(bits, seg))
        tm.lap("crc")
        mother = code.encode_mother(u_crc, (0,))
        tm.lap("encode")
        decoded = np.zeros((seg.num_blocks, seg.info_per_block), np.uint8)
        pending = np.arange(seg.num_blocks)
        hist: list[np.ndarray] = []  # per round: [blocks, n] logits (rows of the blocks sent in that round)
        coded = symbols = uses = attempts = failures = used = 0
        airtime = 0.0
        rvs: list[int] = []
        for r in range(rounds):
            used = r + 1
            rv = RV_SEQUENCE[r % len(RV_SEQUENCE)]
            rvs.append(rv)
            if r == 1:  # retransmissions need the parity the later RVs send
                mother = code.encode_mother(u_crc, tuple(RV_SEQUENCE))
                tm.lap("encode")
            c = code.select(mother, pending, rv)
            tm.lap("encode")
            x = qam.map(c)
            tm.lap("map")
            y, no, n_uses, t_air = link.transmit_array(x, snr_db, noise, fading)
            tm.lap("channel")
            llr = qam.demap(y, no).reshape(pending.size, n)
            tm.lap("demap")
            coded += c.size
            symbols += x.size
            uses += n_uses
            airtime += t_air
            if harq:
                store = np.zeros((seg.num_blocks, n), np.float32)
                store[pending] = llr
                hist.append(store)
                stacked = np.stack([h[pending] for h in hist], axis=1)
            else:
                stacked = llr[:, None, :]
            if sionna_dec is None:
                u_hat, _ = code.decode(stacked, tuple(rvs))
            else:
                with torch.no_grad():
                    t = torch.from_numpy(stacked if harq else llr)
                    u_hat = self._sionna_decode(sionna_dec, t, rvs if harq else None).numpy().astype(np.uint8)
            tm.lap("decode")
            ok = crc24b_check(u_hat)
            tm.lap("crc")
            decoded[pending] = u_hat[:, :seg.info_per_block]
            attempts += pending.size
            failures += int(np.count_nonzero(~ok))
            pending = pending[~ok]
            if pending.size == 0:
                break
        res = DigitalResult(decoded.reshape(-1)[:bits.size].copy(), seg, used, coded, symbols, uses, airtime,
                            attempts, failures, int(pending.size))
        res.timings_s = tm.s
        return res

    def _transfer_sionna(self, bits, seg, link, snr_db, noise, fading, harq, rounds) -> DigitalResult:
        tm = _Timer()
        m = seg.bits_per_symbol
        mapper, demapper = self.sionna_modem(m)
        crc_enc, crc_dec = self.sionna_crc(seg.info_per_block)
        enc, dec = self.sionna_codec(seg.k, seg.n, m, harq)
        tm.lap("setup")
        with torch.no_grad():
            u = torch.from_numpy(bits_to_blocks(bits, seg).astype(np.float32)).to(self.device)
            u_crc = crc_enc(u)
            tm.lap("crc")
            decoded = torch.zeros_like(u)
            pending = np.arange(seg.num_blocks)
            llr_hist: list[torch.Tensor] = []
            keep_prev = torch.zeros(0, dtype=torch.long)  # which of the last round's blocks failed
            coded = symbols = uses = attempts = failures = used = 0
            airtime = 0.0
            for r in range(rounds):
                used = r + 1
                rv = RV_SEQUENCE[r % len(RV_SEQUENCE)]
                idx = torch.from_numpy(pending).to(self.device)
                c = enc(u_crc[idx], rv=[rv])[:, 0, :] if harq else enc(u_crc[idx])
                tm.lap("encode")
                x = mapper(c)
                tm.lap("map")
                out = link.transmit(x.reshape(-1).cpu(), snr_db, noise, fading)
                y = out.s_hat.to(self.device).reshape(x.shape)
                no = out.no_eff_per_symbol().to(self.device).reshape(x.shape)
                tm.lap("channel")
                llr = demapper(y, no)
                tm.lap("demap")
                coded += c.numel()
                symbols += x.numel()
                uses += out.channel_uses
                airtime += out.airtime_s
                if harq:
                    llr_hist = [h[keep_prev] for h in llr_hist] if r else []
                    llr_hist.append(llr)
                    stacked = torch.stack(llr_hist, dim=1) if len(llr_hist) > 1 else llr_hist[0]
                    rvs = [RV_SEQUENCE[i % len(RV_SEQUENCE)] for i in range(len(llr_hist))]
                    u_hat = self._sionna_decode(dec, stacked, rvs)
                else:
                    u_hat = self._sionna_decode(dec, llr, None)
                tm.lap("decode")
                _, crc_ok = crc_dec(u_hat)
                ok = crc_ok.reshape(-1).cpu().numpy().astype(bool)
                tm.lap("crc")
                decoded[idx] = u_hat[:, :seg.info_per_block].to(decoded.dtype)
                attempts += pending.size
                failures += int((~ok).sum())
                keep_prev = torch.from_numpy(np.nonzero(~ok)[0]).to(self.device)
                pending = pending[~ok]
                if pending.size == 0:
                    break
        out_bits = decoded.reshape(-1).to(torch.uint8).cpu().numpy()[:bits.size]
        res = DigitalResult(out_bits, seg, used, coded, symbols, uses, airtime, attempts, failures, int(pending.size))
        res.timings_s = tm.s
        return res
