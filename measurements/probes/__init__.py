"""Power probes: one interface (:class:`PowerProbe`), small backends, and discovery in order with a fallback."""

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
