"""Distortion of UE decoders on held-out prompts: base vs distilled over beta, link SNR (or sigma) and N.

Every held-out prompt's ES latent after N steps (cached as in training) is merged at beta, sent as a handoff through
the link at one condition and un-merged; the *same* received latent is decoded by every decoder (a paired
comparison), and the image is scored against the prompt's reference (N_ref steps, beta 0, noiseless, base VAE,
float32) with the runtime's metrics: ``-ln MSE`` (the paper's reward) and PSNR (dB, peak 1).

Conditions: ``noiseless``; ``snr``: the channel emulator's analog transmission at a fixed average SNR (dB) over
the configured link model (AWGN by default, MMSE equalisation); ``sigma``: the paper's additive Gaussian noise.
The noise of one (prompt, N, beta, condition) is seeded by those indices, so every decoder sees the same draw.

Outputs (:func:`summarize`): one row per (decoder, beta, condition, N-set) with means and 95 % Student-t confidence
half-widths, and paired differences distilled - base; :func:`format_tables` prints the issue's table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from megbed.testbed.distill.cache import LatentCache
from megbed.testbed.distill.link import NoiseDraw, TrainingLink
from megbed.testbed.ldm.metrics import MSE_FLOOR

DEFAULT_BETAS = (0.0, 0.25, 0.5, 0.75)
DEFAULT_SNRS_DB = (20.0, 10.0, 5.0, 0.0, -4.0)
SUMMARY_COLUMNS = ("decoder", "beta", "condition", "kind", "snr_db", "sigma", "steps", "n_images",
                   "neg_log_mse_mean", "neg_log_mse_ci95", "psnr_db_mean", "psnr_db_ci95", "mse_mean")


@dataclass(frozen=True)
class Condition:
    """One link condition of the table.

    Attributes
    ----------
    kind : str
        ``none`` | ``snr`` | ``sigma``.
    value : float
        SNR in dB (``snr``) or the Gaussian std (``sigma``); NaN for ``none``.
    """

    kind: str
    value: float = math.nan

    @property
    def label(self) -> str:
        if self.kind == "snr":
            return f"SNR {self.value:g} dB"
        if self.kind == "sigma":
            return f"σ = {self.value:g}"
        return "noiseless"

    def draw(self, seed: int) -> NoiseDraw:
        if self.kind == "snr":
            return NoiseDraw("snr", seed, snr_db=self.value)
        if self.kind == "sigma":
            return NoiseDraw("sigma", seed, sigma=self.value)
        return NoiseDraw("none", seed)


def conditions(snr_db: Sequence[float] = DEFAULT_SNRS_DB, sigmas: Sequence[float] = ()) -> list[Condition]:
    """Noiseless first, then the SNRs (high to low), then the sigmas (low to high)."""
    out = [Condition("none")]
    out += [Condition("snr", float(s)) for s in sorted(snr_db, reverse=True)]
    out += [Condition("sigma", float(s)) for s in sorted(sigmas) if s > 0]
    return out


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(2))


def _scores(images: torch.Tensor, targets: torch.Tensor) -> dict[str, np.ndarray]:
    err = ((images.double().clamp(0, 1) - targets.double()) ** 2).mean(dim=(1, 2, 3)).clamp_min(MSE_FLOOR)
    return {"mse": err.numpy(), "neg_log_mse": (-torch.log(err)).numpy(),
            "psnr_db": (10 * torch.log10(1 / err)).numpy()}


@torch.no_grad()
def evaluate(cache: LatentCache, decoders: dict[str, Any], *, steps: Sequence[int], betas: Sequence[float],
             conds: Sequence[Condition], link: TrainingLink, seed: int = 0, batch_size: int = 16,
             progress: bool = False, merge_method: str | None = None) -> pd.DataFrame:
    """Score every decoder on every (prompt, N, beta, condition); one row per decoded image.

    Parameters
    ----------
    cache : LatentCache
        Held-out prompts' latents (``steps`` must be cached) and float references.
    decoders : dict
        Name -> :class:`~megbed.testbed.ldm.model.LatentDecoder` (``decode(latents) -> images`` in [0, 1]).
    steps, betas, conds :
        The grid.
    link : TrainingLink
        The link for ``snr`` conditions (its configured model / mode / equaliser).
    seed : int
        Seeds the noise draws.
    batch_size : int
        Latents per decode call.
    merge_method : str, optional
        Merge method of the handoffs (default: the runtime's default).

    Returns
    -------
    pandas.DataFrame
        Columns ``decoder, prompt, seed, n_steps, beta, condition, kind, snr_db, sigma, ch_snr_db, ch_nmse,
        noise_ratio, mse, neg_log_mse, psnr_db`` (``noise_ratio``: :func:`~megbed.testbed.ldm.gate.latent_noise_ratio` of
        the received latent; ``decoder_used``: which decoder a gated one picked, else the decoder's name).
    """
    from megbed.testbed.ldm.gate import latent_noise_ratio

    rows: list[dict[str, Any]] = []
    bar = None
    total = len(betas) * len(conds) * len(cache) * len(steps)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="evaluating decoders", unit="latent", leave=False)
    for bi, beta in enumerate(betas):
        for ci, cond in enumerate(conds):
            jobs = [(i, n) for i in range(len(cache)) for n in steps]
            for k in range(0, len(jobs), batch_size):
                chunk = jobs[k:k + batch_size]
                received, meta = [], []
                for i, n in chunk:
                    spec = cache.prompts[i]
                    draw = cond.draw(_seed(seed, i, n, bi, ci))
                    r = (link.receive(cache.latent(i, n), beta, spec.seed, draw) if merge_method is None
                         else link.receive(cache.latent(i, n), beta, spec.seed, draw, merge_method))
                    received.append(r.latent)
                    meta.append((i, n, r))
                x = torch.stack(received)
                ratio = latent_noise_ratio(x).tolist()
                targets = torch.stack([cache.target(i) for i, _ in chunk])
                for name, dec in decoders.items():
                    gated = getattr(dec, "accepts_merge_ratio", False)
                    images = dec.decode(x, merge_ratio=float(beta)) if gated else dec.decode(x)
                    used = list(dec.last_choice) if gated else [name] * len(chunk)
                    scores = _scores(images.float().cpu(), targets)
                    for j, (i, n, r) in enumerate(meta):
                        rows.append({
                            "decoder": name, "prompt": cache.prompts[i].prompt, "seed": cache.prompts[i].seed,
                            "n_steps": n, "beta": float(beta), "condition": cond.label, "kind": cond.kind,
                            "snr_db": cond.value if cond.kind == "snr" else math.nan,
                            "sigma": cond.value if cond.kind == "sigma" else math.nan,
                            "ch_snr_db": r.snr_db, "ch_nmse": r.nmse, "noise_ratio": ratio[j],
                            "decoder_used": used[j],
                            **{m: float(v[j]) for m, v in scores.items()},
                        })
                if bar is not None:
                    bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return pd.DataFrame(rows)


def _ci95(values: np.ndarray) -> float:
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return math.nan
    return float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def summarize(rows: pd.DataFrame, steps: Sequence[int] | None = None) -> pd.DataFrame:
    """Means and 95 % CIs per (decoder, beta, condition) over the prompts and the N in ``steps`` (default: all).

    The ``steps`` column records which N were averaged (``"4,8"``).
    """
    df = rows if steps is None else rows[rows["n_steps"].isin(list(steps))]
    label = ",".join(str(int(n)) for n in sorted(df["n_steps"].unique()))
    out = []
    order = {c: k for k, c in enumerate(dict.fromkeys(rows["condition"]))}
    for (dec, beta, cond), g in df.groupby(["decoder", "beta", "condition"], sort=False):
        out.append({
            "decoder": dec, "beta": beta, "condition": cond, "kind": g["kind"].iloc[0],
            "snr_db": g["snr_db"].iloc[0], "sigma": g["sigma"].iloc[0], "steps": label, "n_images": len(g),
            "neg_log_mse_mean": float(g["neg_log_mse"].mean()), "neg_log_mse_ci95": _ci95(g["neg_log_mse"]),
            "psnr_db_mean": float(g["psnr_db"].mean()), "psnr_db_ci95": _ci95(g["psnr_db"]),
            "mse_mean": float(g["mse"].mean()),
        })
    res = pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))
    res["_o"] = res["condition"].map(order)
    return res.sort_values(["decoder", "beta", "_o"]).drop(columns="_o").reset_index(drop=True)


def paired(rows: pd.DataFrame, a: str = "base", b: str = "distilled", steps: Sequence[int] | None = None
           ) -> pd.DataFrame:
    """Paired differences ``b - a`` per (beta, condition): mean and 95 % CI of delta -ln MSE and delta PSNR."""
    df = rows if steps is None else rows[rows["n_steps"].isin(list(steps))]
    keys = ["beta", "condition", "prompt", "seed", "n_steps"]
    wide = df.pivot_table(index=keys, columns="decoder", values=["neg_log_mse", "psnr_db"], aggfunc="first")
    order = {c: k for k, c in enumerate(dict.fromkeys(rows["condition"]))}
    out = []
    for (beta, cond), g in wide.groupby(level=["beta", "condition"], sort=False):
        d_nl = (g[("neg_log_mse", b)] - g[("neg_log_mse", a)]).to_numpy()
        d_ps = (g[("psnr_db", b)] - g[("psnr_db", a)]).to_numpy()
        out.append({"beta": beta, "condition": cond, "n_pairs": len(g),
                    f"{a}_neg_log_mse": float(g[("neg_log_mse", a)].mean()),
                    f"{b}_neg_log_mse": float(g[("neg_log_mse", b)].mean()),
                    "delta_neg_log_mse": float(d_nl.mean()), "delta_neg_log_mse_ci95": _ci95(d_nl),
                    f"{a}_psnr_db": float(g[("psnr_db", a)].mean()), f"{b}_psnr_db": float(g[("psnr_db", b)].mean()),
                    "delta_psnr_db": float(d_ps.mean()), "delta_psnr_db_ci95": _ci95(d_ps)})
    res = pd.DataFrame(out)
    res["_o"] = res["condition"].map(order)
    return res.sort_values(["beta", "_o"]).drop(columns="_o").reset_index(drop=True)


def _fmt(v: float, ci: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}" + (f" ±{ci:.{digits}f}" if math.isfinite(ci) else "")


def format_tables(rows: pd.DataFrame, table_steps: Sequence[int], a: str = "base", b: str = "distilled") -> str:
    """The issue's table (beta x condition, base vs distilled, averaged over ``table_steps``) and a per-N table at
    beta 0 noiseless (where the base decoder of the N_ref latent is the reference up to the wire's rounding)."""
    lines = []
    pt = paired(rows, a, b, table_steps)
    steps_label = ",".join(str(n) for n in sorted(table_steps))
    n_prompts = rows["prompt"].nunique()
    lines.append(f"Distortion vs the reference, mean over {n_prompts} held-out prompts x N in {{{steps_label}}} "
                 f"(± = 95% CI; Δ = paired difference {b} - {a})")
    head = (f"{'β':>5}  {'link':<13} {'-lnMSE ' + a:>14} {'-lnMSE ' + b:>14} {'Δ -lnMSE':>15}  "
            f"{'PSNR ' + a:>10} {'PSNR ' + b:>10} {'Δ PSNR dB':>15}")
    lines += [head, "-" * len(head)]
    for _, r in pt.iterrows():
        lines.append(f"{r['beta']:>5.2f}  {r['condition']:<13} {r[f'{a}_neg_log_mse']:>14.3f} "
                     f"{r[f'{b}_neg_log_mse']:>14.3f} {_fmt(r['delta_neg_log_mse'], r['delta_neg_log_mse_ci95'], 3):>15}  "
                     f"{r[f'{a}_psnr_db']:>10.2f} {r[f'{b}_psnr_db']:>10.2f} "
                     f"{_fmt(r['delta_psnr_db'], r['delta_psnr_db_ci95']):>15}")
    clean = rows[(rows["beta"] == 0.0) & (rows["kind"] == "none")]
    if not clean.empty:
        lines.append("")
        lines.append("β = 0, noiseless, per N (at N = N_ref the base decoder differs from the reference only by the "
                     "wire dtype's rounding)")
        head = f"{'N':>4}  {'-lnMSE ' + a:>14} {'-lnMSE ' + b:>14}  {'PSNR ' + a:>10} {'PSNR ' + b:>10} {'Δ PSNR dB':>15}"
        lines += [head, "-" * len(head)]
        for n, g in clean.groupby("n_steps"):
            ga, gb = g[g["decoder"] == a].set_index("prompt"), g[g["decoder"] == b].set_index("prompt")
            d = (gb["psnr_db"] - ga["psnr_db"]).to_numpy()
            lines.append(f"{int(n):>4}  {ga['neg_log_mse'].mean():>14.3f} {gb['neg_log_mse'].mean():>14.3f}  "
                         f"{ga['psnr_db'].mean():>10.2f} {gb['psnr_db'].mean():>10.2f} {_fmt(d.mean(), _ci95(d)):>15}")
    return "\n".join(lines)
