"""Firmware profiles: how a board is set up for a measurement, and how to measure it, as validated data.

A profile (``firmware_profiles/profiles/<name>.toml``) says:

* which power probes to try, in order, and which to add alongside (``[probes]``), with per-backend options;
* the board's rail map (``[[rails]]``): label, I2C address/channel, whether the rail counts in the board total;
* power figures for the modeled fallback probe (``[power_model.<component>]``: idle and active W);
* the firmware settings the profile stands for (``[nvpmodel]``, ``[cpu]``, ``[gpu]``, ``[jetson_clocks]``), the
  commands that apply them (``[[apply]]``) and how to read each back and what to expect (``[[verify]]``).

The loader checks every key and type and names the bad key in its error. It imports nothing of the project.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python 3.11+; tomli is the same parser, for 3.10 (JetPack 6)
    import tomllib  # novermin (tomli below on 3.10)
except ModuleNotFoundError:  # pragma: no cover - exercised under Python 3.10
    import tomli as tomllib

PROFILE_DIR = Path(__file__).parent / "profiles"
KINDS = ("gpu_host", "jetson", "rpi", "cpu_host")
KNOWN_BACKENDS = ("nvml", "rapl", "jetson_ina3221", "rpi5_pmic", "ina260", "ina219", "replay", "modeled")
UTILISATION_SOURCES = ("cpu_time", "none")


class ProfileError(ValueError):
    """A profile is missing or malformed; the message names the profile and the bad key."""


@dataclass(frozen=True)
class ProbePlan:
    """Which probes to use. ``order``: first available wins; ``extra``: measured alongside when available."""

    order: tuple[str, ...]
    extra: tuple[str, ...] = ()
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RailSpec:
    """One rail of the board's power monitor."""

    label: str
    total: bool
    address: str | None = None
    channel: int | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "total": self.total, "address": self.address, "channel": self.channel,
                "note": self.note}


@dataclass(frozen=True)
class PowerFigure:
    """Modeled power of one component: ``idle_w`` always, plus ``(active_w - idle_w) * utilisation``."""

    idle_w: float
    active_w: float
    source: str = "none"


@dataclass(frozen=True)
class Command:
    """A command that applies part of the profile."""

    cmd: tuple[str, ...]
    needs_root: bool = True
    why: str = ""


@dataclass(frozen=True)
class Check:
    """How to read one setting back and what the profile expects.

    Exactly one of ``cmd`` (run it) or ``path`` (read the file). ``pattern`` (a regex, group 1) extracts the value
    from the output; without it the whole stripped output is the value. ``scale`` multiplies a numeric value (e.g.
    kHz -> MHz: 0.001). Numbers compare within ``tolerance`` (absolute, same unit as ``expect``). ``expect = "*"``
    records the live value without judging it (e.g. the governor of a generic host).
    """

    setting: str
    expect: Any
    cmd: tuple[str, ...] | None = None
    path: str | None = None
    pattern: str | None = None
    scale: float = 1.0
    tolerance: float = 0.0
    unit: str = ""


