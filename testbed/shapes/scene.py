"""Scenes (one or two shapes on a plain or gradient background), seeded sampling, and the train / held-out split.

The split is a property of what a scene *says* (its shapes, colors, sizes and positions, order-free), not of its
jitter or background: a hash of the canonical key puts one key in six into the held-out split, so no held-out
combination is ever rendered for training, in any phrasing or object order.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from megbed.testbed.shapes.errors import SceneError
from megbed.testbed.shapes.vocab import (
    COLORS,
    PAIR_POSITIONS,
    POSITION_JITTER,
    POSITIONS,
    SHAPES,
    SIZE_JITTER,
    SIZES,
)

SPLITS = ("train", "heldout")
HELDOUT_MODULUS = 6  # one key in six is held out

# Background tones: gray level in [0.35, 0.65] plus a per-channel tint of at most 0.05, which keeps every
# background >= 0.32 (RGB distance) from every shape color.
BACKGROUND_LEVEL = (0.35, 0.65)
BACKGROUND_TINT = 0.05
COLOR_JITTER = 0.03


@dataclass(frozen=True)
class NamedObject:
    """What a caption says about one shape. ``size`` is None when the caption does not name it."""

    shape: str
    color: str
    size: str | None
    position: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise SceneError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if self.color not in COLORS:
            raise SceneError(f"unknown color {self.color!r}; known: {', '.join(COLORS)}")
        if self.size is not None and self.size not in SIZES:
            raise SceneError(f"unknown size {self.size!r}; known: {', '.join(SIZES)}")
        if self.position not in POSITIONS:
            raise SceneError(f"unknown position {self.position!r}; known: {', '.join(POSITIONS)}")

    def key(self) -> str:
        return f"{self.size or '-'} {self.color} {self.shape} {self.position}"


@dataclass(frozen=True)
class ShapeObject:
    """One rendered shape: its named attributes and its exact geometry.

    Attributes
    ----------
    named : NamedObject
        Shape, color, size and position as the caption names them.
    cx, cy : float
        Bounding-box center, fractions of the image side (x right, y down).
    half_extent : float
        Half the bounding-box side (circle radius), fraction of the image side.
    rgb : tuple[float, float, float]
        Fill color in [0, 1] (the named color with a small jitter).
    """

    named: NamedObject
    cx: float
    cy: float
    half_extent: float
    rgb: tuple[float, float, float]


@dataclass(frozen=True)
class Background:
    """``kind`` "plain" (``rgb0`` everywhere) or "gradient" (``rgb0`` -> ``rgb1`` along ``angle_rad``)."""

    kind: str
    rgb0: tuple[float, float, float]
    rgb1: tuple[float, float, float]
    angle_rad: float = 0.0


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: Background

    @property
    def named(self) -> tuple[NamedObject, ...]:
        return tuple(o.named for o in self.objects)

    def key(self) -> str:
        return scene_key(self.named)

    @property
    def split(self) -> str:
        return split_of(self.named)


def scene_key(objects: tuple[NamedObject, ...] | list[NamedObject]) -> str:
    """Canonical, order-free description of what a scene says (the unit of the train / held-out split)."""
    return " | ".join(sorted(o.key() for o in objects))


def split_of(objects: tuple[NamedObject, ...] | list[NamedObject]) -> str:
    """``"heldout"`` for one scene key in :data:`HELDOUT_MODULUS`, else ``"train"`` (SHA-256, platform-stable)."""
    digest = hashlib.sha256(scene_key(objects).encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:8], "little") % HELDOUT_MODULUS == 0 else "train"


def check_objects(objects: tuple[NamedObject, ...] | list[NamedObject]) -> None:
    """The composition rules: one or two shapes; two shapes differ in color and sit at two non-center positions.

    Raises
    ------
    SceneError
    """
    if not 1 <= len(objects) <= 2:
        raise SceneError(f"a scene holds one or two shapes, got {len(objects)}")
    if len(objects) == 2:
        a, b = objects
        if a.color == b.color:
            raise SceneError(f"two shapes must differ in color, both are {a.color}")
        if a.position == b.position or a.position not in PAIR_POSITIONS or b.position not in PAIR_POSITIONS:
            raise SceneError(f"two shapes need two distinct positions among {', '.join(PAIR_POSITIONS)}, "
                             f"got {a.position} and {b.position}")


def _sample_named(rng: np.random.Generator, n_objects: int) -> tuple[NamedObject, ...]:
    shapes = list(SHAPES)
    colors = list(COLORS)
    sizes = list(SIZES)
    if n_objects == 1:
        positions = [str(rng.choice(list(POSITIONS)))]
    else:
        positions = [str(p) for p in rng.choice(list(PAIR_POSITIONS), size=2, replace=False)]
    picked_colors = [str(c) for c in rng.choice(colors, size=n_objects, replace=False)]
    return tuple(
        NamedObject(str(rng.choice(shapes)), picked_colors[i], str(rng.choice(sizes)), positions[i])
        for i in range(n_objects)
    )


def _tone(rng: np.random.Generator) -> tuple[float, float, float]:
    level = rng.uniform(*BACKGROUND_LEVEL)
    tint = rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, size=3)
    return tuple(float(v) for v in np.clip(level + tint, 0.0, 1.0))


def sample_background(rng: np.random.Generator, gradient_fraction: float = 0.5) -> Background:
    """A muted plain background, or a linear gradient between two muted tones in a random direction."""
    if rng.uniform() < gradient_fraction:
        return Background("gradient", _tone(rng), _tone(rng), float(rng.uniform(0.0, 2.0 * math.pi)))
    tone = _tone(rng)
    return Background("plain", tone, tone, 0.0)


def place(named: NamedObject, rng: np.random.Generator | None = None) -> ShapeObject:
    """Geometry and fill color for a named object (exact anchor and nominal size when ``rng`` is None)."""
    pos = POSITIONS[named.position]
    half = SIZES[named.size or "small"]
    rgb = COLORS[named.color]
    if rng is None:
        return ShapeObject(named, pos.x, pos.y, half, rgb)
    dx, dy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
    half *= 1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
    rgb = tuple(float(v) for v in np.clip(np.asarray(rgb) + rng.uniform(-COLOR_JITTER, COLOR_JITTER, size=3), 0, 1))
    return ShapeObject(named, float(pos.x + dx), float(pos.y + dy), float(half), rgb)


def make_scene(objects: tuple[NamedObject, ...] | list[NamedObject], rng: np.random.Generator | None = None,
               background: Background | None = None) -> Scene:
    """A scene for given named objects (checked against the composition rules); larger shapes are drawn first."""
    objects = tuple(objects)
    check_objects(objects)
    if background is None:
        background = sample_background(rng) if rng is not None else Background("plain", (0.5,) * 3, (0.5,) * 3)
    placed = [place(o, rng) for o in objects]
    placed.sort(key=lambda o: -o.half_extent)
    return Scene(tuple(placed), background)


def sample_scene(rng: np.random.Generator, split: str = "train", pair_fraction: float = 0.5,
                 n_objects: int | None = None) -> Scene:
    """Draw a random scene of the given split (rejection sampling over scene keys)."""
    if split not in SPLITS:
        raise SceneError(f"split must be one of {SPLITS}, got {split!r}")
    for _ in range(10_000):
        n = n_objects or (2 if rng.uniform() < pair_fraction else 1)
        named = _sample_named(rng, n)
        if split_of(named) == split:
            return make_scene(named, rng)
    raise SceneError(f"no {split} scene found with {n_objects} objects")  # pragma: no cover - split is 1/6 : 5/6


def sample_dense_scene(rng: np.random.Generator, min_shapes: int = 3, max_shapes: int = 8,
                       color_jitter: float = 0.08) -> Scene:
    """A scene outside the grammar for training the autoencoder: several shapes anywhere, of any size in
    [0.04, 0.2] and palette colors with a wider jitter, so that most pixels of a crop are saturated colors and
    edges (grammar scenes are mostly background)."""
    objects = []
    for _ in range(int(rng.integers(min_shapes, max_shapes + 1))):
        cx, cy = (float(v) for v in rng.uniform(0.05, 0.95, size=2))
        nearest = min(POSITIONS.values(), key=lambda p: (p.x - cx) ** 2 + (p.y - cy) ** 2).name
        color = str(rng.choice(list(COLORS)))
        named = NamedObject(str(rng.choice(list(SHAPES))), color, None, nearest)
        rgb = np.clip(np.asarray(COLORS[color]) + rng.uniform(-color_jitter, color_jitter, size=3), 0, 1)
        objects.append(ShapeObject(named, cx, cy, float(rng.uniform(0.04, 0.2)), tuple(float(v) for v in rgb)))
    return Scene(tuple(objects), sample_background(rng))
