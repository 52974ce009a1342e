#!/usr/bin/env python3
"""Multi-host rehearsal on one machine: ES, channel broker and UE in three network namespaces joined by veth pairs,
the orchestrator in the root namespace, a delayed link, clock sync and a campaign across the "hosts".

Topology (addresses are ours alone: private /30s on veth pairs inside our own namespaces)::

        root ns: orchestrator
        |10.S.10.1            |10.S.11.1            |10.S.12.1        control links (direct, bypass the broker)
        |10.S.10.2            |10.S.11.2            |10.S.12.2
      [ES ns] 10.S.1.1 --- 10.S.1.2 [channel ns] 10.S.2.1 --- 10.S.2.2 [UE ns]
                    data: ES <-> broker          data: broker <-> UE

The UE sends its requests to the broker's frontend (10.S.2.1), the broker reaches the ES at 10.S.1.1; the
orchestrator talks to every node over its own control link. One link is delayed with ``tc netem delay`` (the
orchestrator -> UE direction of its control link, so clock sync has to cope with a longer, asymmetric path: the
offset estimate is off by up to half the asymmetry and the NTP bound says so). Kernels without the netem qdisc get
the same one-way delay from a userspace TCP forwarder on that path instead; the output and the manifest say which.

Needs root and ``ip netns`` (skips cleanly otherwise). Everything is torn down at the end, even on errors: node
processes stopped by pid, namespaces and root-side veths deleted.

    sudo python scripts/netns_rehearsal.py --out /tmp/rehearsal [--engine synthetic|ldm] [--model DIR] [--delay-ms 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


class NetnsUnavailable(RuntimeError):
    """No root, no ``ip`` or no network namespaces here."""


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def available() -> str | None:
    """None when the rehearsal can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    probe = f"mbprobe{os.getpid()}"
    try:
        r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            return f"ip netns add failed: {r.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ip netns unusable: {exc}"
    return None


@dataclass
class Topology:
    """The namespaces, links and addresses of one rehearsal."""

    tag: str = field(default_factory=lambda: f"{os.getpid() % 10000}")
    subnet: int = 77
    delay_ms: float = 5.0
    delayed: str = "ue"  # whose control link gets the delay
    shaping: str = ""
    made_ns: list[str] = field(default_factory=list)
    made_links: list[str] = field(default_factory=list)
    netem_error: str = ""

    def ns(self, role: str) -> str:
        return f"mb{self.tag}{role}"

    def addr(self, a: int, b: int) -> str:
        return f"10.{self.subnet}.{a}.{b}"

    @property
    def es_data(self) -> str:
        return self.addr(1, 1)

    @property
    def ch_front(self) -> str:
        return self.addr(2, 1)

    def control(self, role: str) -> str:
        return self.addr({"es": 10, "ch": 11, "ue": 12}[role], 2)

    def _veth(self, a: str, ns_a: str | None, ip_a: str, b: str, ns_b: str, ip_b: str) -> None:
        _ip("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        self.made_links.append(a)
        for dev, ns, ip in ((a, ns_a, ip_a), (b, ns_b, ip_b)):
            if ns is not None:
                _ip("ip", "link", "set", dev, "netns", ns)
            _ip("ip", "addr", "add", f"{ip}/24", "dev", dev, ns=ns)
            _ip("ip", "link", "set", dev, "up", ns=ns)

    def setup(self) -> None:
        for role in ("es", "ch", "ue"):
            _ip("ip", "netns", "add", self.ns(role))
            self.made_ns.append(self.ns(role))
            _ip("ip", "link", "set", "lo", "up", ns=self.ns(role))
        t = self.tag
        self._veth(f"mb{t}d1a", self.ns("es"), self.addr(1, 1), f"mb{t}d1b", self.ns("ch"), self.addr(1, 2))
        self._veth(f"mb{t}d2a", self.ns("ch"), self.addr(2, 1), f"mb{t}d2b", self.ns("ue"), self.addr(2, 2))
        for role, n in (("es", 10), ("ch", 11), ("ue", 12)):
            self._veth(f"mb{t}c{role}", None, self.addr(n, 1), f"mb{t}n{role}", self.ns(role), self.addr(n, 2))
        self.shaping = self._delay(f"mb{t}c{self.delayed}")

    def _delay(self, dev: str) -> str:
        """netem delay on ``dev`` (root side: orchestrator -> node); "" when this kernel has no netem qdisc (the
        caller then puts a userspace :class:`DelayProxy` on the same path)."""
        if self.delay_ms <= 0:
            return "none"
        r = _ip("tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{self.delay_ms}ms", check=False)
        if r.returncode == 0:
            return f"netem delay {self.delay_ms} ms on {dev} (orchestrator -> {self.delayed})"
        self.netem_error = r.stderr.strip()
        return ""

    def teardown(self) -> None:
        for link in self.made_links:
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)
        for ns in self.made_ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self.made_links.clear()
        self.made_ns.clear()


