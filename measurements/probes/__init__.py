"""Power probes: one interface (:class:`PowerProbe`), small backends, and discovery in order with a fallback.

Every backend module imports the interface module itself (``from megbed.measurements.probes import base``) and names
what it uses as ``base.PowerProbe``, ``base.Rail``, ``base.ProbeUnavailable``, ...: a reader sees at each use site
which names come from the shared contract and which are the backend's own. Callers outside the package import the
interface names from here.
"""

from megbed.measurements.probes.base import (
    METHOD_COUNTER,
    METHOD_INTEGRATED,
    METHOD_MODELED,
    PowerProbe,
    PowerReading,
    ProbeReadError,
    ProbeUnavailable,
    Rail,
    rail_key,
)

__all__ = [
    "METHOD_COUNTER", "METHOD_INTEGRATED", "METHOD_MODELED", "PowerProbe", "PowerReading", "ProbeReadError",
    "ProbeUnavailable", "Rail", "rail_key",
]
