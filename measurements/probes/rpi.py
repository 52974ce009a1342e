"""Raspberry Pi 5 PMIC telemetry via ``vcgencmd pmic_read_adc`` (method ``integrated``).

The command prints one line per ADC channel, currents and voltages separately::

     VDD_CORE_A current(7)=2.15423000A
     VDD_CORE_V volt(15)=0.87621000V
        EXT5V_V volt(24)=5.13632000V

Each rail's current (``<RAIL>_A``) is paired with its voltage (``<RAIL>_V``) and the rail power is V x I. Channels
without a partner are kept as side readings and named in the data: ``EXT5V`` (the 5 V input) and ``BATT`` (the RTC
battery) are voltages only, because **the PMIC does not measure its input current**. The board total is therefore the
sum of the PMIC's output rails: it excludes the PMIC's own conversion losses and whatever the 5 V input feeds
directly (USB ports, fan, HATs). An external meter on the 5 V input (INA260/INA219) measures the input power.

One ``vcgencmd`` call takes about 10-20 ms, so the probe reads at most ~50-100 Hz whatever rate is asked.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence

from megbed.measurements.probes import base

COMMAND = ("vcgencmd", "pmic_read_adc")
_LINE = re.compile(r"^\s*(?P<name>\S+?)_(?P<suffix>[AV])\s+(?P<what>current|volt)\((?P<ch>\d+)\)="
                   r"(?P<value>[-+0-9.eE]+)(?P<unit>[AV])\s*$")

Runner = Callable[[Sequence[str]], str]


def _run(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=2.0)
    except FileNotFoundError as exc:
        raise base.ProbeUnavailable(f"{cmd[0]} not found (not Raspberry Pi OS, or the firmware tools are "
                                    "missing)") from exc
    except subprocess.TimeoutExpired as exc:
        raise base.ProbeReadError(f"{' '.join(cmd)} timed out") from exc
    if out.returncode != 0:
        detail = out.stderr.strip() or out.stdout.strip()
        raise base.ProbeReadError(f"{' '.join(cmd)} failed ({out.returncode}): {detail}")
    return out.stdout


def parse_pmic_adc(text: str) -> tuple[dict[str, tuple[float, float]], dict[str, float], dict[str, float]]:
    """Parse ``vcgencmd pmic_read_adc`` output.

    Returns
    -------
    paired : dict[str, tuple[float, float]]
        Rail name -> (current A, voltage V) for rails with both readings.
    volts_only : dict[str, float]
        Rail name -> voltage V for voltage channels without a current (EXT5V, BATT).
    amps_only : dict[str, float]
        Rail name -> current A for current channels without a voltage (none on a Pi 5; kept for robustness).
    """
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            continue
        value = float(m["value"])
        if m["what"] == "current":
            amps[m["name"]] = value
        else:
            volts[m["name"]] = value
    paired = {n: (amps[n], volts[n]) for n in amps if n in volts}
    return paired, {n: v for n, v in volts.items() if n not in amps}, {n: a for n, a in amps.items() if n not in volts}


class RpiPmicProbe(base.PowerProbe):
    """Raspberry Pi 5 PMIC rails.

    Parameters
    ----------
    runner : callable, optional
        ``runner(cmd) -> stdout``; injected in tests (default runs the command with a 2 s timeout).
    clock : callable
        Monotonic clock (ns).
    """

    name = "rpi5_pmic"
    method = base.METHOD_INTEGRATED

    def __init__(self, *, runner: Runner | None = None, clock: base.Clock = time.monotonic_ns) -> None:
        self.clock = clock
        self._runner = runner or _run
        try:
            first = self._runner(COMMAND)
        except base.ProbeReadError as exc:
            raise base.ProbeUnavailable(f"pmic_read_adc unavailable: {exc} "
                                        "(only the Raspberry Pi 5 has this PMIC)") from exc
        paired, volts_only, amps_only = parse_pmic_adc(first)
        if not paired:
            raise base.ProbeUnavailable("vcgencmd pmic_read_adc printed no current/voltage pairs "
                                        "(not a Raspberry Pi 5?)")
        self._names = sorted(paired)
        self.rails = tuple(base.Rail(base.rail_key("pmic_" + n), n, True, "PMIC output rail") for n in self._names)
        self.volts_only = sorted(volts_only)
        self.amps_only = sorted(amps_only)
        self.extra_keys = tuple(f"{base.rail_key(n)}_mv" for n in self.volts_only)

    def read(self):
        try:
            text = self._runner(COMMAND)
        except base.ProbeUnavailable as exc:
            raise base.ProbeReadError(str(exc)) from exc
        paired, volts_only, _ = parse_pmic_adc(text)
        missing = [n for n in self._names if n not in paired]
        if missing:
            raise base.ProbeReadError(f"pmic_read_adc output lacks rails {missing}")
        power = {r.key: paired[n][0] * paired[n][1] * 1000.0 for r, n in zip(self.rails, self._names, strict=True)}
        extra = {f"{base.rail_key(n)}_mv": v * 1000.0 for n, v in volts_only.items()}
        return power, None, extra

    def settings(self):
        out = super().settings()
        out["voltage_only_channels"] = {
            n: ("input voltage only: the PMIC does not measure input current, so board input power is NOT measured; "
                "the total is the sum of the PMIC output rails" if n.startswith("EXT5V") else "voltage only")
            for n in self.volts_only}
        out["total_note"] = ("sum of PMIC output rails: excludes PMIC conversion losses and loads fed straight from "
                             "the 5 V input (USB, fan, HATs)")
        return out
