"""Real-time factor of the emulator (processing time / emulated airtime) and decoder throughput, Sionna's blocks and
the fast ones side by side.

* ``emulator`` rows: one per (impl, mode, model, payload) -- ``impl="sionna"`` runs Sionna's blocks as they come
  (AWGN block, CRC, LDPC5GEncoder/Decoder, Mapper, Demapper, get_bler), ``impl="fast"`` the hand-written
  equivalents, on the same channel state (the seeded process's first request) so that both run at the same SNR.
  Wall-clock processing (median and minimum over repeats) and the process's CPU time (all threads: what an idle
  machine would take as wall time), with the error rates; coded rows carry the time per stage.
* ``decoder`` rows: Sionna's ``LDPC5GDecoder`` (flooding sum-product, 20 iterations, chunks of 8 codewords: its
  fastest CPU use; 1 torch thread, and 2 at the first Eb/N0), Sionna's rate recovery on the numba serial min-sum
  core, and the numba QC layered min-sum (1 and 2 threads) on the same code, channel and LLRs, with block error
  rates and iterations.

The machine's load average is recorded: on shared cores the wall-clock figures are only as good as the machine is
idle, and the CPU-time figures are the steadier ones.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from megbed.channel_emu.emulator import ChannelEmulator
from megbed.megwire import Frame

LATENTS = {"sd15_64x64x4_fp16": (4, 64, 64), "sdxl_128x128x4_fp16": (4, 128, 128)}


def _frame(shape: tuple[int, ...], seed: int = 0) -> Frame:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float16)
    return Frame("handoff", meta={"request_id": "bench", "channel_roles": {"tokens": "values", "map": "side"}},
                 buffers={"tokens": x, "map": np.zeros(shape[-1] * shape[-2] // 32, np.uint8)})


def _row(impl: str, mode: str, model: str, name: str, shape: tuple[int, ...], snr_db: float, repeats: int
         ) -> dict[str, Any]:
    cfg = {"mode": mode, "model": model, "snr_db": snr_db, "mcs": "auto", "impl": impl,
           "decoder": {"kind": "sionna" if impl == "sionna" else "fast"}}
    em = ChannelEmulator(cfg, seed=0)
    frame = _frame(shape)
    # One channel state for every repeat and both impls (same seed): the rows compare like with like, also under
    # block fading, where each request would otherwise see another fade (and another MCS).
    state = em.process.step()
    # Warm-up: tables, codes, numba kernels; sub-millisecond deliveries also reach their steady speed only after
    # ~100 of them (caches, predictors: 3 after one warm-up read 0.0104 for an SD-1.5 analog delivery whose steady
    # RTF is 0.0065).
    for _ in range(1 if mode == "coded" else 100):
        em.deliver(frame, state)
    wall, cpu, recs = [], [], []
    for _ in range(repeats):
        c0 = time.process_time()
        _, rec = em.deliver(frame, state)
        cpu.append(time.process_time() - c0)
        wall.append(rec.processing_s)
        recs.append(rec)
    rec = recs[-1]
    air = statistics.median(r.airtime_s for r in recs)
    p, pmin, c = statistics.median(wall), min(wall), statistics.median(cpu)
    stages: dict[str, float] = {}
    for r in recs:
        for k, v in r.extra.get("stage_s", {}).items():
            stages[k] = stages.get(k, 0.0) + v / len(recs)
    return {"kind": "emulator", "impl": impl, "mode": mode, "model": model, "payload": name,
            "payload_bits": rec.payload_bits, "mcs": rec.mcs, "repeats": repeats, "processing_s": p,
            "processing_min_s": pmin, "cpu_s": c, "airtime_s": air, "rtf": p / air, "rtf_min": pmin / air,
            "rtf_cpu": c / air, "mbit_per_s": rec.payload_bits / p / 1e6,
            "nmse": statistics.fmean(r.nmse for r in recs), "ber": statistics.fmean(r.ber for r in recs),
            "bler": statistics.fmean(r.bler for r in recs), "stage_s": stages}


def emulator_rows(impls=("sionna", "fast"), modes=("analog", "abstraction", "coded"),
                  models=("awgn", "rayleigh_block"), payloads: dict[str, tuple[int, ...]] | None = None,
                  repeats: int = 30, coded_repeats: int = 3, snr_db: float = 2.2,
                  sionna_coded_payloads: tuple[str, ...] = ("sd15_64x64x4_fp16",)) -> list[dict]:
    """RTF per impl, mode, model and payload at the paper's link (1 MHz; SNR of the 200 m edge by default).

    Sionna's coded chain takes seconds per latent: it runs once per row and only on ``sionna_coded_payloads``.
    """
    payloads = payloads or LATENTS
    rows = []
    for mode in modes:
        for model in models:
            for name, shape in payloads.items():
                for impl in impls:
                    if mode == "coded" and impl == "sionna" and name not in sionna_coded_payloads:
                        continue
                    n = repeats if mode != "coded" else (coded_repeats if impl == "fast" else 1)
                    rows.append(_row(impl, mode, model, name, shape, snr_db, n))
    return rows


def decoder_rows(ebno_db=(1.0, 1.5, 2.0), k: int = 8000, n: int = 15760, blocks: int = 33, seed: int = 0
                 ) -> list[dict]:
    """The decoders side by side on one 5G code (QPSK, rate ~1/2: the SD-1.5 latent's MCS 7 blocks), same LLRs."""
    import numba
    from sionna.phy.fec.ldpc import LDPC5GDecoder

    from megbed.channel_emu.ldpc_fast import FastLDPC5GDecoder
    from megbed.channel_emu.ldpc_nr import Ldpc5gCode
    from megbed.channel_emu.noise import NoiseSource
    from megbed.channel_emu.qam_fast import Qam

    code, qam = Ldpc5gCode(k, n, 2), Qam(2)
    sionna_dec = LDPC5GDecoder(code.sionna_encoder, num_iter=20)
    serial = FastLDPC5GDecoder(code.sionna_encoder, num_iter=20)
    rng, noise = np.random.default_rng(seed), NoiseSource(seed)
    airtime_s = blocks * n / 2 / 1e6  # QPSK at 1 Msym/s
    threads0 = numba.get_num_threads()

    def sionna(threads):
        def run(llr):
            old = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                with torch.no_grad():
                    t = torch.from_numpy(llr)
                    out = torch.cat([sionna_dec(t[i:i + 8]) for i in range(0, t.shape[0], 8)])
                return out.numpy().astype(np.uint8), None
            finally:
                torch.set_num_threads(old)
        return run

    def serial_core(llr):
        with torch.no_grad():
            return serial(torch.from_numpy(llr)).numpy().astype(np.uint8), serial.last_iterations

    def layered(threads):
        def run(llr):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            try:
                return code.decode(llr)
            finally:
                numba.set_num_threads(threads0)
        return run

    decoders = {"sionna_ldpc5g_flooding_chunk8_1thread": sionna(1), "sionna_ldpc5g_flooding_chunk8_2threads": sionna(2),
                "numba_serial_minsum_sionna_rate_recovery": serial_core,
                "numba_qc_layered_minsum_1thread": layered(1), "numba_qc_layered_minsum_2threads": layered(2)}
    warm = np.zeros((1, n), np.float32)
    for dec in decoders.values():
        dec(warm)  # JIT / build
    rows = []
    for i, e in enumerate(ebno_db):
        u = rng.integers(0, 2, (blocks, k)).astype(np.uint8)
        no = 10 ** (-(e + 10 * np.log10(2 * k / n)) / 10)
        x = qam.map(code.encode(u))
        w = noise.standard_normal(2 * x.size)
        y = (x + np.sqrt(no / 2) * (w[:x.size] + 1j * w[x.size:])).astype(np.complex64)
        llr = qam.demap(y, no).reshape(blocks, n)
        for name, dec in decoders.items():
            if name.endswith("2threads") and name.startswith("sionna") and i:
                continue  # Sionna's decoder with 2 torch threads: once is enough to show what it costs
            c0, t0 = time.process_time(), time.perf_counter()
            u_hat, iters = dec(llr)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append({"kind": "decoder", "decoder": name, "ebno_db": e, "k": k, "n": n, "blocks": blocks,
                         "decode_s": dt, "cpu_s": cpu, "mbit_per_s": blocks * k / dt / 1e6,
                         "rtf_1mhz_qpsk": dt / airtime_s, "bler": float((u_hat != u).any(axis=1).mean()),
                         "mean_iterations": float(np.mean(iters)) if iters is not None else 20.0})
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    """All rows; ``quick`` trims repeats, models and sizes (a smoke run)."""
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    if quick:
        rows = emulator_rows(models=("awgn",), payloads={"sd15_64x64x4_fp16": LATENTS["sd15_64x64x4_fp16"]},
                             repeats=3, coded_repeats=1)
        rows += decoder_rows(ebno_db=(2.0,), k=3840, n=7680, blocks=8)
    else:
        rows = emulator_rows()
        rows += decoder_rows()
    return {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_avg_start": load0,
            "load_avg_end": os.getloadavg(), "wall_s": time.perf_counter() - t0, "rows": rows}
