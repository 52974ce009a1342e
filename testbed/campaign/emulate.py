"""An emulated UE when no board is present: the UE node as a real process under a CPU-bandwidth limit.

Mininet's ``CPULimitedHost`` is the model: the UE runs unchanged, in its own cgroup with a CPU quota, pinned to a
core apart from the ES, so every stage it computes takes ``slowdown`` times as long as on the ES's core.

``profiles: {ue: VALUE}`` in a campaign selects it:

* ``emulate:2x`` (any factor ``<f>x``): that slowdown vs the ES (the paper's UE is 2x slower than its ES); power
  figures for the modeled energy from ``generic_cpu`` (the ES-class cost model, only slower).
* ``emulate:<board profile>`` (e.g. ``emulate:jetson_orin_nano_15w``): slowdown = 1 / the profile's
  ``[emulation].relative_throughput`` (a published peak-throughput ratio vs a desktop-class GPU ES, cited in the
  TOML), power figures from that profile.
* ``emulate:<f>x:<board profile>``: the slowdown given, the board's power figures.

How the limit is applied is detected at run time, in this order (never assumed):

1. ``cgroup_v2``: a child group of the cgroup v2 root with ``cpu.max = quota period``;
2. ``cgroup_v1``: a child group of the v1 ``cpu`` hierarchy with ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``;
3. ``sigstop_duty``: no writable cgroup -- a thread in the campaign process stops and continues the UE
   (SIGSTOP / SIGCONT) so it runs ``1/slowdown`` of every 50 ms period. Coarser (a stage shorter than the period
   is slowed unevenly) and it is recorded as such.

Calibration (at startup, before the UE node starts): two bench processes, started together, time ``k`` forward
passes of the model's own U-Net (batch 2, as under CFG): one unthrottled on the ES's cores, one in the UE's limit on
the UE's cores; the ratio of their median step times is the achieved slowdown (run side by side so that other load
on the host weighs on both). While it misses the target by more than 5 % the quota is scaled by the miss and
measured again (up to 3 rounds; a loaded host gives the unthrottled bench less than a full core, and a quota
above a process's fair share does not bind); the closest round's quota is kept. Target, achieved, method and
the step times go to the manifest (``ue_emulation``) and to every row (``ue_emulation``, ``ue_slowdown_target``,
``ue_slowdown_achieved``).

The emulated UE's energy is the ``modeled`` probe over the chosen profile's power figures (a profile written into
the run folder that lists only that probe), never a measurement. Real boards (``profiles: {ue: <profile>}``
without ``emulate:``) are untouched by all of this.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megbed.testbed.campaign.errors import EmulationError

log = logging.getLogger(__name__)

PREFIX = "emulate:"
MAX_SLOWDOWN = 100.0  # cfs quotas below ~1 % of a period are dominated by scheduler granularity
DEFAULT_POWER_PROFILE = "generic_cpu"
CFS_PERIOD_US = 20_000  # short periods throttle smoothly: a 50 ms stage sees the limit, not one long stall
DUTY_PERIOD_S = 0.05
CALIBRATION_TOLERANCE = 0.05
_FACTOR = re.compile(r"(\d+(?:\.\d+)?)x")


@dataclass(frozen=True)
class EmulationTarget:
    """What an ``emulate:`` value asks for.

    Attributes
    ----------
    slowdown : float
        Target UE compute time / ES compute time (x).
    power_profile : str
        Firmware profile whose power figures feed the modeled energy.
    board : str or None
        The board profile the slowdown came from (None for an explicit ``<f>x``).
    source : str
        Where the slowdown comes from (the profile's cited figure, or the campaign's factor).
    """

    slowdown: float
    power_profile: str
    board: str | None
    source: str


def is_emulated(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_emulation(value: str, key: str = "profiles.ue") -> EmulationTarget:
    """Parse ``emulate:<f>x``, ``emulate:<profile>`` or ``emulate:<f>x:<profile>``.

    Raises
    ------
    EmulationError
        Unknown profile, a profile without ``[emulation].relative_throughput``, or a slowdown outside
        [1, MAX_SLOWDOWN]; the message starts with ``key``.
    """
    if not is_emulated(value):
        raise EmulationError(f"{key}: {value!r} is not an emulate:<...> value")
    from megbed.firmware_profiles import load_profile

    body = value[len(PREFIX):]
    factor, _, board = body.partition(":") if _FACTOR.fullmatch(body.partition(":")[0]) else ("", "", body)
    if not factor and not board:
        raise EmulationError(f"{key}: {value!r}: say emulate:<factor>x, emulate:<profile> or emulate:<factor>x:<profile>")
    profile = None
    if board:
        try:
            profile = load_profile(board)
        except Exception as exc:  # noqa: BLE001 - any loader failure is this key's problem
            raise EmulationError(f"{key}: unknown emulation profile {board!r}: {exc}") from exc
    if factor:
        slowdown = float(_FACTOR.fullmatch(factor).group(1))
        source = f"campaign value {value!r}"
    else:
        rt = profile.relative_throughput
        if rt is None:
            raise EmulationError(f"{key}: profile {board!r} has no [emulation].relative_throughput to emulate from")
        slowdown = 1.0 / rt
        source = (f"{profile.name}: relative_throughput {rt} vs {profile.emulation.get('reference')} "
                  f"({profile.emulation.get('source')})")
    if not 1.0 <= slowdown <= MAX_SLOWDOWN:
        raise EmulationError(f"{key}: slowdown {slowdown:.1f}x outside [1, {MAX_SLOWDOWN:.0f}] "
                             "(a CPU quota cannot emulate it faithfully)")
    return EmulationTarget(slowdown, profile.name if profile else DEFAULT_POWER_PROFILE,
                           profile.name if profile else None, source)


def write_modeled_profile(target: EmulationTarget, folder: Path) -> Path:
    """A profile for the emulated UE's node: only the ``modeled`` probe, the power figures of ``power_profile``."""
    from megbed.firmware_profiles import load_profile

    src = load_profile(target.power_profile)
    lines = [f'name = "emulated_ue_{src.name}"', 'kind = "cpu_host"',
             f'board = "emulated UE: a CPU-limited process on this host, power figures of {src.board}"',
             f'description = "Emulated UE ({target.slowdown:.2f}x slower than the ES); energy is modeled, never measured."',
             f'source = "power figures copied from firmware profile {src.name}"',
             "", "[probes]", 'order = ["modeled"]', "extra = []"]
    for comp, fig in src.power_model.items():
        lines += ["", f"[power_model.{comp}]", f"idle_w = {fig.idle_w!r}", f"active_w = {fig.active_w!r}",
                  f'source = "{fig.source}"']
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"emulated_ue_{src.name}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- CPU limits ------------------------------------------------------------------------------------------------------


