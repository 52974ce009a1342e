"""Quick physical-layer checks (``megbed channel simulate``): BER / BLER / NMSE at an Eb/N0 over one link model.

* ``uncoded``: random bits -> Sionna ``Mapper`` (Gray QAM) -> link -> Sionna ``Demapper`` (APP) -> hard decisions.
* ``coded``: the coded chain of :mod:`megbed.channel_emu.digital` at the MCS of the modulation with a code rate near 1/2
  (or ``mcs``), one transmission.
* ``analog``: ``bits / 16`` float16 values (what those bits carry digitally) sent as analog symbols.

Eb/N0 is per information bit: Es/N0 = Eb/N0 + 10 log10(bits per symbol x code rate); for analog, one "bit" is a
sixteenth of a value, so Es/N0 = Eb/N0 + 10 log10(32) (two values per symbol).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from megbed.channel_emu.analog import transmit_values
from megbed.channel_emu.coded import CodedChain
from megbed.channel_emu.config import LinkConfig
from megbed.channel_emu.digital import qam_ber
from megbed.channel_emu.links import make_link
from megbed.channel_emu.mcs import mcs_params
from megbed.channel_emu.noise import NoiseSource

MODULATIONS = {"bpsk": 1, "qpsk": 2, "qam16": 4, "qam64": 6}
HALF_RATE_MCS = {2: 7, 4: 13, 6: 19}  # PDSCH table 1 entries with a code rate near 1/2


def theory_ber(modulation: str, ebno_db: float, model: str = "awgn") -> float:
    """Closed-form uncoded BER (AWGN: Gray QAM; rayleigh_symbol: BPSK/QPSK average over Rayleigh)."""
    m = MODULATIONS[modulation]
    if model == "awgn":
        return float(qam_ber(m, ebno_db + 10 * math.log10(m)))
    if model == "rayleigh_symbol" and m <= 2:
        g = 10 ** (ebno_db / 10)
        return float(0.5 * (1 - math.sqrt(g / (1 + g))))
    return math.nan


def simulate(mode: str, modulation: str = "qpsk", ebno_db: float = 5.0, bits: int = 100_000,
             model: str = "awgn", seed: int = 0, mcs: int | None = None) -> dict[str, Any]:
    """Run one check; returns a JSON-friendly dict with ``ber``, ``bler``, ``nmse`` and the theory where known."""
    if modulation not in MODULATIONS:
        raise ValueError(f"modulation {modulation!r} is not one of {tuple(MODULATIONS)}")
    if bits < 16:
        raise ValueError("bits must be >= 16")
    rng = np.random.default_rng(seed)
    noise = NoiseSource(int(rng.integers(2**63 - 1)))
    cfg = LinkConfig(model=model, snr_db=0.0, mode="coded" if mode == "coded" else "analog")
    link = make_link(cfg)
    m = MODULATIONS[modulation]
    out: dict[str, Any] = {"mode": mode, "modulation": modulation, "ebno_db": ebno_db, "model": model,
                           "bits": bits, "seed": seed, "ber": math.nan, "bler": math.nan, "nmse": math.nan}
    if mode == "uncoded":
        from sionna.phy.mapping import Demapper, Mapper

        n = bits - bits % m
        b = rng.integers(0, 2, n, dtype=np.uint8)
        constellation = "pam" if m == 1 else "qam"
        mapper, demapper = Mapper(constellation, m), Demapper("app", constellation, m)
        snr_db = ebno_db + 10 * math.log10(m)
        with torch.no_grad():
            x = mapper(torch.from_numpy(b.astype(np.float32)).reshape(1, -1)).reshape(-1)
            res = link.transmit(x, snr_db, noise)
            llr = demapper(res.s_hat.reshape(1, -1), res.no_eff_per_symbol().reshape(1, -1))
        hard = (llr.reshape(-1).numpy() > 0).astype(np.uint8)
        out.update(ber=float(np.mean(hard != b)), snr_db=snr_db, theory_ber=theory_ber(modulation, ebno_db, model))
    elif mode == "coded":
        if m == 1:
            raise ValueError("coded mode uses the 5G MCS table: qpsk, qam16 or qam64")
        idx = HALF_RATE_MCS[m] if mcs is None else int(mcs)
        bps, rate = mcs_params(idx)
        if bps != m:
            raise ValueError(f"MCS {idx} is {2 ** bps}-QAM, not {modulation}")
        snr_db = ebno_db + 10 * math.log10(m * rate)
        b = rng.integers(0, 2, bits, dtype=np.uint8)
        res = CodedChain(cfg).transfer(b, idx, link, snr_db, noise, 1 + 0j, harq=False, max_retransmissions=0)
        out.update(ber=float(np.mean(res.bits != b)), bler=res.failures / res.attempts, mcs=idx,
                   code_rate=res.seg.code_rate, blocks=res.seg.num_blocks, snr_db=snr_db)
    elif mode == "analog":
        n = max(2, bits // 16)
        x = rng.standard_normal(n).astype(np.float16)
        snr_db = ebno_db + 10 * math.log10(32)
        res = transmit_values({"x": x}, link, snr_db, noise, equalizer="zf")
        out.update(nmse=res.nmse, snr_db=snr_db, theory_nmse=10 ** (-snr_db / 10))
    else:
        raise ValueError(f"mode {mode!r} is not one of ('uncoded', 'analog', 'coded')")
    return out
