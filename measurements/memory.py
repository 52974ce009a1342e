"""Peak memory of a window of work on this process: resident set (``mem_peak_mb``) and CUDA allocations.

Methods (recorded in ``mem_method`` / ``gpu_mem_method``, so a reader knows what the figure means):

``vmhwm_reset``
    Linux: the kernel's high-water mark of the resident set (``VmHWM`` in ``/proc/self/status``) after resetting it
    by writing ``5`` to ``/proc/self/clear_refs`` at the window's start. Exact (every page fault counts), free.
``rss_sampled``
    Linux where ``clear_refs`` is not writable (some containers): a thread samples ``VmRSS`` every
    ``interval_s`` during the window; the peak can miss a spike shorter than the interval (a lower bound).
``ru_maxrss``
    Elsewhere: ``getrusage`` high-water mark of the whole process lifetime (an upper bound for the window).
``cuda_max_allocated``
    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the window's start: tensors only,
    not the caching allocator's reserve or the CUDA context.

``resource.getrusage`` alone is not enough on Linux: ``ru_maxrss`` never decreases, so after the model loads every
window would report the load's peak.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def _status_kb(status_path: Path, key: str) -> float | None:
    try:
        for line in status_path.read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class MemoryPeak:
    """What one window measured (``math.nan`` where not measured)."""

    mem_peak_mb: float = math.nan
    mem_method: str = "none"
    gpu_mem_peak_mb: float = math.nan
    gpu_mem_method: str = "none"

    def to_columns(self) -> dict[str, Any]:
        return {"mem_peak_mb": self.mem_peak_mb, "mem_method": self.mem_method,
                "gpu_mem_peak_mb": self.gpu_mem_peak_mb, "gpu_mem_method": self.gpu_mem_method}


class MemoryMeter:
    """Measures the peak memory of ``with meter.window():`` blocks in this process.

    Parameters
    ----------
    proc_root : Path
        ``/proc/self`` (injected by tests).
    cuda_device : torch.device or str, optional
        Also measure peak CUDA allocations on this device (``None``: host memory only).
    interval_s : float
        Sampling period of the ``rss_sampled`` fallback (s).
    """

    def __init__(self, proc_root: str | Path = "/proc/self", *, cuda_device: Any = None,
                 interval_s: float = 0.002) -> None:
        self.proc = Path(proc_root)
        self.cuda_device = cuda_device
        self.interval_s = float(interval_s)
        self.method = self._pick_method()

    def _pick_method(self) -> str:
        if _status_kb(self.proc / "status", "VmHWM") is not None:
            try:
                (self.proc / "clear_refs").write_text("5")
                return "vmhwm_reset"
            except OSError:
                return "rss_sampled"
        return "ru_maxrss" if sys.platform != "win32" else "none"

    def rss_mb(self) -> float:
        """Current resident set (MiB), NaN where unreadable."""
        kb = _status_kb(self.proc / "status", "VmRSS")
        return math.nan if kb is None else kb / 1024

    @contextlib.contextmanager
    def window(self) -> Iterator[MemoryPeak]:
        """Measure the block; the yielded :class:`MemoryPeak` is filled when the block exits (also on error)."""
        peak = MemoryPeak(mem_method=self.method)
        cuda = self._cuda_reset()
        sampler = None
        if self.method == "vmhwm_reset":
            try:
                (self.proc / "clear_refs").write_text("5")
            except OSError:
                peak.mem_method = "none"
        elif self.method == "rss_sampled":
            sampler = _Sampler(self, self.interval_s)
            sampler.start()
        try:
            yield peak
        finally:
            if self.method == "vmhwm_reset" and peak.mem_method == "vmhwm_reset":
                kb = _status_kb(self.proc / "status", "VmHWM")
                peak.mem_peak_mb = math.nan if kb is None else kb / 1024
            elif sampler is not None:
                peak.mem_peak_mb = sampler.stop()
            elif self.method == "ru_maxrss":
                import resource

                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                # Linux reports KiB, macOS bytes.
                peak.mem_peak_mb = rss / MB if sys.platform == "darwin" else rss / 1024
            if cuda is not None:
                peak.gpu_mem_peak_mb = cuda.max_memory_allocated(self.cuda_device) / MB
                peak.gpu_mem_method = "cuda_max_allocated"

    def _cuda_reset(self) -> Any:
        if self.cuda_device is None or "cuda" not in str(self.cuda_device):
            return None
        import torch

        torch.cuda.reset_peak_memory_stats(self.cuda_device)
        return torch.cuda


class _Sampler(threading.Thread):
    def __init__(self, meter: MemoryMeter, interval_s: float) -> None:
        super().__init__(daemon=True, name="mem-sampler")
        self.meter, self.interval_s = meter, interval_s
        self.peak_mb = meter.rss_mb()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        rss = self.meter.rss_mb()
        if not math.isnan(rss) and (math.isnan(self.peak_mb) or rss > self.peak_mb):
            self.peak_mb = rss

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        self._sample()
        return self.peak_mb
