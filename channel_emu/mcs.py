"""MCS, segmentation and BLER look-ups shared by the coded and abstraction modes (5G NR PDSCH, MCS table 1).

* MCS index -> (bits per symbol, target code rate): Sionna's ``decode_mcs_index`` (38.214 Table 5.1.3.1-1).
* Segmentation of a payload into LDPC code blocks as in 38.212: every block carries a 24-bit CRC; the maximum block
  is 8448 bits (base graph 1), or 3824 bits when the code rate is below 0.4 (base graph 2); blocks are equal-sized,
  the last padded with zeros. Each block is rate-matched to n = K / R bits, rounded up to a whole symbol.
* BLER for a code block at an effective SINR: Sionna SYS ``PHYAbstraction`` tables (shipped with the package,
  simulated for block sizes up to 2000 bits; larger blocks use the 2000-bit curve -- slightly pessimistic).
* Effective SINR of a block under fading: Sionna SYS ``EESM``.
* Link adaptation: the highest MCS whose BLER at the expected SNR is at most the target (what Sionna's
  ``InnerLoopLinkAdaptation`` does, evaluated for our code-block size).
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from channel_emu.config import MAX_MCS, MIN_MCS

CRC_BITS = 24
MCS_TABLE = 1
MCS_CATEGORY = 1  # PDSCH: the ES -> UE downlink
_PA_LOCK = threading.Lock()


@functools.cache
def mcs_params(mcs: int) -> tuple[int, float]:
    """(bits per symbol, target code rate) of an MCS index of PDSCH table 1."""
    from sionna.phy.nr.utils import decode_mcs_index

    if not MIN_MCS <= int(mcs) <= MAX_MCS:
        raise ValueError(f"MCS {mcs} outside [{MIN_MCS}, {MAX_MCS}]")
    m, r = decode_mcs_index(int(mcs), MCS_TABLE, is_pusch=False)
    return int(m), float(r)


@functools.cache
def phy_abstraction():
    """One shared Sionna ``PHYAbstraction`` (building its interpolated tables takes seconds: done once per process).

    The grids are coarser than Sionna's defaults (0.25 dB, 200-bit block sizes up to the simulated 2024 bits) to
    keep start-up short; the tables themselves are Sionna's.
    """
    from sionna.sys import PHYAbstraction

    class _BlerOnly(PHYAbstraction):
        def _interpolate_snr(self) -> None:
            # The BLER -> SNR inversion (Sionna's own link adaptation) costs most of the start-up (scipy griddata
            # per table) and is never used here: link adaptation scans the BLER table directly.
            return None

    with _PA_LOCK, torch.no_grad():
        return _BlerOnly(snr_db_interp_min_max_delta=(-10.0, 30.01, 0.25),
                         cbs_interp_min_max_delta=(24, 2024, 200), device="cpu")


@functools.cache
def _eesm():
    from sionna.sys import EESM

    return EESM(device="cpu")


@functools.lru_cache(maxsize=4096)
def _bler_scalar(mcs: int, cb_bits: int, snr_centi_db: int) -> float:
    return float(_bler(mcs, cb_bits, snr_centi_db / 100.0)[0])


def bler(mcs: int | np.ndarray, cb_bits: int, snr_db: float | np.ndarray) -> np.ndarray:
    """Code-block error rate at effective SNR(s) ``snr_db`` (dB); MCS and SNR broadcast. Outside the table -> 1.

    A single (MCS, SNR) pair is looked up on a 0.01 dB grid through a cache (the tables' own grid is 0.25 dB).
    """
    if np.ndim(mcs) == 0 and np.size(snr_db) == 1:
        snr = float(np.asarray(snr_db).reshape(-1)[0])
        return np.array([_bler_scalar(int(mcs), int(cb_bits), int(round(snr * 100)))])
    return _bler(mcs, cb_bits, snr_db)


def _bler(mcs: int | np.ndarray, cb_bits: int, snr_db: float | np.ndarray) -> np.ndarray:
    snr, mcs_arr = np.broadcast_arrays(np.atleast_1d(np.asarray(snr_db, dtype=np.float64)),
                                       np.atleast_1d(np.asarray(mcs, dtype=np.int64)))
    pa = phy_abstraction()
    with torch.no_grad():
        b = pa.get_bler(torch.as_tensor(np.ascontiguousarray(mcs_arr), dtype=torch.int32), MCS_TABLE, MCS_CATEGORY, int(cb_bits),
                        torch.as_tensor(10.0 ** (np.ascontiguousarray(snr) / 10.0), dtype=torch.float32))
    out = b.numpy().astype(np.float64)
    out[~np.isfinite(out)] = 1.0
    # Below the tables' SNR grid the link is hopeless; above it, clean.
    return np.clip(out, 0.0, 1.0)


def effective_snr_db(sinr_linear: np.ndarray, mcs: int) -> np.ndarray:
    """EESM effective SNR (dB) of each row of per-symbol SINRs ``[blocks, symbols]`` (linear)."""
    sinr = torch.as_tensor(np.ascontiguousarray(sinr_linear, dtype=np.float32))[:, :, None, None, None]
    with torch.no_grad():
        eff = _eesm()(sinr, torch.full((sinr.shape[0], 1), int(mcs), dtype=torch.int32), MCS_TABLE,
                      torch.full((sinr.shape[0], 1), MCS_CATEGORY, dtype=torch.int32))
    return 10.0 * np.log10(np.maximum(eff.numpy().reshape(-1).astype(np.float64), 1e-30))


def select_mcs(snr_db: float, payload_bits: int, bler_target: float, max_cb_bits: int = 8448) -> int:
    """Link adaptation: the highest MCS whose block BLER at ``snr_db`` is <= ``bler_target`` (else the lowest)."""
    candidates = np.arange(MIN_MCS, MAX_MCS + 1)
    cbs = [segment(max(payload_bits, 1), int(c), max_cb_bits).k for c in candidates]
    # The table depends on the block size only weakly; one look-up per MCS at its own block size.
    rates = np.array([bler(int(c), cb, snr_db)[0] for c, cb in zip(candidates, cbs, strict=True)])
    ok = candidates[rates <= bler_target]
    return int(ok.max()) if ok.size else MIN_MCS


@dataclass(frozen=True)
class Segmentation:
    """How a payload is cut into code blocks.

    Attributes
    ----------
    payload_bits : int
        Information bits to carry.
    num_blocks : int
        Code blocks C.
    k : int
        Bits per block incl. the 24-bit CRC (LDPC information length).
    n : int
        Coded bits per block (a multiple of the modulation order).
    bits_per_symbol : int
        Modulation order m.
    mcs : int
        MCS index.
    """

    payload_bits: int
    num_blocks: int
    k: int
    n: int
    bits_per_symbol: int
    mcs: int

    @property
    def info_per_block(self) -> int:
        return self.k - CRC_BITS

    @property
    def code_rate(self) -> float:
        return self.k / self.n

    @property
    def coded_bits(self) -> int:
        return self.num_blocks * self.n

    @property
    def symbols(self) -> int:
        return self.coded_bits // self.bits_per_symbol


def segment(payload_bits: int, mcs: int, max_cb_bits: int = 8448) -> Segmentation:
    """38.212-style code-block segmentation of ``payload_bits`` at MCS ``mcs``."""
    if payload_bits <= 0:
        raise ValueError("nothing to segment: payload_bits must be > 0")
    m, r = mcs_params(mcs)
    # Sionna's base-graph choice follows 38.212 (BG2 for k <= 3824 at R <= 0.67, or R <= 1/4) and its BG1 refuses
    # R < 1/3 (no repetition), so low rates keep blocks at <= 3824 bits.
    kcb = min(max_cb_bits, 3824 if r < 0.4 else 8448)
    per_block = kcb - CRC_BITS
    c = -(-payload_bits // per_block)
    info = -(-payload_bits // c)
    k = max(info + CRC_BITS, 40)  # the 5G encoder needs k >= 12; keep a margin for the CRC's own overhead
    n = int(math.ceil(k / r / m)) * m
    # The encoder refuses rates > 0.95 or < 1/5 after rounding.
    while k / n > 0.95:
        n += m
    while k / n < 0.2:
        n -= m
    return Segmentation(payload_bits, c, k, n, m, int(mcs))
