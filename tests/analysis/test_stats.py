"""Confidence intervals against closed forms and their seeded reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megbed.analysis.stats import mean_ci, relative_change_ci


def test_t_interval_matches_the_textbook_formula():
    x = np.array([2.0, 4.0, 4.0, 5.0, 7.0])
    est = mean_ci(x)
    # mean 4.4, s = sqrt(3.3), t_{0.975,4} = 2.7764451
    half = 2.7764451051977987 * math.sqrt(3.3) / math.sqrt(5)
    assert est.value == pytest.approx(4.4)
    assert est.low == pytest.approx(4.4 - half, rel=1e-9)
    assert est.high == pytest.approx(4.4 + half, rel=1e-9)
    assert est.n == 5 and est.method == "t"


def test_t_interval_ignores_nan_and_needs_two_samples():
    assert mean_ci([1.0, np.nan, 3.0]).n == 2
    one = mean_ci([3.0])
    assert one.value == 3.0 and math.isnan(one.low) and math.isnan(one.high)
    assert math.isnan(mean_ci([]).value)


def test_t_interval_coverage_is_near_nominal():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(1000):
        est = mean_ci(rng.normal(10.0, 2.0, 6))
        hits += est.low <= 10.0 <= est.high
    assert 0.93 <= hits / 1000 <= 0.97


def test_relative_change_is_seeded_and_brackets_the_truth():
    rng = np.random.default_rng(1)
    a, b = rng.normal(80.0, 5.0, 200), rng.normal(100.0, 5.0, 200)
    e1 = relative_change_ci(a, b, seed=7, n_boot=2000)
    e2 = relative_change_ci(a, b, seed=7, n_boot=2000)
    assert (e1.low, e1.high) == (e2.low, e2.high)
    assert e1.value == pytest.approx(100 * (a.mean() / b.mean() - 1))
    assert e1.low < -20.0 < e1.high
    assert e1.high - e1.low < 4.0
    assert "seed 7" in e1.method


def test_relative_change_degenerate_inputs():
    assert math.isnan(relative_change_ci([], [1.0]).value)
    assert math.isnan(relative_change_ci([1.0], [0.0]).value)
    single = relative_change_ci([2.0], [1.0])
    assert single.value == pytest.approx(100.0) and math.isnan(single.low)
