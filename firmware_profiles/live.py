"""Firmware profiles on a live board: read the settings back (verify) and set them (apply).

On top of :mod:`firmware_profiles` (the validated TOML data). Reading and running go through injected seams, so the
same code runs against a real board, a recorded sysfs tree and recorded command outputs:

* ``sysfs_root``: files named by a check's ``path`` are read under this root (``/`` on a board);
* ``run``: a command runner ``run(argv) -> CommandResult`` (:func:`subprocess_runner` on a board,
  :class:`RecordedRunner` for recorded outputs).

``verify`` never changes anything; it returns every setting's expected and live value and whether they match.
``apply`` runs the profile's commands only when asked explicitly (``megbed profile apply NAME --apply``) and only
with the privileges they need (root for ``needs_root`` commands), then verifies. A mismatch is never hidden: the
verification goes into the run manifest (``firmware_profiles[node]``) and a node records it in its ``hello`` info.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megbed.firmware_profiles import load_profile


@dataclass(frozen=True)
class CommandResult:
    """What a command did."""

    returncode: int
    stdout: str = ""
    stderr: str = ""


Runner = Callable[[Sequence[str]], CommandResult]


def subprocess_runner(argv: Sequence[str], timeout_s: float = 20.0) -> CommandResult:
    """Run a command on this host (missing executable -> returncode 127, as a shell would say)."""
    if shutil.which(argv[0]) is None:
        return CommandResult(127, "", f"{argv[0]}: command not found")
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"{' '.join(argv)}: timed out after {timeout_s:.0f} s")
    except OSError as exc:
        return CommandResult(126, "", f"{' '.join(argv)}: {exc}")
    return CommandResult(done.returncode, done.stdout, done.stderr)


class RecordedRunner:
    """Answers commands from a recording: ``{"nvpmodel -q": "NV Power Mode: 15W\\n0\\n", ...}`` (argv joined by
    spaces); an unrecorded command is "not found". Records the commands it was asked to run in ``calls``."""

    def __init__(self, outputs: Mapping[str, str | Mapping[str, Any]]) -> None:
        self.outputs = dict(outputs)
        self.calls: list[list[str]] = []

    @classmethod
    def from_file(cls, path: str | Path) -> RecordedRunner:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a recording is a JSON object mapping commands to outputs")
        return cls(data)

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(list(argv))
        out = self.outputs.get(" ".join(argv))
        if out is None:
            return CommandResult(127, "", f"{argv[0]}: not in the recording")
        if isinstance(out, Mapping):
            return CommandResult(int(out.get("returncode", 0)), str(out.get("stdout", "")), str(out.get("stderr", "")))
        return CommandResult(0, str(out), "")


# --- verify ---------------------------------------------------------------------------------------------------------


def _extract(check: Any, text: str) -> str:
    if check.pattern:
        m = re.search(check.pattern, text)
        if m is None:
            raise ValueError(f"pattern {check.pattern!r} not found in {text.strip()[:120]!r}")
        return (m.group(1) if m.groups() else m.group(0)).strip()
    return text.strip()


def _compare(check: Any, raw: str) -> tuple[Any, bool]:
    expect = check.expect
    if expect == "*":
        return raw, True  # recorded, not constrained
    if isinstance(expect, bool):
        live = raw.lower() in ("1", "true", "yes", "enabled", "on")
        return live, live == expect
    if isinstance(expect, int | float):
        try:
            live = float(raw) * float(check.scale)
        except ValueError:
            return raw, False
        return live, abs(live - float(expect)) <= float(check.tolerance) + 1e-9
    return raw, raw == str(expect)


def verify_live(profile: Any, *, run: Runner = subprocess_runner, sysfs_root: str | Path = "/") -> dict[str, Any]:
    """Read every setting the profile constrains and compare it with the expected value.

    Returns
    -------
    dict
        ``{"profile", "ok", "checks": [{setting, expect, live, unit, status, source, error}], "mismatches",
        "unreadable"}``; ``status`` is ``match``, ``mismatch`` or ``unreadable``. ``ok`` is true only when every
        check matched (an unreadable setting is not a match: the profile is not verified).
    """
    if isinstance(profile, str | Path):
        profile = load_profile(profile)
    root = Path(sysfs_root)
    checks = []
    for check in profile.verify:
        entry: dict[str, Any] = {"setting": check.setting, "expect": check.expect, "unit": check.unit,
                                 "live": None, "status": "unreadable", "error": ""}
        try:
            if check.path is not None:
                path = root / check.path.lstrip("/")
                entry["source"] = str(path)
                text = path.read_text(encoding="utf-8", errors="replace")
            else:
                entry["source"] = " ".join(check.cmd)
                res = run(check.cmd)
                if res.returncode != 0:
                    raise OSError(f"exit {res.returncode}: {(res.stderr or res.stdout).strip()[:200]}")
                text = res.stdout
            live, ok = _compare(check, _extract(check, text))
            entry["live"] = live
            entry["status"] = "match" if ok else "mismatch"
        except (OSError, ValueError) as exc:
            entry["error"] = str(exc)
        checks.append(entry)
    mismatches = [c["setting"] for c in checks if c["status"] == "mismatch"]
    unreadable = [c["setting"] for c in checks if c["status"] == "unreadable"]
    return {"profile": profile.name, "ok": not mismatches and not unreadable, "checks": checks,
            "mismatches": mismatches, "unreadable": unreadable, "sysfs_root": str(root)}


# --- apply ----------------------------------------------------------------------------------------------------------


class PrivilegeError(PermissionError):
    """The profile's commands need privileges this process lacks."""


def apply_profile(profile: Any, *, run: Runner = subprocess_runner, sysfs_root: str | Path = "/",
                  is_root: bool | None = None) -> dict[str, Any]:
    """Run the profile's apply commands in order, stop at the first failure, then verify.

    Raises
    ------
    PrivilegeError
        A command needs root and this process is not root (nothing is run).
    """
    if isinstance(profile, str | Path):
        profile = load_profile(profile)
    root = os.geteuid() == 0 if is_root is None else is_root
    needs = [" ".join(c.cmd) for c in profile.apply if c.needs_root]
    if needs and not root:
        raise PrivilegeError(f"profile {profile.name} needs root for: {'; '.join(needs)} (run with sudo)")
    done = []
    for cmd in profile.apply:
        res = run(cmd.cmd)
        done.append({"cmd": list(cmd.cmd), "why": cmd.why, "returncode": res.returncode,
                     "stdout": res.stdout[-2000:], "stderr": res.stderr[-2000:]})
        if res.returncode != 0:
            break
    failed = [d for d in done if d["returncode"] != 0]
    return {"profile": profile.name, "applied": done, "ok": not failed and len(done) == len(profile.apply),
            "verify": verify_live(profile, run=run, sysfs_root=sysfs_root)}


def planned_commands(profile: Any) -> list[dict[str, Any]]:
    """The commands ``apply`` would run, for a dry run."""
    if isinstance(profile, str | Path):
        profile = load_profile(profile)
    return [{"cmd": list(c.cmd), "needs_root": c.needs_root, "why": c.why} for c in profile.apply]
