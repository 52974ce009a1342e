"""The words the embedded default model understands, and what each means on the canvas.

Coordinates are fractions of the image side, ``x`` to the right and ``y`` downwards, so one scene renders at any
resolution. A shape's *half extent* is half the side of its bounding box (the radius of a circle).
"""

from __future__ import annotations

from dataclasses import dataclass

# Shape colors, RGB in [0, 1]. Saturated or extreme (white / black) so that no muted background is confused with
# them; pairwise RGB distances are all >= 0.4 so nearest-color classification has a wide margin.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.15, 0.25, 0.90),
    "yellow": (0.95, 0.90, 0.10),
    "white": (0.97, 0.97, 0.97),
    "black": (0.05, 0.05, 0.05),
    "orange": (1.00, 0.50, 0.00),
    "purple": (0.55, 0.15, 0.70),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Half extent as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.09, "large": 0.16}


@dataclass(frozen=True)
class Position:
    """A named position: the anchor a shape's bounding-box center is placed at, and its caption phrase."""

    name: str
    x: float
    y: float
    phrase: str


POSITIONS: dict[str, Position] = {
    p.name: p
    for p in (
        Position("left", 0.25, 0.50, "on the left"),
        Position("right", 0.75, 0.50, "on the right"),
        Position("top", 0.50, 0.25, "at the top"),
        Position("bottom", 0.50, 0.75, "at the bottom"),
        Position("center", 0.50, 0.50, "in the center"),
    )
}

# Other phrasings the parser accepts (and the training captions sometimes use), mapped to position names.
POSITION_PHRASES: dict[str, str] = {
    "on the left": "left",
    "on the right": "right",
    "at the top": "top",
    "at the bottom": "bottom",
    "in the center": "center",
    "in the middle": "center",
}

# Centre jitter (fraction of the side) and relative size jitter of rendered shapes: small enough that the nearest
# anchor of a clean render is always the named one (anchors are 0.25 apart).
POSITION_JITTER = 0.04
SIZE_JITTER = 0.08

# Positions two shapes may take together: any two distinct positions except the center, which would overlap a
# large neighbour (anchors 0.25 apart, large half extent 0.16).
PAIR_POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")

WORDS: tuple[str, ...] = tuple(sorted(
    set(COLORS) | set(SHAPES) | set(SIZES)
    | {w for phrase in POSITION_PHRASES for w in phrase.split()}
    | {"a", "an", "and"}
))
