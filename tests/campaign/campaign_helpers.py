"""Helpers of the campaign tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import textwrap


def write_spec(folder, body: str, name: str = "c.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path
