"""CURVE key folders for the testbed: ``megbed keys generate DIR`` and the socket settings they imply.

Layout of a keys folder::

    DIR/es.key  DIR/es.key_secret            one pair per node name (es, ue, channel, orchestrator, ...)
    DIR/authorized/<name>.key                the public keys every server admits

Servers -- the ES's ROUTER, a UE's control ROUTER, the broker's frontend ROUTER *and* its PUB socket (the delivery
records; ``Broker(curve_pub=...)``, by default the frontend's keys) -- load their own secret key and admit exactly the
public keys in ``DIR/authorized``; clients (UEs, the broker's backend, the orchestrator's control connections and
its subscription to the records) load their own secret key and the server's public key. A peer whose key is not in
``authorized`` -- or that does not speak CURVE at all -- is refused at the handshake. A server given a secret key but
no client list refuses to start, unless told ``allow_any_client`` (``--allow-any-client``) explicitly: then it
encrypts but admits any CURVE client. On several hosts, copy the folder (secret keys only to the host that runs
that node).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from megbed.megwire import CurveConfig, generate_keys

DEFAULT_NAMES = ("es", "ue", "channel", "orchestrator")
AUTHORIZED = "authorized"


class KeysError(FileNotFoundError):
    """A keys folder lacks a file a node needs; the message names it."""


def generate(directory: str | Path, names: tuple[str, ...] | list[str] = DEFAULT_NAMES, *,
             overwrite: bool = False) -> dict[str, tuple[Path, Path]]:
    """Create a key pair per name and authorise every public key; returns ``{name: (public, secret)}``."""
    directory = Path(directory)
    out = {}
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"key name {name!r} must be a plain identifier")
        secret = directory / f"{name}.key_secret"
        if secret.exists() and not overwrite:
            raise FileExistsError(f"{secret} exists (pass overwrite=True / --force to replace it)")
        out[name] = generate_keys(directory, name)
        secret.chmod(0o600)
        (directory / AUTHORIZED).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out[name][0], directory / AUTHORIZED / f"{name}.key")
    return out


def _need(path: Path) -> Path:
    if not path.is_file():
        raise KeysError(f"CURVE key file missing: {path} (create the folder with `megbed keys generate`)")
    return path


def server_curve(directory: str | Path, name: str, *, allow_any_client: bool = False) -> CurveConfig:
    """CURVE settings of a server socket run by node ``name`` (``allow_any_client``: no client list, any CURVE
    client admitted -- only when asked for explicitly)."""
    directory = Path(directory)
    if allow_any_client:
        return CurveConfig(_need(directory / f"{name}.key_secret"), allow_any_client=True)
    authorized = directory / AUTHORIZED
    if not authorized.is_dir():
        raise KeysError(f"authorized keys folder missing: {authorized}")
    return CurveConfig(_need(directory / f"{name}.key_secret"), authorized_clients_dir=authorized)


def client_curve(directory: str | Path, name: str, server: str) -> CurveConfig:
    """CURVE settings of node ``name``'s client socket to the server run by node ``server``."""
    directory = Path(directory)
    return CurveConfig(_need(directory / f"{name}.key_secret"),
                       server_public_key_file=_need(directory / f"{server}.key"))