@dataclass(frozen=True)
class Profile:
    """A validated firmware profile (see the module docstring)."""

    name: str
    kind: str
    board: str
    description: str
    path: Path
    probes: ProbePlan
    rails: tuple[RailSpec, ...]
    power_model: Mapping[str, PowerFigure]
    settings: Mapping[str, Mapping[str, Any]]
    apply: tuple[Command, ...]
    verify: tuple[Check, ...]
    aliases: tuple[str, ...] = ()
    source: str = ""
    verified_on_hardware: bool = False
    emulation: Mapping[str, Any] = field(default_factory=dict)

    @property
    def relative_throughput(self) -> float | None:
        """Throughput vs the desktop-class ES named in ``[emulation].reference`` (1/slowdown); None if not given."""
        value = self.emulation.get("relative_throughput")
        return None if value is None else float(value)

    @property
    def rail_map(self) -> list[dict[str, Any]]:
        """Rails as plain dicts (what the Jetson probe takes)."""
        return [r.to_dict() for r in self.rails]

    @property
    def total_rails(self) -> list[str]:
        return [r.label for r in self.rails if r.total]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view for the run manifest."""
        return {
            "name": self.name, "kind": self.kind, "board": self.board, "description": self.description,
            "source": self.source, "verified_on_hardware": self.verified_on_hardware,
            "probes": {"order": list(self.probes.order), "extra": list(self.probes.extra),
                       "options": {k: dict(v) for k, v in self.probes.options.items()}},
            "rails": self.rail_map,
            "power_model": {k: {"idle_w": v.idle_w, "active_w": v.active_w, "source": v.source}
                            for k, v in self.power_model.items()},
            "settings": {k: dict(v) for k, v in self.settings.items()},
            "apply": [{"cmd": list(c.cmd), "needs_root": c.needs_root, "why": c.why} for c in self.apply],
            "verify": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in c.__dict__.items()}
                       for c in self.verify],
            "emulation": dict(self.emulation),
        }


# --------------------------------------------------------------------------------------------- validation


class _V:
    """Collects problems with the key path they occurred at."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.problems: list[str] = []

    def bad(self, key: str, msg: str) -> None:
        self.problems.append(f"{key}: {msg}")

    def keys(self, key: str, table: Any, allowed: set[str], required: set[str] = frozenset()) -> bool:
        if not isinstance(table, Mapping):
            self.bad(key or "(top level)", f"must be a table, got {type(table).__name__}")
            return False
        for k in table:
            if k not in allowed:
                self.bad(f"{key}.{k}" if key else k, f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for k in sorted(required - set(table)):
            self.bad(f"{key}.{k}" if key else k, "required key is missing")
        return True

    def tables(self, name: str, raw: Any, allowed: set[str], required: set[str] = frozenset()):
        """Each well-formed table of the array of tables ``[[name]]`` as ``(key path, table)``; problems recorded."""
        if not isinstance(raw, list):
            self.bad(name, f"must be an array of tables ([[{name}]])")
            return
        for i, table in enumerate(raw):
            key = f"{name}[{i}]"
            if self.keys(key, table, allowed, required):
                yield key, table

    def typed(self, key: str, value: Any, types: tuple[type, ...], what: str) -> bool:
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            self.bad(key, f"must be {what}, got {value!r}")
        return ok

    def str_list(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.bad(key, f"must be a list of non-empty strings, got {value!r}")
            return ()
        return tuple(value)


TOP = {"name", "kind", "board", "description", "aliases", "source", "verified_on_hardware", "probes", "rails",
       "power_model", "nvpmodel", "jetson_clocks", "cpu", "gpu", "apply", "verify", "notes", "emulation"}
# [emulation]: the board's throughput relative to a desktop-class ES, for an emulated UE (``emulate:<profile>``).
EMULATION_KEYS = {"relative_throughput", "reference", "source", "note"}
SETTINGS = {
    "nvpmodel": {"id", "name", "jetpack"},
    "jetson_clocks": {"enabled"},
    "cpu": {"governor", "online", "max_mhz", "min_mhz", "policy"},
    "gpu": {"index", "power_limit_w", "locked_mhz", "application_clocks_mhz", "memory_mhz", "persistence_mode",
            "max_mhz"},
}


def _probes(v: _V, raw: Any) -> ProbePlan:
    if not v.keys("probes", raw, {"order", "extra", "options"}, {"order"}):
        return ProbePlan(())
    order = v.str_list("probes.order", raw.get("order", []))
    extra = v.str_list("probes.extra", raw.get("extra", []))
    for i, name in enumerate(order):
        if name not in KNOWN_BACKENDS:
            v.bad(f"probes.order[{i}]", f"unknown backend {name!r} (known: {', '.join(KNOWN_BACKENDS)})")
    for i, name in enumerate(extra):
        if name not in KNOWN_BACKENDS:
            v.bad(f"probes.extra[{i}]", f"unknown backend {name!r} (known: {', '.join(KNOWN_BACKENDS)})")
    if not order:
        v.bad("probes.order", "must name at least one backend")
    options = raw.get("options", {})
    if v.keys("probes.options", options, set(KNOWN_BACKENDS)):
        for name, opts in options.items():
            v.keys(f"probes.options.{name}", opts, set(opts) if isinstance(opts, Mapping) else set())
    return ProbePlan(order, extra, {k: dict(o) for k, o in options.items() if isinstance(o, Mapping)})


def _rails(v: _V, raw: Any) -> tuple[RailSpec, ...]:
    out = []
    for key, r in v.tables("rails", raw, {"label", "total", "address", "channel", "note"}, {"label", "total"}):
        label, total = r.get("label"), r.get("total")
        v.typed(f"{key}.label", label, (str,), "a string")
        v.typed(f"{key}.total", total, (bool,), "true or false")
        addr = r.get("address")
        if addr is not None and (not isinstance(addr, str) or not re.fullmatch(r"0x[0-9a-fA-F]{2}", addr)):
            v.bad(f"{key}.address", f"must be an I2C address like \"0x40\", got {addr!r}")
        ch = r.get("channel")
        if ch is not None:
            v.typed(f"{key}.channel", ch, (int,), "an integer")
        out.append(RailSpec(str(label), bool(total), addr, ch, str(r.get("note", ""))))
    labels = [r.label for r in out]
    for lbl in sorted({x for x in labels if labels.count(x) > 1}):
        v.bad("rails", f"rail {lbl!r} listed twice")
    return tuple(out)


def _power_model(v: _V, raw: Any) -> dict[str, PowerFigure]:
    out = {}
    if not v.keys("power_model", raw, set(raw) if isinstance(raw, Mapping) else set()):
        return out
    for comp, fig in raw.items():
        key = f"power_model.{comp}"
        if not v.keys(key, fig, {"idle_w", "active_w", "source"}, {"idle_w", "active_w"}):
            continue
        idle, active = fig.get("idle_w"), fig.get("active_w")
        ok = v.typed(f"{key}.idle_w", idle, (int, float), "a number (W)")
        ok &= v.typed(f"{key}.active_w", active, (int, float), "a number (W)")
        src = fig.get("source", "none")
        if src not in UTILISATION_SOURCES:
            v.bad(f"{key}.source", f"must be one of {UTILISATION_SOURCES}, got {src!r}")
        if ok and (idle < 0 or active < idle):
            v.bad(key, f"needs 0 <= idle_w <= active_w, got idle_w={idle}, active_w={active}")
        if ok:
            out[comp] = PowerFigure(float(idle), float(active), str(src))
    return out


def _commands(v: _V, raw: Any) -> tuple[Command, ...]:
    out = []
    for key, c in v.tables("apply", raw, {"cmd", "needs_root", "why"}, {"cmd"}):
        cmd = v.str_list(f"{key}.cmd", c.get("cmd"))
        nr = c.get("needs_root", True)
        v.typed(f"{key}.needs_root", nr, (bool,), "true or false")
        out.append(Command(cmd, bool(nr), str(c.get("why", ""))))
    return tuple(out)


def _checks(v: _V, raw: Any) -> tuple[Check, ...]:
    out = []
    for key, c in v.tables("verify", raw, {"setting", "expect", "cmd", "path", "pattern", "scale", "tolerance", "unit"},
                           {"setting", "expect"}):
        has_cmd, has_path = "cmd" in c, "path" in c
        if has_cmd == has_path:
            v.bad(key, "needs exactly one of cmd or path")
        cmd = v.str_list(f"{key}.cmd", c["cmd"]) if has_cmd else None
        pattern = c.get("pattern")
        if pattern is not None:
            try:
                if re.compile(pattern).groups < 1:
                    v.bad(f"{key}.pattern", "needs one capture group holding the value")
            except re.error as exc:
                v.bad(f"{key}.pattern", f"bad regex: {exc}")
        for num in ("scale", "tolerance"):
            if num in c:
                v.typed(f"{key}.{num}", c[num], (int, float), "a number")
        out.append(Check(str(c.get("setting")), c.get("expect"), cmd, c.get("path"), pattern,
                         float(c.get("scale", 1.0)), float(c.get("tolerance", 0.0)), str(c.get("unit", ""))))
    return tuple(out)


def parse_profile(data: Mapping[str, Any], *, path: Path, name_hint: str | None = None) -> Profile:
    """Validate parsed TOML and build a :class:`Profile`; raises :class:`ProfileError` listing every problem."""
    where = f"profile {name_hint or path.stem!r} ({path})"
    v = _V(where)
    v.keys("", data, TOP, {"name", "kind", "board", "probes"})
    name = data.get("name", path.stem)
    v.typed("name", name, (str,), "a string")
    if isinstance(name, str) and name != path.stem and path.parent == PROFILE_DIR:
        v.bad("name", f"must match the file name ({path.stem!r}), got {name!r}")
    kind = data.get("kind")
    if kind not in KINDS:
        v.bad("kind", f"must be one of {KINDS}, got {kind!r}")
    probes = _probes(v, data.get("probes", {}))
    rails = _rails(v, data.get("rails", []))
    power = _power_model(v, data.get("power_model", {}))
    if "modeled" in probes.order + probes.extra and not power:
        v.bad("power_model", "the modeled probe is listed but no power figures are given")
    settings = {}
    for section, allowed in SETTINGS.items():
        if section in data and v.keys(section, data[section], allowed):
            settings[section] = dict(data[section])
    emulation: dict[str, Any] = {}
    if "emulation" in data and v.keys("emulation", data["emulation"], EMULATION_KEYS,
                                      {"relative_throughput", "reference", "source"}):
        emulation = dict(data["emulation"])
        rt = emulation.get("relative_throughput")
        if isinstance(rt, bool) or not isinstance(rt, (int, float)) or not 0 < rt <= 1000:
            v.bad("emulation.relative_throughput", f"must be a number in (0, 1000] (1/slowdown), got {rt!r}")
        for key in ("reference", "source"):
            v.typed(f"emulation.{key}", emulation.get(key), (str,), "a string")
    applies = _commands(v, data.get("apply", []))
    checks = _checks(v, data.get("verify", []))
    aliases = v.str_list("aliases", data.get("aliases", []))
    verified = data.get("verified_on_hardware", False)
    v.typed("verified_on_hardware", verified, (bool,), "true or false")
    if kind == "jetson" and "jetson_ina3221" in probes.order and not rails:
        v.bad("rails", "a Jetson profile using jetson_ina3221 needs its rail map")
    if rails and not any(r.total for r in rails):
        v.bad("rails", "no rail is marked total = true: the board total would be empty")
    if v.problems:
        raise ProfileError(f"{where} is invalid:\n  - " + "\n  - ".join(v.problems))
    return Profile(str(name), str(kind), str(data.get("board", "")), str(data.get("description", "")), path,
                   probes, rails, power, settings, applies, checks, aliases, str(data.get("source", "")),
                   bool(verified), emulation)


def _load_file(path: Path) -> Profile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {path} is not valid TOML: {exc}") from exc
    return parse_profile(data, path=path)


def list_profiles() -> list[str]:
    """Names of the bundled profiles (aliases not included)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def _aliases() -> dict[str, str]:
    out = {}
    for p in PROFILE_DIR.glob("*.toml"):
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            continue
        for a in data.get("aliases", []) if isinstance(data.get("aliases"), list) else []:
            out[str(a)] = p.stem
    return out


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a bundled profile by name (or alias, e.g. ``jetson_orin_nano``) or a TOML file by path.

    Raises
    ------
    ProfileError
        Unknown name (the message lists the bundled ones), unreadable file, or invalid content (every bad key named).
    """
    if isinstance(name_or_path, Path) or str(name_or_path).endswith(".toml") or "/" in str(name_or_path):
        return _load_file(Path(name_or_path))
    name = str(name_or_path)
    path = PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        target = _aliases().get(name)
        if target is None:
            raise ProfileError(f"no firmware profile named {name!r}; bundled: {', '.join(list_profiles())}")
        path = PROFILE_DIR / f"{target}.toml"
    return _load_file(path)