class DelayProxy:
    """A TCP forwarder adding a fixed one-way delay to the client -> server direction (userspace stand-in for
    ``netem delay`` on kernels without the netem qdisc). Byte order is kept; each chunk leaves ``delay_s`` after it
    arrived. Runs an asyncio loop in a thread, in the namespace of the process that starts it."""

    def __init__(self, listen_host: str, target: tuple[str, int], delay_s: float) -> None:
        import asyncio
        import threading

        self.listen_host, self.target, self.delay_s = listen_host, target, float(delay_s)
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="delay-proxy")

    def start(self) -> DelayProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("delay proxy did not start")
        return self

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)

        async def pipe(reader, writer, delay_s):
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()

            async def sender():
                while True:
                    due, data = await queue.get()
                    if data is None:
                        writer.close()
                        return
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    writer.write(data)
                    await writer.drain()

            task = asyncio.ensure_future(sender())
            try:
                while data := await reader.read(65536):
                    queue.put_nowait((loop.time() + delay_s, data))
            finally:
                queue.put_nowait((loop.time() + delay_s, None))
                await task

        async def handle(client_r, client_w):
            try:
                server_r, server_w = await asyncio.open_connection(*self.target)
            except OSError:
                client_w.close()
                return
            await asyncio.gather(pipe(client_r, server_w, self.delay_s), pipe(server_r, client_w, 0.0),
                                 return_exceptions=True)

        async def main():
            server = await asyncio.start_server(handle, self.listen_host, 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            async with server:
                await server.serve_forever()

        try:
            self._loop.run_until_complete(main())
        except RuntimeError:
            pass  # loop stopped

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _start(topo: Topology, role: str, args: list[str], logs: Path) -> Node:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{role}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with open(log, "ab") as fh:
        proc = subprocess.Popen(["ip", "netns", "exec", topo.ns(role), PY, "-m", "megbed.testbed.cli.main", *args],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Node(role, proc, log)


def write_spec(path: Path, model: Path, requests: int) -> Path:
    path.write_text(textwrap.dedent(f"""
        name: rehearsal
        model: {model}
        prompts: ["a cat on a roof"]
        seeds: [0]
        schemes: [meg, ceg, ue_local]
        grid: {{n_steps: [2], merge_ratio: [0.0, 0.5], distance_m: [200, 300], tx_mode: [analog]}}
        reference: {{n_steps: 2}}
        repetitions: {requests}
        warmup: 1
        timeouts: {{request_s: 120, heartbeat_s: 0.5, dead_after_s: 10}}
    """))
    return path


def rehearse(out: Path, *, engine: str = "synthetic", model: Path | None = None, delay_ms: float = 5.0,
             repetitions: int = 1, subnet: int = 77) -> dict:
    """Set up, run the campaign across the namespaces, tear down; returns what happened."""
    why = available()
    if why:
        raise NetnsUnavailable(why)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = out / "stub_model"
        model.mkdir(exist_ok=True)
        (model / "model_index.json").write_text("{}")
    topo = Topology(delay_ms=delay_ms, subnet=subnet)
    nodes: list[Node] = []
    proxy: DelayProxy | None = None
    run_dir = out / "run"
    try:
        topo.setup()
        common = ["--engine", engine] + (["--model", str(model)] if engine == "ldm" else [])
        logs = out / "logs"
        nodes.append(_start(topo, "es", ["node", "es", "--bind", "tcp://0.0.0.0:5555", *common, "--idle-s", "0.5"],
                            logs))
        nodes.append(_start(topo, "ch", ["node", "channel", "--listen", f"tcp://{topo.ch_front}:5560",
                                         "--es", f"tcp://{topo.es_data}:5555", "--pub", "tcp://0.0.0.0:5561"],
                            logs))
        nodes.append(_start(topo, "ue", ["node", "ue", "--bind", "tcp://0.0.0.0:5557",
                                         "--es", f"tcp://{topo.ch_front}:5560", *common, "--idle-s", "0.5"], logs))
        spec = write_spec(out / "rehearsal.yaml", model, repetitions)
        ue_control = f"tcp://{topo.control('ue')}:5557"
        if not topo.shaping:
            # No netem here: the same one-way delay from a userspace forwarder on the orchestrator -> UE path.
            proxy = DelayProxy("127.0.0.1", (topo.control("ue"), 5557), delay_ms / 1e3).start()
            ue_control = f"tcp://127.0.0.1:{proxy.port}"
            topo.shaping = (f"netem unavailable ({topo.netem_error}); userspace delay proxy adds {delay_ms} ms "
                            f"one way (orchestrator -> ue)")
        t0 = time.monotonic()
        proc = subprocess.run(
            [PY, "-m", "megbed.testbed.cli.main", "node", "orchestrator", str(spec), "--out", str(run_dir),
             "--es", f"tcp://{topo.control('es')}:5555", "--ue", ue_control,
             "--channel-pub", f"tcp://{topo.control('ch')}:5561", "--no-progress"],
            capture_output=True, text=True, timeout=1800, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        result = {"returncode": proc.returncode, "stdout": proc.stdout[-4000:], "stderr": proc.stderr[-4000:],
                  "wall_s": time.monotonic() - t0, "shaping": topo.shaping, "run_dir": str(run_dir),
                  "namespaces": list(topo.made_ns),
                  "addresses": {"es_control": topo.control("es"), "ue_control": topo.control("ue"),
                                "es_data": topo.es_data, "broker_front": topo.ch_front}}
    finally:
        for node in reversed(nodes):
            node.stop()
        if proxy is not None:
            proxy.stop()
        topo.teardown()
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        result["clock_sync"] = {n: recs[0] for n, recs in m.get("clock_sync", {}).items() if recs}
        m["rehearsal"] = {"shaping": topo.shaping, "addresses": result["addresses"]}
        manifest.write_text(json.dumps(m, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--engine", choices=("synthetic", "ldm"), default="synthetic")
    ap.add_argument("--model", type=Path, default=None, help="model folder (engine ldm)")
    ap.add_argument("--delay-ms", type=float, default=5.0, help="netem delay on the orchestrator -> UE link")
    ap.add_argument("--repetitions", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        res = rehearse(args.out, engine=args.engine, model=args.model, delay_ms=args.delay_ms,
                       repetitions=args.repetitions)
    except NetnsUnavailable as exc:
        print(f"skipped: {exc}")
        return 0
    print(res["stdout"])
    if res["returncode"] != 0:
        print(res["stderr"], file=sys.stderr)
    print(f"link shaping: {res['shaping']}")
    for node, fit in res.get("clock_sync", {}).items():
        print(f"clock {node}: offset {fit['offset_ns'] / 1e3:+.1f} us +- {fit['uncertainty_ns'] / 1e3:.1f} us "
              f"({fit['method']}, min round trip {fit['min_delay_ns'] / 1e3:.1f} us)")
    return res["returncode"]


if __name__ == "__main__":
    sys.exit(main())
