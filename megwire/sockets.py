"""ZeroMQ sockets the megbed way: timeouts on every socket, ``LINGER=0``, size limits, optional CURVE.

Envelope convention (ROUTER/DEALER): a client (DEALER) sends ``[b"", *frame_parts]``; a server (ROUTER) receives
``[*routing_ids, b"", *frame_parts]`` and answers with the same routing ids. A proxy in between (the channel broker)
only adds routing ids, so neither end can tell whether it talks to its peer directly or through the broker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq

from megbed.megwire.errors import FrameError, LinkTimeout
from megbed.megwire.frames import DEFAULT_LIMITS, Frame, FrameLimits, from_parts, to_parts
from megbed.megwire.logutil import rate_limit

DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CurveConfig:
    """CURVE keys for one socket.

    Attributes
    ----------
    secret_key_file : Path
        This side's ``.key_secret`` file (from :func:`generate_keys`).
    server_public_key_file : Path or None
        Client side only: the server's ``.key`` file.
    authorized_clients_dir : Path or None
        Server side only: folder of client ``.key`` files allowed to connect; any other peer is refused.
    allow_any_client : bool
        Server side only, and only when asked for explicitly: encrypt, but admit any client key (no
        ``authorized_clients_dir``). A server with a secret key and neither setting refuses to start.
    """

    secret_key_file: Path
    server_public_key_file: Path | None = None
    authorized_clients_dir: Path | None = None
    allow_any_client: bool = False


def generate_keys(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Create a CURVE key pair ``name.key`` / ``name.key_secret`` in ``directory``; returns both paths."""
    import zmq.auth

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    return Path(public), Path(secret)


def _load_keys(path: Path) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not Path(path).is_file():
        raise FileNotFoundError(f"CURVE key file not found: {path}")
    return zmq.auth.load_certificate(str(path))


_AUTHENTICATORS: dict[int, object] = {}


def _authorize(ctx: zmq.Context, clients_dir: Path | None) -> None:
    """Start (once per context) the ZAP authenticator that admits only the keys in ``clients_dir`` (None: any
    CURVE client, for a server explicitly told ``allow_any_client``)."""
    from zmq.auth.base import CURVE_ALLOW_ANY
    from zmq.auth.thread import ThreadAuthenticator

    if clients_dir is not None and not Path(clients_dir).is_dir():
        raise FileNotFoundError(f"authorized clients folder not found: {clients_dir}")
    auth = _AUTHENTICATORS.get(id(ctx))
    if auth is None:
        # Its "invalid credentials" errors are peer-triggered: rate-limited like every network-facing warning.
        auth = ThreadAuthenticator(ctx, log=rate_limit(logging.getLogger("megwire.zap"), 10.0))
        auth.start()
        _AUTHENTICATORS[id(ctx)] = auth
    auth.configure_curve(domain="*", location=CURVE_ALLOW_ANY if clients_dir is None else str(clients_dir))


def stop_authenticator(ctx: zmq.Context) -> None:
    """Stop the authenticator thread started for ``ctx`` (call before ``ctx.term()``)."""
    auth = _AUTHENTICATORS.pop(id(ctx), None)
    if auth is not None:
        auth.stop()


def make_socket(
    ctx: zmq.Context,
    socket_type: int,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    send_timeout_s: float | None = None,
    max_message_bytes: int = DEFAULT_LIMITS.max_total_bytes + DEFAULT_LIMITS.max_header_bytes + 4096,
    curve: CurveConfig | None = None,
    identity: bytes | None = None,
) -> zmq.Socket:
    """A socket with receive/send timeouts, ``LINGER=0`` and a maximum message size.

    Parameters
    ----------
    timeout_s : float
        Receive timeout (RCVTIMEO); ``recv`` raises :class:`LinkTimeout` past it.
    send_timeout_s : float, optional
        Send timeout (SNDTIMEO); defaults to ``timeout_s``.
    max_message_bytes : int
        ZMQ_MAXMSGSIZE: a peer sending more is disconnected by libzmq before we allocate it.
    curve : CurveConfig, optional
        Server when ``authorized_clients_dir`` is set, client when ``server_public_key_file`` is set.
    """
    sock = ctx.socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int((timeout_s if send_timeout_s is None else send_timeout_s) * 1000))
    sock.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if curve is not None:
        public, secret = _load_keys(curve.secret_key_file)
        if secret is None:
            raise ValueError(f"{curve.secret_key_file} holds no secret key")
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        if curve.server_public_key_file is not None:
            server_public, _ = _load_keys(curve.server_public_key_file)
            sock.curve_serverkey = server_public
        else:
            if curve.authorized_clients_dir is None and not curve.allow_any_client:
                sock.close(0)
                raise ValueError("a CURVE server needs authorized_clients_dir (which client keys to admit), or "
                                 "allow_any_client set explicitly")
            _authorize(ctx, curve.authorized_clients_dir)
            sock.curve_server = True
    return sock


