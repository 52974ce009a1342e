"""The memory meter keeps its /proc files open and reads them afresh each window."""

from __future__ import annotations

import math

from megbed.measurements.memory import MemoryMeter


def _status(path, hwm_kb: int, rss_kb: int) -> None:
    path.write_text(f"Name:\tpython\nVmPeak:\t999999 kB\nVmHWM:\t{hwm_kb} kB\nVmRSS:\t{rss_kb} kB\nThreads:\t3\n")


def test_windows_read_the_kept_open_status_afresh_and_reset_the_mark(tmp_path):
    _status(tmp_path / "status", 2048, 1024)
    (tmp_path / "clear_refs").write_text("")
    meter = MemoryMeter(tmp_path)
    assert meter.method == "vmhwm_reset" and meter.rss_mb() == 1.0
    with meter.window() as peak:
        _status(tmp_path / "status", 4096, 3072)  # same inode, new contents: what the kernel regenerates
    assert peak.mem_peak_mb == 4.0 and peak.mem_method == "vmhwm_reset"
    assert (tmp_path / "clear_refs").read_text() == "5"
    meter.close()
    assert meter.rss_mb() == 3.0  # reopened on use after close


def test_without_a_writable_clear_refs_it_samples_and_without_status_it_says_so(tmp_path):
    _status(tmp_path / "status", 2048, 1024)
    meter = MemoryMeter(tmp_path)
    assert meter.method == "rss_sampled"
    with meter.window() as peak:
        pass
    assert peak.mem_peak_mb == 1.0
    empty = MemoryMeter(tmp_path / "absent")
    assert empty.method in ("ru_maxrss", "none") and math.isnan(empty.rss_mb())


def test_the_real_process_meter_measures_a_window():
    meter = MemoryMeter()
    with meter.window() as peak:
        block = bytearray(32 << 20)
        block[::4096] = b"x" * len(block[::4096])
    assert peak.mem_peak_mb > 32 or peak.mem_method != "vmhwm_reset"


def test_a_window_reports_the_status_high_water_mark_not_an_earlier_peak():
    meter = MemoryMeter()
    if meter.method != "vmhwm_reset":
        return  # not Linux with a writable clear_refs: the fake trees above cover the other methods
    spike = bytearray(96 << 20)
    spike[::4096] = b"x" * len(spike[::4096])
    del spike  # the process's high-water mark now holds the spike; the windows below must not
    for _ in range(3):
        with meter.window() as peak:
            block = bytearray(8 << 20)
            block[::4096] = b"x" * len(block[::4096])
        # Read right after the window: VmHWM can only have grown since, by the pages touched in between. The
        # figure is status's own (getrusage's ru_maxrss differs from it by the kernel's per-CPU counter slack).
        after = meter._files.status_kb("VmHWM") / 1024
        assert 0 < peak.mem_peak_mb <= after and after - peak.mem_peak_mb < 1.0
        del block
