"""Calibrate the ``auto`` decoder's gate (:mod:`megbed.testbed.ldm.gate`) for one distilled decoder.

Both decoders score the same received latents (:func:`megbed.testbed.distill.evaluate.evaluate` rows, which carry each
latent's :func:`~megbed.testbed.ldm.gate.latent_noise_ratio`); the gate's two thresholds are the ones under which the
per-latent choice gives the highest mean ``-ln MSE`` over those rows. The rows come from prompts the decoder did not
train on (the distillation run's validation prompts), and the table is scored on other, held-out prompts.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from megbed.testbed.distill.errors import GateFitError
from megbed.testbed.ldm.gate import GateRule

KEYS = ["prompt", "seed", "n_steps", "beta", "condition"]


def paired_scores(rows: pd.DataFrame, base: str = "base", distilled: str = "distilled") -> pd.DataFrame:
    """One row per received latent: ``beta, noise_ratio, base, distilled`` (their ``-ln MSE``)."""
    need = set(KEYS) | {"decoder", "neg_log_mse", "noise_ratio"}
    missing = need - set(rows.columns)
    if missing:
        raise GateFitError(f"evaluation rows lack {sorted(missing)}")
    have = set(rows["decoder"])
    if not {base, distilled} <= have:
        raise GateFitError(f"need rows of decoders {base!r} and {distilled!r}, have {sorted(have)}")
    wide = rows.pivot_table(index=KEYS, columns="decoder", values="neg_log_mse", aggfunc="first")
    ratio = rows.groupby(KEYS)["noise_ratio"].first()
    out = pd.DataFrame({"base": wide[base], "distilled": wide[distilled], "noise_ratio": ratio}).dropna()
    if out.empty:
        raise GateFitError("no latent was scored by both decoders")
    return out.reset_index()


def fit_gate(rows: pd.DataFrame, base: str = "base", distilled: str = "distilled") -> tuple[GateRule, dict]:
    """The thresholds that maximise the mean ``-ln MSE`` of the gated choice over ``rows``.

    Candidates: ``noise_ratio_max`` at every midpoint between consecutive observed ratios (plus below all and above
    all), ``merge_ratio_min`` at each observed beta > 0 or never. Ties go to the larger ``noise_ratio_max`` and the
    larger ``merge_ratio_min`` (the base decoder where it makes no difference).

    Returns
    -------
    (GateRule, dict)
        The rule and a summary: mean ``-ln MSE`` of base only, distilled only, the gate and the per-latent best.
    """
    p = paired_scores(rows, base, distilled)
    r = p["noise_ratio"].to_numpy(float)
    gain = (p["distilled"] - p["base"]).to_numpy(float)  # what switching a latent to the distilled decoder gives
    beta = p["beta"].to_numpy(float)
    u = np.unique(r)
    cands = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-6]]) if len(u) > 1 else np.array(
        [u[0] - 1e-6, u[0] + 1e-6])
    best = None
    for bmin in [math.inf, *sorted({b for b in beta if b > 0}, reverse=True)]:
        forced = beta >= bmin
        order = np.argsort(r)
        # Gate at threshold t: distilled where r > t or forced. Sum of gains over the chosen set, for every t.
        free_gain = np.where(forced, 0.0, gain)
        cum_from_top = np.concatenate([np.cumsum(free_gain[order][::-1])[::-1], [0.0]])  # gain of r-index >= k
        idx = np.searchsorted(r[order], cands, side="right")  # latents with r > t start at idx
        totals = cum_from_top[idx] + gain[forced].sum()
        k = int(np.flatnonzero(totals >= totals.max() - 1e-12).max())  # ties: the largest threshold
        if best is None or totals[k] > best[0] + 1e-12:
            best = (float(totals[k]), float(cands[k]), bmin)
    _, t, bmin = best
    rule = GateRule(noise_ratio_max=max(t, 0.0), merge_ratio_min=bmin)
    pick = (r > rule.noise_ratio_max) | (beta >= rule.merge_ratio_min)
    chosen = np.where(pick, p["distilled"], p["base"])
    summary = {
        "latents": int(len(p)), "prompts": int(p["prompt"].nunique()),
        "neg_log_mse_base": float(p["base"].mean()), "neg_log_mse_distilled": float(p["distilled"].mean()),
        "neg_log_mse_gate": float(chosen.mean()),
        "neg_log_mse_best_per_latent": float(np.maximum(p["base"], p["distilled"]).mean()),
        "share_distilled": float(pick.mean()),
    }
    return rule, summary
