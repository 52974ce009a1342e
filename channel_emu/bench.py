"""Real-time factor of the emulator (processing time / emulated airtime) and decoder throughput.

Rows: one per (mode, model, payload), plus the LDPC decoder side by side -- Sionna's ``LDPC5GDecoder`` used
straightforwardly (flooding sum-product, 20 iterations, chunks of 8 codewords) against :mod:`channel_emu.ldpc_fast`
(numba serial min-sum with early stopping) on the same 5G code, channel and LLRs, with their block error rates.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from channel_emu.emulator import ChannelEmulator
from megwire import Frame

LATENTS = {"sd15_64x64x4_fp16": (4, 64, 64), "sdxl_128x128x4_fp16": (4, 128, 128)}


def _frame(shape: tuple[int, ...], seed: int = 0) -> Frame:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float16)
    return Frame("handoff", meta={"request_id": "bench", "channel_roles": {"tokens": "values", "map": "side"}},
                 buffers={"tokens": x, "map": np.zeros(shape[-1] * shape[-2] // 32, np.uint8)})


def emulator_rows(modes=("analog", "abstraction", "coded"), models=("awgn", "rayleigh_block"),
                  payloads: dict[str, tuple[int, ...]] | None = None, repeats: int = 3,
                  snr_db: float = 2.2, coded_payloads: tuple[str, ...] = ("sd15_64x64x4_fp16",)) -> list[dict]:
    """RTF per mode, model and payload at the paper's link (1 MHz; SNR of the 200 m edge by default)."""
    payloads = payloads or LATENTS
    rows = []
    for mode in modes:
        for model in models:
            for name, shape in payloads.items():
                if mode == "coded" and name not in coded_payloads:
                    continue
                em = ChannelEmulator({"mode": mode, "model": model, "snr_db": snr_db, "mcs": "auto"}, seed=0)
                frame = _frame(shape)
                em.deliver(frame)  # warm-up: tables, codecs, JIT
                proc, air, bits = [], [], 0
                for _ in range(repeats if mode != "coded" else 1):
                    _, rec = em.deliver(frame)
                    proc.append(rec.processing_s)
                    air.append(rec.airtime_s)
                    bits = rec.payload_bits
                p, a = float(np.median(proc)), float(np.median(air))
                rows.append({"kind": "emulator", "mode": mode, "model": model, "payload": name,
                             "payload_bits": bits, "mcs": rec.mcs, "processing_s": p, "airtime_s": a,
                             "rtf": p / a if a > 0 else float("nan"), "mbit_per_s": bits / p / 1e6,
                             "nmse": rec.nmse, "bler": rec.bler})
    return rows


def decoder_rows(ebno_db=(1.0, 2.0), k: int = 3840, n: int = 7680, blocks: int = 32) -> list[dict]:
    """Sionna's straightforward decoder vs the fast core, same code/LLRs (QPSK, rate 1/2, AWGN)."""
    from sionna.phy.channel import AWGN
    from sionna.phy.fec.ldpc import LDPC5GDecoder, LDPC5GEncoder
    from sionna.phy.mapping import Demapper, Mapper
    from sionna.phy.utils import ebnodb2no

    from channel_emu.ldpc_fast import FastLDPC5GDecoder

    torch.manual_seed(0)
    enc = LDPC5GEncoder(k, n, num_bits_per_symbol=2)
    decoders = {"sionna_ldpc5g_flooding_chunk8": LDPC5GDecoder(enc, num_iter=20),
                "fast_numba_serial_minsum": FastLDPC5GDecoder(enc, num_iter=20)}
    mapper, demapper, awgn = Mapper("qam", 2), Demapper("app", "qam", 2), AWGN()
    airtime_s = blocks * n / 2 / 1e6  # QPSK at 1 Msym/s
    rows = []
    with torch.no_grad():
        decoders["fast_numba_serial_minsum"](torch.zeros(1, n))  # JIT warm-up
        for e in ebno_db:
            u = torch.randint(0, 2, (blocks, k)).float()
            no = ebnodb2no(e, 2, k / n)
            llr = demapper(awgn(mapper(enc(u)), no), no)
            for name, dec in decoders.items():
                t = time.perf_counter()
                if name.startswith("sionna"):
                    u_hat = torch.cat([dec(llr[i:i + 8]) for i in range(0, blocks, 8)])
                else:
                    u_hat = dec(llr)
                dt = time.perf_counter() - t
                rows.append({"kind": "decoder", "decoder": name, "ebno_db": e, "k": k, "n": n, "blocks": blocks,
                             "decode_s": dt, "mbit_per_s": blocks * k / dt / 1e6, "rtf_1mhz_qpsk": dt / airtime_s,
                             "bler": float((u_hat != u).any(dim=1).float().mean())})
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    """All rows; ``quick`` trims repeats and sizes (for a smoke run)."""
    import os

    rows = emulator_rows(repeats=1 if quick else 3, models=("awgn",) if quick else ("awgn", "rayleigh_block"))
    rows += decoder_rows(blocks=8 if quick else 32, ebno_db=(2.0,) if quick else (1.0, 1.5, 2.0))
    return {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg(), "rows": rows}
