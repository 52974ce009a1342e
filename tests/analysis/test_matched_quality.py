"""MEG against a baseline at matched quality: the fastest MEG setting on the baseline's link whose quality CI
reaches the baseline's stands for MEG."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from megbed.analysis.tables import matched_quality


def _rows(scheme, n_steps, distance_m, beta, latency_s, psnr_db, n=4, rng=None):
    rng = rng or np.random.default_rng(0)
    return pd.DataFrame({
        "scheme": scheme, "n_steps": n_steps, "distance_m": distance_m, "merge_ratio": beta,
        "latency_s": latency_s + 0.01 * rng.standard_normal(n), "energy_j": 10.0 * latency_s + rng.random(n),
        "q_psnr_db": psnr_db + 0.1 * rng.standard_normal(n),
    })


def _req():
    rng = np.random.default_rng(1)
    parts = [
        # MEG at 200 m: beta 0 is as good as CEG, beta 0.75 is fast but 10 dB worse.
        _rows("meg", 8, 200.0, 0.0, 1.0, 30.0, rng=rng), _rows("meg", 8, 200.0, 0.75, 0.4, 20.0, rng=rng),
        # MEG at 300 m: only beta 0.5 reaches CEG's quality there.
        _rows("meg", 8, 300.0, 0.5, 1.5, 29.9, rng=rng), _rows("meg", 8, 300.0, 0.75, 0.9, 18.0, rng=rng),
        _rows("ceg", 8, 200.0, 0.0, 5.0, 30.0, rng=rng), _rows("ceg", 8, 300.0, 0.0, 10.0, 30.0, rng=rng),
    ]
    return pd.concat(parts, ignore_index=True)


def test_the_fastest_meg_setting_on_the_same_link_that_reaches_the_quality_is_chosen():
    req = _req()
    m = matched_quality(req, "ceg", n_boot=200, seed=0)
    assert (m.matched, m.settings) == (2, 2)
    by_d = {c["distance_m"]: c for c in m.chosen}
    assert by_d[200.0]["meg_merge_ratio"] == 0.0 and by_d[300.0]["meg_merge_ratio"] == 0.5
    # pooled: MEG (1.0 and 1.5 s) against CEG (5 and 10 s)
    expected = 100.0 * (np.mean([1.0, 1.5]) / np.mean([5.0, 10.0]) - 1.0)
    assert m.latency.value == pytest.approx(expected, abs=1.0)
    assert m.latency.low <= m.latency.value <= m.latency.high
    assert m.quality_meg.value == pytest.approx(29.95, abs=0.2)


def test_no_match_is_said_and_no_quality_means_no_comparison():
    req = _req()
    worse = req.assign(q_psnr_db=np.where(req["scheme"] == "meg", req["q_psnr_db"] - 15.0, req["q_psnr_db"]))
    m = matched_quality(worse, "ceg", n_boot=100)
    assert m.matched == 0 and m.settings == 2 and math.isnan(m.latency.value) and m.chosen == []
    assert matched_quality(req.drop(columns=["q_psnr_db"]), "ceg") is None
    assert matched_quality(req, "ue_local") is None
