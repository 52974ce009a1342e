"""Helpers for poking node processes on loopback: ports, start-up wait, memory, and a peer that never reads.

Shared by the node tests (``tests/nodes``) and the attack harness (``scripts/attack_nodes.py``), so both measure a
node the same way.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import zmq

from megbed.megwire import Frame, to_parts
from megbed.testbed.campaign.local import free_port, free_ports  # noqa: F401 (re-exported for the tests)
from megbed.testbed.nodes import protocol as P

HOST = "127.0.0.1"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (MiB) from ``/proc/<pid>/status`` (``VmHWM``: its peak); NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def wait_listening(proc: subprocess.Popen, address: str, name: str, log_path: Path, timeout_s: float,
                   poll_s: float = 0.1) -> bool:
    """Wait until a node's TCP port accepts connections.

    Parameters
    ----------
    proc : subprocess.Popen
        The node's process.
    address : str
        Its ``tcp://host:port`` bind address.
    name : str
        Node name for the error message.
    log_path : Path
        The node's log, quoted when it exits.
    timeout_s, poll_s : float
        How long to wait in all and between connection attempts (s).

    Returns
    -------
    bool
        True once listening, False when ``timeout_s`` ran out first.

    Raises
    ------
    RuntimeError
        The process exited before it listened.
    """
    port = int(address.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
            raise RuntimeError(f"{name} exited with {proc.returncode} at start; {log_path}:\n{log}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(poll_s)
    return False


def flood_without_reading(ctx: zmq.Context, address: str, msg_id: str, stop: threading.Event, sent: list[int],
                          rcvhwm: int, rcvbuf: int | None = None) -> None:
    """Send heartbeats with ``msg_id`` as fast as the socket takes them and never read an answer, until ``stop``.

    ``sent[0]`` counts the frames sent (a list so that several flooding threads can share it). A small ``rcvhwm``
    (and ``rcvbuf``, bytes) makes the unread answers back up towards the node, the slow-reader attack of issue 20.
    """
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    if rcvbuf is not None:
        sock.setsockopt(zmq.RCVBUF, rcvbuf)
    sock.connect(address)
    parts = [b"", *to_parts(Frame(P.HEARTBEAT, meta={"msg_id": msg_id}))]
    while not stop.is_set():
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK)
            sent[0] += 1
        except zmq.Again:
            time.sleep(0.001)
    sock.close(0)


def stop_process(proc: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    """SIGTERM a still-running process, SIGKILL it when it has not exited after ``grace_s``."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
