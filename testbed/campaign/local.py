"""Local nodes: ES, channel broker and UE started as separate processes on 127.0.0.1 (``nodes: local``).

Each node is ``python -m megbed.testbed.cli.main node KIND ...`` with its own log file under ``RUN_DIR/logs/``; free ports
are picked at start. The cluster can restart a node that died (the runner retries the request) and stops every
process it started -- by its own pid, SIGTERM first, SIGKILL after a grace period.

The broker runs only when ``channel_emu`` provides ``megbed node channel``; without it the UE talks to the ES
directly, the link rows carry no delivery record, and the cluster says so (``cluster.broker`` is None).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port free right now on ``host`` (the node binds it a moment later)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = HOST) -> list[int]:
    """``n`` distinct TCP ports free right now on ``host``. The sockets stay bound until all are chosen: one at a
    time, the kernel may hand a just-released port out again, and two nodes planned on one port fail at start-up
    (seen once in a test run: the UE's address answered as the ES)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the process that started us dies (Linux), so a killed
    campaign never leaves orphaned nodes holding ports and CPU."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


def broker_available() -> bool:
    """Whether ``megbed node channel`` can start here: the channel emulator's broker needs the 'channel' install
    extra (sionna, numba, scipy), which a campaign host may lack (the UE then talks to the ES directly)."""
    try:
        import megbed.channel_emu.broker  # noqa: F401 - what `megbed node channel` runs
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("megbed", "channel_emu", "testbed", "measurements", "megwire"):
            raise  # a broken checkout, not a missing extra
        return False
    return True


@dataclass
class NodeProcess:
    """One node process the cluster started."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    # Runs in the child before exec (after the parent-death signal): pinning, joining an emulated UE's cgroup.
    preexec: Any = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed right after
        fh.write(f"\n--- start: {' '.join(self.argv)}\n".encode())
        fh.flush()
        try:
            self.proc = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True, preexec_fn=self._preexec)
        finally:
            fh.close()

    def _preexec(self) -> None:
        _die_with_parent()
        if self.preexec is not None:
            self.preexec()

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL (tests: a node dying without warning)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalCluster:
    """ES + broker + UE on this host.

    Parameters
    ----------
    run_dir : Path
        Logs go to ``run_dir/logs``.
    model_dir : Path
        Model folder for both nodes.
    devices : dict
        Torch device per role.
    profiles : dict
        Firmware profile name per role (None: auto-detect probes).
    link_config : Path, optional
        The broker's link file.
    engine : str
        ``ldm`` or ``synthetic`` (harness measurements).
    keys_dir : Path, optional
        CURVE keys folder; every node then requires authenticated peers.
    extra_args : dict, optional
        More CLI flags per role (``{"es": ["--idle-s", "0"]}``).
    """

    run_dir: Path
    model_dir: Path
    devices: dict[str, str] = field(default_factory=lambda: {"es": "cpu", "ue": "cpu"})
    profiles: dict[str, str | None] = field(default_factory=lambda: {"es": None, "ue": None})
    link_config: Path | None = None
    engine: str = "ldm"
    keys_dir: Path | None = None
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    use_broker: bool = True
    nodes: dict[str, NodeProcess] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    emulation: Any = None  # megbed.testbed.campaign.emulate.UeEmulation when profiles.ue is emulate:<...>

    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "megbed.testbed.cli.main", *args]

    def plan(self) -> None:
        ports = dict(zip(("es", "front", "pub", "ue"), free_ports(4), strict=True))
        self.addresses = {"es": f"tcp://{HOST}:{ports['es']}", "ue": f"tcp://{HOST}:{ports['ue']}"}
        broker = self.use_broker and broker_available()
        if broker:
            self.addresses["channel_front"] = f"tcp://{HOST}:{ports['front']}"
            self.addresses["channel_pub"] = f"tcp://{HOST}:{ports['pub']}"
        else:
            if self.use_broker:
                log.warning("megbed node channel is not available: the UE talks to the ES directly (no link emulation)")
        logs = self.run_dir / "logs"
        common = ["--engine", self.engine]
        if self.engine == "ldm":
            common += ["--model", str(self.model_dir)]
        keys = [] if self.keys_dir is None else ["--keys", str(self.keys_dir)]
        for role in ("es", "ue"):
            args = ["node", role, "--bind", self.addresses[role], *common, "--device", self.devices.get(role, "cpu"),
                    *keys, *self.extra_args.get(role, [])]
            if role == "ue" and self.emulation is not None:
                args += ["--profile", str(self.emulation.profile_path)]  # the modeled-only profile
            elif self.profiles.get(role):
                args += ["--profile", str(self.profiles[role])]
            if role == "ue":
                args += ["--es", self.addresses.get("channel_front", self.addresses["es"])]
                if broker and self.keys_dir is not None:
                    args += ["--es-key", str(self.keys_dir / "channel.key")]
            self.nodes[role] = NodeProcess(role, self._argv(*args), logs / f"{role}.log")
            if self.emulation is not None:
                self.nodes[role].preexec = (self.emulation.ue_preexec() if role == "ue"
                                            else self.emulation.es_preexec())
        if broker:
            args = ["node", "channel", "--listen", self.addresses["channel_front"], "--es", self.addresses["es"],
                    "--pub", self.addresses["channel_pub"], *self.extra_args.get("channel", [])]
            if self.keys_dir is not None:
                k = self.keys_dir
                args += ["--curve-secret", str(k / "channel.key_secret"), "--curve-clients", str(k / "authorized"),
                         "--curve-es-public", str(k / "es.key")]
            if self.link_config is not None:
                args += ["--config", str(self.link_config)]
            self.nodes["channel"] = NodeProcess("channel", self._argv(*args), logs / "channel.log")

    @property
    def broker(self) -> str | None:
        return self.addresses.get("channel_front")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # Two cores shared by two model processes: one intra-op thread each keeps them from fighting.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        return env

    def start_emulation(self) -> None:
        """``profiles.ue: emulate:<...>``: set up the UE's CPU limit and measure the achieved slowdown."""
        from megbed.testbed.campaign.emulate import UeEmulation, is_emulated, parse_emulation

        value = self.profiles.get("ue")
        if self.emulation is not None or not is_emulated(value):
            return
        self.emulation = UeEmulation.start(parse_emulation(value), self.run_dir)
        if self.engine == "ldm":
            self.emulation.calibrate(self.model_dir, self.env(), k=8)

    def start(self) -> LocalCluster:
        self.start_emulation()
        if not self.nodes:
            self.plan()
        env = self.env()
        for name in ("es", "channel", "ue"):
            if name in self.nodes:
                self.nodes[name].start(env)
                if name == "ue" and self.emulation is not None:
                    self.emulation.attach(self.nodes[name].pid)
                log.info("started %s (pid %s): %s", name, self.nodes[name].pid, " ".join(self.nodes[name].argv[3:]))
        return self

    def check_started(self) -> None:
        """Raise with the node's log tail if a process already exited (bad flags, model load failure)."""
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"local {node.name} exited with code {node.proc.returncode}; its log "
                                   f"({node.log_path}) ends with:\n{node.log_tail()}")

    def restart(self, name: str) -> None:
        """Restart a node (after it died); same addresses."""
        node = self.nodes[name]
        node.stop(grace_s=2.0)
        node.restarts += 1
        node.start(self.env())
        if name == "ue" and self.emulation is not None:
            self.emulation.attach(node.pid)
        log.warning("restarted %s (pid %s, restart #%d)", name, node.pid, node.restarts)

    def stop(self) -> None:
        for name in ("ue", "channel", "es"):
            if name in self.nodes:
                self.nodes[name].stop()
        if self.emulation is not None:
            self.emulation.close()

    def manifest_section(self) -> dict[str, Any]:
        return {"addresses": dict(self.addresses), "engine": self.engine, "broker": self.broker is not None,
                "ue_emulation": None if self.emulation is None else self.emulation.manifest(),
                "processes": {n: {"argv": p.argv[3:], "pid": p.pid, "restarts": p.restarts, "log": str(p.log_path)}
                              for n, p in self.nodes.items()}}

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_ready(cluster: LocalCluster, timeout_s: float) -> None:
    """Wait until every node process is up (alive) -- the orchestrator's hello does the real readiness check."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        cluster.check_started()
        if all(n.alive() for n in cluster.nodes.values()):
            return
        time.sleep(0.1)
