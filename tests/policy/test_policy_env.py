"""The MEG environment: gymnasium API, action mapping, costs in info, statistics against the dataset."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from policy_helpers import AR1Channel, ConstantChannel
from scipy import stats

from megbed.testbed.policy.costmodel import MeasuredCostModel, capacity_bits_per_hz
from megbed.testbed.policy.env import MegEnv, make_meg_env


@pytest.fixture(scope="module")
def model(synthetic_run):
    return MeasuredCostModel.from_run_dir(synthetic_run)


def test_gymnasium_api_and_info_costs(model):
    env = MegEnv(model, AR1Channel(seed=1), episode_length=64)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=4)
    assert obs.shape == (3,) and env.action_space.shape == (2,)
    total = 0
    while True:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        total += 1
        assert not terminated
        assert info["cost"].shape == (2,)
        assert info["cost"][0] == info["cost_latency_s"] and info["cost"][1] == info["cost_energy_j"]
        assert reward == info["q_neg_log_mse"]
        if truncated:
            break
    assert total == 64


def test_same_seed_same_episode(model):
    def run(seed):
        env = MegEnv(model, AR1Channel(), episode_length=16)
        env.reset(seed=seed)
        return [env.step([0.3, 0.6])[4]["cost"].tolist() for _ in range(16)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_action_mapping():
    from megbed.testbed.policy.env import RequestSpace

    space = RequestSpace(["n_steps", "merge_ratio"], [(4.0, 12.0), (0.0, 0.75)], [4, 8, 12], "uniform", "all",
                         ["snr_db"], {"snr_db": (0.0, 10.0)}, {})
    ns = [space.decode_action([a, 0.0])[0] for a in np.linspace(0, 1, 901)]
    assert sorted(set(ns)) == list(range(4, 13))  # every N reachable, N_max included below a0 = 1
    assert space.decode_action([0.95, 0.5]) == (12.0, 0.375)
    for n in range(4, 13):
        for beta in (0.0, 0.3, 0.75):
            assert space.decode_action(space.encode_action((n, beta))) == pytest.approx((n, beta), abs=1e-6)
    paper = RequestSpace(["n_steps", "merge_ratio"], [(4.0, 12.0), (0.0, 1.0)], [4, 12], "paper", "all",
                         ["snr_db"], {"snr_db": (0.0, 10.0)}, {})
    assert [paper.decode_action([a, 0])[0] for a in (0.0, 0.124, 0.125, 0.99, 1.0)] == [4, 4, 5, 11, 12]
    grid = RequestSpace(["n_steps", "merge_ratio"], [(4.0, 12.0), (0.0, 1.0)], [4, 8, 12], "uniform", "grid",
                        ["snr_db"], {"snr_db": (0.0, 10.0)}, {})
    assert {grid.decode_action([a, 0])[0] for a in np.linspace(0, 1, 101)} == {4, 8, 12}


def test_cost_statistics_match_the_dataset_at_measured_points(fixed_snr_run):
    """At a measured grid point and its SNR, the environment draws from exactly the measured distribution."""
    model = MeasuredCostModel.from_run_dir(fixed_snr_run)
    table = model.table
    rng = np.random.default_rng(0)
    for (n, beta, dist), cell in table.groupby(["n_steps", "merge_ratio", "distance_m"]):
        snr = float(cell.snr_db.iloc[0])
        env = MegEnv(model, ConstantChannel(snr), episode_length=1000)
        env.reset(seed=int(rng.integers(1000)))
        draws = np.array([env.step(env.encode_action((n, beta)))[4]["cost"] for _ in range(1000)])
        for k, col in enumerate(("latency_s", "energy_j")):
            measured = cell[col].to_numpy()
            se = measured.std(ddof=1) / np.sqrt(len(measured))
            assert abs(draws[:, k].mean() - measured.mean()) < 4 * se + 1e-9, (n, beta, dist, col)
            assert draws[:, k].std() == pytest.approx(measured.std(ddof=0), rel=0.15), (n, beta, dist, col)
            # every draw is a measured value (resampling, nothing invented at a grid point)
            assert np.isin(np.round(draws[:, k], 9), np.round(measured, 9)).all()
            assert stats.ks_2samp(draws[:, k], measured).pvalue > 1e-3


def test_cost_statistics_with_fading_match_on_average(synthetic_run, model):
    """Over the measured channel states, mean and spread of latency and energy per grid point match the campaign."""
    from megbed.testbed.policy.env import DatasetChannel

    table = model.table
    rng = np.random.default_rng(1)
    for (n, beta, dist), cell in table.groupby(["n_steps", "merge_ratio", "distance_m"]):
        env = MegEnv(model, DatasetChannel(cell, seed=2), episode_length=10_000)
        env.reset(seed=int(rng.integers(1000)))
        draws = np.array([env.step(env.encode_action((n, beta)))[4]["cost"] for _ in range(600)])
        for k, col in enumerate(("latency_s", "energy_j")):
            measured = cell[col].to_numpy()
            se = measured.std(ddof=1) / np.sqrt(len(measured))
            assert abs(draws[:, k].mean() - measured.mean()) < 4 * se + 0.01 * measured.mean(), (n, beta, dist, col)
            assert draws[:, k].std() == pytest.approx(measured.std(ddof=1), rel=0.6), (n, beta, dist, col)


def test_interpolation_between_grid_points(model):
    """Between measured points the expectation is the multilinear interpolation of the neighbours' means."""
    snr = float(model.snr_axis.values[0])
    e = model.expected(np.array([[4, 0.0], [8, 0.0], [6, 0.0], [4, 0.375], [6, 0.1875]]), snr)
    for key in ("other_latency_s", "energy_j", "q_neg_log_mse"):
        v = e[key]
        assert v[2] == pytest.approx(0.5 * (v[0] + v[1]))
    corners = model.expected(np.array([[4, 0.0], [8, 0.0], [4, 0.375], [8, 0.375]]), snr)["energy_j"]
    assert e["energy_j"][4] == pytest.approx(corners.mean())
    # sampled mean converges to it
    rng = np.random.default_rng(3)
    draws = [model.sample((6, 0.1875), snr, rng)["energy_j"] for _ in range(4000)]
    spread = np.std(draws) / np.sqrt(len(draws))
    assert np.mean(draws) == pytest.approx(e["energy_j"][4], abs=4 * spread)


