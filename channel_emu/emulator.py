"""The channel emulator: a frame in, the frame as the UE would receive it out, plus a :class:`DeliveryRecord`.

How the frame's parts travel (``frame.meta["channel_roles"] = {buffer: "values" | "side"}``):

* **values** buffers (float data) are the payload proper. ``analog``: sent as analog symbols
  (:mod:`megbed.channel_emu.analog`), distorted by the link's real noise, airtime from the analog symbols. ``coded``:
  their bytes go through the simulated LDPC chain at the data MCS and bit errors corrupt them (or HARQ repairs
  them). ``abstraction``: the same through the BLER tables.
* **side** buffers (and buffers a ``channel_roles`` map does not list) must arrive exactly: merge maps, timesteps,
  generator states. They travel with the frame's JSON header as one digital side transport block at the robust
  ``side_mcs`` (QPSK, rate ~1/4 by default) under HARQ with up to ``side_max_retransmissions``; their cost (coded
  bits, symbols, retransmissions, airtime) is counted in the record. In ``coded`` mode the side block is simulated
  for real (its bytes take the decoded bits; ``side_ok`` is false if it still fails after all rounds -- the header
  itself is always delivered intact, a frame cannot be parsed otherwise); in ``analog`` and ``abstraction`` modes
  its retransmissions are drawn from the BLER tables and the side data arrive exactly. The analog RMS scales
  (32 bits per values buffer) ride in the side block too.
* ``shannon`` (the paper's accounting): all buffers' bits are charged at capacity, bits / (B log2(1 + SNR)),
  and the values buffers are distorted by the ``analog`` mode's noise at that SNR; side buffers arrive exactly.
* With ``scale_to_latent`` the bandwidth is multiplied by model latent elements / reference latent elements, so
  the model's latent takes the airtime the reference (e.g. SDXL) latent would take at ``bandwidth_hz``.
* A frame **without** ``channel_roles`` (e.g. the CEG image, uint8) is all digital payload: in ``coded`` /
  ``abstraction`` modes it goes at the data MCS with the configured residual policy; in ``analog`` mode (which has
  no data MCS) it travels as side information (exact, at the side MCS).

Rate vs distortion, never mixed silently: the paper charges 16 digital bits per latent value for latency (Shannon
rate) but adds analog Gaussian noise for distortion. Here a mode gives both from one link: ``analog`` -> airtime of
analog symbols + analog noise distortion; ``coded`` -> airtime of real coded bits + distortion from real bit errors;
``abstraction`` -> the coded accounting with table-drawn block errors; ``shannon`` -> the paper's mix, named as
such (capacity airtime for the bits + analog noise distortion).

The delivered frame keeps kind, meta, buffer names, dtypes and shapes, and gets ``meta["delivery"]``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from megbed.channel_emu.analog import F16, SCALE_BITS, digital_distortion, fused_path, transmit_values
from megbed.channel_emu.coded import CodedChain
from megbed.channel_emu.config import MAX_MCS, MIN_MCS, LinkConfig, LinkConfigError
from megbed.channel_emu.digital import DigitalResult, abstract_transfer, corrupt_bytes
from megbed.channel_emu.links import SymbolLink, make_link
from megbed.channel_emu.mcs import bler_table, select_mcs
from megbed.channel_emu.noise import NoiseSource
from megbed.channel_emu.process import ChannelProcess, ChannelState
from megbed.channel_emu.record import DeliveryRecord
from megbed.megwire import Frame, bare_head

# Per-request link fields a frame may carry (``meta["link"]`` or ``meta["request"]["link"]``), as the testbed's
# ``Request.link_meta()`` spells them.
OVERRIDE_KEYS = ("link_model", "tx_mode", "distance_m", "snr_db")


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (None or already so: untouched), restoring them after."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def torch_threads_for(work_values: int, most: int | None,
                      min_values_per_thread: int = 1 << 20) -> int:
    """Torch threads for a delivery of ``work_values`` values: one per ``min_values_per_thread`` values, at least 1
    and at most ``most`` (None: the process's current setting)."""
    most = torch.get_num_threads() if most is None else int(most)
    return max(1, min(most, int(work_values) // int(min_values_per_thread)))


def _to_bits(arrays: list[np.ndarray]) -> np.ndarray:
    if not arrays:
        return np.zeros(0, np.uint8)
    raw = np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays])
    return np.unpackbits(raw)


def _from_bits(bits: np.ndarray, like: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    raw = np.packbits(bits)
    out, pos = {}, 0
    for name, arr in like:
        n = arr.nbytes
        out[name] = raw[pos:pos + n].copy().view(arr.dtype).reshape(arr.shape)
        pos += n
    return out


class ChannelEmulator:
    """Emulates the ES -> UE link for whole frames.

    Parameters
    ----------
    config : LinkConfig, mapping or None
        The link (None: the paper's link, analog over AWGN with distance-based path loss).
    seed : int, optional
        Seeds the noise and the internal channel process: identical seeds give identical deliveries.
    torch_threads : int or None
        The most torch intra-op threads a delivery may use (None: the process's setting). The threads a delivery
        gets are chosen by its size (:func:`torch_threads_for`): frames below ``MIN_VALUES_PER_THREAD`` values per
        thread run with 1 thread, explicitly, whatever the process's setting. On the 2-core box an OpenMP team of 2
        waits at every op for a descheduled thread: 2 threads made an SDXL analog delivery 0.31 -> 60 ms, a TDL-C
        SD-1.5 one 9 -> 286 ms, a TDL-C SDXL one 69 -> 637 ms (load 10), so no latent size reaches the threshold.
        The emulator's heavy kernels (numba) take their threads from ``decoder.threads``.
    """

    MIN_VALUES_PER_THREAD = 1 << 20  # values per extra torch thread before a team of 2 can pay for its barriers

    def __init__(self, config: LinkConfig | Mapping[str, Any] | None = None, seed: int | None = None,
                 torch_threads: int | None = 1) -> None:
        if config is None:
            config = LinkConfig()
        elif isinstance(config, Mapping):
            config = LinkConfig.from_dict(config)
        elif not isinstance(config, LinkConfig):
            raise LinkConfigError(f"config must be a LinkConfig or a mapping, got {type(config).__name__}")
        config.bandwidth_scale  # noqa: B018 - refuses scale_to_latent without model_latent before any delivery
        self.config = config
        self.seed = seed
        self.torch_threads = torch_threads
        self.rng = np.random.default_rng(seed)
        # Channel noise and per-symbol fading come from the fast noise source seeded from the same seed (Sionna
        # blocks get torch generators seeded from it); the abstraction's table draws come from ``rng``.
        self.noise = NoiseSource(int(self.rng.integers(2**63 - 1)))
        self.process = ChannelProcess(config, None if seed is None else seed + 1)
        self._links: dict[str, SymbolLink] = {}
        self._chains: dict[tuple, CodedChain] = {}
        self._variants: dict[tuple, LinkConfig] = {}
        self._by_id: dict[tuple[str, int], tuple[LinkConfig, Any]] = {}

    # --- parts ---------------------------------------------------------------------------------------------------

    def link(self, config: LinkConfig) -> SymbolLink:
        # Configs here are self.config or cached variants (stable objects): look up by identity first, since the
        # value key (with a dataclass repr) costs tens of microseconds per delivery.
        hit = self._by_id.get(("link", id(config)))
        if hit is not None and hit[0] is config:
            return hit[1]
        key = (config.model, config.bandwidth_hz, config.symbol_rate, repr(config.ofdm), config.process.doppler_hz,
               config.impl)
        if key not in self._links:
            self._links[key] = make_link(config)
        self._by_id[("link", id(config))] = (config, self._links[key])
        return self._links[key]

    def chain(self, config: LinkConfig) -> CodedChain:
        hit = self._by_id.get(("chain", id(config)))
        if hit is not None and hit[0] is config:
            return hit[1]
        key = (repr(config.decoder), config.max_cb_bits, config.impl)
        if key not in self._chains:
            self._chains[key] = CodedChain(config)
        self._by_id[("chain", id(config))] = (config, self._chains[key])
        return self._chains[key]

    def _variant(self, overrides: Mapping[str, Any]) -> LinkConfig:
        changes: dict[str, Any] = {}
        if "link_model" in overrides and overrides["link_model"] is not None:
            changes["model"] = overrides["link_model"]
        if "tx_mode" in overrides and overrides["tx_mode"] is not None:
            changes["mode"] = overrides["tx_mode"]
        if overrides.get("snr_db") is not None:
            changes["snr_db"] = float(overrides["snr_db"])
        elif overrides.get("distance_m") is not None:
            changes["snr_db"] = None
        key = tuple(sorted((k, repr(v)) for k, v in changes.items()))
        if key not in self._variants:
            self._variants[key] = self.config.replace(**changes) if changes else self.config
        return self._variants[key]

    def _state(self, config: LinkConfig, state: ChannelState | None, overrides: Mapping[str, Any]) -> ChannelState:
        if state is not None:
            return state
        base = self.process.step()
        proc = ChannelProcess(config) if config is not self.config else self.process
        if overrides.get("snr_db") is not None:
            return proc.state_at(None, base.fading, base.index)
        if overrides.get("distance_m") is not None:
            return proc.state_at(float(overrides["distance_m"]), base.fading, base.index)
        if proc is not self.process:
            return proc.state_at(None if math.isnan(base.distance_m) else base.distance_m, base.fading, base.index)
        return base

    def warm_up(self, modes: tuple[str, ...] = ("analog", "abstraction", "coded"),
                payload_bits: tuple[int, ...] = ()) -> dict[str, float]:
        """Pay the one-off costs before the first real delivery: the BLER table (seconds to build, then cached on
        disk), the link model, and the numba kernels of each mode (compiled once, then loaded from numba's disk
        cache); with ``payload_bits``, also the LDPC codes of the block shapes those payloads take at every MCS the
        link may pick (~0.25 s each, else paid by the first delivery at each new shape). Draws nothing from the
        emulator's own random streams, so seeded sequences are unchanged.

        Returns the seconds each part took.
        """
        took: dict[str, float] = {}
        t = time.perf_counter()
        bler_table()
        took["bler_table"] = time.perf_counter() - t
        noise, rng = NoiseSource(0), np.random.default_rng(0)
        for mode in modes:
            t = time.perf_counter()
            cfg = self._variant({"tx_mode": mode})
            lk = self.link(cfg)
            with _torch_threads(1):
                if mode in ("analog", "shannon"):
                    transmit_values({"w": np.zeros(64, np.float16)}, lk, 10.0, noise, equalizer=cfg.analog.equalizer,
                                    impl=cfg.impl)
                elif mode == "coded":
                    mcs_list = tuple(range(MIN_MCS, MAX_MCS + 1)) if cfg.mcs == "auto" else (int(cfg.mcs),)
                    self.chain(cfg).warm_up(lk, payload_bits=tuple(payload_bits), mcs_list=mcs_list)
                select_mcs(10.0, 4096, cfg.bler_target, cfg.max_cb_bits, cfg.impl)
                abstract_transfer(np.zeros(2000, np.uint8), 2000, cfg.side_mcs, lk, 0.0, rng, True, 2,
                                  cfg.max_cb_bits, impl=cfg.impl)
            took[mode] = time.perf_counter() - t
        return took

    # --- delivery ------------------------------------------------------------------------------------------------

    def deliver(self, frame: Frame, state: ChannelState | None = None, *,
                link: Mapping[str, Any] | None = None) -> tuple[Frame, DeliveryRecord]:
        """Send ``frame`` over the link.

        Parameters
        ----------
        frame : megwire.Frame
            What the ES sends.
        state : ChannelState, optional
            The channel of this delivery; None: the emulator's own process advances one step.
        link : mapping, optional
            Per-request overrides with the testbed's ``Request.link_meta()`` keys (``link_model``, ``tx_mode``,
            ``distance_m`` or ``snr_db``).

        Returns
        -------
        (megwire.Frame, DeliveryRecord)
            The frame as received (``meta["delivery"]`` added) and the record.
        """
        t0 = time.perf_counter_ns()
        overrides = dict(link) if link else {}
        cfg = self._variant(overrides) if overrides else self.config
        work = 0
        for b in frame.buffers.values():
            work += b.size if type(b) is np.ndarray else np.size(b)
        threads = torch_threads_for(work, self.torch_threads, self.MIN_VALUES_PER_THREAD)
        if threads == torch.get_num_threads() or self._torch_free(frame, cfg):
            # Nothing to switch (setting and restoring torch's threads costs ~4 us a delivery at 2 threads).
            return self._deliver(frame, state, overrides, cfg, t0)
        with _torch_threads(threads):
            return self._deliver(frame, state, overrides, cfg, t0)

    def _torch_free(self, frame: Frame, cfg: LinkConfig) -> bool:
        """Whether this delivery runs no torch op: analog or Shannon mode whose float buffers all take the fused
        fp16 path (:func:`megbed.channel_emu.analog.fused_path`); the rest of those modes is numpy and numba."""
        hit = self._by_id.get(("torch_free", id(cfg)))
        if hit is None or hit[0] is not cfg:  # the config's part, once per config (this runs per delivery)
            hit = (cfg, cfg.mode in ("analog", "shannon") and fused_path(self.link(cfg), cfg.impl))
            self._by_id[("torch_free", id(cfg))] = hit
        if not hit[1]:
            return False
        for b in frame.buffers.values():
            if type(b) is not np.ndarray:
                return False
            dt = b.dtype
            if dt.kind == "f" and dt is not F16 and dt != F16:
                return False
        return True

    def _deliver(self, frame: Frame, state: ChannelState | None, overrides: dict[str, Any], cfg: LinkConfig,
                 t0: int) -> tuple[Frame, DeliveryRecord]:
        st = self._state(cfg, state, overrides)
        lk = self.link(cfg)
        roles = frame.meta.get("channel_roles")
        roles = roles if isinstance(roles, Mapping) else None
        names = list(frame.buffers)
        arrays = {n: np.asarray(frame.buffers[n]) for n in names}
        if roles is None:
            values, data, side = [], names, []
        else:
            values = [n for n in names if roles.get(n) == "values" and arrays[n].dtype.kind == "f"]
            data = []
            side = [n for n in names if n not in values]
        head = bare_head(frame.kind, frame.meta)
        header_bits = 8 * len(head)
        rec = DeliveryRecord(mode=cfg.mode, model=cfg.model, distance_m=st.distance_m, snr_db=st.snr_db,
                             gain_db=st.gain_db, state_index=st.index, header_bits=header_bits)
        delivered: dict[str, np.ndarray] = {}
        rng = self.rng
        if cfg.mode == "shannon":
            self._shannon(cfg, lk, st, arrays, values, names, rec, delivered, header_bits)
        elif cfg.mode == "analog":
            digital = side + data  # no data MCS in analog mode: digital parts go as side information
            res = self._send_values(cfg, lk, st, arrays, values, rec, delivered)
            if res is not None:
                rec.symbols += res.symbols
                rec.airtime_s += res.airtime_s
            side_bits_n = header_bits + SCALE_BITS * len(values) + 8 * sum(arrays[n].nbytes for n in digital)
            self._side(cfg, lk, st, rng, side_bits_n, None, rec)
            delivered.update({n: arrays[n].copy() for n in digital})
            rec.payload_bits = 8 * sum(arrays[n].nbytes for n in names)
            rec.side_bits = side_bits_n
            rec.ber = 0.0
            rec.bler = 0.0 if rec.code_blocks else math.nan
        else:
            payload = values + data
            mcs = self._mcs(cfg, st, 8 * sum(arrays[n].nbytes for n in payload))
            rec.mcs = mcs
            payload_bits = 8 * sum(arrays[n].nbytes for n in payload)
            if payload_bits:
                harq = cfg.residual == "harq"
                if cfg.mode == "coded":
                    sent = _to_bits([arrays[n] for n in payload])
                    res = self.chain(cfg).transfer(sent, mcs, lk, st.snr_db, self.noise, st.fading, harq,
                                                   cfg.max_retransmissions)
                    delivered.update(_from_bits(res.bits, [(n, arrays[n]) for n in payload]))
                    errors = int(np.count_nonzero(res.bits != sent))
                else:
                    # The abstraction works on bytes and unpacks only the blocks it corrupts.
                    res = abstract_transfer(None, payload_bits, mcs, lk, st.snr_db, rng, harq,
                                            cfg.max_retransmissions, cfg.max_cb_bits, impl=cfg.impl)
                    raw = np.concatenate([np.ascontiguousarray(arrays[n]).reshape(-1).view(np.uint8)
                                          for n in payload])
                    errors = corrupt_bytes(raw, res.seg, res.failed_blocks, res.failed_snr_db, rng)
                    pos = 0
                    for n in payload:
                        nb = arrays[n].nbytes
                        delivered[n] = raw[pos:pos + nb].view(arrays[n].dtype).reshape(arrays[n].shape)
                        pos += nb
                self._account(rec, res)
                rec.code_rate = res.seg.code_rate
                rec.modulation_order = res.seg.bits_per_symbol
                rec.data_bits = payload_bits
                rec.ber = errors / payload_bits
                rec.bler = res.failures / res.attempts if res.attempts else 0.0
                rec.residual_block_errors = res.residual_blocks
                rec.block_errors = res.failures
                if values and errors == 0:
                    rec.nmse = 0.0
                elif values:
                    sq = en = 0.0
                    for n in values:
                        s, e = digital_distortion(delivered[n], arrays[n])
                        sq, en = sq + s, en + e
                    rec.nmse = sq / en if en > 0 else (0.0 if sq == 0 else math.inf)
            else:
                rec.ber, rec.bler = 0.0, 0.0
            side_bytes = [arrays[n] for n in side]
            side_n = header_bits + 8 * sum(a.nbytes for a in side_bytes)
            simulate = cfg.mode == "coded"
            side_sent = np.unpackbits(np.frombuffer(head, np.uint8)) if simulate else None
            if simulate and side:
                side_sent = np.concatenate([side_sent, _to_bits(side_bytes)])
            got = self._side(cfg, lk, st, rng, side_n, side_sent, rec)
            if side and got is not None:
                delivered.update(_from_bits(got[header_bits:], [(n, arrays[n]) for n in side]))
            else:
                delivered.update({n: arrays[n].copy() for n in side})
            rec.payload_bits = 8 * sum(arrays[n].nbytes for n in names)
            rec.side_bits = side_n
        # Bandwidth scaling (scale_to_latent) stretches the bandwidth, i.e. divides every mode's airtime.
        rec.bandwidth_scale = cfg.bandwidth_scale
        rec.bandwidth_hz = cfg.effective_bandwidth_hz
        if cfg.mode != "shannon" and rec.bandwidth_scale != 1.0:
            rec.airtime_s /= rec.bandwidth_scale
        meta = dict(frame.meta)
        rec.processing_s = (time.perf_counter_ns() - t0) / 1e9
        meta["delivery"] = rec.to_dict()
        out = Frame(kind=frame.kind, meta=meta, buffers={n: delivered[n] for n in names}, version=frame.version)
        return out, rec

    # --- helpers -------------------------------------------------------------------------------------------------

    def _send_values(self, cfg: LinkConfig, lk: SymbolLink, st: ChannelState, arrays: dict[str, np.ndarray],
                     values: list[str], rec: DeliveryRecord, delivered: dict[str, np.ndarray]):
        """Send the ``values`` buffers over the analog path (into ``delivered``, distorted; NMSE and count into ``rec``).

        Returns the :func:`megbed.channel_emu.analog.transmit_values` result, or None when there are no values.
        """
        if not values:
            return None
        res = transmit_values({n: arrays[n] for n in values}, lk, st.snr_db, self.noise, st.fading,
                              cfg.analog.equalizer, cfg.impl)
        delivered.update(res.values)
        rec.nmse = res.nmse
        rec.analog_values = res.num_values
        return res

    def _shannon(self, cfg: LinkConfig, lk: SymbolLink, st: ChannelState, arrays: dict[str, np.ndarray],
                 values: list[str], names: list[str], rec: DeliveryRecord, delivered: dict[str, np.ndarray],
                 header_bits: int) -> None:
        """The paper's accounting: every buffer's bits at capacity, values distorted by the analog mode's noise.

        Airtime = payload bits / (B_eff log2(1 + SNR)), the bits being those of the frame's buffers (the handoff's
        bytes: values at their wire dtype plus side buffers such as merge maps), B_eff the scaled bandwidth. The
        JSON header is request bookkeeping a deployed link would not carry per latent; it is recorded in
        ``header_bits`` but not charged (the paper charges values and index side information only). Distortion:
        the ``values`` buffers go through :func:`megbed.channel_emu.analog.transmit_values` at the delivery's SNR (the
        ``analog`` mode's own noise path); everything else arrives exactly.
        """
        self._send_values(cfg, lk, st, arrays, values, rec, delivered)
        delivered.update({n: arrays[n].copy() for n in names if n not in values})
        bits = 8 * sum(arrays[n].nbytes for n in names)
        spectral_eff = math.log2(1.0 + 10.0 ** (st.snr_db / 10.0))  # bit/s/Hz at capacity
        rec.airtime_s = bits / (cfg.effective_bandwidth_hz * spectral_eff) if bits else 0.0
        rec.symbols = math.ceil(bits / spectral_eff) if bits else 0  # channel uses at the physical bandwidth
        rec.payload_bits = bits
        rec.data_bits = bits
        rec.side_bits = 8 * sum(arrays[n].nbytes for n in names if n not in values)
        rec.extra["spectral_efficiency_bps_hz"] = spectral_eff
        rec.extra["header_bits_uncharged"] = header_bits
        rec.ber = 0.0
        rec.bler = 0.0

    def _mcs(self, cfg: LinkConfig, st: ChannelState, payload_bits: int) -> int:
        if cfg.mcs == "auto":
            return select_mcs(st.snr_db, max(payload_bits, 1), cfg.bler_target, cfg.max_cb_bits, cfg.impl)
        return int(cfg.mcs)

    @staticmethod
    def _account(rec: DeliveryRecord, res: DigitalResult) -> None:
        if res.timings_s:  # coded chain: where the processing time went, per stage (data and side together)
            stages = rec.extra.setdefault("stage_s", {})
            for k, v in res.timings_s.items():
                stages[k] = stages.get(k, 0.0) + v
        rec.coded_bits += res.coded_bits
        rec.symbols += res.channel_uses
        rec.airtime_s += res.airtime_s
        rec.retransmissions += res.retransmissions
        rec.code_blocks += res.seg.num_blocks

    def _side(self, cfg, lk, st, rng, n_bits: int, bits: np.ndarray | None, rec: DeliveryRecord):
        """The side transport block (header + side buffers [+ analog scales]); returns the delivered bits."""
        if n_bits <= 0:
            return None
        if cfg.mode == "coded" and bits is not None:
            res = self.chain(cfg).transfer(bits, cfg.side_mcs, lk, st.snr_db, self.noise, st.fading, True,
                                           cfg.side_max_retransmissions)
        else:
            res = abstract_transfer(None, n_bits, cfg.side_mcs, lk, st.snr_db, rng, True,
                                    cfg.side_max_retransmissions, cfg.max_cb_bits, corrupt=False, impl=cfg.impl)
        self._account(rec, res)
        rec.side_ok = res.residual_blocks == 0
        rec.extra["side_transmissions"] = res.transmissions
        if bits is None:
            return None
        return res.bits if cfg.mode == "coded" else bits  # abstracted side information arrives exactly