def bind_address(sock: zmq.Socket, address: str) -> str:
    """Bind ``sock`` to ``address`` and return the address bound: a TCP port of ``0`` or ``*`` takes a free port.

    Examples
    --------
    ``bind_address(sock, "tcp://127.0.0.1:0")`` -> ``"tcp://127.0.0.1:43127"``.
    """
    host, _, port = address.rpartition(":")
    if address.startswith("tcp://") and port in ("0", "*"):
        return f"{host}:{sock.bind_to_random_port(host)}"
    sock.bind(address)
    return address


# pyzmq's send_multipart / recv_multipart OR enum flags and read RCVMORE through the enum-typed getsockopt for
# every part (~2-3 us a part, several parts a message, several messages a hop): the same calls in plain ints.
_SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)
_SENDABLE = (bytes, bytearray, memoryview, zmq.Frame)


def send_parts(sock: zmq.Socket, parts: Sequence[bytes | memoryview | zmq.Frame], flags: int = 0) -> None:
    """``sock.send_multipart(parts, flags, copy=False)`` without its per-part enum arithmetic.

    Every part is type-checked before the first is sent (as ``send_multipart`` does), so a bad part never leaves a
    half-sent message on the socket; libzmq queues a multipart message atomically, so ``zmq.Again`` (``NOBLOCK``)
    can only come from the first part.
    """
    for part in parts:
        if not isinstance(part, _SENDABLE):
            raise TypeError(f"cannot send a {type(part).__name__} as a message part")
    more = flags | _SNDMORE
    last = len(parts) - 1
    for i, part in enumerate(parts):
        sock.send(part, more if i < last else flags, copy=False)


def recv_parts(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """``sock.recv_multipart(flags, copy=False)``, reading each part's ``more`` bit from the part itself."""
    parts = [sock.recv(flags, copy=False)]
    while parts[-1].more:
        parts.append(sock.recv(flags, copy=False))
    return parts


def send_frame(sock: zmq.Socket, frame: Frame, envelope: Sequence[bytes] = (), *, delimiter: bool = True) -> None:
    """Send ``[*envelope, b"", *parts]``; raises :class:`LinkTimeout` when the send would block past SNDTIMEO."""
    parts: list[bytes | memoryview] = [*envelope]
    if delimiter:
        parts.append(b"")
    parts.extend(to_parts(frame))
    try:
        send_parts(sock, parts)
    except zmq.Again as exc:
        raise LinkTimeout(f"send of {frame.kind!r} timed out") from exc


def split_envelope(parts: Sequence[bytes | memoryview | zmq.Frame]) -> tuple[list[bytes], list[memoryview]]:
    """Split ``[*routing_ids, b"", *frame_parts]`` at the first empty part."""
    views = [p.buffer if isinstance(p, zmq.Frame) else memoryview(p) for p in parts]
    for i, view in enumerate(views):
        if len(view) == 0:
            return [bytes(v) for v in views[:i]], views[i + 1:]
    raise FrameError("message has no envelope delimiter (empty part)")


def recv_raw(sock: zmq.Socket) -> list[zmq.Frame]:
    """Receive one multipart message without copying; raises :class:`LinkTimeout` past RCVTIMEO."""
    try:
        return recv_parts(sock)
    except zmq.Again as exc:
        raise LinkTimeout("receive timed out") from exc


def recv_frame(sock: zmq.Socket, limits: FrameLimits = DEFAULT_LIMITS) -> tuple[list[bytes], Frame]:
    """Receive one message; returns ``(envelope, frame)``.

    Raises
    ------
    LinkTimeout
        Nothing arrived within RCVTIMEO.
    FrameError
        The message is malformed (its envelope is still attached as ``exc.envelope`` so a server can answer).
    """
    raw = recv_raw(sock)
    envelope: list[bytes] = []
    try:
        envelope, parts = split_envelope(raw)
        return envelope, from_parts(parts, limits)
    except FrameError as exc:
        exc.envelope = envelope  # type: ignore[attr-defined]
        raise
