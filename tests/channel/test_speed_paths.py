"""The emulator's speed paths agree with the references they replace: numpy EESM vs Sionna's block, the thread rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megbed.channel_emu.emulator import ChannelEmulator, torch_threads_for
from megbed.channel_emu.mcs import effective_snr_db, effective_snr_db_sionna


@pytest.mark.parametrize("mcs", [0, 5, 13, 27])
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0, 1000.0])
def test_numpy_eesm_matches_sionnas_block(mcs, scale):
    x = (np.random.default_rng(mcs).standard_exponential((5, 2000)) * scale).astype(np.float32)
    x[0, :7] = 0.0  # unused resources are left out
    x[1] = 0.0  # a block with none gets 0 (-300 dB)
    np.testing.assert_allclose(effective_snr_db(x, mcs), effective_snr_db_sionna(x, mcs), atol=5e-3)


def test_torch_threads_follow_work_size():
    assert torch_threads_for(65_536, 2) == 1  # an SDXL latent: one thread, whatever the cap
    assert torch_threads_for(10, None) == 1
    assert torch_threads_for(3 << 20, 2) == 2 and torch_threads_for(3 << 20, 4) == 3
    assert torch_threads_for(1 << 30, 1) == 1


def test_kernel_threads_need_work_and_an_idle_core():
    from megbed.channel_emu.numba_setup import kernel_threads

    assert kernel_threads(2, 8, load_avg=0.3, cpus=2) == 2  # idle box: both cores
    assert kernel_threads(2, 8, load_avg=1.5, cpus=2) == 1  # the other core is busy
    assert kernel_threads(2, 8, load_avg=11.0, cpus=2) == 1
    assert kernel_threads(4, 1, load_avg=0.0, cpus=16) == 1  # one codeword: nothing to share
    assert kernel_threads(8, 100, load_avg=13.2, cpus=16) == 3
    assert kernel_threads(0, 0, load_avg=0.0, cpus=2) == 1


def test_a_delivery_runs_small_frames_on_one_thread_and_restores_the_setting(monkeypatch):
    from megbed.megwire import Frame

    seen = []
    em = ChannelEmulator({"mode": "analog", "model": "awgn", "snr_db": 10.0}, seed=0, torch_threads=None)
    real = em._deliver
    monkeypatch.setattr(em, "_deliver", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # float32 values take the general analog path (torch casts): switched to 1 thread and back.
        em.deliver(Frame("x", {"channel_roles": {"v": "values"}}, {"v": np.ones(4096, np.float32)}))
        assert seen == [1] and torch.get_num_threads() == 2
        # fp16 values take the fused kernel, which runs no torch op: the setting is left alone (no switching cost).
        em.deliver(Frame("x", {"channel_roles": {"v": "values"}}, {"v": np.ones(4096, np.float16)}))
        assert seen == [1, 2] and torch.get_num_threads() == 2
        em_coded = ChannelEmulator({"mode": "coded", "model": "awgn", "snr_db": 10.0}, seed=0, torch_threads=None)
        assert not em_coded._torch_free(Frame("x", {}, {"v": np.ones(8, np.float16)}), em_coded.config)
    finally:
        torch.set_num_threads(old)