def test_airtime_model_reproduces_measurements_and_follows_shannon(model):
    t = model.table
    airtime = t.airtime_bits / model.rate.rate_bps(t.snr_db.to_numpy())
    assert np.allclose(airtime, t.airtime_s)
    hi = model.rate.knots_db[-1] + 10.0  # beyond the measured range the Shannon shape carries on
    ratio = model.rate.rate_bps(hi) / model.rate.rate_bps(hi - 5.0)
    assert ratio == pytest.approx(capacity_bits_per_hz(hi) / capacity_bits_per_hz(hi - 5.0))
    # a better channel, the same action: less latency
    rng = np.random.default_rng(0)
    good = np.mean([model.sample((8, 0.0), 5.0, rng)["latency_s"] for _ in range(300)])
    bad = np.mean([model.sample((8, 0.0), -5.0, rng)["latency_s"] for _ in range(300)])
    assert good < bad


def test_dataset_channel_and_channel_process(synthetic_run):
    env = make_meg_env(synthetic_run, channel="dataset", seed=0, episode_length=8)
    env.reset(seed=0)
    snrs = {env.step([0.5, 0.5])[4]["snr_db"] for _ in range(8)}
    assert snrs <= set(np.round(env.cost_model.table.snr_db, 12)) | snrs and len(snrs) > 1
    process = pytest.importorskip("megbed.channel_emu.process")
    env = make_meg_env(synthetic_run, channel=process.ChannelProcess(seed=3), episode_length=8)
    obs, info = env.reset(seed=1)
    assert np.isfinite(obs).all() and np.isfinite(info["snr_db"])
    obs, *_ = env.step([0.5, 0.5])
    assert np.isfinite(obs).all()
