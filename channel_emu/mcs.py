"""MCS, segmentation and BLER look-ups shared by the coded and abstraction modes (5G NR PDSCH, MCS table 1).

* MCS index -> (bits per symbol, target code rate): Sionna's ``decode_mcs_index`` (38.214 Table 5.1.3.1-1).
* Segmentation of a payload into LDPC code blocks as in 38.212: every block carries a 24-bit CRC; the maximum block
  is 8448 bits (base graph 1), or 3824 bits when the code rate is below 0.4 (base graph 2); blocks are equal-sized,
  the last padded with zeros. Each block is rate-matched to n = K / R bits, rounded up to a whole symbol.
* BLER for a code block at an effective SINR: Sionna SYS ``PHYAbstraction`` tables (shipped with the package,
  simulated for block sizes up to 2000 bits; larger blocks use the 2000-bit curve -- slightly pessimistic). The
  interpolated table is read out once into numpy (:class:`BlerTable`, cached on disk under ``$MEGBED_CACHE_DIR`` or
  ``~/.cache/megbed`` because building it takes seconds) and looked up exactly as ``get_bler`` does, without the
  per-call torch overhead; ``impl="sionna"`` calls ``get_bler`` itself.
* Effective SINR of a block under fading: Sionna SYS ``EESM``.
* Link adaptation: the highest MCS whose BLER at the expected SNR is at most the target (what Sionna's
  ``InnerLoopLinkAdaptation`` does, evaluated for our code-block size).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numba import njit

from megbed.channel_emu.config import MAX_MCS, MIN_MCS

CRC_BITS = 24
MCS_TABLE = 1
MCS_CATEGORY = 1  # PDSCH: the ES -> UE downlink
_PA_LOCK = threading.RLock()


@functools.cache
def mcs_params(mcs: int) -> tuple[int, float]:
    """(bits per symbol, target code rate) of an MCS index of PDSCH table 1."""
    from sionna.phy.nr.utils import decode_mcs_index

    if not MIN_MCS <= int(mcs) <= MAX_MCS:
        raise ValueError(f"MCS {mcs} outside [{MIN_MCS}, {MAX_MCS}]")
    m, r = decode_mcs_index(int(mcs), MCS_TABLE, is_pusch=False)
    return int(m), float(r)


# The grids are coarser than Sionna's defaults (0.25 dB, 200-bit block sizes up to the simulated 2024 bits) to keep
# start-up short; the tables themselves are Sionna's.
SNR_GRID_DB = (-10.0, 30.01, 0.25)
CBS_GRID = (24, 2024, 200)


@functools.cache
def phy_abstraction():
    """One shared Sionna ``PHYAbstraction`` (building its interpolated tables takes seconds: done once per process)."""
    from sionna.sys import PHYAbstraction

    class _BlerOnly(PHYAbstraction):
        def _interpolate_snr(self) -> None:
            # The BLER -> SNR inversion (Sionna's own link adaptation) costs most of the start-up (scipy griddata
            # per table) and is never used here: link adaptation scans the BLER table directly.
            return None

    with _PA_LOCK, torch.no_grad():
        return _BlerOnly(snr_db_interp_min_max_delta=SNR_GRID_DB, cbs_interp_min_max_delta=CBS_GRID, device="cpu")


def cache_dir() -> Path:
    """Where start-up products are kept between processes: ``$MEGBED_CACHE_DIR`` or ``~/.cache/megbed``."""
    return Path(os.environ.get("MEGBED_CACHE_DIR") or Path.home() / ".cache" / "megbed")


class BlerTable:
    """Sionna's interpolated PDSCH BLER table (MCS table 1) as a numpy array, looked up as
    ``PHYAbstraction.get_bler`` does: nearest grid point in SNR (dB) and code-block size.

    Parameters
    ----------
    table : numpy.ndarray, float32 [mcs, cbs, snr]
        BLER per MCS index, code-block-size grid point and SNR grid point (non-finite: no table).
    """

    def __init__(self, table: np.ndarray) -> None:
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.n_cbs, self.n_snr = self.table.shape[1:]

    def snr_index(self, snr_db) -> np.ndarray:
        """Nearest SNR grid index (round half to even, as ``get_bler``; it rounds in float32, so the two may pick
        different neighbours within ~1e-6 dB of a midpoint between grid points)."""
        idx = np.rint((np.asarray(snr_db, dtype=np.float64) - SNR_GRID_DB[0]) / SNR_GRID_DB[2])
        return np.clip(idx, 0, self.n_snr - 1).astype(np.intp)

    def cbs_index(self, cb_bits) -> np.ndarray:
        idx = np.rint((np.asarray(cb_bits, dtype=np.float64) - CBS_GRID[0]) / CBS_GRID[2])
        return np.clip(idx, 0, self.n_cbs - 1).astype(np.intp)

    def lookup(self, mcs, cb_bits, snr_db) -> np.ndarray:
        """BLER for broadcast MCS indices, block sizes and SNRs (dB); outside the tables -> 1, clipped to [0, 1]."""
        b = self.table[np.asarray(mcs, dtype=np.intp), self.cbs_index(cb_bits), self.snr_index(snr_db)]
        b = np.where(np.isfinite(b), b, np.float32(1.0)).astype(np.float64)
        return np.atleast_1d(np.clip(b, 0.0, 1.0))

    def scalar(self, mcs: int, cb_bits: int, snr_db: float) -> float:
        """:meth:`lookup` for one (MCS, block size, SNR) in plain Python (the per-round call of the side block)."""
        i = min(max(round((snr_db - SNR_GRID_DB[0]) / SNR_GRID_DB[2]), 0), self.n_snr - 1)
        j = min(max(round((cb_bits - CBS_GRID[0]) / CBS_GRID[2]), 0), self.n_cbs - 1)
        b = float(self.table[mcs, j, i])
        return min(max(b, 0.0), 1.0) if math.isfinite(b) else 1.0

    # --- building ------------------------------------------------------------------------------------------------

    @classmethod
    def from_sionna(cls) -> BlerTable:
        pa = phy_abstraction()
        return cls(pa._bler_table_interp[MCS_CATEGORY, MCS_TABLE - 1].numpy())

    @staticmethod
    def cache_path() -> Path:
        import sionna

        key = f"{sionna.__version__}|{SNR_GRID_DB}|{CBS_GRID}|{MCS_CATEGORY}|{MCS_TABLE}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return cache_dir() / "channel_emu" / f"bler_table_{digest}.npy"

    @classmethod
    def load(cls, path: Path | None = None) -> BlerTable:
        """From the disk cache when it is there and sound, else built from Sionna (seconds) and cached."""
        path = path or cls.cache_path()
        try:
            table = np.load(path, allow_pickle=False)
            if table.ndim == 3 and table.dtype == np.float32 and table.shape[0] > MAX_MCS:
                return cls(table)
        except (OSError, ValueError):
            pass  # missing or damaged: rebuilt, never trusted
        built = cls.from_sionna()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, built.table, allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home only costs the rebuild next time
        return built


@functools.cache
def bler_table() -> BlerTable:
    """The process-wide :class:`BlerTable` (disk-cached across processes)."""
    with _PA_LOCK:
        return BlerTable.load()


@functools.lru_cache(maxsize=4096)
def _bler_scalar(mcs: int, cb_bits: int, snr_centi_db: int) -> float:
    return float(_bler_sionna(mcs, cb_bits, snr_centi_db / 100.0)[0])


def bler(mcs: int | np.ndarray, cb_bits: int, snr_db: float | np.ndarray, impl: str = "fast") -> np.ndarray:
    """Code-block error rate at effective SNR(s) ``snr_db`` (dB); MCS and SNR broadcast. Outside the table -> 1.

    ``impl="fast"`` reads :func:`bler_table` with numpy; ``"sionna"`` calls ``PHYAbstraction.get_bler`` (a single
    (MCS, SNR) pair through a cache on a 0.01 dB grid). Both read the same table at the same grid point.
    """
    if impl == "fast":
        return bler_table().lookup(mcs, cb_bits, snr_db)
    if np.ndim(mcs) == 0 and np.size(snr_db) == 1:
        snr = float(np.asarray(snr_db).reshape(-1)[0])
        return np.array([_bler_scalar(int(mcs), int(cb_bits), int(round(snr * 100)))])
    return _bler_sionna(mcs, cb_bits, snr_db)


def _bler_sionna(mcs: int | np.ndarray, cb_bits: int, snr_db: float | np.ndarray) -> np.ndarray:
    snr, mcs_arr = np.broadcast_arrays(np.atleast_1d(np.asarray(snr_db, dtype=np.float64)),
                                       np.atleast_1d(np.asarray(mcs, dtype=np.int64)))
    pa = phy_abstraction()
    with torch.no_grad():
        b = pa.get_bler(torch.as_tensor(np.ascontiguousarray(mcs_arr), dtype=torch.int32), MCS_TABLE, MCS_CATEGORY,
                        int(cb_bits), torch.as_tensor(10.0 ** (np.ascontiguousarray(snr) / 10.0),
                                                      dtype=torch.float32))
    out = b.numpy().astype(np.float64)
    out[~np.isfinite(out)] = 1.0
    # Below the tables' SNR grid the link is hopeless; above it, clean.
    return np.clip(out, 0.0, 1.0)


@functools.cache
def _eesm():
    from sionna.sys import EESM

    return EESM(device="cpu")


@functools.cache
def _eesm_params() -> tuple[np.ndarray, float, float]:
    """Sionna's EESM beta table (float32 [tables, MCS]) and its effective-SINR clamp (linear)."""
    e = _eesm()
    return e.beta_tensor.cpu().numpy().astype(np.float32), float(e._sinr_eff_min), float(e._sinr_eff_max)


