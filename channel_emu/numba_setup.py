"""numba's threading layer for the emulator's parallel kernels (the work-queue layer, unless the user chose one) and
how many threads a kernel gets (:func:`kernel_threads`).

numba's OpenMP layer (its default when available) leaves its threads spinning after every parallel kernel; on two
cores shared with other work they starve the serial kernels that follow (a 1 ms QAM mapping measured 10-20 ms right
after a parallel decode). The work-queue layer does not spin. The choice is process-wide and only takes effect
before numba's first parallel launch, so every module with a parallel kernel calls :func:`prefer_workqueue` at
import; ``NUMBA_THREADING_LAYER`` in the environment always wins.
"""

from __future__ import annotations

import os


def prefer_workqueue() -> None:
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    import numba

    numba.config.THREADING_LAYER = "workqueue"


def kernel_threads(requested: int, work_items: int, load_avg: float | None = None, cpus: int | None = None) -> int:
    """Threads for a parallel kernel over ``work_items`` independent items (codewords): at most ``requested`` and
    ``work_items``, and at most 1 + the cores the 1-minute load average leaves idle, at least 1.

    A second thread only pays when a core is free for it: on the shared 2-core box at load 8-12, a team of 2
    made coded SDXL deliveries 1.15-1.66x slower than 1 thread (the first thread waits at every barrier for a
    descheduled second), while on an idle box it runs the codewords in parallel. The load average lags by about a
    minute, so a burst of load that starts mid-delivery is not seen.

    Parameters
    ----------
    requested : int
        The configured most (``decoder.threads``, already capped at numba's pool).
    work_items : int
        Independent items the kernel spreads over its threads.
    load_avg, cpus : float, int, optional
        The 1-minute load average and the CPU count (None: this machine's, read now).
    """
    load = os.getloadavg()[0] if load_avg is None else float(load_avg)
    cores = (os.cpu_count() or 1) if cpus is None else int(cpus)
    idle = max(0, int(cores - load))
    return max(1, min(int(requested), int(work_items), 1 + idle))
