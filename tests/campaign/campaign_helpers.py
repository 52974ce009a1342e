"""Helpers of the campaign tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import textwrap


def write_spec(folder, body: str, name: str = "c.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def alias_bomb(levels: int = 9, fan: int = 9) -> str:
    """A YAML alias bomb: ~340 bytes that expand to fan**levels strings."""
    lines = ['a: &a ["' + '","'.join(["lol"] * fan) + '"]']
    prev = "a"
    for name in "bcdefghijklmnop"[: levels - 1]:
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * fan) + "]")
        prev = name
    return "\n".join(lines) + "\n"
