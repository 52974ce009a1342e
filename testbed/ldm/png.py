"""8-bit RGB PNG files written atomically (references, kept images, ``megbed generate``'s output).

This module imports neither torch nor diffusers: the orchestrator's campaign runner writes its files with it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def write_png(path: str | os.PathLike, pixels: np.ndarray, text: Mapping[str, str] | None = None) -> Path:
    """Write ``pixels`` (``uint8 [H, W, 3]``) as a PNG at ``path``, with ``text`` as text chunks: a temporary file in
    the same folder, then a rename, so a reader never sees half a file."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    info = None
    if text:
        info = PngInfo()
        for name, value in text.items():
            info.add_text(name, value)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(np.ascontiguousarray(pixels), mode="RGB").save(fh, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
