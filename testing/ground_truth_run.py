"""A synthetic run directory with known ground truth, for tests, demos and the headless-browser check.

Nothing here is measured. Costs follow closed forms so the analysis can be checked against them:

* compute stage latency ``= a_node · TFLOP + b_node`` (FLOPs counted from the model folder's configs with
  :mod:`megbed.testbed.ldm.flops`; without a model folder, ``a_node · steps + b_node``) with 3% multiplicative noise;
* link airtime ``= payload bits / (B · log2(1 + SNR))`` with the paper's path loss (B = 1 MHz, P = 30 dBm,
  N0 = −94 dBm, PL(dB) = 35.3 + 37.6 log10 d: :mod:`megbed.channel_emu.pathloss`), the merged SDXL latent's bytes
  and each scheme's stages as megbed defines them (as in :mod:`megbed.testing.parametric_campaign`);
* energy ``= power x latency`` per rail, idle power subtracted for the net figure;
* quality (PSNR) rising with N, falling with β and, for MEG's analog link, with low SNR.

It writes the same layout a campaign writes, through the measurement layer's writers (``DatasetWriter``,
``write_trace``, ``build_manifest``): ``manifest.json``, ``dataset/part-*.parquet``, ``traces/``, policy training
logs, optionally ``images/``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from megbed.channel_emu.pathloss import snr_db_at
from megbed.measurements import schema
from megbed.measurements.dataset import DatasetWriter, write_trace
from megbed.measurements.manifest import build_manifest, write_manifest
from megbed.megwire.vocab import SCHEMES
from megbed.testing.parametric_campaign import LATENT_SHAPE, PAPER_LINK, scheme_path, shannon_rate_bps

# One ES U-Net step costs what an SDXL step costs on a desktop GPU (s); the UE is UE_SLOWDOWN times slower, and
# every compute stage has a fixed overhead (s). Other stages cost in proportion to their FLOPs.
STEP_S_ES = 0.06
UE_SLOWDOWN = 2.4
STAGE_OVERHEAD_S = {"es": 0.004, "ue": 0.015}
# Rail powers (mW): active, idle. The UE's vdd_in is the board input; the other two are sub-rails of it.
RAILS = {
    "es": {"gpu": (230_000.0, 28_000.0), "cpu_pkg": (45_000.0, 12_000.0)},
    "ue": {"vdd_in": (14_500.0, 4_800.0), "vdd_cpu_gpu_cv": (8_200.0, 900.0), "vdd_soc": (2_600.0, 1_400.0)},
}
TX_POWER_MW = 1000.0  # the paper's 30 dBm
CEG_PAYLOAD_BITS = int(math.prod(LATENT_SHAPE) * 16 * 1.4)  # the compressed image: 1.4 x the latent's fp16 bits
PROBES = {"es": "nvml+rapl", "ue": "jetson_ina3221"}
TOTAL_RAILS = {"es": ("gpu", "cpu_pkg"), "ue": ("vdd_in",)}
SAMPLE_PERIOD_NS = {"es": 10_000_000, "ue": 20_000_000}
CLOCK = {"es": (1_250_000.0, 12_000.0), "ue": (-35_400_000.0, -25_000.0)}  # offset (ns), drift (ns/s: 12 ppm, -25 ppm)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate.

    Attributes
    ----------
    n_steps, merge_ratios : tuple
        Grid of N (all schemes) and β (MEG only).
    schemes : tuple of str
    repetitions : int
        Requests per grid point.
    distances_m : tuple of float
        ES-UE distances (one link condition each).
    decoders : tuple of str
        UE decoders (``base``, ``distilled``); each is a grid axis for MEG.
    seed : int
    traces, training_logs, images, manifest : bool
        Which optional parts to write.
    model_dir : bool
        Write a tiny diffusers config folder under ``RUN_DIR/models/`` and count FLOPs from it.
    schema_version : str
        Recorded in the manifest (tests write a wrong one on purpose).
    height_px : int
        Image side (px).
    """

    n_steps: tuple[int, ...] = (4, 8, 12)
    merge_ratios: tuple[float, ...] = (0.0, 0.25, 0.5)
    schemes: tuple[str, ...] = SCHEMES
    repetitions: int = 3
    distances_m: tuple[float, ...] = (200.0, 300.0)
    decoders: tuple[str, ...] = ("base",)
    seed: int = 0
    traces: bool = True
    training_logs: bool = True
    images: bool = False
    manifest: bool = True
    model_dir: bool = True
    schema_version: str = schema.SCHEMA_VERSION
    height_px: int = 64


