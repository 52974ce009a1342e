"""``megbed doctor``: is this board ready to serve its role? One check per line, each failure with its fix.

Checks (in order): Python, the role's packages, torch and the device it will use, the model components the role's
plans need, each power probe (present, or why not), the firmware profile's live verification, the bind address,
CURVE keys, and the clock offset to the orchestrator host. Every check returns a :class:`Check`; ``status`` is
``ok``, ``warn`` (runs, with a caveat: e.g. no power probe means energy is recorded as absent), ``fail`` or ``skip``
(not asked for). A ``fail`` carries ``fix``: the one command that repairs it.

This module imports neither torch nor the model code at import time: on a board without torch it must still say
so (with the fix) instead of failing to start. Hardware access goes through injected roots / runners so tests run
against fake sysfs trees, recorded command outputs, a fake torch module and a loopback clock responder.
"""

from __future__ import annotations

import importlib
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROLES = ("es", "ue", "channel")
MIN_PYTHON = (3, 10)
# Default bind addresses of the node commands (megbed.testbed.nodes.es / ue, megbed.channel_emu.cli).
DEFAULT_BINDS = {"es": "tcp://127.0.0.1:5555", "ue": "tcp://127.0.0.1:5557", "channel": "tcp://127.0.0.1:5560"}
# Import name -> (pip requirement, install extra or "" for the node install).
ROLE_PACKAGES: dict[str, list[tuple[str, str, str]]] = {
    "es": [("zmq", "pyzmq", ""), ("numpy", "numpy", ""), ("diffusers", "diffusers", ""),
           ("transformers", "transformers", ""), ("safetensors", "safetensors", ""), ("tomesd", "tomesd", "")],
    "ue": [("zmq", "pyzmq", ""), ("numpy", "numpy", ""), ("diffusers", "diffusers", ""),
           ("transformers", "transformers", ""), ("safetensors", "safetensors", "")],
    "channel": [("zmq", "pyzmq", ""), ("numpy", "numpy", ""), ("sionna", "sionna-no-rt", "channel"),
                ("numba", "numba", "channel"), ("scipy", "scipy", "channel")],
}
DEFAULT_PLANS = {"es": ["meg", "hybrid"], "ue": ["meg"]}


@dataclass
class Check:
    """One line of the checklist."""

    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}[self.status]
        text = f"{mark} {self.name}: {self.detail}"
        return text + (f"\n       fix: {self.fix}" if self.fix else "")


@dataclass
class DoctorOptions:
    """What to check (the CLI's flags) and the injected hardware roots."""

    role: str
    profile: str | None = None
    model: Path | None = None
    plans: list[str] | None = None
    decoder: str | None = None
    device: str | None = None
    bind: str | None = None
    keys: Path | None = None
    orchestrator: str | None = None
    sysfs_root: Path = Path("/")
    command_outputs: Path | None = None
    clock_exchanges: int = 16
    clock_timeout_s: float = 1.0


def install_hint(extra: str = "") -> str:
    target = f"megbed[{extra}]" if extra else "megbed"
    return f"pip install '{target}'  (from a checkout: pip install -e '.{f'[{extra}]' if extra else ''}')"


# --- checks ---------------------------------------------------------------------------------------------------------


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Check:
    text = ".".join(str(v) for v in version)
    if tuple(version[:2]) < MIN_PYTHON:
        return Check("python", "fail", f"Python {text} (megbed needs >= 3.10)",
                     "install Python 3.10+ (JetPack 6 and Raspberry Pi OS Bookworm ship 3.10 / 3.11)")
    return Check("python", "ok", f"Python {text} at {sys.executable}")


def check_packages(role: str, importer: Callable[[str], Any] = importlib.import_module) -> list[Check]:
    out = []
    for module, requirement, extra in ROLE_PACKAGES[role]:
        try:
            mod = importer(module)
        except ImportError as exc:
            out.append(Check(f"package {requirement}", "fail", f"not importable: {exc}", install_hint(extra)))
            continue
        out.append(Check(f"package {requirement}", "ok", str(getattr(mod, "__version__", "installed"))))
    return out


