"""measurements: power probes, sampling, stage energy windows, cross-host clock sync and the dataset on disk.

Entry points (imported lazily so ``from measurements import schema`` stays light):

* :class:`megbed.measurements.meter.Meter` -- ``Meter.from_profile(name)``, ``measure_idle(s)``, ``window(stage, sync=...)``
* :func:`megbed.measurements.probes.discovery.discover` -- probes for a firmware profile, with the reasons for the others
* :mod:`megbed.measurements.clocksync` -- ``ClockSync``, ``clock_sync_reply``, ``ClockMap``
* :mod:`megbed.measurements.dataset` -- ``DatasetWriter``, ``read_dataset``, ``TraceWriter``
* :mod:`megbed.measurements.manifest` -- ``build_manifest``, ``update_manifest``
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Meter": "megbed.measurements.meter", "StageEnergy": "megbed.measurements.meter", "Window": "megbed.measurements.meter",
    "IdleBaseline": "megbed.measurements.meter", "discover": "megbed.measurements.probes.discovery",
    "ClockSync": "megbed.measurements.clocksync", "ClockMap": "megbed.measurements.clocksync",
    "clock_sync_reply": "megbed.measurements.clocksync", "DatasetWriter": "megbed.measurements.dataset",
    "TraceWriter": "megbed.measurements.dataset", "read_dataset": "megbed.measurements.dataset",
    "build_manifest": "megbed.measurements.manifest", "update_manifest": "megbed.measurements.manifest",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
