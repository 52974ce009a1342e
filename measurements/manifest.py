"""The run manifest (``RUN_DIR/manifest.json``): provenance of every number in the dataset.

Top-level keys written here (others may add sections, e.g. the campaign runner)::

    schema_version     dataset schema version (megbed.measurements.schema.SCHEMA_VERSION)
    run_id, created    identifier and wall-clock creation time (ISO 8601, UTC; provenance only)
    commit, dirty      git commit of the code and whether the working tree had changes
    config, config_hash   the resolved configuration and the SHA-256 of its canonical JSON
    machine            per node: host, OS, CPU, memory, Python, GPU where known
    firmware_profiles  per node: profile name (and, where given, its resolved settings)
    probes             per node: Meter.settings() (backends, rails, rates, measured sensor periods, idle baseline)
    clock_sync         per node: [clock map fit, sync points...] from megbed.measurements.clocksync
    packages           versions of the packages that shape the numbers

Every update is a read-modify-write under an exclusive lock (``RUN_DIR/.manifest.lock``), written to
``manifest.json.tmp`` and renamed, so concurrent writers never lose each other's sections and a crash never leaves a
half-written manifest.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from megbed.measurements import schema

DEFAULT_PACKAGES = ("megbed", "numpy", "pandas", "pyarrow", "torch", "diffusers", "transformers", "tomesd",
                    "sionna-no-rt", "pyzmq", "nvidia-ml-py", "scipy", "gymnasium", "zeus")


class ManifestError(ValueError):
    """The manifest cannot be read or updated; the message names the file."""


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def canonical_json(obj: Any) -> str:
    """Sorted-key, compact JSON: the same configuration always gives the same text (and hash)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default, allow_nan=True)


def config_hash(config: Any) -> str:
    """SHA-256 (hex) of the configuration's canonical JSON."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def git_state(repo_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha or "unknown", "dirty": bool or None}`` for the repository holding this code."""
    repo = Path(repo_dir) if repo_dir else Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=20, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def _meminfo_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "model\t")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_tree_model() -> str | None:
    for p in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            return Path(p).read_bytes().rstrip(b"\0").decode(errors="replace")
        except OSError:
            continue
    return None


def _gpus() -> list[dict[str, Any]]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver / no library: no NVIDIA GPU to describe
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                        "driver": _s(pynvml.nvmlSystemGetDriverVersion())})
        return out
    except Exception:  # noqa: BLE001
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def machine_info(*, with_gpus: bool = True) -> dict[str, Any]:
    """What this host is: name, OS, kernel, CPU, memory, Python, board model (Jetson/Pi), NVIDIA GPUs."""
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _meminfo_total_bytes(),
        "python": platform.python_version(),
    }
    board = _device_tree_model()
    if board:
        info["board"] = board
    if with_gpus:
        info["gpus"] = _gpus()
    return info


def package_versions(names: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_manifest(
    *,
    run_id: str,
    config: Any = None,
    firmware_profiles: Mapping[str, Any] | None = None,
    probes: Mapping[str, Any] | None = None,
    clock_sync: Mapping[str, Any] | None = None,
    machine: Mapping[str, Any] | None = None,
    repo_dir: str | os.PathLike | None = None,
    packages: Iterable[str] = DEFAULT_PACKAGES,
    **extra: Any,
) -> dict[str, Any]:
    """A complete manifest for a new run (this host described under ``machine['local']`` unless given)."""
    state = git_state(repo_dir)
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "run_id": run_id,
        # Wall clock on purpose: when the run happened, for people; never used for any measured duration.
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": state["commit"],
        "dirty": state["dirty"],
        "config": config,
        "config_hash": config_hash(config),
        "machine": dict(machine) if machine is not None else {"local": machine_info()},
        "firmware_profiles": dict(firmware_profiles or {}),
        "probes": dict(probes or {}),
        "clock_sync": dict(clock_sync or {}),
        "packages": package_versions(packages),
        **extra,
    }


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN_DIR/manifest.json`` as a dict (``{}`` when absent)."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path} must hold a JSON object")
    return data


@contextmanager
def _locked(run_dir: Path):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".manifest.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(data, indent=1, sort_keys=False, default=_json_default, allow_nan=True)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_manifest(run_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Write the whole manifest atomically (replacing any existing one)."""
    run = Path(run_dir)
    with _locked(run):
        _write_atomic(run / "manifest.json", manifest)
    return run / "manifest.json"


def update_manifest(run_dir: str | os.PathLike, updates: Mapping[str, Any] | None = None, *,
                    merge: bool = True, **sections: Any) -> dict[str, Any]:
    """Add or replace sections of the manifest atomically, under a lock; returns the new manifest.

    With ``merge=True`` a section that is a dict in both the manifest and the update is merged one level deep
    (so ``update_manifest(run, probes={"ue": ...})`` keeps ``probes["es"]``).
    """
    run = Path(run_dir)
    changes = {**(updates or {}), **sections}
    with _locked(run):
        data = read_manifest(run)
        for key, value in changes.items():
            if merge and isinstance(value, Mapping) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        data.setdefault("schema_version", schema.SCHEMA_VERSION)
        _write_atomic(run / "manifest.json", data)
    return data