TINY_UNET = {
    "_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 4, "out_channels": 4,
    "block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 32, "layers_per_block": 1,
    "attention_head_dim": 8, "norm_num_groups": 32,
}
TINY_VAE = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "block_out_channels": [32, 32, 64, 64], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 1, "norm_num_groups": 32, "sample_size": 64,
}
TINY_TEXT = {
    "architectures": ["CLIPTextModel"], "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
    "num_hidden_layers": 2, "vocab_size": 1000, "max_position_embeddings": 77, "projection_dim": 32,
    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
}


def write_tiny_model(folder: Path) -> Path:
    """A diffusers folder with configs only (no weights): enough to count FLOPs on the meta device."""
    for sub, conf in (("unet", TINY_UNET), ("vae", TINY_VAE), ("text_encoder", TINY_TEXT)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / "config.json").write_text(json.dumps(conf, indent=1), encoding="utf-8")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}), encoding="utf-8")
    return folder


def _psnr(scheme: str, n: int, beta: float, snr_db: float, decoder: str, rng: np.random.Generator) -> float:
    base = 17.0 + 6.0 * math.log2(n / 4.0) - (0.4 if decoder == "base" else 0.0)
    if scheme == "meg":
        base -= 9.0 * beta**2 + 0.45 * max(0.0, 2.0 - snr_db) * (0.5 if decoder == "distilled" else 1.0)
    return float(base + rng.normal(0, 0.35))