def torch_fix(kind: str | None) -> str:
    """The install command of a board's own torch build (see README "Bring up a board")."""
    if kind == "jetson":
        return ("install NVIDIA's JetPack 6 torch wheel (README 'Bring up a board': pip install torch "
                "--index-url https://pypi.jetson-ai-lab.io/jp6/cu126)")
    if kind == "rpi":
        return "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    if kind == "gpu_host":
        return "pip install torch  (a CUDA build from https://pytorch.org/get-started/locally/)"
    return "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def check_torch(role: str, device: str | None, *, kind: str | None = None,
                importer: Callable[[str], Any] = importlib.import_module) -> list[Check]:
    if role == "channel":
        return [Check("torch", "skip", "the channel broker's emulator runs on torch from the channel extra")]
    try:
        torch = importer("torch")
    except ImportError as exc:
        return [Check("torch", "fail", f"not importable: {exc}", torch_fix(kind))]
    out = [Check("torch", "ok", f"torch {getattr(torch, '__version__', '?')}")]
    cuda_ok = bool(torch.cuda.is_available())
    want = device or ("cuda" if cuda_ok else "cpu")
    if want.startswith("cuda") and not cuda_ok:
        out.append(Check("device", "fail", f"--device {want} asked for, but this torch has no usable CUDA "
                         f"(torch.version.cuda = {getattr(torch.version, 'cuda', None)})", torch_fix(kind)))
    elif want.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
        free_b, total_b = torch.cuda.mem_get_info()
        out.append(Check("device", "ok", f"{want}: {name}, {free_b / 2**30:.1f} of {total_b / 2**30:.1f} GiB free"))
    else:
        status = "warn" if (role == "es" or kind in ("jetson", "gpu_host")) else "ok"
        detail = f"cpu ({torch.get_num_threads()} threads)"
        if status == "warn":
            detail += ": no CUDA in this torch build; the node runs, slowly"
        out.append(Check("device", status, detail, torch_fix(kind) if status == "warn" else ""))
    return out


def check_model(role: str, model: Path | None, plans: list[str] | None, decoder: str | None) -> list[Check]:
    if role == "channel":
        return [Check("model", "skip", "the channel broker holds no model")]
    from megbed.testbed.ldm.components import ROLE_PLANS, MissingComponentError, check_components, read_slice

    if model is None:
        from megbed.testbed.assets import default_model_dir

        model = default_model_dir()
    model = Path(model).expanduser()
    index_path = model / "model_index.json"
    fetch = f"copy the model folder here, or: megbed model slice WHOLE_MODEL {model} --role {role}"
    try:
        import json

        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [Check("model", "fail", f"{model} is not a diffusers model folder ({exc})", fetch)]
    plans = list(plans or DEFAULT_PLANS[role])
    bad = [p for p in plans if p not in ROLE_PLANS[role]]
    if bad:
        return [Check("model", "fail", f"plans {bad} are not served by the {role.upper()}",
                      f"megbed doctor --role {role} --plans {','.join(ROLE_PLANS[role])}")]
    try:
        need = check_components(model, index, role, plans, decoder)
    except MissingComponentError as exc:
        return [Check("model", "fail", str(exc),
                      f"megbed model slice WHOLE_MODEL {model}.new --role {role} --plans {','.join(plans)}")]
    sliced = read_slice(model)
    kind = f"slice for {sliced.get('role')} {sliced.get('plans')}" if sliced else "whole model"
    parts = ", ".join(f"{name} ({plan})" for name, plan in need.items()) or "none"
    return [Check("model", "ok", f"{model} ({index.get('_class_name')}, {kind}); plans {', '.join(plans)} "
                                 f"need: {parts}")]


def check_probes(profile: Any, sysfs_root: Path) -> list[Check]:
    from megbed.measurements.probes.discovery import probe_status

    out = []
    status = probe_status(sysfs_root=str(sysfs_root))
    for attempt in status:
        out.append(Check(f"probe {attempt.backend}", "ok" if attempt.ok else "skip", attempt.reason))
    # modeled / replay are not hardware: a profile lists them as the last resort.
    wanted = ([b for b in profile.probes.order + profile.probes.extra if b not in ("modeled", "replay")]
              if profile is not None else [])
    present = {a.backend for a in status if a.ok}
    if wanted and not present.intersection(wanted):
        out.append(Check("power probe", "fail",
                         f"the profile's probes ({', '.join(wanted)}) are all absent: energy would not be measured",
                         f"megbed probe list --board {profile.name}  (then fix the probe named there)"))
    elif not present:
        out.append(Check("power probe", "warn", "no power probe on this machine: energy is recorded as absent",
                         "pass --profile NAME for this board, or attach a supported meter (megbed probe list)"))
    else:
        out.append(Check("power probe", "ok", f"usable: {', '.join(sorted(present))}"))
    return out


def check_profile(profile: Any, sysfs_root: Path, command_outputs: Path | None) -> list[Check]:
    if profile is None:
        return [Check("firmware profile", "skip", "no --profile given (clocks / power mode not verified)")]
    from megbed.firmware_profiles.live import RecordedRunner, subprocess_runner, verify_live

    run = subprocess_runner
    if command_outputs is not None:
        import json

        run = RecordedRunner(json.loads(Path(command_outputs).read_text(encoding="utf-8")))
    result = verify_live(profile, run=run, sysfs_root=sysfs_root)
    out = []
    for c in result["checks"]:
        if c["status"] == "match":
            out.append(Check(f"profile {c['setting']}", "ok", f"{c['live']} (expected {c['expect']})"))
        else:
            what = (f"live {c['live']!r}, expected {c['expect']!r}" if c["status"] == "mismatch"
                    else f"unreadable: {c['error']}")
            out.append(Check(f"profile {c['setting']}", "fail", what, f"sudo megbed profile apply {profile.name} --apply"))
    if not result["checks"]:
        out.append(Check("firmware profile", "ok", f"{profile.name}: nothing to verify"))
    return out


