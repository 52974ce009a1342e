"""The error types of the shapes grammar live here: a scene that breaks its rules, a prompt that is not one of its
captions.

The module imports nothing, so the scene and the caption modules raise them without importing each other. Each type
is also importable from the module that raises it (``SceneError`` from ``scene``, ``CaptionError`` from
``captions``).
"""

from __future__ import annotations


class CaptionError(ValueError):
    """A prompt that is not a caption of the grammar (unknown or missing words)."""


class SceneError(ValueError):
    """A scene that breaks the grammar's rules (unknown word, repeated position or color, too many shapes)."""


__all__ = ["CaptionError", "SceneError"]