class _Builder:
    def __init__(self, spec: SyntheticSpec, run_dir: Path) -> None:
        self.spec = spec
        self.run = run_dir
        self.rng = np.random.default_rng(spec.seed)
        self.rows: list[dict] = []
        self.t_ns = 1_000_000_000
        self.t0_ns = self.t_ns
        self.activity: list[tuple[str, int, int, str]] = []  # node, start, end, stage (for traces)
        self.flops = None
        self.model_path: Path | None = None
        if spec.model_dir:
            self.model_path = write_tiny_model(run_dir / "models" / "tiny-ldm")
            from megbed.testbed.ldm.flops import stage_flops

            self.flops = stage_flops(self.model_path, spec.height_px, spec.height_px, cfg=True)
            self.s_per_tflop_es = STEP_S_ES / (self.flops.unet_step / 1e12)
        else:
            self.s_per_tflop_es = STEP_S_ES  # seconds per U-Net step (decode and text encode: fixed work units)

    # -- costs
    def _work(self, stage: str, steps: int) -> float:
        if self.flops is None:
            return {"denoise": steps, "decode": 1.6, "text_encode": 0.15}[stage]
        return {"denoise": self.flops.unet_step * steps, "decode": self.flops.vae_decode,
                "text_encode": self.flops.text_encode}[stage] / 1e12

    def compute_latency(self, node: str, stage: str, steps: int) -> float:
        a = self.s_per_tflop_es * (UE_SLOWDOWN if node == "ue" else 1.0)
        mean = a * self._work(stage, steps) + STAGE_OVERHEAD_S[node]
        return float(mean * (1 + self.rng.normal(0, 0.03)))

    def clock(self, node: str) -> tuple[int, float]:
        if node not in CLOCK:
            return 0, 0.0
        off, drift = CLOCK[node]
        elapsed_s = (self.t_ns - self.t0_ns) / 1e9
        return int(off + drift * elapsed_s), float(abs(self.rng.normal(60_000, 20_000)) + 20_000)

    def energy(self, node: str, latency_s: float, busy: bool) -> dict:
        out: dict = {}
        if node == "channel":  # no radio to measure: P_tx x airtime, as the orchestrator records it
            e = TX_POWER_MW * latency_s
            out.update(energy_mj_total=e, energy_net_mj_total=e, energy_mj_tx=e, energy_net_mj_tx=e,
                       energy_method="modeled", energy_valid=True, energy_invalid_reason="", probe="modeled_tx_power")
            return out
        if node not in RAILS:
            out.update(energy_mj_total=np.nan, energy_net_mj_total=np.nan, energy_method="none",
                       energy_valid=False, energy_invalid_reason="no power probe on this node", probe="")
            return out
        gross_total = net_total = 0.0
        for rail, (active, idle) in RAILS[node].items():
            p = (active if busy else 0.35 * active + 0.65 * idle) * (1 + self.rng.normal(0, 0.02))
            gross = p * latency_s  # mW x s = mJ
            net = (p - idle) * latency_s
            out[f"energy_mj_{rail}"] = gross
            out[f"energy_net_mj_{rail}"] = net
            if rail in TOTAL_RAILS[node]:
                gross_total += gross
                net_total += net
        out.update(energy_mj_total=gross_total, energy_net_mj_total=net_total,
                   energy_method="integrated" if node == "ue" else "counter", energy_valid=True,
                   energy_invalid_reason="", probe=PROBES[node])
        return out

    # -- rows
    def add_stage(self, base: dict, node: str, stage: str, latency_s: float, busy: bool = True) -> dict:
        start = self.t_ns
        end = start + int(latency_s * 1e9)
        off, unc = self.clock(node)
        row = dict(base, node=node, stage=stage, status="ok", error="", t_start_ns=start, t_end_ns=end,
                   latency_s=latency_s, clock_offset_ns=off, clock_uncertainty_ns=unc)
        row.update(self.energy(node, latency_s, busy))
        self.rows.append(row)
        if node in RAILS:
            self.activity.append((node, start, end, stage))
        self.t_ns = end + int(self.rng.uniform(0.2e6, 1.5e6))  # hand-over gap between stages
        return row

    def request(self, scheme: str, n: int, beta: float, distance_m: float, decoder: str, rep: int) -> None:
        spec = self.spec
        snr_set = snr_db_at(distance_m, PAPER_LINK.pathloss)
        ch_snr = snr_set + float(self.rng.normal(0, 0.5))
        pid = f"{scheme}-n{n}-b{beta:g}-d{distance_m:g}-{decoder}"
        rid = f"{pid}-r{rep}"
        # The paper's SDXL latent goes on the wire, whatever the tiny model's size.
        payload_bits, sequence = scheme_path(scheme, n, beta, CEG_PAYLOAD_BITS)
        base = dict(
            run_id="synthetic", point_id=pid, request_id=rid, repetition=rep, scheme=scheme, model="tiny-ldm",
            prompt="a red apple on a table", seed=rep, n_steps=n, es_steps=n if scheme != "ue_local" else 0,
            merge_ratio=beta if scheme == "meg" else 0.0, tome_ratio_es=0.0, tome_ratio_ue=0.0, guidance_scale=5.0,
            scheduler="EulerDiscreteScheduler", height_px=spec.height_px, width_px=spec.height_px, decoder=decoder,
            wire_dtype="float16", payload_bytes=payload_bits // 8, link_model="awgn", tx_mode="analog",
            distance_m=distance_m, snr_db_set=np.nan, ch_snr_db=np.nan, ch_gain_db=np.nan, ch_mcs=-1,
            ch_code_rate=np.nan, ch_payload_bits=0, ch_coded_bits=0, ch_symbols=0, ch_airtime_s=np.nan,
            ch_retransmissions=0, ch_ber=np.nan, ch_bler=np.nan, ch_nmse=np.nan,
        )
        if scheme == "ue_local":  # no link at all: its link columns stay empty
            base.update(link_model=None, tx_mode=None, distance_m=np.nan)
        start = self.t_ns
        if payload_bits:
            airtime = payload_bits / shannon_rate_bps(ch_snr)
            link = dict(ch_snr_db=ch_snr, ch_gain_db=ch_snr - PAPER_LINK.pathloss.tx_power_dbm,
                        ch_payload_bits=payload_bits, ch_symbols=int(payload_bits / 2), ch_airtime_s=airtime,
                        ch_nmse=10 ** (-ch_snr / 10) if scheme == "meg" else 0.0)
            base.update(link)
        for node, stage in sequence:
            if stage in ("text_encode", "denoise", "decode"):
                lat = self.compute_latency(node, stage, n if stage == "denoise" else 0)
                if stage == "decode" and decoder == "distilled" and node == "ue":
                    lat *= 0.55
            elif stage == "link":
                lat = base["ch_airtime_s"] + float(self.rng.uniform(0.001, 0.003))
            elif stage in ("image_encode", "image_decode"):
                lat = float(self.rng.uniform(0.01, 0.02) * (1 if node == "es" else UE_SLOWDOWN))
            else:
                lat = float(self.rng.uniform(0.001, 0.004) * (1 if node == "es" else UE_SLOWDOWN))
            self.add_stage(base, node, stage, lat, busy=stage != "link")
        end = self.t_ns
        mine = [r for r in self.rows if r["request_id"] == rid]
        energy = sum(r["energy_mj_total"] for r in mine if r["energy_valid"])
        net = sum(r["energy_net_mj_total"] for r in mine if r["energy_valid"])
        psnr = _psnr(scheme, n, beta, ch_snr if scheme == "meg" else 30.0, decoder, self.rng)
        mse = 10 ** (-psnr / 10)
        e2e = dict(base, node="orchestrator", stage="end_to_end", status="ok", error="", t_start_ns=start,
                   t_end_ns=end, latency_s=(end - start) / 1e9, clock_offset_ns=0, clock_uncertainty_ns=0.0,
                   energy_mj_total=energy, energy_net_mj_total=net, energy_method="integrated", energy_valid=True,
                   energy_invalid_reason="", probe="", q_mse=mse, q_neg_log_mse=-math.log(mse), q_psnr_db=psnr,
                   q_ms_ssim=float(1 - 0.6 * math.exp(-(psnr - 8) / 7)))
        self.rows.append(e2e)
        self.t_ns += int(self.rng.uniform(20e6, 40e6))  # cool-down between requests

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows)
        for col in df.columns:
            kind = schema.column_kind(col)
            if kind == "int":
                df[col] = df[col].astype("int64")
            elif kind == "float":
                df[col] = df[col].astype("float64")
            elif kind == "bool":
                df[col] = df[col].astype(bool)
            elif kind == "string":
                df[col] = df[col].astype(str)
        return df

    def traces(self) -> dict[tuple[str, str], pd.DataFrame]:
        """Per (node, probe): samples in the sampler's layout (``seq, t_ns, valid, reason, power_mw_<rail>``) on
        the node's own clock; every 97th read fails, as real sensors sometimes do."""
        out = {}
        for node, rails in RAILS.items():
            period = SAMPLE_PERIOD_NS[node]
            t = np.arange(self.t0_ns, self.t_ns, period, dtype=np.int64)
            busy = np.zeros(len(t), dtype=bool)
            for nd, s, e, _stage in self.activity:
                if nd == node:
                    busy[(t >= s) & (t < e)] = True
            off, drift = CLOCK[node]
            t_node = t - (off + drift * (t - self.t0_ns) / 1e9).astype(np.int64)
            valid = np.arange(len(t)) % 97 != 96
            df = pd.DataFrame({"seq": np.arange(len(t), dtype=np.int64), "t_ns": t_node, "valid": valid,
                               "reason": np.where(valid, "", "read timeout")})
            for rail, (active, idle) in rails.items():
                p = np.where(busy, active, idle) * (1 + self.rng.normal(0, 0.03, len(t)))
                df[f"power_mw_{rail}"] = np.where(valid, p, np.nan)
            out[(node, PROBES[node])] = df
        return out


