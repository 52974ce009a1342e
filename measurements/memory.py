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
window would report the load's peak. Nor does it stand in for ``VmHWM`` (a syscall of ~1 us where reading
``status`` costs ~7): the two sum the kernel's per-CPU resident-set counters differently (on Linux 6.18 here
``ru_maxrss`` read 14 pages below and, in another process, 9 pages above ``VmHWM``), and that slack grows with the
number of CPUs, so only ``status`` gives the exact figure.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def _kb_in(text: bytes, key: bytes) -> float | None:
    """The ``kB`` figure of ``key`` in a ``/proc/<pid>/status`` text (None if absent or unreadable)."""
    at = text.find(b"\n" + key + b":")
    if at < 0:
        return None
    start = at + len(key) + 2
    end = text.find(b"\n", start)
    try:
        return float(text[start:end if end >= 0 else None].split()[0])
    except (ValueError, IndexError):
        return None


def _close_fds(fds: list[int]) -> None:
    while fds:
        with contextlib.suppress(OSError):
            os.close(fds.pop())


class _ProcFiles:
    """``status`` and ``clear_refs`` of ``proc_root``, kept open: opening them costs more than reading them (a stage
    window reads one and writes the other each time, on every request's hot path).

    Reads and writes use ``pread`` / ``pwrite`` at offset 0 (the kernel regenerates a ``/proc`` file on each read
    from the start), so threads can share the descriptors. A forked child reopens them: the parent's ``/proc/self``
    descriptors name the parent.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pid = -1
        self._status: int | None = None
        self._clear: int | None = None
        self._fds: list[int] = []
        self._lock = threading.Lock()
        weakref.finalize(self, _close_fds, self._fds)

    def _open(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            _close_fds(self._fds)  # a forked child's copies of the parent's descriptors
            self._status = self._clear = None
            with contextlib.suppress(OSError):
                self._status = os.open(self.root / "status", os.O_RDONLY | os.O_CLOEXEC)
                self._fds.append(self._status)
            with contextlib.suppress(OSError):
                self._clear = os.open(self.root / "clear_refs", os.O_WRONLY | os.O_CLOEXEC)
                self._fds.append(self._clear)
            self._pid = os.getpid()

    def status_kb(self, key: str) -> float | None:
        if self._pid != os.getpid():
            self._open()
        if self._status is None:
            return None
        try:
            return _kb_in(b"\n" + os.pread(self._status, 16384, 0), key.encode())
        except OSError:
            return None

    def clear_refs(self, value: bytes = b"5") -> None:
        """Write ``value`` to ``clear_refs``; raises OSError where it is not writable."""
        if self._pid != os.getpid():
            self._open()
        if self._clear is None:
            raise PermissionError(f"{self.root / 'clear_refs'} is not writable")
        os.pwrite(self._clear, value, 0)

    def close(self) -> None:
        with self._lock:
            _close_fds(self._fds)
            self._status = self._clear = None
            self._pid = -1


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
        self._files = _ProcFiles(self.proc)
        self.method = self._pick_method()

    def _pick_method(self) -> str:
        if self._files.status_kb("VmHWM") is not None:
            try:
                self._files.clear_refs()
                return "vmhwm_reset"
            except OSError:
                return "rss_sampled"
        return "ru_maxrss" if sys.platform != "win32" else "none"

    def close(self) -> None:
        """Close the kept-open ``/proc`` files (they reopen if the meter is used again)."""
        self._files.close()

    def rss_mb(self) -> float:
        """Current resident set (MiB), NaN where unreadable."""
        kb = self._files.status_kb("VmRSS")
        return math.nan if kb is None else kb / 1024

    @contextlib.contextmanager
    def window(self) -> Iterator[MemoryPeak]:
        """Measure the block; the yielded :class:`MemoryPeak` is filled when the block exits (also on error)."""
        peak = MemoryPeak(mem_method=self.method)
        cuda = self._cuda_reset()
        sampler = None
        if self.method == "vmhwm_reset":
            try:
                self._files.clear_refs()
            except OSError:
                peak.mem_method = "none"
        elif self.method == "rss_sampled":
            sampler = _Sampler(self, self.interval_s)
            sampler.start()
        try:
            yield peak
        finally:
            if self.method == "vmhwm_reset" and peak.mem_method == "vmhwm_reset":
                kb = self._files.status_kb("VmHWM")
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
