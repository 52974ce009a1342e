"""Digital transport of bits over a link model: the ``coded`` chain (Sionna 5G LDPC, simulated) and its
``abstraction`` (Sionna SYS BLER tables), with the same segmentation, airtime and HARQ accounting.

**coded** (:class:`megbed.channel_emu.coded.CodedChain`): bits -> code blocks with CRC-24B -> 5G LDPC with rate matching
and bit interleaving -> QAM -> the link model -> APP demapping with the per-symbol effective noise -> LDPC decoding
-> CRC check, by Sionna's blocks or their fast equivalents (``impl``). A block whose CRC fails is a block error.
Residual errors:

* ``corrupt``: one transmission; failed blocks deliver their decoded (wrong) bits.
* ``harq``: failed blocks are sent again with the next redundancy version (0, 2, 3, 1, ...: incremental redundancy
  as in 5G) and decoded from all their received versions combined (Sionna's HARQ-IR decoding), up to
  ``max_retransmissions`` times; blocks still failing then deliver their decoded bits.

**abstraction**: the same blocks, but each decoding attempt fails with the BLER of Sionna's ``PHYAbstraction``
tables at the block's effective SNR (EESM over the block's per-symbol SNRs for the fading models). HARQ combining is
modelled as Chase combining (per-symbol SNRs add up over transmissions) -- conservative against the IR of the coded
mode. A failed block's bits are flipped with the uncoded bit error probability of its modulation at its effective
SNR (a decoder failure leaves roughly the channel's raw errors).

Airtime and symbol counts come from the actual coded symbols of every transmission, through the link model
(OFDM: whole slots with pilots and cyclic prefix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import float32, float64, njit, uint64
from scipy.special import erfc

from megbed.channel_emu.links import SymbolLink
from megbed.channel_emu.mcs import (
    CRC_BITS,
    Segmentation,
    bler,
    bler_table,
    eesm_beta,
    eesm_db,
    effective_snr_db,
    segment,
)
from megbed.channel_emu.noise import draw_words, log_one_minus_uniform_at
from megbed.channel_emu.scratch import pool
from megbed.channel_emu.vecmath import exp32

RV_SEQUENCE = (0, 2, 3, 1)
# Zero-size results (nothing can be written into them), shared: the side block of every analog delivery ends with
# no failed block and no bits, and three fresh arrays cost ~2 us there.
_NO_BITS = np.zeros(0, np.uint8)
_NO_BLOCKS = np.zeros(0, np.int64)
_NO_SNR = np.zeros(0, np.float64)


@dataclass
class DigitalResult:
    """Outcome of one digital transfer.

    Attributes
    ----------
    bits : numpy.ndarray, uint8 [payload_bits]
        Delivered bits.
    seg : Segmentation
        Code-block layout.
    transmissions : int
        Rounds used (1 + retransmission rounds).
    coded_bits, symbols, channel_uses : int
        Coded bits, data symbols and channel symbols (incl. pilots) over all rounds.
    airtime_s : float
        Airtime over all rounds (s).
    attempts, failures : int
        Block decoding attempts and failed attempts over all rounds.
    residual_blocks : int
        Blocks still wrong when delivered.
    timings_s : dict[str, float]
        Processing time per stage (coded chain: crc, encode, map, channel, demap, decode), seconds.
    """

    bits: np.ndarray
    seg: Segmentation
    transmissions: int
    coded_bits: int
    symbols: int
    channel_uses: int
    airtime_s: float
    attempts: int
    failures: int
    residual_blocks: int
    failed_blocks: np.ndarray | None = None
    failed_snr_db: np.ndarray | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def retransmissions(self) -> int:
        return self.transmissions - 1


def _delivered(bits: np.ndarray | None, seg: Segmentation, link: SymbolLink, sent: list[int], failed: np.ndarray,
               failed_snr_db: np.ndarray, rng: np.random.Generator, corrupt: bool) -> DigitalResult:
    """The result of an abstracted transfer that sent ``sent[r]`` code blocks in round r and left the ``failed``
    blocks wrong (at effective SNRs ``failed_snr_db``): a copy of ``bits`` (none when None), those blocks' bits
    flipped when ``corrupt``, and the counts of all rounds.

    Every block that failed a round is sent in the next one, so the failed attempts are the blocks of rounds 2.. plus
    the residual ones; the loops keep only ``sent`` (one append per round: this runs for every delivery's side
    information).
    """
    out = _NO_BITS
    if bits is not None:
        out = bits.copy()
        if corrupt:
            corrupt_bits(out, seg, failed, failed_snr_db, rng)
    sym_per_block = seg.n // seg.bits_per_symbol
    uses, airtime_s = 0, 0.0
    for blocks in sent:
        uses += link.channel_uses(blocks * sym_per_block)
        airtime_s += link.airtime_s(blocks * sym_per_block)
    attempts = sum(sent)
    residual = int(failed.size)
    return DigitalResult(out, seg, len(sent), attempts * seg.n, attempts * sym_per_block, uses, airtime_s, attempts,
                         attempts - sent[0] + residual, residual, failed, failed_snr_db)


def qam_ber(bits_per_symbol: int, snr_db: float | np.ndarray) -> np.ndarray:
    """Uncoded Gray-mapped square-QAM bit error probability at Es/N0 = ``snr_db`` (nearest-neighbour form;
    exact for BPSK/QPSK)."""
    m = int(bits_per_symbol)
    es_n0 = 10.0 ** (np.asarray(snr_db, dtype=np.float64) / 10.0)
    if m == 1:
        return 0.5 * erfc(np.sqrt(es_n0))
    big_m = 2 ** m
    arg = np.sqrt(3.0 * es_n0 / (2.0 * (big_m - 1)))
    return np.minimum(0.5, (2.0 / m) * (1.0 - 1.0 / math.sqrt(big_m)) * erfc(arg))


def bits_to_blocks(bits: np.ndarray, seg: Segmentation) -> np.ndarray:
    """uint8 0/1 bits -> [blocks, info bits per block], the last block zero-padded."""
    padded = np.zeros(seg.num_blocks * seg.info_per_block, np.uint8)
    padded[:bits.size] = bits
    return padded.reshape(seg.num_blocks, seg.info_per_block)


def abstract_transfer(bits: np.ndarray | None, payload_bits: int, mcs: int, link: SymbolLink, snr_db: float,
                      rng: np.random.Generator, harq: bool, max_retransmissions: int, max_cb_bits: int = 8448,
                      corrupt: bool = True, impl: str = "fast") -> DigitalResult:
    """The abstracted transfer (see the module docstring). ``bits`` may be None when only accounting is needed."""
    seg = segment(int(payload_bits), int(mcs), int(max_cb_bits))
    rounds = 1 + (max_retransmissions if harq else 0)
    if link.flat:
        return _abstract_flat(bits, seg, link, snr_db, rng, rounds, corrupt, impl)
    if impl == "fast" and link.iid_exp_gains:
        return _abstract_exp_fading(bits, seg, link, snr_db, rng, rounds, corrupt)
    m = seg.bits_per_symbol
    sym_per_block = seg.n // m
    pending = np.arange(seg.num_blocks)
    sent: list[int] = []
    sinr_sum = None
    eff_db = np.zeros(seg.num_blocks)
    snr_lin = 10.0 ** (snr_db / 10.0)
    for _ in range(rounds):
        sent.append(int(pending.size))
        n_sym = pending.size * sym_per_block
        gains = link.gains(n_sym, rng).reshape(pending.size, sym_per_block)
        sinr = snr_lin * gains
        sinr_sum = sinr if sinr_sum is None else sinr_sum + sinr  # Chase combining per symbol
        eff = effective_snr_db(sinr_sum, mcs)
        if impl == "fast" and pending.size <= 8:  # a side block: scalar look-ups beat numpy's per-call cost
            table = bler_table()
            p_fail = np.array([table.scalar(mcs, seg.k, e) for e in eff.tolist()])
        else:
            p_fail = bler(mcs, seg.k, eff, impl)
        fail = rng.random(pending.size) < p_fail
        eff_db[pending] = eff
        sinr_sum = sinr_sum[fail]
        pending = pending[fail]
        if pending.size == 0:
            break
    return _delivered(bits, seg, link, sent, pending, eff_db[pending], rng, corrupt)


def _abstract_flat(bits: np.ndarray | None, seg: Segmentation, link: SymbolLink, snr_db: float,
                   rng: np.random.Generator, rounds: int, corrupt: bool, impl: str) -> DigitalResult:
    """:func:`abstract_transfer` on a flat link: every block of a round has the same effective SNR (the delivery's,
    r + 1 Chase-combined copies adding up), so a round is one table look-up and one uniform per pending block.
    Kept lean: it runs for the side information of every analog delivery."""
    table = bler_table() if impl == "fast" else None
    snr_lin = 10.0 ** (snr_db / 10.0)
    # Plain Python lists: the side block is one or two code blocks, where numpy's per-call cost dominates. Scalar
    # rng.random() calls draw the same numbers as one vector call.
    pending = list(range(seg.num_blocks))
    sent: list[int] = []
    eff1 = snr_db
    for r in range(rounds):
        eff1 = 10.0 * math.log10(max(snr_lin * (r + 1), 1e-30))
        p = table.scalar(seg.mcs, seg.k, eff1) if table is not None else float(bler(seg.mcs, seg.k, eff1, impl)[0])
        sent.append(len(pending))
        if p <= 0.0:
            pending = []
            break
        if len(pending) <= 8:
            pending = [b for b in pending if rng.random() < p]
        else:
            arr = np.asarray(pending)
            pending = arr[rng.random(arr.size) < p].tolist()
        if not pending:
            break
    failed = np.asarray(pending, dtype=np.int64) if pending else _NO_BLOCKS
    return _delivered(bits, seg, link, sent, failed, np.full(failed.size, eff1) if pending else _NO_SNR, rng, corrupt)


@njit(cache=True, boundscheck=False, fastmath={"reassoc"})
def _sum_used(e, a):
    """(sum of ``e`` in float64, count of ``a`` > 0): the EESM sum and the symbols it used (vectorised)."""
    s = 0.0
    n = 0
    for i in range(e.size):
        s += float64(e[i])
        n += 1 if a[i] > float32(0.0) else 0
    return s, n


@njit(cache=True, boundscheck=False, error_model="numpy")
def _exp_fading_round(key, state, acc, fresh, snr_lin, beta, lo, hi, e, effs):
    """One abstraction round over i.i.d. Rayleigh symbols, in one call. For row b of ``acc`` (float32 [blocks,
    symbols], the pending blocks' Chase-combined gains) and symbol i: the fresh gain g = -log(1 - u) ~ Exp(1),
    draw b * symbols + i from word ``state[0]`` of the stream of ``key`` (np.uint64, or a Python int below 2^63)
    (:func:`megbed.channel_emu.noise.log_one_minus_uniform_at`, as :meth:`NoiseSource.exponential` draws; the
    counter ``state`` (uint64 [1]) is advanced past them), acc <- g (``fresh``) or acc + g, and ``effs[b]``: the
    block's EESM effective SNR (dB) at ``snr_lin`` with ``beta`` and the clamp ``lo``, ``hi``
    (:func:`megbed.channel_emu.mcs.eesm_db` of the sum of exp(-snr_lin acc / beta) over the symbols with acc > 0;
    ``e`` is float32 scratch [symbols], ``effs`` float64 [>= blocks]). Row by row, the words, their log, then the
    rest: one loop with the log in it was 2x slower."""
    rows, cols = acc.shape
    k = uint64(key)  # a Python int types as int64 below 2^63: its bits, unsigned
    start = state[0]
    state[0] = start + uint64(draw_words(rows * cols))
    snr32, ib32 = float32(snr_lin), float32(1.0 / beta)
    for b in range(rows):
        a = acc[b]
        log_one_minus_uniform_at(k, start, b * cols, e)
        for i in range(cols):
            g = float32(0.0) - e[i]  # as NoiseSource.exponential
            t = g if fresh else a[i] + g
            a[i] = t
            sinr = snr32 * t
            e[i] = exp32(-(sinr * ib32)) if sinr > float32(0.0) else float32(0.0)
        total, used = _sum_used(e, a)
        effs[b] = eesm_db(total, used, beta, lo, hi)


def _abstract_exp_fading(bits: np.ndarray | None, seg: Segmentation, link: SymbolLink, snr_db: float,
                         rng: np.random.Generator, rounds: int, corrupt: bool) -> DigitalResult:
    """:func:`abstract_transfer` on a link of i.i.d. Exp(1) symbol gains (per-symbol Rayleigh): each round one
    call draws the gains, Chase-combines them and sums the EESM terms (:func:`_exp_fading_round`), then one table
    look-up and one uniform per pending block, as the generic loop. The gains come from a SplitMix64 stream keyed
    by one word of ``rng`` per transfer (the generic loop draws 24-bit uniforms from ``rng`` itself: the same law,
    Exp(1) by inversion, not the same numbers). It runs for the side information of every analog delivery."""
    table = bler_table()
    beta, lo, hi = eesm_beta(seg.mcs)
    cols = seg.n // seg.bits_per_symbol
    acc = pool("exp_fading_acc", seg.num_blocks * cols).reshape(seg.num_blocks, cols)
    e, eff_arr = pool("exp_fading_e", cols), pool("exp_fading_effs", seg.num_blocks, np.float64)
    state = pool("exp_fading_counter", 1, np.uint64)
    state[0] = 0
    key = rng.bit_generator.random_raw() >> 1  # a Python int numba takes (int64); np.uint64() cost ~2 us
    pending = list(range(seg.num_blocks))
    sent: list[int] = []
    eff_of: dict[int, float] = {}
    snr_lin = 10.0 ** (snr_db / 10.0)
    for r in range(rounds):
        rows = len(pending)
        sent.append(rows)
        _exp_fading_round(key, state, acc[:rows], r == 0, snr_lin, beta, lo, hi, e, eff_arr)
        effs = eff_arr.tolist()[:rows]
        if rows <= 8:  # a side block: scalar look-ups and draws (the same numbers as one vector draw)
            fail = [rng.random() < table.scalar(seg.mcs, seg.k, eff) for eff in effs]
        else:
            fail = (rng.random(rows) < bler(seg.mcs, seg.k, np.asarray(effs))).tolist()
        eff_of.update(zip(pending, effs, strict=True))
        if not any(fail):
            pending = []
            break
        kept = [i for i, f in enumerate(fail) if f]
        pending = [pending[i] for i in kept]
        if len(kept) < rows:  # the failed blocks' combined gains move up to the first rows
            acc[:len(kept)] = acc[np.asarray(kept)]
    failed = np.asarray(pending, dtype=np.int64) if pending else _NO_BLOCKS
    failed_snr = np.array([eff_of[b] for b in pending], dtype=np.float64) if pending else _NO_SNR
    return _delivered(bits, seg, link, sent, failed, failed_snr, rng, corrupt)


@njit(cache=True, boundscheck=False)
def _flip(raw, packed, starts, stops, thresholds, words):
    """Flip bit i of ``raw`` (bytes if ``packed``, MSB first, else one 0/1 per byte) for i in [starts[b], stops[b])
    when the next 32-bit word is below ``thresholds[b]``; returns the flips."""
    w = 0
    flips = 0
    for b in range(starts.size):
        thr = thresholds[b]
        for i in range(starts[b], stops[b]):
            word = (words[w >> 1] >> np.uint64(32 * (w & 1))) & np.uint64(0xFFFFFFFF)
            w += 1
            if word < thr:
                flips += 1
                if packed:
                    raw[i >> 3] ^= np.uint8(0x80 >> (i & 7))
                else:
                    raw[i] ^= np.uint8(1)
    return flips


def _corrupt(raw: np.ndarray, packed: bool, total_bits: int, seg: Segmentation, failed: np.ndarray,
             snr_db: np.ndarray, rng: np.random.Generator) -> int:
    per = seg.info_per_block
    failed = np.asarray(failed, dtype=np.int64)
    if failed.size == 0:
        return 0
    starts = np.minimum(failed * per, total_bits)
    stops = np.minimum((failed + 1) * per, total_bits)
    p = qam_ber(seg.bits_per_symbol, np.asarray(snr_db, dtype=np.float64).reshape(-1))
    thresholds = np.minimum(np.floor(p * 2.0 ** 32), 2.0 ** 32 - 1).astype(np.uint64)
    n = int((stops - starts).sum())
    words = rng.bit_generator.random_raw(-(-n // 2)) if n else np.zeros(1, np.uint64)
    return int(_flip(raw, packed, starts, stops, thresholds, np.asarray(words, dtype=np.uint64)))


def corrupt_bits(bits: np.ndarray, seg: Segmentation, failed: np.ndarray, snr_db: np.ndarray,
                 rng: np.random.Generator) -> int:
    """Flip bits of the failed blocks in place (raw uncoded error probability at each block's SNR); returns flips.

    Each bit of a failed block flips independently with that probability (a 32-bit uniform per bit from ``rng``)."""
    return _corrupt(bits, False, bits.size, seg, failed, snr_db, rng)


def corrupt_bytes(raw: np.ndarray, seg: Segmentation, failed: np.ndarray, snr_db: np.ndarray,
                  rng: np.random.Generator) -> int:
    """:func:`corrupt_bits` on a uint8 byte array (bits MSB first, as ``np.unpackbits``); returns flips."""
    return _corrupt(raw, True, raw.size * 8, seg, failed, snr_db, rng)


__all__ = ["CRC_BITS", "RV_SEQUENCE", "DigitalResult", "abstract_transfer", "bits_to_blocks", "corrupt_bits", "corrupt_bytes",
           "qam_ber"]