def _training_log(algo: str, seed: int, iterations: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    it = np.arange(1, iterations + 1)
    lat_ratio = 1.6 * np.exp(-it / 8) + 0.85 + rng.normal(0, 0.04, iterations)
    df = pd.DataFrame({
        "iteration": it, "env_steps": it * 640, "episodes": it * 10,
        "reward_mean": 2.5 + 1.5 * (1 - np.exp(-it / 10)) + rng.normal(0, 0.08, iterations),
        "cost_mean_latency_s": 3.0 * lat_ratio, "cost_mean_energy_j": 40 + 10 * np.exp(-it / 12),
        "cost_ratio_latency_s": lat_ratio,
        "episode_violation_rate": np.clip(np.exp(-it / 6) + rng.normal(0, 0.03, iterations), 0, 1),
        "lambda_latency_s": np.clip(np.cumsum(lat_ratio - 1) * 0.05, 0, None),
        "eval_reward_mean": 2.6 + (1.5 + 0.2 * seed % 3) * (1 - np.exp(-it / (9 + 3 * (seed % 2)))),
        "wall_s": it * 3.1,
    })
    if algo == "cvpo":
        df["eta"] = 0.5 + 0.3 * np.exp(-it / 15)
    return df


def write_synthetic_run(run_dir: str | Path, spec: SyntheticSpec | None = None) -> Path:
    """Write a complete synthetic run directory (see the module docstring) and return its path."""
    spec = spec or SyntheticSpec()
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    b = _Builder(spec, run)
    for rep in range(spec.repetitions):
        for scheme in spec.schemes:
            for n in spec.n_steps:
                for d in spec.distances_m if scheme != "ue_local" else spec.distances_m[:1]:  # no link
                    for dec in spec.decoders if scheme != "ceg" else spec.decoders[:1]:  # CEG sends the image
                        betas = spec.merge_ratios if scheme == "meg" else (0.0,)
                        for beta in betas:
                            b.request(scheme, n, beta, d, dec, rep)
    rows = b.frame()
    with DatasetWriter(run, rows_per_part=max(len(b.rows) // 2 + 1, 1)) as writer:  # two parts
        writer.extend(b.rows)
    if spec.traces:
        for (node, probe), df in b.traces().items():
            write_trace(run, node, probe, df)
    if spec.training_logs:
        for k, algo in enumerate(("cvpo", "ppo_lag")):
            folder = run / "policy" / algo
            folder.mkdir(parents=True, exist_ok=True)
            _training_log(algo, spec.seed + k).to_csv(folder / "train_log.csv", index=False)
            (folder / "train_summary.json").write_text(json.dumps({"algo": algo}), encoding="utf-8")
    if spec.images:
        _write_images(run / "images", rows, spec.seed)
    if spec.manifest:
        sync = {}
        for node, (off, drift) in CLOCK.items():
            ts = np.linspace(b.t0_ns, b.t_ns, 12).astype(np.int64)
            fit = {"offset_ns": off, "drift": drift * 1e-9, "drift_ppm": drift * 1e-3, "ref_remote_ns": b.t0_ns - off,
                   "uncertainty_ns": 90_000.0, "method": "ntp_fit", "samples": len(ts), "exchanges": 16 * len(ts)}
            points = [{"t_ns": int(t), "offset_ns": float(off + drift * (t - b.t0_ns) / 1e9),
                       "uncertainty_ns": float(30_000 + 40_000 * abs(np.sin(i))), "burst": i} for i, t in enumerate(ts)]
            sync[node] = [fit, *points]
        manifest = build_manifest(
            run_id="synthetic", packages=("numpy", "pandas", "pyarrow", "matplotlib"),
            config={"name": "synthetic", "model": "tiny-ldm",
                    "model_dir": str(b.model_path) if b.model_path else None},
            machine={"es": {"host": "synthetic-es", "gpu": "synthetic"}, "ue": {"host": "synthetic-ue"}},
            firmware_profiles={"es": "generic_cpu", "ue": "jetson_orin_nano"},
            probes={"es": {"backend": PROBES["es"], "period_s": SAMPLE_PERIOD_NS["es"] / 1e9},
                    "ue": {"backend": PROBES["ue"], "period_s": SAMPLE_PERIOD_NS["ue"] / 1e9}},
            clock_sync=sync, synthetic=True,
        )
        manifest["schema_version"] = spec.schema_version
        write_manifest(run, manifest)
    return run


def _write_images(folder: Path, rows: pd.DataFrame, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    e2e = rows[(rows["stage"] == "end_to_end") & (rows["repetition"] == 0)].head(6)
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    for _, r in e2e.iterrows():
        img = np.stack([np.sin(6 * xx + r["n_steps"]) * 0.5 + 0.5, yy, np.full_like(xx, r["merge_ratio"])], -1)
        img = np.clip(img + rng.normal(0, 0.02 + 0.2 * r["merge_ratio"], img.shape), 0, 1)
        plt.imsave(folder / f"{r['request_id']}.png", img)