class CpuLimit:
    """A CPU-bandwidth limit for a set of processes."""

    method = "none"
    detail = ""

    def set_fraction(self, fraction: float) -> None:
        raise NotImplementedError

    def add(self, pid: int) -> None:
        raise NotImplementedError

    def preexec(self) -> Callable[[], None] | None:
        """What a child runs before exec to join the limit (None: it is added from outside by pid)."""
        return None

    def close(self) -> None:
        pass


def _write(path: Path, text: str) -> None:
    with open(path, "w") as fh:  # noqa: PTH123 - one write() per value, as cgroupfs wants
        fh.write(text)


class CgroupLimit(CpuLimit):
    """A child cgroup with a CFS quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``)."""

    def __init__(self, group: Path, version: int, period_us: int = CFS_PERIOD_US) -> None:
        self.group, self.version, self.period_us = group, version, period_us
        self.method = f"cgroup_v{version}"
        self.detail = str(group)
        self.fraction = 1.0

    def set_fraction(self, fraction: float) -> None:
        # The kernel's smallest quota is 1 ms: lengthen the period for small fractions.
        self.period_us = max(CFS_PERIOD_US, math.ceil(1000 / fraction))
        quota = max(1000, int(round(self.period_us * fraction)))
        if self.version == 2:
            _write(self.group / "cpu.max", f"{quota} {self.period_us}")
        else:
            _write(self.group / "cpu.cfs_period_us", str(self.period_us))
            _write(self.group / "cpu.cfs_quota_us", str(quota))
        self.fraction = quota / self.period_us

    def add(self, pid: int) -> None:
        _write(self.group / "cgroup.procs", str(pid))

    def preexec(self) -> Callable[[], None]:
        procs = str(self.group / "cgroup.procs")

        def join() -> None:
            with open(procs, "w") as fh:  # noqa: PTH123 - runs in the forked child
                fh.write(str(os.getpid()))
        return join

    def close(self) -> None:
        try:
            self.group.rmdir()
        except OSError as exc:  # still holds a process (it will be reaped) or already gone
            log.debug("cgroup %s not removed: %s", self.group, exc)


