"""firmware_profiles: board set-ups as validated data (probes, rail maps, power figures, settings, commands).

``load_profile(name_or_path)`` and ``list_profiles()`` are the entry points; see :mod:`megbed.firmware_profiles.loader`.
"""

from megbed.firmware_profiles.loader import (
    KNOWN_BACKENDS,
    Check,
    Command,
    PowerFigure,
    ProbePlan,
    Profile,
    ProfileError,
    RailSpec,
    list_profiles,
    load_profile,
    parse_profile,
)

__all__ = [
    "KNOWN_BACKENDS", "Check", "Command", "PowerFigure", "ProbePlan", "Profile", "ProfileError", "RailSpec",
    "list_profiles", "load_profile", "parse_profile",
]
