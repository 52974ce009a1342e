"""The error types of megwire live here: every exception the frame codec, the sockets and the YAML loader raise.

The module imports nothing, so any megwire module (and any layer above) can raise or catch them without importing the
codec or ZeroMQ. Each type is also importable from the module that raises it
(``FrameError`` from ``frames``, ``LinkTimeout`` from ``sockets``, ``YamlError`` from ``safe_yaml``), the first two
also from ``megbed.megwire``.
"""

from __future__ import annotations


class FrameError(ValueError):
    """A frame could not be encoded or decoded; the message names what is wrong."""


class LinkTimeout(TimeoutError):
    """No message arrived (or could be sent) within the socket's timeout."""


class YamlError(ValueError):
    """A YAML document that cannot be loaded; the message is one line naming the source and the problem."""


__all__ = ["FrameError", "LinkTimeout", "YamlError"]