@functools.lru_cache(maxsize=64)  # per side block of every delivery over a fading link
def eesm_beta(mcs: int) -> tuple[float, float, float]:
    """Sionna's EESM beta of ``mcs`` (the float32 table value, as a float) and the effective-SINR clamp (lo, hi),
    linear."""
    betas, lo, hi = _eesm_params()
    return float(betas[MCS_TABLE - 1, max(int(mcs), 0)]), lo, hi


@njit(cache=True)  # also called inside the side-block kernel (digital._exp_fading_round)
def eesm_db(exp_sum: float, used: int, beta: float, lo: float, hi: float) -> float:
    """One block's EESM effective SNR (dB) from sum_i exp(-sinr_i / beta) over its ``used`` symbols with
    sinr_i > 0: -beta log(sum / used) clamped to [lo, hi]; -300 dB when no symbol is used."""
    if used <= 0:
        return -300.0
    eff = hi if exp_sum <= 0.0 else min(max(-beta * math.log(exp_sum / used), lo), hi)
    return 10.0 * math.log10(max(eff, 1e-30))


def effective_snr_db(sinr_linear: np.ndarray, mcs: int) -> np.ndarray:
    """EESM effective SNR (dB) of each row of per-symbol SINRs ``[blocks, symbols]`` (linear).

    Sionna's ``EESM`` computation (its beta table, float32, SINRs <= 0 left out, the same clamp) in numpy: the
    block's validation and tensor plumbing cost ~1.3 ms per call, more than the rest of an analog delivery.
    """
    sinr = np.ascontiguousarray(sinr_linear, dtype=np.float32)
    betas, lo, hi = _eesm_params()
    beta = np.float32(betas[MCS_TABLE - 1, max(int(mcs), 0)])
    if sinr.ndim == 2 and sinr.size and sinr.min() > 0:
        # Every resource used (fading gains are > 0): one temporary, exp in place; the masked form below costs
        # ~5x more on the side block of every analog delivery over a fast-fading link.
        z = np.divide(sinr, -beta)
        with np.errstate(under="ignore"):
            s = np.exp(z, out=z).sum(axis=1, dtype=np.float32)
        # A handful of blocks: the per-block tail in plain Python (numpy's per-call cost would dominate).
        b, cols = float(beta), sinr.shape[1]
        return np.array([eesm_db(si, cols, b, lo, hi) for si in s.tolist()])
    else:
        used = sinr > 0
        n = np.count_nonzero(used, axis=1)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            s = np.where(used, np.exp(-sinr / beta), np.float32(0.0)).sum(axis=1, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        eff = np.clip(-beta * np.log(s / n.astype(np.float32)), np.float32(lo), np.float32(hi))
    eff = np.where(n > 0, eff, np.float32(0.0))
    return 10.0 * np.log10(np.maximum(eff.astype(np.float64), 1e-30))


def effective_snr_db_sionna(sinr_linear: np.ndarray, mcs: int) -> np.ndarray:
    """:func:`effective_snr_db` through Sionna's ``EESM`` block (the reference it is tested against)."""
    sinr = torch.as_tensor(np.ascontiguousarray(sinr_linear, dtype=np.float32))[:, :, None, None, None]
    with torch.no_grad():
        eff = _eesm()(sinr, torch.full((sinr.shape[0], 1), int(mcs), dtype=torch.int32), MCS_TABLE,
                      torch.full((sinr.shape[0], 1), MCS_CATEGORY, dtype=torch.int32))
    return 10.0 * np.log10(np.maximum(eff.numpy().reshape(-1).astype(np.float64), 1e-30))


def select_mcs(snr_db: float, payload_bits: int, bler_target: float, max_cb_bits: int = 8448,
               impl: str = "fast") -> int:
    """Link adaptation: the highest MCS whose block BLER at ``snr_db`` is <= ``bler_target`` (else the lowest)."""
    candidates, cbs = _candidate_blocks(max(int(payload_bits), 1), int(max_cb_bits))
    # The table depends on the block size only weakly; one look-up per MCS at its own block size.
    if impl == "fast":
        rates = bler_table().lookup(candidates, cbs, snr_db)
    else:
        rates = np.array([bler(int(c), int(cb), snr_db, impl)[0] for c, cb in zip(candidates, cbs, strict=True)])
    ok = candidates[rates <= bler_target]
    return int(ok.max()) if ok.size else MIN_MCS


@functools.lru_cache(maxsize=256)
def _candidate_blocks(payload_bits: int, max_cb_bits: int) -> tuple[np.ndarray, np.ndarray]:
    candidates = np.arange(MIN_MCS, MAX_MCS + 1)
    return candidates, np.array([segment(payload_bits, int(c), max_cb_bits).k for c in candidates])


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


@functools.lru_cache(maxsize=4096)
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
