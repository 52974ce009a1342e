"""megwire: the frame format and ZeroMQ plumbing shared by every megbed process.

The lowest layer of the project: it imports nothing from the other packages, so the channel broker and the
measurement layer (clock sync) speak the same frames as the testbed nodes without importing them.
"""

from megbed.megwire.frames import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Frame,
    FrameError,
    FrameLimits,
    bare_head,
    error_frame,
    from_parts,
    pack,
    packed_size,
    to_parts,
    unpack,
)
from megbed.megwire.link import InProcLink, Link, ZmqClientLink
from megbed.megwire.sockets import (
    CurveConfig,
    LinkTimeout,
    bind_address,
    generate_keys,
    make_socket,
    recv_frame,
    recv_raw,
    send_frame,
    split_envelope,
    stop_authenticator,
)

__all__ = [
    "DEFAULT_LIMITS", "PROTOCOL_VERSION", "CurveConfig", "Frame", "FrameError", "FrameLimits", "InProcLink",
    "Link", "LinkTimeout", "ZmqClientLink", "bare_head", "bind_address", "error_frame", "from_parts", "generate_keys", "make_socket", "pack",
    "packed_size", "recv_frame", "recv_raw", "send_frame", "split_envelope", "stop_authenticator", "to_parts",
    "unpack",
]
