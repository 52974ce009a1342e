"""Find the probes to use, Zeus-style: try backends in order, fall back to the modeled probe, record every reason.

With a firmware profile, its ``[probes] order`` is tried first-available-wins and its ``extra`` backends are added
when present (a desktop ES: NVML for the GPU plus RAPL for the CPU package). Without one, the order is
``jetson_ina3221, rpi5_pmic, nvml, rapl`` with RAPL added beside NVML, and the fallback models power with the
``generic_cpu`` figures. Every backend that was not used says why (:class:`Attempt`), and the whole record goes into
the run manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from megbed.measurements.probes import base

AUTO_ORDER = ("jetson_ina3221", "rpi5_pmic", "nvml", "rapl")
AUTO_EXTRA = ("rapl",)
ALL_BACKENDS = ("nvml", "rapl", "jetson_ina3221", "rpi5_pmic", "ina260", "ina219", "replay", "modeled")


@dataclass(frozen=True)
class Attempt:
    """One backend tried: whether it is usable here and, if not, why."""

    backend: str
    ok: bool
    reason: str = ""
    role: str = ""  # "primary", "extra", "fallback" or "" (not used)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "ok": self.ok, "reason": self.reason, "role": self.role}


@dataclass
class Discovery:
    """The probes chosen and the record of how they were chosen."""

    probes: list[base.PowerProbe]
    attempts: list[Attempt] = field(default_factory=list)
    profile: str | None = None
    fallback: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "chosen": [p.name for p in self.probes], "fallback": self.fallback,
                "attempts": [a.to_dict() for a in self.attempts]}

    def summary(self) -> str:
        lines = [f"using: {' + '.join(p.name for p in self.probes)}" + (" (modeled fallback)" if self.fallback else "")]
        for a in self.attempts:
            lines.append(f"  {a.backend:15s} {'ok' if a.ok else 'no':3s} {a.role or ''} {a.reason}".rstrip())
        return "\n".join(lines)


def _opts(profile: Any, backend: str) -> dict[str, Any]:
    options = getattr(getattr(profile, "probes", None), "options", None) or {}
    return dict(options.get(backend, {}))


def make_probe(
    backend: str,
    *,
    profile: Any = None,
    sysfs_root: str = "/",
    clock: base.Clock = time.monotonic_ns,
    nvml_binding: Any = None,
    pmic_runner: Callable[[Sequence[str]], str] | None = None,
    smbus: Any = None,
    options: Mapping[str, Any] | None = None,
) -> base.PowerProbe:
    """Open one backend (raises :class:`ProbeUnavailable` with the reason when it cannot run here).

    ``options`` override the profile's ``[probes.options.<backend>]``.
    """
    opts = {**_opts(profile, backend), **(options or {})}
    if backend == "nvml":
        from megbed.measurements.probes.nvml import NvmlProbe

        return NvmlProbe(tuple(opts.get("indices", (0,))), binding=nvml_binding, clock=clock,
                         measure_period_s=float(opts.get("measure_period_s", 0.5)))
    if backend == "rapl":
        from megbed.measurements.probes.rapl import RaplProbe

        return RaplProbe(sysfs_root, clock=clock, measure_period_s=float(opts.get("measure_period_s", 0.05)))
    if backend == "jetson_ina3221":
        from megbed.measurements.probes.jetson import JetsonProbe

        rail_map = getattr(profile, "rail_map", None) or None
        return JetsonProbe(sysfs_root, rail_map=rail_map, clock=clock)
    if backend == "rpi5_pmic":
        from megbed.measurements.probes.rpi import RpiPmicProbe

        return RpiPmicProbe(runner=pmic_runner, clock=clock)
    if backend in ("ina260", "ina219"):
        from megbed.measurements.probes.ina2xx import Ina219Probe, Ina260Probe

        cls = Ina260Probe if backend == "ina260" else Ina219Probe
        kwargs = {k: v for k, v in opts.items() if k not in ("bus", "address")}
        return cls(int(opts.get("bus", 1)), opts.get("address", 0x40), smbus=smbus, clock=clock, **kwargs)
    if backend == "replay":
        from megbed.measurements.probes.replay import ReplayProbe

        if "trace" not in opts:
            raise base.ProbeUnavailable("replay needs a recorded trace (option 'trace')")
        return ReplayProbe(opts["trace"], clock=clock, loop=bool(opts.get("loop", False)),
                           averaging_lag_s=float(opts.get("averaging_lag_s", 0.0)))
    if backend == "modeled":
        from megbed.measurements.probes.modeled import ModeledProbe

        model = getattr(profile, "power_model", None)
        name = getattr(profile, "name", "")
        if not model:
            from megbed.firmware_profiles import load_profile

            generic = load_profile("generic_cpu")
            model, name = generic.power_model, generic.name
        return ModeledProbe(model, clock=clock, profile_name=name, cpu_time=opts.get("cpu_time", "process"))
    raise base.ProbeUnavailable(f"unknown backend {backend!r} (known: {', '.join(ALL_BACKENDS)})")


def discover(profile: Any = None, *, fallback: bool = True, **kwargs: Any) -> Discovery:
    """Choose probes for a firmware profile (a :class:`firmware_profiles.Profile` or its name) or auto-detect.

    Parameters
    ----------
    profile : Profile, str or None
        What the board is; None auto-detects.
    fallback : bool
        Use the modeled probe when no measuring backend is available (otherwise raise).
    **kwargs
        Passed to :func:`make_probe` (``sysfs_root``, ``clock``, ``nvml_binding``, ``pmic_runner``, ``smbus``).

    Raises
    ------
    ProbeUnavailable
        Nothing usable and ``fallback`` is False; the message lists every backend's reason.
    """
    if isinstance(profile, str):
        from megbed.firmware_profiles import load_profile

        profile = load_profile(profile)
    if profile is not None:
        order = [b for b in profile.probes.order if b != "modeled"]
        extra = list(profile.probes.extra)
        allow_model = "modeled" in profile.probes.order
    else:
        order, extra, allow_model = list(AUTO_ORDER), list(AUTO_EXTRA), True
    attempts: list[Attempt] = []
    chosen: list[base.PowerProbe] = []
    for backend in order:
        if chosen:
            attempts.append(Attempt(backend, False, f"not tried: {chosen[0].name} came first in the order"))
            continue
        try:
            chosen.append(make_probe(backend, profile=profile, **kwargs))
            attempts.append(Attempt(backend, True, "", "primary"))
        except base.ProbeUnavailable as exc:
            attempts.append(Attempt(backend, False, str(exc)))
    used_fallback = False
    if not chosen:
        if not (fallback and allow_model):
            reasons = "; ".join(f"{a.backend}: {a.reason}" for a in attempts)
            raise base.ProbeUnavailable(f"no power probe available ({reasons})")
        chosen.append(make_probe("modeled", profile=profile, **kwargs))
        attempts.append(Attempt("modeled", True, "no measuring backend available: energy is modeled", "fallback"))
        used_fallback = True
    else:
        for backend in extra:
            if any(p.name == backend for p in chosen):
                continue
            try:
                chosen.append(make_probe(backend, profile=profile, **kwargs))
                attempts.append(Attempt(backend, True, "", "extra"))
            except base.ProbeUnavailable as exc:
                attempts.append(Attempt(backend, False, str(exc), "extra"))
    return Discovery(chosen, attempts, getattr(profile, "name", None), used_fallback)


def probe_status(backends: Sequence[str] = ("nvml", "rapl", "jetson_ina3221", "rpi5_pmic", "ina260", "ina219"),
                 **kwargs: Any) -> list[Attempt]:
    """Which backends work on this machine and why the others do not (opens and closes each)."""
    out = []
    for backend in backends:
        try:
            probe = make_probe(backend, **kwargs)
        except base.ProbeUnavailable as exc:
            out.append(Attempt(backend, False, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - a broken backend must not hide the others
            out.append(Attempt(backend, False, f"error while opening: {exc!r}"))
            continue
        rails = ", ".join(r.label for r in probe.rails)
        out.append(Attempt(backend, True, f"{probe.method}; rails: {rails}"))
        probe.close()
    return out
