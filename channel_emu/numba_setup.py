"""numba's threading layer for the emulator's parallel kernels: the work-queue layer, unless the user chose one.

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