def check_bind(address: str) -> Check:
    """Bind a TCP socket where the node will (then release it): is the address local and the port free?"""
    try:
        host, port_s = address.removeprefix("tcp://").rsplit(":", 1)
        port = int(port_s)
    except ValueError:
        return Check("bind", "fail", f"{address!r} is not tcp://HOST:PORT", "pass --bind tcp://0.0.0.0:5555")
    host = "0.0.0.0" if host in ("*", "") else host
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        return Check("bind", "fail", f"cannot bind {address}: {exc.strerror or exc}",
                     f"stop what holds port {port} (ss -ltnp 'sport = :{port}') or pass --bind with a free port")
    finally:
        sock.close()
    return Check("bind", "ok", f"{address} is free")


def check_keys(role: str, keys: Path | None) -> Check:
    if keys is None:
        return Check("CURVE keys", "skip", "no --keys: connections are unauthenticated (fine on a private bench)")
    from megbed.testbed.nodes.keys import KeysError, server_curve

    name = "es" if role == "es" else ("ue" if role == "ue" else "broker")
    try:
        curve = server_curve(keys, name)
    except KeysError as exc:
        return Check("CURVE keys", "fail", str(exc), f"megbed keys generate {keys}  (then copy it to every node)")
    return Check("CURVE keys", "ok", f"{name} secret key {curve.secret_key_file}")


def check_clock(orchestrator: str | None, exchanges: int = 16, timeout_s: float = 1.0) -> Check:
    if not orchestrator:
        return Check("clock", "skip", "no --orchestrator: clock offset not measured")
    from megbed.measurements.clocksync import ClockSync, fit_clock
    from megbed.megwire import ZmqClientLink

    fix = (f"on the orchestrator host run `megbed doctor --serve-clock {orchestrator.rsplit(':', 1)[0]}:"
           f"{orchestrator.rsplit(':', 1)[-1]}` (or point --orchestrator at a running node), and open that port")
    try:
        link = ZmqClientLink(orchestrator)
    except Exception as exc:  # noqa: BLE001 - any socket error is the check's failure
        return Check("clock", "fail", f"cannot connect to {orchestrator}: {exc}", fix)
    try:
        sync = ClockSync(link, timeout_s=timeout_s)
        sync.burst(exchanges)
        fit = fit_clock(sync.exchanges)
    except Exception as exc:  # noqa: BLE001
        return Check("clock", "fail", f"no clock-sync answer from {orchestrator}: {exc}", fix)
    finally:
        link.close()
    detail = (f"offset {fit.offset_ns / 1e6:+.3f} ms +- {fit.uncertainty_ns / 1e3:.1f} us to {orchestrator} "
              f"({len(sync.exchanges)} exchanges, {fit.method})")
    return Check("clock", "ok", detail)


# --- the whole checklist --------------------------------------------------------------------------------------------


def run_checks(opts: DoctorOptions) -> list[Check]:
    """Every check for ``opts.role``, in checklist order."""
    if opts.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {opts.role!r}")
    checks = [check_python()]
    checks += check_packages(opts.role)
    profile, kind = None, None
    if opts.profile:
        try:
            from megbed.firmware_profiles import load_profile

            profile = load_profile(opts.profile)
            kind = profile.kind
        except Exception as exc:  # noqa: BLE001 - a broken profile is this check's failure
            checks.append(Check("firmware profile", "fail", f"{opts.profile!r}: {exc}", "megbed profile list"))
    checks += check_torch(opts.role, opts.device, kind=kind)
    checks += check_model(opts.role, opts.model, opts.plans, opts.decoder)
    checks += check_probes(profile, opts.sysfs_root)
    if profile is not None or not opts.profile:  # a profile that failed to load is already a failure above
        checks += check_profile(profile, opts.sysfs_root, opts.command_outputs)
    checks.append(check_bind(opts.bind or DEFAULT_BINDS[opts.role]))
    checks.append(check_keys(opts.role, opts.keys))
    checks.append(check_clock(opts.orchestrator, opts.clock_exchanges, opts.clock_timeout_s))
    return checks


def report(checks: list[Check]) -> dict[str, Any]:
    """JSON-ready result: ``ok`` (no failure), the counts, and every check."""
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail", "skip")}
    return {"ok": counts["fail"] == 0, "counts": counts, "checks": [asdict(c) for c in checks]}
