"""measurements: power probes, sampling, stage energy windows, cross-host clock sync and the dataset on disk.

Entry points (imported lazily so ``from measurements import schema`` stays light):

* :class:`measurements.meter.Meter` -- ``Meter.from_profile(name)``, ``measure_idle(s)``, ``window(stage, sync=...)``
* :func:`measurements.probes.discovery.discover` -- probes for a firmware profile, with the reasons for the others
* :mod:`measurements.clocksync` -- ``ClockSync``, ``clock_sync_reply``, ``ClockMap``
* :mod:`measurements.dataset` -- ``DatasetWriter``, ``read_dataset``, ``TraceWriter``
* :mod:`measurements.manifest` -- ``build_manifest``, ``update_manifest``
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Meter": "measurements.meter", "StageEnergy": "measurements.meter", "Window": "measurements.meter",
    "IdleBaseline": "measurements.meter", "discover": "measurements.probes.discovery",
    "ClockSync": "measurements.clocksync", "ClockMap": "measurements.clocksync",
    "clock_sync_reply": "measurements.clocksync", "DatasetWriter": "measurements.dataset",
    "TraceWriter": "measurements.dataset", "read_dataset": "measurements.dataset",
    "build_manifest": "measurements.manifest", "update_manifest": "measurements.manifest",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