class DutyCycleLimit(CpuLimit):
    """Fallback without a writable cgroup: SIGSTOP / SIGCONT the processes so they run ``fraction`` of a period."""

    method = "sigstop_duty"

    def __init__(self, period_s: float = DUTY_PERIOD_S, reason: str = "") -> None:
        self.period_s, self.fraction, self.pids = period_s, 1.0, []
        self.detail = f"SIGSTOP/SIGCONT every {period_s * 1e3:.0f} ms; no writable cgroup: {reason}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_fraction(self, fraction: float) -> None:
        self.fraction = min(1.0, max(0.01, fraction))

    def add(self, pid: int) -> None:
        self.pids.append(pid)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ue-duty-cycle", daemon=True)
            self._thread.start()

    def _signal(self, sig: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                self.pids.remove(pid)

    def _run(self) -> None:
        while not self._stop.is_set():
            on = self.period_s * self.fraction
            if self.fraction < 1.0:
                self._signal(signal.SIGCONT)
                time.sleep(on)
                self._signal(signal.SIGSTOP)
                time.sleep(self.period_s - on)
            else:
                time.sleep(self.period_s)
        self._signal(signal.SIGCONT)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self._signal(signal.SIGCONT)


def _v1_cpu_root(root: Path) -> Path | None:
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (root / name / "cpu.cfs_quota_us").exists():
            return root / name
    return None


def _try_cgroup(group: Path, version: int) -> CgroupLimit:
    """Create ``group`` and write it a full quota: the limit, or an OSError where this hierarchy is not ours to use."""
    group.mkdir(exist_ok=True)
    lim = CgroupLimit(group, version)
    lim.set_fraction(1.0)
    return lim


def detect_limit(name: str, root: Path = Path("/sys/fs/cgroup")) -> CpuLimit:
    """The first CPU limit that really works here: cgroup v2, cgroup v1, else the duty-cycle fallback.

    Each cgroup candidate is tried for real (create the group, write a quota); any OSError moves on, and the
    reasons are kept in the fallback's ``detail``.
    """
    reasons = []
    if (root / "cgroup.controllers").exists():
        try:
            if "cpu" not in (root / "cgroup.controllers").read_text().split():
                raise OSError("the cpu controller is not available in the v2 hierarchy")
            if "cpu" not in (root / "cgroup.subtree_control").read_text().split():
                _write(root / "cgroup.subtree_control", "+cpu")
            return _try_cgroup(root / name, 2)
        except OSError as exc:
            reasons.append(f"cgroup v2 at {root}: {exc}")
    v1 = _v1_cpu_root(root)
    if v1 is not None:
        try:
            return _try_cgroup(v1 / name, 1)
        except OSError as exc:
            reasons.append(f"cgroup v1 at {v1}: {exc}")
    elif not reasons:
        reasons.append(f"no cgroup v2 root or v1 cpu hierarchy under {root}")
    reason = "; ".join(reasons)
    log.warning("no writable cgroup for the emulated UE (%s): falling back to SIGSTOP/SIGCONT duty cycling", reason)
    return DutyCycleLimit(reason=reason)


def pick_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(ES cpus, UE cpus) apart from each other, or (None, None) when this process may use only one CPU."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(allowed) < 2:
        return None, None
    half = len(allowed) // 2
    return set(allowed[:half]), set(allowed[half:])


def pin_preexec(cpus: set[int] | None, then: Callable[[], None] | None = None) -> Callable[[], None] | None:
    """A pre-exec hook: pin to ``cpus`` (where allowed), then run ``then``."""
    if cpus is None and then is None:
        return None

    def hook() -> None:
        if cpus is not None:
            try:
                os.sched_setaffinity(0, cpus)
            except OSError:
                pass
        if then is not None:
            then()
    return hook


# --- calibration -----------------------------------------------------------------------------------------------------


def unet_step_s(model_dir: Path, k: int = 6, warmup: int = 1) -> float:
    """Median seconds of one forward pass of the model's U-Net (batch 2 as under CFG, the model's own size)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(str(Path(model_dir) / "unet")).eval()
    cfg = unet.config
    size = int(cfg.sample_size)
    x = torch.randn(2, int(cfg.in_channels), size, size)
    ctx = torch.randn(2, 77, int(cfg.cross_attention_dim))
    t = torch.tensor([500, 500])
    times = []
    with torch.no_grad():
        for i in range(warmup + k):
            t0 = time.perf_counter()
            unet(x, t, encoder_hidden_states=ctx)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _start_bench(model_dir: Path, k: int, env: dict[str, str], preexec: Callable[[], None] | None,
                 limit: CpuLimit | None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "megbed.testbed.campaign.emulate", "bench", str(model_dir), str(k)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=preexec)  # noqa: PLW1509 - pins / joins the cgroup before exec
    if limit is not None and limit.preexec() is None:
        limit.add(proc.pid)
    return proc


def _finish_bench(proc: subprocess.Popen, timeout_s: float) -> float:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"U-Net calibration bench took over {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"U-Net calibration bench failed ({proc.returncode}): {err.decode(errors='replace')[-800:]}")
    return float(json.loads(out.decode().strip().splitlines()[-1])["step_s"])


@dataclass
class UeEmulation:
    """A running UE emulation: the limit, where it is pinned, and what calibration found."""

    target: EmulationTarget
    limit: CpuLimit
    es_cpus: set[int] | None
    ue_cpus: set[int] | None
    profile_path: Path | None = None
    es_step_s: float = math.nan
    ue_step_s: float = math.nan
    achieved: float = math.nan
    calibrations: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def start(cls, target: EmulationTarget, run_dir: Path, *, cgroup_root: Path = Path("/sys/fs/cgroup"),
              limit: CpuLimit | None = None) -> UeEmulation:
        es_cpus, ue_cpus = pick_cpus()
        lim = limit or detect_limit(f"megbed-ue-{os.getpid()}", cgroup_root)
        lim.set_fraction(1.0 / target.slowdown)
        emu = cls(target, lim, es_cpus, ue_cpus)
        emu.profile_path = write_modeled_profile(target, run_dir / "emulation")
        return emu

    def ue_preexec(self) -> Callable[[], None] | None:
        return pin_preexec(self.ue_cpus, self.limit.preexec())

    def es_preexec(self) -> Callable[[], None] | None:
        return pin_preexec(self.es_cpus)

    def attach(self, pid: int) -> None:
        """Put a started process under the limit when it could not join before exec (the duty cycle)."""
        if self.limit.preexec() is None:
            self.limit.add(pid)

    def calibrate(self, model_dir: Path, env: dict[str, str], k: int = 8, timeout_s: float = 300.0,
                  rounds: int = 3) -> float:
        """Measure the achieved slowdown on the model's U-Net; while it misses the target by more than 5 %, scale
        the quota by achieved/target (at most 2x either way) and measure again, up to ``rounds`` times. The quota
        is left at the round that came closest, and that round's figure is the one recorded."""
        for _ in range(rounds):
            # Both at once, each on its own cores: whatever else loads the host loads both measurements alike.
            free_p = _start_bench(model_dir, k, env, self.es_preexec(), None)
            held_p = _start_bench(model_dir, k, env, self.ue_preexec(), self.limit)
            free, held = _finish_bench(free_p, timeout_s), _finish_bench(held_p, timeout_s)
            self.calibrations.append({"fraction": self.limit_fraction, "es_step_s": free, "ue_step_s": held,
                                      "achieved": held / free})
            log.info("emulated UE: U-Net step %.4f s (ES core) vs %.4f s (UE limit): %.2fx for a %.2fx target (%s)",
                     free, held, held / free, self.target.slowdown, self.limit.method)
            miss = (held / free) / self.target.slowdown
            if abs(miss - 1.0) <= CALIBRATION_TOLERANCE:
                break
            self.limit.set_fraction(min(1.0, self.limit_fraction * min(2.0, max(0.5, miss))))
        best = min(self.calibrations, key=lambda c: abs(math.log(c["achieved"] / self.target.slowdown)))
        if best["fraction"] != self.limit_fraction:
            self.limit.set_fraction(best["fraction"])
        self.es_step_s, self.ue_step_s, self.achieved = best["es_step_s"], best["ue_step_s"], best["achieved"]
        return self.achieved

    @property
    def limit_fraction(self) -> float:
        return float(getattr(self.limit, "fraction", math.nan))

    def columns(self) -> dict[str, Any]:
        """The per-row columns."""
        return {"ue_emulation": self.limit.method, "ue_slowdown_target": float(self.target.slowdown),
                "ue_slowdown_achieved": float(self.achieved)}

    def manifest(self) -> dict[str, Any]:
        return {"method": self.limit.method, "detail": self.limit.detail, "target_slowdown": self.target.slowdown,
                "achieved_slowdown": self.achieved, "es_unet_step_s": self.es_step_s,
                "ue_unet_step_s": self.ue_step_s, "cpu_fraction": self.limit_fraction,
                "es_cpus": sorted(self.es_cpus) if self.es_cpus else None,
                "ue_cpus": sorted(self.ue_cpus) if self.ue_cpus else None,
                "board": self.target.board, "power_profile": self.target.power_profile,
                "slowdown_source": self.target.source, "energy": "modeled (probe order [modeled] only)",
                "calibration": "median of k U-Net forward passes (batch 2): a fresh process pinned to the ES's "
                               "cores unthrottled vs one in the UE's limit on the UE's cores, run side by side",
                "calibrations": list(self.calibrations)}

    def close(self) -> None:
        self.limit.close()


def no_emulation_columns() -> dict[str, Any]:
    return {"ue_emulation": "none", "ue_slowdown_target": math.nan, "ue_slowdown_achieved": math.nan}


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "bench":
        import torch

        torch.set_num_threads(1)
        print(json.dumps({"step_s": unet_step_s(Path(argv[1]), int(argv[2]))}))
        return 0
    print("usage: python -m megbed.testbed.campaign.emulate bench MODEL_DIR K", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
